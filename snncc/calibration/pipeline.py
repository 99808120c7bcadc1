"""Set the neuron parameters that need data (paper Table 2, rows 2-3), by calibration mode:

- 'paper': ReLU / Clip activations get θ from threshold recording, then DA-QCFS calibration
  (Algorithm 1): θ_pre = θ, θ_post = θ + φ, ψ; QCFS at T ≠ T̃ likewise when asked for explicitly.
- 'thresholds': θ_pre = θ_post = θ, ψ = 0 ("thresholds only").
- 'layerwise': progressive per-layer search of θ_pre, θ_post, ψ with bias correction and a
  least-squares read-out layer (`layerwise`); 'ridge': the same with a closed-form ridge refit of
  the weights feeding each neuron. Both change weights inside the compiled model only.
- 'reconstruct': 'ridge' here; the compiler then refines it by gradient block reconstruction
  (`reconstruct`, needs torch), the best mode at few time-steps.
- 'auto': the mode `auto_mode` picks for T (measured in docs/results.md).
- QCFS at T = T̃ is lossless already: calibration there is skipped.

Invariant after `calibrate_parameters`: every activation node carries neuron parameters, and the
returned dict describes what was done (for the model metadata).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from snncc.calibration.da_qcfs import calibrate, reference_thresholds
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.layerwise import calibrate_layerwise
from snncc.calibration.reference_means import record_reference_means
from snncc.calibration.statistics import Executor
from snncc.calibration.thresholds import ThresholdMode, record_thresholds
from snncc.passes._activation import QCFS, NeuronParameters, get_parameters, is_activation, read_activation, set_parameters

# Recorded thresholds and reference means do not depend on the batch size: large batches.
RECORDING_BATCH = 256

CASE_RELU_THRESHOLDS = "relu-thresholds"
CASE_RELU_CALIBRATED = "relu-da-qcfs"
CASE_QCFS_CALIBRATED = "qcfs-da-qcfs"

MODES = ("auto", "paper", "thresholds", "layerwise", "ridge", "reconstruct")
LAYERWISE_MODES = ("layerwise", "ridge", "reconstruct")


def auto_mode(steps: int) -> str:
    """The mode 'auto' picks at T: the layer-wise fit with ridge refit where few levels make the
    quantisation error large, the paper's pipeline (a few ANN passes, within 0.3 points) at large T.
    Measured on the Fashion-MNIST VGG with 5000 calibration images (docs/results.md, "Calibration
    modes"): drop vs the ANN 5.0 / 2.2 / 0.4 / 0.3 points at T = 1 / 2 / 4 / 8 with 'ridge' at about
    14× one ANN pass over the calibration set, against 65.6 / 9.7 / 3.8 / 1.0 with 'paper' and
    9.9 / 2.9 at T = 1 / 2 with 'layerwise'."""
    return "ridge" if steps <= 8 else "paper"


@dataclasses.dataclass(frozen=True)
class CalibrationOptions:
    threshold: ThresholdMode = ThresholdMode(None)
    da_qcfs: bool | None = None  # True: mode 'paper' forced; False: 'thresholds'; None: by `mode`
    momentum: float = 0.99
    # Each batch is one update of the momentum averages: with α = 0.99, 10k samples in batches of 32
    # give 313 updates (ψ, φ reach 96% of their fixed point); batches of 256 give 40 (33%).
    batch_size: int = 32
    mode: str = "paper"  # one of MODES; 'paper' with da_qcfs None: DA-QCFS for ReLU/Clip models only
    keep_head: bool = False  # layer-wise modes: leave the read-out layer untouched
    rounds: int | None = None  # DA-QCFS in synchronous rounds of this many batches (an approximation)
    executor: Executor | None = None  # where recording passes run (None: this process; or on Ray)

    def __post_init__(self):
        if self.mode not in MODES:
            from snncc.errors import SnnccError
            raise SnnccError(f"unknown calibration mode '{self.mode}'; expected one of {', '.join(MODES)}")

    def resolved_mode(self, steps: int) -> str:
        if self.da_qcfs is not None:
            return "paper" if self.da_qcfs else "thresholds"
        return auto_mode(steps) if self.mode == "auto" else self.mode


def _silent_safe(theta: np.ndarray) -> NeuronParameters:
    """Thresholds-only parameters; a channel with θ = 0 fires spikes of value 0 (silent)."""
    active = theta > 0
    theta_pre = np.where(active, theta, 1).astype(np.float32)
    return NeuronParameters(theta_pre, (theta * active).astype(np.float32), np.zeros_like(theta), CASE_RELU_THRESHOLDS)


def calibrate_parameters(model: ir.Model, data: CalibrationData, steps: int, options: CalibrationOptions) -> dict:
    """Record thresholds and calibrate as the mode and the activations need; returns a summary."""
    activations = [n for n in model.graph if is_activation(n)]
    uses_relu = any(read_activation(n).kind != QCFS for n in activations)
    targets = [n for n in activations if read_activation(n).kind != QCFS or get_parameters(n).case != "qcfs-lossless"]
    mode = options.resolved_mode(steps)
    if mode in LAYERWISE_MODES:
        return _calibrate_layerwise(model, data, steps, options, mode, targets)
    forced = options.da_qcfs if options.da_qcfs is not None else (None if options.mode == "paper" else True)
    run_da_qcfs = (forced if forced is not None else uses_relu) and mode == "paper" and bool(targets)
    recorded, reference = record_thresholds(model, data, options.threshold, RECORDING_BATCH, steps,
                                            options.batch_size if run_da_qcfs else None, options.executor)
    for node in activations:
        if node.name in recorded:
            set_parameters(node, _silent_safe(recorded[node.name]))
    if run_da_qcfs:
        thetas = reference_thresholds(model, recorded)
        if reference is None:  # thresholds other than the maximum, or none recorded
            reference = record_reference_means(model, thetas, data, options.batch_size, RECORDING_BATCH, options.executor)
        layers = calibrate(model, data, thetas, steps, reference, options.momentum, options.rounds, options.executor)
        for node in targets:
            theta, layer = thetas[node.name], layers[node.name]
            active = theta > 0
            case = CASE_QCFS_CALIBRATED if read_activation(node).kind == QCFS else CASE_RELU_CALIBRATED
            set_parameters(node, NeuronParameters(
                theta_pre=np.where(active, theta, 1).astype(np.float32),
                theta_post=((theta + layer.phi) * active).astype(np.float32),
                psi=layer.psi, case=case))
    return {**data.summary(), "mode": mode, "thresholds": str(options.threshold) if recorded else "from QCFS",
            "da_qcfs": run_da_qcfs, "momentum": options.momentum if run_da_qcfs else None,
            **({"rounds": options.rounds} if run_da_qcfs and options.rounds else {})}


def _calibrate_layerwise(model: ir.Model, data: CalibrationData, steps: int, options: CalibrationOptions,
                         mode: str, targets: list[ir.Node]) -> dict:
    """Fit layer by layer. The upper end of each θ search is the ANN's per-channel maximum, found on
    the way; thresholds other than the maximum are recorded first."""
    recorded = (record_thresholds(model, data, options.threshold, RECORDING_BATCH, steps, executor=options.executor)[0]
                if options.threshold.needs_histograms() else {})
    summary = {}
    if targets:
        head = "keep" if options.keep_head else "lstsq"
        summary = calibrate_layerwise(model, data, steps, recorded, targets, mode != "layerwise", head, RECORDING_BATCH)
    relu = any(read_activation(n).kind != QCFS for n in targets)
    return {**data.summary(), "mode": mode, "thresholds": str(options.threshold) if relu else "from QCFS",
            "da_qcfs": False, "momentum": None, **summary}
