// The spike-count rule of snn.SpikeCount (docs/ops.md), shared by the CPU and the CUDA kernels.
//
// The float operations are those of the model-local function, in its order:
//     shifted = M + psi;  drive = T * shifted;  half_theta = theta_pre * 0.5;
//     numerator = drive + half_theta;  level = numerator / theta_pre;
//     K = Clip(Floor(level), 0, T),
// in the element type. For float16, the arithmetic is float32 up to Floor, whose result is rounded
// to binary16 before the clip: that is how ONNX Runtime's CPU provider runs the float16 function
// (it has no float16 Add/Mul/Div/Floor kernels, so it casts their inputs to float32, keeps the
// chain in float32 and casts back before Clip, which has one; T and θ/2 are float16 values).
// Floor is exact. Clip is max(level, 0) then min(·, T) with ONNX
// Runtime's NaN rule: a NaN level stays NaN (and -0 stays -0), ±inf clips to 0 / T. Compiled
// without FMA contraction, a kernel gives the function's output bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#include "layout.h"

namespace snncc {

/// floor(x) without a library call, so that a loop over neurons vectorises on any x86-64 (SSE2
/// has no rounding instruction): |x| rounded to an integer by adding and subtracting 2^(p-1),
/// the sign put back, then 1 subtracted where that rounded up. Exact; -0, NaN, ±inf and values
/// of magnitude >= 2^(p-1) (already integers) are returned unchanged.
template <typename F>
SNNCC_HOST_DEVICE F floor_exact(F x) {
  const F big = sizeof(F) == 4 ? F(8388608.0) : F(4503599627370496.0);  // 2^23, 2^52
  using std::copysign;
  using std::fabs;
  const F magnitude = fabs(x);
  const F rounded = (magnitude + big) - big;
  const F signed_rounded = copysign(rounded, x);
  const F floored = signed_rounded > x ? signed_rounded - F(1) : signed_rounded;
  return magnitude < big ? floored : x;
}

/// The spike count of one neuron from its mean current m. F: the arithmetic type (float for
/// float and float16 storage, double for double); floor_to(v) is floor(v), exact (floor_exact or
/// an instruction), rounded to the element type (identity for float and double); steps_f is T as
/// the element type.
template <typename F, typename FloorTo>
SNNCC_HOST_DEVICE F spike_count(F m, F theta_pre, F psi, F steps_f, FloorTo floor_to) {
  const F shifted = m + psi;
  const F drive = steps_f * shifted;
  const F half_theta = theta_pre * F(0.5);
  const F numerator = drive + half_theta;
  const F level = numerator / theta_pre;
  const F floored = floor_to(level);
  const F above_zero = floored < F(0) ? F(0) : floored;  // max(level, 0): NaN and -0 pass
  return steps_f < above_zero ? steps_f : above_zero;   // min(·, T): NaN passes
}

}  // namespace snncc
