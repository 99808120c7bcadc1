// The CPU kernel of snn.SpikeCount; no ONNX Runtime dependency (the GPU harness can link it too).
#pragma once

#include <cstdint>

#include "layout.h"

namespace snncc {

/// Writes K for neurons [begin, end) of M (M, K: [B, C, ...], no time axis, so geometry.steps is
/// 1; T, the attribute, only enters the arithmetic). Params::theta_post is unused. Calls on
/// disjoint ranges may run concurrently. S: float, double or _Float16 (float32 arithmetic,
/// the floored level rounded to binary16, as ONNX Runtime runs the function; spike_count.h).
template <typename S>
void spike_count_cpu(const S* m, const Params<S>& params, S* k, const Geometry& geometry, int64_t steps,
                     int64_t begin, int64_t end);

}  // namespace snncc
