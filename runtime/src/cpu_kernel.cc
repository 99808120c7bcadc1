// CPU kernel of snn.ParallelSpike. A range of neurons is processed in chunks of kCpuChunk
// neurons; every inner loop runs over neurons that are contiguous in memory, so it vectorises:
//   1. mean current: sum the rows of X in step order, then divide by their number (T, or 1 for a
//      constant current; ONNX Runtime's ReduceMean over the leading axis does the same, so for
//      float and double m matches the model-local function bit for bit; _Float16 values are
//      summed in float32);
//   2. drive and spike count (binary / closed), or nothing (dense);
//   3. output rows, one step at a time, written straight into Y (large float32 outputs with
//      non-temporal stores).
// Step 3 of a chunk runs interleaved with step 1 of the next (see parallel_spike_cpu). For the
// binary search at T <= kOnePassSteps, the three steps run in one pass instead (one_pass, plain
// stores).
#include "cpu_kernels.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>

#include "cpu_common.h"

namespace snncc {
namespace SNNCC_CPU_VARIANT {
namespace {

/// One chunk of neurons between its two passes over the T steps: the first pass sums its
/// currents (into `drive`) and then fixes its spike counts; the second writes its output rows.
template <typename S>
struct Chunk {
  using F = CpuMath<S>;
  alignas(64) F drive[kCpuChunk];  // first the sum of the currents, then the drive
  alignas(64) F theta_pre[kCpuChunk];
  alignas(64) F psi[kCpuChunk];
  alignas(64) F first_step[kCpuChunk];  // 0-based first firing step, T when silent
  alignas(64) int count[kCpuChunk];
  alignas(64) S theta_post[kCpuChunk];
  int64_t first = 0;  // index of the chunk's first neuron
  int64_t n = 0;      // neurons in the chunk
};

/// Per-thread working memory (too large for every thread's stack): two chunks in flight.
template <typename S>
struct Scratch {
  Chunk<S> chunks[2];
};

/// sum[j] (Starts: =, else +=) the Rows rows from r on (`stride` apart), added in step order in
/// one pass: the partial sum stays in a register.
template <int Rows, bool Starts, typename S>
void add_rows(const S* __restrict r, int64_t stride, int64_t n, CpuMath<S>* __restrict sum) {
  using F = CpuMath<S>;
  for (int64_t j = 0; j < n; ++j) {
    F acc = Starts ? static_cast<F>(r[j]) : sum[j] + static_cast<F>(r[j]);
    for (int k = 1; k < Rows; ++k) acc += static_cast<F>(r[k * stride + j]);
    sum[j] = acc;
  }
}

template <int Rows, typename S>
void add_rows(bool starts, const S* r, int64_t stride, int64_t n, CpuMath<S>* sum) {
  if (starts) {
    add_rows<Rows, true>(r, stride, n, sum);
  } else {
    add_rows<Rows, false>(r, stride, n, sum);
  }
}

/// Adds rows [t, t + rows) (rows <= kRowGroup) of the chunk's currents to its sums, in step
/// order; row 0 starts them.
template <typename S>
void accumulate(const S* x, int64_t stride, int t, int rows, Chunk<S>& c) {
  const S* r = x + c.first + t * stride;
  switch (rows) {
    case 1: return add_rows<1>(t == 0, r, stride, c.n, c.drive);
    case 2: return add_rows<2>(t == 0, r, stride, c.n, c.drive);
    case 3: return add_rows<3>(t == 0, r, stride, c.n, c.drive);
    default: return add_rows<kRowGroup>(t == 0, r, stride, c.n, c.drive);
  }
}

/// The chunk's per-neuron θ_pre, θ_post and ψ.
template <typename S>
void gather_parameters(const Params<S>& params, const Geometry& g, Chunk<S>& c) {
  gather(params.theta_pre, params.theta_pre_stride, g, c.first, c.n, c.theta_pre);
  gather(params.theta_post, params.theta_post_stride, g, c.first, c.n, c.theta_post);
  gather(params.psi, params.psi_stride, g, c.first, c.n, c.psi);
}

/// After the last row: parameters, drive and (binary / closed) the first firing step.
template <typename S>
void decide(const Params<S>& params, const Geometry& g, Algorithm algorithm, Chunk<S>& c) {
  using F = CpuMath<S>;
  const int steps = static_cast<int>(g.steps);
  const F steps_f = static_cast<F>(steps);
  const F input_steps_f = static_cast<F>(g.input_steps);
  const int64_t n = c.n;
  gather_parameters(params, g, c);
  if (algorithm == Algorithm::kBinary) {
    // count_binary, interleaved over the chunk: the same strides for every neuron (bitwise &: no
    // branch, so the loops vectorise). The first stride shares its pass with the drive.
    const int top = top_stride(steps);
    for (int64_t j = 0; j < n; ++j) {
      const F d = drive(c.drive[j] / input_steps_f, c.theta_pre[j], c.psi[j], steps_f);
      c.drive[j] = d;
      c.count[j] = fires(d, c.theta_pre[j], top) ? top : 0;
    }
    for (int s = top >> 1; s > 0; s >>= 1) {
      for (int64_t j = 0; j < n; ++j) {
        const int candidate = c.count[j] + s;
        c.count[j] += (candidate <= steps) & fires(c.drive[j], c.theta_pre[j], candidate) ? s : 0;
      }
    }
  } else {
    for (int64_t j = 0; j < n; ++j) c.drive[j] = drive(c.drive[j] / input_steps_f, c.theta_pre[j], c.psi[j], steps_f);
    if (algorithm == Algorithm::kDense) return;  // decided step by step while writing
    for (int64_t j = 0; j < n; ++j) c.count[j] = count_closed(c.drive[j], c.theta_pre[j], steps);
  }
  for (int64_t j = 0; j < n; ++j) c.first_step[j] = static_cast<F>(steps - c.count[j]);
}

/// Writes output rows [t, t + rows) of a decided chunk into Y.
template <typename S>
void emit(const Chunk<S>& c, const Geometry& g, Algorithm algorithm, int t, int rows, bool stream, S* y) {
  using F = CpuMath<S>;
  const int64_t n = c.n;
  for (const int end = t + rows; t < end; ++t) {
    S* __restrict dst = y + c.first + t * g.neurons;
    if (algorithm == Algorithm::kDense) {
      const int remaining = static_cast<int>(g.steps) - t;
      for (int64_t j = 0; j < n; ++j) {
        const S spike = c.theta_post[j];  // loaded unconditionally, so the select vectorises
        dst[j] = fires(c.drive[j], c.theta_pre[j], remaining) ? spike : S(0);
      }
      continue;
    }
    const F t_f = static_cast<F>(t);
    int64_t j = 0;
#if defined(__SSE2__)
    if constexpr (std::is_same_v<S, float>) {
      if (stream) {  // non-temporal: the output cannot stay in cache anyway (kStreamBytes)
        for (; j < n && reinterpret_cast<uintptr_t>(dst + j) % 16 != 0; ++j) {
          dst[j] = t_f >= c.first_step[j] ? c.theta_post[j] : 0.0f;
        }
        const __m128 step = _mm_set1_ps(t_f);
        for (; j + 4 <= n; j += 4) {
          const __m128 fired = _mm_cmpge_ps(step, _mm_loadu_ps(c.first_step + j));
          _mm_stream_ps(dst + j, _mm_and_ps(fired, _mm_loadu_ps(c.theta_post + j)));
        }
      }
    }
#endif
    for (; j < n; ++j) {
      const S spike = c.theta_post[j];
      dst[j] = t_f >= c.first_step[j] ? spike : S(0);
    }
  }
}

}  // namespace

/// Steps T <= kOnePassSteps take the one-pass path (binary search only). Beyond, its 2·T
/// concurrent row streams run slower than the pipeline over chunks once a layer leaves the
/// cache (measured at T = 8: 1.7× slower from 256k neurons on).
constexpr int kOnePassSteps = kRowGroup;

/// One stride of count_binary without its bound (candidate <= T): count + Stride if that
/// candidate fires, else count. Written as a select, so that the loop over neurons vectorises.
template <int Stride, typename F>
inline F lift(F count, F drive_value, F theta_pre) {
  const F candidate = count + static_cast<F>(Stride);
  return drive_value >= theta_pre * candidate ? candidate : count;
}

/// Binary search for T <= kOnePassSteps, the whole neuron in one pass over a chunk whose
/// parameters are gathered: each neuron's Rows input currents are summed (in step order, as
/// `accumulate`), its first firing step found and its T outputs written (as `emit`) while it stays
/// in registers. The strides are 4, 2, 1 for every T <= 4 (fewer do not vectorise with GCC 12 at
/// T = 2, 3) and run without count_binary's bound: since `fires` is monotone in r for θ_pre > 0
/// (the op's contract, docs/ops.md; dense and binary differ outside it anyway), they find the
/// largest r <= 7 that fires, which is the spike count whenever it is <= T; above T, the first
/// firing step T - r is negative and every step fires, as with count T. So the outputs equal the
/// two-pass path's bit for bit.
template <int Steps, int Rows, typename S, int... Row, int... Step>
void one_pass(std::integer_sequence<int, Row...>, std::integer_sequence<int, Step...>, const S* __restrict x,
              const Geometry& g, const Chunk<S>& c, S* __restrict y) {
  using F = CpuMath<S>;
  const int64_t stride = g.neurons;
  const S* __restrict in = x + c.first;
  S* __restrict out = y + c.first;
  const F* __restrict theta_pre = c.theta_pre;
  const F* __restrict psi = c.psi;
  const S* __restrict theta_post = c.theta_post;
  // No iteration reads what another writes (X and Y are distinct tensors): spares GCC the
  // overlap checks between the row pointers, on which it may give up vectorising.
#pragma GCC ivdep
  for (int64_t j = 0; j < c.n; ++j) {
    F sum = static_cast<F>(in[j]);
    ((sum += static_cast<F>(in[(Row + 1) * stride + j])), ...);  // rows 1..Rows-1, in order
    const F d = drive(sum / static_cast<F>(Rows), theta_pre[j], psi[j], static_cast<F>(Steps));
    const F th = theta_pre[j];
    const F first_step = static_cast<F>(Steps) - lift<1>(lift<2>(lift<4>(F(0), d, th), d, th), d, th);
    const S spike = theta_post[j];
    ((out[Step * stride + j] = static_cast<F>(Step) >= first_step ? spike : S(0)), ...);
  }
}

/// one_pass for Steps and Rows (Steps, or 1 for a constant current).
template <int Steps, typename S>
void one_pass_steps(const S* x, const Geometry& g, const Chunk<S>& c, S* y) {
  constexpr auto steps = std::make_integer_sequence<int, Steps>{};
  if (g.input_steps == 1) return one_pass<Steps, 1>(std::make_integer_sequence<int, 0>{}, steps, x, g, c, y);
  one_pass<Steps, Steps>(std::make_integer_sequence<int, Steps - 1>{}, steps, x, g, c, y);
}

/// one_pass_steps for the call's T, 1 <= T <= kOnePassSteps (the kernel rejects T < 1 when it is
/// created; T = kOnePassSteps is not compared).
template <int Steps = 1, typename S>
void one_pass_for(const S* x, const Geometry& g, const Chunk<S>& c, S* y) {
  if constexpr (Steps < kOnePassSteps) {
    if (g.steps != Steps) return one_pass_for<Steps + 1>(x, g, c, y);
  }
  one_pass_steps<Steps>(x, g, c, y);
}

/// A software pipeline over the chunks of the range: while the currents of one chunk are read,
/// the outputs of the previous one are written, a group of rows each in turn, so that reads and
/// writes to memory overlap as in a copy.
template <typename S>
void parallel_spike_cpu(const S* x, const Params<S>& params, S* y, const Geometry& geometry,
                        Algorithm algorithm, int64_t begin, int64_t end) {
  thread_local const std::unique_ptr<Scratch<S>> scratch = std::make_unique<Scratch<S>>();
  const int steps = static_cast<int>(geometry.steps);
  if (algorithm == Algorithm::kBinary && steps <= kOnePassSteps) {
    Chunk<S>& c = scratch->chunks[0];
    for (c.first = begin; c.first < end; c.first += kCpuChunk) {
      c.n = std::min(kCpuChunk, end - c.first);
      gather_parameters(params, geometry, c);
      one_pass_for(x, geometry, c, y);
    }
    return;
  }
  const int input_steps = static_cast<int>(geometry.input_steps);
  const bool stream = streams_output<S>(geometry);
  Chunk<S>* previous = nullptr;
  for (int64_t first = begin, k = 0; first < end || previous != nullptr; first += kCpuChunk, ++k) {
    Chunk<S>* current = first < end ? &scratch->chunks[k % 2] : nullptr;
    if (current != nullptr) {
      current->first = first;
      current->n = std::min(kCpuChunk, end - first);
    }
    for (int t = 0; t < steps; t += kRowGroup) {
      const int rows = std::min(kRowGroup, steps - t);
      if (current != nullptr && t < input_steps) {
        accumulate(x, geometry.neurons, t, std::min(kRowGroup, input_steps - t), *current);
      }
      if (previous != nullptr) emit(*previous, geometry, algorithm, t, rows, stream, y);
    }
    if (current != nullptr) decide(params, geometry, algorithm, *current);
    previous = current;
  }
  finish_stores();
}

#define SNNCC_INSTANTIATE(S)                                                                             \
  template void parallel_spike_cpu<S>(const S*, const Params<S>&, S*, const Geometry&, Algorithm, int64_t, int64_t);
SNNCC_INSTANTIATE(float)
SNNCC_INSTANTIATE(double)
SNNCC_INSTANTIATE(_Float16)
#undef SNNCC_INSTANTIATE

}  // namespace SNNCC_CPU_VARIANT
}  // namespace snncc
