"""Random convertible CNNs written directly in ONNX, from a small declarative spec.

A `NetSpec` is plain data (hypothesis draws and shrinks it; a failing example can be pasted into a
regression test as is); `build` turns it into a ModelProto with deterministic random weights.
Every op the spec can place between neurons is exact on spike trains, so every spec must convert:
Conv (kernels 1/3/5, strides 1/2, zero Pad, depthwise), BatchNorm (folded into a conv, or after an
activation), residual Add/Sub with or without an activation after it, Concat of branches with
different thresholds, MaxPool over trains (or before an activation, which snncc moves),
AveragePool, per-channel scaling, a channel shuffle, and Gemm heads (GAP, Flatten, Reshape).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ACTIVATIONS = ("relu", "relu6", "clip", "max0", "qcfs")


@dataclasses.dataclass(frozen=True)
class Act:
    kind: str  # one of ACTIVATIONS
    per_channel: bool = False  # QCFS: θ per channel (else one scalar)
    reciprocal: bool = False  # QCFS: x·(1/θ) and level·(1/T̃) instead of divisions
    bound: float = 6.0  # clip: Clip(x, 0, bound)
    levels: int = 4  # QCFS T̃


@dataclasses.dataclass(frozen=True)
class Block:
    kind: str  # conv, residual, concat, maxpool, pool_first, avgpool, affine, shuffle
    channels: int = 4
    kernel: int = 3
    stride: int = 1
    act: Act = Act("relu")
    act2: Act = Act("relu")  # second activation (residual inner / concat second branch)
    batchnorm: bool = False
    pad_node: bool = False  # zero padding as a separate Pad node instead of the conv's pads
    depthwise: bool = False
    linear: bool = False  # residual: no activation after the add (MobileNet-V2 style)
    subtract: bool = False  # residual: Sub instead of Add
    ceil: bool = False  # pooling ceil_mode
    negative: bool = False  # affine: a negative per-channel scale


@dataclasses.dataclass(frozen=True)
class NetSpec:
    in_channels: int = 2
    size: int = 6
    blocks: tuple[Block, ...] = (Block("conv"),)
    head: str = "gap"  # gap, flatten, reshape, conv_gap
    head_act: Act | None = None  # a hidden Gemm layer with this activation
    classes: int = 3
    seed: int = 0

    def activations(self) -> list[Act]:
        acts = []
        for block in self.blocks:
            if block.kind in ("conv", "pool_first"):
                acts.append(block.act)
            elif block.kind in ("residual", "concat"):
                acts.append(block.act2)
                if not (block.kind == "residual" and block.linear):
                    acts.append(block.act)
        if self.head == "conv_gap":
            acts.append(Act("relu"))
        if self.head_act is not None and self.head != "conv_gap":  # conv_gap has no hidden layer
            acts.append(self.head_act)
        return acts


class _Builder:
    def __init__(self, spec: NetSpec, levels_override: int | None):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.count = 0
        self.levels_override = levels_override

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, array: np.ndarray, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], base: str | None = None, **attrs) -> str:
        out = self.name(base or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_{op}", **attrs))
        return out

    # -- layers ---------------------------------------------------------------------------

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int, size: int, depthwise=False,
             pad_node=False, batchnorm=False) -> tuple[str, int]:
        groups = cin if depthwise else 1
        if depthwise:
            cout = cin
        fan_in = (cin // groups) * kernel * kernel
        w = self.rng.normal(size=(cout, cin // groups, kernel, kernel)) * np.sqrt(2.0 / fan_in)
        b = self.rng.normal(size=cout) * 0.2
        pad = kernel // 2
        if pad and pad_node:
            pads = self.const(np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64), "pads")
            x = self.node("Pad", [x, pads], mode="constant")
            attrs = {}
        else:
            attrs = {"pads": [pad] * 4}
        y = self.node("Conv", [x, self.const(w.astype(np.float32), "w"), self.const(b.astype(np.float32), "b")],
                      kernel_shape=[kernel, kernel], strides=[stride, stride], group=groups, **attrs)
        out_size = (size + 2 * pad - kernel) // stride + 1
        if batchnorm:
            y = self.batchnorm(y, cout)
        return y, out_size

    def batchnorm(self, x: str, channels: int, negative=False) -> str:
        scale = self.rng.uniform(0.5, 1.5, channels) * (np.where(self.rng.random(channels) < 0.5, -1, 1) if negative else 1)
        params = [scale, self.rng.normal(size=channels) * 0.2, self.rng.normal(size=channels) * 0.2,
                  self.rng.uniform(0.5, 1.5, channels)]
        return self.node("BatchNormalization", [x, *(self.const(p.astype(np.float32), "bn") for p in params)])

    def activation(self, x: str, act: Act, channels: int, rank: int = 4) -> str:
        if act.kind == "relu":
            return self.node("Relu", [x])
        if act.kind == "max0":
            return self.node("Max", [x, self.const(np.array(0.0, np.float32), "zero")])
        if act.kind in ("relu6", "clip"):
            bound = 6.0 if act.kind == "relu6" else act.bound
            return self.node("Clip", [x, self.const(np.array(0.0, np.float32), "lo"), self.const(np.array(bound, np.float32), "hi")])
        levels = float(self.levels_override or act.levels)
        per_channel_shape = (channels,) + (1,) * (rank - 2)
        theta = self.rng.uniform(0.4, 2.0, per_channel_shape if act.per_channel else (1,))
        theta = theta.astype(np.float32)
        if act.reciprocal:
            y = self.node("Mul", [x, self.const((1.0 / theta).astype(np.float32), "inv_theta")])
        else:
            y = self.node("Div", [x, self.const(theta, "theta")])
        y = self.node("Clip", [y, self.const(np.array(0.0, np.float32), "lo"), self.const(np.array(1.0, np.float32), "hi")])
        y = self.node("Mul", [y, self.const(np.array(levels, np.float32), "levels")])
        y = self.node("Add", [y, self.const(np.array(0.5, np.float32), "half")])
        y = self.node("Floor", [y])
        if act.reciprocal:
            y = self.node("Mul", [y, self.const(np.array(1.0 / levels, np.float32), "inv_levels")])
        else:
            y = self.node("Div", [y, self.const(np.array(levels, np.float32), "levels")])
        return self.node("Mul", [y, self.const(theta, "theta")], base="qcfs")

    # -- blocks ---------------------------------------------------------------------------

    def block(self, x: str, channels: int, size: int, train: bool, b: Block) -> tuple[str, int, int, bool]:
        """Returns (value, channels, spatial size, whether the value is the trains of one neuron layer)."""
        stride = b.stride if size >= 2 * b.stride else 1
        if b.kind == "conv":
            y, size = self.conv(x, channels, b.channels, b.kernel, stride, size, b.depthwise, b.pad_node, b.batchnorm)
            channels = channels if b.depthwise else b.channels
            return self.activation(y, b.act, channels), channels, size, True
        if b.kind == "residual":
            h, out_size = self.conv(x, channels, b.channels, b.kernel, stride, size, batchnorm=b.batchnorm)
            h = self.activation(h, b.act2, b.channels)
            h, _ = self.conv(h, b.channels, b.channels, b.kernel, 1, out_size, batchnorm=b.batchnorm)
            if stride == 1 and channels == b.channels:
                shortcut = x
            else:
                shortcut, _ = self.conv(x, channels, b.channels, 1, stride, size)
            y = self.node("Sub" if b.subtract else "Add", [h, shortcut])
            if b.linear:
                return y, b.channels, out_size, False
            return self.activation(y, b.act, b.channels), b.channels, out_size, True
        if b.kind == "concat":
            k2 = 1 if b.kernel != 1 else 3
            left, out_size = self.conv(x, channels, b.channels, b.kernel, stride, size)
            right, _ = self.conv(x, channels, max(b.channels // 2, 1), k2, stride, size)
            left = self.activation(left, b.act, b.channels)
            right = self.activation(right, b.act2, max(b.channels // 2, 1))
            return self.node("Concat", [left, right], axis=1), b.channels + max(b.channels // 2, 1), out_size, True
        if b.kind in ("maxpool", "pool_first", "avgpool"):
            if size < 2:  # nothing to pool
                if b.kind == "pool_first":
                    return self.activation(x, b.act, channels), channels, size, True
                return x, channels, size, train
            kernel, pool_stride, pads = (2, 2, [0] * 4) if b.kernel != 3 else (3, 1, [1] * 4)
            ceil = int(b.ceil and pool_stride == 2)
            out_size = ((size + sum(pads[:2]) - kernel + (pool_stride - 1 if ceil else 0)) // pool_stride) + 1
            if b.kind == "avgpool":
                return (self.node("AveragePool", [x], kernel_shape=[kernel] * 2, strides=[pool_stride] * 2, pads=pads,
                                  ceil_mode=ceil), channels, out_size, False)
            if b.kind == "maxpool" and not train:
                return x, channels, size, train  # MaxPool on a sum of trains is not exact: skip it
            y = self.node("MaxPool", [x], kernel_shape=[kernel] * 2, strides=[pool_stride] * 2, pads=pads, ceil_mode=ceil)
            if b.kind == "pool_first":  # MaxPool right before an activation: snncc moves it after
                return self.activation(y, b.act, channels), channels, out_size, True
            return y, channels, out_size, True
        if b.kind == "affine":
            if b.batchnorm:
                return self.batchnorm(x, channels, b.negative), channels, size, train
            sign = np.where(self.rng.random(channels) < 0.5, -1, 1) if b.negative else 1
            scale = (self.rng.uniform(0.5, 2.0, (channels, 1, 1)) * np.reshape(sign, (-1, 1, 1))).astype(np.float32)
            y = self.node("Mul", [x, self.const(scale, "scale")])
            return self.node("Add", [y, self.const(self.rng.normal(size=(channels, 1, 1)).astype(np.float32) * 0.1, "shift")]), channels, size, train
        if b.kind == "shuffle":
            groups = 2 if channels % 2 == 0 else 1
            y = self.node("Reshape", [x, self.const(np.array([0, groups, channels // groups, size, size], np.int64), "shape")])
            y = self.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
            return self.node("Reshape", [y, self.const(np.array([0, channels, size, size], np.int64), "shape")]), channels, size, False
        raise ValueError(b.kind)

    def head(self, x: str, channels: int, size: int) -> str:
        spec = self.spec
        if spec.head == "conv_gap":
            y, _ = self.conv(x, channels, spec.classes, 1, 1, size)
            y = self.activation(y, Act("relu"), spec.classes)
            return self.node("Flatten", [self.node("GlobalAveragePool", [y])], base="logits")
        if spec.head == "gap":
            x, features = self.node("Flatten", [self.node("GlobalAveragePool", [x])]), channels
        elif spec.head == "flatten":
            x, features = self.node("Flatten", [x]), channels * size * size
        else:
            x, features = self.node("Reshape", [x, self.const(np.array([0, -1], np.int64), "shape")]), channels * size * size
        if spec.head_act is not None:
            hidden = 8
            w = (self.rng.normal(size=(hidden, features)) * np.sqrt(2.0 / features)).astype(np.float32)
            x = self.node("Gemm", [x, self.const(w, "fc"), self.const(self.rng.normal(size=hidden).astype(np.float32) * 0.2, "fcb")], transB=1)
            x, features = self.activation(x, spec.head_act, hidden, rank=2), hidden
        w = (self.rng.normal(size=(spec.classes, features)) * np.sqrt(1.0 / features)).astype(np.float32)
        return self.node("Gemm", [x, self.const(w, "fc"), self.const(np.zeros(spec.classes, np.float32), "fcb")],
                         base="logits", transB=1)


def build(spec: NetSpec, levels_override: int | None = None) -> onnx.ModelProto:
    """The ANN of `spec`; with `levels_override`, every QCFS uses that T̃ (same weights and θ)."""
    b = _Builder(spec, levels_override)
    x, channels, size, train = "x", spec.in_channels, spec.size, False
    for block in spec.blocks:
        x, channels, size, train = b.block(x, channels, size, train, block)
    logits = b.head(x, channels, size)
    graph = helper.make_graph(
        b.nodes, "random_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", spec.in_channels, spec.size, spec.size])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", spec.classes])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def inputs(spec: NetSpec, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, spec.in_channels, spec.size, spec.size)).astype(np.float32)
