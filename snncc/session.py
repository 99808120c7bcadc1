"""ONNX Runtime sessions for compiled models.

Invariant: a session always runs (the `snn` ops fall back to their model-local functions); it
uses the native op library when one is found and `SNNCC_NATIVE` is not `0`, and the CUDA execution
provider when ONNX Runtime offers it.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxruntime as ort

from snncc.errors import SnnccError
from snncc.native_library import describe as describe_library

_LIBRARY_NAME = "libsnncc_ops.so"
_REPO_ROOT = Path(__file__).resolve().parent.parent

# The `snn` ops that the native library implements, by execution provider and element type
# (runtime/README.md); every other `snn` op runs as its model-local function.
NATIVE_KERNELS = {
    "ParallelSpike": {"CPUExecutionProvider": ("float32", "float64", "float16"),
                      "CUDAExecutionProvider": ("float32", "float16")},
    "SerialIF": {"CPUExecutionProvider": ("float32",), "CUDAExecutionProvider": ("float32",)},
    "SpikeCount": {"CPUExecutionProvider": ("float32", "float64", "float16"),
                   "CUDAExecutionProvider": ("float32", "float16")},
}


def native_library_path() -> Path | None:
    """The native `snn` op library to register, or None (absent, or disabled by SNNCC_NATIVE=0);
    SnnccError when SNNCC_NATIVE_LIB names a file that does not exist."""
    if os.environ.get("SNNCC_NATIVE", "1") == "0":
        return None
    chosen = os.environ.get("SNNCC_NATIVE_LIB")
    if chosen:
        if not Path(chosen).is_file():
            raise SnnccError(f"SNNCC_NATIVE_LIB={chosen}: no such file (unset it to use the library built by "
                             "`make native`, or set SNNCC_NATIVE=0 to run the ops' ONNX functions)")
        return Path(chosen)
    candidates = [
        Path(__file__).resolve().parent / _LIBRARY_NAME,
        _REPO_ROOT / "runtime" / "build" / _LIBRARY_NAME,
    ]
    return next((p for p in candidates if p.is_file()), None)


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build offers it, the CPU always."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def make_session(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    native: bool | None = None,
    providers: list[str] | None = None,
    threads: int | None = None,
    cpu_layout: bool = False,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An InferenceSession for `model`; native=None registers the library when present. With
    cpu_layout, a session on the CPU provider alone with the library runs the model with its neurons
    kept in ONNX Runtime's NCHWc layout (snncc.cpu_layout: fewer copies, the same outputs to float
    rounding). spinning=False: idle intra-op threads sleep instead of spinning, which saves CPU
    time in runs of many small ops (calibration graphs at small batches)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no "unused initializer" chatter around our output
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    library = native_library_path() if native in (None, True) else None
    if native and library is None:
        raise FileNotFoundError(f"native library {_LIBRARY_NAME} not found (build it with `make native`)")
    if library is not None:
        options.register_custom_ops_library(str(library))
    providers = providers or default_providers()
    if cpu_layout and library is not None and providers == ["CPUExecutionProvider"]:
        from snncc.cpu_layout import prepare_for_cpu

        model = prepare_for_cpu(model if isinstance(model, onnx.ModelProto) else onnx.load(model), library)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=providers)


def runtime_description(model: onnx.ModelProto | None = None) -> str:
    """One line saying which implementation of the `snn` ops a session will use: for `model`, of
    the `snn` ops in its graph, else of all of them."""
    library = native_library_path()
    where = ", ".join(default_providers())
    if library is None:
        return f"snn ops: model-local ONNX functions (no native library); providers: {where}"
    if model is None:
        from snncc.ops import DOMAIN, function_library

        op_types = {f.name for f in function_library() if f.domain == DOMAIN}
    else:
        from snncc.ops import DOMAIN

        op_types = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    native = sorted(op_types & NATIVE_KERNELS.keys())
    functions = sorted(op_types - NATIVE_KERNELS.keys())
    parts = [f"native kernels: {', '.join(native)}"] if native else []
    parts += [f"model-local functions: {', '.join(functions)}"] if functions else []
    parts = (parts or ["no snn ops"]) + [describe_library(library)]
    return f"snn ops: native library {library} ({'; '.join(parts)}); providers: {where}"
