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

from snncc.ann_graph import OpBuilder, copy_model, original_activation, replace_activations, to_runnable_proto
from snncc.calibration.dataset import CalibrationData
from snncc.errors import SnnccError
from snncc.evaluate import progress
from snncc.passes._activation import CLIP, RELU, is_activation, read_activation

HISTOGRAM_BINS = 4096


@dataclasses.dataclass(frozen=True)
class ThresholdMode:
    percentile: float | None  # None: the maximum

    @classmethod
    def parse(cls, text: str) -> ThresholdMode:
        if text == "max":
            return cls(None)
        match = re.fullmatch(r"p(\d+(?:\.\d+)?)", text)
        if not match or not 0 < float(match.group(1)) <= 100:
            raise SnnccError(f"bad --threshold '{text}'; expected 'max' or a percentile such as p99.9 or p99.99")
        return cls(float(match.group(1)))

    def __str__(self) -> str:
        return "max" if self.percentile is None else f"p{self.percentile:g}"


def _channel_axes(rank: int) -> list[int]:
    return [a for a in range(rank) if a != 1]


def _probe_model(analysed: ir.Model, nodes: list[ir.Node], reduce_max: bool):
    """The ANN with, per node, its input's per-channel maximum (or the input itself) as extra outputs."""
    model = copy_model(analysed)
    targets = {n.name for n in nodes}
    graph = model.graph
    tape = OpBuilder(graph)
    probes = []
    for node in [n for n in graph if is_activation(n) and n.name in targets]:
        z = node.inputs[0]
        if reduce_max:
            axes = ir.Value(name=f"{node.name}.axes", const_value=ir.tensor(np.array(_channel_axes(len(z.shape)), np.int64)))
            graph.register_initializer(axes)
            z = tape.ReduceMax(z, axes, keepdims=0)
        probes.append(z)
    graph.extend(tape.nodes)
    replace_activations(model, original_activation)
    graph.outputs.extend(v for v in probes if v not in graph.outputs)
    proto = to_runnable_proto(model)
    return proto, [v.name for v in probes]


def _run(proto, names: list[str], data: CalibrationData, batch_size: int, label: str):
    from snncc.session import make_session

    session = make_session(proto, native=False)
    input_name = session.get_inputs()[0].name
    for batch in progress(list(data.batches(batch_size)), label):
        yield session.run(names, {input_name: batch})


def record_thresholds(analysed: ir.Model, data: CalibrationData, mode: ThresholdMode, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per-channel θ for every ReLU/Clip activation of the analysed model."""
    nodes = [n for n in analysed.graph if is_activation(n) and read_activation(n).kind in (RELU, CLIP)]
    if not nodes:
        return {}
    proto, names = _probe_model(analysed, nodes, reduce_max=True)
    maxima = None
    for outputs in _run(proto, names, data, batch_size, "recording thresholds"):
        maxima = outputs if maxima is None else [np.maximum(a, b) for a, b in zip(maxima, outputs)]
    thresholds = [np.maximum(m, 0).astype(np.float32) for m in maxima]
    if mode.percentile is not None and mode.percentile < 100:
        thresholds = _percentiles(analysed, nodes, data, batch_size, thresholds, mode.percentile)
    result = {}
    for node, theta in zip(nodes, thresholds):
        record = read_activation(node)
        if record.kind == CLIP:
            theta = np.minimum(theta, np.float32(record.clip_max))
        result[node.name] = theta.astype(np.float32)
    return result


def _percentiles(analysed, nodes, data, batch_size, maxima, percentile):
    """Per-channel percentile of the positive inputs, from histograms over [0, max_c]."""
    proto, names = _probe_model(analysed, nodes, reduce_max=False)
    counts = [np.zeros((m.size, HISTOGRAM_BINS), np.int64) for m in maxima]
    for outputs in _run(proto, names, data, batch_size, f"recording p{percentile:g} thresholds"):
        for hist, z, top in zip(counts, outputs, maxima):
            channels = z.shape[1]
            values = np.moveaxis(z, 1, 0).reshape(channels, -1)
            positive = values > 0
            scale = np.where(top > 0, HISTOGRAM_BINS / np.where(top > 0, top, 1), 0)[:, None]
            bins = np.minimum((values * scale).astype(np.int64), HISTOGRAM_BINS - 1)
            flat = (np.arange(channels)[:, None] * HISTOGRAM_BINS + bins)[positive]
            hist += np.bincount(flat, minlength=channels * HISTOGRAM_BINS).reshape(channels, HISTOGRAM_BINS)
    result = []
    for hist, top in zip(counts, maxima):
        cumulative = np.cumsum(hist, axis=1)
        total = cumulative[:, -1:]
        index = np.argmax(cumulative >= np.maximum(total * percentile / 100.0, 1), axis=1)
        upper_edge = (index + 1) / HISTOGRAM_BINS * top
        result.append(np.where(total[:, 0] > 0, np.minimum(upper_edge, top), 0).astype(np.float32))
    return result
