"""Check that every op between neurons is exact on spike trains (DESIGN §1, network level).

A neuron reads only the T-mean of its input current, so an op between neurons keeps the SNN
equal to the quantised ANN when it is affine in its spike inputs (Conv, Gemm, BatchNorm, Add,
pooling by averaging, Concat, reshapes that keep the batch axis, zero Pad, scaling by constants),
or when it is a MaxPool over the sorted trains of one neuron layer (possibly through a per-channel
affine map). Ops after the last neuron run on the T-mean and need no check; ops before the first
neuron see an analog input that is the same at every step.

Invariant: the pass changes nothing; it raises ConversionError listing every offending node.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from snncc.errors import ConversionError, Problem
from snncc.passes._activation import is_activation
from snncc.passes._dataflow import Dataflow, Region, analyse
from snncc.passes._graph import const_array, rank_of, source_of
from snncc.passes.match_qdq import signed_pair_problem


def _attr(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _axes(node: ir.Node, input_index: int, attr: str = "axes") -> list[int] | None:
    """Constant axes (from the input of that index, else the attribute), normalised; None if dynamic."""
    array = const_array(node.inputs[input_index]) if len(node.inputs) > input_index and node.inputs[input_index] is not None else None
    axes = list(array.reshape(-1)) if array is not None else _attr(node, attr)
    if axes is None:
        return None
    rank = rank_of(node.inputs[0])
    return [int(a) + rank if a < 0 and rank is not None else int(a) for a in axes]


def _touches_batch(axes: list[int] | None, what: str) -> str | None:
    if axes is None:
        return f"{what} are not constant"
    return f"{what} include the batch axis 0, which carries the time-steps" if 0 in axes or any(a < 0 for a in axes) else None


def _only_input0_spiking(node: ir.Node, flow: Dataflow) -> str | None:
    if flow.spiking_inputs(node) != [0]:
        return "its weights depend on spikes (a product of spiking tensors is not linear)"
    if any(flow.of(v) is Region.ANALOG for v in node.inputs[1:]):
        return "its weights depend on the analog input"
    return None


def _check_gemm(node, flow, trains):
    if _attr(node, "transA", 0):
        return "transA=1 moves the batch axis, which carries the time-steps"
    return _only_input0_spiking(node, flow)


def _check_mul(node, flow, trains):
    if len(flow.spiking_inputs(node)) > 1:
        return "multiplies two spiking tensors (e.g. two activations): not linear in the spikes"
    return None


def _check_div(node, flow, trains):
    return None if flow.spiking_inputs(node) == [0] else "divides by a spiking tensor: not linear in the spikes"


def _check_reduce(node, flow, trains):
    axes = _axes(node, 1)
    if axes is None and len(node.inputs) < 2 and not _attr(node, "noop_with_empty_axes", 0):
        return "reduces over all axes, including the batch axis that carries the time-steps"
    return _touches_batch(axes, "reduction axes")


def _check_axis_attr(default: int | None) -> Callable:
    def check(node, flow, trains):
        axis = _attr(node, "axis", default)
        rank = rank_of(node.inputs[0])
        if axis is not None and axis < 0 and rank is not None:
            axis += rank
        return "operates along the batch axis 0, which carries the time-steps" if axis == 0 or axis is None else None
    return check


def _check_reshape(node, flow, trains):
    target = const_array(node.inputs[1])
    if target is None:
        return None if flow.of(node.inputs[1]) is Region.SHAPE else "its target shape depends on data"
    if target.size and int(target.reshape(-1)[0]) not in (0, -1):
        return f"its target shape {target.tolist()} fixes the batch size; use 0 or -1 for axis 0"
    return None


def _check_transpose(node, flow, trains):
    perm = _attr(node, "perm")
    return None if perm is not None and perm[0] == 0 else "moves the batch axis 0, which carries the time-steps"


def _check_pad(node, flow, trains):
    mode = _attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        return f"pad mode '{mode}' is not linear in the spikes (only zero padding is)"
    value = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(1)
    if value is None or np.any(value != 0):
        return "pads with a non-zero value (only zero padding is exact)"
    pads = const_array(node.inputs[1])
    if pads is None:
        return "its pads are not constant"
    axes = _axes(node, 3) if len(node.inputs) > 3 and node.inputs[3] is not None else list(range(pads.size // 2))
    begins, ends = pads[: len(axes)], pads[len(axes):]
    if any(a == 0 and (b or e) for a, b, e in zip(axes, begins, ends)):
        return "pads the batch axis 0, which carries the time-steps"
    return None


def _check_maxpool(node, flow, trains):
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return "its Indices output is used"
    if node.inputs[0] not in trains:
        producer = node.inputs[0].producer()
        origin = f"'{source_of(producer)}' ({producer.op_type})" if producer is not None else "a graph input"
        return (f"its input comes from {origin}, not from the spike trains of one neuron layer: the per-step "
                "maximum is exact only there (not, e.g., on a sum of trains right after a residual Add); "
                "place an activation before it")
    return None


def _check_slice(node, flow, trains):
    return _touches_batch(_axes(node, 3), "slice axes")


def _check_squeeze(node, flow, trains):
    return _touches_batch(_axes(node, 1), "squeezed axes")


def _shape_consumers(node: ir.Node, flow: Dataflow) -> list[ir.Node | None]:
    """The first nodes downstream of a shape computation that read data, not shapes (None: a graph output)."""
    found, frontier, seen = [], list(node.outputs), set()
    while frontier:
        value = frontier.pop()
        if value.is_graph_output():
            found.append(None)
        for use in value.uses():
            consumer = use.node
            if consumer in seen:
                continue
            seen.add(consumer)
            if all(flow.of(out) is Region.SHAPE for out in consumer.outputs):
                frontier.extend(consumer.outputs)
            else:
                found.append(consumer)
    return found


def _check_shape(node, flow, trains):
    """Shape/Size of a spiking tensor read the batch T·B: right only for reshaping spiking tensors."""
    if node.op_type == "Shape" and _attr(node, "start", 0) >= 1:
        return None  # reads no batch dimension
    for consumer in _shape_consumers(node, flow):
        if consumer is None:
            return "its batch size (T·B in the spiking graph) reaches a graph output"
        if not flow.is_between_neurons(consumer):
            return (f"its batch size (T·B in the spiking graph) is used by '{source_of(consumer)}' "
                    f"({consumer.op_type}), which does not compute on spike trains")
    return None


def _ok(node, flow, trains):
    return None


_CHECKS: dict[str, Callable] = {
    "Conv": lambda n, f, t: _only_input0_spiking(n, f),
    "ConvTranspose": lambda n, f, t: _only_input0_spiking(n, f),
    "MatMul": lambda n, f, t: _only_input0_spiking(n, f),
    "BatchNormalization": lambda n, f, t: _only_input0_spiking(n, f),
    "Gemm": _check_gemm,
    "Add": _ok, "Sub": _ok, "Sum": _ok, "Neg": _ok, "Identity": _ok,
    "Mul": _check_mul,
    "Div": _check_div,
    "AveragePool": _ok, "GlobalAveragePool": _ok,
    "ReduceMean": _check_reduce, "ReduceSum": _check_reduce,
    "Concat": _check_axis_attr(None),
    "Split": _check_axis_attr(0),
    "Flatten": _check_axis_attr(1),
    "Reshape": _check_reshape,
    "Transpose": _check_transpose,
    "Squeeze": _check_squeeze, "Unsqueeze": _check_squeeze,
    "Slice": _check_slice,
    "Pad": _check_pad,
    "MaxPool": _check_maxpool,
    "Shape": _check_shape, "Size": _check_shape,
    "QuantizeLinear": lambda n, f, t: signed_pair_problem(n),
    "DequantizeLinear": lambda n, f, t: signed_pair_problem(n),
}

# Ops that map the trains of one neuron layer channel by channel through a monotone affine map,
# so that their outputs are still (affine images of) sorted, nested trains.
_PER_CHANNEL_AFFINE = frozenset({"BatchNormalization", "Mul", "Div", "Add", "Sub", "Neg", "Identity", "MaxPool"})


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


def neuron_train_values(graph: ir.Graph) -> set[ir.Value]:
    """Values that are, channel by channel, a monotone affine image of one neuron layer's trains."""
    trains: set[ir.Value] = set()
    for node in graph:
        if is_activation(node):
            trains.add(node.outputs[0])
            continue
        data = [v for v in node.inputs if v is not None and const_array(v) is None]
        if not data or not all(v in trains for v in data):
            continue
        if node.op_type == "Concat":
            if _attr(node, "axis") in (1, -(rank_of(data[0]) or 0) + 1):
                trains.add(node.outputs[0])
            continue
        if node.op_type not in _PER_CHANNEL_AFFINE or len(data) != 1:
            continue
        if node.op_type == "Div" and node.inputs[0] is not data[0]:
            continue  # c / x is not affine in x
        others = [v for v in node.inputs if v is not None and v is not data[0]]
        rank = rank_of(data[0])
        if node.op_type == "BatchNormalization" or all(_per_channel_constant(v, rank) for v in others):
            trains.add(node.outputs[0])
    return trains


def find_problems(graph: ir.Graph) -> list[Problem]:
    """Every node between neurons that is not exact on spike trains, with the reason."""
    flow = analyse(graph)
    trains = neuron_train_values(graph)
    problems = []
    for node in graph:
        if not flow.is_between_neurons(node):
            continue
        check = _CHECKS.get(node.op_type) if node.domain == "" else None
        if check is None:
            reason = (f"{node.op_type} is not affine in its spike inputs; only exact ops may sit between "
                      "neurons (it may follow the last neuron, where it runs on the T-mean)")
        else:
            reason = check(node, flow, trains)
        if reason:
            problems.append(Problem(source_of(node), node.op_type, reason))
    return problems


class CheckConvertiblePass(ir.passes.InPlacePass):
    def __init__(self, source: str = "model"):
        super().__init__()
        self.source = source

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        problems = find_problems(model.graph)
        if problems:
            raise ConversionError(problems, self.source)
        return ir.passes.PassResult(model, modified=False)
