"""Convert the model to the one standard opset that compiled models use.

Invariant after the pass: the default-domain opset import equals the target opset, and the
model's IR version is at least the one that opset needs (an IR 3 model, whose initializers are
also graph inputs, becomes IR 10 once FreezeInitializerInputsPass has made them plain constants).
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
from onnxscript import version_converter

from snncc.errors import SnnccError

# DESIGN asks for 11-21; older opsets (down to 7, e.g. Clip with min/max attributes) convert too.
MIN_OPSET = 7
MAX_OPSET = 21


def default_opset(model: ir.Model) -> int | None:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))


def _min_ir_version(opset: int) -> int:
    return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)], ignore_unknown=True)


class ConvertOpsetPass(ir.passes.InPlacePass):
    def __init__(self, target: int):
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        version = default_opset(model)
        if version is None or not MIN_OPSET <= version <= MAX_OPSET:
            raise SnnccError(
                f"model uses opset {version}; snncc supports opsets {MIN_OPSET}-{MAX_OPSET} "
                "(re-export the model with one of them)"
            )
        ir_version = max(model.ir_version, _min_ir_version(self.target))
        upgraded, model.ir_version = ir_version != model.ir_version, ir_version
        if version == self.target:
            return ir.passes.PassResult(model, modified=upgraded)
        # onnxscript announces its fallback to onnx's C converter as a warning; that is expected here.
        logging.getLogger(version_converter.__name__).setLevel(logging.ERROR)
        try:
            version_converter.convert_version(model, self.target, fallback=True)
        except Exception as error:  # onnx's converter raises plain RuntimeErrors
            raise SnnccError(f"cannot convert the model from opset {version} to {self.target}: {error}") from None
        return ir.passes.PassResult(model, modified=True)
