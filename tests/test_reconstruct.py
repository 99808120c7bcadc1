"""Block reconstruction (torch): it lowers the error against the ANN (the stated block objective,
recomputed in numpy), the compiled SNN is exactly the quantised ANN with the reconstructed
parameters (a numpy reference of DESIGN §1), and `--calibrate reconstruct` is 'ridge' followed by it."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from snncc.calibration.dataset import CalibrationData
from snncc.calibration.pipeline import CalibrationOptions, calibrate_parameters
from snncc.calibration.reconstruct import MISSING_TORCH, ReconstructOptions, reconstruct
from snncc.compiler import CompileOptions, analyse_activations, compile_model, to_ir
from snncc.passes._activation import get_parameters, is_activation
from snncc.errors import SnnccError
from snncc.session import make_session

pytest.importorskip("torch")

STEPS = 2
RNG = np.random.default_rng(2)


def mlp(sizes=(16, 24, 12, 5)) -> onnx.ModelProto:
    """16 -> 24 -> ReLU -> 12 -> ReLU -> 5 (by default), random weights."""
    inits, nodes, current = [], [], "x"
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [onh.from_array(RNG.normal(0, 1 / np.sqrt(k), (n, k)).astype(np.float32), f"w{i}"),
                  onh.from_array(RNG.normal(0.05, 0.1, n).astype(np.float32), f"b{i}")]
        nodes.append(oh.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"z{i}"], transB=1, name=f"fc{i}"))
        current = f"z{i}"
        if i < len(sizes) - 2:
            nodes.append(oh.make_node("Relu", [current], [f"a{i}"], name=f"relu{i}"))
            current = f"a{i}"
    nodes[-1].output[0] = "y"
    graph = oh.make_graph(nodes, "mlp", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 16])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 5])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _data(n: int) -> np.ndarray:
    return RNG.normal(0, 1, (n, 16)).astype(np.float32)


def _compile(model: onnx.ModelProto, calibration: np.ndarray, reconstruct: ReconstructOptions | None,
             mode: str = "thresholds") -> onnx.ModelProto:
    return compile_model(model, CompileOptions(
        steps=STEPS, calibration_data=CalibrationData(calibration, "toy"),
        calibration=CalibrationOptions(mode=mode), reconstruct=reconstruct)).model


def _calibration_metadata(model: onnx.ModelProto) -> dict:
    return json.loads({p.key: p.value for p in model.metadata_props}["snncc.calibration"])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = make_session(model)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def quantised_ann_numpy(snn: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The MLP with each ReLU replaced by the neuron's DA-QCFS (DESIGN §1), from the SNN's own
    weights and neuron parameters."""
    inits = {t.name: onh.to_array(t) for t in snn.graph.initializer}
    gemms = [n for n in snn.graph.node if n.op_type == "Gemm"]
    neurons = [n for n in snn.graph.node if n.op_type == "ParallelSpike"]
    h = x.astype(np.float64)
    for i, gemm in enumerate(gemms):
        h = h @ inits[gemm.input[1]].T.astype(np.float64) + inits[gemm.input[2]]
        if i < len(neurons):
            theta_pre, theta_post, psi = (inits[name].reshape(-1) for name in neurons[i].input[1:4])
            k = np.clip(np.floor((STEPS * (h + psi) + theta_pre / 2) / theta_pre), 0, STEPS)
            h = k * theta_post / STEPS
    return h


def test_reconstruction_lowers_the_error_and_the_snn_is_the_refined_quantised_ann():
    model, calibration, x = mlp(), _data(512), _data(256)
    ann = _run(model, x)
    start = _compile(model, calibration, None)
    refined = _compile(model, calibration, ReconstructOptions(iterations=60, batch_size=64, samples=512))
    summary = _calibration_metadata(refined)["reconstruct"]
    assert [b["mse_after"] <= b["mse_before"] for b in summary["blocks"]] == [True, True]
    assert summary["blocks"][0]["mse_after"] < 0.9 * summary["blocks"][0]["mse_before"]
    assert summary["changed_layers"]  # recorded: the biases it moved
    # independent of the torch code: the SNN's outputs against the ANN, before and after
    error = [np.mean((_run(snn, x) - ann) ** 2) for snn in (start, refined)]
    assert error[1] < 0.9 * error[0], error
    # the SNN (time-expanded, on ONNX Runtime) is the quantised ANN with the refined parameters
    np.testing.assert_allclose(_run(refined, x), quantised_ann_numpy(refined, x), rtol=1e-4, atol=1e-4)
    # and the weights changed only inside the compiled model
    changed = {n.name for n in refined.graph.node if any(i.endswith(".reconstructed") for i in n.input)}
    assert changed and changed <= {"fc0", "fc1", "fc2"}
    assert not any(t.name.endswith(".reconstructed") for t in model.graph.initializer)


def test_weights_mode_moves_weights():
    model, calibration = mlp(), _data(256)
    refined = _compile(model, calibration, ReconstructOptions(iterations=30, samples=256, weights=True))
    inits = {t.name: onh.to_array(t) for t in refined.graph.initializer}
    gemm = next(n for n in refined.graph.node if n.name == "fc1")
    original = {t.name: onh.to_array(t) for t in model.graph.initializer}
    assert gemm.input[1].endswith(".reconstructed")
    assert not np.array_equal(inits[gemm.input[1]], original["w1"])


def _block_objective(model, x: np.ndarray, target: np.ndarray) -> float:
    """The stated objective of the one block of a one-neuron-layer `mlp`, in numpy: the mean squared
    error between fc1(DA-QCFS_T(fc0(x))) and the ANN's output."""
    nodes = {n.name: n for n in model.graph}
    w0, b0, w1, b1 = (nodes[name].inputs[i].const_value.numpy().astype(np.float64) for name in ("fc0", "fc1") for i in (1, 2))
    p = get_parameters(next(n for n in model.graph if is_activation(n)))
    z = x @ w0.T + b0
    k = np.clip(np.floor((z + p.psi) * STEPS / p.theta_pre + 0.5), 0, STEPS)
    return float(np.mean((k * p.theta_post / STEPS @ w1.T + b1 - target) ** 2))


def test_the_block_objective_falls_as_a_numpy_reference_computes_it():
    ann, x = mlp((16, 32, 5)), _data(256)
    model = analyse_activations(to_ir(onnx.ModelProto.FromString(ann.SerializeToString())))
    calibrate_parameters(model, CalibrationData(x, "toy"), STEPS, CalibrationOptions(mode="thresholds"))
    target = _run(ann, x).astype(np.float64)
    before = _block_objective(model, x, target)
    summary = reconstruct(model, analyse_activations(to_ir(ann)), CalibrationData(x, "toy"), STEPS,
                          ReconstructOptions(iterations=80, batch_size=64, samples=256))
    after = _block_objective(model, x, target)
    [block] = summary["blocks"]
    np.testing.assert_allclose([block["mse_before"], block["mse_after"]], [before, after], rtol=1e-3)
    assert after < 0.8 * before, (before, after)
    assert summary["changed_layers"] == ["fc0", "fc1"]


def test_missing_torch_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(SnnccError, match="snncc\\[reconstruct\\]"):
        _compile(mlp(), _data(64), ReconstructOptions(iterations=1))
    with pytest.raises(SnnccError, match="snncc\\[reconstruct\\]"):
        _compile(mlp(), _data(64), None, mode="reconstruct")
    assert "pip install" in MISSING_TORCH


@pytest.mark.parametrize("arguments", [["--reconstruct", "5"], ["--calibrate", "reconstruct"]])
def test_cli_says_in_one_line_when_torch_is_missing(tmp_path, monkeypatch, arguments):
    from click.testing import CliRunner

    from snncc.cli import main

    path, data = tmp_path / "mlp.onnx", tmp_path / "calib.npy"
    onnx.save(mlp(), path)
    np.save(data, _data(32))
    monkeypatch.setitem(sys.modules, "torch", None)
    result = CliRunner().invoke(main, ["compile", str(path), "--T", "2", "--calib", str(data), *arguments])
    assert result.exit_code == 2
    assert result.output.strip() == f"snncc: error: {MISSING_TORCH}"


def test_cli_reconstructs_after_the_calibration_mode(tmp_path):
    from click.testing import CliRunner

    from snncc.cli import main

    path, data, out = tmp_path / "mlp.onnx", tmp_path / "calib.npy", tmp_path / "mlp.snn.onnx"
    onnx.save(mlp(), path)
    np.save(data, _data(64))
    result = CliRunner().invoke(main, ["compile", str(path), "--T", "2", "--calib", str(data), "--calibrate", "thresholds",
                                       "--reconstruct", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    calibration = _calibration_metadata(onnx.load(out))
    assert calibration["mode"] == "thresholds" and calibration["reconstruct"]["iterations"] == 3
    assert len(calibration["reconstruct"]["blocks"]) == 2


def test_the_reconstruct_mode_is_ridge_then_reconstruction_and_stays_exact():
    model, calibration, x = mlp(), _data(512), _data(256)
    ann = _run(model, x)
    ridge = _compile(model, calibration, None, mode="ridge")
    best = _compile(model, calibration, None, mode="reconstruct")
    metadata = _calibration_metadata(best)
    assert metadata["mode"] == "reconstruct" and metadata["ridge"] == _calibration_metadata(ridge)["ridge"]
    assert metadata["reconstruct"]["iterations"] == ReconstructOptions().iterations  # the mode's defaults
    assert metadata["reconstruct"]["weights"] == ReconstructOptions().weights
    changed = {n.name for n in best.graph.node if any(i.endswith(".reconstructed") for i in n.input)}
    assert changed == set(metadata["reconstruct"]["changed_layers"]) and changed
    error = [np.mean((_run(snn, x) - ann) ** 2) for snn in (ridge, best)]
    assert error[1] < error[0], error
    np.testing.assert_allclose(_run(best, x), quantised_ann_numpy(best, x), rtol=1e-4, atol=1e-4)
    # --reconstruct N sets the iterations of the mode
    fewer = compile_model(model, CompileOptions(steps=STEPS, calibration_data=CalibrationData(calibration, "toy"),
                                                calibration=CalibrationOptions(mode="reconstruct"),
                                                reconstruct=ReconstructOptions(iterations=2)))
    assert _calibration_metadata(fewer.model)["reconstruct"]["iterations"] == 2
