// CPU kernel of snn.SpikeCount: one pass over a range of neurons in chunks of kCpuChunk, the
// per-channel parameters gathered into cache-resident scratch first, so that the inner loop runs
// over contiguous neurons without a branch and vectorises (float32, float64; float16 converts
// element by element). With the optional input rate_per_spike, each count is multiplied by it as
// a Mul node would: the count in the element type times the rate, rounded to the element type
// (float16: the exact float32 product of two binary16 values, rounded once).
#include "cpu_kernels.h"

#include <algorithm>
#include <memory>

#include "cpu_common.h"
#include "spike_count.h"

namespace snncc {
namespace SNNCC_CPU_VARIANT {
namespace {

/// Per-thread working memory (too large for every thread's stack): one chunk's parameters.
template <typename S>
struct Scratch {
  using F = CpuMath<S>;
  alignas(64) F theta_pre[kCpuChunk];
  alignas(64) F psi[kCpuChunk];
  alignas(64) F rate_per_spike[kCpuChunk];
};

/// Rounds an F value to storage type S and back: identity for float and double, binary16 for _Float16.
template <typename S>
struct NarrowTo {
  CpuMath<S> operator()(CpuMath<S> v) const {
    if constexpr (std::is_same_v<S, _Float16>) {
      return static_cast<float>(static_cast<_Float16>(v));
    } else {
      return v;
    }
  }
};

/// floor(v) rounded to storage type S and back (spike_count's floor_to): with SSE4.1 (the avx,
/// avx2 and avx512 variants) one rounding instruction, else floor_exact; both exact.
template <typename S>
struct FloorTo {
  CpuMath<S> operator()(CpuMath<S> v) const {
#if defined(__SSE4_1__)
    return NarrowTo<S>{}(std::floor(v));
#else
    return NarrowTo<S>{}(floor_exact(v));
#endif
  }
};

/// out[j] = the spike count of neuron j, times rate[j] when WithRate, for j < n: one branch-free
/// loop over contiguous neurons, which vectorises.
template <bool WithRate, typename S>
void count_run(const S* __restrict in, const CpuMath<S>* __restrict theta_pre, const CpuMath<S>* __restrict psi,
               const CpuMath<S>* __restrict rate, CpuMath<S> steps_f, int64_t n, S* __restrict out) {
  using F = CpuMath<S>;
  for (int64_t j = 0; j < n; ++j) {
    const S count = static_cast<S>(spike_count(static_cast<F>(in[j]), theta_pre[j], psi[j], steps_f, FloorTo<S>{}));
    if constexpr (WithRate) {
      out[j] = static_cast<S>(static_cast<F>(count) * rate[j]);
    } else {
      out[j] = count;
    }
  }
}

}  // namespace

template <typename S>
void spike_count_cpu(const S* m, const Params<S>& params, S* k, const Geometry& geometry, int64_t steps,
                     int64_t begin, int64_t end) {
  using F = CpuMath<S>;
  thread_local const std::unique_ptr<Scratch<S>> scratch = std::make_unique<Scratch<S>>();
  Scratch<S>& s = *scratch;
  // T as the element type, as the function's CastLike (int64 -> float -> float16 for float16).
  const F steps_f = NarrowTo<S>{}(static_cast<F>(steps));
  for (int64_t first = begin; first < end; first += kCpuChunk) {
    const int64_t n = std::min(kCpuChunk, end - first);
    gather(params.theta_pre, params.theta_pre_stride, geometry, first, n, s.theta_pre);
    gather(params.psi, params.psi_stride, geometry, first, n, s.psi);
    if (params.rate_per_spike == nullptr) {
      count_run<false>(m + first, s.theta_pre, s.psi, nullptr, steps_f, n, k + first);
      continue;
    }
    gather(params.rate_per_spike, params.rate_per_spike_stride, geometry, first, n, s.rate_per_spike);
    count_run<true>(m + first, s.theta_pre, s.psi, s.rate_per_spike, steps_f, n, k + first);
  }
}

#define SNNCC_INSTANTIATE(S)                                                                                     \
  template void spike_count_cpu<S>(const S*, const Params<S>&, S*, const Geometry&, int64_t, int64_t, int64_t);
SNNCC_INSTANTIATE(float)
SNNCC_INSTANTIATE(double)
SNNCC_INSTANTIATE(_Float16)
#undef SNNCC_INSTANTIATE

}  // namespace SNNCC_CPU_VARIANT
}  // namespace snncc
