// The CPU kernels (snn.ParallelSpike, snn.SerialIF, snn.SpikeCount) and the choice of their
// instruction-set variant; no ONNX Runtime dependency (the GPU harness links them too).
//
// Each kernel source is compiled once per variant (CMakeLists.txt): `baseline` for any x86-64 CPU
// (SSE2, 4 floats per instruction) and, on x86-64, `avx` (8 floats), `avx2` (8 floats, integer
// and float16-conversion vectors) and `avx512` (16 floats), each into a namespace of its own. The
// variants compute the same float operations in the same order (no FMA: none is enabled for
// avx/avx2, and contraction is off for all), so their outputs are identical bit for bit; the
// caller picks one per CPU. Calls of a kernel on disjoint neuron ranges may run concurrently.
#pragma once

#include <cstdint>

#include "layout.h"
#include "neuron.h"

#ifndef SNNCC_CPU_X86
#define SNNCC_CPU_X86 0  // whether the avx, avx2 and avx512 variants are built (set by CMake on x86-64)
#endif

// The sources of one variant are compiled with SNNCC_CPU_VARIANT set to its namespace.
#define SNNCC_CPU_DECLARED baseline
#include "cpu_kernels.inc"
#undef SNNCC_CPU_DECLARED
#if SNNCC_CPU_X86
#define SNNCC_CPU_DECLARED avx
#include "cpu_kernels.inc"
#undef SNNCC_CPU_DECLARED
#define SNNCC_CPU_DECLARED avx2
#include "cpu_kernels.inc"
#undef SNNCC_CPU_DECLARED
#define SNNCC_CPU_DECLARED avx512
#include "cpu_kernels.inc"
#undef SNNCC_CPU_DECLARED
#endif

namespace snncc {

/// Neurons per work item: a work item reads T rows of this many contiguous values (16 KiB of
/// float32: long enough for the hardware prefetchers, small enough for its arrays to stay in L2).
/// Callers split the neurons into ranges of whole chunks.
constexpr int64_t kCpuChunk = 4096;

/// An instruction-set variant of the CPU kernels, in order of preference (the last is best).
enum class CpuVariant : int { kBaseline, kAvx, kAvx2, kAvx512 };

/// Every variant, and its name (SNNCC_CPU_VARIANT, the namespace of its kernels).
constexpr CpuVariant kCpuVariants[] = {CpuVariant::kBaseline, CpuVariant::kAvx, CpuVariant::kAvx2,
                                       CpuVariant::kAvx512};
constexpr const char* cpu_variant_name(CpuVariant variant) {
  constexpr const char* kNames[] = {"baseline", "avx", "avx2", "avx512"};
  return kNames[static_cast<int>(variant)];
}

/// Whether this build has `variant` and this CPU and OS can run it: the instruction sets its
/// sources are compiled with (CMakeLists.txt), whose register state the OS saves (GCC's
/// __builtin_cpu_supports checks XCR0 for the AVX and AVX-512 registers).
inline bool cpu_variant_available(CpuVariant variant) {
  switch (variant) {
    case CpuVariant::kBaseline:
      return true;
#if SNNCC_CPU_X86
    case CpuVariant::kAvx:
      return __builtin_cpu_supports("avx");
    case CpuVariant::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    case CpuVariant::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("f16c");
#endif
    default:
      return false;
  }
}

/// The best variant that this build and CPU can run.
inline CpuVariant best_cpu_variant() {
  CpuVariant best = CpuVariant::kBaseline;
  for (const CpuVariant variant : kCpuVariants) {
    if (cpu_variant_available(variant)) best = variant;
  }
  return best;
}

/// The variant's kernel: `SNNCC_CPU_DISPATCH(variant, fn)(args...)` calls avx512::fn, avx2::fn,
/// avx::fn or baseline::fn.
#if SNNCC_CPU_X86
#define SNNCC_CPU_DISPATCH(variant, fn)                                         \
  ((variant) == ::snncc::CpuVariant::kAvx512 ? ::snncc::avx512::fn             \
   : (variant) == ::snncc::CpuVariant::kAvx2 ? ::snncc::avx2::fn               \
   : (variant) == ::snncc::CpuVariant::kAvx  ? ::snncc::avx::fn                \
                                             : ::snncc::baseline::fn)
#else
#define SNNCC_CPU_DISPATCH(variant, fn) ::snncc::baseline::fn
#endif

}  // namespace snncc
