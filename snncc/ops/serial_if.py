"""`snn.SerialIF`: the classic integrate-and-fire neuron, simulated step by step (the baseline).

Same inputs and parameters as `snn.ParallelSpike`. The membrane starts at θ_pre/2; at each step
t it integrates X[t] + ψ, fires a spike of value θ_post when it reaches θ_pre, and subtracts θ_pre
(soft reset). For an input that is the same at every step it fires exactly as ParallelSpike;
otherwise its count depends on the order of the inputs (the serial conversion error).
"""

from __future__ import annotations

import onnx

from snncc.ops._text import function_from_text

OP_TYPE = "SerialIF"

_FUNCTION_TEXT = """
<domain: "{domain}", opset_import: ["": {opset}]>
SerialIF <T> (X, theta_pre, theta_post, psi) => (Y)
{{
  steps = Constant <value_int: int = @T> ()
  axis0 = Constant <value_ints: ints = [0]> ()
  steps_1d = Unsqueeze (steps, axis0)
  minus_one = Constant <value_ints: ints = [-1]> ()
  x_shape = Shape (X)
  step_shape_tail = Shape <start: int = 1> (X)
  split_shape = Concat <axis: int = 0> (steps_1d, minus_one, step_shape_tail)
  x_by_step = Reshape (X, split_shape)
  step_shape = Shape <start: int = 1> (x_by_step)
  half = Constant <value_float: float = 0.5> ()
  zero = Constant <value_float: float = 0.0> ()
  initial = Mul (theta_pre, half)
  membrane0 = Expand (initial, step_shape)
  membrane_last, y_by_step = Scan <num_scan_inputs: int = 1, body: graph = {body}> (membrane0, x_by_step)
  Y = Reshape (y_by_step, x_shape)
}}
"""


# One step; theta_pre, theta_post, psi and zero come from the function's scope.
_STEP_TEXT = """integrate_and_fire (float[1] membrane, float[1] current) => (float[1] membrane_next, float[1] spike) {
      charged = Add (membrane, current)
      driven = Add (charged, psi)
      fires = GreaterOrEqual (driven, theta_pre)
      reset = Where (fires, theta_pre, zero)
      membrane_next = Sub (driven, reset)
      spike = Where (fires, theta_post, zero)
  }"""


def _unshape_step_graph(function: onnx.FunctionProto) -> None:
    """The text format cannot say "any shape": clear the placeholder shapes of the step graph."""
    scan = next(node for node in function.node if node.op_type == "Scan")
    body = next(a.g for a in scan.attribute if a.name == "body")
    for value in [*body.input, *body.output]:
        value.type.tensor_type.ClearField("shape")


_DOC = (
    "Integrate-and-fire neuron run step by step over T (soft reset, membrane starts at theta_pre/2). "
    "X: input currents [T*B, ...] time-major, float32; parameters as for ParallelSpike. See docs/ops.md."
)


def serial_if_function(domain: str, opset: int) -> onnx.FunctionProto:
    text = _FUNCTION_TEXT.format(domain=domain, opset=opset, body=_STEP_TEXT)
    return function_from_text(text, _DOC, _unshape_step_graph)
