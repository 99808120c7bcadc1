// Pieces shared by the CPU kernel sources (no ONNX Runtime dependency): the arithmetic type, the
// per-channel parameter gather and the output row stores. Included only by those sources: like
// them, it puts its definitions into the namespace of the variant being compiled
// (SNNCC_CPU_VARIANT), so that these functions are not shared between variants. The firing
// rules (neuron.h, serial_if.h, spike_count.h) and std:: helpers are shared, and safe only
// because -O3 inlines them: tests/test_native_variants.py checks that the objects of every variant
// but baseline define no symbol outside their namespace.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "cpu_kernels.h"

namespace snncc {
namespace SNNCC_CPU_VARIANT {

/// Rows (time steps) a kernel reads per pass over a chunk: several rows in flight stream better
/// than one, and the partial results stay in registers.
constexpr int kRowGroup = 4;

/// Arithmetic type for storage type S: float32 for float and _Float16 (IEEE binary16), double for
/// double.
template <typename S>
using CpuMath = std::conditional_t<std::is_same_v<S, double>, double, float>;

/// gather() for the NCHWc layout (g.block > 1): runs of inner * block neurons of one channel
/// block, in which the block's `block` values repeat; each run writes one period and doubles it.
template <typename S, typename F>
void gather_blocked(const S* values, const Geometry& g, int64_t first, int64_t n, F* out) {
  const int64_t span = g.inner * g.block;
  const int64_t blocks = g.channels / g.block;
  int64_t block = (first / span) % blocks;
  int64_t offset = first % span;
  for (int64_t j = 0; j < n;) {
    const int64_t run = std::min(span - offset, n - j);
    F* run_out = out + j;
    const int64_t period = std::min(run, g.block);
    for (int64_t k = 0; k < period; ++k) {
      run_out[k] = static_cast<F>(values[block * g.block + (offset + k) % g.block]);
    }
    for (int64_t filled = period; filled < run;) {  // filled is a multiple of the period
      const int64_t copy = std::min(filled, run - filled);
      std::copy_n(run_out, copy, run_out + filled);
      filled += copy;
    }
    j += run;
    offset = 0;
    if (++block == blocks) block = 0;
  }
}

/// out[j] = values[channel of neuron first + j] for j < n, as F; stride 0 broadcasts values[0].
/// Works in runs of consecutive neurons: runs of one channel (inner > 1) or of consecutive
/// channels (inner == 1), so that every inner loop is a fill or a copy.
template <typename S, typename F>
void gather(const S* values, int64_t stride, const Geometry& g, int64_t first, int64_t n, F* out) {
  if (stride == 0) {
    std::fill(out, out + n, static_cast<F>(values[0]));
    return;
  }
  if (g.block > 1) {
    gather_blocked(values, g, first, n, out);
    return;
  }
  int64_t channel = (first / g.inner) % g.channels;
  int64_t offset = first % g.inner;
  for (int64_t j = 0; j < n;) {
    if (g.inner == 1) {
      const int64_t run = std::min(g.channels - channel, n - j);
      for (int64_t k = 0; k < run; ++k) out[j + k] = static_cast<F>(values[channel + k]);
      j += run;
      channel = 0;
    } else {
      const int64_t run = std::min(g.inner - offset, n - j);
      std::fill(out + j, out + j + run, static_cast<F>(values[channel]));
      j += run;
      offset = 0;
      if (++channel == g.channels) channel = 0;
    }
  }
}

/// Outputs at least this large are written with non-temporal stores: they cannot stay in cache
/// anyway, and streaming saves reading every line before writing it (as large memcpy does).
constexpr int64_t kStreamBytes = int64_t{16} << 20;

/// Whether a call writes its output with non-temporal stores (see kStreamBytes).
template <typename S>
bool streams_output(const Geometry& g) {
  return g.steps * g.neurons * static_cast<int64_t>(sizeof(S)) >= kStreamBytes;
}

/// dst[j] = src[j] for j < n with non-temporal stores (where SSE2 has them).
inline void stream_row(float* __restrict dst, const float* __restrict src, int64_t n) {
  int64_t j = 0;
#if defined(__SSE2__)
  for (; j < n && reinterpret_cast<uintptr_t>(dst + j) % 16 != 0; ++j) dst[j] = src[j];
  for (; j + 4 <= n; j += 4) _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
#endif
  std::copy(src + j, src + n, dst + j);
}

/// Orders a range's non-temporal stores before the caller signals completion.
inline void finish_stores() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace SNNCC_CPU_VARIANT
}  // namespace snncc
