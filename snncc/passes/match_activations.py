"""Match the ANN's activations and replace each by one internal Activation node.

Recognised (after opset conversion and constant folding):
- QCFS chains as both torch exporters emit them,
  ``Div θ -> Clip 0,1 -> Mul T̃ -> Add 0.5 -> Floor -> Div T̃ -> Mul θ``, with commuted operands
  and multiply-by-reciprocal variants of both divisions;
- ``Relu``, ``Max(x, 0)``, ``Clip(x, 0)`` (ReLU) and ``Clip(x, 0, a)`` with a > 0 (ReLU6, ClipReLU).

Only float tensors on the data path are matched: a Clip(x, 0) or Max(x, 0) in integer or shape
arithmetic (e.g. "same" padding computed from the input's H and W) is not a neuron.

Invariant after the pass: each matched activation is a single `snncc.internal::Activation` node
whose attributes hold kind, θ, T̃ and clip bound, and whose metadata names the replaced nodes.
"""

from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RewriteRuleSet
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase

from snncc.passes._activation import CLIP, INTERNAL_DOMAIN, OP_TYPE, QCFS, RELU, Activation
from snncc.passes._dataflow import shape_or_constant_values
from snncc.passes._graph import const_array, tag

PASS_NAME = "match_activations"
_QCFS_STAGES = ("scaled", "clipped", "stretched", "shifted", "floored", "unstretched", "out")


def _close(a: float, b: float) -> bool:
    return bool(np.isclose(a, b, rtol=1e-6, atol=0.0))


def _channel_vector(array: np.ndarray, rank: int | None) -> np.ndarray | None:
    """A threshold constant as 1-D [1] or [C] when it broadcasts per channel (axis 1), else None."""
    if array.size == 1:
        return array.reshape(1).astype(np.float32)
    if rank is None or array.ndim > rank:
        return None
    shape = (1,) * (rank - array.ndim) + array.shape
    if rank < 2 or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return array.reshape(-1).astype(np.float32)


_FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


class _DataPathRule(RewriteRuleClassBase):
    """A rule that matches only activations of float tensors on the data path."""

    def __init__(self, not_data: set[ir.Value], name: str | None = None):
        super().__init__(name=name)
        self.not_data = not_data

    def off_data_path(self, x: ir.Value) -> str | None:
        if x in self.not_data:
            return "its input derives only from shapes and constants"
        if x.dtype is not None and x.dtype not in _FLOAT_TYPES:
            return f"its input is {x.dtype.name}, not a float tensor"
        return None


def _emit(op, x: ir.Value, record: Activation, matched: list[ir.Value]) -> ir.Value:
    out = op.Activation(x, _domain=INTERNAL_DOMAIN, **record.attributes())
    out.shape, out.type = x.shape, x.type  # elementwise; ONNX shape inference cannot see through it
    names = [v.producer().name or v.producer().op_type for v in matched if v.producer() is not None]
    node = tag(out.producer(), PASS_NAME, ",".join(names), doc=f"{record.kind} activation")
    scope = os.path.commonprefix(names).rpartition("/")[0]
    node.name = f"{scope}/{OP_TYPE}" if scope else f"{names[-1]}_{OP_TYPE}"
    return out


class QcfsChain(_DataPathRule):
    """QCFS: θ/T̃ · floor(clip(x/θ, 0, 1)·T̃ + 0.5), the form torch exporters emit."""

    def __init__(self, not_data: set[ir.Value], reciprocal_in: bool, reciprocal_out: bool):
        suffix = f"{'mul' if reciprocal_in else 'div'}_{'mul' if reciprocal_out else 'div'}"
        super().__init__(not_data, name=f"qcfs_{suffix}")
        self.reciprocal_in = reciprocal_in
        self.reciprocal_out = reciprocal_out

    def pattern(self, op, x, theta_in, lo, hi, levels_up, half, levels_down, theta_out):
        scale = op.Mul if self.reciprocal_in else op.Div
        y = scale(x, theta_in, _outputs=["scaled"])
        y = op.Clip(y, lo, hi, _outputs=["clipped"])
        y = op.Mul(y, levels_up, _outputs=["stretched"])
        y = op.Add(y, half, _outputs=["shifted"])
        y = op.Floor(y, _outputs=["floored"])
        unscale = op.Mul if self.reciprocal_out else op.Div
        y = unscale(y, levels_down, _outputs=["unstretched"])
        return op.Mul(y, theta_out, _outputs=["out"])

    def check(self, context, x, theta_in, lo, hi, levels_up, half, levels_down, theta_out, **_):
        result = MatchResult()
        if self.off_data_path(x):
            return result.fail(self.off_data_path(x))
        consts = {k: const_array(v) for k, v in dict(theta_in=theta_in, lo=lo, hi=hi, levels_up=levels_up,
                                                     half=half, levels_down=levels_down, theta_out=theta_out).items()}
        missing = [k for k, v in consts.items() if v is None]
        if missing:
            return result.fail(f"QCFS operands are not constants: {', '.join(missing)}")
        scalars = {k: float(v.reshape(-1)[0]) for k, v in consts.items() if k not in ("theta_in", "theta_out") and v.size == 1}
        if len(scalars) != 5:
            return result.fail("QCFS clip bounds, levels and 0.5 offset must be scalars")
        if scalars["lo"] != 0.0 or scalars["hi"] != 1.0:
            return result.fail(f"Clip bounds are ({scalars['lo']}, {scalars['hi']}), not (0, 1)")
        if scalars["half"] != 0.5:
            return result.fail(f"offset before Floor is {scalars['half']}, not 0.5")
        levels = scalars["levels_up"]
        down = 1.0 / scalars["levels_down"] if self.reciprocal_out else scalars["levels_down"]
        if levels < 1 or not float(levels).is_integer() or not _close(down, levels):
            return result.fail(f"levels {levels} and {down} are not one positive integer T̃")
        theta = consts["theta_out"].astype(np.float64)
        theta_in_eff = 1.0 / consts["theta_in"].astype(np.float64) if self.reciprocal_in else consts["theta_in"]
        if theta_in_eff.shape != theta.shape or not np.allclose(theta_in_eff, theta, rtol=1e-6, atol=0):
            return result.fail("the thresholds before Clip and after Floor differ")
        rank = None if x.shape is None else len(x.shape)
        if _channel_vector(theta, rank) is None or not np.all(theta > 0):
            return result.fail("θ must be positive and a scalar or per-channel constant")
        return result

    def rewrite(self, op, x, theta_out, levels_up, **bound):
        rank = None if x.shape is None else len(x.shape)
        record = Activation(QCFS, theta=_channel_vector(const_array(theta_out), rank),
                            levels=int(const_array(levels_up).reshape(-1)[0]))
        return _emit(op, x, record, [bound[s] for s in _QCFS_STAGES])


class ReluOp(_DataPathRule):
    def pattern(self, op, x):
        return op.Relu(x, _outputs=["out"])

    def check(self, context, x, **_):
        reason = self.off_data_path(x)
        return MatchResult().fail(reason) if reason else MatchResult()

    def rewrite(self, op, x, out):
        return _emit(op, x, Activation(RELU), [out])


class MaxZero(_DataPathRule):
    def pattern(self, op, x, zero):
        return op.Max(x, zero, _outputs=["out"])

    def check(self, context, x, zero, **_):
        if self.off_data_path(x):
            return MatchResult().fail(self.off_data_path(x))
        value = const_array(zero)
        if value is None or value.size != 1 or float(value.reshape(-1)[0]) != 0.0:
            return MatchResult().fail("Max is not against the constant 0")
        return MatchResult()

    def rewrite(self, op, x, zero, out):
        return _emit(op, x, Activation(RELU), [out])


class ClipFromZero(_DataPathRule):
    """Clip(x, 0) is ReLU; Clip(x, 0, a) with a > 0 is ClipReLU (ReLU6 for a = 6)."""

    def __init__(self, not_data: set[ir.Value], with_max: bool):
        super().__init__(not_data, name="clip_relu" if with_max else "clip_min_zero")
        self.with_max = with_max

    def pattern(self, op, x, lo, hi=None):
        if self.with_max:
            return op.Clip(x, lo, hi, _outputs=["out"])
        return op.Clip(x, lo, _outputs=["out"])

    def check(self, context, x, lo, hi=None, **_):
        result = MatchResult()
        if self.off_data_path(x):
            return result.fail(self.off_data_path(x))
        low = const_array(lo)
        if low is None or low.size != 1 or float(low.reshape(-1)[0]) != 0.0:
            return result.fail("Clip minimum is not the constant 0")
        if self.with_max:
            high = const_array(hi)
            if high is None or high.size != 1 or not float(high.reshape(-1)[0]) > 0:
                return result.fail("Clip maximum is not a positive scalar constant")
        return result

    def rewrite(self, op, x, lo, hi=None, out=None):
        if not self.with_max:
            return _emit(op, x, Activation(RELU), [out])
        record = Activation(CLIP, clip_max=float(const_array(hi).reshape(-1)[0]))
        return _emit(op, x, record, [out])


def _rule_stages(not_data: set[ir.Value], has_floor: bool) -> list[RewriteRuleSet]:
    """QCFS chains first: their inner Clip(0, 1) would otherwise match as a ClipReLU. A graph
    without Floor has no QCFS chain: its rules are not tried (a tenth of a big graph's compile)."""
    qcfs = [QcfsChain.rule(not_data, a, b) for a in (False, True) for b in (False, True)]
    relu = [ReluOp.rule(not_data), MaxZero.rule(not_data), ClipFromZero.rule(not_data, True),
            ClipFromZero.rule(not_data, False)]
    return [RewriteRuleSet(rules, commute=True) for rules in ([qcfs] if has_floor else []) + [relu]]


class MatchActivationsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        not_data = shape_or_constant_values(model.graph)
        has_floor = any(node.op_type == "Floor" for node in model.graph)
        count = sum(stage.apply_to_model(model) for stage in _rule_stages(not_data, has_floor))
        model.opset_imports.setdefault(INTERNAL_DOMAIN, 1)
        return ir.passes.PassResult(model, modified=count > 0)


__all__ = ["MatchActivationsPass", "OP_TYPE"]


_OTHER_ACTIVATIONS = {"Sigmoid": "Sigmoid", "HardSigmoid": "HardSigmoid", "Tanh": "Tanh", "Gelu": "GELU",
                      "HardSwish": "Hardswish", "LeakyRelu": "LeakyReLU", "PRelu": "PReLU", "Elu": "ELU",
                      "Selu": "SELU", "Celu": "CELU", "Softplus": "Softplus", "Mish": "Mish", "Softsign": "Softsign"}


def other_activations(graph: ir.Graph) -> dict[str, int]:
    """Activations outside the ReLU family, counted by name: x·Sigmoid(x) is SiLU, x·HardSigmoid(x)
    Hardswish, x·Φ(x) through Erf GELU, a Sigmoid or HardSigmoid multiplied into other features a gate."""
    found: dict[str, int] = {}
    for node in graph:
        if node.domain != "":
            continue
        name = _OTHER_ACTIVATIONS.get(node.op_type)
        if node.op_type == "Erf":
            name = "GELU"
        elif node.op_type in ("Sigmoid", "HardSigmoid"):
            uses = [use.node for use in node.outputs[0].uses()]
            if uses and all(u.op_type == "Mul" for u in uses):
                swish = all(node.inputs[0] in u.inputs for u in uses)
                name = ("SiLU" if node.op_type == "Sigmoid" else "Hardswish") if swish else f"{name} gate"
        if name:
            found[name] = found.get(name, 0) + 1
    return found
