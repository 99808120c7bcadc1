"""Inline ONNX graphs for unit tests, written in ONNX's text format."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort


def model(text: str, opset: int = 21, functions: list[onnx.FunctionProto] | None = None, extra_opsets: dict | None = None) -> onnx.ModelProto:
    """A model from a graph in ONNX text format."""
    graph = onnx.parser.parse_graph(text)
    imports = [onnx.helper.make_opsetid("", opset)] + [onnx.helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    proto = onnx.helper.make_model(graph, opset_imports=imports, functions=functions or [])
    proto.ir_version = 8 if opset < 21 else 10
    return proto


def ir_model(text: str, opset: int = 21) -> ir.Model:
    return ir.from_proto(model(text, opset))


def run(proto: onnx.ModelProto | ir.Model, **inputs: np.ndarray) -> list[np.ndarray]:
    if isinstance(proto, ir.Model):
        proto = ir.to_proto(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def op_types(graph_model: ir.Model) -> list[str]:
    return [n.op_type for n in graph_model.graph]
