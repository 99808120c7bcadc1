// What the CUDA kernels' launch functions share, callable without CUDA headers (the ORT glue is
// plain C++).
#pragma once

namespace snncc::cuda {

/// Element type of X, Y and the parameters on the device: float32, or float16 (IEEE binary16)
/// with float32 math.
enum class DType { kFloat32, kFloat16 };

}  // namespace snncc::cuda
