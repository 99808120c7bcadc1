"""Threshold recording: per-channel thresholds θ for ReLU / Clip activations from data.

The ANN runs unchanged on the calibration set; for every ReLU/Clip activation the per-channel
statistic of its input z is recorded: the maximum (the paper's choice) or a percentile of the
positive values (`p99.9`, ...: the smallest value with at least that share of the positive values
at or below it), computed from fixed-size per-channel histograms over [0, max] so memory stays
bounded however large the set; the result is exact to one bin (max / 4096). `Clip(0, a)` / ReLU6 keep min(θ_c, a). A channel whose input is
never positive gets θ = 0: it becomes a silent neuron.

Invariant: returns one non-negative float32 [C] array per ReLU/Clip activation node name.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx_ir as ir

from snncc.ann_graph import ActivationBuilder, original_activation, probe_model
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.reference_means import BatchSums, ReferenceMeans
from snncc.calibration.statistics import ChannelMaxima, Combined, Executor, RecordingPass, record
from snncc.errors import SnnccError
from snncc.passes._activation import CLIP, RELU, is_activation, read_activation

HISTOGRAM_BINS = 4096  # the resolution of percentile and mse thresholds: max_c / 4096
ROUND_BINS = 64  # bins per channel per percentile round: two rounds resolve 64 x 64 = 4096 bins
ROUND_SHIFT = 6  # log2(ROUND_BINS)


@dataclasses.dataclass(frozen=True)
class ThresholdMode:
    """'max'; a percentile 'p99.9'; or 'mse': per channel, the θ in [0.2, 1]·max that minimises
    the squared error between the activation and its T-level quantisation (beyond the paper)."""

    percentile: float | None = None  # None: the maximum
    mse: bool = False

    @classmethod
    def parse(cls, text: str) -> ThresholdMode:
        if text in ("max", "mse"):
            return cls(mse=text == "mse")
        match = re.fullmatch(r"p(\d+(?:\.\d+)?)", text)
        if not match or not 0 < float(match.group(1)) <= 100:
            raise SnnccError(f"bad threshold '{text}'; expected 'max', 'mse' or a percentile such as p99.9")
        return cls(float(match.group(1)))

    def needs_histograms(self) -> bool:
        return self.mse or (self.percentile is not None and self.percentile < 100)

    def __str__(self) -> str:
        return "mse" if self.mse else "max" if self.percentile is None else f"p{self.percentile:g}"


def _channel_axes(rank: int) -> list[int]:
    return [a for a in range(rank) if a != 1]


def _channel_maximum(b: ActivationBuilder) -> ir.Value:
    axes = np.array(_channel_axes(len(b.x.shape)), np.int64)
    return b.tape.ReduceMax(b.x, b.initializer(axes), keepdims=0)


def record_thresholds(analysed: ir.Model, data: CalibrationData, mode: ThresholdMode, run_batch: int = 256,
                      steps: int | None = None, means_batch: int | None = None,
                      executor: Executor | None = None) -> tuple[dict[str, np.ndarray], ReferenceMeans | None]:
    """Per-channel θ for every ReLU/Clip activation of the analysed model (`steps`: T, for 'mse').

    With the maximum as threshold and `means_batch` given, the same pass records the reference means
    per calibration batch of `means_batch` samples (the ANN it runs is then the reference path of
    DA-QCFS calibration); otherwise the means returned are None."""
    nodes = [n for n in analysed.graph if is_activation(n) and read_activation(n).kind in (RELU, CLIP)]
    if not nodes:
        return {}, None
    targets = {n.name for n in nodes}
    with_means = means_batch is not None and not mode.needs_histograms()

    def probe(node: ir.Node, b: ActivationBuilder) -> list[ir.Value]:
        mean_pair = ReferenceMeans.probe(node, b) if with_means else []
        return mean_pair + ([_channel_maximum(b)] if node.name in targets else [])

    proto, names = probe_model(analysed, original_activation, probe)
    activations = [n.name for n in analysed.graph if is_activation(n)]
    maximum_names = tuple(group[-1] for name, group in zip(activations, names) if name in targets)
    mean_names = tuple(n for group in names for n in group[:2]) if with_means else ()
    statistic = ChannelMaxima(len(maximum_names))
    if with_means:
        statistic = Combined((statistic, BatchSums(len(mean_names), means_batch)))
    recorded = record(RecordingPass(proto, maximum_names + mean_names, statistic,
                                    "recording thresholds", means_batch or 1, run_batch), data, executor)
    maxima, means = (recorded[0], ReferenceMeans(analysed, means_batch, recorded[1])) if with_means else (recorded, None)
    tops = [np.maximum(m, 0).astype(np.float32) for m in maxima]
    clips = [np.float32(read_activation(n).clip_max) if read_activation(n).kind == CLIP else np.float32(np.inf) for n in nodes]
    if mode.mse:
        thresholds = _mse_thresholds(analysed, nodes, data, run_batch, tops, clips, steps, executor)
    elif mode.needs_histograms():
        thresholds = _percentiles(analysed, nodes, data, run_batch, tops, mode, executor)
    else:
        thresholds = tops
    return {node.name: np.minimum(theta, clip).astype(np.float32) for node, theta, clip in zip(nodes, thresholds, clips)}, means


def _input_pass(analysed: ir.Model, nodes: list[ir.Node], statistic, label: str, run_batch: int) -> RecordingPass:
    """A pass of the ANN reading the input z [N, C, ...] of each of `nodes`."""
    targets = {n.name for n in nodes}
    proto, names = probe_model(analysed, original_activation, lambda node, b: [b.x] if node.name in targets else [])
    return RecordingPass(proto, tuple(group[0] for group in names if group), statistic, label,
                         run_batch=run_batch)


def fine_bins(z: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z [n, C, ...] → (its values as [C, n·…], their bin of HISTOGRAM_BINS over [0, top_c], the
    top bin closed)."""
    values = np.moveaxis(z, 1, 0).reshape(z.shape[1], -1)
    scale = np.where(top > 0, HISTOGRAM_BINS / np.where(top > 0, top, 1), 0)[:, None]
    return values, np.minimum((values * scale).astype(np.int64), HISTOGRAM_BINS - 1)


@dataclasses.dataclass(frozen=True)
class RoundCounts:
    """Per output, per channel, counts [C, ROUND_BINS] of the positive values: of the coarse bins
    (fine bin // ROUND_BINS) when `within` is None, else of the fine bins inside coarse bin
    within_c (fine bin % ROUND_BINS)."""

    width: int
    tops: tuple
    within: tuple | None = None

    def begin(self, start, stop):
        return [np.zeros((top.size, ROUND_BINS), np.int64) for top in self.tops]

    def add(self, counts, outputs):
        for i, z in enumerate(outputs):
            values, fine = fine_bins(z, self.tops[i])
            channels = len(values)
            flat = (np.arange(channels)[:, None] * HISTOGRAM_BINS + fine)[values > 0]  # channel·4096 + fine bin
            if self.within is None:
                index = flat >> ROUND_SHIFT  # channel·64 + coarse bin
            else:
                wanted = np.arange(channels) * ROUND_BINS + self.within[i]
                flat = flat[(flat >> ROUND_SHIFT) == wanted[flat >> (2 * ROUND_SHIFT)]]
                index = ((flat >> (2 * ROUND_SHIFT)) << ROUND_SHIFT) | (flat & (ROUND_BINS - 1))  # channel·64 + fine % 64
            counts[i] += np.bincount(index, minlength=channels * ROUND_BINS).reshape(channels, ROUND_BINS)
        return counts

    def end(self, counts):
        return counts

    def merge(self, summaries: list) -> list[np.ndarray]:
        return [np.sum(parts, axis=0) for parts in zip(*summaries)]


def _percentiles(analysed, nodes, data, run_batch, tops, mode: ThresholdMode, executor) -> list[np.ndarray]:
    """Per channel, the upper edge of the first of HISTOGRAM_BINS bins over [0, max] at which the
    cumulative count of positive values reaches the percentile: a round of coarse counts finds its
    coarse bin, a second round of the fine counts inside that bin finds the fine one."""
    label = f"recording {mode} thresholds"
    coarse = record(_input_pass(analysed, nodes, RoundCounts(len(nodes), tuple(tops)), f"{label} (round 1 of 2)",
                                run_batch), data, executor)
    wanted, chosen, below = [], [], []
    for counts in coarse:
        total = counts.sum(axis=1)
        wanted.append(np.maximum(total * mode.percentile / 100.0, 1))
        cumulative = np.cumsum(counts, axis=1)
        index = np.argmax(cumulative >= wanted[-1][:, None], axis=1)
        chosen.append(index)
        below.append(np.take_along_axis(cumulative - counts, index[:, None], axis=1)[:, 0])
    fine = record(_input_pass(analysed, nodes, RoundCounts(len(nodes), tuple(tops), tuple(chosen)),
                              f"{label} (round 2 of 2)", run_batch), data, executor)
    thresholds = []
    for counts, top, target, index, before, coarse_counts in zip(fine, tops, wanted, chosen, below, coarse):
        offset = np.argmax(before[:, None] + np.cumsum(counts, axis=1) >= target[:, None], axis=1)
        upper_edge = (index * ROUND_BINS + offset + 1) / HISTOGRAM_BINS * top
        thresholds.append(np.where(coarse_counts.sum(axis=1) > 0, np.minimum(upper_edge, top), 0).astype(np.float32))
    return thresholds


MSE_FRACTIONS = np.linspace(0.2, 1.0, 81)


@dataclasses.dataclass(frozen=True)
class QuantisationErrors:
    """Per output, per channel and θ = f·max_c (f in MSE_FRACTIONS), Σ count·(g(v) − q_θ(v))² over
    the HISTOGRAM_BINS bins of the shard's positive values, where g is the activation (ReLU, or Clip
    at clip_c) and q_θ its T-level quantisation: [len(MSE_FRACTIONS), C] float64 per shard, summed
    in shard order. The shard's histograms stay in the worker."""

    width: int
    tops: tuple
    clips: tuple
    steps: int

    def begin(self, start, stop):
        return [np.zeros((top.size, HISTOGRAM_BINS), np.int64) for top in self.tops]

    def add(self, histograms, outputs):
        for hist, z, top in zip(histograms, outputs, self.tops):
            values, bins = fine_bins(z, top)
            channels = len(values)
            flat = (np.arange(channels)[:, None] * HISTOGRAM_BINS + bins)[values > 0]
            hist += np.bincount(flat, minlength=channels * HISTOGRAM_BINS).reshape(channels, HISTOGRAM_BINS)
        return histograms

    def end(self, histograms):
        return [_quantisation_errors(h, top, clip, self.steps) for h, top, clip in zip(histograms, self.tops, self.clips)]

    def merge(self, summaries: list) -> list[np.ndarray]:
        merged = summaries[0]
        for shard in summaries[1:]:
            merged = [a + b for a, b in zip(merged, shard)]
        return merged


def _quantisation_errors(hist: np.ndarray, top: np.ndarray, clip: np.float32, steps: int) -> np.ndarray:
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS * top[:, None]
    target = np.minimum(centres, clip)
    errors = []
    for fraction in MSE_FRACTIONS:
        theta = np.maximum(fraction * top, np.finfo(np.float32).tiny)[:, None]
        quantised = theta / steps * np.clip(np.floor(centres * steps / theta + 0.5), 0, steps)
        errors.append(np.sum(hist * (target - quantised) ** 2, axis=1))
    return np.stack(errors)


def _mse_thresholds(analysed, nodes, data, run_batch, tops, clips, steps, executor) -> list[np.ndarray]:
    """Per channel, the θ = f·max (f in MSE_FRACTIONS) of least quantisation error over the data."""
    if steps is None:
        raise AssertionError("the 'mse' threshold needs T")
    statistic = QuantisationErrors(len(nodes), tuple(tops), tuple(clips), steps)
    errors = record(_input_pass(analysed, nodes, statistic, "recording mse thresholds", run_batch), data, executor)
    return [(MSE_FRACTIONS[np.argmin(e, axis=0)] * top).astype(np.float32) for e, top in zip(errors, tops)]
