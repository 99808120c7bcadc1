"""Per-batch channel means of the reference path (g_OA), which is all DA-QCFS calibration needs of it.

Algorithm 1 reads the reference path only as mean(z_ref) and mean(r_ref), per channel, over each
calibration batch (mean(z_ref − z_act) = mean(z_ref) − mean(z_act), and likewise for r); neither
depends on ψ or φ. So the reference network runs once, in large batches, before calibration, and
calibration runs only the actual path. With the recorded maxima as thresholds the reference is
the ANN itself (Clip(z, 0, max z) = ReLU(z) on the calibration set), so the threshold-recording
pass collects these means too and no extra pass is needed.

The means are per-shard sums merged exactly (`snncc.calibration.statistics`), so they are the same
bits wherever the shards ran.

Invariant: `batch(k)` holds, for every activation, the float32 [C] means of its
input and its reference output over calibration batch k (samples [k·B, (k+1)·B)) and all spatial
positions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from snncc.ann_graph import ActivationBuilder, probe_model
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.statistics import Executor, RecordingPass, record
from snncc.passes._activation import QCFS, is_activation, read_activation


def _sample_channel_mean(value: ir.Value, b: ActivationBuilder) -> ir.Value:
    """[B, C, ...] → [B, C]: the mean over the spatial axes (the value itself for rank 2)."""
    if b.rank == 2:
        return b.tape.Identity(value)
    return b.tape.ReduceMean(value, b.initializer(np.arange(2, b.rank, dtype=np.int64)), keepdims=0)


@dataclasses.dataclass(frozen=True)
class BatchSums:
    """Per output ([n, C] per run batch: one row per sample), the float64 sums of the rows per
    calibration batch of `batch_size` samples, and each batch's sample count; a shard holds whole
    batches, so the merge concatenates."""

    width: int
    batch_size: int

    def begin(self, start, stop):
        first = start // self.batch_size
        batches = -(-stop // self.batch_size) - first
        return {"first": first, "seen": start, "sums": None, "counts": np.zeros(batches, np.int64)}

    def add(self, state, outputs):
        n = len(outputs[0])
        batch_of = (state["seen"] + np.arange(n)) // self.batch_size - state["first"]
        starts = np.flatnonzero(np.r_[True, batch_of[1:] != batch_of[:-1]])
        index = batch_of[starts]
        if state["sums"] is None:
            state["sums"] = [np.zeros((len(state["counts"]), o.shape[1]), np.float64) for o in outputs]
        for sums, values in zip(state["sums"], outputs):
            sums[index] += np.add.reduceat(values.astype(np.float64), starts, axis=0)
        state["counts"][index] += np.diff(np.r_[starts, n])
        state["seen"] += n
        return state

    def end(self, state):
        return state["sums"], state["counts"]

    def merge(self, summaries: list) -> tuple[list[np.ndarray], np.ndarray]:
        sums = [np.concatenate(parts) for parts in zip(*(s for s, _ in summaries))]
        return sums, np.concatenate([c for _, c in summaries])


class ReferenceMeans:
    """Per-batch channel means of every activation's input and reference output, from the merged
    `BatchSums` of the `probe` outputs (two per activation, in graph order)."""

    def __init__(self, analysed: ir.Model, batch_size: int, merged: tuple[list[np.ndarray], np.ndarray]):
        self.names = [n.name for n in analysed.graph if is_activation(n)]
        self.batch_size = batch_size
        self._sums, self._counts = merged

    @staticmethod
    def probe(node: ir.Node, b: ActivationBuilder) -> list[ir.Value]:
        """The outputs `BatchSums` reads for one activation node: its input's and output's means."""
        return [_sample_channel_mean(node.inputs[0], b), _sample_channel_mean(node.outputs[0], b)]

    @property
    def batches(self) -> int:
        return len(self._counts)

    def batch(self, k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per activation name: (mean z_ref, mean r_ref) over batch k, float32 [C]."""
        return {name: tuple((self._sums[2 * i + which][k] / self._counts[k]).astype(np.float32) for which in (0, 1))
                for i, name in enumerate(self.names)}


def reference_activation(thetas: dict[str, np.ndarray]):
    """g_OA: QCFS at T̃ where the ANN has QCFS, else ClipReLU with the per-channel θ."""
    def emit(node: ir.Node, b: ActivationBuilder) -> ir.Value:
        record = read_activation(node)
        return b.original(record) if record.kind == QCFS else b.clip_relu(b.x, thetas[node.name])
    return emit


def record_reference_means(analysed: ir.Model, thetas: dict[str, np.ndarray], data: CalibrationData,
                           batch_size: int, run_batch: int, executor: Executor | None = None) -> ReferenceMeans:
    """One pass of the reference network over the data (in large run batches)."""
    proto, names = probe_model(analysed, reference_activation(thetas), ReferenceMeans.probe)
    flat = tuple(name for pair in names for name in pair)
    recording = RecordingPass(proto, flat, BatchSums(len(flat), batch_size), "reference path",
                              batch_size, run_batch)
    return ReferenceMeans(analysed, batch_size, record(recording, data, executor))
