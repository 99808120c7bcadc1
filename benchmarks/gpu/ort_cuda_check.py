"""snncc's compiled models on ONNX Runtime's CUDA execution provider with the native library: which
provider ran each `snn` node (from ONNX Runtime's profile), how the outputs compare with the CPU
provider's, and the time per batch on each (JSON on stdout).

The repository's Fashion-MNIST VGG (models/fmnist_qcfs_vgg_t4.onnx) is compiled at T = 4 expanded,
folded and with IF neurons, and run on a batch of random inputs. cuDNN's convolutions round
differently from the CPU's, so a neuron within rounding of a threshold may fire once more or less:
the outputs are compared (classes, largest difference), not required to be equal.

    python3 benchmarks/gpu/ort_cuda_check.py [--batch 256] [--repeats 10]

Exit status 1 when an `snn` node ran on another provider than CUDA (the CUDA kernels are not the
ones running), 2 when ONNX Runtime's CUDA provider is missing or does not run here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from snncc.compiler import CompileOptions, compile_model  # noqa: E402
from snncc.ops import DOMAIN  # noqa: E402
from snncc.session import native_library_path, runtime_description  # noqa: E402

MODEL = REPO / "models" / "fmnist_qcfs_vgg_t4.onnx"
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
VARIANTS = {"expanded": {}, "folded": {"fold_time": True}, "if": {"neuron": "if"}}


def session(model: onnx.ModelProto, providers: list[str], profile_dir: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.register_custom_ops_library(str(native_library_path()))
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "profile")
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def snn_node_providers(profile: Path, model: onnx.ModelProto) -> dict[str, list[str]]:
    """Each `snn` op type, and the providers that ONNX Runtime's profile says ran its nodes."""
    snn_nodes = {n.name: n.op_type for n in model.graph.node if n.domain == DOMAIN}
    found: dict[str, set[str]] = {}
    for event in json.loads(profile.read_text()):
        args = event.get("args", {})
        name = event.get("name", "").removesuffix("_kernel_time")
        if event.get("cat") == "Node" and name in snn_nodes and "provider" in args:
            found.setdefault(snn_nodes[name], set()).add(args["provider"])
    return {op: sorted(providers) for op, providers in found.items()}


def check(variant: str, options: dict, x: np.ndarray, repeats: int) -> dict:
    model = compile_model(onnx.load(MODEL), CompileOptions(steps=4, **options)).model
    name = model.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        cuda = session(model, CUDA, tmp)
        if "CUDAExecutionProvider" not in cuda.get_providers():  # onnxruntime-gpu on a machine without a GPU
            print("ort_cuda_check: ONNX Runtime's CUDA provider does not run here (its error above: no GPU, or CUDA or "
                  "cuDNN libraries missing)", file=sys.stderr)
            sys.exit(2)
        got = cuda.run(None, {name: x})[0]
        profile = Path(cuda.end_profiling())
        providers = snn_node_providers(profile, model)
    cuda = session(model, CUDA)
    cpu = session(model, ["CPUExecutionProvider"])
    expected = cpu.run(None, {name: x})[0]
    return {
        "variant": variant,
        "runtime": runtime_description(model),
        "session_providers": cuda.get_providers(),
        "snn_node_providers": providers,
        "on_cuda": bool(providers) and all(p == ["CUDAExecutionProvider"] for p in providers.values()),
        "same_class_fraction": float((got.argmax(1) == expected.argmax(1)).mean()),
        "max_abs_difference": float(np.abs(got - expected).max()),
        "ms_per_batch": {"cuda": best_ms(lambda: cuda.run(None, {name: x}), repeats),
                         "cpu": best_ms(lambda: cpu.run(None, {name: x}), repeats)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("ort_cuda_check: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)", file=sys.stderr)
        sys.exit(2)
    if native_library_path() is None:
        sys.exit("ort_cuda_check: native library not built (runtime/build.sh)")
    x = np.random.default_rng(0).random((args.batch, 1, 28, 28), dtype=np.float32)
    results = [check(variant, options, x, args.repeats) for variant, options in VARIANTS.items()]
    for r in results:
        print(f"ort_cuda_check: {r['variant']}: snn nodes on {r['snn_node_providers']}, same class "
              f"{r['same_class_fraction']:.3f}, {r['ms_per_batch']['cuda']:.2f} ms on CUDA, "
              f"{r['ms_per_batch']['cpu']:.2f} ms on the CPU", file=sys.stderr)
    print(json.dumps({"onnxruntime": ort.__version__, "batch": args.batch, "results": results}, indent=2))
    sys.exit(0 if all(r["on_cuda"] for r in results) else 1)


if __name__ == "__main__":
    main()
