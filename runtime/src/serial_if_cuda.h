// The CUDA kernel of snn.SerialIF, callable without CUDA headers (the ORT glue is plain C++).
#pragma once

#include "cuda_launch.h"
#include "layout.h"

namespace snncc::cuda {

/// Enqueues the kernel on `stream` (a cudaStream_t; nullptr = the legacy default stream).
/// x, y and the parameter arrays are device pointers of `dtype`; the membrane is float32 either
/// way (float16 values are widened). Returns nullptr, or the CUDA error string of a failed launch.
const char* launch_serial_if(DType dtype, const void* x, const Params<void>& params, void* y,
                             const Geometry& geometry, void* stream);

}  // namespace snncc::cuda
