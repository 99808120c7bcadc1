"""Recording passes as per-shard statistics with an exact merge.

A recording pass runs one stock-op model over the calibration data and reduces chosen outputs to
a statistic. The data is cut into fixed shards (`shard_bounds`: SHARD_SAMPLES samples, rounded up
to whole calibration batches) and each shard into run batches of `run_batch` samples. A
`ShardStatistic` folds the outputs of one shard, run batch by run batch, into a small summary and
merges the summaries of all shards, in shard order, into the result. Where a shard is summarised
does not matter — in this process (`LocalExecutor`) or on Ray actors
(`snncc.calibration.ray_calibration`): the same shards, run batches and merge order give
bit-identical results (maxima and integer counts are exact; float64 sums are added in one fixed
order).

Invariant: `record(p, data, executor)` == `p.statistic.merge([summary of shard s, s in shard
order])`, whatever the executor; the merge checks that the shards cover every sample exactly once.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import onnx

SHARD_SAMPLES = 1024


def shard_bounds(samples: int, batch_size: int = 1) -> list[tuple[int, int]]:
    """[start, stop) of each shard: about SHARD_SAMPLES samples, a whole number of calibration
    batches (so no calibration batch's statistics straddle two shards)."""
    size = -(-SHARD_SAMPLES // batch_size) * batch_size
    return [(start, min(start + size, samples)) for start in range(0, samples, size)]


class ShardStatistic(Protocol):
    """Reads `width` model outputs per run batch. `begin(start, stop)` an empty accumulator for
    shard [start, stop); `add` folds one run batch's outputs in; `end` the shard's summary; `merge`
    the result from the summaries of all shards, in shard order."""

    width: int

    def begin(self, start: int, stop: int): ...

    def add(self, accumulator, outputs: list[np.ndarray]): ...

    def end(self, accumulator): ...

    def merge(self, summaries: list): ...


@dataclasses.dataclass(frozen=True)
class RecordingPass:
    """One pass over the data: the model (stock ops, one input), the outputs the statistic reads, the statistic."""

    model: onnx.ModelProto
    names: tuple[str, ...]
    statistic: ShardStatistic
    label: str
    batch_size: int = 1  # the calibration batch the shards align to
    run_batch: int = 256


@dataclasses.dataclass(frozen=True)
class Summary:
    start: int
    stop: int
    value: object


def summarise_shard(session, recording: RecordingPass, x: np.ndarray, start: int, stop: int, on_batch=None) -> Summary:
    """The summary of samples [start, stop), `x` holding exactly those samples."""
    input_name = session.get_inputs()[0].name
    names = list(recording.names)
    statistic = recording.statistic
    accumulator = statistic.begin(start, stop)
    for offset in range(0, len(x), recording.run_batch):
        batch = np.ascontiguousarray(x[offset:offset + recording.run_batch], dtype=np.float32)
        accumulator = statistic.add(accumulator, session.run(names, {input_name: batch}))
        if on_batch is not None:
            on_batch()
    return Summary(start, stop, statistic.end(accumulator))


def merge_summaries(recording: RecordingPass, summaries: list[Summary], samples: int):
    """The statistic's merge over the summaries in shard order, after checking that they cover
    [0, samples) exactly once (a restarted worker must not drop or repeat a shard)."""
    summaries = sorted(summaries, key=lambda s: s.start)
    covered = [(s.start, s.stop) for s in summaries]
    if covered != shard_bounds(samples, recording.batch_size):
        raise AssertionError(f"{recording.label}: shards {covered} do not cover {samples} samples exactly once")
    return recording.statistic.merge([s.value for s in summaries])


class Executor(Protocol):
    """Where the calibration's model runs happen."""

    def summaries(self, recording: RecordingPass, data) -> list[Summary]:
        """Every shard of the data summarised for a recording pass (summaries in any order)."""

    def run_each(self, model: onnx.ModelProto, names: list[str], feeds: list[dict]) -> list[list[np.ndarray]]:
        """The outputs `names` of `model` for each feed, in the order of the feeds."""


class LocalExecutor:
    """Everything in this process: one session per pass, progress over all run batches."""

    def __init__(self):
        self._model, self._session = None, None

    def session(self, model: onnx.ModelProto):
        """The session of `model`, kept while the same model is asked for."""
        from snncc.session import make_session

        if self._model is not model:
            self._model, self._session = model, make_session(model, native=False, spinning=False)
        return self._session

    def run_each(self, model: onnx.ModelProto, names: list[str], feeds: list[dict]) -> list[list[np.ndarray]]:
        session = self.session(model)
        return [session.run(names, feed) for feed in feeds]

    def summaries(self, recording: RecordingPass, data) -> list[Summary]:
        from snncc.progress import progress_counter

        session = self.session(recording.model)
        bounds = shard_bounds(len(data.x), recording.batch_size)
        steps = sum(-(-(stop - start) // recording.run_batch) for start, stop in bounds)
        with progress_counter(steps, recording.label) as advance:
            return [summarise_shard(session, recording, data.x[start:stop], start, stop, advance) for start, stop in bounds]


def record(recording: RecordingPass, data, executor: Executor | None = None):
    """The merged statistic of one pass over `data` (in this process when `executor` is None)."""
    summaries = (executor or LocalExecutor()).summaries(recording, data)
    return merge_summaries(recording, summaries, len(data.x))


@dataclasses.dataclass(frozen=True)
class Combined:
    """Several statistics over one pass, each reading its own consecutive slice of the outputs."""

    parts: tuple

    @property
    def width(self) -> int:
        return sum(p.width for p in self.parts)

    def _slices(self, outputs: list) -> list[list]:
        edges = np.cumsum([0] + [p.width for p in self.parts])
        return [outputs[a:b] for a, b in zip(edges[:-1], edges[1:])]

    def begin(self, start, stop):
        return [p.begin(start, stop) for p in self.parts]

    def add(self, accumulator, outputs):
        return [p.add(a, o) for p, a, o in zip(self.parts, accumulator, self._slices(outputs))]

    def end(self, accumulator):
        return [p.end(a) for p, a in zip(self.parts, accumulator)]

    def merge(self, summaries: list) -> list:
        return [p.merge([s[i] for s in summaries]) for i, p in enumerate(self.parts)]


@dataclasses.dataclass(frozen=True)
class ChannelMaxima:
    """Per output (a run batch's per-channel maximum, [C]), the maximum over the data."""

    width: int

    def begin(self, start, stop):
        return None

    def add(self, maxima, outputs):
        return list(outputs) if maxima is None else [np.maximum(a, b) for a, b in zip(maxima, outputs)]

    def end(self, maxima):
        return maxima

    def merge(self, summaries: list) -> list[np.ndarray]:
        merged = summaries[0]
        for shard in summaries[1:]:
            merged = [np.maximum(a, b) for a, b in zip(merged, shard)]
        return merged
