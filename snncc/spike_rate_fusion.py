"""Fuse each folded neuron's rate Mul into its `snn.SpikeCount` (the native CPU kernel's optional
input rate_per_spike).

A folded graph passes on the firing rate as `Mul(SpikeCount(M, θ_pre, ψ), θ_post/T)`. On ONNX
Runtime's CPU provider that Mul is a pass of its own over the tensor, and in the NCHWc layout a
costly one: a per-channel Mul runs as a depthwise convolution, a scalar one in NCHW between two
reorders. The native SpikeCount kernel multiplies its count by an optional fourth input exactly
as that Mul does (docs/ops.md), so the fused node computes the same values in one pass.

Invariant: the fused model's outputs equal the input model's bit for bit on the native library.
A Mul is fused only where ONNX Runtime could keep its count in NCHWc (a 4-D count of known
channel count C), the Mul is the count's sole reader and feeds no MatMul (which ONNX Runtime would
fuse a scalar Mul into, rounding otherwise), the count is no graph output (so a requested spike
train still reads counts), and its other operand is an initializer of one value or of shape
[C, 1, 1], the compiler's per-channel parameter shape.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from snncc import ops


def _is_rate(rate: onnx.TensorProto, count_shape: tuple[int | None, ...]) -> bool:
    """Whether a Mul by `rate` scales each channel of a count of `count_shape` and keeps its shape."""
    dims = tuple(rate.dims)
    if len(count_shape) != 4 or count_shape[1] is None:
        return False
    return (len(dims) <= 1 and all(d == 1 for d in dims)) or dims == (count_shape[1], 1, 1)


def fuse_spike_rates(model: onnx.ModelProto, shapes: Mapping[str, tuple[int | None, ...]]) -> onnx.ModelProto:
    """`model` with each fusable rate Mul (module docstring) folded into the SpikeCount before it,
    as a copy; `model` itself where there is none. `shapes`: each tensor's shape by name (None for
    an unknown dimension)."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            readers.setdefault(name, []).append(index)
    fusions: dict[int, int] = {}  # index of a SpikeCount -> index of its rate Mul
    for index, node in enumerate(graph.node):
        if not (node.domain == ops.DOMAIN and node.op_type == ops.SPIKE_COUNT and len(node.input) == 3):
            continue
        count = node.output[0]
        if count in outputs or len(readers.get(count, [])) != 1:
            continue
        mul = graph.node[readers[count][0]]
        rate = [name for name in mul.input if name != count]
        if (mul.domain == "" and mul.op_type == "Mul" and len(rate) == 1 and rate[0] in initializers
                and _is_rate(initializers[rate[0]], shapes.get(count, ()))
                and not any(graph.node[r].op_type == "MatMul" for r in readers.get(mul.output[0], []))):
            fusions[index] = readers[count][0]
    if not fusions:
        return model
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    nodes = list(fused.graph.node)
    for count, mul in fusions.items():
        nodes[count].input.append(next(name for name in nodes[mul].input if name != nodes[count].output[0]))
        nodes[count].output[0] = nodes[mul].output[0]
    del fused.graph.node[:]
    fused.graph.node.extend(node for index, node in enumerate(nodes) if index not in fusions.values())
    return fused
