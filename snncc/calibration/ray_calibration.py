"""Calibration passes on Ray actors (`compile --calib ... --ray`).

Each actor holds one ONNX Runtime session per model (built on first use, kept for the pass) and
summarises whole shards of the calibration data (`snncc.calibration.statistics`); the driver merges
the summaries in shard order, so thresholds and reference means are the same bits as in-process
(same shards, same run batches, same merge order). An actor that restarts only loses its cached
sessions: summaries come back per shard and the merge checks that each shard came back once.
DA-QCFS stays sequential in the driver unless `--calib-rounds W` asks for rounds, whose W batch
runs per round go to the actors (`run_each`).

Invariant: `RayExecutor` returns exactly what `LocalExecutor` returns for the same inputs; Ray is
imported only when one is made (`ray_executor`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import numpy as np
import onnx

from snncc.calibration.statistics import RecordingPass, Summary, shard_bounds, summarise_shard


class CalibrationWorker:
    """A Ray actor: sessions by model digest; summarises shards and runs feeds."""

    def __init__(self):
        self._sessions: dict = {}

    def _session(self, key: str, model):
        from snncc.session import make_session

        if key not in self._sessions:
            import ray

            proto = onnx.load_from_string(ray.get(model))  # `model`: a ref to the serialised model (RayExecutor._put)
            self._sessions = {key: make_session(proto, native=False, threads=1, spinning=False)}  # one model at a time
        return self._sessions[key]

    def summarise(self, item) -> Summary:
        key, model, recording, x, start, stop = item
        return summarise_shard(self._session(key, model), recording, x, start, stop)

    def run(self, item) -> list[np.ndarray]:
        key, model, names, feed = item
        return self._session(key, model).run(names, feed)


class RayExecutor:
    """Recording passes and DA-QCFS rounds on a pool of `CalibrationWorker` actors."""

    def __init__(self, actors: list):
        self.actors = actors
        self._model = self._shared = None

    def _put(self, model: onnx.ModelProto) -> tuple[str, object]:
        """The model's digest and a reference to its serialised bytes, put in the object store once per model."""
        import ray

        if self._model is not model:
            data = model.SerializeToString()
            self._model, self._shared = model, (hashlib.sha256(data).hexdigest(), ray.put(data))
        return self._shared

    def summaries(self, recording: RecordingPass, data) -> list[Summary]:
        from snncc.progress import progress_counter
        from snncc.ray_runtime import map_ordered

        key, model = self._put(recording.model)
        light = RecordingPass(None, recording.names, recording.statistic, recording.label, recording.batch_size,
                              recording.run_batch)
        bounds = shard_bounds(len(data.x), recording.batch_size)
        items = [(key, model, light, np.ascontiguousarray(data.x[start:stop]), start, stop) for start, stop in bounds]
        with progress_counter(len(items), f"{recording.label} on Ray") as advance:
            return map_ordered(self.actors, "summarise", items, on_result=lambda index, result: advance())

    def run_each(self, model: onnx.ModelProto, names: list[str], feeds: list[dict]) -> list[list[np.ndarray]]:
        from snncc.ray_runtime import map_ordered

        key, shared = self._put(model)
        return map_ordered(self.actors, "run", [(key, shared, names, feed) for feed in feeds])


@contextlib.contextmanager
def ray_executor(options) -> Iterator[RayExecutor]:
    """Connected to the cluster of `options` (a snncc.ray_runtime.RayOptions), with its actors."""
    from snncc.ray_runtime import connect, start_actors

    with connect(options.address):
        yield RayExecutor(start_actors(CalibrationWorker, options.actor_count(), gpus_per_actor=options.gpus_per_actor))
