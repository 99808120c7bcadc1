// The CPU kernel of snn.ParallelSpike; no ONNX Runtime dependency (the GPU harness links it too).
#pragma once

#include <cstdint>
#include <type_traits>

#include "neuron.h"

namespace snncc {

/// Neurons per work item: a work item reads T rows of this many contiguous values (16 KiB of
/// float32: long enough for the hardware prefetchers, small enough for its arrays to stay in L2).
constexpr int64_t kCpuChunk = 4096;

/// Arithmetic type for storage type S: float32 for float and _Float16 (IEEE binary16), double for
/// double.
template <typename S>
using CpuMath = std::conditional_t<std::is_same_v<S, double>, double, float>;

/// Writes Y for neurons [begin, end) of every step (X, Y viewed as [T, neurons], row-major).
/// Calls on disjoint ranges may run concurrently. S: float, double or _Float16.
template <typename S>
void parallel_spike_cpu(const S* x, const Params<S>& params, S* y, const Geometry& geometry,
                        Algorithm algorithm, int64_t begin, int64_t end);

}  // namespace snncc
