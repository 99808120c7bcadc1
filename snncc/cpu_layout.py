"""Keep a compiled SNN's neurons in ONNX Runtime's CPU layout (NCHWc) instead of reordering around them.

ONNX Runtime's CPU provider runs 2-D convolutions, pools and a few elementwise ops in NCHWc: each
sample stored as [C / b, H, W, b], channels in blocks of b (8 with AVX2, 16 with AVX-512). Any op it
does not know, such as an `snn` neuron, gets its input reordered to NCHW and its output reordered
back, two extra copies of the tensor per neuron layer. A neuron acts elementwise (ParallelSpike and
SerialIF across time rows too), so it can run on the blocked tensor as it is, given where each
channel's parameters sit: the node attribute `channel_block` = b (docs/ops.md).

`prepare_for_cpu` lets ONNX Runtime's own layout pass do the work: each neuron on a 4-D tensor is
shown to it as Sigmoid -> Tanh, two elementwise ops that its NCHWc pass carries through (a Sigmoid
that follows a convolution is fused into it), the optimised graph is saved, and every neuron is put
back where its Tanh is, with channel_block = b when its input is blocked and its per-channel
parameters padded to the blocked channel count.

Invariant: the prepared model computes bit for bit what the compiled model computes on ONNX
Runtime's CPU provider with the native library (the same convolution kernels, minus pure copies).
It holds ONNX Runtime's internal ops and the CPU's block size, so it runs only there: the same
onnxruntime version, a CPU of the same kind and the native library, which it cannot run without (it
carries no function fallbacks, which do not know channel_block).
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from snncc import ops

NCHWC_DOMAIN = "com.microsoft.nchwc"
_HEAD, _TAIL = "Sigmoid", "Tanh"
# Ops that ONNX Runtime's NCHWc pass runs on blocked tensors as they are (their outputs stay blocked).
_LAYOUT_FREE = {"Add", "Sum", "Mul", "Concat", "Relu", "Sigmoid", "Tanh"}
# What a padded channel's parameters are: no input current there, so no spikes and a zero output.
_PADDING = {"theta_pre": 1.0, "theta_post": 0.0, "psi": 0.0}


class LayoutError(RuntimeError):
    """ONNX Runtime's optimised graph is not what prepare_for_cpu expects (a different onnxruntime?)."""


def _optimise(model: onnx.ModelProto, library: Path | None) -> onnx.ModelProto:
    """The graph that ONNX Runtime's CPU provider runs for `model`, at full optimisation."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
        if library is not None:
            options.register_custom_ops_library(str(library))
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


@functools.lru_cache(maxsize=None)
def nchwc_block_size() -> int:
    """The channel block b of this CPU's NCHWc layout, or 1 when ONNX Runtime does not use NCHWc here.

    Probed by optimising a one-channel convolution: its reordered filter has b output channels.
    """
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "probe", [x], [y], [w])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    optimised = _optimise(probe, None)
    weights = {i.name: i for i in optimised.graph.initializer}
    for node in optimised.graph.node:
        if node.domain == NCHWC_DOMAIN and node.op_type == "Conv":
            return int(weights[node.input[1]].dims[0])
    return 1


def _is_neuron(node: onnx.NodeProto) -> bool:
    return node.domain == ops.DOMAIN and node.op_type in (ops.PARALLEL_SPIKE, ops.SERIAL_IF, ops.SPIKE_COUNT)


def _int_attribute(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _input_ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in infos if v.type.tensor_type.HasField("shape")}


def _with_placeholders(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.NodeProto]]:
    """`model` with every neuron on a 4-D tensor (same shape in and out) replaced by Sigmoid -> Tanh,
    and the replaced neurons by the name of their Tanh (ONNX Runtime may rename its output)."""
    ranks = _input_ranks(model)
    shown = onnx.ModelProto()
    shown.CopyFrom(model)
    neurons: dict[str, onnx.NodeProto] = {}
    nodes = []
    for node in model.graph.node:
        if _is_neuron(node) and not _int_attribute(node, "constant_input") and ranks.get(node.input[0]) == 4:
            head, tail = f"{node.output[0]}/nchwc_head", f"{node.output[0]}/nchwc_neuron"
            neurons[tail] = node
            nodes += [helper.make_node(_HEAD, [node.input[0]], [head], name=head),
                      helper.make_node(_TAIL, [head], [node.output[0]], name=tail)]
        else:
            nodes.append(node)
    del shown.graph.node[:]
    shown.graph.node.extend(nodes)
    return shown, neurons


def _blocked_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names of the tensors that ONNX Runtime's optimised graph holds in NCHWc (nodes in order)."""
    blocked: set[str] = set()
    for node in graph.node:
        if node.domain == NCHWC_DOMAIN:
            if node.op_type != "ReorderOutput":
                blocked.update(node.output)
        elif node.domain == "" and node.op_type in _LAYOUT_FREE and node.input[0] in blocked:
            blocked.update(node.output)
    return blocked


def _unfuse_head(tail: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> tuple[str, str | None]:
    """The neuron's input tensor behind placeholder `tail`, and the head node to drop (None where the
    head was fused into a convolution, whose activation attribute is removed here)."""
    head = producers.get(tail.input[0])
    if head is not None and head.op_type == _HEAD and head.domain == "" and head.name.endswith("/nchwc_head"):
        return head.input[0], head.name
    fused_conv = head is not None and ((head.domain, head.op_type) in ((NCHWC_DOMAIN, "Conv"), ("com.microsoft", "FusedConv")))
    if fused_conv:  # a convolution that the NCHWc pass kept in NCHW is a FusedConv, activation optional
        activation = next((a for a in head.attribute if a.name == "activation"), None)
        if activation is not None and activation.s.decode() == _HEAD:
            kept = [a for a in head.attribute if a.name not in ("activation", "activation_params")]
            del head.attribute[:]
            head.attribute.extend(kept)
            return tail.input[0], None
    raise LayoutError(f"placeholder {tail.name} is fed by {head.op_type if head else 'no node'}, not by its head")


def _padded_parameters(neuron: onnx.NodeProto, block: int, initializers: dict[str, onnx.TensorProto],
                       added: dict[str, onnx.TensorProto]) -> list[str]:
    """The neuron's parameter inputs, per-channel ones padded to a multiple of `block` channels."""
    names = [neuron.input[0]]
    keys = ["theta_pre", "theta_post", "psi"] if len(neuron.input) == 4 else ["theta_pre", "psi"]
    for key, name in zip(keys, neuron.input[1:]):
        values = numpy_helper.to_array(initializers[name])
        channels = values.size
        if channels == 1 or channels % block == 0:
            names.append(name)
            continue
        padded_name = f"{name}.nchwc{block}"
        if padded_name not in added:
            padded = np.full(-(-channels // block) * block, _PADDING[key], dtype=values.dtype)
            padded[:channels] = values.reshape(-1)
            added[padded_name] = numpy_helper.from_array(padded.reshape((-1,) + values.shape[1:]), padded_name)
        names.append(padded_name)
    return names


def prepare_for_cpu(model: onnx.ModelProto, library: Path) -> onnx.ModelProto:
    """`model` as ONNX Runtime's CPU provider runs it, its neurons kept in the NCHWc layout (module
    docstring); `model` itself where this CPU has no NCHWc layout or no neuron can use it."""
    block = nchwc_block_size()
    shown, neurons = _with_placeholders(model)
    if block == 1 or not neurons:
        return model
    prepared = _optimise(shown, library)
    graph = prepared.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {i.name: i for i in model.graph.initializer}
    present = {i.name for i in graph.initializer}
    dropped: set[str] = set()
    added: dict[str, onnx.TensorProto] = {}
    nodes = []
    blocked = _blocked_tensors(graph)
    for node in graph.node:
        if not (node.op_type == _TAIL and node.domain == "" and node.name in neurons):
            nodes.append(node)
            continue
        source, head = _unfuse_head(node, producers)
        if head is not None:
            dropped.add(head)
        neuron = onnx.NodeProto()
        neuron.CopyFrom(neurons.pop(node.name))
        neuron.output[0] = node.output[0]
        if node.input[0] in blocked:
            neuron.input[:] = _padded_parameters(neuron, block, initializers, added)
            neuron.attribute.append(helper.make_attribute("channel_block", block))
        neuron.input[0] = source
        for name in neuron.input[1:]:
            if name not in present and name not in added:
                graph.initializer.append(initializers[name])
                present.add(name)
        nodes.append(neuron)
    if neurons:
        raise LayoutError(f"ONNX Runtime's optimised graph lost the placeholders of {sorted(neurons)}")
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.name not in dropped)
    graph.initializer.extend(added.values())
    del prepared.functions[:]
    if not any(o.domain == ops.DOMAIN for o in prepared.opset_import):
        prepared.opset_import.append(helper.make_opsetid(ops.DOMAIN, ops.VERSION))
    return prepared
