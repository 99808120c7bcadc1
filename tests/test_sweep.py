"""`snncc sweep`: the rows it promises for QCFS and ReLU models, the CSV/JSON/PNG files, the
variant extension point, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from snncc import sweep
from snncc.calibration.dataset import CalibrationData
from tests import nets

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def snncc(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncc", *map(str, args)], capture_output=True, text=True, cwd=cwd)


class ReluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep")
    onnx.save(nets.export(nets.build("vgg", 4), dynamo=False), path / "qcfs.onnx")
    torch.manual_seed(0)
    onnx.save(nets.export(ReluNet().eval(), dynamo=False), path / "relu.onnx")
    x = nets.sample_inputs(160, seed=3).numpy()
    np.savez(path / "test.npz", x=x, y=np.random.default_rng(1).integers(0, 10, len(x)))
    np.savez(path / "calib.npz", x=nets.sample_inputs(64, seed=8).numpy())
    return path


def test_sweep_qcfs_writes_table_csv_json_and_png(folder):
    result = snncc("sweep", folder / "qcfs.onnx", "--T", "2,4", "--data", folder / "test.npz",
                   "--calib", folder / "calib.npz", "-o", folder / "out", "--serial-if")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = list(csv.DictReader((folder / "out.csv").open()))
    # T = T̃ = 4: uncalibrated only (lossless); T = 2: with and without DA-QCFS; serial IF at both
    assert [(r["T"], r["variant"]) for r in rows] == [("2", "qcfs"), ("2", "qcfs+cal"), ("2", "qcfs-if"),
                                                      ("4", "qcfs"), ("4", "qcfs-if")]
    lossless = rows[3]
    assert lossless["case"] == "qcfs-lossless" and float(lossless["agreement"]) == 1.0
    assert float(lossless["max_logit_diff"]) == 0.0
    report = json.loads((folder / "out.json").read_text())
    assert report["model_kind"] == "qcfs" and report["levels"] == 4 and len(report["rows"]) == 5
    assert report["rows"][3]["top1"] == report["ann"]["top1"]
    png = (folder / "out.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    from PIL import Image

    with Image.open(folder / "out.png") as image:
        image.verify()
    # the printed table holds the same numbers
    assert f"{100 * float(rows[0]['top1']):.2f}" in result.stdout
    for suffix in ("csv", "json", "png"):
        assert f"wrote {folder / 'out'}.{suffix}" in result.stdout


def test_sweep_relu_thresholds_only_and_calibrated(folder):
    result = snncc("sweep", folder / "relu.onnx", "--T", "4,8", "--data", folder / "test.npz",
                   "--calib", folder / "calib.npz", "-o", folder / "relu", "--no-plot", "--serial-if")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((folder / "relu.csv").open()))
    assert [(r["T"], r["variant"], r["case"]) for r in rows] == [
        ("4", "relu-thr", "relu-thresholds"), ("4", "relu+cal", "relu-da-qcfs"), ("4", "relu-if", "relu-thresholds"),
        ("8", "relu-thr", "relu-thresholds"), ("8", "relu+cal", "relu-da-qcfs"), ("8", "relu-if", "relu-thresholds")]
    assert not (folder / "relu.png").exists()


def test_sweep_errors_are_one_line(folder):
    for args, needle in [
        (("--T", "4"), "needs calibration data"),  # ReLU model without --calib
        (("--T", "two"), "comma-separated integers"),
        (("--T", "4", "--calib", folder / "calib.npz", "--variants", "nope"), "unknown sweep variant"),
    ]:
        result = snncc("sweep", folder / "relu.onnx", "--data", folder / "test.npz", *args, "-o", folder / "err")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("snncc: error:") and needle in lines[0], result.stderr


def test_a_registered_variant_becomes_a_column(folder, monkeypatch):
    """The extension point (the serial-IF columns are two such variants)."""
    monkeypatch.setattr(sweep, "VARIANTS", list(sweep.VARIANTS))
    sweep.register_variant(sweep.Variant("qcfs-folded", "QCFS, folded graph", lambda info, T, calib: info.kind == "qcfs",
                                         lambda T, info: {"fold_time": True}))
    with pytest.raises(ValueError):
        sweep.register_variant(sweep.Variant("qcfs", "dup", lambda *a: True, lambda *a: {}))
    model = onnx.load(folder / "qcfs.onnx")
    data = np.load(folder / "test.npz")
    result = sweep.run_sweep(model, "qcfs.onnx", [4], data["x"][:40], data["y"][:40], "test.npz",
                             CalibrationData(np.load(folder / "calib.npz")["x"], "calib"), echo=lambda line: None,
                             serial_if=True)
    assert [r.variant for r in result.rows] == ["qcfs", "qcfs-if", "qcfs-folded"]
    assert result.rows[0].top1 == result.rows[2].top1 and result.rows[2].agreement == 1.0
    assert "qcfs-folded" in result.format_table()


def test_sweep_defaults_folded_without_serial_if_and_logs_run_k_of_n(folder):
    """Parallel cases run folded (the same numbers as expanded ones); the serial-IF baseline is
    opt-in and the log says so; a pipe gets 'run k of N' with an ETA; outputs are not overwritten."""
    args = ("sweep", folder / "qcfs.onnx", "--T", "2,4", "--data", folder / "test.npz", "--calib", folder / "calib.npz",
            "--no-plot")
    folded = snncc(*args, "-o", folder / "folded")
    assert folded.returncode == 0, folded.stderr
    assert "serial-IF baseline not run (add it with --serial-if)" in folded.stderr
    assert "sweep: run 1 of 3 (33%)" in folded.stderr and "ETA" in folded.stderr
    assert "sweep: run 3 of 3 (100%)" in folded.stderr
    report = json.loads((folder / "folded.json").read_text())
    assert report["folded"] is True and [r["variant"] for r in report["rows"]] == ["qcfs", "qcfs+cal", "qcfs"]
    expanded = snncc(*args, "-o", folder / "expanded", "--expand-time")
    assert expanded.returncode == 0, expanded.stderr
    rows = json.loads((folder / "expanded.json").read_text())["rows"]
    assert [r["top1"] for r in rows] == [r["top1"] for r in report["rows"]]
    again = snncc(*args, "-o", folder / "folded")
    assert again.returncode == 2 and "already exists (use --force to overwrite)" in again.stderr


def test_plot_is_large_titled_and_skips_missing_t(folder):
    model = onnx.load(folder / "qcfs.onnx")
    data = np.load(folder / "test.npz")
    result = sweep.run_sweep(model, "qcfs.onnx", [2, 4, 8], data["x"][:24], data["y"][:24], "test.npz",
                             CalibrationData(np.load(folder / "calib.npz")["x"], "calib"), echo=lambda line: None)
    steps, values = result.plot_series("qcfs+cal")  # no DA-QCFS row at T = T̃ = 4
    assert steps == [2, 4, 8] and np.isnan(values[1]) and not np.isnan(values[0]) and not np.isnan(values[2])
    assert values[0] == 100 * result.value(2, "qcfs+cal")
    title = result.plot_title()
    assert "test.npz" in title and "T̃=4" in title and "qcfs-lossless" in title and "qcfs-da-qcfs" in title
    if sweep.have_matplotlib():
        from PIL import Image

        result.plot(folder / "plot.png")
        with Image.open(folder / "plot.png") as image:
            assert image.size[0] >= 1000 and image.size[1] >= 600
