"""Exports that are slow to make (torch, timm, tf2onnx) cached as ONNX files under .cache."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx


def cached_model(path: Path, make: Callable[[], onnx.ModelProto]) -> onnx.ModelProto:
    """The model at `path`, made by `make()` and written there atomically when absent (the caller
    puts a hash of everything the export depends on into the file name)."""
    if path.is_file():
        return onnx.load(path)
    model = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    onnx.save(model, tmp)
    os.replace(tmp, path)
    return model
