"""Throughput of one snn.ParallelSpike layer on the CPU: native kernels vs the ONNX function vs a copy.

Every method reads the T·N input currents and writes the T·N output values (N neurons per step,
float32), so all are reported as GB/s of those 2·T·N·4 bytes, and as a ratio to a plain memory
copy of the same bytes: numpy.copyto into a preallocated array, split into one contiguous slice
per thread and run on a thread pool of the same size as ONNX Runtime's (numpy releases the GIL).
The op runs through ONNX Runtime with I/O binding to preallocated arrays (no allocation is timed):
  function  the model-local ONNX function (no native library registered)
  dense     native, every step compared (SNNCC_NEURON_ALGO=dense)
  binary    native, binary search for the first firing step (the default)
  closed    native, closed-form spike count
  binary, V binary with the kernels' instruction-set variant V (SNNCC_CPU_VARIANT=V), for every
            variant this CPU runs: baseline (SSE2), avx, avx2, avx512; the other native methods run
            the variant the library picks for this CPU, its best
  serial IF the native snn.SerialIF kernel on the same currents (the baseline neuron, step by step)
A second table times every kernel variant on small layers (ParallelSpike, SerialIF, SpikeCount)
on one thread, in CPU time, where they compute rather than wait for memory.
Where T·N would exceed the memory cap, N is scaled down for that T; the table says so.

    python benchmarks/neuron.py [--neurons 16777216] [--steps 4 8 ...] [--threads 2]
                                [--json out.json] [--write-docs]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort

from _docs import replace_section
from snncc.ops import DOMAIN, PARAMETER_INPUTS, TARGET_OPSET, function_library
from snncc.native_library import cpu_variant
from snncc.session import native_library_path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "performance.md"
SECTION = "## Neuron kernel"
CHANNELS = 64
# Peak bytes per element of the [T*N] tensor: X and Y (4 + 4) plus what the function's run
# allocates on top (about 15.4 measured with ONNX Runtime 1.32: temporaries, arena rounding).
BYTES_PER_ELEMENT_PEAK = 24


def layer_model(steps: int, channels: int, op_type: str = "ParallelSpike") -> onnx.ModelProto:
    """One ParallelSpike (or SerialIF, or SpikeCount on the mean currents) on X [rows, C] with
    per-channel parameters."""
    rng = np.random.default_rng(0)
    values = {
        "theta_pre": rng.uniform(0.5, 1.5, channels),
        "theta_post": rng.uniform(0.5, 1.5, channels),
        "psi": rng.uniform(-0.1, 0.1, channels),
    }
    params = {k: values[k] for k in PARAMETER_INPUTS[op_type] if k in values}  # (no rate_per_spike)
    node = oh.make_node(op_type, ["X", *params], ["Y"], domain=DOMAIN, T=steps)
    graph = oh.make_graph(
        [node],
        "neuron",
        [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["rows", channels])],
        [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["rows", channels])],
        initializer=[onh.from_array(v.astype(np.float32), k) for k, v in params.items()],
    )
    opsets = [oh.make_opsetid("", TARGET_OPSET), oh.make_opsetid(DOMAIN, 1)]
    return oh.make_model(graph, opset_imports=opsets, functions=function_library())


VARIANTS = ("baseline", "avx", "avx2", "avx512")
# The CPU flags that say which variant can run (runtime/CMakeLists.txt), reported with the figures.
REPORTED_FLAGS = ("avx", "f16c", "fma", "avx2", "avx512f", "avx512vl", "avx512bw", "avx512dq")


def library_variant(variant: str = "") -> str:
    """The kernels' variant that the library runs with SNNCC_CPU_VARIANT=variant ("": its choice
    for this CPU), or its "error: ..." when this build or CPU lacks it."""
    os.environ["SNNCC_CPU_VARIANT"] = variant
    return cpu_variant(native_library_path())


def variants_here() -> list[str]:
    return [v for v in VARIANTS if library_variant(v) == v]


def best_seconds(runners: dict, repeats: int) -> dict[str, float]:
    """Best of `repeats` timed runs per method; the methods take turns, so that a burst of load
    from elsewhere on the machine does not hit one method only."""
    for fn in runners.values():
        fn()  # warm-up: first-touch page faults, thread pool start
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def op_runner(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, *, native: bool, algorithm: str, threads: int,
              variant: str = ""):
    """A zero-argument callable running the op on x into y via I/O binding; `variant` picks the
    kernels' instruction-set variant ("" = the library's choice for this CPU)."""
    os.environ["SNNCC_NEURON_ALGO"] = algorithm  # both read by the kernel when the session creates it
    os.environ["SNNCC_CPU_VARIANT"] = variant
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning, so that other load on the machine (or the
    # copy's thread pool) does not compete with spinning threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if native:
        options.register_custom_ops_library(str(native_library_path()))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    binding.bind_cpu_input("X", x)
    binding.bind_output("Y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
    return lambda: session.run_with_iobinding(binding)


# The layers timed per kernel variant: (op, T); SpikeCount reads one mean current per neuron.
VARIANT_LAYERS = (("ParallelSpike", 4), ("ParallelSpike", 16), ("SerialIF", 16), ("SpikeCount", 16))
VARIANT_NEURONS = 65536  # per step: T = 16 reads and writes 8 MiB, which stays in the last-level cache


def variant_cpu_times(variants: list[str], repeats: int) -> list[dict]:
    """Each VARIANT_LAYERS layer with each kernel variant on one thread, timed in CPU time
    (time.process_time: what this process used, so that other jobs on the machine, which take
    wall time away, count less): best of `repeats` runs, in ns per output value."""
    results = []
    for op_type, steps in VARIANT_LAYERS:
        rows = (1 if op_type == "SpikeCount" else steps) * VARIANT_NEURONS // CHANNELS
        x = np.random.default_rng(steps).random((rows, CHANNELS), dtype=np.float32) * 3 - 0.5
        y = np.empty_like(x)
        model = layer_model(steps, CHANNELS, op_type)
        runners = {v: op_runner(model, x, y, native=True, algorithm="binary", threads=1, variant=v) for v in variants}
        best = dict.fromkeys(runners, float("inf"))
        for fn in runners.values():
            fn()
        for _ in range(repeats):
            for variant, fn in runners.items():  # taking turns, as best_seconds
                start = time.process_time()
                fn()
                best[variant] = min(best[variant], time.process_time() - start)
        results.append({"op": op_type, "T": steps, "values": y.size,
                        "ns_per_value": {v: t / y.size * 1e9 for v, t in best.items()}})
    return results


def variants_markdown(report: dict) -> str:
    variants = report["variants"]
    lines = [f"Kernel variants: one layer of {VARIANT_NEURONS:,} neurons per step on one thread (binary search), CPU "
             f"time, best of {report['variant_repeats']}, in ns per output value; in brackets the speed-up over "
             "baseline.", "", "| op | T | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for r in report["variant_cpu_times"]:
        ns = r["ns_per_value"]
        cells = [f"{ns[v]:.3f} ({ns['baseline'] / ns[v]:.2f}×)" for v in variants]
        lines.append(f"| {r['op']} | {r['T']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def copy_runner(x: np.ndarray, y: np.ndarray, pool: concurrent.futures.ThreadPoolExecutor, threads: int):
    src, dst = x.reshape(-1), y.reshape(-1)
    bounds = np.linspace(0, src.size, threads + 1).astype(np.int64)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return lambda: list(pool.map(lambda s: np.copyto(dst[s], src[s]), slices))


def measure(steps: int, neurons: int, threads: int, repeats: int, pool, variants: list[str]) -> dict:
    rows = neurons // CHANNELS
    x = np.random.default_rng(steps).random((steps * rows, CHANNELS), dtype=np.float32) * 3 - 0.5
    y = np.empty_like(x)
    model = layer_model(steps, CHANNELS)
    runners = {
        "copy": copy_runner(x, y, pool, threads),
        "function": op_runner(model, x, y, native=False, algorithm="binary", threads=threads),
        **{a: op_runner(model, x, y, native=True, algorithm=a, threads=threads) for a in ("dense", "binary", "closed")},
        **{f"binary, {v}": op_runner(model, x, y, native=True, algorithm="binary", threads=threads, variant=v)
           for v in variants},
        "serial IF": op_runner(layer_model(steps, CHANNELS, "SerialIF"), x, y, native=True, algorithm="binary",
                               threads=threads),
    }
    seconds = best_seconds(runners, repeats)
    print(f"  T={steps}, N={rows * CHANNELS}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()),
          file=sys.stderr)
    moved = 2 * x.nbytes
    return {
        "T": steps,
        "neurons": rows * CHANNELS,
        "bytes_moved": moved,
        "seconds": seconds,
        "gb_per_s": {k: moved / v / 1e9 for k, v in seconds.items()},
        "ratio_to_copy": {k: seconds["copy"] / v for k, v in seconds.items()},
        "speedup_vs_function": {k: seconds["function"] / v for k, v in seconds.items()},
    }


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), []))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": model, "cpu_flags": [f for f in REPORTED_FLAGS if f in flags], "logical_cpus": os.cpu_count(),
            "memory_gib": round(memory / 2**30, 1), "kernel_variant": library_variant(),
            "onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "load_average_1min_at_start": os.getloadavg()[0]}


def markdown(report: dict) -> str:
    m = report["machine"]
    variants = report["variants"]
    methods = ["function", "dense", "binary", "closed", *(f"binary, {v}" for v in variants), "serial IF"]
    lines = [
        f"Machine: {m['cpu']} (flags: {' '.join(m['cpu_flags'])}; the kernels' variant by default: "
        f"{m['kernel_variant']}), {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB; onnxruntime "
        f"{m['onnxruntime']}, numpy {m['numpy']}; load average {m['load_average_1min_at_start']:.1f} when the run "
        f"started (other jobs on the machine). {report['threads']} threads for every method "
        f"(ORT intra-op threads, not spinning; copy: numpy.copyto on a thread pool of that size). float32, per-channel "
        f"parameters, best of {report['repeats']} runs (methods taking turns). GB/s of the bytes read and written "
        "(2·T·N·4); in brackets the ratio to the copy.",
        "",
        "| T | neurons N | MB moved | copy GB/s | " + " | ".join(methods) + " | binary vs function "
        "| serial IF / binary (time) |",
        "|---|---|---|---|" + "---|" * len(methods) + "---|---|",
    ]
    for r in report["results"]:
        g, q = r["gb_per_s"], r["ratio_to_copy"]
        scaled = "" if r["neurons"] >= report["neurons"] else " (scaled down: memory cap)"
        cells = [f"{g[k]:.2f} ({q[k]:.2f}×)" for k in methods]
        serial_vs_binary = r["seconds"]["serial IF"] / r["seconds"]["binary"]
        lines.append(f"| {r['T']} | {r['neurons']:,}{scaled} | {r['bytes_moved'] / 1e6:,.0f} | {g['copy']:.2f} | "
                     + " | ".join(cells) + f" | {r['speedup_vs_function']['binary']:.1f}× | {serial_vs_binary:.2f} |")
    return "\n".join(lines + ["", goals(report)]) + "\n"


def goals(report: dict) -> str:
    """The issue's targets at T >= 16 for the default (binary) kernel, checked on this run."""
    rows = [r for r in report["results"] if r["T"] >= 16]
    if not rows:
        return "Goals (T ≥ 16): not measured."
    copy_ok = [r["T"] for r in rows if r["ratio_to_copy"]["binary"] >= 0.5]
    fast_ok = [r["T"] for r in rows if r["speedup_vs_function"]["binary"] >= 3]
    def verdict(ok: list[int]) -> str:
        missed = [r["T"] for r in rows if r["T"] not in ok]
        return "met at every T" if not missed else f"missed at T = {', '.join(map(str, missed))}"
    return (f"Goals at T ≥ 16 for the default (binary) kernel: ≥ 0.5× the copy's bandwidth: {verdict(copy_ok)}; "
            f"≥ 3× faster than the function: {verdict(fast_ok)}.")


NOTES = """
Every method reads and writes the same bytes, so the copy bounds them all. A copy streams through
two contiguous arrays; the neuron reads each neuron's T currents from T rows N values apart (one
row per step, in pieces of 4096 neurons, four rows at a time, overlapped with writing the previous
piece's output rows), a pattern that streams less well, and it adds per-neuron work (sum, parameter
gather, search) that weighs most at small T. The three native algorithms differ little beyond the
noise. The native columns run the best kernel variant of the CPU (runtime/README.md; named in the
machine line), the "binary, V" columns each variant that the CPU runs, from baseline (SSE2, 4
floats per instruction: any x86-64) to avx512 (16): where the kernel streams memory, the widths
are close, since the copy bounds them all. The serial IF kernel reads and writes the same bytes
once, four steps per pass over a piece (its membranes stay in registers and cache), so it is
bound by the same copy. The function materialises several full-size [T·N] temporaries (comparison, Where, reshape
copies) and runs them as separate ops. Timings on a shared virtual machine vary by tens of percent
between runs (see the load average above): compare the columns of one row, measured taking turns.

The CUDA kernel is measured by `benchmarks/gpu/run.sh OUTDIR` on a machine with an NVIDIA GPU
(against a serial integrate-and-fire kernel, a device-to-device copy and PyTorch's dense
equivalent); no GPU was available when this section was written.
"""


def write_docs_section(table: str) -> None:
    """Replaces (or appends) the "Neuron kernel" section of docs/performance.md, nothing else."""
    replace_section(DOCS, SECTION, f"{SECTION}\n\nOne `snn.ParallelSpike` layer on the CPU, measured by "
                    "`benchmarks/neuron.py` (see its docstring for the methods).\n\n" + table + NOTES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", type=int, default=16 * 2**20, help="neurons per step N (default 16M)")
    parser.add_argument("--quick", action="store_true", help="1M neurons, 3 repeats: a smoke run")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-cap-gb", type=float, default=None,
                        help="peak memory allowed (default: 60%% of the physical memory)")
    parser.add_argument("--json", type=Path, help="write the JSON report here (else to stdout)")
    parser.add_argument("--write-docs", action="store_true", help="update docs/performance.md, section Neuron kernel")
    args = parser.parse_args()
    if args.quick:
        args.neurons, args.repeats = 2**20, 3
    if native_library_path() is None:
        sys.exit("native library not found: run `make native` first")

    info = machine()
    cap = args.memory_cap_gb * 1e9 if args.memory_cap_gb else info["memory_gib"] * 2**30 * 0.6
    variants = variants_here()
    report = {"machine": info, "threads": args.threads, "repeats": args.repeats, "neurons": args.neurons,
              "memory_cap_bytes": int(cap), "variants": variants, "results": []}
    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        for steps in args.steps:
            neurons = min(args.neurons, int(cap // (BYTES_PER_ELEMENT_PEAK * steps)))
            neurons -= neurons % (CHANNELS * 16)
            report["results"].append(measure(steps, neurons, args.threads, args.repeats, pool, variants))
    report["variant_repeats"] = args.repeats * 4
    report["variant_cpu_times"] = variant_cpu_times(variants, report["variant_repeats"])
    table = markdown(report) + "\n" + variants_markdown(report)
    print(table, file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    else:
        print(json.dumps(report, indent=2))
    if args.write_docs:
        write_docs_section(table)


if __name__ == "__main__":
    main()
