"""Convert the model to the one standard opset that compiled models use.

Invariant after the pass: the default-domain opset import equals the target opset, and the
model's IR version is at least the one that opset needs (an IR 3 model, whose initializers are
also graph inputs, becomes IR 10 once FreezeInitializerInputsPass has made them plain constants).
`from_proto_at` does the same conversion while a proto becomes an IR model, where that is cheaper.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import version_converter
from onnxscript.version_converter._version_converter import SUPPORTED_MIN_ONNX_OPSET

from snncc.errors import SnnccError
from snncc.modelio import without_weights

# DESIGN asks for 11-21; older opsets (down to 7, e.g. Clip with min/max attributes) convert too.
MIN_OPSET = 7
MAX_OPSET = 21


def default_opset(model: ir.Model) -> int | None:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))


def from_proto_at(model: onnx.ModelProto, target: int) -> ir.Model:
    """`model` in onnx_ir, at opset `target` where ConvertOpsetPass would hand it to onnx's C
    converter (opsets below onnxscript's own converter's 18, no model-local functions to inline),
    converted as the pass converts it, else as it is (the pass then does or refuses the rest).
    The pass reaches the C converter through onnx_ir's serialiser and reads the result back; here
    it runs on the proto without its weights (`without_weights`), and the weights' protos join the
    result uncopied, in their order."""
    version = next((o.version for o in model.opset_import if o.domain == ""), None)  # as onnxscript reads it
    if version is None or version == target or not MIN_OPSET <= version < SUPPORTED_MIN_ONNX_OPSET or model.functions:
        return ir.from_proto(model)
    try:
        converted = ir.from_proto(onnx.version_converter.convert_version(without_weights(model), target))
    except Exception:  # noqa: BLE001 (the pass reports it)
        return ir.from_proto(model)
    graph = converted.graph
    inputs = {i.name for i in model.graph.input}
    values = {v.name: v for v in graph.inputs}
    small = dict(graph.initializers)  # converted, perhaps added to
    graph.initializers.clear()
    for tensor in model.graph.initializer:
        value = small.pop(tensor.name, None)
        if value is None:  # left out: a graph input of the converted copy
            value = values[tensor.name]
            value.const_value = ir.serde.deserialize_tensor(tensor)
        graph.register_initializer(value)
    for value in small.values():
        graph.register_initializer(value)
    kept = [v for v in graph.inputs if v.name in inputs]
    graph.inputs.clear()
    graph.inputs.extend(kept)
    common_passes.RemoveUnusedOpsetsPass()(converted)  # as onnxscript's converter leaves the model
    return converted


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
