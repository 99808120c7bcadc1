"""Bring QuantizeLinear / DequantizeLinear (QDQ models) to one form.

- A DequantizeLinear of constants (quantised weights and biases) becomes a float initializer
  holding exactly what ONNX Runtime computes, (q − zero_point) · scale in the scale's type.
- Q/DQ nodes in the `com.microsoft` domain (onnxruntime.quantization writes 4-bit and 16-bit types
  there below opset 21) move to the standard domain, whose opset 21 has the same semantics.

Invariant after the pass: no DequantizeLinear reads only constants (blocked quantisation,
`block_size` > 0, and graph outputs excepted: they stay, as constant subgraphs), and every Q/DQ node is in the
standard domain.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc.passes._graph import NameGenerator, add_initializer, const_array

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_CONTRIB_DOMAIN = "com.microsoft"


def is_qdq(node: ir.Node, op_type: str | None = None) -> bool:
    """A Q or DQ node (of the given type) in the standard or the ONNX Runtime contrib domain."""
    return node.domain in ("", "ai.onnx", _CONTRIB_DOMAIN) and node.op_type in ((op_type,) if op_type else QDQ_OPS)


def attribute(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def axis_shape(scale: np.ndarray, rank: int, axis: int) -> tuple[int, ...]:
    """The shape that broadcasts a per-axis scale (or zero point) of a Q/DQ against a rank-`rank` tensor."""
    if scale.size == 1:
        return ()
    shape = [1] * rank
    shape[axis % rank] = scale.size
    return tuple(shape)


def dequantize(quantised: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """ONNX DequantizeLinear (per tensor or per axis) in the scale's float type."""
    shape = axis_shape(scale, quantised.ndim, axis)
    integers = quantised.astype(np.int32)
    if zero_point is not None:
        integers = integers - zero_point.astype(np.int32).reshape(shape)
    return integers.astype(scale.dtype) * scale.reshape(shape)


def _fold(node: ir.Node) -> np.ndarray | None:
    arrays = [const_array(v) if v is not None else None for v in node.inputs]
    if arrays[0] is None or arrays[1] is None or (len(arrays) > 2 and node.inputs[2] is not None and arrays[2] is None):
        return None
    if attribute(node, "block_size", 0) != 0:
        return None
    return dequantize(arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None, attribute(node, "axis", 1))


class CanonicalizeQdqPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = NameGenerator(graph)
        modified = False
        for node in list(graph):
            if not is_qdq(node):
                continue
            if node.domain == _CONTRIB_DOMAIN:
                node.domain = ""
                modified = True
            if node.op_type != "DequantizeLinear":
                continue
            out = node.outputs[0]
            folded = None if out.is_graph_output() else _fold(node)
            if folded is None:
                continue
            constant = add_initializer(graph, names, f"{out.name}_folded", folded)
            ir.convenience.replace_all_uses_with(out, constant)
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified=modified)
