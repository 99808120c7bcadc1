"""Threshold recording and DA-QCFS calibration against numpy re-implementations of the paper.

The reference here is written from the paper's Algorithm 1 / DESIGN §1, independently of
snncc's ONNX implementation: a numpy forward pass of a small conv + MLP network.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from snncc import ops
from snncc.calibration.dataset import CalibrationData, load_calibration_data
from snncc.calibration.pipeline import CalibrationOptions
from snncc.calibration.thresholds import ThresholdMode
from snncc.compiler import CompileOptions, compile_model
from snncc.errors import SnnccError
from models.qcfs import QCFS
from tests import nets


class Tiny(nn.Module):
    """1x1 conv (per-channel neurons on a rank-4 tensor) -> ReLU -> Linear -> ReLU6 -> Linear;
    with `qcfs`, both activations are QCFS (θ 1.0 and 2.5, T̃ = 4) instead."""

    def __init__(self, qcfs: bool = False):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 4, 1)
        self.fc1 = nn.Linear(4 * 4 * 4, 6)
        self.fc2 = nn.Linear(6, 3)
        self.act1 = QCFS(QCFS_LEVELS, QCFS_THETAS[0]) if qcfs else nn.ReLU()
        self.act2 = QCFS(QCFS_LEVELS, QCFS_THETAS[1]) if qcfs else nn.ReLU6()
        with torch.no_grad():
            self.conv.bias.fill_(0.2)
            self.fc1.bias.fill_(0.3)

    def forward(self, x):
        h = self.act1(self.conv(x))
        h = self.act2(self.fc1(torch.flatten(h, 1)))
        return self.fc2(h)


QCFS_LEVELS, QCFS_THETAS = 4, (1.0, 2.5)


def _export(model) -> onnx.ModelProto:
    import io

    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.rand(2, 1, 4, 4),), buffer, dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}}, opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


def _numpy_layers(model: Tiny):
    w1 = model.conv.weight.detach().numpy().reshape(4)
    b1 = model.conv.bias.detach().numpy()
    w2, b2 = model.fc1.weight.detach().numpy(), model.fc1.bias.detach().numpy()
    conv = lambda x: x[:, 0:1] * w1[None, :, None, None] + b1[None, :, None, None]  # noqa: E731
    fc1 = lambda h: h.reshape(len(h), -1) @ w2.T + b2  # noqa: E731
    return conv, fc1


def _neuron_params(snn: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    inits = {t.name: onnx.numpy_helper.to_array(t).reshape(-1) for t in snn.graph.initializer}
    return [dict(zip(("theta_pre", "theta_post", "psi"), (inits[n] for n in node.input[1:4])))
            for node in snn.graph.node if node.op_type == ops.PARALLEL_SPIKE]


def _data(n=400, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 1.5, size=(n, 1, 4, 4)).astype(np.float32)


def test_max_and_percentile_thresholds_equal_numpy():
    model = Tiny()
    x = _data()
    conv, fc1 = _numpy_layers(model)
    z1 = conv(x)
    z2 = fc1(np.maximum(z1, 0))
    for mode in ("max", "p99.9", "p90"):
        options = CompileOptions(steps=4, calibration_data=CalibrationData(x, "test"),
                                 calibration=CalibrationOptions(ThresholdMode.parse(mode), da_qcfs=False, batch_size=64))
        params = _neuron_params(compile_model(_export(model), options).model)
        for layer, z, clip in ((params[0], z1.transpose(1, 0, 2, 3).reshape(4, -1), None), (params[1], z2.T, 6.0)):
            if mode == "max":
                expected = z.max(axis=1)
                tolerance = 1e-6
            else:
                q = float(mode[1:])
                expected = np.array([np.percentile(row[row > 0], q, method="inverted_cdf") for row in z])
                tolerance = z.max(axis=1) / 4096 * 1.01  # one histogram bin
            if clip is not None:
                expected = np.minimum(expected, clip)
            assert np.all(np.abs(layer["theta_pre"] - expected) <= tolerance), mode
            assert np.allclose(layer["theta_post"], layer["theta_pre"]) and np.all(layer["psi"] == 0)


def _da_qcfs(z, theta, phi, psi, steps):
    return (theta + phi) / steps * np.clip(np.floor(((z + psi) * steps + theta / 2) / theta), 0, steps)


def _qcfs(z, theta, levels):
    return theta / levels * np.floor(np.clip(z / theta, 0, 1) * levels + 0.5)


def _algorithm_1(model: Tiny, x, steps, momentum, batch_size, thetas=None, qcfs=False):
    """Algorithm 1 written from the paper: ψ, φ per layer, per channel, batch by batch. θ: the
    per-channel maxima (ReLU6 capped at 6) unless given; the reference activation g_OA is
    ClipReLU at θ, or the ANN's QCFS."""
    conv, fc1 = _numpy_layers(model)
    if qcfs:
        thetas = [np.full(4, QCFS_THETAS[0]), np.full(6, QCFS_THETAS[1])]
    elif thetas is None:
        thetas = [conv(x).max(axis=(0, 2, 3)), np.minimum(fc1(np.maximum(conv(x), 0)).max(axis=0), 6.0)]
    state = [dict(psi=np.zeros(4), phi=np.zeros(4), theta=thetas[0], axes=(0, 2, 3), shape=(1, -1, 1, 1)),
             dict(psi=np.zeros(6), phi=np.zeros(6), theta=thetas[1], axes=(0,), shape=(1, -1))]
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].astype(np.float64)
        z_ref = z_act = conv(batch)
        for index, layer in enumerate(state):
            shape = layer["shape"]
            layer["psi"] = momentum * layer["psi"] + (1 - momentum) * (z_ref - z_act).mean(axis=layer["axes"])
            theta, phi, psi = (layer[k].reshape(shape) for k in ("theta", "phi", "psi"))
            r_ref = _qcfs(z_ref, theta, QCFS_LEVELS) if qcfs else np.clip(z_ref, 0, theta)
            r_act = _da_qcfs(z_act, theta, phi, psi, steps)
            layer["phi"] = momentum * layer["phi"] + (1 - momentum) * (r_ref - r_act).mean(axis=layer["axes"])
            if index == 0:
                z_ref, z_act = fc1(r_ref), fc1(r_act)
    return state


@pytest.mark.parametrize("steps,case", [(2, "max"), (4, "max"), (8, "max"), (2, "p90"), (4, "p95"), (2, "qcfs"), (8, "qcfs")])
def test_da_qcfs_calibration_equals_numpy_algorithm_1(steps, case):
    """Max thresholds take the reference means from the recording pass; percentile thresholds
    and QCFS references from a reference pass of their own."""
    qcfs = case == "qcfs"
    model = Tiny(qcfs=qcfs)
    x = _data(seed=steps)
    threshold = ThresholdMode.parse("max" if qcfs else case)
    options = CompileOptions(steps=steps, calibration_data=CalibrationData(x, "test"),
                             calibration=CalibrationOptions(threshold, da_qcfs=True, momentum=0.9, batch_size=50))
    result = compile_model(_export(model), options)
    assert {layer.case for layer in result.layers} == {"qcfs-da-qcfs" if qcfs else "relu-da-qcfs"}
    got_layers = _neuron_params(result.model)
    thetas = [layer["theta_pre"].astype(np.float64) for layer in got_layers] if case.startswith("p") else None
    reference = _algorithm_1(model, x, steps, 0.9, 50, thetas, qcfs)
    for got, expected in zip(got_layers, reference):
        assert np.allclose(got["theta_pre"], expected["theta"], atol=1e-6)
        assert np.allclose(got["psi"], expected["psi"], atol=1e-5)
        assert np.allclose(got["theta_post"] - got["theta_pre"], expected["phi"], atol=1e-5)
        assert np.abs(expected["phi"]).max() > 1e-4  # the test would see a missing update


def test_silent_channel_stays_silent():
    model = Tiny()
    with torch.no_grad():
        model.conv.weight[1].fill_(0.0)
        model.conv.bias[1] = -1.0  # channel 1 never activates
    x = _data()
    result = compile_model(_export(model), CompileOptions(steps=4, calibration_data=CalibrationData(x, "test")))
    first = _neuron_params(result.model)[0]
    assert first["theta_pre"][1] > 0 and first["theta_post"][1] == 0 and first["psi"][1] == 0
    assert np.all(np.isfinite(first["theta_post"]))


def test_qcfs_at_other_t_calibrates_only_when_asked():
    ann = nets.export(nets.build("vgg", 4), dynamo=False)
    data = CalibrationData(nets.sample_inputs(128).numpy(), "test")
    plain = compile_model(ann, CompileOptions(steps=2, calibration_data=data))
    assert {layer.case for layer in plain.layers} == {"qcfs-T-differs"}
    calibrated = compile_model(ann, CompileOptions(steps=2, calibration_data=data, calibration=CalibrationOptions(da_qcfs=True)))
    assert {layer.case for layer in calibrated.layers} == {"qcfs-da-qcfs"}
    lossless = compile_model(ann, CompileOptions(steps=4, calibration_data=data, calibration=CalibrationOptions(da_qcfs=True)))
    assert {layer.case for layer in lossless.layers} == {"qcfs-lossless"}


def test_relu_without_data_is_a_clear_error():
    with pytest.raises(SnnccError, match="need thresholds recorded on calibration data, and none was given") as caught:
        compile_model(_export(Tiny()), CompileOptions(steps=4))
    assert "--" not in str(caught.value)  # a Python caller has no command-line flags


@pytest.mark.parametrize("array,message", [
    (np.zeros((0, 1, 4, 4), np.float32), "empty"),
    (np.zeros((5, 1, 4, 5), np.float32), "shape"),
    (np.zeros((5, 1, 4, 4), np.int64), "dtype"),
    (np.full((5, 1, 4, 4), np.nan, np.float32), "NaN"),
])
def test_bad_calibration_data_is_rejected_before_work(tmp_path, array, message):
    path = tmp_path / "calib.npy"
    np.save(path, array)
    with pytest.raises(SnnccError, match=message):
        load_calibration_data(str(path), ["N", 1, 4, 4])


def test_image_folder_with_preprocessing(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 8, 10), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image, mode="L").save(tmp_path / f"{i}.png")
    data = load_calibration_data(str(tmp_path), ["N", 1, 4, 4], preprocess="resize=4,crop=4,mean=0.5,std=0.25")
    assert data.x.shape == (3, 1, 4, 4) and data.x.dtype == np.float32
    resized = np.asarray(Image.fromarray(pixels[0], mode="L").resize((5, 4), Image.BILINEAR), np.float32)[:, 0:4]
    assert np.allclose(data.x[0, 0], (resized / 255 - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(SnnccError, match="preprocess"):
        load_calibration_data(str(tmp_path), ["N", 1, 4, 4], preprocess="zoom=3")


def test_mse_thresholds_nearly_minimise_the_quantisation_error():
    """'mse' picks θ per channel; its true error on the data is within 2% of a brute-force search."""
    model = Tiny()
    x = _data(800)
    conv, _ = _numpy_layers(model)
    z = conv(x).transpose(1, 0, 2, 3).reshape(4, -1)
    steps = 2
    options = CompileOptions(steps=steps, calibration_data=CalibrationData(x, "test"),
                             calibration=CalibrationOptions(ThresholdMode.parse("mse"), da_qcfs=False))
    theta = _neuron_params(compile_model(_export(model), options).model)[0]["theta_pre"]

    def error(row, t):
        relu = np.maximum(row, 0)
        return np.sum((relu - t / steps * np.clip(np.floor(relu * steps / t + 0.5), 0, steps)) ** 2)

    for row, chosen in zip(z, theta):
        best = min(error(row, f * row.max()) for f in np.linspace(0.2, 1.0, 161))
        assert error(row, chosen) <= best * 1.02
        assert chosen < row.max()  # at T = 2 the maximum is never the best choice here
