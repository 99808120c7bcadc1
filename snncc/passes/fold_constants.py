"""Shape inference and constant folding of static subgraphs.

Invariant after the pass: every subgraph that depends only on constants (and on static
dimensions of the input, e.g. "same" padding computed through Shape/Slice/Pad) is a constant,
and value shapes are inferred.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import optimizer


class FoldConstantsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        common_passes.ShapeInferencePass()(model)
        result = optimizer.fold_constants(model, onnx_shape_inference=True)
        optimizer.remove_unused_nodes(model)
        common_passes.LiftConstantsToInitializersPass(size_limit=0)(model)
        return ir.passes.PassResult(model, modified=bool(result.modified))
