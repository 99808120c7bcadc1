"""Where each value keeps its batch axis, and which ops are exact on spike trains: one rule per op.

In the spiking graph the batch axis of a spiking value holds T·B rows, time-major (step t owns
rows t·B..(t+1)·B-1), and a neuron reads only the T-mean of its input current. An op between
neurons therefore keeps the SNN equal to the quantised ANN when, applied to each time step on its
own, it is affine in its spiking inputs with coefficients that do not depend on them (DESIGN §1).
On the time-major layout "each step on its own" means: the op treats the batch axis as a batch
(it never mixes rows), and its output again has one axis whose outermost factor is the step.

Each op has one `Rule` in RULES:
- `layout(site)`: the batch axis of its outputs from those of its inputs (None: none), or raises
  NotExact when the op mixes the rows of the batch axis (a reduction over it, a Reshape that
  merges it with a preceding axis, a Conv whose batch axis is not axis 0, ...);
- `linear`: the inputs in which it is affine with coefficients independent of them ("all"
  inputs jointly, "each" one of them at a time, the listed ones, or none).
A value that carries no batch axis is a constant or a shape computation; the rules read its
contents as _shape_contents tracks them, so that a shape read of the batch (T·B in the spiking
graph) can be told apart from reads of H and W (the same in the SNN).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from snncc.passes._graph import const_array
from snncc.passes._shape_contents import BatchDim, Unknown, depends_on_batch


class NotExact(Exception):
    """The op mixes time steps or batch entries; the message says how."""


class FixedBatch(NotExact):
    """A constant part has the exported batch size: the graph runs at that batch size only."""


class LostUpstream(NotExact):
    """An input that must carry the batch does not: the node that lost it is reported instead."""


@dataclasses.dataclass
class Site:
    """One node as its rule sees it: the batch axis and tracked contents of each input."""

    node: ir.Node
    axes: list[int | None]
    elements: list[np.ndarray | None]
    static_batch: int | None = None  # the graph inputs' fixed batch size (batch-1 exports), if any
    batch_entry: int | None = None  # Reshape: index of the target entry that is the batch (set by the rule)

    def attr(self, name: str, default=None):
        attr = self.node.attributes.get(name)
        return default if attr is None else attr.value

    def input(self, index: int) -> ir.Value | None:
        return self.node.inputs[index] if index < len(self.node.inputs) else None

    def const(self, index: int) -> np.ndarray | None:
        return const_array(self.input(index))

    def rank(self, index: int = 0) -> int | None:
        value = self.input(index)
        return None if value is None or value.shape is None else len(value.shape)

    def dims(self, index: int = 0) -> list[int | None] | None:
        value = self.input(index)
        if value is None or value.shape is None:
            return None
        return [d if isinstance(d, int) else None for d in value.shape]

    def out_rank(self) -> int | None:
        shape = self.node.outputs[0].shape
        return None if shape is None else len(shape)

    def axis(self, index: int = 0) -> int:
        """The batch axis of a data input that must carry one."""
        axis = self.axes[index]
        if axis is None:
            raise LostUpstream("its input has lost its batch axis upstream")
        return axis

    def normalised(self, axes, rank: int | None) -> list[int]:
        if rank is None and any(int(a) < 0 for a in axes):
            raise NotExact("its axes are negative and the input's rank is unknown")
        return [int(a) + rank if int(a) < 0 else int(a) for a in axes]

    def const_axes(self, index: int, attr: str = "axes") -> list[int] | None:
        """Constant axes from an input (opset >= 13 style) or the attribute; None if absent."""
        if self.input(index) is not None:
            array = self.const(index)
            if array is None:
                raise NotExact("its axes are not constant")
            return self.normalised(array.reshape(-1).tolist(), self.rank())
        axes = self.attr(attr)
        return None if axes is None else self.normalised(list(axes), self.rank())


@dataclasses.dataclass(frozen=True)
class Rule:
    layout: Callable[[Site], int | None]
    linear: str | tuple[int, ...]  # "all" (jointly), "each" (one at a time), indices, or () (none)


# --- layout rules --------------------------------------------------------------------------------

def _data_axis(site: Site) -> int:
    """The batch axis of the first input that has one."""
    axis = next((a for a in site.axes if a is not None), None)
    if axis is None:
        raise LostUpstream("its input has lost its batch axis upstream")
    return axis


def keep_axis(site: Site) -> int | None:
    return site.axes[0]


def broadcast(site: Site) -> int | None:
    """Elementwise with numpy broadcasting: the inputs' batch axes must align in the output."""
    carrying = {a for a in site.axes if a is not None}
    rank = site.out_rank()
    ranks = [site.rank(i) for i in range(len(site.node.inputs))]
    if len(site.node.inputs) == 1 or (rank is None and len(carrying) == 1):
        return carrying.pop() if carrying else None  # ranks unknown: assume constants broadcast
    if rank is None:
        rank = max((r for r in ranks if r is not None), default=None)
    aligned = {a + rank - ranks[i] for i, a in enumerate(site.axes)
               if a is not None and rank is not None and ranks[i] is not None}
    if not aligned:
        if any(a is not None for a in site.axes):
            raise NotExact("the ranks of its inputs are unknown")
        return None
    if len(aligned) > 1:
        raise NotExact("its inputs carry the batch on different axes")
    axis = aligned.pop()
    for i, value in enumerate(site.node.inputs):
        dims = site.dims(i)
        if value is None or site.axes[i] is not None or dims is None:
            continue
        position = axis - (rank - len(dims))
        if 0 <= position < len(dims) and dims[position] not in (1, None):
            raise NotExact(f"operand '{value.name}' has size {dims[position]} along the batch axis: "
                           "it would not broadcast over T·B rows")
    return axis


def batch_first(site: Site) -> int:
    """Convolutions, pooling, depth/space rearrangements: axis 0 is their batch."""
    if site.axis(0) != 0:
        raise NotExact(f"its input carries the batch on axis {site.axis(0)}, but {site.node.op_type} "
                       "treats axis 0 as the batch")
    return 0


def not_channel_axis(site: Site) -> int:
    """Per-channel ops (BatchNormalization): coefficients vary along axis 1, so the batch must not be there."""
    if site.axis(0) == 1:
        raise NotExact("its input carries the batch on axis 1, where its per-channel coefficients vary")
    return site.axis(0)


def _removed_before(axis: int, removed: list[int]) -> int:
    return axis - sum(1 for r in removed if r < axis)


def reduce(site: Site) -> int | None:
    axis = site.axis(0)
    axes = site.const_axes(1)
    if not axes:
        if site.attr("noop_with_empty_axes", 0):
            return axis
        raise NotExact("it reduces over all axes, including the batch axis that carries the time steps")
    if axis in axes:
        raise NotExact("it reduces over the batch axis, which carries the time steps")
    return axis if site.attr("keepdims", 1) else _removed_before(axis, axes)


def reduce_along(default: int) -> Callable[[Site], int]:
    """ArgMax/ArgMin: one axis, reduced unless keepdims."""
    def rule(site: Site) -> int:
        axis = _along(site, default)
        along = site.normalised([site.attr("axis", default)], site.rank())[0]
        return axis if site.attr("keepdims", 1) else _removed_before(axis, [along])
    return rule


def _along(site: Site, default: int | None) -> int:
    """For ops that work along one axis (Concat, Split, Softmax): not the batch axis."""
    axis = _data_axis(site)
    along = site.attr("axis", default)
    if along is None:
        raise NotExact("its axis is not given")
    if site.normalised([along], site.rank())[0] == axis:
        raise NotExact("it works along the batch axis, which carries the time steps")
    return axis


def concat(site: Site) -> int:
    axis = _along(site, None)
    if any(a is None for a, v in zip(site.axes, site.node.inputs) if v is not None):
        raise FixedBatch("a part of it carries no batch axis: a constant or shape-computed part has a fixed batch size")
    if any(a != axis for a in site.axes):
        raise NotExact("its inputs carry the batch on different axes")
    return axis


def along_axis(default: int | None) -> Callable[[Site], int]:
    return lambda site: _along(site, default)


def cumsum(site: Site) -> int:
    axis = site.axis(0)
    along = site.const(1)
    if along is None:
        raise NotExact("its axis is not constant")
    if site.normalised(along.reshape(-1).tolist(), site.rank())[0] == axis:
        raise NotExact("it sums along the batch axis, which carries the time steps")
    return axis


def last_two_axes(site: Site) -> int:
    """Trilu works on the last two axes; the batch must be before them."""
    rank = site.rank()
    if rank is None or site.axis(0) >= rank - 2:
        raise NotExact("it works on the batch axis")
    return site.axis(0)


def transpose(site: Site) -> int:
    axis = site.axis(0)
    perm = site.attr("perm")
    rank = site.rank()
    if perm is None:
        if rank is None:
            raise NotExact("its rank is unknown")
        perm = list(reversed(range(rank)))
    return list(perm).index(axis)


def squeeze(site: Site) -> int:
    axis = site.axis(0)
    axes = site.const_axes(1)
    if axes is None:
        dims = site.dims()
        if dims is None or None in dims:
            raise NotExact("it squeezes unknown axes")
        axes = [i for i, d in enumerate(dims) if d == 1]
    if axis in axes:
        raise NotExact("it squeezes the batch axis")
    return _removed_before(axis, axes)


def unsqueeze(site: Site) -> int:
    axis = site.axis(0)
    rank = site.rank()
    axes = site.const_axes(1)
    if rank is None or axes is None:
        raise NotExact("its rank or axes are unknown")
    out_rank = rank + len(axes)
    inserted = {a + out_rank if a < 0 else a for a in axes}
    kept = [i for i in range(out_rank) if i not in inserted]
    return kept[axis]


def slice_(site: Site) -> int:
    axis = site.axis(0)
    axes = site.const_axes(3)
    if axes is None:
        starts = site.elements[1]
        axes = list(range(starts.size if starts is not None else site.rank() or 0))
    if axis not in axes:
        return axis
    raise NotExact("it slices the batch axis, which carries the time steps")


def gather(site: Site) -> int:
    axis = site.axis(0)
    along = site.normalised([site.attr("axis", 0)], site.rank())[0]
    if along == axis:
        raise NotExact("it gathers along the batch axis, which carries the time steps")
    indices = site.input(1)
    if site.axes[1] is not None or indices is None or indices.shape is None:
        raise NotExact("its indices are not a constant of known shape")
    return axis if axis < along else axis + len(indices.shape) - 1


def gather_nd(site: Site) -> int:
    axis = site.axis(0)
    indices = site.input(1)
    if site.attr("batch_dims", 0) != 0:
        raise NotExact("batch_dims > 0")
    if site.axes[1] is not None or indices is None or indices.shape is None or not isinstance(indices.shape[-1], int):
        raise NotExact("its indices are not a constant of known shape")
    depth = indices.shape[-1]
    if axis < depth:
        raise NotExact("its indices address the batch axis, which carries the time steps")
    return len(indices.shape) - 1 + axis - depth


def _batch_unchanged(site: Site, entries, what: str) -> None:
    """A per-axis factor (1) or size (the batch read from the input, or the exported static batch,
    which make_batch_dynamic then reads from the input) that leaves the batch axis as it is."""
    axis = site.axis(0)
    if entries is None:
        return
    entry = np.asarray(entries, dtype=object).reshape(-1)[axis]
    if what == "factor":
        if entry != 1:
            raise NotExact(f"its factor for the batch axis is {entry}, not 1")
    elif not (isinstance(entry, BatchDim) or (site.static_batch is not None and entry == site.static_batch)):
        raise NotExact(f"its size for the batch axis ({entry}) is not the batch size read from its input")


def resize(site: Site) -> int:
    """Every Resize mode (nearest, linear, cubic) is a linear map with weights fixed by positions."""
    if site.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize" and site.const(1) is None:
        raise NotExact("its crop box is not constant")
    scales, sizes = site.const(2), site.elements[3] if len(site.elements) > 3 else None
    if site.input(2) is not None and scales is None:
        raise NotExact("its scales are not constant")
    if scales is not None and scales.size:
        _batch_unchanged(site, scales.tolist(), "factor")
    elif site.input(3) is not None:
        if sizes is None:
            raise NotExact("its output sizes are not known")
        _batch_unchanged(site, sizes, "size")
    axes = site.attr("axes")
    if axes is not None and site.axis(0) in site.normalised(list(axes), site.rank()):
        raise NotExact("it resizes the batch axis")
    return site.axis(0)


def pad(site: Site) -> int:
    """Every Pad mode is a selection plus constants: exact unless it pads the batch axis. The pads
    may be computed from the input's H and W (TF "same" padding): they are the same in the SNN."""
    axis = site.axis(0)
    pads = site.elements[1]
    if pads is None:
        raise NotExact("its pads are not known")
    pads = list(pads.reshape(-1))
    if any(depends_on_batch(p) for p in pads):
        raise NotExact("its pads depend on the batch size")
    axes = site.const_axes(3) if site.input(3) is not None else list(range(len(pads) // 2))
    for a, begin, end in zip(axes, pads[: len(axes)], pads[len(axes):]):
        if a == axis and not all(isinstance(p, (int, np.integer)) and p == 0 for p in (begin, end)):
            raise NotExact("it pads the batch axis, which carries the time steps")
    return axis


def expand(site: Site) -> int | None:
    """Broadcast to a target shape: the batch axis must stay as it is (target 1 or the batch read
    from a tensor). A constant expanded to a read batch size (a class token) gains that axis."""
    entries = site.elements[1]
    if entries is None:
        raise NotExact("its target shape is not known")
    entries = list(entries.reshape(-1))
    if site.axes[0] is None:
        batch = [i for i, e in enumerate(entries) if isinstance(e, BatchDim)]
        return batch[0] if len(batch) == 1 else None
    axis = site.axes[0]
    position = axis + len(entries) - (site.rank() or 0)
    if 0 <= position < len(entries) and not (entries[position] == 1 or isinstance(entries[position], BatchDim)):
        raise NotExact(f"it expands the batch axis to {entries[position]}")
    return max(axis, position)


def tile(site: Site) -> int:
    repeats = site.const(1)
    if repeats is None:
        raise NotExact("its repeats are not constant")
    if repeats.reshape(-1)[site.axis(0)] != 1:
        raise NotExact("it repeats the batch axis")
    return site.axis(0)


def matmul(site: Site) -> int:
    """x @ W: rows stay rows; the batch axis must not be the contracted one."""
    spiking = [i for i in (0, 1) if site.axes[i] is not None]
    if len(spiking) != 1:
        raise NotExact("both of its operands carry a batch")
    index = spiking[0]
    rank, other = site.rank(index), site.rank(1 - index)
    if rank is None or other is None:
        raise NotExact("its ranks are unknown")
    axis = site.axes[index]
    contracted = rank - 1 if index == 0 else rank - 2
    if rank == 1 or axis == contracted:
        raise NotExact("it contracts the batch axis")
    out_rank = max(rank, other)
    return axis + out_rank - rank


def gemm(site: Site) -> int:
    if site.axes[0] is None or any(a is not None for a in site.axes[1:]):
        raise NotExact("its batch is not in its first operand alone")
    rows = 1 if site.attr("transA", 0) else 0
    if site.axes[0] != rows:
        raise NotExact("it contracts the batch axis")
    return 0


def einsum(site: Site) -> int:
    equation = site.attr("equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    if "..." in equation or "->" not in equation:
        raise NotExact("its equation has an ellipsis or no explicit output")
    terms, output = equation.replace(" ", "").split("->")
    terms = terms.split(",")
    carrying = [i for i, a in enumerate(site.axes) if a is not None]
    if len(carrying) != 1:
        raise NotExact("more than one of its operands carries a batch")
    index = carrying[0]
    letter = terms[index][site.axes[index]]
    if letter not in output or any(letter in t for i, t in enumerate(terms) if i != index):
        raise NotExact("it sums over or multiplies along the batch axis")
    return output.index(letter)


def reshape(site: Site) -> int:
    """A Reshape keeps the batch when the dims before it are only regrouped, and the batch axis is
    kept whole or merged with the dims after it (time stays its outermost factor).

    Also sets site.batch_entry to the target entry that holds the batch."""
    axis = site.axis(0)
    dims = site.dims(0)
    target = site.elements[1]
    if dims is None or target is None:
        raise NotExact("its input's rank or its target shape is not known")
    target = list(target.reshape(-1))
    allowzero = site.attr("allowzero", 0)
    entries = []
    for j, t in enumerate(target):
        if isinstance(t, (int, np.integer)) and t == 0 and not allowzero:
            t = dims[j] if j != axis else BatchDim(False)
            if t is None:
                raise NotExact("its target copies a dimension of unknown size")
        entries.append(t)
    if any(isinstance(t, Unknown) for t in entries):
        raise NotExact("its target shape is not known")
    if any(d is None for i, d in enumerate(dims) if i != axis):
        if axis == 0 and entries and isinstance(entries[0], BatchDim):
            # the batch read from a shape leads the target, as it leads the input: whatever the other
            # sizes, each output row is one input row (the element count is kept)
            site.batch_entry = 0
            return 0
        raise NotExact("its input has dimensions of unknown size")
    prefix = int(np.prod(dims[:axis], dtype=np.int64))
    suffix = int(np.prod(dims[axis + 1:], dtype=np.int64))
    for b, entry in enumerate(entries):
        before = entries[:b]
        if any(not isinstance(e, (int, np.integer)) or e < 0 for e in before):
            break
        if int(np.prod(before, dtype=np.int64)) != prefix:
            continue
        rest = entries[b + 1:]
        if any(not isinstance(e, (int, np.integer)) for e in rest):
            continue
        fixed = int(np.prod([e for e in rest if e != -1], dtype=np.int64))
        inferred = -1 in rest
        if isinstance(entry, BatchDim) or (site.static_batch is not None and entry == site.static_batch):
            fits = suffix % fixed == 0 if inferred else fixed == suffix
        else:
            fits = entry == -1 and not inferred and suffix % fixed == 0
        if fits:
            site.batch_entry = b
            return b
    raise NotExact(f"it regroups the batch axis with others (target {[str(e) for e in entries]}): "
                   "rows of different time steps would mix")


def flatten(site: Site) -> int:
    axis = site.axis(0)
    at = site.normalised([site.attr("axis", 1)], site.rank())[0]
    dims = site.dims()
    if at == 0:
        raise NotExact("Flatten(axis=0) merges the batch with a leading 1")
    if axis == 0 and at >= 1:
        return 0
    if dims is not None and at == axis and all(d == 1 for d in dims[:axis]):
        return 1
    raise NotExact("it merges the batch axis with the axes before it")


def not_a_tensor_op(site: Site) -> None:
    """Shape, Size: their outputs carry no batch axis (their contents are tracked)."""
    return None


def constant_of_shape(site: Site) -> int | None:
    shape = site.elements[0]
    if shape is None:
        return None
    batch = [i for i, e in enumerate(shape.reshape(-1)) if isinstance(e, BatchDim)]
    return batch[0] if len(batch) == 1 else None


def unknown(site: Site) -> int | None:
    if all(a is None for a in site.axes):
        return None
    raise NotExact(f"snncc has no rule for where {site.node.op_type} puts the batch axis")


# --- the table -------------------------------------------------------------------------------------

_AFFINE_ELEMENTWISE = {"Add": "all", "Sub": "all", "Sum": "all", "Neg": "all", "Identity": "all",
                       "Mul": "each", "Div": (0,), "Where": (1, 2)}
_NONLINEAR_ELEMENTWISE = ("Abs Acos Acosh And Asin Asinh Atan Atanh BitShift Cast CastLike Ceil Celu Clip Cos "
                          "Cosh Elu Equal Erf Exp Floor Gelu Greater GreaterOrEqual HardSigmoid HardSwish "
                          "IsInf IsNaN LeakyRelu Less LessOrEqual Log Max Mean Min Mish Mod Not Or Pow PRelu "
                          "Reciprocal Relu Round Selu Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Tan Tanh "
                          "ThresholdedRelu Xor").split()

RULES: dict[str, Rule] = {
    **{op: Rule(broadcast, linear) for op, linear in _AFFINE_ELEMENTWISE.items()},
    **{op: Rule(broadcast, ()) for op in _NONLINEAR_ELEMENTWISE},
    "Conv": Rule(batch_first, (0,)),
    "ConvTranspose": Rule(batch_first, (0,)),
    "AveragePool": Rule(batch_first, (0,)),
    "GlobalAveragePool": Rule(batch_first, (0,)),
    "MaxPool": Rule(batch_first, ()),  # exact only on the trains of one neuron layer: check_convertible
    "GlobalMaxPool": Rule(batch_first, ()),
    "LpPool": Rule(batch_first, ()), "GlobalLpPool": Rule(batch_first, ()),
    "LRN": Rule(batch_first, ()), "InstanceNormalization": Rule(batch_first, ()),
    "DepthToSpace": Rule(batch_first, (0,)),
    "SpaceToDepth": Rule(batch_first, (0,)),
    "BatchNormalization": Rule(not_channel_axis, (0,)),
    "MatMul": Rule(matmul, (0, 1)),
    "Gemm": Rule(gemm, (0,)),
    "Einsum": Rule(einsum, "each"),
    "ReduceMean": Rule(reduce, (0,)), "ReduceSum": Rule(reduce, (0,)),
    **{op: Rule(reduce, ()) for op in ("ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                                       "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
    "ArgMax": Rule(reduce_along(0), ()), "ArgMin": Rule(reduce_along(0), ()),
    "TopK": Rule(along_axis(-1), ()),
    "CumSum": Rule(cumsum, (0,)),
    "Trilu": Rule(last_two_axes, (0,)),
    "Dropout": Rule(keep_axis, (0,)),
    # per-tensor or per-axis (the `axis` attribute names the channel axis): elementwise, but rounding
    # (Quantize) on integers: exact on spikes only as a neuron (snncc.passes.match_qdq)
    "QuantizeLinear": Rule(keep_axis, ()), "DequantizeLinear": Rule(keep_axis, ()),
    "GroupNormalization": Rule(batch_first, ()), "MeanVarianceNormalization": Rule(batch_first, ()),
    "LpNormalization": Rule(along_axis(-1), ()),
    "Softmax": Rule(along_axis(-1), ()), "LogSoftmax": Rule(along_axis(-1), ()), "Hardmax": Rule(along_axis(-1), ()),
    "LayerNormalization": Rule(along_axis(-1), ()),
    "Concat": Rule(concat, "all"),
    "Split": Rule(along_axis(0), (0,)),
    "Slice": Rule(slice_, (0,)),
    "Gather": Rule(gather, (0,)),
    "GatherND": Rule(gather_nd, (0,)),
    "Transpose": Rule(transpose, (0,)),
    "Reshape": Rule(reshape, (0,)),
    "Flatten": Rule(flatten, (0,)),
    "Squeeze": Rule(squeeze, (0,)),
    "Unsqueeze": Rule(unsqueeze, (0,)),
    "Expand": Rule(expand, (0,)),
    "Tile": Rule(tile, (0,)),
    "Pad": Rule(pad, (0,)),
    "Resize": Rule(resize, (0,)),
    "Shape": Rule(not_a_tensor_op, "all"),  # reads metadata, not values: "linear" in nothing it reads
    "Size": Rule(not_a_tensor_op, "all"),
    "ConstantOfShape": Rule(constant_of_shape, ()),
}

# Inputs that may carry a batch read (an element equal to the batch size): target shapes and sizes.
SHAPE_OPERANDS = {("Reshape", 1), ("Expand", 1), ("Resize", 3), ("ConstantOfShape", 0)}


def rule_of(node: ir.Node) -> Rule:
    return RULES.get(node.op_type, Rule(unknown, ())) if node.domain == "" else Rule(unknown, ())


def linearity_problem(node: ir.Node, spiking: list[int]) -> str | None:
    """Why the op is not affine in its spiking inputs (with coefficients independent of them), or None."""
    linear = rule_of(node).linear
    if linear == "all" or (linear == "each" and len(spiking) == 1):
        return None
    if linear == "each":
        return "multiplies two spiking tensors (e.g. two activations): not linear in the spikes"
    if not linear:
        return (f"{node.op_type} is not affine in its spike inputs; only exact ops may sit between neurons "
                "(it may follow the last neuron, where it runs on the T-mean)")
    outside = [i for i in spiking if i not in linear]
    if outside:
        return (f"its input {outside[0]} is spiking, but {node.op_type} is affine only in input(s) "
                f"{', '.join(map(str, linear))} (e.g. a product of spiking tensors is not linear)")
    return None
