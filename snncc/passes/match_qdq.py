"""Match the quantised activations of QDQ models: QuantizeLinear -> DequantizeLinear pairs.

A pair with scale s, zero point z and integer range [q_min, q_max] computes
``s · clip(round(x / s), lo, hi)`` with lo = q_min − z, hi = q_max − z, rounding half to even.
- lo = 0 (uint8 / uint4 with zero point 0), or lo < 0 right after a ReLU: a uniform quantiser from 0
  with hi levels, i.e. QCFS with θ = s·hi and T̃ = hi. It becomes one QCFS activation (the ReLU
  merged into it). QCFS rounds half up: the two differ only where x / s lies exactly half-way
  between two levels (an odd-to-even tie), which float inputs hit rarely.
- A pair whose input already lies on its grid (the output of an activation or pair with the same
  scale, zero point and type, through MaxPool or reshapes; onnxruntime.quantization puts one after
  every MaxPool and Flatten) is the identity there: it is removed.
- A pair on a graph input quantises the analog input, the same at every step: it stays.
- Any other pair (a signed range: e.g. before a residual Add) stays; between neurons it is not
  exact on spikes, and check_convertible refuses it, naming it (`signed_pair_problem`). With
  `drop_signed=True` such pairs are removed instead and the SNN only approximates the QDQ model;
  the model metadata `snncc.qdq` says so and lists them.

Invariant after the pass: every QDQ activation is a QCFS `snncc.internal::Activation` node whose
metadata names the Q and DQ nodes it replaces; `snncc.qdq` (model metadata) counts what was done.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import onnx_ir as ir

from snncc.passes._activation import INTERNAL_DOMAIN, OP_TYPE, QCFS, RELU, Activation, is_activation, read_activation
from snncc.passes._dataflow import analyse
from snncc.passes._graph import const_array, source_of, tag
from snncc.passes.canonicalize_qdq import attribute, is_qdq

PASS_NAME = "match_qdq"
METADATA_KEY = "snncc.qdq"
DROP_OPTION = "--drop-signed-qdq"

_INTEGER_RANGES = {
    ir.DataType.UINT8: (0, 255), ir.DataType.INT8: (-128, 127),
    ir.DataType.UINT16: (0, 65535), ir.DataType.INT16: (-32768, 32767),
    ir.DataType.UINT4: (0, 15), ir.DataType.INT4: (-8, 7),
}
# Ops whose output values are a selection of their input values (so a grid is kept).
_GRID_KEEPING = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"})


@dataclasses.dataclass(frozen=True)
class Pair:
    """One QuantizeLinear whose every use is a DequantizeLinear with the same parameters."""

    quantize: ir.Node
    dequantize: list[ir.Node]
    scale: np.ndarray
    zero_point: np.ndarray
    dtype: ir.DataType
    axis: int

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        q_min, q_max = _INTEGER_RANGES[self.dtype]
        zero = self.zero_point.astype(np.int64)
        return q_min - zero, q_max - zero

    def grid(self) -> tuple:
        """What identifies the values this pair can output."""
        return (self.scale.tobytes(), self.zero_point.astype(np.int64).tobytes(), self.dtype, self.axis)

    def names(self) -> list[str]:
        return [self.quantize.name] + [n.name for n in self.dequantize]


def _quantised_type(quantize: ir.Node) -> ir.DataType:
    zero_point = quantize.inputs[2] if len(quantize.inputs) > 2 else None
    if zero_point is not None and zero_point.type is not None:
        return zero_point.type.dtype
    return ir.DataType(attribute(quantize, "output_dtype", ir.DataType.UINT8))


def _same(a: ir.Value | None, b: ir.Value | None) -> bool:
    if a is b:
        return True
    x, y = const_array(a), const_array(b)
    return x is not None and y is not None and x.shape == y.shape and bool(np.all(x == y))


def find_pair(quantize: ir.Node) -> Pair | None:
    """The pair starting at this QuantizeLinear, or None (dynamic parameters, other uses, other types)."""
    if not is_qdq(quantize, "QuantizeLinear") or attribute(quantize, "block_size", 0) != 0:
        return None
    out = quantize.outputs[0]
    users = [use.node for use in out.uses()]
    zero_value = quantize.inputs[2] if len(quantize.inputs) > 2 else None
    if out.is_graph_output() or not users or any(
            not is_qdq(n, "DequantizeLinear") or not _same(n.inputs[1], quantize.inputs[1])
            or not _same(n.inputs[2] if len(n.inputs) > 2 else None, zero_value)
            or attribute(n, "axis", 1) != attribute(quantize, "axis", 1) for n in users):
        return None
    scale = const_array(quantize.inputs[1])
    dtype = _quantised_type(quantize)
    zero_point = const_array(zero_value) if zero_value is not None else np.zeros(1, np.int64)
    if scale is None or zero_point is None or dtype not in _INTEGER_RANGES or not np.all(scale > 0):
        return None
    rank = None if quantize.inputs[0].shape is None else len(quantize.inputs[0].shape)
    axis = attribute(quantize, "axis", 1)
    if scale.size > 1 and (rank is None or axis % rank != 1):
        return None  # per-axis quantisation along another axis than the channels
    return Pair(quantize, users, scale.reshape(-1).astype(np.float32),
                np.broadcast_to(zero_point.reshape(-1), scale.reshape(-1).shape).copy(), dtype, axis % (rank or 1))


def signed_pair_problem(node: ir.Node) -> str | None:
    """check_convertible's reason for a Q/DQ node left between neurons (None for a pair's DQ: the Q names it)."""
    if node.op_type == "DequantizeLinear" and node.inputs[0].producer() is not None \
            and node.inputs[0].producer().op_type == "QuantizeLinear":
        return None
    return ("a Q/DQ pair on a signed range (not a quantiser from 0, such as an activation) between neurons is not "
            f"exact on spike trains; pass {DROP_OPTION} to drop such pairs (the SNN then approximates the QDQ model)")


def _grid_source(value: ir.Value, grids: dict[ir.Value, tuple]) -> tuple | None:
    """The grid of `value`, found through ops that only select values (MaxPool, reshapes)."""
    while value not in grids:
        node = value.producer()
        if node is None or node.domain != "" or node.op_type not in _GRID_KEEPING:
            return None
        value = node.inputs[0]
    return grids[value]


def _merged_relu(value: ir.Value) -> ir.Node | None:
    """The ReLU activation producing `value` when nothing else reads it."""
    node = value.producer()
    if node is None or not is_activation(node) or read_activation(node).kind != RELU:
        return None
    return node if len(value.uses()) == 1 and not value.is_graph_output() else None


def _replace_by(graph: ir.Graph, pair: Pair, value: ir.Value) -> None:
    """Every DQ output of `pair` becomes `value`; the pair is removed."""
    for dequantize in pair.dequantize:
        out = dequantize.outputs[0]
        ir.convenience.replace_all_uses_with(out, value)
        if out.is_graph_output():
            graph.outputs[graph.outputs.index(out)] = value
    graph.remove(pair.dequantize + [pair.quantize], safe=True)


def _to_activation(graph: ir.Graph, pair: Pair, relu: ir.Node | None) -> ir.Value:
    levels = int(pair.bounds[1].reshape(-1)[0])
    record = Activation(QCFS, theta=(pair.scale * np.float32(levels)).astype(np.float32), levels=levels)
    x = relu.inputs[0] if relu is not None else pair.quantize.inputs[0]
    node = ir.node(OP_TYPE, [x], attributes=record.attributes(), domain=INTERNAL_DOMAIN)
    names = ([source_of(relu)] if relu is not None else []) + pair.names()
    scope = os.path.commonprefix(names).rpartition("/")[0]
    node.name = f"{scope}/{OP_TYPE}" if scope else f"{pair.quantize.name}_{OP_TYPE}"
    tag(node, PASS_NAME, ",".join(names), doc=f"QDQ activation: {levels} levels")
    out = node.outputs[0]
    out.name = f"{pair.quantize.name}_activation"
    out.shape, out.type = x.shape, x.type
    graph.insert_before(pair.quantize, node)
    _replace_by(graph, pair, out)
    if relu is not None:
        graph.remove(relu, safe=True)
    return out


class MatchQdqPass(ir.passes.InPlacePass):
    """Runs after MatchActivationsPass (ReLUs merge into the pairs after them)."""

    def __init__(self, drop_signed: bool = False):
        super().__init__()
        self.drop_signed = drop_signed

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        grids: dict[ir.Value, tuple] = {}
        counts = {"activations": 0, "identity_pairs": 0, "input_pairs": 0}
        left: list[Pair] = []
        for node in list(graph):
            pair = find_pair(node)
            if pair is None:
                continue
            x = node.inputs[0]
            lo, hi = pair.bounds
            relu = _merged_relu(x)
            if _grid_source(x, grids) == pair.grid():
                _replace_by(graph, pair, x)
                counts["identity_pairs"] += 1
            elif x.is_graph_input():
                grids[pair.dequantize[0].outputs[0]] = pair.grid()
                counts["input_pairs"] += 1
            elif np.all(hi >= 1) and np.all(hi == hi[0]) and (np.all(lo == 0) or (relu is not None and np.all(lo <= 0))):
                grids[_to_activation(graph, pair, relu)] = pair.grid()
                counts["activations"] += 1
            else:
                left.append(pair)
        flow = analyse(graph) if left else None
        between = [p for p in left if flow.is_between_neurons(p.quantize)]
        if self.drop_signed:
            for pair in between:
                _replace_by(graph, pair, pair.quantize.inputs[0])
        dropped = [p.quantize.name for p in between] if self.drop_signed else []
        if any(counts.values()) or left:
            summary = {**counts, "other_pairs": len(left) - len(dropped), "dropped_signed_pairs": dropped,
                       "exact": not dropped}
            model.metadata_props[METADATA_KEY] = json.dumps(summary, sort_keys=True)
        return ir.passes.PassResult(model, modified=any(counts.values()) or bool(dropped))


def qdq_summary(metadata: dict[str, str]) -> dict | None:
    """The pass's summary read back from model metadata, or None when the model had no Q/DQ pairs."""
    text = metadata.get(METADATA_KEY)
    return None if text is None else json.loads(text)
