"""Keep a compiled SNN's neurons in ONNX Runtime's CPU layout (NCHWc) instead of reordering around them.

ONNX Runtime's CPU provider runs 2-D convolutions, pools and a few elementwise ops in NCHWc: each
sample stored as [C / b, H, W, b], channels in blocks of b (16 with AVX-512, else 8). Any op it
does not know, such as an `snn` neuron, gets its input reordered to NCHW and its output reordered
back, two extra copies of the tensor per neuron layer. A neuron acts elementwise (ParallelSpike and
SerialIF across time rows too), so it can run on the blocked tensor as it is, given where each
channel's parameters sit: the node attribute `channel_block` = b (docs/ops.md).

`prepare_for_cpu` lets ONNX Runtime's own layout pass do the work: each neuron on a 4-D tensor is
shown to it as Sigmoid -> Tanh, two elementwise ops that its NCHWc pass carries through (a Sigmoid
that follows a convolution is fused into it), the optimised graph is saved, and every neuron is put
back where its Tanh is, with channel_block = b when its input is blocked and its per-channel
parameters padded to the blocked channel count. A neuron that ONNX Runtime leaves in NCHW between
reorders only (the constant_input ParallelSpike, whose batch changes so that no placeholder fits
it, and a serial-IF neuron behind a Tile, which ONNX Runtime runs in NCHW) is blocked by dropping
those reorders. Before all this, a folded model's rate Muls are fused into their SpikeCounts
(snncc.spike_rate_fusion), which ONNX Runtime would otherwise run as depthwise convolutions or in
NCHW between reorders.

Invariant: the prepared model computes what the compiled model computes on ONNX Runtime's CPU
provider with the native library, with the same convolution kernels minus pure copies. Where the
blocked layout lets ONNX Runtime fuse more (a residual Add into the convolution before it),
currents can differ in float rounding, and a neuron whose drive lies within that rounding of a
firing threshold can fire one spike more or less: the rounding rule of docs/ops.md. Elsewhere the
outputs are bit-identical.
It holds ONNX Runtime's internal ops and the CPU's block size, so it runs only there: the same
onnxruntime version, a CPU of the same kind and the native library, which it cannot run without (it
carries no function fallbacks, which know neither channel_block nor rate_per_spike).
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
from snncc.spike_rate_fusion import fuse_spike_rates

NCHWC_DOMAIN = "com.microsoft.nchwc"
_HEAD, _TAIL = "Sigmoid", "Tanh"
# What a padded channel's parameters are: no input current there, so no spikes and a zero output.
_PADDING = {"theta_pre": 1.0, "theta_post": 0.0, "psi": 0.0, "rate_per_spike": 0.0}


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


def _int_attribute(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _is_blocked(node: onnx.NodeProto) -> bool:
    """Whether `node` is a neuron that runs in NCHWc (channel_block > 1)."""
    return ops.is_neuron(node) and _int_attribute(node, "channel_block", 1) > 1


def blocked_neurons(model: onnx.ModelProto) -> tuple[int, int]:
    """How many neuron layers `model` has, and how many of them run in NCHWc."""
    return sum(map(ops.is_neuron, model.graph.node)), sum(map(_is_blocked, model.graph.node))


def is_prepared(model: onnx.ModelProto) -> bool:
    """Whether `model` comes from prepare_for_cpu: it holds ONNX Runtime's NCHWc ops, a blocked
    neuron or a SpikeCount with a fused rate."""
    return any(node.domain == NCHWC_DOMAIN or _is_blocked(node)
               or (ops.is_neuron(node) and node.op_type == ops.SPIKE_COUNT and len(node.input) > 3 and node.input[3])
               for node in model.graph.node)


def _tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Each tensor's shape as ONNX shape inference finds it (None for a dimension it leaves open)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim)
            for v in infos if v.type.tensor_type.HasField("shape")}


def _with_placeholders(model: onnx.ModelProto, shapes: dict[str, tuple[int | None, ...]]
                       ) -> tuple[onnx.ModelProto, dict[str, onnx.NodeProto]]:
    """`model` with every neuron on a 4-D tensor (same shape in and out) replaced by Sigmoid -> Tanh,
    and the replaced neurons by the name of their Tanh (ONNX Runtime may rename its output).

    A neuron that shares its input with another neuron keeps its op: ONNX Runtime would merge the
    two identical placeholders into one."""
    initializers = {i.name for i in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        if ops.is_neuron(node):
            readers[node.input[0]] = readers.get(node.input[0], 0) + 1
    shown = onnx.ModelProto()
    shown.CopyFrom(model)
    neurons: dict[str, onnx.NodeProto] = {}
    nodes = []
    for node in model.graph.node:
        if (ops.is_neuron(node) and not _int_attribute(node, "constant_input") and len(shapes.get(node.input[0], ())) == 4
                and readers[node.input[0]] == 1 and set(node.input[1:]) <= initializers):
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
    """Names of the tensors that ONNX Runtime's optimised graph holds in NCHWc (nodes in order).

    Its NCHWc pass lets a blocked tensor reach only ops that it runs in NCHWc, and all of them but
    ReorderOutput keep it blocked: its own (domain com.microsoft.nchwc) and standard ones that it
    has switched over (Add, Sum, Mul, Concat, Relu, Sigmoid, Tanh, and the Reshapes it puts
    around an Add whose input shapes it cannot prove equal)."""
    blocked: set[str] = set()
    for node in graph.node:
        if node.domain == NCHWC_DOMAIN and node.op_type == "ReorderOutput":
            continue
        if node.domain == NCHWC_DOMAIN or (node.input and node.input[0] in blocked):
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


class _Parameters:
    """The initializers that restored neurons read: the compiled model's, padded where blocked."""

    def __init__(self, model: onnx.ModelProto, graph: onnx.GraphProto, block: int):
        self.source = {i.name: i for i in model.graph.initializer}
        self.graph, self.block = graph, block
        self.present = {i.name for i in graph.initializer}

    def block_neuron(self, neuron: onnx.NodeProto) -> None:
        """Sets channel_block on `neuron`, its per-channel parameters padded to whole blocks."""
        for index, (key, name) in enumerate(zip(ops.PARAMETER_INPUTS[neuron.op_type], neuron.input[1:]), start=1):
            values = numpy_helper.to_array(self.source[name])
            if values.size == 1 or values.size % self.block == 0:
                continue
            padded = np.full(-(-values.size // self.block) * self.block, _PADDING[key], dtype=values.dtype)
            padded[:values.size] = values.reshape(-1)
            neuron.input[index] = f"{name}.nchwc{self.block}"
            self._add(numpy_helper.from_array(padded.reshape((-1,) + values.shape[1:]), neuron.input[index]))
        neuron.attribute.append(helper.make_attribute("channel_block", self.block))

    def provide(self, neuron: onnx.NodeProto) -> None:
        """Adds the compiled model's initializers that `neuron` reads and the graph lacks."""
        for name in neuron.input[1:]:
            if name in self.source:
                self._add(self.source[name])

    def _add(self, tensor: onnx.TensorProto) -> None:
        if tensor.name not in self.present:
            self.graph.initializer.append(tensor)
            self.present.add(tensor.name)


def _restore_neurons(graph: onnx.GraphProto, neurons: dict[str, onnx.NodeProto], parameters: _Parameters) -> None:
    """Puts every neuron back in place of its placeholder, blocked where its input is blocked."""
    producers = {out: node for node in graph.node for out in node.output}
    blocked = _blocked_tensors(graph)
    dropped: set[str] = set()
    nodes = []
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
        parameters.provide(neuron)
        if node.input[0] in blocked:
            parameters.block_neuron(neuron)
        neuron.input[0] = source
        nodes.append(neuron)
    if neurons:
        raise LayoutError(f"ONNX Runtime's optimised graph lost the placeholders of {sorted(neurons)}")
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.name not in dropped)


def _is_reorder(node: onnx.NodeProto | None, op_type: str) -> bool:
    return (node is not None and node.domain == NCHWC_DOMAIN and node.op_type == op_type
            and _int_attribute(node, "channels_last") == 0)


def _batch_tile(node: onnx.NodeProto | None, graph: onnx.GraphProto) -> bool:
    """Whether `node` is a Tile that repeats whole samples (repeats [k, 1, 1, 1]): layout-free."""
    if node is None or node.domain != "" or node.op_type != "Tile":
        return False
    repeats = next((i for i in graph.initializer if i.name == node.input[1]), None)
    return repeats is not None and list(numpy_helper.to_array(repeats))[1:] == [1, 1, 1]


def _absorb_reorders(graph: onnx.GraphProto, parameters: _Parameters) -> None:
    """Blocks each NCHW neuron that sits between ReorderOutput and ReorderInput nodes only: the
    first neuron of an expanded model (constant_input: one step in, T steps out; no placeholder
    fits it) or of a serial-IF model (behind a Tile of whole samples, which ONNX Runtime runs in
    NCHW)."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    renamed: dict[str, str] = {}
    stale: set[str] = set()  # tensors whose recorded shapes have the logical channel count
    for neuron in graph.node:
        if (not ops.is_neuron(neuron) or _is_blocked(neuron)
                or not set(neuron.input[1:]) <= parameters.source.keys()):
            continue
        head = neuron
        tile = producers.get(neuron.input[0])
        if _batch_tile(tile, graph) and len(consumers[tile.output[0]]) == 1 and tile.output[0] not in outputs:
            head = tile
        reorder_output = producers.get(head.input[0])
        readers = consumers.get(neuron.output[0], [])
        if (not _is_reorder(reorder_output, "ReorderOutput") or neuron.output[0] in outputs or not readers
                or not all(_is_reorder(r, "ReorderInput") for r in readers)):
            continue
        head.input[0] = reorder_output.input[0]
        parameters.block_neuron(neuron)
        for reader in readers:
            renamed[reader.output[0]] = neuron.output[0]
            removed.add(id(reader))
        consumers[reorder_output.output[0]].remove(head)
        if not consumers[reorder_output.output[0]] and reorder_output.output[0] not in outputs:
            removed.add(id(reorder_output))
        stale.update((head.output[0], neuron.output[0]))
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    nodes = [n for n in graph.node if id(n) not in removed]
    for node in nodes:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(nodes)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Removes the initializers no node reads (unpadded parameters replaced by padded ones)."""
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def prepare_for_cpu(model: onnx.ModelProto, library: Path) -> onnx.ModelProto:
    """`model` as ONNX Runtime's CPU provider runs it, its neurons kept in the NCHWc layout (module
    docstring); `model` itself where this CPU has no NCHWc layout, no neuron can use it, or `model`
    is prepared already."""
    block = nchwc_block_size()
    if block == 1 or not any(ops.is_neuron(n) for n in model.graph.node) or is_prepared(model):
        return model
    shapes = _tensor_shapes(model)
    fused = fuse_spike_rates(model, shapes)
    shown, neurons = _with_placeholders(fused, shapes)
    prepared = _optimise(shown, library)
    parameters = _Parameters(fused, prepared.graph, block)
    _restore_neurons(prepared.graph, neurons, parameters)
    _absorb_reorders(prepared.graph, parameters)
    if not blocked_neurons(prepared)[1]:
        return model
    _drop_unused_initializers(prepared.graph)
    del prepared.functions[:]
    if not any(o.domain == ops.DOMAIN for o in prepared.opset_import):
        prepared.opset_import.append(helper.make_opsetid(ops.DOMAIN, ops.VERSION))
    return prepared
