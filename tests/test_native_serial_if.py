"""The native `snn.SerialIF` kernels (runtime/) against the model-local function and numpy.

The kernels apply the function's float operations in its order ((membrane + x) + psi, compare,
subtract), so their output must equal the function's bit for bit, and equal a float32 numpy
simulation written here, for every input: thresholds hit exactly, huge values, NaN and inf.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from snncc import ops
from snncc.compiler import CompileOptions, compile_model
from snncc.inspection import describe
from snncc.session import make_session, native_library_path, runtime_description
from tests.test_native import CUDA, needs_cuda_ep, random_params, spike_model
from tests.test_native import random_case as spike_case

if native_library_path() is None:
    pytest.skip("native library not built (run `make native`) or SNNCC_NATIVE=0", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
STEPS = [1, 2, 3, 4, 7, 8, 16, 32, 64]


def serial_if_model(steps: int, x_shape: tuple[int, ...], params: dict[str, np.ndarray], dtype=np.float32):
    """One SerialIF node; X is a graph input, the parameters are initializers."""
    model = spike_model(steps, x_shape, params, dtype)
    model.graph.node[0].op_type = ops.SERIAL_IF
    return model


def run(model: onnx.ModelProto, x: np.ndarray, *, native: bool, threads: int = 2,
        providers: list[str] | None = None) -> np.ndarray:
    session = make_session(model, native=native, threads=threads, providers=providers or ["CPUExecutionProvider"])
    return session.run(None, {"X": x})[0]


def if_simulation(x: np.ndarray, params: dict[str, np.ndarray], steps: int) -> np.ndarray:
    """The IF neuron in float32 numpy: membrane from theta_pre/2, (v + x) + psi, fire at
    v >= theta_pre, soft reset. Parameters broadcast against one step, as in the op."""
    theta_pre, theta_post, psi = (params[k].astype(np.float32) for k in ("theta_pre", "theta_post", "psi"))
    currents = x.reshape((steps, x.shape[0] // steps) + x.shape[1:])
    membrane = np.broadcast_to(theta_pre * np.float32(0.5), currents.shape[1:]).astype(np.float32)
    zero = np.float32(0)
    out = np.empty_like(currents)
    with np.errstate(invalid="ignore", over="ignore"):
        for t, current in enumerate(currents):
            driven = (membrane + current) + psi
            fires = driven >= theta_pre
            membrane = driven - np.where(fires, theta_pre, zero)
            out[t] = np.where(fires, theta_post, zero)
    return out.reshape(x.shape)


def assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype == np.float32 and actual.shape == expected.shape
    differ = actual.view(np.uint32) != expected.view(np.uint32)
    assert not differ.any(), f"{int(differ.sum())} of {differ.size} values differ, first at {np.argwhere(differ)[0]}"


def check_all_agree(model: onnx.ModelProto, x: np.ndarray, params: dict[str, np.ndarray], steps: int) -> np.ndarray:
    """Native == function == numpy, bit for bit; returns the output."""
    native = run(model, x, native=True)
    assert_bitwise_equal(native, run(model, x, native=False))
    assert_bitwise_equal(native, if_simulation(x, params, steps))
    return native


def random_case(steps: int, per_channel: bool, rank: int, seed: int):
    """test_native's cases (currents around the thresholds with per-step noise, so the order of
    the currents matters; rows at every alignment) on a SerialIF node."""
    model, x, params = spike_case(steps, per_channel, rank, seed)
    model.graph.node[0].op_type = ops.SERIAL_IF
    return model, x, params


@pytest.mark.parametrize("rank", [4, 2])
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
@pytest.mark.parametrize("steps", STEPS)
def test_native_equals_function_and_numpy(steps, per_channel, rank):
    model, x, params = random_case(steps, per_channel, rank, seed=steps * 10 + per_channel + rank)
    y = check_all_agree(model, x, params, steps)
    fired = y != 0
    assert 0.05 < fired.mean() < 0.95  # the case exercises both outcomes


@pytest.mark.parametrize("steps", [1, 2, 7, 16, 64])
def test_rounding_sensitive_currents(steps):
    """Currents that put the membrane within a few ulps of theta_pre at every step: here the
    decision depends on the order of the additions ((v + x) + psi, not v + (x + psi)), which random
    currents almost never reveal. Step 0 brings v = theta/2 up to theta, later steps bring v = 0
    back up to it, each off by a few ulps of the current."""
    rng = np.random.default_rng(steps)
    channels, per_step = 13, 4 * 997
    params = random_params(rng, (channels, 1))
    theta, psi = params["theta_pre"], params["psi"]
    offsets = rng.integers(-4, 5, (steps, channels, per_step)).astype(np.float32)
    first, later = theta / 2 - psi, theta - psi
    x = later + offsets * np.spacing(np.abs(later))
    x[0] = first + offsets[0] * np.spacing(np.abs(first))
    x = x.astype(np.float32)
    y = check_all_agree(serial_if_model(steps, x.shape, params), x, params, steps)
    assert 0.05 < (y != 0).mean() < 1


def profiled_ops(model: onnx.ModelProto, feeds: dict[str, np.ndarray], native: bool) -> set[str]:
    """The op types of the nodes that one profiled CPU run of `model` executes."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    if native:
        options.register_custom_ops_library(str(native_library_path()))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    profile = Path(session.end_profiling())
    try:
        events = json.loads(profile.read_text())
    finally:
        profile.unlink()
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


def test_native_kernel_runs():
    """With the library, the node runs as one native kernel; without it, as the function's Scan."""
    model, x, _ = random_case(4, per_channel=True, rank=4, seed=1)
    assert profiled_ops(model, {"X": x}, native=True) == {ops.SERIAL_IF}
    assert "Scan" in profiled_ops(model, {"X": x}, native=False)


@pytest.mark.parametrize("steps", [7, 8])
def test_large_layer_uses_every_path(steps):
    """Work items of several chunks, several threads, and output rows large enough to be streamed
    (in whole groups of steps, and with a partial last group)."""
    channels = 7
    rng = np.random.default_rng(11)
    params = random_params(rng, (channels, 1))
    x = rng.uniform(-0.5, 2.5, (steps * 13, channels, 7919)).astype(np.float32)  # 720,629 neurons a step
    check_all_agree(serial_if_model(steps, x.shape, params), x, params, steps)


def test_thread_count_does_not_change_result():
    model, x, _ = random_case(8, per_channel=True, rank=4, seed=7)
    np.testing.assert_array_equal(run(model, x, native=True, threads=1), run(model, x, native=True, threads=2))


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16, 32])
def test_currents_exactly_on_thresholds(steps):
    """Dyadic values: the membrane lands exactly on theta_pre, which fires (>=)."""
    params = {
        "theta_pre": np.array([0.5, 1.0, 2.0], np.float32).reshape(3, 1),
        "theta_post": np.array([0.75, 1.0, 3.0], np.float32).reshape(3, 1),
        "psi": np.array([0.0, 0.25, -0.125], np.float32).reshape(3, 1),
    }
    theta, psi = params["theta_pre"], params["psi"]
    # Column 0: theta/2 - psi at step 0, then theta - psi: the membrane lands on theta_pre at every
    # step (and resets to 0). Column 1: theta/1024 less at step 0: silent there, then it fires at
    # every step, 1/1024 below the threshold before each input. Column 2: theta - psi at step 0,
    # then -psi: fires once, then the membrane stays at theta/2.
    step0 = np.concatenate([theta / 2 - psi, theta / 2 - psi - theta / 1024, theta - psi], axis=1)
    later = np.concatenate([theta - psi, theta - psi, -psi], axis=1)
    x = np.stack([step0] + [later] * (steps - 1)).astype(np.float32)  # [T, 3 channels, 3 columns]
    model = serial_if_model(steps, x.shape, params)
    y = check_all_agree(model, x, params, steps).reshape(steps, 3, 3)
    spike = params["theta_post"][:, 0]
    expected = np.zeros((steps, 3, 3), np.float32)
    expected[:, :, 0] = spike
    expected[1:, :, 1] = spike
    expected[0, :, 2] = spike
    np.testing.assert_array_equal(y, expected)


def test_negative_and_large_currents():
    steps = 8
    params = {"theta_pre": np.array([1.0], np.float32), "theta_post": np.array([2.0], np.float32),
              "psi": np.array([0.0], np.float32)}
    values = np.array([-1e30, -5.0, -1e-3, 0.0, 1e-3, 0.25, 1e6, 1e30, 3e38, -3e38], np.float32)
    x = np.broadcast_to(values, (steps, 1, values.size)).astype(np.float32)
    y = check_all_agree(serial_if_model(steps, x.shape, params), x, params, steps)
    counts = (y != 0).sum(axis=0).ravel()
    # 0.25 a step from 0.5: fires at steps 1, 5 (membrane 1.0 each time); 3e38 overflows to +inf
    # at step 1 and keeps firing; -3e38 goes to -inf and stays silent.
    np.testing.assert_array_equal(counts, [0, 0, 0, 0, 0, 2, steps, steps, steps, 0])


def test_non_finite_values():
    """docs/ops.md: a NaN membrane never fires again; +inf fires at every later step; -inf never
    fires; +inf then -inf gives NaN (silent from then on). Same for NaN or inf in psi."""
    steps = 4
    params = {"theta_pre": np.array([1.0], np.float32), "theta_post": np.array([1.5], np.float32),
              "psi": np.array([0.0], np.float32)}
    nan, inf = np.nan, np.inf
    columns = [  # currents over the 4 steps, expected spikes
        ([nan, 1, 1, 1], [0, 0, 0, 0]),
        ([1, 1, nan, 1], [1, 1, 0, 0]),
        ([inf, 0, 0, 0], [1, 1, 1, 1]),
        ([0, inf, -5, 0], [0, 1, 1, 1]),
        ([-inf, 5, 5, 5], [0, 0, 0, 0]),
        ([inf, -inf, 5, 5], [1, 0, 0, 0]),
        ([3e38, 3e38, -3e38, 0], [1, 1, 1, 1]),  # inf after step 1: -3e38 cannot bring it back
    ]
    x = np.array([c for c, _ in columns], np.float32).T.reshape(steps, 1, len(columns))
    y = check_all_agree(serial_if_model(steps, x.shape, params), x, params, steps)
    np.testing.assert_array_equal((y != 0).reshape(steps, -1), np.array([s for _, s in columns]).T)
    assert not np.isnan(y).any()

    shifted = {**params, "psi": np.array([nan], np.float32)}
    x = np.ones((steps, 1, 3), np.float32)
    y = check_all_agree(serial_if_model(steps, x.shape, shifted), x, shifted, steps)
    np.testing.assert_array_equal(y, 0)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_types_are_rejected_like_the_function(dtype):
    """SerialIF is float32 only: its function's Scan body is typed float, and the library
    registers float32 alone, so other types fail to load with and without the library."""
    params = {k: v.astype(dtype) for k, v in random_params(np.random.default_rng(0), (3,)).items()}
    model = serial_if_model(2, (4, 3), params, dtype=dtype)
    for native in (False, True):
        with pytest.raises(Exception):
            run(model, np.zeros((4, 3), dtype), native=native)


def test_invalid_shapes_are_rejected():
    params = {"theta_pre": np.ones(3, np.float32), "theta_post": np.ones(3, np.float32),
              "psi": np.zeros(3, np.float32)}
    with pytest.raises(Exception, match=r"snn\.SerialIF: .*multiple of T"):
        run(serial_if_model(4, (6, 3), params), np.zeros((6, 3), np.float32), native=True)
    with pytest.raises(Exception, match=r"snn\.SerialIF: theta_pre has 3 elements; expected 1 or X.shape"):
        run(serial_if_model(4, (8, 5), params), np.zeros((8, 5), np.float32), native=True)


@pytest.fixture(scope="module")
def vgg_if_model():
    ann = onnx.load(REPO / "models" / "fmnist_qcfs_vgg_t4.onnx")
    return compile_model(ann, CompileOptions(steps=8, neuron="if")).model


def check_compiled_native_equals_function(model: onnx.ModelProto, op_type: str) -> None:
    """A model compiled from the bundled Fashion-MNIST VGG, with at least two `op_type` nodes: the
    same logits on 64 test images (random ones without the data) with and without the library."""
    assert sum(n.op_type == op_type for n in model.graph.node) >= 2
    try:
        from snncc.data import load

        x = load("fashion-mnist", "test")[0][:64]
    except Exception:  # data not fetched on this machine
        x = np.random.default_rng(0).uniform(0, 1, (64, 1, 28, 28)).astype(np.float32)
    name = model.graph.input[0].name
    native = make_session(model, native=True, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    function = make_session(model, native=False, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    np.testing.assert_array_equal(native, function)
    assert np.unique(native.argmax(axis=1)).size > 1


def test_compiled_model_native_equals_function(vgg_if_model):
    """The bundled Fashion-MNIST VGG compiled with IF neurons at T = 8: same logits either way."""
    check_compiled_native_equals_function(vgg_if_model, ops.SERIAL_IF)


def test_runtime_report_names_serial_if(vgg_if_model):
    line = runtime_description(vgg_if_model)
    assert "native kernels: SerialIF" in line and "ParallelSpike" not in line
    assert "native kernels: SerialIF" in describe(vgg_if_model, "vgg.snn.onnx")


@needs_cuda_ep
@pytest.mark.parametrize("steps", [1, 3, 4, 16, 64])
def test_cuda_equals_cpu(steps):
    model, x, _ = random_case(steps, per_channel=True, rank=4, seed=20 + steps)
    assert_bitwise_equal(run(model, x, native=True, providers=CUDA), run(model, x, native=True))


@needs_cuda_ep
def test_cuda_non_finite():
    steps = 4
    params = {"theta_pre": np.array([1.0], np.float32), "theta_post": np.array([1.5], np.float32),
              "psi": np.array([0.0], np.float32)}
    x = np.array([[np.nan, np.inf, -np.inf, 1.0], [1, -np.inf, 5, 1], [1, 1, 1, 1], [1, 1, 1, 1]],
                 np.float32).reshape(steps, 1, 4)
    model = serial_if_model(steps, x.shape, params)
    assert_bitwise_equal(run(model, x, native=True, providers=CUDA), if_simulation(x, params, steps))
