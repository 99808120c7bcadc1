// The CPU kernels (snn.ParallelSpike, snn.SerialIF, snn.SpikeCount) and the choice of their
// instruction-set variant; no ONNX Runtime dependency (the GPU harness links them too).
//
// Each kernel source is compiled once per variant (CMakeLists.txt): `baseline` for any x86-64 CPU
// (SSE2, 4 floats per instruction) and, on x86-64, `avx` (8 floats per instruction), each into a
// namespace of its own. The variants compute the same float operations in the same order (no FMA
// contraction), so their outputs are identical bit for bit; the caller picks one per CPU.
// Calls of a kernel on disjoint neuron ranges may run concurrently.
#pragma once

#include <cstdint>

#include "layout.h"
#include "neuron.h"

#ifndef SNNCC_CPU_AVX
#define SNNCC_CPU_AVX 0  // whether the avx variant is built (set by CMake on x86-64)
#endif

// The sources of one variant are compiled with SNNCC_CPU_VARIANT set to its namespace.
#define SNNCC_CPU_DECLARED baseline
#include "cpu_kernels.inc"
#undef SNNCC_CPU_DECLARED
#if SNNCC_CPU_AVX
#define SNNCC_CPU_DECLARED avx
#include "cpu_kernels.inc"
#undef SNNCC_CPU_DECLARED
#endif

namespace snncc {

/// Neurons per work item: a work item reads T rows of this many contiguous values (16 KiB of
/// float32: long enough for the hardware prefetchers, small enough for its arrays to stay in L2).
/// Callers split the neurons into ranges of whole chunks.
constexpr int64_t kCpuChunk = 4096;

/// An instruction-set variant of the CPU kernels.
enum class CpuVariant : int { kBaseline, kAvx };

/// Whether this build has the avx variant and this CPU and OS can run it.
inline bool avx_available() {
#if SNNCC_CPU_AVX
  return __builtin_cpu_supports("avx");
#else
  return false;
#endif
}

/// The variant's kernel: `SNNCC_CPU_DISPATCH(variant, fn)(args...)` calls avx::fn or baseline::fn.
#if SNNCC_CPU_AVX
#define SNNCC_CPU_DISPATCH(variant, fn) ((variant) == ::snncc::CpuVariant::kAvx ? ::snncc::avx::fn : ::snncc::baseline::fn)
#else
#define SNNCC_CPU_DISPATCH(variant, fn) ::snncc::baseline::fn
#endif

}  // namespace snncc
