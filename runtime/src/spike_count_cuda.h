// The CUDA kernel of snn.SpikeCount, callable without CUDA headers (the ORT glue is plain C++).
#pragma once

#include <cstdint>

#include "cuda_launch.h"
#include "layout.h"

namespace snncc::cuda {

/// Enqueues the kernel on `stream` (a cudaStream_t; nullptr = the legacy default stream).
/// m, k and the parameter arrays (theta_pre, psi; theta_post unused) are device pointers of
/// `dtype`; geometry.steps is 1 (M has no time axis) and `steps` is the attribute T. float16 is
/// computed as on the CPU (float32, the floored level rounded to binary16; spike_count.h). Returns nullptr, or the
/// CUDA error string of a failed launch.
const char* launch_spike_count(DType dtype, const void* m, const Params<void>& params, void* k,
                               const Geometry& geometry, int64_t steps, void* stream);

}  // namespace snncc::cuda
