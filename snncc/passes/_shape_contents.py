"""The contents of small integer tensors (shapes, pads, sizes), element by element.

Each element is an int (known), a `BatchDim` (exactly the batch size of a data value: T·B in the
spiking graph if read from a spiking tensor, else B) or an `Unknown` (computed; `batch` if it
depends on a batch size). Shape reads, Gather/Slice/Concat/Reshape/Transpose of them,
ConstantOfShape and elementwise arithmetic are followed; anything else is one Unknown for the
whole tensor.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from snncc.passes._graph import const_array


@dataclasses.dataclass(frozen=True)
class BatchDim:
    """A shape element equal to the batch size of a data value (T·B if `spiking`, else B)."""

    spiking: bool


@dataclasses.dataclass(frozen=True)
class Unknown:
    """A shape element of unknown value; `batch` if it depends on a batch size."""

    batch: bool
    spiking: bool = False


FREE = Unknown(False)
MAX_TRACKED = 64  # integer tensors up to this size are tracked element by element


def depends_on_batch(element) -> bool:
    return isinstance(element, BatchDim) or (isinstance(element, Unknown) and element.batch)


def read_from_spikes(element) -> bool:
    return isinstance(element, (BatchDim, Unknown)) and element.spiking


def _ints(array: np.ndarray | None) -> list[int] | None:
    if array is None or not all(isinstance(v, (int, np.integer)) for v in array.reshape(-1)):
        return None
    return [int(v) for v in array.reshape(-1)]


def _moved_elements(node: ir.Node, inputs: list[np.ndarray | None]) -> np.ndarray | None:
    """Ops that only move or pick elements (Gather, Slice, Concat, Reshape, Transpose, ...)."""
    op, data, attrs = node.op_type, inputs[0], node.attributes
    if data.ndim == 0 and isinstance(data.item(), Unknown):
        return None  # untracked contents: see _any
    out_shape = node.outputs[0].shape
    static_out = None if out_shape is None or not all(isinstance(d, int) for d in out_shape) else list(out_shape)
    if op == "Gather" and data.ndim == 1 and _ints(inputs[1]) is not None:
        indices = np.asarray(inputs[1].tolist(), dtype=np.int64)
        picked = np.empty(indices.shape, dtype=object)
        for index in np.ndindex(indices.shape):
            picked[index] = data[indices[index]]
        return picked
    if op == "Slice":
        params = [_ints(x) for x in inputs[1:]]
        if len(params) < 2 or any(p is None for p in params):
            return None
        starts, ends = params[0], params[1]
        axes = params[2] if len(params) > 2 else list(range(len(starts)))
        steps = params[3] if len(params) > 3 else [1] * len(starts)
        index = [slice(None)] * data.ndim
        for a, b, e, s in zip(axes, starts, ends, steps):
            index[a] = slice(b, e, s)
        return data[tuple(index)]
    if op == "Concat" and all(x is not None for x in inputs):
        axis = attrs["axis"].as_int()
        return np.concatenate(inputs, axis=axis)
    if op == "Transpose":
        perm = attrs["perm"].as_ints() if "perm" in attrs else None
        return np.transpose(data, perm)
    if op in ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "CastLike"):
        if op in ("Identity", "Cast", "CastLike"):
            return data
        if static_out is not None and int(np.prod(static_out, dtype=np.int64)) == data.size:
            return data.reshape(static_out)
        if data.size <= 1:
            return data.reshape(()) if op == "Squeeze" else data.reshape(-1)
    return None


_ELEMENTWISE_INT = frozenset({"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Ceil", "Floor", "Max", "Min",
                              "Clip", "Cast", "Where", "Equal", "Less", "Greater", "Not", "Sqrt", "Round",
                              "Identity", "Sign", "Reciprocal", "Pow", "CastLike"})


def constant_elements(value: ir.Value | None) -> np.ndarray | None:
    array = const_array(value)
    if array is None or array.size > MAX_TRACKED:
        return None
    return array.astype(object)


def _any(elements: list[np.ndarray | None]) -> Unknown:
    flat = [e for arr in elements if arr is not None for e in arr.reshape(-1)]
    return Unknown(any(depends_on_batch(e) for e in flat), any(read_from_spikes(e) for e in flat))


def shape_elements(node: ir.Node, inputs: list[np.ndarray | None], axes: list[int | None],
                   spiking: list[bool]) -> np.ndarray | None:
    """The contents of output 0 of a shape computation, element by element where it can tell."""
    op = node.op_type
    attrs = node.attributes
    if op == "Shape":
        value = node.inputs[0]
        if value.shape is None:
            return None
        dims = [BatchDim(spiking[0]) if i == axes[0] else (d if isinstance(d, int) else FREE)
                for i, d in enumerate(value.shape)]
        start = attrs["start"].as_int() if "start" in attrs else 0
        end = attrs["end"].as_int() if "end" in attrs else len(dims)
        return np.array(dims[start:end] + [None], dtype=object)[:-1]
    if op == "Size":
        return np.array(Unknown(axes[0] is not None, spiking[0]), dtype=object)
    if op == "ConstantOfShape" and inputs[0] is not None and all(isinstance(d, (int, np.integer)) for d in inputs[0].reshape(-1)):
        shape = [int(d) for d in inputs[0].reshape(-1)]
        fill = attrs["value"].as_tensor().numpy().reshape(-1)[0] if "value" in attrs else 0.0
        return np.full(shape, fill.item() if hasattr(fill, "item") else fill, dtype=object) if int(np.prod(shape)) <= MAX_TRACKED else None
    if inputs and inputs[0] is not None:
        moved = _moved_elements(node, inputs)
        if moved is not None:
            return moved
    if op in _ELEMENTWISE_INT and all(x is not None for x in inputs if x is not None):
        known = [x for x in inputs if x is not None]
        try:
            shape = np.broadcast_shapes(*(x.shape for x in known))
        except ValueError:
            return None
        out = np.empty(shape, dtype=object)
        for index in np.ndindex(shape):
            parts = [np.broadcast_to(x, shape)[index] for x in known]
            out[index] = _any([np.array(parts, dtype=object)])
        return out
    return np.array(_any(inputs), dtype=object)
