"""`snn.SpikeCount` and `snn.SpikeTrain`: the parallel neuron with time folded away.

Every parallel spiking neuron reads only the T-mean of its input current and its train is fully
described by its spike count, so a folded graph runs synaptic layers once on rates: SpikeCount
turns a mean current into the neuron's spike count k, the next layer reads the rate k·θ_post/T,
and SpikeTrain rebuilds the sorted train (spikes on the last k steps) when one is requested.

Invariants: SpikeCount(m) equals the number of spikes snn.ParallelSpike fires for inputs whose
T-mean is m (the same closed form, docs/ops.md); SpikeTrain(SpikeCount(m)) equals its output.
"""

from __future__ import annotations

import onnx

from snncc.ops._text import function_from_text

SPIKE_COUNT = "SpikeCount"
SPIKE_TRAIN = "SpikeTrain"

_SPIKE_COUNT_TEXT = """
<domain: "{domain}", opset_import: ["": {opset}]>
SpikeCount <T> (M, theta_pre, psi) => (K)
{{
  steps = Constant <value_int: int = @T> ()
  steps_f = CastLike (steps, M)
  half_c = Constant <value_float: float = 0.5> ()
  half = CastLike (half_c, M)
  zero_c = Constant <value_float: float = 0.0> ()
  zero = CastLike (zero_c, M)
  shifted = Add (M, psi)
  drive = Mul (steps_f, shifted)
  half_theta = Mul (theta_pre, half)
  numerator = Add (drive, half_theta)
  level = Div (numerator, theta_pre)
  level_floor = Floor (level)
  K = Clip (level_floor, zero, steps_f)
}}
"""

_SPIKE_TRAIN_TEXT = """
<domain: "{domain}", opset_import: ["": {opset}]>
SpikeTrain <T> (K, theta_post) => (Y)
{{
  steps = Constant <value_int: int = @T> ()
  axis0 = Constant <value_ints: ints = [0]> ()
  steps_1d = Unsqueeze (steps, axis0)
  steps_f = CastLike (steps, K)
  zero_c = Constant <value_float: float = 0.0> ()
  zero = CastLike (zero_c, K)
  zero_s = Constant <value_int: int = 0> ()
  one_s = Constant <value_int: int = 1> ()
  step_range = Range (zero_s, steps, one_s)
  k_shape = Shape (K)
  k_rank = Shape (k_shape)
  ones = ConstantOfShape <value: tensor = int64[1] {{1}}> (k_rank)
  index_shape = Concat <axis: int = 0> (steps_1d, ones)
  step_index_i = Reshape (step_range, index_shape)
  step_index = CastLike (step_index_i, K)
  first_step = Sub (steps_f, K)
  fires = GreaterOrEqual (step_index, first_step)
  y_by_step = Where (fires, theta_post, zero)
  tail = Shape <start: int = 1> (K)
  minus_one = Constant <value_ints: ints = [-1]> ()
  out_shape = Concat <axis: int = 0> (minus_one, tail)
  Y = Reshape (y_by_step, out_shape)
}}
"""


def spike_count_function(domain: str, opset: int) -> onnx.FunctionProto:
    return function_from_text(_SPIKE_COUNT_TEXT.format(domain=domain, opset=opset),
                              "Spike count of a parallel spiking neuron from its mean current M [B, ...]: "
                              "k = clip(floor((T*(M + psi) + theta_pre/2) / theta_pre), 0, T). See docs/ops.md.")


def spike_train_function(domain: str, opset: int) -> onnx.FunctionProto:
    return function_from_text(_SPIKE_TRAIN_TEXT.format(domain=domain, opset=opset),
                              "Sorted spike train [T*B, ...] (time-major) from spike counts K [B, ...]: value "
                              "theta_post on the last K steps, 0 elsewhere. See docs/ops.md.")
