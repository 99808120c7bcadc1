"""Check that every op between neurons is exact on spike trains (DESIGN §1, network level).

A neuron reads only the T-mean of its input current, so an op between neurons keeps the SNN
equal to the quantised ANN when, applied to each time step on its own, it is affine in its spike
inputs with coefficients that do not depend on them, and it does not mix time steps. Each op's
rule for both halves lives in _batch_axis.RULES; the dataflow analysis follows the batch axis
(T·B rows, time-major) through the graph with them. MaxPool is the one special case: it is exact
on the sorted trains of one neuron layer (possibly through a per-channel affine map, or zero padded,
since trains are >= 0). Ops after the last neuron run on the T-mean and need no check, except that
they must not read the batch size T·B of a spiking tensor.

Invariant: the pass changes nothing; it raises ConversionError listing every offending node.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc.errors import ConversionError, Problem
from snncc.passes._activation import is_activation
from snncc.passes._batch_axis import linearity_problem, rule_of
from snncc.passes._shape_contents import read_from_spikes
from snncc.passes._dataflow import Dataflow, Region, analyse
from snncc.passes._graph import attr as _attr
from snncc.passes._graph import const_array, rank_of, source_of
from snncc.passes.match_qdq import signed_pair_problem

_MAXPOOLS = ("MaxPool", "GlobalMaxPool")
# Elementwise ops whose coefficients may come from the analog input (tiled over the T steps).
_ANALOG_COEFFICIENTS = ("Mul", "Div", "Where")


def _coefficient_problem(node: ir.Node, flow: Dataflow) -> str | None:
    """Weights (inputs outside the op's linear ones) may be constants; analog values only for
    elementwise ops, which see them tiled over the T steps."""
    linear = rule_of(node).linear
    if node.op_type in _ANALOG_COEFFICIENTS or isinstance(linear, str):
        return None
    if any(flow.of(v) is Region.ANALOG for i, v in enumerate(node.inputs) if i not in linear):
        return "its weights depend on the analog input"
    return None


def _maxpool_problem(node: ir.Node, trains: dict[ir.Value, int]) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return "its Indices output is used"
    if trains.get(node.inputs[0]) != 1:
        producer = node.inputs[0].producer()
        origin = f"'{source_of(producer)}' ({producer.op_type})" if producer is not None else "a graph input"
        return (f"its input comes from {origin}, not from the spike trains of one neuron layer: the per-step "
                "maximum is exact only there (not, e.g., on a sum of trains right after a residual Add); "
                "place an activation before it")
    return None


# Ops that map the trains of one neuron layer channel by channel through a monotone affine map,
# so that their outputs are still (affine images of) sorted, nested trains.
_PER_CHANNEL_AFFINE = frozenset({"BatchNormalization", "Mul", "Div", "Add", "Sub", "Neg", "Identity", "MaxPool"})
# Ops that only select, move or pad elements of their input: a train stays the train of its neuron.
_SELECTIONS = frozenset({"Identity", "Transpose", "Pad", "Slice", "Split", "MaxPool", "GlobalMaxPool", "Concat"})


def _per_channel_constant(value: ir.Value | None, rank: int | None) -> bool:
    array = const_array(value)
    if array is None:
        return False
    if array.size == 1:
        return True
    if rank is None or array.ndim > rank:
        return False
    shape = (1,) * (rank - array.ndim) + array.shape
    return all(d == 1 for i, d in enumerate(shape) if i != 1)


def _selected_channel_axis(node: ir.Node, channel: int) -> int | None:
    """Where a selection puts the channel axis of non-negative trains, or None if it breaks them:
    a MaxPool window must see elements of one channel (same θ_post), and padding must be <= 0."""
    op = node.op_type
    if op == "Transpose":
        perm = _attr(node, "perm")
        return None if perm is None else list(perm).index(channel)
    if op == "Concat":
        return channel if _attr(node, "axis") in (channel, channel - (rank_of(node.inputs[0]) or 0)) else None
    if op == "Pad":
        mode = _attr(node, "mode", "constant")
        fill = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(1)
        return channel if mode in ("constant", b"constant") and fill is not None and np.all(fill <= 0) else None
    if op in _MAXPOOLS:
        return channel if channel == 1 else None
    return channel


def neuron_train_values(graph: ir.Graph) -> dict[ir.Value, int]:
    """Values whose elements are each (a monotone per-channel affine image of) the sorted train of
    one neuron, mapped to the axis that holds the neuron layer's channels."""
    raw: dict[ir.Value, int] = {}  # the trains themselves (>= 0), through selections only
    trains: dict[ir.Value, int] = {}
    for node in graph:
        if is_activation(node):
            raw[node.outputs[0]] = trains[node.outputs[0]] = 1
            continue
        data = [v for v in node.inputs if v is not None and const_array(v) is None]
        if not data:
            continue
        if node.op_type in _SELECTIONS and node.domain == "" and all(v in raw for v in data):
            channels = {raw[v] for v in data}
            channel = _selected_channel_axis(node, channels.pop()) if len(channels) == 1 else None
            if channel is not None and (node.op_type != "Pad" or node.inputs[0] is data[0]):
                for out in node.outputs:
                    raw[out] = trains[out] = channel
                continue
        if node.op_type not in _PER_CHANNEL_AFFINE or len(data) != 1 or trains.get(data[0]) != 1:
            continue
        if node.op_type == "Div" and node.inputs[0] is not data[0]:
            continue  # c / x is not affine in x
        others = [v for v in node.inputs if v is not None and v is not data[0]]
        rank = rank_of(data[0])
        if node.op_type == "BatchNormalization" or all(_per_channel_constant(v, rank) for v in others):
            trains[node.outputs[0]] = 1
    return trains


def _between_neurons_problem(node: ir.Node, flow: Dataflow, trains: dict[ir.Value, int]) -> str | None:
    if node.domain != "":
        return f"{node.op_type} ({node.domain}) is not a standard op snncc knows to be exact on spike trains"
    reason = flow.mixes_batch.get(node) or flow.bad_batch_read.get(node)
    if reason:
        return reason
    if node.op_type in _MAXPOOLS:
        return _maxpool_problem(node, trains)
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return signed_pair_problem(node)
    return linearity_problem(node, flow.spiking_inputs(node)) or _coefficient_problem(node, flow)


def _neuron_input_problem(node: ir.Node, flow: Dataflow) -> str | None:
    axis = flow.batch_axis.get(node.inputs[0])
    if axis == 0 or (axis is None and node.inputs[0].producer() in flow.mixes_batch):
        return None  # (a lost axis is reported where it was lost)
    where = "no batch axis" if axis is None else f"its batch on axis {axis}"
    return f"its input current has {where}; a spiking neuron needs the batch (T·B rows) on axis 0"


def _readout_problem(node: ir.Node, flow: Dataflow) -> str | None:
    if any(flow.batch_axis.get(node.inputs[i]) is None for i in flow.spiking_inputs(node)):
        return "its spiking input has lost its batch axis, so snncc cannot average it over the time steps"
    return flow.bad_batch_read.get(node)


def find_problems(graph: ir.Graph) -> list[Problem]:
    """Every node between neurons that is not exact on spike trains, with the reason. A node whose
    input lost its batch axis at an already reported node is not reported again."""
    flow = analyse(graph)
    trains = neuron_train_values(graph)
    problems = []
    reported: set[ir.Value] = set()  # values downstream of a reported loss of the batch axis
    for node in graph:
        if is_activation(node):
            reason = _neuron_input_problem(node, flow)
        elif flow.is_between_neurons(node):
            reason = _between_neurons_problem(node, flow, trains)
        elif flow.is_readout(node):
            reason = _readout_problem(node, flow)
        else:
            reason = flow.bad_batch_read.get(node)
        downstream = any(v in reported for v in node.inputs)
        if reason and not (downstream and _is_lost_axis(node, flow)):
            problems.append(Problem(source_of(node), node.op_type, reason))
        if (reason or downstream) and not any(v in flow.batch_axis for v in node.outputs):
            reported.update(node.outputs)
    for value in graph.outputs:
        contents = flow.elements.get(value)
        if contents is not None and any(read_from_spikes(e) for e in np.asarray(contents).reshape(-1)):
            problems.append(Problem(value.name, "output", "it holds the batch size (T·B in the spiking graph)"))
    return problems


def _is_lost_axis(node: ir.Node, flow: Dataflow) -> bool:
    """The node's problem is only that an input arrives without its batch axis."""
    if node in flow.lost_upstream:
        return True
    checked = [node.inputs[0]] if is_activation(node) else [node.inputs[i] for i in flow.spiking_inputs(node)]
    if not (is_activation(node) or flow.is_readout(node)):
        return False
    return any(flow.batch_axis.get(v) is None for v in checked)


class CheckConvertiblePass(ir.passes.InPlacePass):
    def __init__(self, source: str = "model"):
        super().__init__()
        self.source = source

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        problems = find_problems(model.graph)
        if problems:
            raise ConversionError(problems, self.source)
        return ir.passes.PassResult(model, modified=False)
