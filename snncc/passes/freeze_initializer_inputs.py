"""Treat initializers that are also listed as graph inputs (IR < 4 style) as constants.

Invariant after the pass: no graph input has an initializer; such values are plain initializers,
so constant folding and the activation patterns can see their contents.
"""

from __future__ import annotations

import onnx_ir as ir


class FreezeInitializerInputsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        frozen = [v for v in graph.inputs if v.name in graph.initializers]
        for value in frozen:
            graph.inputs.remove(value)
        return ir.passes.PassResult(model, modified=bool(frozen))
