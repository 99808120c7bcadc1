"""Per-batch channel means of the reference path (g_OA), which is all DA-QCFS calibration needs of it.

Algorithm 1 reads the reference path only as mean(z_ref) and mean(r_ref), per channel, over each
calibration batch (mean(z_ref − z_act) = mean(z_ref) − mean(z_act), and likewise for r); neither
depends on ψ or φ. So the reference network runs once, in large batches, before calibration, and
calibration runs only the actual path. With the recorded maxima as thresholds the reference is
the ANN itself (Clip(z, 0, max z) = ReLU(z) on the calibration set), so the threshold-recording
pass collects these means too and no extra pass is needed.

Invariant: once `complete`, `batch(k)` holds, for every activation, the float32 [C] means of its
input and its reference output over calibration batch k (samples [k·B, (k+1)·B)) and all spatial
positions.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc.ann_graph import ActivationBuilder, probe_model
from snncc.calibration.dataset import CalibrationData
from snncc.passes._activation import QCFS, is_activation, read_activation


def _sample_channel_mean(value: ir.Value, b: ActivationBuilder) -> ir.Value:
    """[B, C, ...] → [B, C]: the mean over the spatial axes (the value itself for rank 2)."""
    if b.rank == 2:
        return b.tape.Identity(value)
    return b.tape.ReduceMean(value, b.initializer(np.arange(2, b.rank, dtype=np.int64)), keepdims=0)


class ReferenceMeans:
    """Sums per-sample channel means into per-batch means, fed batch after batch in data order."""

    def __init__(self, analysed: ir.Model, samples: int, batch_size: int):
        self.names = [n.name for n in analysed.graph if is_activation(n)]
        channels = {n.name: n.inputs[0].shape[1] for n in analysed.graph if is_activation(n)}
        self.batch_size = batch_size
        batches = -(-samples // batch_size)
        self._samples = samples
        self._sums = {name: np.zeros((2, batches, channels[name]), np.float64) for name in self.names}
        self._counts = np.zeros(batches, np.int64)
        self._seen = 0

    @property
    def complete(self) -> bool:
        return self._seen == self._samples

    def probe(self, node: ir.Node, b: ActivationBuilder) -> list[ir.Value]:
        """The outputs that `add` reads for one activation node: its input's and output's means."""
        return [_sample_channel_mean(node.inputs[0], b), _sample_channel_mean(node.outputs[0], b)]

    def add(self, outputs: list[np.ndarray]) -> None:
        """The `probe` outputs ([n, C] each) of every activation, in `names` order, two per
        activation, for the next n samples."""
        n = len(outputs[0])
        batch_of = (self._seen + np.arange(n)) // self.batch_size
        starts = np.flatnonzero(np.r_[True, batch_of[1:] != batch_of[:-1]])
        index = batch_of[starts]
        for i, name in enumerate(self.names):
            for which in (0, 1):
                values = outputs[2 * i + which].astype(np.float64)
                self._sums[name][which, index] += np.add.reduceat(values, starts, axis=0)
        self._counts[index] += np.diff(np.r_[starts, n])
        self._seen += n

    def batch(self, k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per activation name: (mean z_ref, mean r_ref) over batch k, float32 [C]."""
        if not self.complete:
            raise AssertionError(f"reference means cover {self._seen} of {self._samples} samples")
        return {name: tuple((sums[which, k] / self._counts[k]).astype(np.float32) for which in (0, 1))
                for name, sums in self._sums.items()}


def reference_activation(thetas: dict[str, np.ndarray]):
    """g_OA: QCFS at T̃ where the ANN has QCFS, else ClipReLU with the per-channel θ."""
    def emit(node: ir.Node, b: ActivationBuilder) -> ir.Value:
        record = read_activation(node)
        return b.original(record) if record.kind == QCFS else b.clip_relu(b.x, thetas[node.name])
    return emit


def record_reference_means(analysed: ir.Model, thetas: dict[str, np.ndarray], data: CalibrationData,
                           means: ReferenceMeans, batch_size: int) -> None:
    """One pass of the reference network over the data (in large batches) filling `means`."""
    proto, names = probe_model(analysed, reference_activation(thetas), means.probe)
    flat = [name for pair in names for name in pair]
    for outputs in data.run(proto, flat, batch_size, "reference path"):
        means.add(outputs)
