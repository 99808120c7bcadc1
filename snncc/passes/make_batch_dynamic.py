"""Make the batch dimension dynamic ("static batch in, dynamic out").

A model exported with a fixed batch (torch's exporters without dynamic axes) hard-codes that size
in its Reshape targets, e.g. [1, 3136], or [1, 2, 24, 8, 8] with allowzero=1, and in Resize sizes.
The dataflow analysis follows the batch axis from the inputs and finds, for each Reshape, the
target entry that holds the batch; that entry becomes -1 (or 0, copying the batch from the same
axis of the input). A Resize to constant sizes reads its batch entry from its input instead.

Invariant after the pass: dimension 0 of every graph input and output is the symbol `N`, and no
Reshape or Resize on the data path hard-codes the exported batch size, so the graph runs at any
batch size, including the T*B batch of the spiking graph. A Reshape whose batch entry cannot be
found, or a Concat with a constant part of the exported batch size, is refused with an
SnnccError naming it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from snncc.errors import SnnccError
from snncc.passes._dataflow import analyse
from snncc.passes._graph import NameGenerator, add_initializer, const_array, infer_shapes, source_of

BATCH = "N"


def _static_batch(values) -> set[int]:
    return {v.shape[0] for v in values if v.shape is not None and len(v.shape) and isinstance(v.shape[0], int)}


def _with_symbolic_batch(value: ir.Value) -> bool:
    if value.shape is None or not len(value.shape) or value.shape[0] == ir.SymbolicDim(BATCH):
        return False
    value.shape = ir.Shape([BATCH, *list(value.shape)[1:]])
    return True


class MakeBatchDynamicPass(ir.passes.InPlacePass):
    def __init__(self, source: str = "model"):
        super().__init__()
        self.source = source

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        static = _static_batch(graph.inputs)
        modified = False
        if len(static) == 1:
            common_passes.TopologicalSortPass()(model)
            modified = self._free_reshapes(graph, next(iter(static)))
        for value in [*graph.inputs, *graph.outputs]:
            modified |= _with_symbolic_batch(value)
        if modified and static:
            for node in graph:
                for value in node.outputs:
                    if not value.is_graph_output():
                        value.shape = None
            infer_shapes(model)
        return ir.passes.PassResult(model, modified=modified)

    def _free_reshapes(self, graph: ir.Graph, batch: int) -> bool:
        flow = analyse(graph, static_batch=batch)
        for node in [n for n in graph if n in flow.fixed_batch]:
            raise SnnccError(f"{self.source}: node '{source_of(node)}' ({node.op_type}): {flow.mixes_batch[node]} "
                             f"(the exported batch size {batch}); export the model with a dynamic batch axis")
        names = NameGenerator(graph)
        modified = False
        for node in list(graph):
            if node.op_type == "Resize" and node.domain == "" and node.inputs[0] in flow.batch_axis:
                modified |= self._read_resized_batch(graph, names, node, batch, flow.batch_axis[node.inputs[0]])
            if node.op_type != "Reshape" or node.domain != "" or node.inputs[0] not in flow.batch_axis:
                continue
            target = const_array(node.inputs[1])
            if target is None:
                continue
            entry = flow.batch_entry.get(node)
            if entry is None:
                reason = flow.mixes_batch.get(node, "snncc cannot tell which entry of its target is the batch")
                raise SnnccError(f"{self.source}: node '{source_of(node)}' (Reshape) hard-codes the exported batch "
                                 f"size {batch} in its target {target.tolist()}, and {reason}; export the model "
                                 "with a dynamic batch axis")
            if int(target[entry]) != batch or int(target[entry]) in (0, -1):
                continue
            node.replace_input_with(1, add_initializer(graph, names, f"{node.inputs[1].name}_dynamic_batch",
                                                       self._dynamic_target(node, target, entry, flow.batch_axis[node.inputs[0]])))
            modified = True
        return modified

    def _read_resized_batch(self, graph: ir.Graph, names: NameGenerator, node: ir.Node, batch: int, axis: int) -> bool:
        """Resize to constant sizes [1, C, H, W]: the batch entry becomes the input's batch, read by Shape."""
        sizes = const_array(node.inputs[3]) if len(node.inputs) > 3 else None
        if sizes is None or sizes.size <= axis or int(sizes[axis]) != batch:
            return False
        read = ir.node("Shape", [node.inputs[0]], attributes={"start": axis, "end": axis + 1}, name=names(f"{node.name}/batch"))
        parts = [add_initializer(graph, names, f"{node.inputs[3].name}_{side}", part.astype(np.int64))
                 for side, part in (("before", sizes[:axis]), ("after", sizes[axis + 1:]))]
        joined = ir.node("Concat", [parts[0], read.outputs[0], parts[1]], attributes={"axis": 0},
                         name=names(f"{node.name}/sizes"))
        graph.insert_before(node, [read, joined])
        node.replace_input_with(3, joined.outputs[0])
        return True

    def _dynamic_target(self, node: ir.Node, target: np.ndarray, entry: int, axis: int) -> np.ndarray:
        """The target with its batch entry inferred (-1) or copied from the input's batch axis (0)."""
        fixed = target.astype(np.int64).copy()
        allowzero = "allowzero" in node.attributes and node.attributes["allowzero"].as_int() == 1
        if -1 not in fixed:
            fixed[entry] = -1
        elif entry == axis and not (allowzero and 0 in fixed):
            fixed[entry] = 0
            if allowzero:
                node.attributes["allowzero"] = ir.AttrInt64("allowzero", 0)
        else:
            raise SnnccError(f"{self.source}: node '{source_of(node)}' (Reshape) hard-codes the exported batch size "
                             f"in entry {entry} of its target {target.tolist()}, which already infers another "
                             "entry (-1); export the model with a dynamic batch axis")
        return fixed
