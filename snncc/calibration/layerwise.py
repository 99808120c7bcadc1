"""Layer-wise (progressive) calibration: each neuron layer fitted on the inputs the SNN gives it.

A parallel SNN at T steps is exactly an activation-quantised ANN (DESIGN §1), so its layers are
calibrated like post-training quantisation, in graph order. For activation l, with every earlier
neuron layer already fixed and quantised as the SNN runs it:

1. (`ridge`) the affine layer feeding l (`layer_graph.affine_producer`) is refit in closed form
   by ridge regression towards its original weights, from its quantised inputs to the ANN's
   input current of l (`affine_refit`), λ chosen by the error on held-out calibration samples;
   the first layers, whose inputs do not depend on any neuron, are left alone;
2. the per-channel θ_pre, θ_post, ψ minimising l's output error against the ANN are searched
   (`neuron_search`), around the bias correction δ = mean(z_ann) − mean(z_q); δ is moved into the
   bias of the affine layer feeding l where there is one (bias correction), else it stays in ψ;
3. finally the read-out layers (`layer_graph.read_out_layers`) are refit by least squares on the
   SNN's features towards the ANN's outputs (`head='lstsq'`), or kept (`head='keep'`).

The calibration set runs through the model segment by segment (progressive propagation), once on
the quantised path and once on the ANN's (`_Path`): each path keeps the whole set's values at the
cuts, the input currents of the activations that later layers still need (the graph input at
first), and each step runs only the segment from those cuts to the next activation's input current
(`layer_graph.segment_model`, one small session each). The whole calibration costs about one ANN
pass per path, plus one more quantised pass over the refit samples.

Invariant: afterwards every target activation carries neuron parameters, the model's other nodes
compute the same ops (only affine initializers may have changed), and the quantised ANN of the
returned model (`ann_graph.quantised_ann`) is what the compiled SNN computes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from snncc.ann_graph import EmitActivation, copy_model, da_qcfs_activation, original_activation
from snncc.calibration.affine_refit import AffineLayer, RIDGE_CHOICES, NormalEquations, select_ridge, supported
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.layer_graph import affine_producer, neuron_inputs, read_out_layers, segment_model, synaptic_inputs
from snncc.calibration.neuron_search import OutputErrorStatistics
from snncc.errors import SnnccError
from snncc.passes._activation import QCFS, NeuronParameters, is_activation, read_activation, set_parameters
from snncc.passes._graph import source_of

CASE_RELU_LAYERWISE = "relu-layerwise"
CASE_QCFS_LAYERWISE = "qcfs-layerwise"
HEADS = ("lstsq", "keep")
# The share of the refit samples held out to choose the ridge λ (`affine_refit.select_ridge`).
HELD_OUT = 0.25
# The refits (ridge and read-out) read the first samples that give MAX_ROWS rows of the normal
# equations (tens of rows per weight), but at least REFIT_SAMPLES samples, so that Conv rows come from
# many images; the passes cost less than over the whole set.
MAX_ROWS = 65_536
REFIT_SAMPLES = 1024


class _Path:
    """The calibration set on one path through the model (the quantised model with its current
    parameters and weights, or the original ANN), kept at the cuts: per value name, the list of
    its float32 batches (the graph input at first)."""

    def __init__(self, model: ir.Model, emit: EmitActivation, data: CalibrationData, batch_size: int):
        self.model, self.emit = model, emit
        self.values = {model.graph.inputs[0].name: list(data.batches(batch_size))}
        self.count = len(data.x)
        self.batch_size = batch_size

    def run(self, inputs: list[str], outputs: list[str], samples: int | None = None,
            keep: str | None = None) -> Iterator[list[np.ndarray]]:
        """The values `outputs` computed from the stored `inputs`, batch by batch over the batches
        that hold the first `samples` (default: all), with the model segment between them as it is
        now; the output named `keep` is stored as it comes."""
        from snncc.session import make_session

        computed = [name for name in dict.fromkeys(outputs) if name not in inputs]
        session = make_session(segment_model(self.model, self.emit, inputs, computed), native=False) if computed else None
        if keep is not None:
            self.values[keep] = []
        for i in range(-(-min(samples or self.count, self.count) // self.batch_size)):
            feeds = {name: self.values[name][i] for name in inputs}
            results = {**feeds, **dict(zip(computed, session.run(computed, feeds)))} if session else feeds
            if keep is not None:
                self.values[keep].append(results[keep])
            yield [results[name] for name in outputs]

    def drop(self, name: str) -> None:
        self.values.pop(name, None)


def _refittable(node: ir.Node | None) -> bool:
    """A supported affine layer whose input depends on some neuron (else the SNN feeds it what the ANN does)."""
    return node is not None and supported(node) and any(v.producer() is not None for v in synaptic_inputs(node.inputs[0]))


def _refit(quantised: _Path, reference: _Path, inputs: list[str], layer: AffineLayer, value_name: str,
           ridge: bool, label: str) -> float:
    """Refit `layer` on its quantised input towards its quantised output + (ANN − quantised) of the
    value `value_name` (from the cuts `inputs`; the ANN's taken as stored where it is): the layer's
    own output, or the Add of it and other terms that it feeds. By ridge regression towards the
    original weights with λ chosen on held-out samples (`ridge`; the largest λ when too few samples
    to hold some out), else by least squares. Reads the
    first samples that give MAX_ROWS rows, at least REFIT_SAMPLES of them (Conv: that many random
    output positions each). Returns λ."""
    node = layer.node
    rng = np.random.default_rng(0)
    fit, held_out = NormalEquations(), NormalEquations()
    ann_inputs = [value_name] if value_name in reference.values else inputs
    samples = positions = None
    read = 0
    for (x, y, z_q), (z_ann,) in zip(quantised.run(inputs, [node.inputs[0].name, node.outputs[0].name, value_name]),
                                      reference.run(ann_inputs, [value_name])):
        if samples is None:
            per_sample = layer.rows_per_sample(x, y)
            samples = min(quantised.count, max(REFIT_SAMPLES, -(-MAX_ROWS // per_sample)))
            positions = max(1, MAX_ROWS // samples)
        take = min(len(x), samples - read)
        x, target = x[:take], (y + (z_ann - z_q))[:take]
        held = rng.random(take) < HELD_OUT if ridge else np.zeros(take, bool)
        fit.add(*layer.rows(x[~held], target[~held], rng, positions))
        if held.any():
            held_out.add(*layer.rows(x[held], target[held], rng, positions))
        read += take
        if read >= samples:
            break
    equations = fit.merged(held_out) if held_out.rows else fit
    if not equations.finite():
        raise SnnccError(f"calibration: {label}: the layer's inputs or targets are not finite in float32 (NaN, "
                         "infinity or overflow) on the calibration data: check the model's weights and the data")
    lam = (select_ridge(fit, held_out, layer.parameters()) if held_out.rows else max(RIDGE_CHOICES)) if ridge else 0.0
    layer.write(quantised.model.graph, equations.solve(layer.parameters(), lam))
    return lam


def calibrate_layerwise(model: ir.Model, data: CalibrationData, steps: int, tops: dict[str, np.ndarray],
                        targets: list[ir.Node], ridge: bool, head: str, batch_size: int) -> dict:
    """Fit the target activations' neuron parameters in graph order (and refit weights as asked);
    `tops`: per activation a threshold, the upper end of its θ search, where one was recorded (else
    the ANN's per-channel maximum output on the calibration set). Returns a summary."""
    from snncc.progress import progress

    if head not in HEADS:
        raise AssertionError(f"head must be one of {HEADS}")
    quantised = _Path(model, da_qcfs_activation(steps), data, batch_size)
    reference = _Path(copy_model(model), original_activation, data, batch_size)
    activations = [n for n in model.graph if is_activation(n)]
    heads = [n for n in read_out_layers(model) if supported(n)] if head == "lstsq" else []
    layers = activations + heads
    # a step's cuts: the input currents of the activations it reads (and the graph input)
    cuts = [[v.name for v in neuron_inputs(n.inputs[0] if is_activation(n) else n.outputs[0])] for n in layers]
    last_use = {name: i for i, names in enumerate(cuts) for name in names}
    target_names = {n.name for n in targets}
    refit, corrected = {}, []  # refit: λ per layer

    def release(path: _Path, step: int) -> None:
        for name in cuts[step]:
            if last_use[name] == step:
                path.drop(name)

    for i, node in enumerate(progress(layers, f"layer-wise calibration T={steps}", unit="layer")):
        if not is_activation(node):
            _refit(quantised, reference, cuts[i], AffineLayer(node), node.outputs[0].name, False, f"least-squares head {node.name}")
        else:
            maximum = _reference_currents(reference, cuts[i], node)
            release(reference, i)  # before the quantised path's values of this step are made
            if node.name in target_names:
                _fit_activation(quantised, reference, cuts[i], node, steps, tops.get(node.name, maximum), ridge, refit, corrected)
            else:  # calibrated already (QCFS at T = T̃): carried along
                for _ in quantised.run(cuts[i], [node.inputs[0].name], keep=node.inputs[0].name):
                    pass
        release(quantised, i)
        release(reference, i)
    return {"layerwise": True, "ridge": "held-out" if ridge else None, "refit": list(refit), "ridge_lambda": refit,
            "bias_corrected": corrected,
            "head": head, "head_layers": [n.name for n in heads]}


def _reference_currents(reference: _Path, inputs: list[str], node: ir.Node) -> np.ndarray:
    """Keep the ANN's input current of activation `node` for the whole set; returns the per-channel
    maximum of the activation's output (≥ 0)."""
    z_name = node.inputs[0].name
    maximum = 0
    for _, r in reference.run(inputs, [z_name, node.outputs[0].name], keep=z_name):
        maximum = np.maximum(maximum, r.max(axis=tuple(a for a in range(r.ndim) if a != 1)))
    return maximum


def _fit_activation(quantised: _Path, reference: _Path, inputs: list[str], node: ir.Node, steps: int,
                    top: np.ndarray, ridge: bool, refit: dict[str, float], corrected: list[str]) -> None:
    """Refit the layer feeding `node` (ridge), search its neuron parameters (θ_pre up to `top`),
    correct the bias; keep its input current on the quantised path for the next layers (the ANN's
    is kept already)."""
    z_name, out_name = node.inputs[0].name, node.outputs[0].name
    affine = affine_producer(node)
    if ridge and _refittable(affine):
        refit[affine.name] = _refit(quantised, reference, inputs, AffineLayer(affine), z_name, True, f"ridge refit {affine.name}")
    statistics = OutputErrorStatistics(top)
    for (z_q,), (z_ann, r) in zip(quantised.run(inputs, [z_name], keep=z_name), reference.run([z_name], [z_name, out_name])):
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
        moved = np.where(active, shift, 0)
        layer.set_bias(quantised.model.graph, layer.bias.reshape(-1) + moved)
        psi = np.where(active, psi - shift, 0).astype(np.float32)
        for batch in quantised.values[z_name]:  # the current the corrected layer gives
            batch += moved.astype(np.float32).reshape((1, -1) + (1,) * (batch.ndim - 2))
        corrected.append(affine.name)
    case = CASE_QCFS_LAYERWISE if read_activation(node).kind == QCFS else CASE_RELU_LAYERWISE
    set_parameters(node, NeuronParameters(fit.theta_pre, fit.theta_post, psi, case))
