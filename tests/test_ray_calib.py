"""`snncc compile --calib ... --ray` on a real two-node loopback Ray cluster: the compiled SNN is the
same model, to the byte, as the in-process compile (thresholds, φ, ψ and metadata), with the
recording passes cut into several shards; `--calib-rounds W` on Ray equals its in-process run and
drifts a little from sequential DA-QCFS; without `--ray`, Ray is never imported. Most cases run
with this process as the Ray driver (one set of actors for all), one through the command line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from snncc import ops
from snncc.calibration import statistics
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.pipeline import CalibrationOptions
from snncc.calibration.thresholds import ThresholdMode
from snncc.compiler import CompileOptions, compile_model
from tests.ray_cluster import LoopbackCluster

if importlib.util.find_spec("ray") is None:  # installed with snncc[ray]
    pytest.skip("Ray is not installed", allow_module_level=True)

MODEL = Path(__file__).resolve().parent.parent / "models" / "fmnist_relu_vgg.onnx"
SAMPLES, SHARD = 600, 256  # three shards: 256, 256 and 88 samples (batches of 32), merged on the driver
RUN_SECONDS = 300


@pytest.fixture(scope="module")
def cluster():
    with LoopbackCluster(head_cpus=1, worker_cpus=1) as running:
        yield running


# (mode, threshold, rounds) cases compiled on Ray, all by one driver process with one set of actors
CASES = [("paper", "max", None),  # max thresholds + reference means in one pass
         ("paper", "p99.9", None),  # two histogram rounds + a reference pass
         ("thresholds", "mse", None),  # per-shard quantisation errors
         ("paper", "max", 4)]  # DA-QCFS in rounds of 4 batches
DRIVER = """
import sys
import onnx
from snncc.calibration import statistics
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.pipeline import CalibrationOptions
from snncc.calibration.ray_calibration import ray_executor
from snncc.calibration.thresholds import ThresholdMode
from snncc.compiler import CompileOptions, compile_model
from snncc.data import load
from snncc.ray_runtime import RayOptions
from tests.test_ray_calib import CASES, MODEL, SAMPLES, SHARD

statistics.SHARD_SAMPLES = SHARD
data = CalibrationData(load("fashion-mnist", "train")[0][:SAMPLES], f"fashion-mnist:train[:{SAMPLES}]")
with ray_executor(RayOptions(sys.argv[1], actors=2)) as executor:
    for index, (mode, threshold, rounds) in enumerate(CASES):
        options = CalibrationOptions(ThresholdMode.parse(threshold), mode=mode, rounds=rounds, executor=executor)
        model = compile_model(onnx.load(MODEL), CompileOptions(steps=4, calibration_data=data, calibration=options)).model
        onnx.save(model, f"{sys.argv[2]}/{index}.onnx")
"""


@pytest.fixture(scope="module")
def on_ray(cluster, tmp_path_factory) -> dict[tuple, bytes]:
    """The models of CASES compiled with their calibration passes on the cluster's actors."""
    folder = tmp_path_factory.mktemp("on_ray")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", DRIVER, cluster.address, str(folder)], capture_output=True, text=True,
                          timeout=RUN_SECONDS, cwd=root, env={**os.environ, **cluster.client_env})
    assert done.returncode == 0, done.stderr[-3000:]
    return {case: (folder / f"{index}.onnx").read_bytes() for index, case in enumerate(CASES)}


@pytest.fixture(scope="module")
def data():
    from snncc.data import load

    return CalibrationData(load("fashion-mnist", "train")[0][:SAMPLES], f"fashion-mnist:train[:{SAMPLES}]")


@pytest.fixture
def shards(monkeypatch):
    """Shards are cut on the driver: a smaller size there makes several of few samples."""
    monkeypatch.setattr(statistics, "SHARD_SAMPLES", SHARD)


def _compile(data, mode: str, threshold: str = "max", rounds: int | None = None) -> bytes:
    options = CalibrationOptions(ThresholdMode.parse(threshold), mode=mode, rounds=rounds)
    model = compile_model(onnx.load(MODEL), CompileOptions(steps=4, calibration_data=data, calibration=options)).model
    return model.SerializeToString()


@pytest.mark.parametrize("case", CASES[:3])
def test_calibration_on_ray_is_the_in_process_model_to_the_byte(on_ray, data, shards, case):
    assert len(statistics.shard_bounds(SAMPLES, 32)) == 3
    assert on_ray[case] == _compile(data, *case)


def _neuron_parameters(model: bytes) -> dict[str, np.ndarray]:
    """θ_post and ψ of every neuron, concatenated: what DA-QCFS calibration sets."""
    proto = onnx.load_from_string(model)
    inits = {t.name: onnx.numpy_helper.to_array(t).reshape(-1) for t in proto.graph.initializer}
    neurons = [n for n in proto.graph.node if n.op_type == ops.PARALLEL_SPIKE]
    return {key: np.concatenate([inits[n.input[index]] for n in neurons]) for key, index in (("theta_post", 2), ("psi", 3))}


def test_calib_rounds_on_ray_equal_in_process_and_report_their_drift(on_ray, data, shards):
    rounds = on_ray[CASES[3]]
    assert rounds == _compile(data, *CASES[3])
    exact, approximate = _neuron_parameters(on_ray[CASES[0]]), _neuron_parameters(rounds)
    theta = _neuron_parameters(_compile(data, "thresholds"))["theta_post"]
    phi_exact, phi_rounds = exact["theta_post"] - theta, approximate["theta_post"] - theta
    drift_phi = float(np.linalg.norm(phi_rounds - phi_exact) / np.linalg.norm(phi_exact))
    drift_psi = float(np.linalg.norm(approximate["psi"] - exact["psi"]) / np.linalg.norm(exact["psi"]))
    print(f"\n--calib-rounds 4 vs sequential DA-QCFS ({SAMPLES} samples, {-(-SAMPLES // 32)} batches): "
          f"relative drift of φ {100 * drift_phi:.2f}%, of ψ {100 * drift_psi:.2f}%")
    assert 0 < drift_phi < 0.1 and 0 < drift_psi < 0.1


def test_calib_rounds_of_one_batch_are_the_sequential_algorithm(data):
    """Rounds of W = 1 apply every batch's update before the next batch runs: Algorithm 1 itself."""
    sequential = _neuron_parameters(_compile(data, "paper"))
    single = _neuron_parameters(_compile(data, "paper", rounds=1))
    for key in sequential:
        assert np.allclose(single[key], sequential[key], rtol=1e-6, atol=1e-7)


def snncc(*args, env=None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "snncc", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=RUN_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_compile_command_on_ray_writes_the_in_process_file(cluster, tmp_path):
    args = ["compile", MODEL, "--T", "4", "--calib", "fashion-mnist:train", "--calib-samples", "300", "--calibrate", "paper",
            "--calib-rounds", "2"]
    snncc(*args, "-o", tmp_path / "here.onnx")
    snncc(*args, "-o", tmp_path / "ray.onnx", "--ray", cluster.address, "--ray-actors", "2", env=cluster.client_env)
    written = (tmp_path / "ray.onnx").read_bytes()
    assert written == (tmp_path / "here.onnx").read_bytes()
    metadata = {p.key: p.value for p in onnx.load_from_string(written).metadata_props}
    assert '"rounds": 2' in metadata["snncc.calibration"] and '"samples": 300' in metadata["snncc.calibration"]


@pytest.mark.parametrize("command", [
    ["compile", str(MODEL), "--T", "4", "--calib", "fashion-mnist:train", "--calib-samples", "64", "--calibrate", "paper",
     "-o", "{tmp}/m.onnx"],
    ["sweep", str(MODEL), "--T", "2", "--data", "fashion-mnist:test", "--calib", "fashion-mnist:train",
     "--calib-samples", "64", "--variants", "relu-thr", "--no-plot", "-o", "{tmp}/s"],
])
def test_without_ray_flag_ray_is_never_imported(tmp_path, command):
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    script = ("import sys\nfrom snncc.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as done:\n"
              "    assert not done.code, done.code\nassert 'ray' not in sys.modules, 'ray was imported'\nprint('no ray')")
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=RUN_SECONDS,
                          env={**os.environ, "SNNCC_MAX_SAMPLES": "64"})
    assert done.returncode == 0 and "no ray" in done.stdout, done.stderr[-3000:]
