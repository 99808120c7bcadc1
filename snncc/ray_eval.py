"""`snncc eval --ray`: the SNN (and the ANN) evaluated shard by shard on a pool of Ray actors.

Invariant: the report equals the in-process one to the last digit. Each model's rows are cut into
the same shards as in-process (`evaluate.shard_bounds`, the same batches inside), each actor call
returns one whole shard's logits and counts (nothing accumulates in an actor: a restarted actor or a
retried call cannot lose or double rows), and the driver merges the shards in row order with
`evaluate.merge_shards` after checking that they cover rows 0..N-1 exactly once. Actors read their
own rows (`data.RowSource`), so the driver never holds the inputs.
"""

from __future__ import annotations

import numpy as np
import onnx

from snncc.data import RowSource
from snncc.errors import SnnccError
from snncc.evaluate import SnnEvaluation, ann_reference, merge_shards, shard_bounds
from snncc.ray_runtime import RayOptions, connect, map_ordered, start_actors

ANN_BATCH_SIZE = 256  # as evaluate_ann


class EvalActor:
    """The data and, from its first call on (again after a restart), one SNN probe session and one ANN
    probe session; `run` evaluates one shard."""

    def __init__(self, source: RowSource, gpus: float):
        self.source = source
        self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpus > 0 else ["CPUExecutionProvider"]
        self.models = None  # kind -> (probe, session)

    def _load(self, models: list) -> dict:
        """`models`: [SNN, ANN or None] as refs to ONNX bytes in Ray's object store (inside a list,
        so that Ray passes the refs, and constructor arguments hold nothing a restart would need)."""
        import ray

        from snncc import spikes
        from snncc.session import make_session

        loaded = {}
        for kind, ref, native in (("snn", models[0], None), ("ann", models[1], False)):
            if ref is not None:
                probe = spikes.build_probe(onnx.load_from_string(ray.get(ref)))
                loaded[kind] = probe, make_session(probe.model, native=native, providers=self.providers, threads=1)
        return loaded

    def run(self, item: tuple):
        """(kind, start, stop, batch size, models) -> evaluate.ShardResult of that model on rows start..stop-1."""
        from snncc.evaluate import run_shard

        kind, start, stop, batch_size, models = item
        self.models = self.models or self._load(models)
        probe, session = self.models[kind]
        return run_shard(session, probe, self.source.read(start, stop), start, batch_size)


def evaluate_on_ray(evaluation: SnnEvaluation, source: RowSource, y: np.ndarray | None,
                    ann: onnx.ModelProto | None, ann_source: str | None, batch_size: int | None,
                    options: RayOptions):
    """(report.EvalReport, Reference or None) as SnnEvaluation.run and evaluate_ann give in-process;
    `evaluation` and the ANN were checked on the driver (evaluate.ann_probe) before."""
    from snncc.progress import progress_counter

    snn_batch = batch_size or evaluation.default_batch_size()
    shards = [("snn", start, stop, snn_batch) for start, stop in shard_bounds(source.rows, snn_batch)]
    if ann is not None:
        ann_batch = batch_size or ANN_BATCH_SIZE
        shards = [("ann", start, stop, ann_batch) for start, stop in shard_bounds(source.rows, ann_batch)] + shards
    batches = [-(-(stop - start) // size) for _, start, stop, size in shards]
    label = f"{'SNN and ANN' if ann is not None else 'SNN'} on {source.rows} inputs (Ray)"
    with connect(options.address) as ray:
        models = [ray.put(evaluation.model.SerializeToString()),
                  None if ann is None else ray.put(ann.SerializeToString())]
        items = [(*shard, models) for shard in shards]
        actors = start_actors(EvalActor, options.actor_count(), (source, options.gpus_per_actor),
                              gpus_per_actor=options.gpus_per_actor)
        with progress_counter(sum(batches), label) as advance:
            results = map_ordered(actors, "run", items, on_result=lambda index, _: advance(batches[index]))
    merged = {}
    for kind in ("ann", "snn"):
        asked = [item[1:3] for item in items if item[0] == kind]
        parts = [result for item, result in zip(items, results) if item[0] == kind]
        if parts:
            _check_rows(parts, asked, source.rows, kind)
            merged[kind] = merge_shards(parts)
    reference = None if ann is None else ann_reference(ann_source, *merged["ann"], y)
    return evaluation.report(*merged["snn"], y, reference), reference


def _check_rows(parts: list, asked: list[tuple[int, int]], rows: int, kind: str) -> None:
    """SnnccError unless every shard came back with exactly the rows asked, together 0..rows-1 once."""
    counted = sum(part.rows for part in parts)
    returned = [(part.start, part.start + part.rows) for part in parts]
    if counted != rows or returned != asked:
        raise SnnccError(f"the Ray cluster returned {counted} {kind.upper()} rows for {rows} inputs "
                         f"(shards {returned} for {asked})")
