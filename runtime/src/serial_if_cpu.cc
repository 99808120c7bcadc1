// CPU kernel of snn.SerialIF. A range of neurons is processed in chunks of kCpuChunk neurons
// whose membranes (and gathered parameters) stay in a thread's cache-resident scratch; the steps
// run in order in the outer loop, the neurons of the chunk in the inner one, which reads one row
// of currents, applies integrate_and_fire (serial_if.h: no branch, so it vectorises)
// and writes one output row (straight into Y, or, for large outputs, built in cache and then
// stored with non-temporal stores).
#include "cpu_kernels.h"

#include <algorithm>
#include <memory>

#include "cpu_common.h"
#include "serial_if.h"

namespace snncc {
namespace SNNCC_CPU_VARIANT {
namespace {

/// Per-thread working memory (too large for every thread's stack): one chunk's state and one
/// output row for the non-temporal stores.
struct Scratch {
  alignas(64) float membrane[kCpuChunk];
  alignas(64) float theta_pre[kCpuChunk];
  alignas(64) float theta_post[kCpuChunk];
  alignas(64) float psi[kCpuChunk];
  alignas(64) float out[kCpuChunk];
};

/// One step of n neurons: integrates row x into the membranes and writes the spikes into out.
void step(const float* __restrict x, Scratch& s, int64_t n, float* __restrict out) {
  float* __restrict membrane = s.membrane;
  const float* __restrict theta_pre = s.theta_pre;
  const float* __restrict theta_post = s.theta_post;
  const float* __restrict psi = s.psi;
  for (int64_t j = 0; j < n; ++j) {
    out[j] = if_fired(integrate_and_fire(membrane[j], x[j], theta_pre[j], psi[j]), theta_post[j]);
  }
}

}  // namespace

void serial_if_cpu(const float* x, const Params<float>& params, float* y, const Geometry& geometry, int64_t begin,
                   int64_t end) {
  thread_local const std::unique_ptr<Scratch> scratch = std::make_unique<Scratch>();
  Scratch& s = *scratch;
  const bool stream = streams_output<float>(geometry);
  for (int64_t first = begin; first < end; first += kCpuChunk) {
    const int64_t n = std::min(kCpuChunk, end - first);
    gather(params.theta_pre, params.theta_pre_stride, geometry, first, n, s.theta_pre);
    gather(params.theta_post, params.theta_post_stride, geometry, first, n, s.theta_post);
    gather(params.psi, params.psi_stride, geometry, first, n, s.psi);
    for (int64_t j = 0; j < n; ++j) s.membrane[j] = initial_membrane(s.theta_pre[j]);
    for (int64_t t = 0; t < geometry.steps; ++t) {
      float* row = y + t * geometry.neurons + first;
      step(x + t * geometry.neurons + first, s, n, stream ? s.out : row);
      if (stream) stream_row(row, s.out, n);
    }
  }
  finish_stores();
}

}  // namespace SNNCC_CPU_VARIANT
}  // namespace snncc
