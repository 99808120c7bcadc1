"""`snncc sweep --ray` on a real two-node loopback Ray cluster: the same table, CSV, JSON and plot
as the in-process sweep (all but the per-cell compile/eval seconds), on a small bounded grid."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ray_cluster import LoopbackCluster

pytest.importorskip("ray")

MODEL = Path(__file__).resolve().parent.parent / "models" / "fmnist_relu_vgg.onnx"
TIMINGS = ("compile_s", "eval_s")
# 2 x 2 cells on 200 test and 200 calibration images (SNNCC_MAX_SAMPLES bounds both)
GRID = ["--T", "2,4", "--data", "fashion-mnist:test", "--calib", "fashion-mnist:train", "--variants", "relu-thr,relu+cal"]


def _sweep(prefix: Path, *extra, env=None) -> str:
    done = subprocess.run([sys.executable, "-m", "snncc", "sweep", str(MODEL), *GRID, "-o", str(prefix), "--force", *extra],
                          capture_output=True, text=True, timeout=400,
                          env={**os.environ, "SNNCC_MAX_SAMPLES": "200", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _without_timings(prefix: Path) -> tuple[list[dict], dict]:
    rows = list(csv.DictReader(io.StringIO(prefix.with_suffix(".csv").read_text())))
    report = json.loads(prefix.with_suffix(".json").read_text())
    for row in rows + report["rows"]:
        for key in TIMINGS:
            assert float(row.pop(key)) >= 0
    return rows, report


def test_sweep_on_ray_equals_the_in_process_sweep(tmp_path):
    here = _sweep(tmp_path / "here")
    with LoopbackCluster(head_cpus=1, worker_cpus=1) as cluster:
        there = _sweep(tmp_path / "ray", "--ray", cluster.address, "--ray-actors", "2", env=cluster.client_env)
    table = lambda out: [line for line in out.splitlines() if not line.startswith("wrote ")]  # noqa: E731
    assert table(here) == table(there) and "relu+cal" in there
    rows_here, json_here = _without_timings(tmp_path / "here")
    rows_there, json_there = _without_timings(tmp_path / "ray")
    assert len(rows_here) == 4 and rows_here == rows_there and json_here == json_there
    assert (tmp_path / "here.png").read_bytes() == (tmp_path / "ray.png").read_bytes()
