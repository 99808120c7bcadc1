"""`snn.ParallelSpike`: the parallel spiking neuron as a model-local ONNX function.

The body uses standard ONNX ops only, so a compiled model runs on any ONNX backend; it is the
reference implementation that native kernels must match (see docs/ops.md).

Invariant: for input currents X of shape [T*B, ...] (time-major, step t owns rows t*B..(t+1)*B-1),
with m the mean of X over the T steps, or, with the attribute constant_input = 1, for X of shape
[B, ...] holding a current that is the same at every step (direct encoding; m = X), the neuron fires k = clip(floor((T*(m+psi) + theta_pre/2) /
theta_pre), 0, T) spikes of value theta_post on the last k steps (steps T-k+1..T, 1-based), so the
output's T-mean equals DA-QCFS(m; theta_pre, theta_post - theta_pre, psi, T) (paper Thm 4.1).
"""

from __future__ import annotations

import onnx

from snncc.ops._text import function_from_text

OP_TYPE = "ParallelSpike"

# The body averages the rows of X that belong to one neuron (T, or 1 with constant_input) and
# delegates to SpikeCount (the closed form of the paper's firing condition: step x fires iff
# x >= T + 1 - k) and SpikeTrain (spikes on the last k steps).
_FUNCTION_TEXT = """
<domain: "{domain}", opset_import: ["": {opset}, "{domain}": 1]>
ParallelSpike <T, constant_input: int = 0> (X, theta_pre, theta_post, psi) => (Y)
{{
  steps = Constant <value_int: int = @T> ()
  constant = Constant <value_int: int = @constant_input> ()
  one = Constant <value_int: int = 1> ()
  steps_less_one = Sub (steps, one)
  dropped_steps = Mul (constant, steps_less_one)
  input_steps = Sub (steps, dropped_steps)
  axis0 = Constant <value_ints: ints = [0]> ()
  input_steps_1d = Unsqueeze (input_steps, axis0)
  minus_one = Constant <value_ints: ints = [-1]> ()
  step_shape_tail = Shape <start: int = 1> (X)
  split_shape = Concat <axis: int = 0> (input_steps_1d, minus_one, step_shape_tail)
  x_by_step = Reshape (X, split_shape)
  mean_current = ReduceMean <keepdims: int = 0> (x_by_step, axis0)
  spike_count = {domain}.SpikeCount <T: int = @T> (mean_current, theta_pre, psi)
  Y = {domain}.SpikeTrain <T: int = @T> (spike_count, theta_post)
}}
"""


_DOC = (
    "Parallel spiking neuron (snncc). X: input currents [T*B, ...] time-major, or with "
    "constant_input=1 one step [B, ...] of a current that is the same at every step; "
    "theta_pre, theta_post, psi: per-channel parameters shaped to broadcast against one "
    "step [B, C, ...] (e.g. [C,1,1]). Fires k = clip(floor((T*(mean_t X + psi) + "
    "theta_pre/2)/theta_pre), 0, T) spikes of value theta_post on the last k steps. "
    "See docs/ops.md."
)


def parallel_spike_function(domain: str, opset: int) -> onnx.FunctionProto:
    """The function body of ParallelSpike for the given domain and standard opset."""
    return function_from_text(_FUNCTION_TEXT.format(domain=domain, opset=opset), _DOC)
