"""Fuse each folded neuron's rate Mul into its `snn.SpikeCount` (the native CPU kernel's optional
input rate_per_spike).

A folded graph passes on the firing rate as `Mul(SpikeCount(M, θ_pre, ψ), θ_post/T)`. On ONNX
Runtime's CPU provider that Mul is a pass of its own over the tensor, and in the NCHWc layout a
costly one: a per-channel Mul runs as a depthwise convolution, a scalar one in NCHW between two
reorders. The native SpikeCount kernel multiplies its count by an optional fourth input exactly
as that Mul does (docs/ops.md), so the fused node computes the same values in one pass.

Invariant: the fused model's outputs equal the input model's bit for bit on the native library.
A Mul is fused only where it is the count's sole reader, the count is no graph output (so a
requested spike train still reads counts), and its other operand is an initializer that varies
along the channel axis alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from snncc import ops


def _per_channel(shape: tuple[int, ...], rank: int) -> bool:
    """Whether a Mul operand of `shape`, broadcast against a tensor of rank `rank` ([B, C, ...]),
    leaves that tensor's shape as it is and varies along axis 1 only."""
    if rank < 1 or len(shape) > rank:
        return False
    return all(size == 1 for axis, size in enumerate(shape, start=rank - len(shape)) if axis != 1)


def fuse_spike_rates(model: onnx.ModelProto, ranks: Mapping[str, int]) -> onnx.ModelProto:
    """`model` with each fusable rate Mul (module docstring) folded into the SpikeCount before it,
    as a copy; `model` itself where there is none. `ranks`: the rank of each tensor by name."""
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
                and count in ranks and _per_channel(tuple(initializers[rate[0]].dims), ranks[count])):
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
