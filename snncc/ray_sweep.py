"""`snncc sweep --ray`: the (T, variant) cells of a sweep in parallel on a Ray cluster.

The driver runs the ANN once (the reference every cell compares with) and puts the sweep's inputs
in the object store once; each cell — compile at T, evaluate the SNN — is one call on a pool of
actors spread over the nodes (`snncc.ray_runtime`: bounded restarts and retries, so a lost node
costs a retry, not a cell). Rows come back in the planned order, so the table, CSV, JSON and plot
equal the in-process sweep's (all but the compile_s / eval_s timings, which are measured where the
cell ran).

Invariant: `ray_cells(options)` yields a `snncc.sweep.CellRunner`; Ray is imported only inside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class SweepWorker:
    """A Ray actor running sweep cells; keeps the sweep's inputs after the first cell."""

    def __init__(self):
        self._inputs = self._ref = None

    def run(self, item):
        import ray

        from snncc.sweep import run_cell

        inputs_ref, steps, variant = item
        if self._ref != inputs_ref:
            self._ref, self._inputs = inputs_ref, ray.get(inputs_ref)
        return run_cell(self._inputs, steps, variant)


@contextlib.contextmanager
def ray_cells(options) -> Iterator[Callable]:
    """Connected to the cluster of `options` (snncc.ray_runtime.RayOptions): a CellRunner on its actors
    (at most one actor per cell)."""
    from snncc.ray_runtime import connect, map_ordered, start_actors

    with connect(options.address) as ray:
        def run_cells(inputs, cells, on_row):
            actors = start_actors(SweepWorker, max(1, min(options.actor_count(), len(cells))),
                                  gpus_per_actor=options.gpus_per_actor)
            shared = ray.put(inputs)
            items = [(shared, steps, variant) for steps, variant in cells]
            return map_ordered(actors, "run", items, on_result=lambda index, row: on_row(row))

        yield run_cells
