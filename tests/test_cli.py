"""The command line as a user runs it: outputs, summaries, and one-line errors with exit code 2."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tests import graphs, nets


def snncc(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncc", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snncc: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def qcfs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "vgg.onnx"
    onnx.save(nets.export(nets.build("vgg", 4), dynamo=False), path)
    return path


def test_compile_writes_default_output_and_summary(qcfs_file):
    result = snncc("compile", qcfs_file, "--T", 4, "--print-runtime")
    assert result.returncode == 0, result.stderr
    output = qcfs_file.with_name("vgg.snn.onnx")
    snn = onnx.load(output)
    onnx.checker.check_model(snn, full_check=True)
    neurons = [n for n in snn.graph.node if n.op_type == "ParallelSpike"]
    assert len(neurons) == 4
    assert result.stdout.count("qcfs-lossless") == 4
    assert "snn ops:" in result.stdout
    meta = {p.key: p.value for p in snn.metadata_props}
    assert meta["snncc.T"] == "4" and meta["snncc.levels"] == "4" and meta["snncc.case"] == "qcfs-lossless"
    for node in neurons:
        keys = {p.key for p in node.metadata_props}
        assert {"snncc.pass", "snncc.source"} <= keys and node.doc_string
    assert_user_error(snncc("compile", qcfs_file, "--T", 4), "already exists", "--force")
    assert snncc("compile", qcfs_file, "--T", 4, "--force").returncode == 0


def test_inspect_ann_and_snn(qcfs_file, tmp_path):
    ann = snncc("inspect", qcfs_file)
    assert ann.returncode == 0 and "4 activations" in ann.stdout and "convertible" in ann.stdout
    out = tmp_path / "x.snn.onnx"
    assert snncc("compile", qcfs_file, "--T", 8, "-o", out).returncode == 0
    snn = snncc("inspect", out)
    assert snn.returncode == 0 and "T=8, T̃=4" in snn.stdout and "qcfs-T-differs" in snn.stdout


def test_eval_reports_accuracy_and_full_agreement_at_t_equal_levels(qcfs_file, tmp_path):
    out = tmp_path / "x.snn.onnx"
    assert snncc("compile", qcfs_file, "--T", 4, "-o", out).returncode == 0
    x = nets.sample_inputs(300, seed=3).numpy()
    y = np.random.default_rng(0).integers(0, 10, 300)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    result = snncc("eval", out, "--ann", qcfs_file, "--data", tmp_path / "data.npz")
    assert result.returncode == 0, result.stderr
    assert "agreement with the ANN: argmax 100.00%" in result.stdout
    accuracies = [line for line in result.stdout.splitlines() if "accuracy" in line]
    assert len(accuracies) == 2 and accuracies[0].split(":")[1] == accuracies[1].split(":")[1]
    np.savez(tmp_path / "bad.npz", x=x[:, :, :5], y=y)
    assert_user_error(snncc("eval", out, "--data", tmp_path / "bad.npz"), "does not fit")


def test_bad_inputs_give_one_line_errors(qcfs_file, tmp_path):
    assert_user_error(snncc("compile", tmp_path / "missing.onnx", "--T", 4), "missing.onnx", "no such file")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    assert_user_error(snncc("compile", garbage, "--T", 4), "garbage.onnx", "not a valid ONNX model")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(qcfs_file.read_bytes()[:500])
    assert_user_error(snncc("compile", truncated, "--T", 4), "truncated.onnx")
    assert_user_error(snncc("compile", qcfs_file, "--T", 0), "T must be")
    assert_user_error(snncc("compile", qcfs_file, "--T", 4, "-o", qcfs_file), "equals the input")
    assert_user_error(snncc("compile", qcfs_file, "--T", 4, "-o", tmp_path / "nowhere" / "x.onnx"), "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_relu_model_asks_for_calibration(tmp_path):
    path = tmp_path / "relu.onnx"
    onnx.save(graphs.model("g (float[N,3] x) => (float[N,3] y) { y = Relu (x) }"), path)
    assert_user_error(snncc("compile", path, "--T", 4), "relu.onnx", "calibration")
    assert not path.with_name("relu.snn.onnx").exists()


def test_non_convertible_model_names_the_node(tmp_path):
    text = """g (float[N,2,4,4] x) => (float[N,2,4,4] y)
        <float theta = {1.0}, float levels = {4.0}, float lo = {0.0}, float hi = {1.0}, float half = {0.5}, float[2,2,1,1] w = {1.0, 0.5, -0.5, 1.0}> {
        s = Div (x, theta)
        c = Clip (s, lo, hi)
        m = Mul (c, levels)
        a = Add (m, half)
        f = Floor (a)
        d = Div (f, levels)
        q = Mul (d, theta)
        sig = Sigmoid (q)
        conv = Conv (sig, w)
        s2 = Div (conv, theta)
        c2 = Clip (s2, lo, hi)
        m2 = Mul (c2, levels)
        a2 = Add (m2, half)
        f2 = Floor (a2)
        d2 = Div (f2, levels)
        y = Mul (d2, theta)
    }"""
    proto = graphs.model(text)
    for i, node in enumerate(proto.graph.node):
        node.name = f"n{i}_{node.op_type}"
    path = tmp_path / "sig.onnx"
    onnx.save(proto, path)
    assert_user_error(snncc("compile", path, "--T", 4), "sig.onnx", "n7_Sigmoid", "(Sigmoid)")
    inspected = snncc("inspect", path)
    assert inspected.returncode == 0 and "not convertible" in inspected.stdout and "n7_Sigmoid" in inspected.stdout


def test_prepare_cpu_writes_a_model_with_the_same_outputs(qcfs_file, tmp_path):
    from snncc.session import make_session, native_library_path

    if native_library_path() is None:
        pytest.skip("native library not built")
    snn_path = tmp_path / "vgg.snn.onnx"
    assert snncc("compile", qcfs_file, "--T", 4, "-o", snn_path).returncode == 0
    result = snncc("prepare-cpu", snn_path)
    assert result.returncode == 0, result.stderr
    blocked, layers = map(int, re.search(r"(\d+) of (\d+) neuron layers in NCHWc", result.stdout).groups())
    assert 0 < blocked <= layers
    prepared = onnx.load(tmp_path / "vgg.snn.cpu.onnx")
    x = nets.sample_inputs(8).numpy()
    cpu = ["CPUExecutionProvider"]
    np.testing.assert_array_equal(make_session(prepared, native=True, providers=cpu).run(None, {"input": x})[0],
                                  make_session(onnx.load(snn_path), native=True, providers=cpu).run(None, {"input": x})[0])
    assert_user_error(snncc("prepare-cpu", snn_path), "already exists", "--force")
    assert_user_error(snncc("prepare-cpu", qcfs_file, "-o", tmp_path / "ann.cpu.onnx"), "no snn neuron ops")
    cpu_path = tmp_path / "vgg.snn.cpu.onnx"
    assert_user_error(snncc("prepare-cpu", cpu_path, "-o", tmp_path / "again.onnx"), "vgg.snn.cpu.onnx", "already prepared")
    inspected = snncc("inspect", cpu_path)
    assert inspected.returncode == 0, inspected.stderr
    assert "prepared for ONNX Runtime's CPU provider (snncc prepare-cpu)" in inspected.stdout
    assert f"{layers} neuron layers, {blocked} of them in NCHWc" in inspected.stdout
    # Spike statistics read neuron outputs as NCHW spike trains or counts: not what a prepared model holds.
    np.save(tmp_path / "x.npy", x)
    assert_user_error(snncc("eval", cpu_path, "--data", tmp_path / "x.npy"), "vgg.snn.cpu.onnx", "snncc prepare-cpu",
                      "compiled model")
