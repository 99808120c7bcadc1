"""Model-local functions written in ONNX's text format, parsed once and handed out as copies."""

from __future__ import annotations

import functools
from collections.abc import Callable

import onnx
import onnx.parser


@functools.cache
def _parsed(text: str, doc: str, adjust: Callable[[onnx.FunctionProto], None] | None) -> bytes:
    function = onnx.parser.parse_function(text)
    function.doc_string = doc
    if adjust is not None:
        adjust(function)
    return function.SerializeToString()


def function_from_text(text: str, doc: str, adjust: Callable[[onnx.FunctionProto], None] | None = None) -> onnx.FunctionProto:
    """A fresh FunctionProto parsed from `text` (cached), with `doc`; `adjust` may edit it once."""
    function = onnx.FunctionProto()
    function.ParseFromString(_parsed(text, doc, adjust))
    return function
