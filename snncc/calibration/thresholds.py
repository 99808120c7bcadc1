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
from snncc.calibration.reference_means import ReferenceMeans
from snncc.errors import SnnccError
from snncc.passes._activation import CLIP, RELU, is_activation, read_activation

HISTOGRAM_BINS = 4096


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


def record_thresholds(analysed: ir.Model, data: CalibrationData, mode: ThresholdMode, batch_size: int = 256,
                      steps: int | None = None, means: ReferenceMeans | None = None) -> dict[str, np.ndarray]:
    """Per-channel θ for every ReLU/Clip activation of the analysed model (`steps`: T, for 'mse').

    With the maximum as threshold, the pass also fills `means` when given: the ANN it runs is then
    the reference path of DA-QCFS calibration."""
    nodes = [n for n in analysed.graph if is_activation(n) and read_activation(n).kind in (RELU, CLIP)]
    if not nodes:
        return {}
    targets = {n.name for n in nodes}
    means = means if not mode.needs_histograms() else None

    def probe(node: ir.Node, b: ActivationBuilder) -> list[ir.Value]:
        mean_pair = means.probe(node, b) if means is not None else []
        return mean_pair + ([_channel_maximum(b)] if node.name in targets else [])

    proto, names = probe_model(analysed, original_activation, probe)
    activations = [n.name for n in analysed.graph if is_activation(n)]
    maximum_names = [group[-1] for name, group in zip(activations, names) if name in targets]
    mean_names = [n for group in names for n in group[:2]] if means is not None else []
    maxima = None
    for outputs in data.run(proto, maximum_names + mean_names, batch_size, "recording thresholds"):
        found = outputs[:len(maximum_names)]
        maxima = found if maxima is None else [np.maximum(a, b) for a, b in zip(maxima, found)]
        if means is not None:
            means.add(outputs[len(maximum_names):])
    tops = [np.maximum(m, 0).astype(np.float32) for m in maxima]
    clips = [np.float32(read_activation(n).clip_max) if read_activation(n).kind == CLIP else np.float32(np.inf) for n in nodes]
    if mode.needs_histograms():
        histograms = _histograms(analysed, nodes, data, batch_size, tops, str(mode))
        if mode.mse:
            thresholds = [_mse_threshold(h, top, clip, steps) for h, top, clip in zip(histograms, tops, clips)]
        else:
            thresholds = [_percentile(h, top, mode.percentile) for h, top in zip(histograms, tops)]
    else:
        thresholds = tops
    return {node.name: np.minimum(theta, clip).astype(np.float32) for node, theta, clip in zip(nodes, thresholds, clips)}


def _histograms(analysed, nodes, data, batch_size, maxima, label) -> list[np.ndarray]:
    """Per-channel histograms [C, BINS] of the positive inputs over [0, max_c]."""
    targets = {n.name for n in nodes}
    proto, names = probe_model(analysed, original_activation,
                               lambda node, b: [b.x] if node.name in targets else [])
    counts = [np.zeros((m.size, HISTOGRAM_BINS), np.int64) for m in maxima]
    for outputs in data.run(proto, [group[0] for group in names if group], batch_size, f"recording {label} thresholds"):
        for hist, z, top in zip(counts, outputs, maxima):
            channels = z.shape[1]
            values = np.moveaxis(z, 1, 0).reshape(channels, -1)
            positive = values > 0
            scale = np.where(top > 0, HISTOGRAM_BINS / np.where(top > 0, top, 1), 0)[:, None]
            bins = np.minimum((values * scale).astype(np.int64), HISTOGRAM_BINS - 1)
            flat = (np.arange(channels)[:, None] * HISTOGRAM_BINS + bins)[positive]
            hist += np.bincount(flat, minlength=channels * HISTOGRAM_BINS).reshape(channels, HISTOGRAM_BINS)
    return counts


def _percentile(hist: np.ndarray, top: np.ndarray, percentile: float) -> np.ndarray:
    cumulative = np.cumsum(hist, axis=1)
    total = cumulative[:, -1:]
    index = np.argmax(cumulative >= np.maximum(total * percentile / 100.0, 1), axis=1)
    upper_edge = (index + 1) / HISTOGRAM_BINS * top
    return np.where(total[:, 0] > 0, np.minimum(upper_edge, top), 0).astype(np.float32)


MSE_FRACTIONS = np.linspace(0.2, 1.0, 81)


def _mse_threshold(hist: np.ndarray, top: np.ndarray, clip: np.float32, steps: int | None) -> np.ndarray:
    """Per channel, θ = f·max (f in MSE_FRACTIONS) minimising Σ count·(g(v) − q_θ(v))² over the bins,
    where g is the activation (ReLU, or Clip at `clip`) and q_θ its T-level quantisation."""
    if steps is None:
        raise AssertionError("the 'mse' threshold needs T")
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS * top[:, None]
    target = np.minimum(centres, clip)
    errors = []
    for fraction in MSE_FRACTIONS:
        theta = np.maximum(fraction * top, np.finfo(np.float32).tiny)[:, None]
        quantised = theta / steps * np.clip(np.floor(centres * steps / theta + 0.5), 0, steps)
        errors.append(np.sum(hist * (target - quantised) ** 2, axis=1))
    best = MSE_FRACTIONS[np.argmin(np.stack(errors), axis=0)]
    return (best * top).astype(np.float32)
