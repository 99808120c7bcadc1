"""Spike, synaptic-operation and MAC counts of a model, computed inside its own graph.

`build_probe(model)` returns a copy of the model with extra outputs (the "probes"), so one run
gives the logits and every count, without copying spike tensors out of ONNX Runtime:

- for each neuron layer (`snn.ParallelSpike`, `snn.SerialIF`: spike trains [T*B, ...], a spike
  is a non-zero entry; `snn.SpikeCount` in folded graphs: the count k per neuron) the number of
  spikes and the output's shape;
- for each synaptic op (Conv, Gemm, MatMul) whose data input carries events: its synaptic
  operations (SOPs), and for every synaptic op the shapes that give its multiply-accumulates.

Events. A spike drives one accumulate per synapse it reaches. Between the neurons and a synaptic
op, an *event map* (the spike indicator, or counts) follows the data through the ops that move or
scale it: shape ops (Reshape, Flatten, Transpose, Slice, Concat, Pad, ...) are applied to it as
they are to the data; per-element affine ops (BatchNormalization, Mul/Div/Add/Sub by a value that
carries no events) keep it; Add/Sub/Sum of several event-carrying inputs add their maps; MaxPool
passes an event where a window has one (on counts: the largest, which equals the per-step union
for sorted trains of one layer); average pooling and the read-out's T-mean become sums, so a
spike reaches every synapse of the pooled value (e.g. GlobalAveragePool -> Gemm head: spikes x
out_features). Pooling, Add and the like are not synaptic; any other op ends the map there.

SOPs of a synaptic op with event map E on its data input:
- Conv: sum(Conv(E, ones[g, C/g, kh, kw], same strides/pads/dilations, group g)) x M/g, i.e.
  every event times the number of outputs whose receptive field holds it (borders included);
- Gemm / MatMul: sum(E) x the number of outputs each input element feeds (N for A, M for B).

MACs of a synaptic op: numel(output) x the length of each output's dot product (C/g*kh*kw for
Conv, K for Gemm/MatMul). Ops whose input carries no events (the first layer on the analog input)
are MACs in the SNN too; `dense MACs per sample` divides by the rows of the output (axis 0: the
batch, or T*batch in time-major tensors), which gives the ANN's MACs for the same layer.

Invariant: SOP, spike and MAC counts are exact integers (sums in double precision).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper

from snncc import ops
from snncc.passes._graph import fresh_name

TRAIN_NEURONS = (ops.PARALLEL_SPIKE, ops.SERIAL_IF)  # output: spike trains, time-major
COUNT_NEURONS = (ops.SPIKE_COUNT,)  # output: spike counts per neuron (folded graphs)
SYNAPTIC_OPS = ("Conv", "Gemm", "MatMul")

# Ops applied to the event map exactly as to the data (data = input 0; other inputs kept).
_STRUCTURAL = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Identity", "Expand", "Tile",
               "Split", "Gather", "DepthToSpace", "SpaceToDepth", "MaxPool", "Pad", "Dropout"}
# Per-element affine ops: the event map passes unchanged when one input carries events.
_AFFINE = {"BatchNormalization", "Mul", "Div", "Add", "Sub", "Neg", "Cast", "Sum"}
# Sums of several event-carrying inputs.
_ADDITIVE = {"Add", "Sub", "Sum"}


def is_neuron(node: onnx.NodeProto) -> bool:
    return node.domain == ops.DOMAIN and node.op_type in TRAIN_NEURONS + COUNT_NEURONS


def neuron_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if is_neuron(n)]


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _source(node: onnx.NodeProto) -> str:
    return next((p.value for p in node.metadata_props if p.key == "snncc.source"), "") or node.name


@dataclasses.dataclass(frozen=True)
class NeuronProbe:
    name: str
    source: str
    steps: int
    spikes: str  # graph output: total spikes in the batch (double scalar)
    shape: str  # graph output: the neuron output's shape (int64)


@dataclasses.dataclass(frozen=True)
class SynapseProbe:
    name: str
    op: str
    events: str | None  # graph output: event-weighted sum (double scalar), None for analog inputs
    event_input: int | None  # which input carries the events
    output_shape: str  # graph output: Shape(Y)
    operand_shape: str  # graph output: Shape(W) for Conv, Shape(A) for Gemm/MatMul
    group: int = 1
    trans_a: int = 0


@dataclasses.dataclass
class Probe:
    model: onnx.ModelProto
    outputs: int  # the original model's output count; probes follow
    neurons: list[NeuronProbe]
    synapses: list[SynapseProbe]
    stopped: list[str]  # ops where an event map ended without reaching a synaptic op (informative)


class _Builder:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        used = {i.name for i in self.graph.input} | {t.name for t in self.graph.initializer}
        for node in self.graph.node:
            used.add(node.name)
            used.update(node.output)
        self._used = used
        self.nodes: list[onnx.NodeProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []

    def name(self, base: str) -> str:
        return fresh_name(f"snncc.probe/{base}", self._used)

    def node(self, op: str, inputs: list[str], base: str, n_outputs: int = 1, **attrs) -> list[str]:
        outputs = [self.name(f"{base}/{op}" if n_outputs == 1 else f"{base}/{op}_{i}") for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.name(f"{base}/{op}.node"), **attrs))
        return outputs

    def output(self, value: str, elem_type: int, shape: list) -> str:
        self.outputs.append(helper.make_tensor_value_info(value, elem_type, shape))
        return value

    def total(self, value: str, base: str) -> str:
        """A double scalar: the sum of every element of `value`."""
        (as_double,) = self.node("Cast", [value], base, to=TensorProto.DOUBLE)
        (summed,) = self.node("ReduceSum", [as_double], base, keepdims=0)
        return self.output(summed, TensorProto.DOUBLE, [])

    def shape(self, value: str, base: str) -> str:
        (shape,) = self.node("Shape", [value], base)
        return self.output(shape, TensorProto.INT64, [None])


def build_probe(model: onnx.ModelProto) -> Probe:
    """A copy of `model` with spike, SOP and MAC probes as extra outputs (see the module doc)."""
    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)
    b = _Builder(probe_model)
    graph = probe_model.graph
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    events: dict[str, str] = {}  # value -> its event map
    neurons: list[NeuronProbe] = []
    synapses: list[SynapseProbe] = []
    stopped: set[str] = set()

    for node in list(graph.node):
        carried = [i for i, name in enumerate(node.input) if name in events]
        if is_neuron(node):
            base = node.name or node.output[0]
            if node.op_type in TRAIN_NEURONS:
                (zero,) = b.node("CastLike", [_const(b, 0.0, base), node.output[0]], base)
                (silent,) = b.node("Equal", [node.output[0], zero], base)
                (fires,) = b.node("Not", [silent], base)
                (indicator,) = b.node("Cast", [fires], base, to=TensorProto.FLOAT)
            else:
                (indicator,) = b.node("Cast", [node.output[0]], base, to=TensorProto.FLOAT)
            events[node.output[0]] = indicator
            neurons.append(NeuronProbe(node.name, _source(node), int(_attr(node, "T", 1)),
                                       b.total(indicator, base), b.shape(node.output[0], base)))
            continue
        if node.op_type in SYNAPTIC_OPS and node.domain in ("", "ai.onnx"):
            synapses.append(_synapse(b, node, events, constants))
            continue
        if not carried or node.domain not in ("", "ai.onnx"):
            if carried and not (node.domain == ops.DOMAIN and node.op_type == ops.SPIKE_TRAIN):  # --emit-spikes output
                stopped.add(f"{node.name} ({node.domain}.{node.op_type})")
            continue
        mapped = _propagate(b, node, carried, events)
        if mapped is None:
            if node.op_type not in ("Shape", "Size"):
                stopped.add(f"{node.name} ({node.op_type})")
            continue
        for out, event_map in zip(node.output, mapped):
            if out:
                events[out] = event_map

    graph.node.extend(b.nodes)
    outputs = len(graph.output)
    graph.output.extend(b.outputs)
    _prune(graph, outputs)
    return Probe(probe_model, outputs, neurons, synapses, sorted(stopped))


def _const(b: _Builder, value: float, base: str) -> str:
    (out,) = b.node("Constant", [], base, value=helper.make_tensor("value", TensorProto.FLOAT, [], [value]))
    return out


def _propagate(b: _Builder, node: onnx.NodeProto, carried: list[int], events: dict[str, str]) -> list[str] | None:
    """The event maps of `node`'s outputs, or None where events stop."""
    op, base = node.op_type, node.name or node.output[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = list(node.input)
    if op in _STRUCTURAL:
        if carried != [0]:
            return None
        inputs[0] = events[inputs[0]]
        if op == "Pad" and len(inputs) > 2:
            inputs[2] = ""  # events pad with zeros
        n_out = len(node.output) if op == "Split" else 1
        if op == "Dropout":
            return [inputs[0]]
        return b.node(op, inputs, base, n_outputs=n_out, **attrs)
    if op == "Concat":
        parts = []
        for i, name in enumerate(inputs):
            if i in carried:
                parts.append(events[name])
            else:
                (shape,) = b.node("Shape", [name], base)
                (zeros,) = b.node("ConstantOfShape", [shape], base,
                                  value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
                parts.append(zeros)
        return b.node("Concat", parts, base, **attrs)
    if op in _ADDITIVE and len(carried) > 1:
        return b.node("Sum", [events[inputs[i]] for i in carried], base)
    if op in _AFFINE and len(carried) == 1 and (op not in ("Div", "BatchNormalization") or carried == [0]):
        if op == "Cast":
            return None if attrs.get("to") in (TensorProto.BOOL,) else [events[inputs[0]]]
        return [events[inputs[carried[0]]]]
    if op == "AveragePool" and carried == [0]:
        keep = {k: v for k, v in attrs.items() if k in ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")}
        return b.node("LpPool", [events[inputs[0]]], base, p=1, **keep)
    if op == "GlobalAveragePool" and carried == [0]:
        return b.node("GlobalLpPool", [events[inputs[0]]], base, p=1)
    if op in ("ReduceMean", "ReduceSum") and carried == [0]:
        inputs[0] = events[inputs[0]]
        return b.node("ReduceSum", inputs, base, **attrs)
    return None


def _synapse(b: _Builder, node: onnx.NodeProto, events: dict[str, str], constants: set[str]) -> SynapseProbe:
    op, base = node.op_type, node.name or node.output[0]
    y = node.output[0]
    operand = node.input[1] if op == "Conv" else node.input[0]
    probe = dict(name=node.name or y, op=op, output_shape=b.shape(y, base), operand_shape=b.shape(operand, base))
    if op == "Conv":
        group = int(_attr(node, "group", 1))
        probe["group"] = group
        if node.input[0] not in events:
            return SynapseProbe(events=None, event_input=None, **probe)
        # ones[g, C/g, kh, kw]: one output channel per group; every output channel of a group sees the same inputs.
        (w_shape,) = b.node("Shape", [node.input[1]], base, start=1)
        (groups,) = b.node("Constant", [], base, value=helper.make_tensor("value", TensorProto.INT64, [1], [group]))
        (k_shape,) = b.node("Concat", [groups, w_shape], base, axis=0)
        (ones,) = b.node("ConstantOfShape", [k_shape], base, value=helper.make_tensor("value", TensorProto.FLOAT, [1], [1.0]))
        keep = {a.name: helper.get_attribute_value(a) for a in node.attribute
                if a.name in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}
        (reached,) = b.node("Conv", [events[node.input[0]], ones], base, **keep)
        return SynapseProbe(events=b.total(reached, base), event_input=0, **probe)
    probe["trans_a"] = int(_attr(node, "transA", 0)) if op == "Gemm" else 0
    carried = [i for i in (0, 1) if node.input[i] in events]
    if len(carried) != 1:
        return SynapseProbe(events=None, event_input=None, **probe)
    return SynapseProbe(events=b.total(events[node.input[carried[0]]], base), event_input=carried[0], **probe)


def _prune(graph: onnx.GraphProto, keep_from: int) -> None:
    """Drop probe nodes that feed no graph output (event maps that reached nothing)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        is_probe = node.name.startswith("snncc.probe/")
        if not is_probe or any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs read outer values
                if attr.type == onnx.AttributeProto.GRAPH:
                    needed.update(_outer_names(attr.g))
    del graph.node[:]
    graph.node.extend(reversed(kept))


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _outer_names(attr.g)
    return names


# ---------------------------------------------------------------- accumulating counts over batches


@dataclasses.dataclass
class NeuronCounts:
    name: str
    source: str
    neurons: int  # neurons per sample (elements of one step's output)
    spikes: float = 0.0  # total over samples and steps
    steps: int = 1

    def firing_rate(self, samples: int) -> float:
        """Spikes per neuron per time-step."""
        return self.spikes / (self.neurons * self.steps * samples) if samples and self.neurons else 0.0


@dataclasses.dataclass
class SynapseCounts:
    name: str
    op: str
    input: str  # "spikes" or "analog"
    sops: float = 0.0  # total synaptic operations (events x fan-out)
    macs: float = 0.0  # multiply-accumulates actually run (analog inputs only)
    dense_macs: float = 0.0  # per sample: the MACs of one ANN evaluation of this layer


@dataclasses.dataclass
class Counts:
    """Totals over the samples seen so far."""

    samples: int = 0
    neurons: list[NeuronCounts] = dataclasses.field(default_factory=list)
    synapses: list[SynapseCounts] = dataclasses.field(default_factory=list)

    @property
    def spikes(self) -> float:
        return sum(n.spikes for n in self.neurons)

    @property
    def sops(self) -> float:
        return sum(s.sops for s in self.synapses)

    @property
    def macs(self) -> float:
        return sum(s.macs for s in self.synapses)

    @property
    def dense_macs(self) -> float:
        return sum(s.dense_macs for s in self.synapses)

    def firing_rate(self) -> float:
        total = sum(n.neurons * n.steps for n in self.neurons) * self.samples
        return self.spikes / total if total else 0.0


def _macs(op: str, y_shape: np.ndarray, operand_shape: np.ndarray, trans_a: int) -> float:
    size = float(np.prod(y_shape, dtype=np.float64))
    if op == "Conv":
        return size * float(np.prod(operand_shape[1:], dtype=np.float64))
    if op == "Gemm":
        return size * float(operand_shape[0] if trans_a else operand_shape[1])
    return size * float(operand_shape[-1])  # MatMul: A [..., K]


def _fan_out(syn: SynapseProbe, y_shape: np.ndarray, operand_shape: np.ndarray) -> float:
    if syn.op == "Conv":
        return float(operand_shape[0]) / syn.group  # output channels per group
    if syn.event_input == 0:
        return float(y_shape[-1])  # A's elements feed N outputs
    return float(y_shape[-2]) if len(y_shape) >= 2 else 1.0  # B's elements feed M outputs


def start_counts(probe: Probe) -> Counts:
    return Counts(
        neurons=[NeuronCounts(n.name, n.source, 0, steps=n.steps) for n in probe.neurons],
        synapses=[SynapseCounts(s.name, s.op, "spikes" if s.events else "analog") for s in probe.synapses],
    )


def accumulate(counts: Counts, probe: Probe, outputs: list[np.ndarray], batch: int) -> None:
    """Add one batch's probe outputs (the session's outputs after the model's own) to `counts`."""
    values = dict(zip([o.name for o in probe.model.graph.output], outputs))
    counts.samples += batch
    for n, c in zip(probe.neurons, counts.neurons):
        c.spikes += float(values[n.spikes])
        c.neurons = int(np.prod(values[n.shape][1:], dtype=np.int64))
    for s, c in zip(probe.synapses, counts.synapses):
        y_shape, operand_shape = values[s.output_shape], values[s.operand_shape]
        macs = _macs(s.op, y_shape, operand_shape, s.trans_a)
        rows = float(y_shape[0]) if len(y_shape) > 1 else 1.0
        c.dense_macs = macs / rows
        if s.events:
            c.sops += float(values[s.events]) * _fan_out(s, y_shape, operand_shape)
        else:
            c.macs += macs
