"""Set the neuron parameters of QCFS activations (paper Table 2, rows 1-2).

QCFS at T = T̃: θ_pre = θ_post = θ, ψ = 0, which is lossless (Thm 4.1 i). QCFS at T ≠ T̃ without
calibration: the same parameters, i.e. DA-QCFS with φ = ψ = 0, which is exact in expectation for
uniformly distributed inputs (Thm 4.1 ii); DA-QCFS calibration may refine φ and ψ afterwards.

Invariant after the pass: every QCFS activation node carries θ_pre, θ_post, ψ and its case.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc.passes._activation import QCFS, NeuronParameters, is_activation, read_activation, set_parameters

CASE_LOSSLESS = "qcfs-lossless"
CASE_QCFS_OTHER_T = "qcfs-T-differs"


def qcfs_parameters(theta: np.ndarray, levels: int, steps: int) -> NeuronParameters:
    case = CASE_LOSSLESS if levels == steps else CASE_QCFS_OTHER_T
    theta = theta.astype(np.float32)
    return NeuronParameters(theta_pre=theta, theta_post=theta.copy(), psi=np.zeros_like(theta), case=case)


class SetQcfsParametersPass(ir.passes.InPlacePass):
    def __init__(self, steps: int, levels: int | None = None):
        super().__init__()
        self.steps = steps
        self.levels = levels  # overrides the T̃ read from the graph's constants

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in model.graph:
            if not is_activation(node):
                continue
            record = read_activation(node)
            if record.kind != QCFS:
                continue
            levels = self.levels if self.levels is not None else record.levels
            set_parameters(node, qcfs_parameters(record.theta, levels, self.steps))
            modified = True
        return ir.passes.PassResult(model, modified=modified)
