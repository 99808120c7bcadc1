// CPU kernel of snn.ParallelSpike. A range of neurons is processed in chunks of kCpuChunk
// neurons; every inner loop runs over neurons that are contiguous in memory, so it vectorises:
//   1. mean current: sum the T rows in step order, then divide by T (ONNX Runtime's ReduceMean
//      over the leading axis does the same, so for float and double m matches the model-local
//      function bit for bit; _Float16 values are summed in float32);
//   2. drive and spike count (binary / closed), or nothing (dense);
//   3. output rows, one step at a time.
#include "cpu_kernel.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace snncc {
namespace {

/// out[j] = values[channel of neuron first + j] for j < n, as F; stride 0 broadcasts values[0].
/// Works in runs of consecutive neurons: runs of one channel (inner > 1) or of consecutive
/// channels (inner == 1), so that every inner loop is a fill or a copy.
template <typename S, typename F>
void gather(const S* values, int64_t stride, const Geometry& g, int64_t first, int64_t n, F* out) {
  if (stride == 0) {
    std::fill(out, out + n, static_cast<F>(values[0]));
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

/// dst[j] = src[j] for j < n; non-temporal stores where `stream` and the type allows.
template <typename S>
void store_row(S* __restrict dst, const S* __restrict src, int64_t n, bool stream) {
  int64_t j = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<S, float>) {
    if (stream) {
      for (; j < n && reinterpret_cast<uintptr_t>(dst + j) % 16 != 0; ++j) dst[j] = src[j];
      for (; j + 4 <= n; j += 4) _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
    }
  }
#endif
  std::copy(src + j, src + n, dst + j);
}

/// Per-thread working arrays of one chunk (too large for every thread's stack).
template <typename S>
struct Scratch {
  using F = CpuMath<S>;
  alignas(64) F drive[kCpuChunk];  // first the sum of the currents, then the drive
  alignas(64) F theta_pre[kCpuChunk];
  alignas(64) F psi[kCpuChunk];
  alignas(64) F first_step[kCpuChunk];  // 0-based first firing step, T when silent
  alignas(64) int count[kCpuChunk];
  alignas(64) S theta_post[kCpuChunk];
  alignas(64) S out[kCpuChunk];  // one output row, built in cache and then stored
};

/// sum[j] = x[j] + x[stride + j] + ... + x[(steps-1)*stride + j], added in step order; four
/// rows per pass keep the partial sum in a register without changing the order.
template <typename S, typename F>
void sum_steps(const S* __restrict x, int64_t stride, int steps, int64_t n, F* __restrict sum) {
  for (int64_t j = 0; j < n; ++j) sum[j] = static_cast<F>(x[j]);
  int t = 1;
  for (; t + 4 <= steps; t += 4) {
    const S* r = x + t * stride;
    for (int64_t j = 0; j < n; ++j) {
      F acc = sum[j];
      acc += static_cast<F>(r[j]);
      acc += static_cast<F>(r[stride + j]);
      acc += static_cast<F>(r[2 * stride + j]);
      acc += static_cast<F>(r[3 * stride + j]);
      sum[j] = acc;
    }
  }
  for (; t < steps; ++t) {
    const S* r = x + t * stride;
    for (int64_t j = 0; j < n; ++j) sum[j] += static_cast<F>(r[j]);
  }
}

template <typename S>
void chunk(const S* x, const Params<S>& params, S* y, const Geometry& g, Algorithm algorithm, int64_t first,
           int64_t n, Scratch<S>& w) {
  using F = CpuMath<S>;
  const int steps = static_cast<int>(g.steps);
  const F steps_f = static_cast<F>(steps);
  const int64_t stride = g.neurons;
  const bool stream = g.steps * g.neurons * static_cast<int64_t>(sizeof(S)) >= kStreamBytes;
  x += first;
  y += first;

  sum_steps(x, stride, steps, n, w.drive);
  gather(params.theta_pre, params.theta_pre_stride, g, first, n, w.theta_pre);
  gather(params.theta_post, params.theta_post_stride, g, first, n, w.theta_post);
  gather(params.psi, params.psi_stride, g, first, n, w.psi);
  for (int64_t j = 0; j < n; ++j) w.drive[j] = drive(w.drive[j] / steps_f, w.theta_pre[j], w.psi[j], steps_f);

  if (algorithm == Algorithm::kDense) {
    for (int t = 0; t < steps; ++t) {
      const int remaining = steps - t;
      for (int64_t j = 0; j < n; ++j) {
        const S spike = w.theta_post[j];  // loaded unconditionally, so the select vectorises
        w.out[j] = fires(w.drive[j], w.theta_pre[j], remaining) ? spike : S(0);
      }
      store_row(y + t * stride, w.out, n, stream);
    }
    return;
  }
  if (algorithm == Algorithm::kBinary) {
    // count_binary, interleaved over the chunk: the same strides for every neuron.
    std::fill(w.count, w.count + n, 0);
    for (int s = top_stride(steps); s > 0; s >>= 1) {
      for (int64_t j = 0; j < n; ++j) {
        const int candidate = w.count[j] + s;  // bitwise &: no branch, so the loop vectorises
        w.count[j] += (candidate <= steps) & fires(w.drive[j], w.theta_pre[j], candidate) ? s : 0;
      }
    }
  } else {
    for (int64_t j = 0; j < n; ++j) w.count[j] = count_closed(w.drive[j], w.theta_pre[j], steps);
  }
  for (int64_t j = 0; j < n; ++j) w.first_step[j] = static_cast<F>(steps - w.count[j]);
  for (int t = 0; t < steps; ++t) {
    const F t_f = static_cast<F>(t);
    for (int64_t j = 0; j < n; ++j) {
      const S spike = w.theta_post[j];
      w.out[j] = t_f >= w.first_step[j] ? spike : S(0);
    }
    store_row(y + t * stride, w.out, n, stream);
  }
}

}  // namespace

template <typename S>
void parallel_spike_cpu(const S* x, const Params<S>& params, S* y, const Geometry& geometry,
                        Algorithm algorithm, int64_t begin, int64_t end) {
  thread_local const std::unique_ptr<Scratch<S>> scratch = std::make_unique<Scratch<S>>();
  for (int64_t first = begin; first < end; first += kCpuChunk) {
    chunk(x, params, y, geometry, algorithm, first, std::min(kCpuChunk, end - first), *scratch);
  }
#if defined(__SSE2__)
  _mm_sfence();  // order the non-temporal stores before the caller signals completion
#endif
}

#define SNNCC_INSTANTIATE(S)                                                                             \
  template void parallel_spike_cpu<S>(const S*, const Params<S>&, S*, const Geometry&, Algorithm, int64_t, int64_t);
SNNCC_INSTANTIATE(float)
SNNCC_INSTANTIATE(double)
SNNCC_INSTANTIATE(_Float16)
#undef SNNCC_INSTANTIATE

}  // namespace snncc
