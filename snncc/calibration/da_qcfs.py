"""DA-QCFS calibration (paper Algorithm 1, DESIGN §1) as one ONNX Runtime graph.

The reference path (activations g_OA: QCFS at T̃, or ClipReLU with the recorded θ) enters only
through its per-batch channel means, computed beforehand (`reference_means`). The graph is the
actual path, whose activations are DA-QCFS at T. For each activation l, per channel, in graph
order:

    ψ_l ← α ψ_l + (1−α) · (mean z_ref − mean z_act)          (means over batch and spatial axes)
    r_act = DA-QCFS(z_act; θ, φ_l, ψ_l, T)                   (with the new ψ_l)
    φ_l ← α φ_l + (1−α) · (mean r_ref − mean r_act)

and each activation feeds its output to the next layer. ψ and φ are state inputs and outputs of
the graph, the reference means are inputs; one run per batch, one pass over the data.

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
from snncc.calibration.reference_means import ReferenceMeans
from snncc.calibration.statistics import Executor, LocalExecutor
from snncc.evaluate import progress
from snncc.passes._activation import QCFS, is_activation, read_activation

REF_Z = "ref_z::"
REF_R = "ref_r::"
STATE_IN = "state::"
STATE_OUT = "state_out::"
MEAN_Z = "mean_z_act::"
MEAN_R = "mean_r_act::"


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


def _da_qcfs_per_channel(b: ActivationBuilder, theta: np.ndarray, active: np.ndarray, phi: ir.Value,
                         psi: ir.Value, steps: int) -> ir.Value:
    """DA-QCFS of b.x as clip(floor(x·T/θ + (ψ·T + θ/2)/θ), 0, T) · (θ+φ)/T, silent channels 0:
    the per-channel factors are folded first, so five element-wise ops touch the full tensor. It
    may round differently from the compiled SNN where a level boundary falls within float
    rounding, which moves the batch means by far less than their sampling noise."""
    t = b.tape
    per_channel = lambda a: b.const(a.astype(np.float32))  # noqa: E731
    offset = t.Div(t.Add(t.Mul(psi, b.const(float(steps), False)), per_channel(theta / 2)), per_channel(theta))
    level = t.Floor(t.Add(t.Mul(b.x, per_channel(steps / theta)), offset))
    level = t.Clip(level, b.const(0.0, False), b.const(float(steps), False))
    scale = t.Mul(t.Add(per_channel(theta), phi), per_channel(active / steps))
    return t.Mul(level, scale)


def calibration_graph(analysed: ir.Model, thetas: dict[str, np.ndarray], steps: int, momentum: float) -> tuple[onnx.ModelProto, list[str]]:
    """The actual path with DA-QCFS activations: inputs x, ψ/φ state and the reference means;
    outputs the updated state (the names returned) and, per activation, the batch's channel means
    of z_act and r_act (MEAN_Z, MEAN_R) that the update read."""
    model = copy_model(analysed)
    graph = model.graph
    state_outputs: list[ir.Value] = []
    mean_outputs: list[ir.Value] = []
    keep = np.float32(momentum)

    def emit(node: ir.Node, b: ActivationBuilder) -> ir.Value:
        theta = thetas[node.name]
        active = theta > 0
        state_dims = [theta.size] + [1] * (b.rank - 2)
        psi, phi, z_ref, r_ref = (_input(graph, f"{prefix}{node.name}", state_dims)
                                  for prefix in (STATE_IN + "psi::", STATE_IN + "phi::", REF_Z, REF_R))
        state_shape = b.initializer(np.array(state_dims, np.int64))
        t = b.tape
        z_mean = _channel_mean(b, b.x, state_shape)
        psi_new = t.Add(t.Mul(psi, b.const(keep, False)), t.Mul(t.Sub(z_ref, z_mean), b.const(1 - keep, False)))
        r_act = _da_qcfs_per_channel(b, np.where(active, theta, 1).astype(np.float32), active, phi, psi_new, steps)
        r_mean = _channel_mean(b, r_act, state_shape)
        phi_new = t.Add(t.Mul(phi, b.const(keep, False)), t.Mul(t.Sub(r_ref, r_mean), b.const(1 - keep, False)))
        psi_new.name, phi_new.name = f"{STATE_OUT}psi::{node.name}", f"{STATE_OUT}phi::{node.name}"
        z_mean.name, r_mean.name = f"{MEAN_Z}{node.name}", f"{MEAN_R}{node.name}"
        state_outputs.extend([psi_new, phi_new])
        mean_outputs.extend([z_mean, r_mean])
        return r_act

    replace_activations(model, emit)
    graph.outputs.clear()
    graph.outputs.extend(state_outputs + mean_outputs)
    return to_runnable_proto(model), [v.name for v in state_outputs]


def _input(graph: ir.Graph, name: str, dims: list[int]) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(dims), type=ir.TensorType(ir.DataType.FLOAT))
    graph.inputs.append(value)
    return value


def calibrate(analysed: ir.Model, data: CalibrationData, thetas: dict[str, np.ndarray], steps: int,
              reference: ReferenceMeans, momentum: float = 0.99, rounds: int | None = None,
              executor: Executor | None = None) -> dict[str, LayerCalibration]:
    """Run Algorithm 1 over the data once, in the batches of `reference`; returns φ, ψ per
    activation node name. With `rounds` W, in synchronous rounds instead (`_calibrate_in_rounds`)."""
    from snncc.session import make_session

    proto, state_names = calibration_graph(analysed, thetas, steps, momentum)
    if rounds is not None:
        state = _calibrate_in_rounds(proto, thetas, data, reference, momentum, rounds, executor or LocalExecutor(), steps)
        return _layers(thetas, state)
    session = make_session(proto, native=False, spinning=False)
    inputs = {i.name: [d for d in i.shape] for i in session.get_inputs()}
    x_name = next(name for name in inputs if not name.startswith((STATE_IN, REF_Z, REF_R)))
    state = {name: np.zeros(shape, np.float32) for name, shape in inputs.items() if name.startswith(STATE_IN)}
    batches = data.batches(reference.batch_size)
    for k, batch in enumerate(progress(list(batches), f"DA-QCFS calibration at T={steps}")):
        outputs = session.run(state_names, {x_name: batch, **state, **_reference_feeds(reference, k, inputs)})
        state = {name.replace(STATE_OUT, STATE_IN, 1): value for name, value in zip(state_names, outputs)}
    return _layers(thetas, state)


def _reference_feeds(reference: ReferenceMeans, k: int, inputs: dict[str, list]) -> dict[str, np.ndarray]:
    means = {}
    for name, (z_ref, r_ref) in reference.batch(k).items():
        means[REF_Z + name] = z_ref.reshape(inputs[REF_Z + name])
        means[REF_R + name] = r_ref.reshape(inputs[REF_R + name])
    return means


def _layers(thetas: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> dict[str, LayerCalibration]:
    result = {}
    for name, theta in thetas.items():
        active = theta > 0
        psi = state[f"{STATE_IN}psi::{name}"].reshape(-1)
        phi = state[f"{STATE_IN}phi::{name}"].reshape(-1)
        result[name] = LayerCalibration(phi=np.where(active, phi, 0).astype(np.float32), psi=np.where(active, psi, 0).astype(np.float32))
    return result


def _calibrate_in_rounds(proto: onnx.ModelProto, thetas: dict[str, np.ndarray], data: CalibrationData,
                         reference: ReferenceMeans, momentum: float, width: int, executor: Executor,
                         steps: int) -> dict[str, np.ndarray]:
    """Algorithm 1 in synchronous rounds of `width` batches (an approximation, README "Scaling out"):
    every batch of a round runs under the ψ/φ the round starts with and returns its channel means
    of z_act and r_act; the driver then applies the momentum updates of the round's batches in batch
    order. With width 1 this is the sequential algorithm (up to float rounding of the update)."""
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    x_name = next(name for name in inputs if not name.startswith((STATE_IN, REF_Z, REF_R)))
    state = {name: np.zeros(shape, np.float32) for name, shape in inputs.items() if name.startswith(STATE_IN)}
    mean_names = [name for name in thetas for name in (MEAN_Z + name, MEAN_R + name)]
    keep = np.float32(momentum)
    batches = list(data.batches(reference.batch_size))
    for first in progress(list(range(0, len(batches), width)), f"DA-QCFS calibration at T={steps} in rounds of {width}"):
        feeds = [{x_name: batches[k], **state, **_reference_feeds(reference, k, inputs)}
                 for k in range(first, min(first + width, len(batches)))]
        for k, means in zip(range(first, first + width), executor.run_each(proto, mean_names, feeds)):
            ref = reference.batch(k)
            for i, name in enumerate(thetas):
                (z_ref, r_ref), z_act, r_act = ref[name], means[2 * i], means[2 * i + 1]
                psi, phi = STATE_IN + "psi::" + name, STATE_IN + "phi::" + name
                state[psi] = state[psi] * keep + (z_ref.reshape(z_act.shape) - z_act) * (1 - keep)
                state[phi] = state[phi] * keep + (r_ref.reshape(r_act.shape) - r_act) * (1 - keep)
    return state

