"""Name the batch dimensions of a compiled model after what they are, for Netron and other readers.

Shape inference leaves the time-major batch of a compiled SNN as an anonymous `unk__6` and keeps
stale names from the ANN. Which dimension is which follows from the graph alone: with the input's
batch fixed to a number B, inference gives every such dimension as a·B (a = 1: the batch; a = T:
the time-major batch T·B). Two probe values of B tell these apart from constants.

Invariant: `name_batch_dims` changes only symbolic or unknown dimensions of graph inputs, outputs and
value_infos; each becomes the input's batch name N when it is N, `T*N` when it is T·N (`a*N` for
another whole multiple a); every other dimension is left as it was.
"""

from __future__ import annotations

import onnx

_PROBES = (7, 11)  # coprime with each other, unlikely factors of a model's own shapes


def _data_inputs(model: onnx.ModelProto, data_inputs: set[str] | None) -> list[onnx.ValueInfoProto]:
    """The graph inputs that carry data: those named, else those without an initializer."""
    if data_inputs is None:
        data_inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name in data_inputs]


def _batch_name(model: onnx.ModelProto, data_inputs: set[str] | None) -> str | None:
    inputs = _data_inputs(model, data_inputs)
    dims = [i.type.tensor_type.shape.dim for i in inputs if i.type.tensor_type.shape.dim]
    names = {d[0].dim_param for d in dims if d[0].HasField("dim_param")}
    return names.pop() if len(names) == 1 and all(d[0].HasField("dim_param") for d in dims) else None


def _value_infos(graph: onnx.GraphProto):
    yield from graph.input
    yield from graph.output
    yield from graph.value_info


def _probe_shapes(model: onnx.ModelProto, batch: int, data_inputs: set[str] | None) -> dict[str, list]:
    """The inferred dims (protobuf messages, read only where needed) of every value at batch `batch`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    data = _data_inputs(probe, data_inputs)
    for value in data + list(probe.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()  # outputs: let inference fill them; inputs: set below
    for value in data:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_value = batch
    inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    return {v.name: v.type.tensor_type.shape.dim for v in _value_infos(inferred.graph)}


def _dim_value(dims, axis: int) -> int | None:
    """The number at `axis` of a probe's inferred dims, or None (not inferred, or not a number)."""
    if dims is None or axis >= len(dims) or not dims[axis].HasField("dim_value"):
        return None
    return dims[axis].dim_value


def name_batch_dims(model: onnx.ModelProto, steps: int, data_inputs: set[str] | None = None) -> None:
    """Rename, in place, the symbolic batch dimensions of `model` (see the module invariant).
    `data_inputs`: the graph inputs that carry data (default: those without an initializer), for a
    model whose weights are graph inputs (modelio.without_weights)."""
    batch_name = _batch_name(model, data_inputs)
    if batch_name is None:
        return
    try:
        small, large = (_probe_shapes(model, b, data_inputs) for b in _PROBES)
    except (onnx.shape_inference.InferenceError, ValueError):
        return  # the names are for readers; a graph that static inference cannot follow keeps its own
    for value in _value_infos(model.graph):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            a, b = (_dim_value(shapes.get(value.name), axis) for shapes in (small, large))
            if a is None or b is None:
                continue
            factor, rest = divmod(a, _PROBES[0])
            if rest or factor == 0 or b != factor * _PROBES[1]:
                continue
            dim.dim_param = batch_name if factor == 1 else "T*" + batch_name if factor == steps else f"{factor}*{batch_name}"
