// The integrate-and-fire rule of snn.SerialIF (docs/ops.md), shared by the CPU and the CUDA kernels.
//
// The float operations are those of the model-local function's Scan body, in its order:
//     charged = membrane + x;  driven = charged + psi;  fires = driven >= theta_pre;
//     membrane = driven - (fires ? theta_pre : 0);  y = fires ? theta_post : 0,
// with the membrane starting at theta_pre * 0.5. Compiled without FMA contraction, a kernel that
// applies them to float32 values gives the function's output bit for bit, NaN and inf included:
// a NaN membrane never fires again, +inf fires at every later step, -inf never.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "layout.h"

namespace snncc {

/// fires ? value : +0. On the CPU as a bit mask: GCC (12) does not if-convert a loop that makes
/// two float selects on one condition, so it would not vectorise integrate_and_fire's loop.
template <typename F>
SNNCC_HOST_DEVICE F if_fired(bool fires, F value) {
#if defined(__CUDA_ARCH__)
  return fires ? value : F(0);
#else
  using Bits = std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(F) == sizeof(Bits), "float or double");
  Bits bits;
  std::memcpy(&bits, &value, sizeof bits);
  bits &= Bits{0} - static_cast<Bits>(fires);
  F masked;
  std::memcpy(&masked, &bits, sizeof masked);
  return masked;
#endif
}

/// The membrane potential before the first step.
template <typename F>
SNNCC_HOST_DEVICE F initial_membrane(F theta_pre) {
  return theta_pre * F(0.5);
}

/// One step: integrates `current` and the shift psi into `membrane`, fires when it reaches
/// theta_pre and then subtracts theta_pre (soft reset). Returns whether the step fires. No branch,
/// so that a loop over neurons vectorises.
template <typename F>
SNNCC_HOST_DEVICE bool integrate_and_fire(F& membrane, F current, F theta_pre, F psi) {
  const F driven = (membrane + current) + psi;
  const bool fires = driven >= theta_pre;
  membrane = driven - if_fired(fires, theta_pre);
  return fires;
}

}  // namespace snncc
