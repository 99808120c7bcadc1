// The CPU kernel of snn.SerialIF; no ONNX Runtime dependency (the GPU harness links it too).
#pragma once

#include <cstdint>

#include "layout.h"

namespace snncc {

/// Writes Y for neurons [begin, end) of every step (X, Y viewed as [T, neurons], row-major),
/// float32 only, as the model-local function. Calls on disjoint ranges may run concurrently.
void serial_if_cpu(const float* x, const Params<float>& params, float* y, const Geometry& geometry, int64_t begin,
                   int64_t end);

}  // namespace snncc
