"""The native `snn.SpikeCount` kernels (runtime/) against the model-local function.

The kernels apply the function's float operations in its order (M + psi, T·shifted, θ/2, sum,
division, floor, clip to [0, T]; float16 rounded after every operation), so their output must
equal the function's bit for bit for every registered type and every input: levels exactly on
integer boundaries, huge values, NaN and ±inf in currents or parameters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from snncc import ops
from snncc.compiler import CompileOptions, compile_model
from snncc.inspection import describe
from snncc.ops import DOMAIN, TARGET_OPSET, function_library
from snncc.session import NATIVE_KERNELS, make_session, native_library_path, runtime_description
from tests.test_native import _ONNX_TYPE, CUDA, needs_cuda_ep
from tests.test_native_serial_if import check_compiled_native_equals_function, profiled_ops

if native_library_path() is None:
    pytest.skip("native library not built (run `make native`) or SNNCC_NATIVE=0", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
STEPS = [1, 2, 3, 4, 7, 8, 16, 64, 1024]
DTYPES = [np.dtype(t) for t in NATIVE_KERNELS[ops.SPIKE_COUNT]["CPUExecutionProvider"]]
_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}
SPECIALS = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, 1e30, -1e30, 65504.0, -65504.0, 1e-30,
            -1e-30, 6e-8, -6e-8, 1e10, -1e10]


def spike_count_model(steps: int, m_shape: tuple[int, ...], theta_pre: np.ndarray, psi: np.ndarray,
                      dtype=np.float32, rate: np.ndarray | None = None, fused: bool = True) -> onnx.ModelProto:
    """One SpikeCount node; M is a graph input, the parameters are initializers. With `rate`, the
    output is the firing rate: the node's optional input rate_per_spike (`fused`), or a Mul after it."""
    elem = _ONNX_TYPE[np.dtype(dtype).type]
    initializers = {"theta_pre": theta_pre, "psi": psi} | ({} if rate is None else {"rate_per_spike": rate})
    if rate is None or fused:
        nodes = [oh.make_node(ops.SPIKE_COUNT, list(initializers), ["K"], domain=DOMAIN, T=steps)]
        nodes[0].input.insert(0, "M")
    else:
        nodes = [oh.make_node(ops.SPIKE_COUNT, ["M", "theta_pre", "psi"], ["count"], domain=DOMAIN, T=steps),
                 oh.make_node("Mul", ["count", "rate_per_spike"], ["K"])]
    graph = oh.make_graph(
        nodes, "spike_count",
        [oh.make_tensor_value_info("M", elem, list(m_shape))],
        [oh.make_tensor_value_info("K", elem, list(m_shape))],
        initializer=[onh.from_array(np.asarray(v, dtype), k) for k, v in initializers.items()],
    )
    opsets = [oh.make_opsetid("", TARGET_OPSET), oh.make_opsetid(DOMAIN, 1)]
    return oh.make_model(graph, opset_imports=opsets, functions=function_library())


def run(model: onnx.ModelProto, m: np.ndarray, *, native: bool, threads: int = 2,
        providers: list[str] | None = None) -> np.ndarray:
    session = make_session(model, native=native, threads=threads, providers=providers or ["CPUExecutionProvider"])
    return session.run(None, {"M": m})[0]


def assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal bits everywhere (-0 included), NaN where the other has NaN. A NaN's sign and payload
    are not compared: where two NaNs meet (NaN current and NaN ψ), which one an addition passes
    on depends on the operand order the compiler picks, for ORT's kernels as for ours."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    bits = _BITS[actual.dtype.itemsize]
    nan = np.isnan(actual)
    differ = (actual.view(bits) != expected.view(bits)) & ~(nan & np.isnan(expected))
    assert not differ.any(), (f"{int(differ.sum())} of {differ.size} values differ, first at "
                              f"{np.argwhere(differ)[0]}: {actual[differ][:5]} vs {expected[differ][:5]}")


def check_native_equals_function(model: onnx.ModelProto, m: np.ndarray) -> np.ndarray:
    native = run(model, m, native=True)
    assert_bitwise_equal(native, run(model, m, native=False))
    return native


def currents(rng: np.random.Generator, steps: int, theta: np.ndarray, psi: np.ndarray, shape: tuple[int, ...],
             dtype) -> np.ndarray:
    """Mean currents over levels -0.3·T .. 1.3·T (both clips reached), a third of them exactly on
    a level boundary (θ·(k − ½)/T − ψ, up to rounding), plus the special values at the front."""
    theta, psi = (np.broadcast_to(p.astype(np.float64), shape) for p in (theta, psi))
    level = rng.uniform(-0.3, 1.3, shape) * steps
    on_boundary = rng.random(shape) < 1 / 3
    level = np.where(on_boundary, np.round(level), level)
    with np.errstate(over="ignore"):
        m = (theta * (level - 0.5) / steps - psi).astype(dtype)
    flat = m.reshape(-1)
    with np.errstate(over="ignore"):
        flat[:len(SPECIALS)] = np.array(SPECIALS).astype(dtype)
    return m


def params(rng: np.random.Generator, per_channel: bool, channels: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """theta_pre, psi as the folding pass shapes them: [1], or [C, 1, ..., 1] (broadcast_parameter)."""
    shape = (channels,) + (1,) * (rank - 2) if per_channel else (1,)
    return rng.uniform(0.2, 2.0, shape), rng.uniform(-0.3, 0.3, shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rank", [4, 2])
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
@pytest.mark.parametrize("steps", STEPS)
def test_native_equals_function(steps, per_channel, rank, dtype):
    rng = np.random.default_rng(steps * 10 + per_channel * 4 + rank)
    channels = 5
    shape = (3, channels, 7, 9) if rank == 4 else (37, channels)
    theta, psi = params(rng, per_channel, channels, rank)
    theta, psi = theta.astype(dtype), psi.astype(dtype)
    m = currents(rng, steps, theta, psi, shape, dtype)
    k = check_native_equals_function(spike_count_model(steps, shape, theta, psi, dtype), m)
    finite = k[np.isfinite(k)]
    assert (finite == 0).any() and (finite == np.float32(steps).astype(dtype)).any()  # both clips reached
    assert ((finite > 0) & (finite < steps)).any() or steps == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_finite_and_degenerate_parameters(dtype):
    """NaN, ±inf, 0, negative and huge θ_pre and ψ per channel, against every special current."""
    steps = 8
    theta = np.array([1.0, 0.0, -0.0, -1.0, np.nan, np.inf, -np.inf, 3e38, 1e-30, 0.5, 0.5, 0.5, 0.5, 2.0])
    psi = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, np.nan, np.inf, -np.inf, 3e38, -0.0])
    m = np.array(SPECIALS + [0.5, -0.5, 0.0625, 1.0 / 3.0], np.float64)
    x = np.broadcast_to(m, (2, theta.size, m.size)).astype(dtype)
    model = spike_count_model(steps, x.shape, theta.reshape(-1, 1).astype(dtype), psi.reshape(-1, 1).astype(dtype),
                              dtype)
    k = check_native_equals_function(model, x)
    assert np.isnan(k).any()  # NaN levels stay NaN, as ONNX Runtime's Floor and Clip keep them


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16, 1024])
def test_exact_boundaries(steps):
    """Dyadic values: level = k exactly at M = θ(k − ½)/T − ψ, which counts k; a quarter level
    below counts k − 1 (all values dyadic, so every operation is exact). -0 stays -0 through Floor and Clip, like the function."""
    theta = np.array([0.5, 1.0, 2.0], np.float32).reshape(3, 1)
    psi = np.array([0.0, 0.25, -0.125], np.float32).reshape(3, 1)
    levels = np.arange(0, steps + 1, dtype=np.float32)
    m = (theta * (levels - np.float32(0.5)) / np.float32(steps) - psi).astype(np.float32)
    below = (m - theta / np.float32(4 * steps)).astype(np.float32)
    x = np.concatenate([m, below], axis=1)[None]  # [1, 3, 2(T+1)]
    k = check_native_equals_function(spike_count_model(steps, x.shape, theta, psi), x)[0]
    np.testing.assert_array_equal(k[:, :steps + 1], np.broadcast_to(levels, (3, steps + 1)))
    np.testing.assert_array_equal(k[:, steps + 1:], np.broadcast_to(np.maximum(levels - 1, 0), (3, steps + 1)))


def test_large_layer_and_threads():
    """Several chunks per work item, several items and threads; any thread count, same result."""
    rng = np.random.default_rng(3)
    channels, steps = 7, 8
    theta, psi = params(rng, True, channels, 4)
    theta, psi = theta.astype(np.float32), psi.astype(np.float32)
    shape = (13, channels, 61, 131)
    m = currents(rng, steps, theta, psi, shape, np.float32)
    model = spike_count_model(steps, shape, theta, psi)
    k = check_native_equals_function(model, m)
    assert_bitwise_equal(run(model, m, native=True, threads=1), k)


def test_invalid_parameters_are_rejected():
    theta, psi = np.ones(3, np.float32), np.zeros(3, np.float32)
    with pytest.raises(Exception, match=r"snn\.SpikeCount: theta_pre has 3 elements; expected 1 or X.shape"):
        run(spike_count_model(4, (8, 5), theta, psi), np.zeros((8, 5), np.float32), native=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rank", [4, 2])
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
@pytest.mark.parametrize("steps", [1, 4, 7, 64])
def test_rate_per_spike_equals_the_count_times_it(steps, per_channel, rank, dtype):
    """The optional input rate_per_spike (native CPU only): the function followed by a Mul, bit for bit."""
    rng = np.random.default_rng(steps * 10 + per_channel * 4 + rank + 500)
    channels = 5
    shape = (3, channels, 7, 9) if rank == 4 else (37, channels)
    theta, psi = (p.astype(dtype) for p in params(rng, per_channel, channels, rank))
    rate = (params(rng, per_channel, channels, rank)[0] / steps).astype(dtype)
    m = currents(rng, steps, theta, psi, shape, dtype)
    fused = run(spike_count_model(steps, shape, theta, psi, dtype, rate), m, native=True)
    assert_bitwise_equal(fused, run(spike_count_model(steps, shape, theta, psi, dtype, rate, fused=False), m, native=False))
    count = run(spike_count_model(steps, shape, theta, psi, dtype), m, native=True)
    assert not np.array_equal(fused, count)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rate_per_spike_non_finite(dtype):
    """Rates of 0, -0, ±inf and NaN against counts from special currents (0 · inf is NaN, as in Mul)."""
    rate = np.array([1.0, 0.0, -0.0, np.inf, -np.inf, np.nan, -0.25, 65504.0]).reshape(-1, 1)
    m = np.array(SPECIALS + [0.5, -0.5], np.float64)
    x = np.broadcast_to(m, (2, rate.size, m.size)).astype(dtype)
    theta, psi = np.full((rate.size, 1), 0.5, dtype), np.zeros((rate.size, 1), dtype)
    fused = run(spike_count_model(8, x.shape, theta, psi, dtype, rate.astype(dtype)), x, native=True)
    assert_bitwise_equal(fused, run(spike_count_model(8, x.shape, theta, psi, dtype, rate.astype(dtype), fused=False),
                                    x, native=False))
    assert np.isnan(fused).any()


def test_rate_per_spike_of_the_wrong_size_is_rejected():
    theta, psi, rate = np.ones(1, np.float32), np.zeros(1, np.float32), np.ones(3, np.float32)
    with pytest.raises(Exception, match=r"snn\.SpikeCount: rate_per_spike has 3 elements; expected 1 or X.shape"):
        run(spike_count_model(4, (8, 5), theta, psi, rate=rate), np.zeros((8, 5), np.float32), native=True)


def test_native_kernel_runs():
    """With the library, the node runs as one native kernel; without it, as the function's ops."""
    rng = np.random.default_rng(1)
    theta, psi = params(rng, True, 5, 4)
    m = rng.uniform(-1, 2, (2, 5, 4, 4)).astype(np.float32)
    model = spike_count_model(4, m.shape, theta, psi)

    assert profiled_ops(model, {"M": m}, native=True) == {ops.SPIKE_COUNT}
    assert {"Floor", "Clip"} <= profiled_ops(model, {"M": m}, native=False)


@pytest.fixture(scope="module")
def vgg_folded_model():
    ann = onnx.load(REPO / "models" / "fmnist_qcfs_vgg_t4.onnx")
    return compile_model(ann, CompileOptions(steps=8, fold_time=True)).model


def test_folded_model_native_equals_function(vgg_folded_model):
    """The bundled Fashion-MNIST VGG folded at T = 8: the same logits with and without the library."""
    check_compiled_native_equals_function(vgg_folded_model, ops.SPIKE_COUNT)


def test_runtime_report_names_spike_count(vgg_folded_model):
    line = runtime_description(vgg_folded_model)
    assert "native kernels: SpikeCount" in line and "model-local functions" not in line
    assert "native kernels: SpikeCount" in describe(vgg_folded_model, "vgg.snn.onnx")


@needs_cuda_ep
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=str)
@pytest.mark.parametrize("steps", [1, 3, 8, 64, 1024])
def test_cuda_equals_cpu(steps, dtype):
    rng = np.random.default_rng(40 + steps)
    theta, psi = params(rng, True, 6, 4)
    theta, psi = theta.astype(dtype), psi.astype(dtype)
    shape = (4, 6, 9, 11)
    m = currents(rng, steps, theta, psi, shape, dtype)
    model = spike_count_model(steps, shape, theta, psi, dtype)
    assert_bitwise_equal(run(model, m, native=True, providers=CUDA), run(model, m, native=True))


@needs_cuda_ep
def test_cuda_rejects_rate_per_spike():
    one = np.ones(1, np.float32)
    with pytest.raises(Exception, match="rate_per_spike has no CUDA kernel"):
        run(spike_count_model(4, (2, 3), one, one, rate=one), np.zeros((2, 3), np.float32), native=True, providers=CUDA)
