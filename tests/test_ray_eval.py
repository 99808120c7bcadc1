"""`snncc eval --ray` on a real Ray cluster (tests/ray_cluster.py: head 127.0.0.2 + worker node
127.0.0.3, or a private local instance): the JSON report equals the in-process one byte for byte, a
worker node killed mid-run loses and doubles no rows, a cluster that cannot finish is one error line
and no report file, and without --ray Ray is never imported.

Each test runs the CLI in its own process (one Ray driver per process, as users run it) with a time
limit; the data are Fashion-MNIST (test split cut by SNNCC_MAX_SAMPLES; 20480 rows of the train split
for the fault test, on a small random-weight QCFS network so that it takes seconds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from snncc.compiler import CompileOptions, compile_model
from tests.random_cnn import Act, Block, NetSpec, build
from tests.ray_cluster import HEAD_IP, LoopbackCluster, free_port

REPO = Path(__file__).resolve().parent.parent
ANN = REPO / "models" / "fmnist_qcfs_vgg_t4.onnx"
LIMIT = 600  # seconds for any one CLI run
FAULT_ROWS = 20480


def snncc(*args, env: dict | None = None, timeout: float = LIMIT) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    environment.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "snncc", *map(str, args)], env=environment, capture_output=True,
                          text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def bundled_snn(tmp_path_factory) -> Path:
    """The bundled Fashion-MNIST QCFS VGG compiled at T = T̃ = 4 (lossless: no calibration)."""
    path = tmp_path_factory.mktemp("ray") / "vgg.snn.onnx"
    onnx.save(compile_model(onnx.load(ANN), CompileOptions(steps=4)).model, path)
    return path


@pytest.fixture(scope="module")
def cluster():
    with LoopbackCluster(head_cpus=1, worker_cpus=1) as running:
        yield running


def test_eval_on_a_two_node_cluster_equals_in_process(bundled_snn, cluster, tmp_path):
    common = [bundled_snn, "--ann", ANN, "--data", "fashion-mnist:test", "--batch-size", 50]
    env = {"SNNCC_MAX_SAMPLES": "700", **cluster.client_env}  # 4 ANN + 4 SNN shards, the last ones short
    ok(snncc("eval", *common, "--json", tmp_path / "here.json", env=env))
    ray_run = ok(snncc("eval", *common, "--json", tmp_path / "ray.json", "--ray", cluster.address,
                       "--ray-actors", 2, env=env))
    assert (tmp_path / "ray.json").read_text() == (tmp_path / "here.json").read_text()
    report = json.loads((tmp_path / "ray.json").read_text())
    assert report["samples"] == 700 and report["agreement"]["argmax"] > 0.99
    assert "SNN and ANN on 700 inputs (Ray): batch 28 of 28 (100%)" in ray_run.stderr


def test_eval_on_a_private_local_instance_equals_in_process(bundled_snn, tmp_path):
    common = [bundled_snn, "--data", "fashion-mnist:test", "--batch-size", 40]
    env = {"SNNCC_MAX_SAMPLES": "300"}
    here = ok(snncc("eval", *common, "--json", tmp_path / "here.json", env=env))
    there = ok(snncc("eval", *common, "--json", tmp_path / "ray.json", "--ray", "--ray-actors", 2, env=env))
    assert (tmp_path / "ray.json").read_text() == (tmp_path / "here.json").read_text()
    assert here.stdout.replace(str(tmp_path / "here.json"), "") == there.stdout.replace(str(tmp_path / "ray.json"), "")


@pytest.fixture(scope="module")
def small_snn(tmp_path_factory) -> tuple[Path, Path]:
    """(ANN, SNN at T = T̃ = 4) of a small random-weight QCFS CNN on 28x28 inputs: 20k rows in seconds."""
    spec = NetSpec(in_channels=1, size=28, classes=10, head="gap", seed=3, blocks=(
        Block("conv", channels=4, stride=2, act=Act("qcfs", levels=4)),
        Block("conv", channels=8, stride=2, act=Act("qcfs", levels=4))))
    folder = tmp_path_factory.mktemp("small")
    ann = build(spec)
    onnx.save(ann, folder / "small.onnx")
    onnx.save(compile_model(ann, CompileOptions(steps=4)).model, folder / "small.snn.onnx")
    return folder / "small.onnx", folder / "small.snn.onnx"


def test_killing_the_worker_node_mid_run_loses_and_doubles_no_rows(small_snn, tmp_path):
    ann, snn = small_snn
    common = [snn, "--ann", ann, "--data", "fashion-mnist:train", "--batch-size", 64]
    env = {"SNNCC_MAX_SAMPLES": str(FAULT_ROWS)}
    ok(snncc("eval", *common, "--json", tmp_path / "here.json", env=env))
    with LoopbackCluster(head_cpus=2, worker_cpus=1) as cluster:  # room on the head for a restarted actor
        environment = {**os.environ, "PYTHONPATH": str(REPO), **env, **cluster.client_env}
        command = [sys.executable, "-m", "snncc", "eval", *map(str, common), "--json", str(tmp_path / "ray.json"),
                   "--ray", cluster.address, "--ray-actors", "2"]
        with subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as run:
            progress = _first_progress_line(run)
            raylet = cluster.worker_raylet_pid()
            actors_there = [pid for pid, cmd in cluster.pids().items() if "EvalActor" in cmd and _parent(pid) == raylet]
            cluster.kill_worker_raylet()
            assert run.poll() is None, "the run ended before the worker node was killed"
            stdout, stderr = run.communicate(timeout=LIMIT)
        assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert actors_there, "no actor ran on the worker node: killing it tested nothing"
    assert "(100%)" not in progress
    assert (tmp_path / "ray.json").read_text() == (tmp_path / "here.json").read_text()
    assert json.loads((tmp_path / "ray.json").read_text())["samples"] == FAULT_ROWS


def test_a_cluster_that_dies_mid_run_is_one_error_line_and_no_report(bundled_snn, tmp_path):
    """The bundled VGG over 20480 rows: a minute of work, so that the cluster dies long before the end
    however idle the machine (the small network's run can finish before its processes are killed)."""
    with LoopbackCluster(head_cpus=1, worker_cpus=1) as cluster:
        environment = {**os.environ, "PYTHONPATH": str(REPO), "SNNCC_MAX_SAMPLES": str(FAULT_ROWS), **cluster.client_env}
        command = [sys.executable, "-m", "snncc", "eval", str(bundled_snn), "--data", "fashion-mnist:train",
                   "--batch-size", "64", "--json", str(tmp_path / "r.json"), "--ray", cluster.address]
        with subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as run:
            _first_progress_line(run)
            for pid, cmd in cluster.pids().items():  # the head (GCS) and both nodes' raylets
                if "/gcs/gcs_server " in cmd or "/raylet/raylet " in cmd:
                    os.kill(pid, signal.SIGKILL)
            _, stderr = run.communicate(timeout=LIMIT)
    assert run.returncode == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("snncc: error: ") and "Ray cluster" in last and "Traceback" not in stderr, stderr[-3000:]
    assert not (tmp_path / "r.json").exists()


def _first_progress_line(run: subprocess.Popen) -> str:
    """Wait (bounded) for the run's first progress line on stderr, after the actors started working."""
    deadline = time.monotonic() + LIMIT
    for line in run.stderr:
        if "(Ray): batch" in line:
            return line
        assert time.monotonic() < deadline, "no progress line in time"
    raise AssertionError(f"the run ended without progress: exit {run.wait()}")


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_an_unreachable_cluster_is_one_error_line_and_no_report(bundled_snn, tmp_path):
    address = f"{HEAD_IP}:{free_port()}"
    result = snncc("eval", bundled_snn, "--data", "fashion-mnist:test", "--json", tmp_path / "r.json",
                   "--ray", address, env={"SNNCC_MAX_SAMPLES": "50"}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"snncc: error: cannot reach the Ray cluster at {address}: "
                                                  "Connection refused"]
    assert not (tmp_path / "r.json").exists()


# Without Ray installed (import blocked the way Python does for a missing module) and without --ray.
RUN_CLI = """
import sys
{block}
from snncc.cli import main
try:
    main(sys.argv[1:])
finally:
    print("ray imported" if "ray" in sys.modules else "ray not imported", file=sys.stderr)
"""


def _cli_without(args: list, block_ray: bool) -> subprocess.CompletedProcess:
    code = RUN_CLI.format(block="sys.modules['ray'] = None" if block_ray else "")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "SNNCC_MAX_SAMPLES": "20"}, timeout=LIMIT)


def test_ray_flag_without_ray_installed_is_one_error_line(bundled_snn):
    result = _cli_without(["eval", bundled_snn, "--data", "fashion-mnist:test", "--ray"], block_ray=True)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "snncc: error: --ray needs Ray, which is not installed here: " \
                                            "pip install 'snncc[ray]'"


def test_without_ray_flag_nothing_imports_ray(bundled_snn, tmp_path):
    evaluated = _cli_without(["eval", bundled_snn, "--ann", ANN, "--data", "fashion-mnist:test"], block_ray=False)
    compiled = _cli_without(["compile", ANN, "--T", 2, "--calib", "fashion-mnist:train", "-o", tmp_path / "m.onnx"],
                            block_ray=False)
    for result in (evaluated, compiled):
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == "ray not imported"


def test_ray_options_without_ray_are_one_error_line(bundled_snn):
    result = _cli_without(["eval", bundled_snn, "--data", "fashion-mnist:test", "--ray-actors", 2], block_ray=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "snncc: error: --ray-actors needs --ray"
    assert result.stderr.strip().splitlines()[-1] == "ray not imported"


def write_parquet_shards(x, y, folder: Path, files: int = 1, tensor_type: bool = True) -> Path:
    """x, y as Parquet (column x, column label; row groups of 50 rows) in `files` files of `folder`:
    x as Arrow's fixed_shape_tensor, or (tensor_type False) as fixed-size lists with the shape in the
    schema metadata (snncc.shape); returns the file, or the folder when files > 1."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if tensor_type:
        column = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(x).copy())
        metadata = {}
    else:
        column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), int(np.prod(x.shape[1:])))
        metadata = {"snncc.shape": json.dumps(list(x.shape[1:]))}
    table = pa.table({"x": column, "label": y}).replace_schema_metadata(metadata)
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(x), files + 1).astype(int)
    for index, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        pq.write_table(table.slice(start, stop - start), folder / f"part-{index}.parquet", row_group_size=50)
    return folder if files > 1 else folder / "part-0.parquet"


def test_row_sources_read_the_rows_load_spec_gives(tmp_path, monkeypatch):
    """What actors read shard by shard equals the in-process data, row for row and bit for bit
    (Parquet and .npy shards: ranges across row groups and files)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from snncc.data import load_spec, open_rows

    monkeypatch.setenv("SNNCC_MAX_SAMPLES", "130")
    x, y = load_spec("fashion-mnist:test")
    np.save(tmp_path / "x.npy", x.astype(np.float64) * 3)  # cast to float32 on reading, as load_spec does
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    (tmp_path / "npy").mkdir()
    for index, (start, stop) in enumerate(((0, 60), (60, 61), (61, 130))):
        np.save(tmp_path / "npy" / f"{index}.npy", x[start:stop])
    lists = pa.table({"x": pa.array(list(x.reshape(len(x), -1).astype(np.float64)))})  # list<double>, no labels
    pq.write_table(lists.replace_schema_metadata({"snncc.shape": "[1, 28, 28]"}), tmp_path / "lists.parquet",
                   row_group_size=40)
    specs = {"fashion-mnist:test": y, str(tmp_path / "x.npy"): None, str(tmp_path / "xy.npz"): y,
             str(write_parquet_shards(x, y, tmp_path / "one")): y,
             str(write_parquet_shards(x, y, tmp_path / "three", files=3, tensor_type=False)): y,
             str(tmp_path / "lists.parquet"): None, str(tmp_path / "npy"): None}
    for spec, expected_labels in specs.items():
        expected, labels = load_spec(spec)
        if spec != str(tmp_path / "x.npy"):
            assert np.array_equal(expected, x), spec
        source, source_labels = open_rows(spec)
        assert source.rows == len(expected) == 130
        for start, stop in ((0, 64), (64, 128), (128, 130), (5, 5), (45, 95), (59, 62)):
            got = source.read(start, stop)
            assert got.dtype == np.float32 and np.array_equal(got, expected[start:stop]), (spec, start)
        assert np.array_equal(source[np.array([3, 77, 129])], expected[[3, 77, 129]])
        for found in (labels, source_labels):
            assert (found is None) == (expected_labels is None), spec
            assert found is None or (found.dtype == np.int64 and np.array_equal(found, expected_labels)), spec
    with pytest.raises(IndexError):
        source.read(120, 131)


def test_parquet_data_gives_the_report_of_the_same_rows_from_npz(bundled_snn, tmp_path):
    """A Parquet file in-process and a folder of Parquet files on a private Ray instance give, byte for
    byte, the report of the same Fashion-MNIST rows from a .npz file (but for the data's name)."""
    import numpy as np

    from snncc.data import load

    x, y = (array[:300] for array in load("fashion-mnist", "test"))
    np.savez(tmp_path / "rows.npz", x=x, y=y)
    runs = {"rows.npz": [], str(write_parquet_shards(x, y, tmp_path / "file").relative_to(tmp_path)): [],
            str(write_parquet_shards(x, y, tmp_path / "folder", files=2, tensor_type=False).relative_to(tmp_path)):
                ["--ray", "--ray-actors", 2]}
    reports = {}
    for data, flags in runs.items():
        ok(snncc("eval", bundled_snn, "--data", tmp_path / data, "--batch-size", 40, "--json", tmp_path / "r.json",
                 "--force", *flags))
        reports[data] = (tmp_path / "r.json").read_text().replace(str(tmp_path / data), "DATA")
    assert reports["file/part-0.parquet"] == reports["rows.npz"] == reports["folder"]
    assert json.loads(reports["rows.npz"])["samples"] == 300


@pytest.mark.parametrize("fault", ["no column x", "a row of another length"])
def test_malformed_parquet_is_one_error_line(bundled_snn, tmp_path, fault):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [np.full(784, 0.5, np.float32)] * 20
    if fault == "a row of another length":
        rows[13] = rows[13][:700]
        expected = ": row 13 of column 'x' holds 700 values, expected 784 (shape [1, 28, 28])"
        table = pa.table({"x": pa.array(rows)}).replace_schema_metadata({"snncc.shape": "[1, 28, 28]"})
    else:
        expected = " has no column 'x' (found: pixels, label)"
        table = pa.table({"pixels": pa.array(rows), "label": np.zeros(20, np.int64)})
    pq.write_table(table, tmp_path / "bad.parquet")
    result = snncc("eval", bundled_snn, "--data", tmp_path / "bad.parquet", "--json", tmp_path / "r.json")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"snncc: error: data file {tmp_path / 'bad.parquet'}{expected}"]
    assert not (tmp_path / "r.json").exists()
