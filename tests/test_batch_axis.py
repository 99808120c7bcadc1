"""The per-op rules of snncc/passes/_batch_axis.py against a numpy/ONNX Runtime reference.

For each op, random non-negative sorted spike trains x_1..x_T (B samples each, the batch on the
case's axis) go through the op alone on ONNX Runtime:
- exact in the mean: mean_t op(x_t) == op(mean_t x_t) (Theorem 4.1 needs nothing else);
- time-major: op applied once to the T steps concatenated along the batch axis (T·B rows, as the
  spiking graph runs it) must give the per-step results as T blocks along the output axis that
  the analysis predicts.
An accepted op must pass both; for a refused op, no output axis may pass both (it is really not
exact on time-major trains), and its node must be named with a reason.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from snncc.compiler import analyse_activations, to_ir
from snncc.passes._dataflow import analyse
from snncc.passes._graph import source_of
from snncc.passes.check_convertible import find_problems
from tests import graphs

STEPS, BATCH = 3, 2


def _const(name: str, array: np.ndarray) -> str:
    kind = {"f": "float", "b": "bool"}.get(array.dtype.kind, "int64")
    values = ", ".join(repr(float(v)) if kind == "float" else str(int(v)) for v in array.reshape(-1))
    dims = ",".join(str(d) for d in array.shape)
    return f"{kind}[{dims}] {name} = {{{values}}}" if dims else f"{kind} {name} = {{{values}}}"


_RNG = np.random.default_rng(7)
_W = _RNG.normal(size=(3, 4)).astype(np.float32)
_CONVT = _RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
_MASK = _RNG.integers(0, 2, size=(1, 3, 4, 4)).astype(bool)
_GATHER_ND = np.array([[[0, 1], [2, 3]], [[3, 3], [1, 0]]], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Case:
    body: str  # ONNX text computing y from the spiking input a (and b, when `two`)
    shape: tuple[int, ...]  # one step of a, with BATCH at `axis`
    axis: int = 0
    consts: tuple[tuple[str, np.ndarray], ...] = ()
    two: bool = False


EXACT = {
    "gather": Case("y = Gather <axis: int = 2> (a, idx)", (BATCH, 3, 4, 4), consts=(("idx", np.array([3, 0, 0])),)),
    "gather_nd_batch_moved": Case("y = GatherND (a, idx)", (4, 4, BATCH, 3), axis=2, consts=(("idx", _GATHER_ND),)),
    "slice": Case("y = Slice (a, starts, ends, axes)", (BATCH, 3, 4, 4),
                  consts=(("starts", np.array([1, 0])), ("ends", np.array([3, 2])), ("axes", np.array([2, 3])))),
    "where_constant_mask": Case("y = Where (mask, a, c)", (BATCH, 3, 4, 4),
                                consts=(("mask", _MASK), ("c", np.array([0.25], np.float32)))),
    "where_two_spiking": Case("y = Where (mask, a, b)", (BATCH, 3, 4, 4), consts=(("mask", _MASK),), two=True),
    "resize_nearest": Case("y = Resize <mode: string = \"nearest\"> (a, , scales)", (BATCH, 3, 4, 4),
                           consts=(("scales", np.array([1, 1, 2, 2], np.float32)),)),
    "resize_linear": Case("y = Resize <mode: string = \"linear\"> (a, , scales)", (BATCH, 3, 4, 4),
                          consts=(("scales", np.array([1, 1, 1.5, 2], np.float32)),)),
    "resize_cubic": Case("y = Resize <mode: string = \"cubic\"> (a, , scales)", (BATCH, 3, 4, 4),
                         consts=(("scales", np.array([1, 1, 2, 2], np.float32)),)),
    "conv_transpose": Case("y = ConvTranspose <strides: ints = [2, 2]> (a, w)", (BATCH, 3, 4, 4), consts=(("w", _CONVT),)),
    "depth_to_space": Case("y = DepthToSpace <blocksize: int = 2> (a)", (BATCH, 4, 2, 2)),
    "space_to_depth": Case("y = SpaceToDepth <blocksize: int = 2> (a)", (BATCH, 3, 4, 4)),
    "pad_constant": Case("y = Pad (a, pads, value)", (BATCH, 3, 4, 4),
                         consts=(("pads", np.array([0, 0, 1, 2, 0, 1, 0, 1])), ("value", np.array(0.5, np.float32)))),
    "pad_reflect": Case("y = Pad <mode: string = \"reflect\"> (a, pads)", (BATCH, 3, 4, 4),
                        consts=(("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1])),)),
    "einsum_constant": Case("y = Einsum <equation: string = \"nchw,cd->ndhw\"> (a, w)", (BATCH, 3, 4, 4), consts=(("w", _W),)),
    "transpose_batch_inward": Case("y = Transpose <perm: ints = [2, 3, 0, 1]> (a)", (BATCH, 3, 4, 4)),
    "reshape_merge_batch_with_rows": Case("y = Reshape (a, target)", (BATCH, 3, 4, 4), consts=(("target", np.array([-1, 4])),)),
    "reshape_batch_second": Case("y = Reshape (a, target)", (3, BATCH, 4, 4), axis=1, consts=(("target", np.array([3, -1, 8, 2])),)),
    "matmul_batch_middle": Case("y = MatMul (a, w)", (4, BATCH, 3), axis=1, consts=(("w", _W),)),
    "flatten": Case("y = Flatten (a)", (BATCH, 3, 4, 4)),
    "concat_two_spiking": Case("y = Concat <axis: int = 1> (a, b)", (BATCH, 3, 4, 4), two=True),
    "reduce_mean_spatial": Case("y = ReduceMean <keepdims: int = 0> (a, axes)", (BATCH, 3, 4, 4), consts=(("axes", np.array([2, 3])),)),
    "add_two_spiking": Case("y = Add (a, b)", (BATCH, 3, 4, 4), two=True),
    "cumsum": Case("y = CumSum (a, along)", (BATCH, 3, 4, 4), consts=(("along", np.array(2)),)),
    "trilu": Case("y = Trilu (a)", (BATCH, 3, 4, 4)),
}

NOT_EXACT = {
    "pool_batch_on_spatial_axis": Case("y = AveragePool <kernel_shape: ints = [2, 2]> (a)", (3, 4, BATCH, 4), axis=2),
    "reshape_merge_batch_with_preceding": Case("y = Reshape (a, target)", (3, BATCH, 4, 4), axis=1,
                                               consts=(("target", np.array([-1, 4, 4])),)),
    "reduce_over_batch": Case("y = ReduceMean <keepdims: int = 0> (a, axes)", (BATCH, 3, 4, 4), consts=(("axes", np.array([0])),)),
    "product_of_two_spiking": Case("y = Mul (a, b)", (BATCH, 3, 4, 4), two=True),
    "gather_along_batch": Case("y = Gather <axis: int = 0> (a, idx)", (BATCH, 3, 4, 4), consts=(("idx", np.array([1, 0])),)),
    "resize_batch_axis": Case("y = Resize <mode: string = \"linear\"> (a, , scales)", (BATCH, 3),
                              consts=(("scales", np.array([2, 1], np.float32)),)),
    "pad_batch_axis": Case("y = Pad (a, pads)", (BATCH, 3, 4, 4), consts=(("pads", np.array([1, 0, 0, 0, 0, 0, 0, 0])),)),
    "cumsum_over_batch": Case("y = CumSum (a, along)", (BATCH, 3, 4, 4), consts=(("along", np.array(0)),)),
    "sigmoid": Case("y = Sigmoid (a)", (BATCH, 3, 4, 4)),
    "lrn": Case("y = LRN <size: int = 3> (a)", (BATCH, 3, 4, 4)),
    "softmax_over_batch": Case("y = Softmax <axis: int = 0> (a)", (BATCH, 3)),
    "matmul_contracting_batch": Case("y = MatMul (a, w)", (4, 3, BATCH), axis=2,
                                     consts=(("w", _RNG.normal(size=(BATCH, 5)).astype(np.float32)),)),
    "einsum_summing_batch": Case("y = Einsum <equation: string = \"nc,cd->cd\"> (a, w)", (BATCH, 3), consts=(("w", _W),)),
}


def _dims(case: Case, batch: str) -> str:
    return ",".join(batch if i == case.axis else str(d) for i, d in enumerate(case.shape))


def _op_model(case: Case) -> onnx.ModelProto:
    inputs = ", ".join(f"float[{_dims(case, 'N')}] {name}" for name in ("a", "b")[: 1 + case.two])
    consts = ", ".join(_const(name, array) for name, array in case.consts)
    proto = graphs.model(f"g ({inputs}) => (float y) <{consts}> {{ {case.body} }}" if consts else
                         f"g ({inputs}) => (float y) {{ {case.body} }}")
    proto.graph.output[0].type.tensor_type.ClearField("shape")
    return proto


def _between_neurons(case: Case):
    """Relu -> (Transpose putting the batch on the case's axis) -> op -> Relu, analysed as compile does."""
    first = (case.shape[case.axis],) + tuple(d for i, d in enumerate(case.shape) if i != case.axis)
    perm = list(range(1, len(case.shape)))
    perm.insert(case.axis, 0)
    lines = []
    for name in ("a", "b")[: 1 + case.two]:
        lines.append(f"r_{name} = Relu (x_{name})")
        lines.append(f"{name} = Transpose <perm: ints = {perm}> (r_{name})" if case.axis else f"{name} = Identity (r_{name})")
    dims = ",".join(["N"] + [str(d) for d in first[1:]])
    inputs = ", ".join(f"float[{dims}] x_{name}" for name in ("a", "b")[: 1 + case.two])
    consts = f"<{', '.join(_const(n, a) for n, a in case.consts)}>" if case.consts else ""
    text = f"g ({inputs}) => (float z) {consts} {{ {' '.join(lines)} {case.body} z = Relu (y) }}"
    proto = graphs.model(text)
    proto.graph.output[0].type.tensor_type.ClearField("shape")
    model = analyse_activations(to_ir(proto))
    op = next(n for n in model.graph if any(v.name == "y" for v in n.outputs))
    return model, op


def _trains(case: Case, rng) -> np.ndarray:
    """[T, *shape]: sorted binary trains, each of one value θ > 0, firing in the last k steps."""
    theta = rng.uniform(0.5, 2.0, size=case.shape).astype(np.float32)
    counts = rng.integers(0, STEPS + 1, size=case.shape)
    steps = np.arange(1, STEPS + 1).reshape((-1,) + (1,) * len(case.shape))
    return np.where(steps > STEPS - counts, theta, 0).astype(np.float32)


def _run(session, case: Case, a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    feeds = {"a": a} if b is None else {"a": a, "b": b}
    return session.run(None, feeds)[0]


def _exactness(case: Case) -> tuple[bool, list[int]]:
    """(mean_t op(x_t) == op(mean_t x_t), the output axes along which the time-major run gives the steps)."""
    rng = np.random.default_rng(3)
    session = ort.InferenceSession(_op_model(case).SerializeToString(), providers=["CPUExecutionProvider"])
    xa = _trains(case, rng)
    xb = _trains(case, rng) if case.two else None
    per_step = [_run(session, case, xa[t], None if xb is None else xb[t]) for t in range(STEPS)]
    mean_of_steps = np.mean(per_step, axis=0)
    of_mean = _run(session, case, xa.mean(0), None if xb is None else xb.mean(0))
    in_mean = mean_of_steps.shape == of_mean.shape and np.allclose(mean_of_steps, of_mean, rtol=1e-5, atol=1e-5)
    stacked = [np.concatenate(list(x), axis=case.axis) for x in (xa, xb) if x is not None]
    try:
        time_major = _run(session, case, *stacked) if case.two else _run(session, case, stacked[0], None)
    except Exception:  # noqa: BLE001 - the op cannot even run on T·B rows
        return in_mean, []
    axes = []
    for axis in range(time_major.ndim):
        if time_major.shape[axis] % STEPS == 0:
            blocks = np.split(time_major, STEPS, axis=axis)
            if all(b.shape == s.shape and np.allclose(b, s, rtol=1e-5, atol=1e-5) for b, s in zip(blocks, per_step)):
                axes.append(axis)
    return in_mean, axes


@pytest.mark.parametrize("name", list(EXACT))
def test_accepted_op_is_exact_on_time_major_trains(name):
    case = EXACT[name]
    model, op = _between_neurons(case)
    problems = [p for p in find_problems(model.graph) if p.node == source_of(op)]
    assert problems == [], problems
    predicted = analyse(model.graph).batch_axis[op.outputs[0]]
    in_mean, axes = _exactness(case)
    assert in_mean, f"{name}: mean over steps differs from the op on the mean"
    assert predicted in axes, f"{name}: the time-major run gives the steps along {axes}, the analysis says {predicted}"


@pytest.mark.parametrize("name", list(NOT_EXACT))
def test_refused_op_is_really_not_exact(name):
    case = NOT_EXACT[name]
    model, op = _between_neurons(case)
    problems = [p for p in find_problems(model.graph) if p.node == source_of(op)]
    assert len(problems) == 1 and problems[0].reason, problems
    in_mean, axes = _exactness(case)
    assert not (in_mean and axes), f"{name} is refused, but is exact along output axis {axes}"
