"""The instruction-set variants of the native CPU kernels (runtime/src/cpu_kernels.h).

Every kernel source is compiled twice, for baseline x86-64 and with AVX, and the library runs the
AVX variant where the CPU has it (`SNNCC_CPU_VARIANT=baseline` forces the other). The variants
apply the same float operations in the same order, so every op must give the same output bits
under both, for every type, algorithm and input path; and the AVX objects must define no symbol
outside their own namespace, or the linker could hand AVX code to the baseline variant (an inline
function compiled in both) and crash a CPU without AVX.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from snncc.session import make_session, native_library_path
from tests.test_native import ALGORITHMS, constant_case, random_params, spike_model
from tests.test_native import random_case as spike_case
from tests.test_native_serial_if import random_case as serial_if_case
from tests.test_native_spike_count import SPECIALS, spike_count_model

if native_library_path() is None:
    pytest.skip("native library not built (run `make native`) or SNNCC_NATIVE=0", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
AVX_OBJECTS = REPO / "runtime" / "build" / "cmake" / "CMakeFiles" / "snncc_cpu_avx.dir"
_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def run(model: onnx.ModelProto, x: np.ndarray, variant: str, *, algorithm: str = "binary") -> np.ndarray:
    """The model's only output with the native library, the kernels of `variant`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SNNCC_CPU_VARIANT", variant)
        mp.setenv("SNNCC_NEURON_ALGO", algorithm)
        session = make_session(model, native=True, threads=2, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def avx_runs_here() -> bool:
    model, x, _ = spike_case(2, per_channel=False, rank=2, seed=0)
    try:
        run(model, x, "avx")
    except Exception as error:  # noqa: BLE001 - the library says why in the message
        if "no AVX variant" in str(error):
            return False
        raise
    return True


needs_avx = pytest.mark.skipif(not avx_runs_here(), reason="this build or CPU has no AVX variant")


def assert_same_bits(model: onnx.ModelProto, x: np.ndarray, **kwargs) -> np.ndarray:
    baseline = run(model, x, "baseline", **kwargs)
    avx = run(model, x, "avx", **kwargs)
    assert baseline.dtype == avx.dtype and baseline.shape == avx.shape
    bits = _BITS[baseline.dtype.itemsize]
    differ = baseline.view(bits) != avx.view(bits)
    assert not differ.any(), f"{int(differ.sum())} of {differ.size} values differ between the variants"
    return avx


@needs_avx
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("steps", [1, 3, 4, 16, 64])
@pytest.mark.parametrize("rank", [4, 2])
def test_parallel_spike_variants_agree(steps, rank, algorithm):
    model, x, _ = spike_case(steps, per_channel=True, rank=rank, seed=500 + steps + rank)
    assert_same_bits(model, x, algorithm=algorithm)


@needs_avx
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_parallel_spike_variants_agree_on_other_types(dtype):
    _, x, params = spike_case(8, per_channel=True, rank=4, seed=9)
    typed = {k: v.astype(dtype) for k, v in params.items()}
    assert_same_bits(spike_model(8, x.shape, typed, dtype=dtype), x.astype(dtype))


@needs_avx
@pytest.mark.parametrize("steps", [1, 4, 16])
def test_constant_input_variants_agree(steps):
    model, x, _, _ = constant_case(steps, per_channel=True, seed=600 + steps)
    assert_same_bits(model, x)


@needs_avx
def test_large_outputs_variants_agree():
    """Output rows large enough to be stored with non-temporal stores, in both kernels."""
    steps, channels = 8, 7
    rng = np.random.default_rng(12)
    params = random_params(rng, (channels, 1))
    x = rng.uniform(-0.5, 2.5, (steps * 13, channels, 7919)).astype(np.float32)
    model = spike_model(steps, x.shape, params)
    assert_same_bits(model, x)
    model.graph.node[0].op_type = "SerialIF"
    assert_same_bits(model, x)


@needs_avx
@pytest.mark.parametrize("steps", [1, 4, 16])
def test_serial_if_variants_agree(steps):
    model, x, _ = serial_if_case(steps, per_channel=True, rank=4, seed=700 + steps)
    assert_same_bits(model, x)


@needs_avx
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=str)
def test_spike_count_variants_agree(dtype):
    """Random currents and every special value (NaN, ±inf, ±0, huge) through floor and clip."""
    rng = np.random.default_rng(13)
    channels = 6
    theta = rng.uniform(0.2, 2.0, (channels, 1)).astype(dtype)
    psi = rng.uniform(-0.3, 0.3, (channels, 1)).astype(dtype)
    values = np.concatenate([rng.uniform(-1.0, 3.0, 4001), np.array(SPECIALS)])
    with np.errstate(over="ignore"):  # float16: the huge specials become ±inf
        m = np.broadcast_to(values, (3, channels, values.size)).astype(dtype)
    k = assert_same_bits(spike_count_model(16, m.shape, theta, psi, dtype), m)
    assert (k == 0).any() and (k == 16).any()


def test_unknown_variant_is_rejected():
    model, x, _ = spike_case(2, per_channel=False, rank=2, seed=1)
    with pytest.raises(Exception, match="SNNCC_CPU_VARIANT must be avx or baseline"):
        run(model, x, "sse9")


@pytest.mark.skipif(not AVX_OBJECTS.is_dir() or shutil.which("nm") is None,
                    reason="no AVX variant objects in runtime/build (not x86-64) or no nm")
def test_avx_objects_define_nothing_outside_their_namespace():
    objects = sorted(AVX_OBJECTS.rglob("*.o"))
    assert len(objects) == 3, objects
    listing = subprocess.run(["nm", "-C", "--defined-only", "--extern-only", *map(str, objects)],
                             check=True, capture_output=True, text=True).stdout
    symbols = [line.split(" ", 2)[2] for line in listing.splitlines() if line.count(" ") >= 2]
    assert symbols, "nm listed no symbols"
    outside = [s for s in symbols if not s.startswith(("snncc::avx::", "void snncc::avx::"))]
    assert not outside, f"the AVX objects define symbols outside snncc::avx: {outside[:5]}"
