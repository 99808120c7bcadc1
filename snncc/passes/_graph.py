"""Small helpers shared by the passes: constants, fresh names, provenance tags."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

PASS_KEY = "snncc.pass"
SOURCE_KEY = "snncc.source"
CASE_KEY = "snncc.case"


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents (initializer or Constant output), or None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def is_constant(value: ir.Value | None) -> bool:
    return const_array(value) is not None


def tag(node: ir.Node, pass_name: str, source: str, doc: str | None = None) -> ir.Node:
    """Record which pass created `node` and which original node(s) it stands for."""
    node.metadata_props[PASS_KEY] = pass_name
    node.metadata_props[SOURCE_KEY] = source
    if doc is not None:
        node.doc_string = doc
    return node


def source_of(node: ir.Node) -> str:
    """The original node name a (possibly rewritten) node stands for."""
    return node.metadata_props.get(SOURCE_KEY) or node.name or node.op_type


class NameGenerator:
    """Fresh value and node names that collide with nothing already in the graph."""

    def __init__(self, graph: ir.Graph):
        self._used = {v.name for v in graph.inputs} | set(graph.initializers)
        for node in graph:
            self._used.add(node.name)
            self._used.update(v.name for v in node.outputs)

    def __call__(self, base: str) -> str:
        return fresh_name(base, self._used)


def fresh_name(base: str, used: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... : the first not in `used`, which is then added to it."""
    for i in itertools.count():
        name = base if i == 0 else f"{base}_{i}"
        if name not in used:
            used.add(name)
            return name
    raise AssertionError("unreachable")


def attr(node: ir.Node, name: str, default=None):
    """The value of the node's attribute `name`, or `default` when it is absent."""
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.value


def add_initializer(graph: ir.Graph, names: NameGenerator, base: str, array: np.ndarray) -> ir.Value:
    """A new initializer holding `array` (ir.Tensor, as ir.tensor makes of an array, without its
    checks against the tensor protocols, which cost more than the rest on a big graph)."""
    name = names(base)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.Tensor(array, name=name))
    graph.register_initializer(value)
    return value


def rank_of(value: ir.Value) -> int | None:
    return None if value.shape is None else len(value.shape)


def replace_node(graph: ir.Graph, old: ir.Node, new_nodes: list[ir.Node], new_outputs: list[ir.Value]) -> None:
    """Replace `old` by `new_nodes`, rewiring each of its outputs (graph outputs too) in order."""
    ir.convenience.replace_nodes_and_values(
        graph, old, [old], new_nodes, list(old.outputs)[: len(new_outputs)], new_outputs
    )


def infer_shapes(model: ir.Model) -> bool:
    """onnx's shape inference (strict, with data propagation) written onto the main graph's values;
    a value keeps its shape and type where inference finds none, and the model is left as it was
    if inference fails. True when some node output's shape or type changed. What onnx_ir's
    ShapeInferencePass does, at a fraction of its cost on big graphs: the large initializers are
    left out of the serialised copy as there, and the results are read from the inferred value
    infos instead of deserialising a second model."""

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)

    try:
        inferred = _c_api_utils.call_onnx_api(infer, model)
    except Exception as error:  # noqa: BLE001 (onnx raises several types; the model stays usable)
        logging.getLogger(__name__).warning("shape inference failed: %s; shapes left as they were", error)
        return False
    types = {info.name: info.type for info in (*inferred.graph.value_info, *inferred.graph.output)}
    changed = False
    for node in model.graph:
        for value in node.outputs:
            found = types.get(value.name)
            if found is None or not found.HasField("tensor_type"):
                continue
            shape = ir.serde.deserialize_type_proto_for_shape(found)
            if shape is not None and shape != value.shape:
                value.shape, changed = shape, True
            if found.tensor_type.elem_type and found.tensor_type.elem_type != value.dtype:
                value.dtype, changed = ir.DataType(found.tensor_type.elem_type), True
    return changed


def replace_with_initializer(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, suffix: str) -> None:
    """Point input `index` of `node` at a new initializer holding `array` in the old one's dtype, named
    after it with `suffix` (an initializer that other nodes read stays as it was for them)."""
    old = node.inputs[index]
    node.replace_input_with(index, add_initializer(graph, NameGenerator(graph), f"{old.name}.{suffix}",
                                                   array.astype(old.const_value.numpy().dtype)))
