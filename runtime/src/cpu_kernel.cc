// CPU kernel of snn.ParallelSpike. A range of neurons is processed in chunks of kCpuChunk
// neurons; every inner loop runs over neurons that are contiguous in memory, so it vectorises:
//   1. mean current: sum the T rows in step order, then divide by T (ONNX Runtime's ReduceMean
//      over the leading axis does the same, so for float and double m matches the model-local
//      function bit for bit; _Float16 values are summed in float32);
//   2. drive and spike count (binary / closed), or nothing (dense);
//   3. output rows, one step at a time.
#include "cpu_kernel.h"

#include <algorithm>

namespace snncc {
namespace {

/// Per-neuron copies of the channel parameters of neurons [first, first + n).
template <typename S, typename F>
void gather_params(const Params<S>& params, const Geometry& g, int64_t first, int64_t n, F* theta_pre,
                   S* theta_post, F* psi) {
  int64_t channel = (first / g.inner) % g.channels;
  int64_t offset = first % g.inner;
  for (int64_t j = 0; j < n; ++j) {
    theta_pre[j] = static_cast<F>(params.theta_pre[channel * params.theta_pre_stride]);
    theta_post[j] = params.theta_post[channel * params.theta_post_stride];
    psi[j] = static_cast<F>(params.psi[channel * params.psi_stride]);
    if (++offset == g.inner) {
      offset = 0;
      if (++channel == g.channels) channel = 0;
    }
  }
}

template <typename S>
void chunk(const S* __restrict x, const Params<S>& params, S* __restrict y, const Geometry& g,
           Algorithm algorithm, int64_t first, int64_t n) {
  using F = CpuMath<S>;
  alignas(64) F drive_of[kCpuChunk];
  alignas(64) F theta_pre[kCpuChunk];
  alignas(64) S theta_post[kCpuChunk];
  alignas(64) F psi[kCpuChunk];
  alignas(64) F first_step[kCpuChunk];  // 0-based first firing step, T when silent
  alignas(64) int count[kCpuChunk];
  const int steps = static_cast<int>(g.steps);
  const F steps_f = static_cast<F>(steps);
  const int64_t stride = g.neurons;
  x += first;
  y += first;

  F* sum = drive_of;  // the sum becomes the drive in place
  for (int64_t j = 0; j < n; ++j) sum[j] = static_cast<F>(x[j]);
  for (int t = 1; t < steps; ++t) {
    const S* row = x + t * stride;
    for (int64_t j = 0; j < n; ++j) sum[j] += static_cast<F>(row[j]);
  }
  gather_params(params, g, first, n, theta_pre, theta_post, psi);
  for (int64_t j = 0; j < n; ++j) drive_of[j] = drive(sum[j] / steps_f, theta_pre[j], psi[j], steps_f);

  if (algorithm == Algorithm::kDense) {
    for (int t = 0; t < steps; ++t) {
      S* row = y + t * stride;
      const int remaining = steps - t;
      for (int64_t j = 0; j < n; ++j) {
        row[j] = fires(drive_of[j], theta_pre[j], remaining) ? theta_post[j] : S(0);
      }
    }
    return;
  }
  if (algorithm == Algorithm::kBinary) {
    // count_binary, interleaved over the chunk: the same strides for every neuron.
    std::fill(count, count + n, 0);
    for (int s = top_stride(steps); s > 0; s >>= 1) {
      for (int64_t j = 0; j < n; ++j) {
        const int candidate = count[j] + s;
        count[j] = candidate <= steps && fires(drive_of[j], theta_pre[j], candidate) ? candidate : count[j];
      }
    }
  } else {
    for (int64_t j = 0; j < n; ++j) count[j] = count_closed(drive_of[j], theta_pre[j], steps);
  }
  for (int64_t j = 0; j < n; ++j) first_step[j] = static_cast<F>(steps - count[j]);
  for (int t = 0; t < steps; ++t) {
    S* row = y + t * stride;
    const F t_f = static_cast<F>(t);
    for (int64_t j = 0; j < n; ++j) row[j] = t_f >= first_step[j] ? theta_post[j] : S(0);
  }
}

}  // namespace

template <typename S>
void parallel_spike_cpu(const S* x, const Params<S>& params, S* y, const Geometry& geometry,
                        Algorithm algorithm, int64_t begin, int64_t end) {
  for (int64_t first = begin; first < end; first += kCpuChunk) {
    chunk(x, params, y, geometry, algorithm, first, std::min(kCpuChunk, end - first));
  }
}

#define SNNCC_INSTANTIATE(S)                                                                             \
  template void parallel_spike_cpu<S>(const S*, const Params<S>&, S*, const Geometry&, Algorithm, int64_t, int64_t);
SNNCC_INSTANTIATE(float)
SNNCC_INSTANTIATE(double)
SNNCC_INSTANTIATE(_Float16)
#undef SNNCC_INSTANTIATE

}  // namespace snncc
