"""The instruction-set variants of the native CPU kernels (runtime/src/cpu_kernels.h).

Every kernel source is compiled for baseline x86-64 and with AVX, AVX2 and AVX-512, and the library
runs the best variant the CPU has (`SNNCC_CPU_VARIANT` forces one). The variants apply the same
float operations in the same order, without FMA, so every op must give the same output bits under
each, for every type, algorithm and input path; each variant but baseline must define no symbol
outside its own namespace, or the linker could hand, say, AVX-512 code to the baseline variant (an
inline function compiled in both) and crash a CPU without it. Variants this CPU cannot run are
skip their comparisons here (an AVX-512 machine runs all four).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from snncc.native_library import cpu_variant
from snncc.session import make_session, native_library_path
from tests.test_native import ALGORITHMS, constant_case, random_params, spike_model
from tests.test_native import random_case as spike_case
from tests.test_native_serial_if import random_case as serial_if_case
from tests.test_native_spike_count import SPECIALS, spike_count_model

if native_library_path() is None:
    pytest.skip("native library not built (run `make native`) or SNNCC_NATIVE=0", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
OBJECTS = REPO / "runtime" / "build" / "cmake" / "CMakeFiles"
_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}
# Each variant but baseline, and the /proc/cpuinfo flags that it needs (runtime/CMakeLists.txt).
VARIANT_FLAGS = {"avx": {"avx"}, "avx2": {"avx2", "f16c"},
                 "avx512": {"avx512f", "avx512vl", "avx512bw", "avx512dq", "f16c"}}


def library_variant() -> str:
    """What the library reports it would run now (SNNCC_CPU_VARIANT, else its best)."""
    return cpu_variant(native_library_path())


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def runs_here(variant: str) -> bool:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SNNCC_CPU_VARIANT", variant)
        return not library_variant().startswith("error:")


VARIANTS_HERE = [v for v in VARIANT_FLAGS if runs_here(v)]
# Each variant but baseline, compared with baseline where this CPU runs it, else skipped saying so.
COMPARED = pytest.mark.parametrize("variant", [
    pytest.param(v, marks=pytest.mark.skipif(v not in VARIANTS_HERE, reason=f"this build or CPU has no {v}: its "
                                             "kernels are built but not compared here"))
    for v in VARIANT_FLAGS])


def run(model: onnx.ModelProto, x: np.ndarray, variant: str, *, algorithm: str = "binary") -> np.ndarray:
    """The model's only output with the native library, the kernels of `variant`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SNNCC_CPU_VARIANT", variant)
        mp.setenv("SNNCC_NEURON_ALGO", algorithm)
        session = make_session(model, native=True, threads=2, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_same_bits(model: onnx.ModelProto, x: np.ndarray, variant: str, **kwargs) -> np.ndarray:
    """Runs `model` with the baseline kernels and with `variant`'s: the outputs are equal bit for bit."""
    baseline = run(model, x, "baseline", **kwargs)
    got = run(model, x, variant, **kwargs)
    assert baseline.dtype == got.dtype and baseline.shape == got.shape
    bits = _BITS[baseline.dtype.itemsize]
    differ = baseline.view(bits) != got.view(bits)
    assert not differ.any(), f"{int(differ.sum())} of {differ.size} values differ between baseline and {variant}"
    return baseline


def test_the_best_variant_of_this_cpu_runs_by_default(monkeypatch):
    """The default is the best variant whose instruction sets /proc/cpuinfo lists."""
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    monkeypatch.delenv("SNNCC_CPU_VARIANT", raising=False)
    expected = [v for v, needed in VARIANT_FLAGS.items() if needed <= flags]
    assert library_variant() == (expected[-1] if expected else "baseline")
    assert VARIANTS_HERE == expected
    for variant in VARIANT_FLAGS.keys() - set(expected):
        monkeypatch.setenv("SNNCC_CPU_VARIANT", variant)
        assert library_variant() == f"error: snn.ops: SNNCC_CPU_VARIANT={variant}, but this build or CPU has no {variant} variant"


@COMPARED
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("steps", [1, 3, 4, 16, 64])
@pytest.mark.parametrize("rank", [4, 2])
def test_parallel_spike_variants_agree(steps, rank, algorithm, variant):
    model, x, _ = spike_case(steps, per_channel=True, rank=rank, seed=500 + steps + rank)
    assert_same_bits(model, x, variant, algorithm=algorithm)


@COMPARED
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_parallel_spike_variants_agree_on_other_types(dtype, variant):
    _, x, params = spike_case(8, per_channel=True, rank=4, seed=9)
    typed = {k: v.astype(dtype) for k, v in params.items()}
    assert_same_bits(spike_model(8, x.shape, typed, dtype=dtype), x.astype(dtype), variant)


@COMPARED
@pytest.mark.parametrize("steps", [1, 4, 16])
def test_constant_input_variants_agree(steps, variant):
    model, x, _, _ = constant_case(steps, per_channel=True, seed=600 + steps)
    assert_same_bits(model, x, variant)


@COMPARED
def test_large_outputs_variants_agree(variant):
    """Output rows large enough to be stored with non-temporal stores, in both kernels."""
    steps, channels = 8, 7
    rng = np.random.default_rng(12)
    params = random_params(rng, (channels, 1))
    x = rng.uniform(-0.5, 2.5, (steps * 13, channels, 7919)).astype(np.float32)
    model = spike_model(steps, x.shape, params)
    assert_same_bits(model, x, variant)
    model.graph.node[0].op_type = "SerialIF"
    assert_same_bits(model, x, variant)


@COMPARED
@pytest.mark.parametrize("steps", [1, 4, 16])
def test_serial_if_variants_agree(steps, variant):
    model, x, _ = serial_if_case(steps, per_channel=True, rank=4, seed=700 + steps)
    assert_same_bits(model, x, variant)


@COMPARED
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=str)
def test_spike_count_variants_agree(dtype, variant):
    """Random currents and every special value (NaN, ±inf, ±0, huge) through floor and clip."""
    rng = np.random.default_rng(13)
    channels = 6
    theta = rng.uniform(0.2, 2.0, (channels, 1)).astype(dtype)
    psi = rng.uniform(-0.3, 0.3, (channels, 1)).astype(dtype)
    values = np.concatenate([rng.uniform(-1.0, 3.0, 4001), np.array(SPECIALS)])
    with np.errstate(over="ignore"):  # float16: the huge specials become ±inf
        m = np.broadcast_to(values, (3, channels, values.size)).astype(dtype)
    k = assert_same_bits(spike_count_model(16, m.shape, theta, psi, dtype), m, variant)
    assert (k == 0).any() and (k == 16).any()


def test_unknown_variant_is_rejected():
    model, x, _ = spike_case(2, per_channel=False, rank=2, seed=1)
    with pytest.raises(Exception, match="SNNCC_CPU_VARIANT must be baseline, avx, avx2 or avx512, not 'sse9'"):
        run(model, x, "sse9")


def variant_objects(variant: str) -> list[Path]:
    objects = sorted((OBJECTS / f"snncc_cpu_{variant}.dir").rglob("*.o"))
    if not objects or shutil.which("nm") is None or shutil.which("objdump") is None:
        pytest.skip(f"no {variant} objects in runtime/build (not x86-64), or no nm/objdump")
    assert len(objects) == 3, objects
    return objects


@pytest.mark.parametrize("variant", list(VARIANT_FLAGS))
def test_variant_objects_define_nothing_outside_their_namespace(variant):
    listing = subprocess.run(["nm", "-C", "--defined-only", "--extern-only", *map(str, variant_objects(variant))],
                             check=True, capture_output=True, text=True).stdout
    symbols = [line.split(" ", 2)[2] for line in listing.splitlines() if line.count(" ") >= 2]
    assert symbols, "nm listed no symbols"
    outside = [s for s in symbols if not s.startswith((f"snncc::{variant}::", f"void snncc::{variant}::"))]
    assert not outside, f"the {variant} objects define symbols outside snncc::{variant}: {outside[:5]}"


@pytest.mark.parametrize("variant", ["baseline", *VARIANT_FLAGS])
def test_variant_objects_use_their_vector_width_and_no_fma(variant):
    """FMA rounds once where the model-local function rounds twice: no variant may contain it, and
    each uses the registers its instruction set brings (else the variant would be pointless)."""
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", *map(str, variant_objects(variant))],
                          check=True, capture_output=True, text=True).stdout
    fma = re.findall(r"\bv?fn?m(?:add|sub)\w*", code)
    assert not fma, f"the {variant} objects contain FMA instructions: {sorted(set(fma))[:5]}"
    widest = {"baseline": "%xmm", "avx": "%ymm", "avx2": "%ymm", "avx512": "%zmm"}[variant]
    assert widest in code
    assert variant == "avx512" or "%zmm" not in code
    assert variant != "baseline" or "%ymm" not in code
