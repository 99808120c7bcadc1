// CPU kernel of snn.SerialIF. A range of neurons is processed in chunks of kCpuChunk neurons
// whose membranes (and gathered parameters) stay in a thread's cache-resident scratch; the steps
// run in order in groups of kRowGroup in the outer loop, the neurons of the chunk in the inner
// one, which reads a group's rows of currents, applies integrate_and_fire to each in step order
// (serial_if.h: no branch, so it vectorises) and writes the group's output rows (straight into
// Y, or, for large outputs, built in cache and then stored with non-temporal stores).
#include "cpu_kernels.h"

#include <algorithm>
#include <memory>

#include "cpu_common.h"
#include "serial_if.h"

namespace snncc {
namespace SNNCC_CPU_VARIANT {
namespace {

/// Per-thread working memory (too large for every thread's stack): one chunk's state and a group
/// of output rows for the non-temporal stores.
struct Scratch {
  alignas(64) float membrane[kCpuChunk];
  alignas(64) float theta_pre[kCpuChunk];
  alignas(64) float theta_post[kCpuChunk];
  alignas(64) float psi[kCpuChunk];
  alignas(64) float out[kRowGroup * kCpuChunk];
};

/// Steps [t, t + Rows) of n neurons, in one pass: each neuron's membrane stays in a register
/// while it integrates its Rows currents in step order (rows of x `x_stride` apart), and the
/// spikes go to Rows rows of out (`out_stride` apart). Reading several rows at once keeps several
/// memory streams in flight, as ParallelSpike's sum does.
template <int Rows>
void steps(const float* __restrict x, int64_t x_stride, Scratch& s, int64_t n, float* __restrict out,
           int64_t out_stride) {
  float* __restrict membrane = s.membrane;
  const float* __restrict theta_pre = s.theta_pre;
  const float* __restrict theta_post = s.theta_post;
  const float* __restrict psi = s.psi;
  for (int64_t j = 0; j < n; ++j) {
    float v = membrane[j];
    for (int k = 0; k < Rows; ++k) {
      out[k * out_stride + j] = if_fired(integrate_and_fire(v, x[k * x_stride + j], theta_pre[j], psi[j]),
                                         theta_post[j]);
    }
    membrane[j] = v;
  }
}

}  // namespace

void serial_if_cpu(const float* x, const Params<float>& params, float* y, const Geometry& geometry, int64_t begin,
                   int64_t end) {
  thread_local const std::unique_ptr<Scratch> scratch = std::make_unique<Scratch>();
  Scratch& s = *scratch;
  const bool stream = streams_output<float>(geometry);
  const int64_t stride = geometry.neurons;
  for (int64_t first = begin; first < end; first += kCpuChunk) {
    const int64_t n = std::min(kCpuChunk, end - first);
    gather(params.theta_pre, params.theta_pre_stride, geometry, first, n, s.theta_pre);
    gather(params.theta_post, params.theta_post_stride, geometry, first, n, s.theta_post);
    gather(params.psi, params.psi_stride, geometry, first, n, s.psi);
    for (int64_t j = 0; j < n; ++j) s.membrane[j] = initial_membrane(s.theta_pre[j]);
    for (int64_t t = 0; t < geometry.steps; t += kRowGroup) {
      const int rows = static_cast<int>(std::min<int64_t>(kRowGroup, geometry.steps - t));
      const float* in = x + t * stride + first;
      float* row = y + t * stride + first;
      float* out = stream ? s.out : row;  // streamed: built in cache, then stored row by row
      const int64_t out_stride = stream ? kCpuChunk : stride;
      switch (rows) {
        case 1: steps<1>(in, stride, s, n, out, out_stride); break;
        case 2: steps<2>(in, stride, s, n, out, out_stride); break;
        case 3: steps<3>(in, stride, s, n, out, out_stride); break;
        default: steps<kRowGroup>(in, stride, s, n, out, out_stride); break;
      }
      if (stream) {
        for (int k = 0; k < rows; ++k) stream_row(row + k * stride, s.out + k * kCpuChunk, n);
      }
    }
  }
  finish_stores();
}

}  // namespace SNNCC_CPU_VARIANT
}  // namespace snncc
