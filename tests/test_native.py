"""The native `snn` op library (runtime/) against the model-local functions and docs/ops.md.

Each test runs one `snn.ParallelSpike` node twice, with and without the native library (the model's
own function is the reference), and checks the documented invariants: spike trains are 0 or
theta_post and sorted in time; native and function agree except where the firing condition lies
within float rounding of equality; the dense, binary and closed algorithms agree likewise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest

from snncc.ops import DOMAIN, TARGET_OPSET, function_library
from snncc.native_library import cpu_variant, has_cuda_kernels
from snncc.session import make_session, native_library_path, runtime_description

if native_library_path() is None:
    pytest.skip("native library not built (run `make native`) or SNNCC_NATIVE=0", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
STEPS = [1, 2, 3, 4, 7, 8, 16, 32, 64, 128]
ALGORITHMS = ["binary", "dense", "closed"]
# Rounding disagreements allowed per neuron (docs/ops.md, "Rounding").
MAX_DISAGREEMENT_RATE = 1e-4

_ONNX_TYPE = {
    np.float32: onnx.TensorProto.FLOAT,
    np.float64: onnx.TensorProto.DOUBLE,
    np.float16: onnx.TensorProto.FLOAT16,
}


def spike_model(
    steps: int, x_shape: tuple[int, ...], params: dict[str, np.ndarray], dtype=np.float32, *,
    constant_input: bool = False,
) -> onnx.ModelProto:
    """One ParallelSpike node; X is a graph input, the parameters are initializers. With
    constant_input, X is one step [B, ...] of a current constant over the steps, Y [T*B, ...]."""
    elem = _ONNX_TYPE[dtype]
    attributes = {"constant_input": 1} if constant_input else {}
    node = oh.make_node("ParallelSpike", ["X", "theta_pre", "theta_post", "psi"], ["Y"], domain=DOMAIN, T=steps,
                        **attributes)
    y_shape = [x_shape[0] * steps, *x_shape[1:]] if constant_input else list(x_shape)
    graph = oh.make_graph(
        [node],
        "parallel_spike",
        [oh.make_tensor_value_info("X", elem, list(x_shape))],
        [oh.make_tensor_value_info("Y", elem, y_shape)],
        initializer=[onh.from_array(np.asarray(v, dtype), k) for k, v in params.items()],
    )
    opsets = [oh.make_opsetid("", TARGET_OPSET), oh.make_opsetid(DOMAIN, 1)]
    return oh.make_model(graph, opset_imports=opsets, functions=function_library())


def run(model: onnx.ModelProto, x: np.ndarray, *, native: bool, algorithm: str = "binary", threads: int = 2,
        providers: list[str] | None = None) -> np.ndarray:
    """Y of the model; the kernel reads SNNCC_NEURON_ALGO when the session creates it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SNNCC_NEURON_ALGO", algorithm)
        session = make_session(model, native=native, threads=threads, providers=providers or ["CPUExecutionProvider"])
    return session.run(None, {"X": x})[0]


def random_params(rng: np.random.Generator, param_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {
        "theta_pre": rng.uniform(0.2, 2.0, param_shape).astype(np.float32),
        "theta_post": rng.uniform(0.1, 3.0, param_shape).astype(np.float32),
        "psi": rng.uniform(-0.3, 0.3, param_shape).astype(np.float32),
    }


def spike_counts(y: np.ndarray, steps: int, theta_post: np.ndarray | None = None) -> np.ndarray:
    """Spikes per neuron, after checking that every train is sorted in time and its spikes carry
    one value: theta_post (broadcast against one step) when given."""
    trains = y.reshape(steps, -1).astype(np.float64)
    fired = trains != 0
    assert not np.isnan(trains).any()
    assert (fired[1:] >= fired[:-1]).all(), "a train is not sorted (a spike followed by silence)"
    if theta_post is None:
        values = np.where(fired, trains, np.nan)
        spread = np.nanmax(values, axis=0, initial=-np.inf) - np.nanmin(values, axis=0, initial=np.inf)
        assert (spread[fired.any(axis=0)] == 0).all(), "spikes of one neuron carry different values"
    else:
        step_shape = (y.shape[0] // steps,) + y.shape[1:]
        spike = np.broadcast_to(np.asarray(theta_post, y.dtype), step_shape).reshape(-1).astype(np.float64)
        assert (trains[fired] == np.broadcast_to(spike, trains.shape)[fired]).all(), "a spike is not theta_post"
    return fired.sum(axis=0)


def near_boundary(x: np.ndarray, params: dict[str, np.ndarray], steps: int, eps: float) -> np.ndarray:
    """Neurons whose level (T*(m+psi) + theta/2)/theta lies within rounding of an integer: closer
    than a bound on the error of computing it with unit roundoff eps (sequential sum of T terms)."""
    by_step = x.astype(np.float64).reshape((steps, x.shape[0] // steps) + x.shape[1:])
    mean, mean_abs = by_step.mean(axis=0), np.abs(by_step).mean(axis=0)
    theta = params["theta_pre"].astype(np.float64)  # broadcasts against one step, as in the op
    psi = params["psi"].astype(np.float64)
    level = (steps * (mean + psi) + theta / 2) / theta
    bound = 4 * eps * (steps * (steps + 1) * mean_abs + steps * np.abs(psi) + theta) / theta
    with np.errstate(invalid="ignore"):
        return (np.abs(level - np.round(level)) <= bound).ravel()


def assert_rounding_only(actual: np.ndarray, expected: np.ndarray, x: np.ndarray, params: dict[str, np.ndarray],
                         steps: int, *, eps: float = float(np.finfo(np.float32).eps)) -> int:
    """Equal trains except rare neurons near a rounding boundary; returns how many differ."""
    theta_post = params["theta_post"]
    differ = spike_counts(actual, steps, theta_post) != spike_counts(expected, steps, theta_post)
    boundary = near_boundary(x, params, steps, eps)
    assert not (differ & ~boundary).any(), f"{int((differ & ~boundary).sum())} neurons differ away from a boundary"
    assert differ.sum() <= MAX_DISAGREEMENT_RATE * differ.size, f"{int(differ.sum())} of {differ.size} differ"
    same = ~np.broadcast_to(differ, (steps, differ.size)).reshape(actual.shape)
    np.testing.assert_array_equal(actual[same], expected[same])
    return int(differ.sum())


def random_case(steps: int, per_channel: bool, rank: int, seed: int) -> tuple[onnx.ModelProto, np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    # Rank 4: an odd number of neurons per step, so that rows start at every alignment.
    batch, channels = 3, 13
    x_shape = (steps * batch, channels, 41, 37) if rank == 4 else (steps * batch * 512, channels)
    param_shape = ((channels,) + (1,) * (rank - 2)) if per_channel else (1,)
    params = random_params(rng, param_shape)
    # Per-neuron mean around the thresholds, plus per-step noise: every spike count occurs.
    step_shape = (batch * (512 if rank == 2 else 1), channels) + x_shape[2:]
    center = rng.uniform(-0.5, 2.5, step_shape)
    x = (center + rng.normal(0.0, 0.7, (steps,) + step_shape)).reshape(x_shape).astype(np.float32)
    return spike_model(steps, x_shape, params), x, params


@pytest.mark.parametrize("rank", [4, 2])
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
@pytest.mark.parametrize("steps", STEPS)
def test_native_matches_function(steps, per_channel, rank):
    model, x, params = random_case(steps, per_channel, rank, seed=steps * 10 + per_channel + rank)
    reference = run(model, x, native=False)
    native = run(model, x, native=True)
    differ = assert_rounding_only(native, reference, x, params, steps)
    print(f"T={steps} per_channel={per_channel} rank={rank}: {differ} rounding disagreements")


@pytest.mark.parametrize("steps", STEPS)
def test_algorithms_agree(steps):
    model, x, params = random_case(steps, per_channel=True, rank=4, seed=1000 + steps)
    results = {algorithm: run(model, x, native=True, algorithm=algorithm) for algorithm in ALGORITHMS}
    # Dense and binary evaluate one predicate, monotone under rounding: bit-identical.
    np.testing.assert_array_equal(results["dense"], results["binary"])
    # The closed form repeats the function's float operations on the same mean.
    np.testing.assert_array_equal(results["closed"], run(model, x, native=False))
    assert_rounding_only(results["closed"], results["binary"], x, params, steps)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_large_layer_matches_function(algorithm):
    """Enough neurons for work items of several chunks (pipelined) and streamed output rows."""
    steps, channels = 8, 7
    rng = np.random.default_rng(11)
    params = random_params(rng, (channels, 1))
    x = rng.uniform(-0.5, 2.5, (steps * 13, channels, 7919)).astype(np.float32)  # 720,629 neurons a step
    model = spike_model(steps, x.shape, params)
    assert_rounding_only(run(model, x, native=True, algorithm=algorithm), run(model, x, native=False), x, params, steps)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_thread_count_does_not_change_result(algorithm):
    model, x, _ = random_case(8, per_channel=True, rank=4, seed=7)
    one = run(model, x, native=True, algorithm=algorithm, threads=1)
    np.testing.assert_array_equal(one, run(model, x, native=True, algorithm=algorithm, threads=2))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16, 32, 64, 128])
def test_currents_exactly_on_thresholds(steps, algorithm):
    """Dyadic currents whose level is an exact integer: no rounding anywhere, exact counts."""
    channels = 3
    params = {
        "theta_pre": np.array([0.5, 1.0, 2.0], np.float32).reshape(channels, 1),
        "theta_post": np.array([0.5, 1.0, 2.0], np.float32).reshape(channels, 1),
        "psi": np.array([0.0, 0.25, -0.125], np.float32).reshape(channels, 1),
    }
    k = np.arange(-1, steps + 2, dtype=np.float64)  # expected count clip(k, 0, T)
    theta = params["theta_pre"].astype(np.float64)
    psi = params["psi"].astype(np.float64)
    mean = (k * theta - theta / 2) / steps - psi  # level = k exactly, representable for T = 2^n
    x = np.broadcast_to(mean, (steps, channels, k.size)).astype(np.float32)
    model = spike_model(steps, x.shape, params)
    expected = np.broadcast_to(np.clip(k, 0, steps), (channels, k.size)).ravel()
    y = run(model, x, native=True, algorithm=algorithm)
    np.testing.assert_array_equal(spike_counts(y, steps, params["theta_post"]), expected)
    np.testing.assert_array_equal(spike_counts(run(model, x, native=False), steps, params["theta_post"]), expected)


@pytest.mark.parametrize("steps", [3, 7])
def test_non_dyadic_thresholds_within_one_spike(steps):
    """Levels that are integers in exact arithmetic but not in float: off by at most one spike."""
    theta = np.float32(0.3)
    params = {"theta_pre": np.array([theta]), "theta_post": np.array([theta]), "psi": np.array([np.float32(0.1)])}
    k = np.arange(0, steps + 1, dtype=np.float64)
    mean = (k * 0.3 - 0.15) / steps - 0.1
    x = np.broadcast_to(mean, (steps, 1, k.size)).astype(np.float32)
    model = spike_model(steps, x.shape, params)
    for algorithm in ALGORITHMS:
        counts = spike_counts(run(model, x, native=True, algorithm=algorithm), steps)
        assert (np.abs(counts - k) <= 1).all()


def test_negative_and_large_currents():
    steps = 8
    params = {"theta_pre": np.array([1.0]), "theta_post": np.array([2.0]), "psi": np.array([0.0])}
    values = np.array([-1e30, -5.0, -1e-3, 0.0, 1e-3, 1e6, 1e30, 3e38], np.float32)
    x = np.broadcast_to(values, (steps, 1, values.size)).astype(np.float32)
    model = spike_model(steps, x.shape, params)
    expected = np.array([0, 0, 0, 0, 0, steps, steps, steps])  # 8 * 3e38 sums to +inf
    for algorithm in ALGORITHMS:
        y = run(model, x, native=True, algorithm=algorithm)
        np.testing.assert_array_equal(spike_counts(y, steps, params["theta_post"]), expected)
    np.testing.assert_array_equal(spike_counts(run(model, x, native=False), steps, params["theta_post"]), expected)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_non_finite_currents(algorithm):
    """docs/ops.md: NaN -> silent, +inf -> every step fires, -inf -> silent, inf - inf -> NaN."""
    steps = 4
    params = {"theta_pre": np.array([1.0]), "theta_post": np.array([1.5]), "psi": np.array([0.0])}
    nan, inf = np.float32(np.nan), np.float32(np.inf)
    columns = [
        ([nan, 0, 0, 0], 0),
        ([5, 5, nan, 5], 0),
        ([inf] * 4, steps),
        ([inf, 0, 0, 0], steps),
        ([-inf] * 4, 0),
        ([inf, -inf, 0, 0], 0),
        ([3e38] * 4, steps),
        ([-3e38] * 4, 0),
    ]
    x = np.array([c for c, _ in columns], np.float32).T.reshape(steps, 1, len(columns))
    model = spike_model(steps, x.shape, params)
    expected = [count for _, count in columns]
    y = run(model, x, native=True, algorithm=algorithm)
    np.testing.assert_array_equal(spike_counts(y, steps, params["theta_post"]), expected)
    np.testing.assert_array_equal(spike_counts(run(model, x, native=False), steps, params["theta_post"]), expected)


def test_float16_computes_in_float32():
    """Float16 I/O with float32 math: equals the float32 kernel on the widened values."""
    steps = 16
    model32, x, params = random_case(steps, per_channel=True, rank=4, seed=5)
    params16 = {k: v.astype(np.float16) for k, v in params.items()}
    x16 = x.astype(np.float16)
    model16 = spike_model(steps, x.shape, params16, dtype=np.float16)
    model_widened = spike_model(steps, x.shape, {k: v.astype(np.float32) for k, v in params16.items()})
    y16 = run(model16, x16, native=True)
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(y16.astype(np.float32), run(model_widened, x16.astype(np.float32), native=True))


def test_float64_matches_function():
    steps = 16
    _, x, params = random_case(steps, per_channel=True, rank=4, seed=6)
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    model = spike_model(steps, x.shape, params64, dtype=np.float64)
    x64 = x.astype(np.float64)
    native = run(model, x64, native=True)
    assert native.dtype == np.float64
    reference = run(model, x64, native=False)
    assert_rounding_only(native, reference, x64, params64, steps, eps=float(np.finfo(np.float64).eps))


def test_model_runs_without_library(monkeypatch):
    model, x, _ = random_case(4, per_channel=True, rank=4, seed=8)
    monkeypatch.setenv("SNNCC_NATIVE", "0")
    assert native_library_path() is None
    np.testing.assert_array_equal(make_session(model).run(None, {"X": x})[0], run(model, x, native=False))


@pytest.mark.parametrize("declared", [None, ["rows", 13], [None, 13]], ids=["no_shape", "symbolic", "unknown_dim"])
def test_partially_known_shapes(declared):
    """Whatever X's declared shape, the output's inferred shape lets a following op run."""
    model, x, _ = random_case(2, per_channel=True, rank=2, seed=10)
    graph = model.graph
    graph.input[0].CopyFrom(oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT, declared))
    graph.node.append(oh.make_node("Reshape", ["Y", "flat"], ["Z"]))
    graph.initializer.append(onh.from_array(np.array([-1], np.int64), "flat"))
    graph.output[0].CopyFrom(oh.make_tensor_value_info("Z", onnx.TensorProto.FLOAT, None))
    np.testing.assert_array_equal(run(model, x, native=True), run(model, x, native=False))


def test_unknown_algorithm_is_rejected():
    model, _, _ = random_case(2, per_channel=False, rank=2, seed=9)
    with pytest.raises(Exception, match="SNNCC_NEURON_ALGO"):
        run(model, np.zeros((2, 16), np.float32), native=True, algorithm="fastest")


def test_invalid_shapes_are_rejected():
    params = {"theta_pre": np.ones(3), "theta_post": np.ones(3), "psi": np.zeros(3)}
    model = spike_model(4, (6, 3), params)  # 6 rows are not a multiple of T = 4
    with pytest.raises(Exception, match="multiple of T"):
        run(model, np.zeros((6, 3), np.float32), native=True)
    model = spike_model(4, (8, 5), params)  # 3 parameters for 5 channels
    with pytest.raises(Exception, match="expected 1 or X.shape"):
        run(model, np.zeros((8, 5), np.float32), native=True)


def constant_case(steps: int, per_channel: bool, seed: int):
    """random_case's parameters and one step of its currents, as a constant-input model, and the
    same currents tiled over the T steps (the time-expanded input it stands for)."""
    _, x, params = random_case(steps, per_channel, rank=4, seed=seed)
    one_step = np.ascontiguousarray(x[: x.shape[0] // steps])
    model = spike_model(steps, one_step.shape, params, constant_input=True)
    return model, one_step, np.tile(one_step, (steps, 1, 1, 1)), params


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
@pytest.mark.parametrize("steps", STEPS)
def test_constant_input_matches_function(steps, per_channel):
    """constant_input = 1: X is the mean current itself; Y has T times X's rows."""
    model, x, tiled, params = constant_case(steps, per_channel, seed=300 + steps)
    native = run(model, x, native=True)
    assert native.shape == tiled.shape
    assert_rounding_only(native, run(model, x, native=False), tiled, params, steps)
    # Against the time-expanded node on T copies: equal except where the mean of the copies
    # rounds away from the current itself across a boundary.
    expanded = spike_model(steps, tiled.shape, params)
    assert_rounding_only(native, run(expanded, tiled, native=True), tiled, params, steps)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_constant_input_algorithms_and_threads(algorithm):
    model, x, tiled, params = constant_case(16, per_channel=True, seed=42)
    one = run(model, x, native=True, algorithm=algorithm, threads=1)
    np.testing.assert_array_equal(one, run(model, x, native=True, algorithm=algorithm, threads=2))
    assert_rounding_only(one, run(model, x, native=True), tiled, params, 16)


def test_constant_input_shape_is_inferred():
    """A numeric or symbolic first dimension declared for X: the native op's shape inference gives
    Y's first dimension as T times X's (a broadcast Add against T*B rows loads), or leaves it
    unknown, and the following ops run on Y's T*B rows."""
    steps = 3
    for declared in ([3, 13, 41, 37], ["batch", 13, 41, 37]):
        model, x, _, _ = constant_case(steps, per_channel=True, seed=1)
        graph = model.graph
        graph.input[0].CopyFrom(oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT, declared))
        # A bias with T*B rows: ORT rejects the Add when loading if Y's inferred rows differ.
        bias = np.arange(steps * x.shape[0], dtype=np.float32).reshape(-1, 1, 1, 1)
        graph.node.append(oh.make_node("Add", ["Y", "bias"], ["shifted"]))
        graph.node.append(oh.make_node("Reshape", ["shifted", "by_step"], ["Z"]))
        graph.initializer.extend([onh.from_array(bias, "bias"),
                                  onh.from_array(np.array([steps, -1], np.int64), "by_step")])
        graph.output[0].CopyFrom(oh.make_tensor_value_info("Z", onnx.TensorProto.FLOAT, None))
        z = run(model, x, native=True)
        assert z.shape == (steps, x.size)
        np.testing.assert_array_equal(z, run(model, x, native=False))


def test_invalid_constant_input_is_rejected():
    params = {"theta_pre": np.ones(3), "theta_post": np.ones(3), "psi": np.zeros(3)}
    model = spike_model(4, (2, 3), params, constant_input=True)
    model.graph.node[0].attribute[-1].i = 2
    with pytest.raises(Exception, match="constant_input must be 0 or 1"):
        run(model, np.zeros((2, 3), np.float32), native=True)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_cuda_sources_compile(tmp_path):
    """The CUDA kernels and the GPU harness that calls them compile and link (one architecture, to be quick)."""
    src = REPO / "runtime" / "src"
    kernels = [src / name for name in ("cuda_kernel.cu", "serial_if_cuda.cu", "cpu_kernel.cc", "serial_if_cpu.cc")]
    subprocess.run(
        ["nvcc", "-std=c++17", "-O2", "--fmad=false", "-Xcompiler", "-ffp-contract=off", "-arch=sm_90", "-I", str(src),
         "-DSNNCC_CPU_VARIANT=baseline",
         str(REPO / "benchmarks" / "gpu" / "harness.cu"), *map(str, kernels), "-o", str(tmp_path / "harness")],
        check=True,
    )


CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_runtime_line_says_whether_the_library_has_cuda_kernels_and_which_cpu_variant_runs(monkeypatch):
    """Checked against the CMake cache of the build that made the library (nvcc found and CUDA on)."""
    library = native_library_path()
    cache = REPO / "runtime" / "build" / "cmake" / "CMakeCache.txt"
    if library != REPO / "runtime" / "build" / "libsnncc_ops.so" or not cache.exists():
        pytest.skip("the library was not built by runtime/build.sh in this checkout")
    entries = dict(line.split("=", 1) for line in cache.read_text().splitlines() if "=" in line and ":" in line)
    compiler = next((v for k, v in entries.items() if k.startswith("CMAKE_CUDA_COMPILER:")), "")
    built = entries.get("SNNCC_WITH_CUDA:BOOL") == "ON" and bool(compiler) and not compiler.endswith("NOTFOUND")
    assert has_cuda_kernels(library) == built
    monkeypatch.setenv("SNNCC_CPU_VARIANT", "baseline")
    assert cpu_variant(library) == "baseline"
    line = runtime_description()
    assert "CPU kernels: baseline (SNNCC_CPU_VARIANT=baseline)" in line
    assert ("CUDA kernels: built" if built else "CUDA kernels: not built") in line


def cuda_ep_runs() -> bool:
    """Whether ONNX Runtime's CUDA provider runs here: onnxruntime-gpu lists it even on a machine
    without a GPU, where a session falls back to the CPU."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    model, _, _ = random_case(1, per_channel=False, rank=2, seed=0)
    session = make_session(model, native=False, providers=CUDA)
    return "CUDAExecutionProvider" in session.get_providers()


needs_cuda_ep = pytest.mark.skipif(not cuda_ep_runs(), reason="no CUDAExecutionProvider that runs here "
                                   "(needs onnxruntime-gpu, pip install 'snncc[gpu]', and an NVIDIA GPU)")


@needs_cuda_ep
@pytest.mark.parametrize("steps", [1, 3, 4, 16, 128])
def test_cuda_float32_equals_cpu(steps):
    model, x, _ = random_case(steps, per_channel=True, rank=4, seed=20 + steps)
    np.testing.assert_array_equal(run(model, x, native=True, providers=CUDA), run(model, x, native=True))


@needs_cuda_ep
@pytest.mark.parametrize("steps", [1, 4, 16])
def test_cuda_constant_input_equals_cpu(steps):
    model, x, _, _ = constant_case(steps, per_channel=True, seed=40 + steps)
    np.testing.assert_array_equal(run(model, x, native=True, providers=CUDA), run(model, x, native=True))


@needs_cuda_ep
def test_cuda_float16_equals_cpu():
    steps = 16
    _, x, params = random_case(steps, per_channel=True, rank=4, seed=30)
    params16 = {k: v.astype(np.float16) for k, v in params.items()}
    model = spike_model(steps, x.shape, params16, dtype=np.float16)
    x16 = x.astype(np.float16)
    np.testing.assert_array_equal(run(model, x16, native=True, providers=CUDA), run(model, x16, native=True))


@needs_cuda_ep
def test_cuda_non_finite():
    steps = 4
    params = {"theta_pre": np.array([1.0]), "theta_post": np.array([1.5]), "psi": np.array([0.0])}
    x = np.array([[np.nan, np.inf, -np.inf, 1.0]] * steps, np.float32).reshape(steps, 1, 4)
    model = spike_model(steps, x.shape, params)
    y = run(model, x, native=True, providers=CUDA)
    np.testing.assert_array_equal(spike_counts(y, steps, params["theta_post"]), [0, steps, 0, 3])
