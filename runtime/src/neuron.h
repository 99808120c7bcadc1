// The firing rule of snn.ParallelSpike (docs/ops.md), shared by the CPU and the CUDA kernels.
//
// Step x (1-based) of a neuron with mean current m fires iff
//     T/(T-x+1)*m + (theta_pre/2 + T*psi)/(T-x+1) >= theta_pre.
// Multiplied by r = T-x+1 > 0 (the steps remaining from x on) this reads
//     drive >= theta_pre * r,   drive = T*(m + psi) + theta_pre/2,
// which is how every form below evaluates it. Under rounding theta_pre*r is still monotone in r, so
// the dense scan and the binary search agree bit for bit; the closed form (the one the model-local
// function uses, with the same float operations in the same order) may differ from them by one
// spike only where drive/theta_pre lies within rounding of an integer.
#pragma once

#include "layout.h"

namespace snncc {

/// How a kernel finds the spike count; selectable at run time for benchmarks (SNNCC_NEURON_ALGO).
enum class Algorithm : int { kBinary, kDense, kClosed };

/// T*(m + psi) + theta_pre/2: the left side of the firing condition times r.
template <typename F>
SNNCC_HOST_DEVICE F drive(F mean, F theta_pre, F psi, F steps) {
  return steps * (mean + psi) + theta_pre * F(0.5);
}

/// Whether the step with `remaining` = T-x+1 steps left (1..T) fires; false for a NaN drive.
template <typename F>
SNNCC_HOST_DEVICE bool fires(F drive_value, F theta_pre, int remaining) {
  return drive_value >= theta_pre * F(remaining);
}

/// The largest power of two <= steps (steps >= 1): the first stride of `count_binary`.
SNNCC_HOST_DEVICE int top_stride(int steps) {
  int stride = 1;
  while (stride * 2 <= steps) stride *= 2;
  return stride;
}

/// Spike count k = the largest r in 0..T with fires(r), by binary lifting over r:
/// floor(log2 T) + 1 = ceil(log2(T+1)) comparisons, the same number for every neuron.
template <typename F>
SNNCC_HOST_DEVICE int count_binary(F drive_value, F theta_pre, int steps, int stride) {
  int count = 0;
  for (; stride > 0; stride >>= 1) {
    const int candidate = count + stride;
    if (candidate <= steps && fires(drive_value, theta_pre, candidate)) count = candidate;
  }
  return count;
}

/// Spike count in closed form: clip(floor(drive / theta_pre), 0, T); 0 for NaN.
template <typename F>
SNNCC_HOST_DEVICE int count_closed(F drive_value, F theta_pre, int steps) {
  const F level = drive_value / theta_pre;
  if (level >= F(steps)) return steps;
  return level >= F(1) ? static_cast<int>(level) : 0;
}

}  // namespace snncc
