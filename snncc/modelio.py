"""Reading and writing model files: clear errors for bad input, atomic writes.

Invariant: a failed or interrupted write leaves no partial output file, and the input model is
never overwritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from snncc.errors import SnnccError

_PROTOBUF_LIMIT = 2**31 - 1
_EXTERNAL_THRESHOLD = 1024  # bytes: smaller tensors stay inside the model file
_WEIGHT_BYTES = 1024  # initializers from this size on are left out of the checker's and shape inference's copy
# element types whose raw data is itemsize bytes per element (4-bit and string types are left in)
_ITEMSIZE = {getattr(onnx.TensorProto, name): size for name, size in (
    ("FLOAT", 4), ("DOUBLE", 8), ("FLOAT16", 2), ("BFLOAT16", 2), ("INT8", 1), ("INT16", 2), ("INT32", 4),
    ("INT64", 8), ("UINT8", 1), ("UINT16", 2), ("UINT32", 4), ("UINT64", 8), ("BOOL", 1))}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _inline_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors


def _forget_external_origin(model: onnx.ModelProto) -> None:
    """Tensors read back from external data keep an explicit `data_location: DEFAULT`; drop it so
    that a model compiles to the same bytes however its weights were stored."""
    for tensor in _inline_tensors(model):
        if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.DEFAULT:
            tensor.ClearField("data_location")


def _weight_bytes(tensor: onnx.TensorProto) -> int | None:
    """The raw-data size that a large inline tensor held in raw_data alone declares by its shape
    and type (None for any other tensor). Computed from the shape: reading raw_data copies it."""
    size = _ITEMSIZE.get(tensor.data_type)
    if size is None or not tensor.HasField("raw_data") or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    if any(len(getattr(tensor, field)) for field in _TYPED_FIELDS):
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * size if count * size >= _WEIGHT_BYTES else None


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data", "external_data")


def _copy_fields(source, target, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if _repeated(field):
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large raw-data initializers (`_weight_bytes`) are graph inputs of the
    same type and shape instead: onnx's checker and shape inference reach the same verdict and the
    same shapes on it, without serialising the weights (most of a big model's bytes). The checker
    would also compare each weight's data size with its shape: `check_weight_sizes` does that."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    inputs = {i.name for i in model.graph.input}
    for tensor in model.graph.initializer:
        if _weight_bytes(tensor) is None:
            skeleton.graph.initializer.append(tensor)
        elif tensor.name not in inputs:
            skeleton.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return skeleton


def check_weight_sizes(model: onnx.ModelProto) -> str | None:
    """The first initializer left out by `without_weights` whose raw data is not the size that its
    shape and type declare, described; None if all are."""
    for tensor in model.graph.initializer:
        declared = _weight_bytes(tensor)
        if declared is not None and len(tensor.raw_data) != declared:
            return (f"initializer '{tensor.name}' holds {len(tensor.raw_data)} bytes of raw data; "
                    f"its shape and type declare {declared}")
    return None


def _serialized_size_bound(model: onnx.ModelProto) -> int:
    """At least `model.ByteSize()`, computed without serialising the weights (protobuf's ByteSize
    encodes the whole message)."""
    # per weight: its bytes and name with tag and length prefixes, its dims and data type
    return without_weights(model).ByteSize() + sum(
        declared + len(t.name.encode()) + 11 * len(t.dims) + 24
        for t in model.graph.initializer if (declared := _weight_bytes(t)) is not None)


def _repeated(field) -> bool:
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def _items(field, value) -> list:
    return value if _repeated(field) else [value]


def _invalid_text(message) -> str | None:
    """The first string field that is not valid UTF-8 (protobuf hands such fields over as bytes)."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for item in _items(field, value):
                found = _invalid_text(item)
                if found:
                    return found
        elif field.type == field.TYPE_STRING:
            for item in _items(field, value):
                if isinstance(item, bytes):
                    return f"{message.DESCRIPTOR.name}.{field.name} = {item!r}"
    return None


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model (with its external data) and check it, or raise SnnccError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise SnnccError(f"{path}: is a folder, not an ONNX model file")
    if not path.is_file():
        raise SnnccError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeWarning) as error:
        raise SnnccError(f"{path}: not a valid ONNX model ({_one_line(error)})") from None
    except (onnx.checker.ValidationError, ValueError, OSError) as error:
        # external data: missing or short file, a location outside the model's folder
        raise SnnccError(f"{path}: cannot read the model's external data ({_one_line(error)})") from None
    if not model.graph.node:
        raise SnnccError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    bad_text = _invalid_text(model)
    if bad_text:
        raise SnnccError(f"{path}: not a valid ONNX model (a name or string is not UTF-8: {bad_text})")
    _forget_external_origin(model)
    bad_size = check_weight_sizes(model)
    if bad_size:
        raise SnnccError(f"{path}: not a valid ONNX model ({bad_size})")
    try:
        # with shape inference (a wrong attribute or weight shape)
        onnx.checker.check_model(without_weights(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as error:
        raise SnnccError(f"{path}: not a valid ONNX model ({_one_line(error)})") from None
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


def check_output_file(path: Path, overwrite: bool, overwrite_hint: str = "use --force to overwrite") -> None:
    """SnnccError unless `path` can become a file: its folder exists, no folder is in the way, and
    no file is (unless `overwrite`; the error names `overwrite_hint`)."""
    if not path.parent.is_dir():
        raise SnnccError(f"{path}: the output folder {path.parent} does not exist")
    if path.is_dir():
        raise SnnccError(f"{path}: is a folder, not a file")
    if path.exists() and not overwrite:
        raise SnnccError(f"{path}: already exists ({overwrite_hint})")


def check_output_path(output: Path, source: Path, force: bool) -> None:
    """Refuse outputs that would clobber the input, land in a missing folder, or overwrite silently."""
    if output.resolve() == source.resolve():
        raise SnnccError(f"{output}: the output path equals the input model; choose another with -o")
    if output.is_dir():
        raise SnnccError(f"{output}: is a folder; name the output file with -o")
    check_output_file(output, force)
    try:  # find an unwritable folder now, not after the compilation
        os.rmdir(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    except OSError as error:
        raise SnnccError(f"{output}: cannot write ({_one_line(error)})") from None


def save_model(model: onnx.ModelProto, output: Path) -> None:
    """Write atomically: into a temporary folder beside `output`, then rename.

    Models past protobuf's 2 GB limit are written with their tensors as external data
    (`<output>.data`, renamed into place before the model file). `model` is left as it was.
    """
    output = Path(output)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    except OSError as error:
        raise SnnccError(f"{output}: cannot write ({_one_line(error)})") from None
    try:
        staged = staging / output.name
        if _serialized_size_bound(model) < _PROTOBUF_LIMIT:
            onnx.save(model, staged)
        else:
            data_name = f"{output.name}.data"
            try:
                onnx.save(model, staged, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name,
                          size_threshold=_EXTERNAL_THRESHOLD)
            finally:
                # onnx moved the tensors out of `model` into the file: read them back in
                onnx.load_external_data_for_model(model, str(staging))
                _forget_external_origin(model)
            if (staging / data_name).exists():
                os.replace(staging / data_name, output.with_name(data_name))
        os.replace(staged, output)
    except OSError as error:
        raise SnnccError(f"{output}: cannot write ({_one_line(error)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
