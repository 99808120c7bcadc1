"""Reading and writing model files: clear errors for bad input, atomic writes.

Invariant: a failed or interrupted write leaves no partial output file, and the input model is
never overwritten.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from snncc.errors import SnnccError

_PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model (with its external data), or raise SnnccError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SnnccError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise SnnccError(f"{path}: not a valid ONNX model ({type(error).__name__}: {error})".rstrip()) from None
    except FileNotFoundError as error:
        raise SnnccError(f"{path}: external data file missing: {error.filename}") from None
    if not model.graph.node:
        raise SnnccError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    return model


def model_input_shape(model: onnx.ModelProto, source: str) -> list:
    """The single data input's shape: ints for static dims, names (or None) for dynamic ones."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise SnnccError(f"{source}: the model has {len(inputs)} data inputs; snncc converts models with exactly one")
    dims = inputs[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def default_output(path: str | os.PathLike) -> Path:
    path = Path(path)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}.snn.onnx")


def check_output_path(output: Path, source: Path, force: bool) -> None:
    """Refuse outputs that would clobber the input, land in a missing folder, or overwrite silently."""
    if output.resolve() == source.resolve():
        raise SnnccError(f"{output}: the output path equals the input model; choose another with -o")
    if not output.parent.is_dir():
        raise SnnccError(f"{output}: the output folder {output.parent} does not exist")
    if output.exists() and not force:
        raise SnnccError(f"{output}: already exists (use --force to overwrite)")


def save_model(model: onnx.ModelProto, output: Path) -> None:
    """Write atomically: into a temporary file beside `output`, then rename.

    Models past protobuf's 2 GB limit are written with their tensors as external data
    (`<output>.data`).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        if model.ByteSize() < _PROTOBUF_LIMIT:
            onnx.save(model, tmp)
        else:
            data_name = f"{output.name}.data"
            onnx.save(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
