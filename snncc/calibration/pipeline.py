"""Set the neuron parameters that need data (paper Table 2, rows 2-3).

- ReLU / Clip activations: θ from threshold recording; with DA-QCFS calibration (the default)
  θ_pre = θ, θ_post = θ + φ, ψ; without it θ_pre = θ_post = θ, ψ = 0 ("thresholds only").
- QCFS at T ≠ T̃ with calibration requested: θ_pre = θ, θ_post = θ + φ, ψ.
- QCFS at T = T̃ is lossless already: calibration there would leave φ = ψ = 0, so it is skipped.

Invariant after `calibrate_parameters`: every activation node carries neuron parameters, and the
returned dict describes what was done (for the model metadata).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from snncc.calibration.da_qcfs import calibrate, reference_thresholds
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.reference_means import ReferenceMeans, record_reference_means
from snncc.calibration.thresholds import ThresholdMode, record_thresholds
from snncc.passes._activation import QCFS, NeuronParameters, get_parameters, is_activation, read_activation, set_parameters

# Recorded thresholds and reference means do not depend on the batch size: large batches.
RECORDING_BATCH = 256

CASE_RELU_THRESHOLDS = "relu-thresholds"
CASE_RELU_CALIBRATED = "relu-da-qcfs"
CASE_QCFS_CALIBRATED = "qcfs-da-qcfs"


@dataclasses.dataclass(frozen=True)
class CalibrationOptions:
    threshold: ThresholdMode = ThresholdMode(None)
    da_qcfs: bool | None = None  # None: on for ReLU/Clip models, off for QCFS models
    momentum: float = 0.99
    # Each batch is one update of the momentum averages: with α = 0.99, 10k samples in batches of 32
    # give 313 updates (ψ, φ reach 96% of their fixed point); batches of 256 give 40 (33%).
    batch_size: int = 32


def _silent_safe(theta: np.ndarray) -> NeuronParameters:
    """Thresholds-only parameters; a channel with θ = 0 fires spikes of value 0 (silent)."""
    active = theta > 0
    theta_pre = np.where(active, theta, 1).astype(np.float32)
    return NeuronParameters(theta_pre, (theta * active).astype(np.float32), np.zeros_like(theta), CASE_RELU_THRESHOLDS)


def calibrate_parameters(model: ir.Model, data: CalibrationData, steps: int, options: CalibrationOptions) -> dict:
    """Record thresholds and run DA-QCFS calibration as the activations need; returns a summary."""
    activations = [n for n in model.graph if is_activation(n)]
    uses_relu = any(read_activation(n).kind != QCFS for n in activations)
    targets = [n for n in activations if read_activation(n).kind != QCFS or get_parameters(n).case != "qcfs-lossless"]
    run_da_qcfs = (options.da_qcfs if options.da_qcfs is not None else uses_relu) and bool(targets)
    reference = ReferenceMeans(model, len(data.x), options.batch_size) if run_da_qcfs else None
    recorded = record_thresholds(model, data, options.threshold, RECORDING_BATCH, steps, reference)
    for node in activations:
        if node.name in recorded:
            set_parameters(node, _silent_safe(recorded[node.name]))
    if run_da_qcfs:
        thetas = reference_thresholds(model, recorded)
        if not reference.complete:  # thresholds other than the maximum, or none recorded
            record_reference_means(model, thetas, data, reference, RECORDING_BATCH)
        layers = calibrate(model, data, thetas, steps, reference, options.momentum)
        for node in targets:
            theta, layer = thetas[node.name], layers[node.name]
            active = theta > 0
            case = CASE_QCFS_CALIBRATED if read_activation(node).kind == QCFS else CASE_RELU_CALIBRATED
            set_parameters(node, NeuronParameters(
                theta_pre=np.where(active, theta, 1).astype(np.float32),
                theta_post=((theta + layer.phi) * active).astype(np.float32),
                psi=layer.psi, case=case))
    return {**data.summary(), "thresholds": str(options.threshold) if recorded else "from QCFS",
            "da_qcfs": run_da_qcfs, "momentum": options.momentum if run_da_qcfs else None}
