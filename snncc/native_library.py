"""What a built native op library holds, asked through its two C exports besides RegisterCustomOps
(ctypes; no ONNX Runtime session): the instruction-set variant of the CPU kernels that a session
would run, and whether it has CUDA kernels.

Invariant: answers come from the library itself, so they hold for the file that sessions register;
a library built before these exports existed is reported as such, not guessed about.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path


def cpu_variant(library: Path) -> str:
    """The CPU kernels' variant that a session created now would run (SNNCC_CPU_VARIANT, else the
    best one this CPU has: baseline, avx, avx2 or avx512), or the library's "error: ..." for an
    SNNCC_CPU_VARIANT it cannot run."""
    report = ctypes.CDLL(str(library)).SnnccCpuVariant
    report.restype = ctypes.c_char_p
    return report().decode()


def has_cuda_kernels(library: Path) -> bool:
    """Whether the library was built with its CUDAExecutionProvider kernels (nvcc found)."""
    return bool(ctypes.CDLL(str(library)).SnnccCudaKernels())


def describe(library: Path) -> str:
    """E.g. "CPU kernels: avx512; CUDA kernels: built", for snncc's runtime line."""
    try:
        variant, cuda = cpu_variant(library), has_cuda_kernels(library)
    except (AttributeError, OSError):
        return "kernel variants unknown: a library from before they were reported (rebuild: make native)"
    where = f" (SNNCC_CPU_VARIANT={os.environ['SNNCC_CPU_VARIANT']})" if os.environ.get("SNNCC_CPU_VARIANT") else ""
    return f"CPU kernels: {variant}{where}; CUDA kernels: {'built' if cuda else 'not built'}"
