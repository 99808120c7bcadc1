"""DA-QCFS calibration (paper Algorithm 1, DESIGN §1) as one ONNX Runtime graph.

The graph holds two copies of the network on the same batch: the reference path, whose
activations are the original g_OA (QCFS at T̃, or ClipReLU with the recorded θ), and the actual
path, whose activations are DA-QCFS at T. For each activation l, per channel, in graph order:

    ψ_l ← α ψ_l + (1−α) · mean(z_ref − z_act)          (mean over batch and spatial axes)
    r_ref = g_OA(z_ref),  r_act = DA-QCFS(z_act; θ, φ_l, ψ_l, T)   (with the new ψ_l)
    φ_l ← α φ_l + (1−α) · mean(r_ref − r_act)

and each path feeds its own output to the next layer. ψ and φ are state inputs and outputs of
the graph; one run per batch, one pass over the data.

Invariant: returns, per activation node name, φ and ψ as float32 [C]; silent channels (θ = 0)
get φ = ψ = 0 and stay silent.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir

from snncc.ann_graph import ActivationBuilder, copy_model, replace_activations, to_runnable_proto
from snncc.calibration.dataset import CalibrationData
from snncc.evaluate import progress
from snncc.passes._activation import QCFS, is_activation, read_activation

REF = "ref::"
ACT = "act::"
STATE_IN = "state::"
STATE_OUT = "state_out::"


@dataclasses.dataclass(frozen=True)
class LayerCalibration:
    phi: np.ndarray
    psi: np.ndarray


def reference_thresholds(analysed: ir.Model, recorded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """θ per channel of every activation: QCFS θ broadcast to C, or the recorded ReLU/Clip θ."""
    result = {}
    for node in analysed.graph:
        if not is_activation(node):
            continue
        record = read_activation(node)
        channels = node.inputs[0].shape[1]
        if not isinstance(channels, int):
            raise AssertionError(f"channel count of {node.inputs[0].name} is not static")
        theta = record.theta if record.kind == QCFS else recorded[node.name]
        result[node.name] = np.broadcast_to(theta.astype(np.float32), (channels,)).copy()
    return result


def _channel_mean(b: ActivationBuilder, value: ir.Value, state_shape: ir.Value) -> ir.Value:
    axes = b.initializer(np.array([a for a in range(b.rank) if a != 1], np.int64))
    return b.tape.Reshape(b.tape.ReduceMean(value, axes, keepdims=1), state_shape)


def _reference_path(analysed: ir.Model, thetas: dict[str, np.ndarray]) -> ir.Model:
    model = copy_model(analysed)

    def emit(node: ir.Node, b: ActivationBuilder) -> ir.Value:
        record = read_activation(node)
        return b.original(record) if record.kind == QCFS else b.clip_relu(b.x, thetas[node.name])

    replace_activations(model, emit)
    return model


def _actual_path(analysed: ir.Model, thetas: dict[str, np.ndarray], steps: int, momentum: float) -> tuple[ir.Model, list[str]]:
    """DA-QCFS activations with ψ, φ state, reading z_ref and r_ref from the reference path."""
    model = copy_model(analysed)
    graph = model.graph
    state_outputs: list[ir.Value] = []
    keep = np.float32(momentum)
    refs: dict[str, ir.Value] = {}  # one input per reference value (z of one node may be r of another)

    def reference(value: ir.Value) -> ir.Value:
        if value.is_graph_input():
            return value  # both paths read the same graph input
        if REF + value.name not in refs:
            refs[REF + value.name] = _placeholder(graph, REF + value.name, value)
        return refs[REF + value.name]

    def emit(node: ir.Node, b: ActivationBuilder) -> ir.Value:
        theta = thetas[node.name]
        active = theta > 0
        state_dims = [theta.size] + [1] * (b.rank - 2)
        z_ref, r_ref = reference(node.inputs[0]), reference(node.outputs[0])
        psi = _placeholder(graph, f"{STATE_IN}psi::{node.name}", None, state_dims)
        phi = _placeholder(graph, f"{STATE_IN}phi::{node.name}", None, state_dims)
        state_shape = b.initializer(np.array(state_dims, np.int64))
        t = b.tape
        psi_new = t.Add(t.Mul(psi, b.const(keep, False)),
                        t.Mul(_channel_mean(b, t.Sub(z_ref, b.x), state_shape), b.const(1 - keep, False)))
        r_act = b.da_qcfs(b.x, np.where(active, theta, 1).astype(np.float32), phi, psi_new, steps)
        if not active.all():
            r_act = t.Mul(r_act, b.const(active.astype(np.float32)))
        phi_new = t.Add(t.Mul(phi, b.const(keep, False)),
                        t.Mul(_channel_mean(b, t.Sub(r_ref, r_act), state_shape), b.const(1 - keep, False)))
        psi_new.name, phi_new.name = f"{STATE_OUT}psi::{node.name}", f"{STATE_OUT}phi::{node.name}"
        state_outputs.extend([psi_new, phi_new])
        return r_act

    replace_activations(model, emit)
    graph.outputs.clear()
    graph.outputs.extend(state_outputs)
    return model, [v.name for v in state_outputs]


def _placeholder(graph: ir.Graph, name: str, like: ir.Value | None, dims: list[int] | None = None) -> ir.Value:
    value = ir.Value(name=name, shape=like.shape if like is not None else ir.Shape(dims),
                     type=like.type if like is not None else ir.TensorType(ir.DataType.FLOAT))
    graph.inputs.append(value)
    return value


def _renamed(graph: onnx.GraphProto, rename) -> None:
    for node in graph.node:
        node.name = rename(node.name) if node.name else node.name
        node.input[:] = [rename(n) if n else n for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for collection in (graph.initializer,):
        for item in collection:
            item.name = rename(item.name)
    for collection in (graph.input, graph.output, graph.value_info):
        for item in collection:
            item.name = rename(item.name)


def calibration_graph(analysed: ir.Model, thetas: dict[str, np.ndarray], steps: int, momentum: float) -> tuple[onnx.ModelProto, list[str]]:
    """Both paths in one model: inputs x and ψ/φ state, outputs the updated state."""
    reference = to_runnable_proto(_reference_path(analysed, thetas))
    actual_model, state_names = _actual_path(analysed, thetas, steps, momentum)
    actual = to_runnable_proto(actual_model)
    x_name = reference.graph.input[0].name
    _renamed(reference.graph, lambda n: n if n == x_name else REF + n)
    _renamed(actual.graph, lambda n: n if n == x_name or n.startswith((REF, STATE_IN, STATE_OUT)) else ACT + n)
    merged = actual
    inputs = [i for i in actual.graph.input if not i.name.startswith(REF)]
    del merged.graph.input[:]
    merged.graph.input.extend(inputs)
    nodes = list(reference.graph.node) + list(actual.graph.node)
    del merged.graph.node[:]
    merged.graph.node.extend(nodes)
    merged.graph.initializer.extend(reference.graph.initializer)
    del merged.graph.value_info[:]
    return merged, state_names


def calibrate(analysed: ir.Model, data: CalibrationData, thetas: dict[str, np.ndarray], steps: int,
              momentum: float = 0.99, batch_size: int = 256) -> dict[str, LayerCalibration]:
    """Run Algorithm 1 over the data once; returns φ, ψ per activation node name."""
    from snncc.session import make_session

    proto, state_names = calibration_graph(analysed, thetas, steps, momentum)
    session = make_session(proto, native=False)
    x_name = next(i.name for i in session.get_inputs() if not i.name.startswith(STATE_IN))
    state = {i.name: np.zeros([d for d in i.shape], np.float32) for i in session.get_inputs() if i.name.startswith(STATE_IN)}
    for batch in progress(list(data.batches(batch_size)), f"DA-QCFS calibration at T={steps}"):
        outputs = session.run(state_names, {x_name: batch, **state})
        state = {name.replace(STATE_OUT, STATE_IN, 1): value for name, value in zip(state_names, outputs)}
    result = {}
    for name, theta in thetas.items():
        active = theta > 0
        psi = state[f"{STATE_IN}psi::{name}"].reshape(-1)
        phi = state[f"{STATE_IN}phi::{name}"].reshape(-1)
        result[name] = LayerCalibration(phi=np.where(active, phi, 0).astype(np.float32), psi=np.where(active, psi, 0).astype(np.float32))
    return result
