"""Closed-form refit of an affine layer (Conv, Gemm, MatMul) on the inputs the SNN gives it.

A synaptic layer y = W x + b is refit so that, on the already-quantised inputs x_q of the
calibration set, it reproduces the ANN's target y_ann:

    W' = argmin ‖[x_q, 1] W' − y_ann‖² + λ ‖W' − W‖²     (ridge towards the original W, b)
       = (XᵀX + λI)⁻¹ (XᵀY + λW);   λ = 0: ordinary least squares (the read-out layer).

λ is chosen among RIDGE_CHOICES by the error on held-out samples (`select_ridge`), then the
solution is computed on all samples. Conv layers are unfolded (im2col) at a fixed random sample of output positions per image, per
group; Gemm and MatMul use every row. The normal equations are summed batch by batch, so memory
does not grow with the calibration set.

Invariant: `refit` changes only the layer's own weight and bias initializers (copies, so a shared
initializer is left alone) and keeps their shapes and dtypes; the layer computes the same op.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc.passes._graph import replace_with_initializer

# Candidate λ of the ridge refit, relative to the mean diagonal of XᵀX.
RIDGE_CHOICES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)

def supported(node: ir.Node) -> bool:
    """Whether `refit` handles this node: 2-D Conv with explicit pads, plain Gemm, MatMul on constant [K, N]."""
    attrs = {k: a.value for k, a in node.attributes.items()}
    if node.op_type == "Conv":
        return len(node.inputs[1].shape) == 4 and attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
    if node.op_type == "Gemm":
        return not attrs.get("transA", 0) and attrs.get("alpha", 1.0) != 0 and attrs.get("beta", 1.0) != 0
    return node.op_type == "MatMul" and len(node.inputs[1].shape) == 2


class AffineLayer:
    """One Conv / Gemm / MatMul node seen as G groups of y_g = X_g W_g (+ b_g)."""

    def __init__(self, node: ir.Node):
        self.node = node
        self.attrs = {k: a.value for k, a in node.attributes.items()}
        weight = node.inputs[1].const_value.numpy()
        bias_value = node.inputs[2] if len(node.inputs) > 2 else None
        self.has_bias = bias_value is not None
        if node.op_type == "Conv":
            self.groups = int(self.attrs.get("group", 1))
            out_channels = weight.shape[0]
            per_group = weight.reshape(self.groups, out_channels // self.groups, -1)  # [G, Cout_g, K]
            self.weights = np.transpose(per_group, (0, 2, 1)).astype(np.float64)
        elif node.op_type == "Gemm":
            self.groups = 1
            w = weight.T if self.attrs.get("transB", 0) else weight
            self.weights = (float(self.attrs.get("alpha", 1.0)) * w)[None].astype(np.float64)
        else:
            self.groups = 1
            self.weights = weight[None].astype(np.float64)
        out = self.weights.shape[0] * self.weights.shape[2]
        bias = np.zeros(out) if not self.has_bias else np.broadcast_to(
            bias_value.const_value.numpy().reshape(-1) * float(self.attrs.get("beta", 1.0)), (out,))
        self.bias = bias.reshape(self.groups, 1, -1).astype(np.float64)

    def parameters(self) -> np.ndarray:
        """[G, K (+1 bias row), Cout_g]."""
        return np.concatenate([self.weights, self.bias], axis=1) if self.has_bias else self.weights

    def rows_per_sample(self, x: np.ndarray, y: np.ndarray) -> int:
        """Design rows one sample gives with every position: Conv output positions, Gemm/MatMul rows."""
        if self.node.op_type == "Conv":
            return int(np.prod(y.shape[2:]))
        return max(1, x.size // (len(x) * x.shape[-1]))

    def rows(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, positions: int) -> tuple[np.ndarray, np.ndarray]:
        """Design rows [G, n, K(+1)] from the layer input x and target rows [G, n, Cout_g] from y
        (an array of the layer's output shape); Conv: `positions` random output positions per sample."""
        if self.node.op_type == "Conv":
            design, target = self._conv_rows(x, y, rng, positions)
        else:
            design = x.reshape(-1, x.shape[-1])[None]
            target = y.reshape(-1, y.shape[-1])[None]
        design = design.astype(np.float32)
        if self.has_bias:
            design = np.concatenate([design, np.ones(design.shape[:2] + (1,), np.float32)], axis=2)
        return design, target.astype(np.float32)

    def _conv_rows(self, x, y, rng, positions):
        kh, kw = self.weights_shape()[2:]
        sh, sw = self.attrs.get("strides", (1, 1))
        dh, dw = self.attrs.get("dilations", (1, 1))
        pads = self.attrs.get("pads", (0, 0, 0, 0))
        padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        windows = np.lib.stride_tricks.sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # [n, C, out_h, out_w, kh, kw]
        n = x.shape[0]
        out_h, out_w = y.shape[2:]
        count = min(positions, out_h * out_w)
        flat = np.stack([rng.choice(out_h * out_w, count, replace=False) for _ in range(n)])  # [n, P]
        patches = windows[np.arange(n)[:, None], :, flat // out_w, flat % out_w]  # [n, P, C, kh, kw]
        patches = patches.reshape(n * count, self.groups, -1).transpose(1, 0, 2)  # [G, nP, K]
        target = y.reshape(n, y.shape[1], -1)[np.arange(n)[:, None], :, flat]  # [n, P, Cout]
        target = target.reshape(n * count, self.groups, -1).transpose(1, 0, 2)
        return patches, target

    def weights_shape(self) -> tuple[int, ...]:
        return tuple(self.node.inputs[1].shape)

    def write(self, graph: ir.Graph, solution: np.ndarray) -> None:
        """Store a [G, K(+1), Cout_g] solution as new weight (and bias) initializers of the node."""
        weights = solution[:, :self.weights.shape[1]]
        old = self.node.inputs[1].const_value.numpy()
        if self.node.op_type == "Conv":
            array = np.transpose(weights, (0, 2, 1)).reshape(old.shape)
        elif self.node.op_type == "Gemm":
            w = weights[0] / float(self.attrs.get("alpha", 1.0))
            array = w.T if self.attrs.get("transB", 0) else w
        else:
            array = weights[0]
        replace_with_initializer(graph, self.node, 1, array, "refit")
        if self.has_bias:
            self.set_bias(graph, solution[:, -1].reshape(-1))

    def set_bias(self, graph: ir.Graph, bias: np.ndarray) -> None:
        """Replace the effective bias (β·C for Gemm) by `bias` [Cout]."""
        old = self.node.inputs[2].const_value.numpy()
        array = (bias / float(self.attrs.get("beta", 1.0))).reshape(-1)
        if old.size != array.size:  # a broadcast Gemm bias becomes a full one
            array = array.reshape((1, -1) if old.ndim == 2 else (-1,))
        else:
            array = array.reshape(old.shape)
        replace_with_initializer(graph, self.node, 2, array, "corrected")
        self.bias = (bias.reshape(self.groups, 1, -1)).astype(np.float64)


class NormalEquations:
    """Σ XᵀX and Σ XᵀY per group, fed with `AffineLayer.rows`."""

    def __init__(self):
        self.gram = self.cross = None
        self.rows = 0

    def add(self, design: np.ndarray, target: np.ndarray) -> None:
        transposed = design.transpose(0, 2, 1)  # products in float32, sums over batches in float64
        with np.errstate(over="ignore", invalid="ignore"):  # overflow shows as non-finite sums: `finite`
            gram, cross = (transposed @ design).astype(np.float64), (transposed @ target).astype(np.float64)
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.rows += design.shape[1]

    def merged(self, other: NormalEquations) -> NormalEquations:
        """The equations of both sets of rows."""
        result = NormalEquations()
        result.gram, result.cross, result.rows = self.gram + other.gram, self.cross + other.cross, self.rows + other.rows
        return result

    def error(self, solution: np.ndarray) -> float:
        """Σ‖XW − Y‖² over the rows added, less Σ‖Y‖² (which does not depend on W):
        Σ_g tr(WᵀXᵀXW) − 2·tr(WᵀXᵀY)."""
        return float(sum(np.sum(w * (gram @ w)) - 2 * np.sum(w * cross) for gram, cross, w in zip(self.gram, self.cross, solution)))

    def finite(self) -> bool:
        """Whether the sums are finite (inputs with NaN, or products beyond float32, make them not)."""
        return bool(np.isfinite(self.gram).all() and np.isfinite(self.cross).all())

    def solve(self, prior: np.ndarray, ridge: float) -> np.ndarray:
        """(XᵀX + λI)⁻¹(XᵀY + λ·prior) per group with λ = ridge · mean diagonal of XᵀX; ridge = 0:
        the least-squares solution (minimum norm where XᵀX is singular)."""
        solutions = []
        for gram, cross, prior_g in zip(self.gram, self.cross, prior):
            if ridge == 0:
                solutions.append(np.linalg.lstsq(gram, cross, rcond=None)[0])
                continue
            lam = ridge * max(float(np.trace(gram)) / len(gram), 1e-12)
            solutions.append(np.linalg.solve(gram + lam * np.eye(len(gram)), cross + lam * prior_g))
        return np.stack(solutions)


def select_ridge(fit: NormalEquations, held_out: NormalEquations, prior: np.ndarray,
                 choices: tuple[float, ...] = RIDGE_CHOICES) -> float:
    """The λ among `choices` whose solution on the `fit` rows has the least error on the `held_out` rows."""
    errors = [held_out.error(fit.solve(prior, ridge)) for ridge in choices]
    return choices[int(np.argmin(errors))]
