"""Fold BatchNormalization into the Conv, ConvTranspose or Gemm that precedes it.

Invariant after the pass: no BatchNormalization directly consumes the sole use of a
Conv/ConvTranspose/Gemm output whose weights (and bias) are constants used by it alone. A
BatchNormalization after an activation (Keras' conv -> ReLU -> BN) stays: it is a per-channel
affine map between neurons, which the spiking graph computes exactly.

BN(y) = (y - mean)·s + beta with s = gamma / sqrt(var + epsilon), and y = W·x + b is linear in
W and b, so BN(W·x + b) = (W·s)·x + ((b - mean)·s + beta), s scaling W's output channels.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc.passes._graph import NameGenerator, add_initializer, const_array
from snncc.passes._graph import attr as _attr


def _output_axis(node: ir.Node) -> int | None:
    """The axis of the weight that indexes output channels (None: not foldable)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return None


def _scaled_weights(node: ir.Node, weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    axis = _output_axis(node)
    if node.op_type == "ConvTranspose":  # [C_in, C_out / group, k...]: output channel g·(C_out/group) + j
        group = _attr(node, "group", 1)
        grouped = weights.reshape(group, weights.shape[0] // group, *weights.shape[1:])
        factor = scale.reshape(group, 1, weights.shape[1], *([1] * (weights.ndim - 2)))
        return (grouped * factor).reshape(weights.shape)
    shape = [1] * weights.ndim
    shape[axis] = -1
    return weights * scale.reshape(shape)


def _own_initializer(value: ir.Value | None, user: ir.Node) -> bool:
    """An initializer that only `user` reads (so that it can be rewritten in place)."""
    return (value is not None and value.is_initializer() and value.const_value is not None
            and not value.is_graph_input() and all(u is user for u, _ in value.uses()))


class FoldBatchNormPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = NameGenerator(graph)
        folded = False
        for bn in list(graph):
            folded |= self._fold(graph, names, bn)
        return ir.passes.PassResult(model, modified=folded)

    def _fold(self, graph: ir.Graph, names: NameGenerator, bn: ir.Node) -> bool:
        if bn.op_type != "BatchNormalization" or bn.domain != "" or _attr(bn, "training_mode", 0):
            return False
        if len(bn.outputs) > 1 and any(v.uses() or v.is_graph_output() for v in bn.outputs[1:]):
            return False
        y = bn.inputs[0]
        producer = y.producer()
        if producer is None or producer.domain != "" or _output_axis(producer) is None or len(producer.inputs) < 2:
            return False
        if y.is_graph_output() or any(u is not bn for u, _ in y.uses()):
            return False
        params = [const_array(v) for v in bn.inputs[1:5]]
        weights, bias_value = producer.inputs[1], (producer.inputs[2] if len(producer.inputs) > 2 else None)
        if any(p is None for p in params) or not _own_initializer(weights, producer):
            return False
        if bias_value is not None and not _own_initializer(bias_value, producer):
            return False
        weight_array = weights.const_value.numpy()
        gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
        channels = weight_array.shape[_output_axis(producer)] * (
            _attr(producer, "group", 1) if producer.op_type == "ConvTranspose" else 1)
        bias = np.zeros(1) if bias_value is None else bias_value.const_value.numpy().astype(np.float64).reshape(-1)
        if bias.size not in (1, channels) or len(mean) != channels:
            return False
        scale = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
        if producer.op_type == "Gemm":  # Y = alpha·A·B + beta·C: beta goes into the folded bias
            bias = bias * _attr(producer, "beta", 1.0)
        dtype = weight_array.dtype
        weights.const_value = ir.Tensor(_scaled_weights(producer, weight_array, scale.astype(dtype)), name=weights.name)
        new_bias = ((bias - mean) * scale + beta).astype(dtype)
        if bias_value is None:
            bias_value = add_initializer(graph, names, f"{weights.name}_bias", new_bias)
        else:
            bias_value.const_value = ir.Tensor(new_bias, name=bias_value.name)
            bias_value.shape = ir.Shape(new_bias.shape)
        attributes = [a for name, a in producer.attributes.items() if name != "beta"]
        fused = ir.Node("", producer.op_type, [producer.inputs[0], weights, bias_value], attributes,
                        name=producer.name, metadata_props=dict(producer.metadata_props))
        ir.convenience.replace_nodes_and_values(graph, bn, [producer, bn], [fused], [bn.outputs[0]], [fused.outputs[0]])
        return True
