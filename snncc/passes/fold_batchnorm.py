"""Fold BatchNormalization into the Conv, ConvTranspose or Gemm that precedes it.

Invariant after the pass: no BatchNormalization directly consumes the sole use of a
Conv/ConvTranspose/Gemm output with constant weights. A BatchNormalization after an activation
(Keras' conv -> ReLU -> BN) stays: it is a per-channel affine map between neurons, which the
spiking graph computes exactly.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import RewriteRuleSet
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

_RULES = RewriteRuleSet(
    [fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule, fuse_batchnorm_into_gemm_rule]
)


class FoldBatchNormPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = _RULES.apply_to_model(model)
        return ir.passes.PassResult(model, modified=count > 0)
