"""Shape inference and constant folding of static subgraphs.

Invariant after the pass: every subgraph that depends only on constants and on static dimensions
of tensors (e.g. "same" padding computed through Shape/Slice/Pad while the batch stays dynamic,
or pads built from ConstantOfShape zeros) is a constant, and value shapes are inferred. Only
ConstantOfShape outputs of at most MAX_FOLDED_ELEMENTS elements are materialised: a big one (a
mask or a zero tensor of feature-map size) stays a node, so folding never bloats the model.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import optimizer

from snncc.passes._graph import NameGenerator, const_array, infer_shapes

_MAX_ROUNDS = 8
MAX_FOLDED_ELEMENTS = 4096


def _static_dims(value: ir.Value) -> list[int | None] | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _shape_read(node: ir.Node) -> np.ndarray | None:
    """The constant a Shape/Gather-of-Shape/Slice-of-Shape computes when it reads only static dims."""
    if node.op_type == "Shape":
        dims = _static_dims(node.inputs[0])
        if dims is None:
            return None
        start = node.attributes["start"].as_int() if "start" in node.attributes else 0
        end = node.attributes["end"].as_int() if "end" in node.attributes else len(dims)
        picked = dims[start:end]
    else:
        shape_node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        if shape_node is None or shape_node.op_type != "Shape" or "start" in shape_node.attributes or "end" in shape_node.attributes:
            return None
        dims = _static_dims(shape_node.inputs[0])
        if dims is None:
            return None
        if node.op_type == "Gather":
            indices = const_array(node.inputs[1])
            if indices is None or ("axis" in node.attributes and node.attributes["axis"].as_int() != 0):
                return None
            picked = _all_static([dims[int(i)] for i in indices.reshape(-1)])
            return None if picked is None else picked.reshape(indices.shape)
        if node.op_type != "Slice":
            return None
        params = [const_array(v) if v is not None else None for v in node.inputs[1:]]
        starts, ends = params[0], params[1]
        axes = params[2] if len(params) > 2 else None
        steps = params[3] if len(params) > 3 else None
        if starts is None or ends is None or (axes is not None and list(axes) not in ([0], [-1])):
            return None
        step = 1 if steps is None else int(steps[0])
        picked = dims[int(starts[0]):int(ends[0]):step]
    return _all_static(picked)


def _all_static(dims: list[int | None]) -> np.ndarray | None:
    return None if any(d is None for d in dims) else np.asarray(dims, dtype=np.int64)


def _fold_static_shape_reads(graph: ir.Graph) -> bool:
    """Replace reads of static dimensions out of partially dynamic shapes by constants."""
    names = NameGenerator(graph)
    folded = False
    for node in list(graph):
        if node.domain != "" or node.op_type not in ("Shape", "Gather", "Slice"):
            continue
        value = _shape_read(node)
        if value is None or node.outputs[0].const_value is not None:
            continue
        out = node.outputs[0]
        name = names(f"{out.name}_static")
        constant = ir.Value(name=name, const_value=ir.Tensor(value, name=name), shape=ir.Shape(value.shape),
                            type=ir.TensorType(ir.DataType.INT64))
        graph.register_initializer(constant)
        ir.convenience.replace_all_uses_with(out, constant)
        folded = True
    return folded


def _fold_small_constant_of_shape(node: ir.Node) -> bool | None:
    """True for a ConstantOfShape of a constant, small shape; None leaves the folder's defaults
    (which keep every ConstantOfShape)."""
    if node.op_type != "ConstantOfShape" or node.domain != "":
        return None
    shape = const_array(node.inputs[0])
    return True if shape is not None and int(np.prod(shape)) <= MAX_FOLDED_ELEMENTS else None


class FoldConstantsPass(ir.passes.InPlacePass):
    """Rounds of graph-wide shape inference, onnxscript's folder and static shape reads until one
    changes nothing. A round after one where only the folder changed the graph is not run when
    its shape inference changes no shape either: the folder would then see its own output again,
    on which it finds nothing (it folds in topological order, so one sweep reaches its fixed point)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = only_folder = False
        for _ in range(_MAX_ROUNDS):
            if not infer_shapes(model) and only_folder:
                break
            folded = bool(optimizer.fold_constants(model, onnx_shape_inference=True,
                                                   should_fold=_fold_small_constant_of_shape).modified)
            read = _fold_static_shape_reads(model.graph)
            optimizer.remove_unused_nodes(model)
            modified |= folded or read
            if not (folded or read):
                break
            only_folder = not read
        common_passes.LiftConstantsToInitializersPass(size_limit=0)(model)
        return ir.passes.PassResult(model, modified=modified)
