// The CUDA kernel of snn.ParallelSpike, callable without CUDA headers (the ORT glue is plain C++).
#pragma once

#include "cuda_launch.h"
#include "neuron.h"

namespace snncc::cuda {

/// Enqueues the kernel on `stream` (a cudaStream_t; nullptr = the legacy default stream).
/// x, y and the parameter arrays are device pointers of `dtype` (float16: IEEE binary16, math in
/// float32). Returns nullptr, or the CUDA error string of a failed launch.
const char* launch_parallel_spike(DType dtype, const void* x, const Params<void>& params, void* y,
                                  const Geometry& geometry, void* stream);

}  // namespace snncc::cuda
