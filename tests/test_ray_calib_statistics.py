"""Per-shard calibration statistics (snncc.calibration.statistics) against numpy over the whole data:
the summaries of the shards, merged in shard order, equal the statistic of all samples at once.
No Ray here: the merge is what makes the in-process and Ray results the same bits."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.calibration import statistics
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.reference_means import BatchSums
from snncc.calibration.statistics import ChannelMaxima, Combined, shard_bounds
from snncc.calibration.thresholds import HISTOGRAM_BINS, MSE_FRACTIONS, QuantisationErrors, RoundCounts, ThresholdMode, record_thresholds
from snncc.compiler import analyse_activations, to_ir


def _fold(statistic, outputs: list[np.ndarray], bounds, run_batch: int, batch_max=()):
    """The statistic's merge over shards, each fed in run batches, as an executor does; the outputs
    numbered in `batch_max` are fed as the run batch's per-channel maximum (as ReduceMax gives)."""
    summaries = []
    for start, stop in bounds:
        accumulator = statistic.begin(start, stop)
        for offset in range(start, stop, run_batch):
            end = min(offset + run_batch, stop)
            batch = [o[offset:end].max(axis=0) if i in batch_max else o[offset:end] for i, o in enumerate(outputs)]
            accumulator = statistic.add(accumulator, batch)
        summaries.append(statistic.end(accumulator))
    return statistic.merge(summaries)


def test_shards_are_whole_calibration_batches_covering_every_sample_once(monkeypatch):
    monkeypatch.setattr(statistics, "SHARD_SAMPLES", 100)
    bounds = shard_bounds(1000, 32)
    assert bounds[0] == (0, 128) and bounds[-1] == (896, 1000)
    assert [a for a, _ in bounds[1:]] == [b for _, b in bounds[:-1]] and all(a % 32 == 0 for a, _ in bounds)


def test_maxima_and_batch_means_of_shards_equal_numpy_over_all_samples():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1000, 5)).astype(np.float32)
    r = np.maximum(z, 0)
    bounds = [(0, 96), (96, 480), (480, 1000)]  # whole batches of 32, except the last batch (8 samples)
    maxima = _fold(ChannelMaxima(1), [z], bounds, 7, batch_max=(0,))
    assert np.array_equal(maxima[0], z.max(axis=0))
    (sums_z, sums_r), counts = _fold(BatchSums(2, 32), [z, r], bounds, 50)  # run batches straddle calibration batches
    for k in range(-(-1000 // 32)):
        rows = slice(32 * k, 32 * k + 32)
        assert counts[k] == len(z[rows])
        assert np.allclose(sums_z[k] / counts[k], z[rows].astype(np.float64).mean(axis=0), rtol=0, atol=1e-12)
        assert np.allclose(sums_r[k] / counts[k], r[rows].astype(np.float64).mean(axis=0), rtol=0, atol=1e-12)


def test_combined_statistics_read_their_own_outputs():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(64, 3)).astype(np.float32), rng.normal(size=(64, 2)).astype(np.float32)
    maxima, (sums, counts) = _fold(Combined((ChannelMaxima(1), BatchSums(1, 16))), [a, b], [(0, 32), (32, 64)], 16,
                                   batch_max=(0,))
    assert np.array_equal(maxima[0], a.max(axis=0))
    assert np.allclose(sums[0], b.reshape(4, 16, 2).sum(axis=1, dtype=np.float64)) and list(counts) == [16] * 4


def _numpy_percentile_4096(values: np.ndarray, top: np.ndarray, percentile: float) -> np.ndarray:
    """The single-pass method: a 4096-bin histogram over [0, max_c] of the positive values per
    channel, θ = the upper edge of the first bin where the cumulative count reaches the percentile."""
    scale = np.where(top > 0, HISTOGRAM_BINS / np.where(top > 0, top, 1), 0)[:, None]
    bins = np.minimum((values * scale).astype(np.int64), HISTOGRAM_BINS - 1)
    hist = np.stack([np.bincount(b[v > 0], minlength=HISTOGRAM_BINS) for b, v in zip(bins, values)])
    cumulative = np.cumsum(hist, axis=1)
    total = cumulative[:, -1:]
    index = np.argmax(cumulative >= np.maximum(total * percentile / 100.0, 1), axis=1)
    return np.where(total[:, 0] > 0, np.minimum((index + 1) / HISTOGRAM_BINS * top, top), 0).astype(np.float32)


def _relu_model():
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])])
    return analyse_activations(to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))


@pytest.mark.parametrize("percentile", [50.0, 99.9, 100.0])
def test_two_rounds_of_64_bins_find_the_4096_bin_percentile_exactly(percentile, monkeypatch):
    """Round 1 counts coarse bins, round 2 the fine bins inside the chosen one: the θ is the
    single 4096-bin histogram's, to the bit; shards of 96 samples change nothing."""
    rng = np.random.default_rng(2)
    x = (rng.standard_gamma(0.7, size=(700, 3, 4, 4)) - 0.3).astype(np.float32)
    x[:, 2] = -1.0  # a channel never positive: θ = 0
    mode = ThresholdMode(percentile)
    expected = _numpy_percentile_4096(np.moveaxis(x, 1, 0).reshape(3, -1), x.max(axis=(0, 2, 3)).clip(0), percentile)
    model = _relu_model()
    whole, _ = record_thresholds(model, CalibrationData(x, "test"), mode, run_batch=128)
    monkeypatch.setattr(statistics, "SHARD_SAMPLES", 96)
    sharded, _ = record_thresholds(model, CalibrationData(x, "test"), mode, run_batch=40)
    (theta,) = whole.values()
    assert theta.tobytes() == expected.tobytes() == next(iter(sharded.values())).tobytes()
    assert theta[2] == 0


def test_round_counts_stay_64_bins_per_channel_and_add_up():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 4, 2, 2)).astype(np.float32)
    top = z.max(axis=(0, 2, 3))
    (coarse,) = _fold(RoundCounts(1, (top,)), [z], [(0, 100), (100, 300)], 64)
    assert coarse.shape == (4, 64) and coarse.sum() == (z > 0).sum()


def test_mse_errors_of_shards_sum_to_the_errors_of_all_samples():
    rng = np.random.default_rng(4)
    z = rng.normal(0.3, 1, size=(500, 3)).astype(np.float32)
    top, clip, steps = z.max(axis=0), np.float32(np.inf), 4
    statistic = QuantisationErrors(1, (top,), (clip,), steps)
    (sharded,) = _fold(statistic, [z], [(0, 128), (128, 384), (384, 500)], 50)
    (whole,) = _fold(statistic, [z], [(0, 500)], 500)
    assert sharded.shape == (len(MSE_FRACTIONS), 3)
    assert np.allclose(sharded, whole, rtol=1e-12, atol=0)
    # numpy reference: each positive value at its bin centre, quantised at θ = f·max
    bins = np.minimum((z * (HISTOGRAM_BINS / top)).astype(np.int64), HISTOGRAM_BINS - 1)
    centres = (bins + 0.5) / HISTOGRAM_BINS * top
    for i, f in enumerate(MSE_FRACTIONS[::20]):
        theta = f * top
        q = theta / steps * np.clip(np.floor(centres * steps / theta + 0.5), 0, steps)
        assert np.allclose(sharded[20 * i], np.sum(np.where(z > 0, (centres - q) ** 2, 0), axis=0), rtol=1e-9)
