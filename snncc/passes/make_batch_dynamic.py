"""Make the batch dimension dynamic.

Invariant after the pass: dimension 0 of every graph input and output is the symbol `N`, and a
Reshape whose constant target shape hard-coded the exported static batch size copies dimension 0
from its input instead (entry 0), so the graph runs at any batch size, including the T*B batch of
the spiking graph.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc.passes._graph import NameGenerator, add_initializer, const_array, infer_shapes

BATCH = "N"


def _static_batch(values) -> set[int]:
    return {v.shape[0] for v in values if v.shape is not None and len(v.shape) and isinstance(v.shape[0], int)}


def _with_symbolic_batch(value: ir.Value) -> bool:
    if value.shape is None or not len(value.shape) or value.shape[0] == ir.SymbolicDim(BATCH):
        return False
    value.shape = ir.Shape([BATCH, *list(value.shape)[1:]])
    return True


class MakeBatchDynamicPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        static = _static_batch(graph.inputs)
        modified = False
        if static:
            names = NameGenerator(graph)
            for node in graph:
                if node.op_type == "Reshape" and node.domain == "":
                    modified |= _copy_batch_in_reshape(graph, names, node, static)
        for value in [*graph.inputs, *graph.outputs]:
            modified |= _with_symbolic_batch(value)
        if modified and static:
            for node in graph:
                for value in node.outputs:
                    if not value.is_graph_output():
                        value.shape = None
            infer_shapes(model)
        return ir.passes.PassResult(model, modified=modified)


def _copy_batch_in_reshape(graph: ir.Graph, names: NameGenerator, node: ir.Node, static: set[int]) -> bool:
    target = const_array(node.inputs[1])
    if target is None or target.ndim != 1 or not len(target) or int(target[0]) not in static:
        return False
    if "allowzero" in node.attributes and node.attributes["allowzero"].as_int() == 1:
        return False
    fixed = target.copy()
    fixed[0] = 0
    node.replace_input_with(1, add_initializer(graph, names, f"{node.inputs[1].name}_dynamic_batch", fixed.astype(np.int64)))
    return True
