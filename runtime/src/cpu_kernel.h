// The CPU kernel of snn.ParallelSpike; no ONNX Runtime dependency (the GPU harness links it too).
#pragma once

#include <cstdint>

#include "cpu_common.h"
#include "neuron.h"

namespace snncc {

/// Writes Y for neurons [begin, end) of every step (X, Y viewed as [T, neurons], row-major).
/// Calls on disjoint ranges may run concurrently. S: float, double or _Float16.
template <typename S>
void parallel_spike_cpu(const S* x, const Params<S>& params, S* y, const Geometry& geometry,
                        Algorithm algorithm, int64_t begin, int64_t end);

}  // namespace snncc
