"""Which ONNX Runtime wheel provides the `onnxruntime` package: checked when snncc is imported.

snncc needs exactly one: `onnxruntime` (pip install 'snncc[cpu]') or `onnxruntime-gpu` (pip install
'snncc[gpu]', which runs on the CPU too). Both install the same `onnxruntime` package into one
folder, so with both, whichever was installed last overwrites the other's files and the CUDA
execution provider may vanish (microsoft/onnxruntime#26996).

Invariant: importing snncc raises ImportError, naming both extras, when no distribution provides
`onnxruntime` and it cannot be imported; and warns, naming the distributions and the fix, when
more than one does.
"""

from __future__ import annotations

import importlib.util
import warnings
from importlib import metadata

INSTALL_HINT = "pip install 'snncc[cpu]' (CPU) or pip install 'snncc[gpu]' (onnxruntime-gpu: CUDA and CPU)"


class OnnxRuntimeWheelsWarning(RuntimeWarning):
    """More than one installed distribution provides the `onnxruntime` package."""


# The wheels of snncc's `cpu` and `gpu` extras; both provide the package `onnxruntime`.
WHEELS = ("onnxruntime", "onnxruntime-gpu")


def onnxruntime_distributions() -> list[str]:
    """Which of WHEELS are installed (looked up by name: a few milliseconds, where scanning every
    distribution's files for the `onnxruntime` package takes about half a second)."""
    return [name for name in WHEELS if any(True for _ in metadata.distributions(name=name))]


def check_onnxruntime_wheels(distributions: list[str] | None = None, importable: bool | None = None) -> None:
    """Raises ImportError when ONNX Runtime is missing, warns when several wheels provide it.
    Arguments default to this environment's (tests pass others)."""
    distributions = onnxruntime_distributions() if distributions is None else distributions
    if not distributions:
        if importable is None:
            importable = importlib.util.find_spec("onnxruntime") is not None
        if not importable:  # (an onnxruntime built from source may have no distribution metadata)
            raise ImportError(f"snncc needs ONNX Runtime, and none is installed: {INSTALL_HINT}")
    elif len(distributions) > 1:
        names = " ".join(distributions)
        warnings.warn(
            f"snncc: {len(distributions)} ONNX Runtime wheels are installed ({', '.join(distributions)}); they overwrite "
            f"each other's files, and the CUDA execution provider may be missing. Keep one: pip uninstall -y {names}, "
            f"then {INSTALL_HINT}", OnnxRuntimeWheelsWarning, stacklevel=3)
