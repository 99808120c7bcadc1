"""Compiling the same input twice gives byte-identical output, in one process and across processes
(different hash seeds: no ordering may depend on set or dict iteration of strings)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from snncc.calibration.dataset import CalibrationData
from snncc.calibration.pipeline import CalibrationOptions
from snncc.compiler import CompileOptions, compile_model
from tests import random_cnn
from tests.random_cnn import Act, Block, NetSpec

# ReLU/ReLU6/QCFS mixed, residual, Concat, moved MaxPool, Flatten head with a hidden layer
MIXED = NetSpec(in_channels=2, size=8, seed=5, head="flatten", head_act=Act("qcfs", levels=4), blocks=(
    Block("conv", channels=4, act=Act("relu6")),
    Block("pool_first", act=Act("relu")),
    Block("residual", channels=4, act=Act("qcfs", per_channel=True, levels=4), act2=Act("relu"), batchnorm=True),
    Block("concat", channels=4, act=Act("max0"), act2=Act("clip", bound=2.5)),
))
QCFS = NetSpec(in_channels=1, size=6, seed=6, blocks=(
    Block("conv", channels=3, act=Act("qcfs", levels=4)), Block("maxpool"), Block("conv", channels=5, act=Act("qcfs", levels=4))))


@pytest.mark.parametrize("spec,steps,calibrate", [(MIXED, 4, None), (QCFS, 4, None), (QCFS, 8, True), (QCFS, 2, False)],
                         ids=["relu-mixed", "qcfs-lossless", "qcfs-da-qcfs", "qcfs-other-T"])
def test_same_input_same_bytes(spec, steps, calibrate):
    ann = random_cnn.build(spec)
    data = CalibrationData(random_cnn.inputs(spec, 32, seed=1), "random")
    options = CompileOptions(steps=steps, calibration_data=data, calibration=CalibrationOptions(da_qcfs=calibrate))
    first = compile_model(ann, options).model.SerializeToString()
    second = compile_model(ann, options).model.SerializeToString()
    assert first == second


def test_cli_output_is_byte_identical_across_processes(tmp_path):
    onnx.save(random_cnn.build(MIXED), tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", random_cnn.inputs(MIXED, 32, seed=1))
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}.onnx"
        result = subprocess.run([sys.executable, "-m", "snncc", "compile", tmp_path / "net.onnx", "--T", "4",
                                 "--calib", tmp_path / "calib.npy", "-o", out],
                                capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
