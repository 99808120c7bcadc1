"""Layer-wise (progressive) calibration: each neuron layer fitted on the inputs the SNN gives it.

A parallel SNN at T steps is exactly an activation-quantised ANN (DESIGN §1), so its layers are
calibrated like post-training quantisation, in graph order. For activation l, with every earlier
neuron layer already fixed and quantised as the SNN runs it:

1. (`ridge`) the affine layer feeding l (`layer_graph.affine_producer`) is refit in closed form
   by ridge regression towards its original weights, from its quantised inputs to the ANN's
   input current of l (`affine_refit`); the first layers, whose inputs do not depend on any
   neuron, are left alone;
2. the per-channel θ_pre, θ_post, ψ minimising l's output error against the ANN are searched
   (`neuron_search`), around the bias correction δ = mean(z_ann) − mean(z_q); δ is moved into the
   bias of the affine layer feeding l where there is one (bias correction), else it stays in ψ;
3. finally the read-out layers (`layer_graph.read_out_layers`) are refit by least squares on the
   SNN's features towards the ANN's outputs (`head='lstsq'`), or kept (`head='keep'`).

Each step runs the quantised model and the original ANN from the input to the values it needs
(`layer_graph.prefix_model`), one pass over the calibration data each.

Invariant: afterwards every target activation carries neuron parameters, the model's other nodes
compute the same ops (only affine initializers may have changed), and the quantised ANN of the
returned model (`ann_graph.quantised_ann`) is what the compiled SNN computes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc.ann_graph import copy_model, da_qcfs_activation, original_activation
from snncc.calibration.affine_refit import MAX_CONV_ROWS, AffineLayer, NormalEquations, supported
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.layer_graph import affine_producer, prefix_model, read_out_layers, synaptic_inputs
from snncc.calibration.neuron_search import OutputErrorStatistics
from snncc.errors import SnnccError
from snncc.passes._activation import QCFS, NeuronParameters, read_activation, set_parameters
from snncc.passes._graph import source_of

CASE_RELU_LAYERWISE = "relu-layerwise"
CASE_QCFS_LAYERWISE = "qcfs-layerwise"
HEADS = ("lstsq", "keep")
# λ of the ridge refit, relative to the mean diagonal of XᵀX.
RIDGE = 0.05
# The refits (ridge and read-out) read the first samples only: a few hundred thousand rows fix a
# few hundred weights per output, and the passes cost less.
REFIT_SAMPLES = 4096


class _Passes:
    """One pass over the data through the quantised model (current parameters and weights) and the
    original ANN at once, yielding the requested values of each, batch by batch."""

    def __init__(self, model: ir.Model, original: ir.Model, data: CalibrationData, steps: int, batch_size: int):
        self.model, self.original, self.data, self.steps, self.batch_size = model, original, data, steps, batch_size
        self.passes = 0

    def run(self, quantised: list[str], reference: list[str], label: str, samples: int | None = None):
        from snncc.progress import progress
        from snncc.session import make_session

        q_session = make_session(prefix_model(self.model, da_qcfs_activation(self.steps), quantised), native=False)
        a_session = make_session(prefix_model(self.original, original_activation, reference), native=False)
        q_input, a_input = q_session.get_inputs()[0].name, a_session.get_inputs()[0].name
        self.passes += 1
        subset = self.data if samples is None else CalibrationData(self.data.x[:samples], self.data.source)
        for batch in progress(list(subset.batches(self.batch_size)), label):
            yield q_session.run(quantised, {q_input: batch}), a_session.run(reference, {a_input: batch})


def _refittable(node: ir.Node | None) -> bool:
    """A supported affine layer whose input depends on some neuron (else the SNN feeds it what the ANN does)."""
    return node is not None and supported(node) and any(v.producer() is not None for v in synaptic_inputs(node.inputs[0]))


def _refit(passes: _Passes, layer: AffineLayer, value_name: str, ridge: float, samples: int, label: str) -> None:
    """Refit `layer` on its quantised input towards its quantised output + (ANN − quantised) of the
    value `value_name`: the layer's own output, or the Add of it and other terms that it feeds."""
    node = layer.node
    x_name, y_name = node.inputs[0].name, node.outputs[0].name
    quantised = [x_name, y_name] + ([value_name] if value_name != y_name else [])
    samples = min(samples, REFIT_SAMPLES)
    positions = max(1, MAX_CONV_ROWS // samples)
    rng = np.random.default_rng(0)
    equations = NormalEquations()
    for q_out, a_out in passes.run(quantised, [value_name], label, samples):
        x, y = q_out[0], q_out[1]
        z_q = q_out[2] if len(q_out) > 2 else y
        target = y + (a_out[0] - z_q)
        equations.add(*layer.rows(x, target, rng, positions))
    if not equations.finite():
        raise SnnccError(f"calibration: {label}: the layer's inputs or targets are not finite in float32 (NaN, "
                         "infinity or overflow) on the calibration data: check the model's weights and the data")
    layer.write(passes.model.graph, equations.solve(layer.parameters(), ridge))


def calibrate_layerwise(model: ir.Model, data: CalibrationData, steps: int, tops: dict[str, np.ndarray],
                        targets: list[ir.Node], ridge: bool, head: str, batch_size: int) -> dict:
    """Fit the target activations' neuron parameters in graph order (and refit weights as asked);
    `tops`: per activation the ANN's threshold, the upper end of the θ search. Returns a summary."""
    if head not in HEADS:
        raise AssertionError(f"head must be one of {HEADS}")
    original = copy_model(model)
    passes = _Passes(model, original, data, steps, batch_size)
    refit, corrected = [], []
    target_names = {n.name for n in targets}
    for node in [n for n in model.graph if n.name in target_names]:
        affine = affine_producer(node)
        z_name = node.inputs[0].name
        if ridge and _refittable(affine):
            _refit(passes, AffineLayer(affine), z_name, RIDGE, len(data.x), f"ridge refit {affine.name}")
            refit.append(affine.name)
        statistics = OutputErrorStatistics(tops[node.name])
        for (z_q,), (z_ann, r) in passes.run([z_name], [z_name, node.outputs[0].name], f"layer-wise {node.name} T={steps}"):
            if not (np.isfinite(z_q).all() and np.isfinite(z_ann).all()):
                raise SnnccError(f"calibration: the input of activation '{source_of(node)}' ({read_activation(node).kind}) is not "
                                 "finite (NaN or infinity) on the calibration data: check the model's weights and the data")
            statistics.add(z_q, z_ann, r)
        shift = statistics.mean_shift()
        fit = statistics.search(steps, shift)
        psi = fit.psi
        if affine is not None and len(affine.inputs) > 2 and supported(affine):
            layer = AffineLayer(affine)
            active = fit.theta_post > 0
            layer.set_bias(model.graph, layer.bias.reshape(-1) + np.where(active, shift, 0))
            psi = np.where(active, psi - shift, 0).astype(np.float32)
            corrected.append(affine.name)
        case = CASE_QCFS_LAYERWISE if read_activation(node).kind == QCFS else CASE_RELU_LAYERWISE
        set_parameters(node, NeuronParameters(fit.theta_pre, fit.theta_post, psi, case))
    heads = _least_squares_heads(model, passes, len(data.x)) if head == "lstsq" else []
    return {"layerwise": True, "ridge": RIDGE if ridge else None, "refit": refit, "bias_corrected": corrected,
            "head": head, "head_layers": heads, "passes": passes.passes}


def _least_squares_heads(model: ir.Model, passes: _Passes, samples: int) -> list[str]:
    names = []
    for node in read_out_layers(model):
        if not supported(node):
            continue
        _refit(passes, AffineLayer(node), node.outputs[0].name, 0.0, samples, f"least-squares head {node.name}")
        names.append(node.name)
    return names
