"""`snncc.compile`, the one-call Python API: numpy arrays (any float dtype) and paths in, the
compiled model and its summary out, SnnccError messages that name no command-line flag."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import snncc
from snncc import data as datasets
from snncc.compiler import CompileOptions, compile_model
from snncc.session import make_session

MODELS = Path(__file__).resolve().parent.parent / "models"
RELU, QCFS = MODELS / "fmnist_relu_vgg.onnx", MODELS / "fmnist_qcfs_vgg_t4.onnx"


@pytest.fixture(scope="module")
def train():
    x, y = datasets.load("fashion-mnist", "train")
    return x[:96], y[:96]


def test_compile_a_relu_model_from_a_float64_array(train, tmp_path):
    x, y = train
    snn = snncc.compile(str(RELU), T=4, calib=x.astype(np.float64), calib_labels=y)
    assert isinstance(snn.model, onnx.ModelProto) and len(snn.layers) == 6
    assert {layer.case for layer in snn.layers} == {"relu-da-qcfs"}
    accuracy = np.mean(ort.InferenceSession(str(RELU)).run(None, {"input": x})[0].argmax(1) == y)
    assert f"the ANN is {100 * accuracy:.1f}% accurate on the 96 calibration samples" in snn.summary
    assert "/features/features.12/ParallelSpike" in snn.summary
    # run() takes float64 and gives what a plain session gives on float32
    logits = snn.run(x[:5].astype(np.float64))
    np.testing.assert_array_equal(logits, make_session(snn.model).run(None, {"input": x[:5]})[0])
    # the same compilation through the lower-level API, with the array given directly
    direct = compile_model(onnx.load(RELU), CompileOptions(steps=4, calibration_data=x.astype(np.float64)))
    assert [layer.theta_pre for layer in direct.layers] == [layer.theta_pre for layer in snn.layers]
    path = snn.save(tmp_path / "relu.snn.onnx")
    assert onnx.load(path).graph == snn.model.graph


def test_compile_from_paths_and_dataset_names(tmp_path, train):
    x, y = train
    np.savez(tmp_path / "calib.npz", x=x, y=y)
    shutil.copy(QCFS, tmp_path / "model.onnx")
    lossless = snncc.compile(tmp_path / "model.onnx", T=4)
    assert {layer.case for layer in lossless.layers} == {"qcfs-lossless"} and lossless.calibration_check is None
    from_file = snncc.compile(tmp_path / "model.onnx", T=8, calib=tmp_path / "calib.npz", calibrate=True)
    from_dataset = snncc.compile(onnx.load(QCFS), T=8, calib="fashion-mnist:train", calib_samples=96, calibrate=True)
    assert {layer.case for layer in from_file.layers} == {"qcfs-da-qcfs"}
    assert [layer.psi for layer in from_file.layers] == [layer.psi for layer in from_dataset.layers]  # same data


@pytest.mark.parametrize("call,needle", [
    (lambda x: snncc.compile(str(RELU), T=4), "calibration data, and none was given"),
    (lambda x: snncc.compile(str(RELU), T=4, calib=x[:, 0]), "the model input wants [1, 28, 28]"),
    (lambda x: snncc.compile(str(RELU), T=4, calib=(x * 255).astype(np.uint8)), "dtype uint8"),
    (lambda x: snncc.compile(str(RELU), T=4, calib=x[:0]), "empty"),
    (lambda x: snncc.compile(str(RELU), T=4, calib=x, levels=8), "no QCFS activation"),
    (lambda x: snncc.compile(str(RELU), T=4, calib=x, threshold="p200"), "threshold"),
    (lambda x: snncc.compile(str(RELU), T=4, calib=x, calib_samples=0), "must be positive"),
    (lambda x: snncc.compile(str(RELU), T=4, calib=x, preprocess="resize=28"), "image folders"),
    (lambda x: snncc.compile(str(RELU), T=4, calib=[1, 2]), "numpy array"),
    (lambda x: snncc.compile(str(QCFS), T=0), "T must be an integer in 1.."),
    (lambda x: snncc.compile(str(QCFS), T=4, fold_time=True, neuron="if"), "parallel neurons"),
    (lambda x: snncc.compile(str(QCFS), T=4, levels=0), "levels"),
    (lambda x: snncc.compile("missing.onnx", T=4), "no such file"),
    (lambda x: snncc.compile(str(QCFS), T=4).save("/nonexistent-folder/x.onnx"), "does not exist"),
])
def test_errors_are_snncc_errors_without_command_line_flags(train, call, needle):
    with pytest.raises(snncc.SnnccError) as caught:
        call(train[0])
    assert needle in str(caught.value) and "--" not in str(caught.value), str(caught.value)


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    snn = snncc.compile(str(QCFS), T=4)
    snn.save(tmp_path / "m.onnx")
    with pytest.raises(snncc.SnnccError, match="overwrite=True"):
        snn.save(tmp_path / "m.onnx")
    snn.save(tmp_path / "m.onnx", overwrite=True)


def test_calibration_warnings_are_snncc_warnings(train):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        snncc.compile(str(RELU), T=4, calib=train[0] * 255)
    assert any(issubclass(w.category, snncc.SnnccWarning) and "0-255" in str(w.message) for w in caught)


def test_the_api_is_documented():
    for thing in (snncc.compile, snncc.Compiled, snncc.Compiled.run, snncc.Compiled.save):
        assert thing.__doc__ and len(thing.__doc__) > 40
    for argument in ("calib", "calib_labels", "levels", "threshold", "fold_time", "SnnccError"):
        assert argument in snncc.compile.__doc__
