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
    """One SNN probe session (and one ANN probe session) and the data; `run` evaluates one shard."""

    def __init__(self, snn: bytes, ann: bytes | None, source: RowSource, gpus: float):
        from snncc import spikes
        from snncc.session import make_session

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpus > 0 else ["CPUExecutionProvider"]
        self.source = source
        self.models = {}
        for kind, model, native in (("snn", snn, None), ("ann", ann, False)):
            if model is not None:
                probe = spikes.build_probe(onnx.load_from_string(model))
                self.models[kind] = probe, make_session(probe.model, native=native, providers=providers, threads=1)

    def run(self, item: tuple[str, int, int, int]):
        """(kind, start, stop, batch size) -> evaluate.ShardResult of that model on rows start..stop-1."""
        from snncc.evaluate import run_shard

        kind, start, stop, batch_size = item
        probe, session = self.models[kind]
        return run_shard(session, probe, self.source.read(start, stop), start, batch_size)


def evaluate_on_ray(evaluation: SnnEvaluation, source: RowSource, y: np.ndarray | None,
                    ann: onnx.ModelProto | None, ann_source: str | None, batch_size: int | None,
                    options: RayOptions):
    """(report.EvalReport, Reference or None) as SnnEvaluation.run and evaluate_ann give in-process;
    `evaluation` and the ANN were checked on the driver (evaluate.ann_probe) before."""
    from snncc.progress import progress_counter

    snn_batch = batch_size or evaluation.default_batch_size()
    items = [("snn", start, stop, snn_batch) for start, stop in shard_bounds(source.rows, snn_batch)]
    if ann is not None:
        ann_batch = batch_size or ANN_BATCH_SIZE
        items = [("ann", start, stop, ann_batch) for start, stop in shard_bounds(source.rows, ann_batch)] + items
    batches = [-(-(stop - start) // size) for _, start, stop, size in items]
    label = f"{'SNN and ANN' if ann is not None else 'SNN'} on {source.rows} inputs (Ray)"
    with connect(options.address) as ray:
        models = [ray.put(evaluation.model.SerializeToString()),
                  None if ann is None else ray.put(ann.SerializeToString())]
        actors = start_actors(EvalActor, options.actor_count(), (*models, source, options.gpus_per_actor),
                              gpus_per_actor=options.gpus_per_actor)
        with progress_counter(sum(batches), label) as advance:
            results = map_ordered(actors, "run", items, on_result=lambda index, _: advance(batches[index]))
    merged = {}
    for kind in ("ann", "snn"):
        shards = [r for item, r in zip(items, results) if item[0] == kind]
        if shards:
            _check_rows(shards, [item for item in items if item[0] == kind], source.rows, kind)
            merged[kind] = merge_shards(shards)
    reference = None if ann is None else ann_reference(ann_source, *merged["ann"], y)
    return evaluation.report(*merged["snn"], y, reference), reference


def _check_rows(shards: list, items: list, rows: int, kind: str) -> None:
    """SnnccError unless the shards came back with exactly their rows, covering 0..rows-1 once."""
    counted = sum(shard.rows for shard in shards)
    wrong = [(item, shard.start, shard.rows) for item, shard in zip(items, shards)
             if (shard.start, shard.start + shard.rows) != item[1:3]]
    if counted != rows or wrong:
        raise SnnccError(f"the Ray cluster returned {counted} {kind.upper()} rows for {rows} inputs"
                         + (f" (shard {wrong[0][0][1]}..{wrong[0][0][2]} came back as {wrong[0][1]}+{wrong[0][2]})"
                            if wrong else ""))
