// CUDA kernel of snn.ParallelSpike: one thread per neuron (grid-stride). For every step,
// neighbouring threads read and write neighbouring neurons, so each access is coalesced.
// X holds one row per step, or one row for every step (Geometry::input_steps).
// Float16 values are widened to float32 for the sum and the comparisons.
// Built with --fmad=false so that the float32 results equal the CPU kernel's bit for bit.
#include "cuda_common.cuh"
#include "cuda_kernel.h"

namespace snncc::cuda {
namespace {

/// S: storage type; I: index type, wide enough for steps * neurons plus one grid stride.
template <typename S, typename I>
__global__ void parallel_spike_kernel(const S* __restrict__ x, Params<S> params, S* __restrict__ y, I neurons,
                                      int steps, int input_steps, I channels, I inner, int stride) {
  const float steps_f = static_cast<float>(steps);
  const float input_steps_f = static_cast<float>(input_steps);
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < neurons;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    float sum = widen(x[i]);
    for (int t = 1; t < input_steps; ++t) sum += widen(x[static_cast<I>(t) * neurons + i]);
    const Channel<S> c = channel_params(params, (i / inner) % channels);
    const float drive_value = drive(sum / input_steps_f, c.theta_pre, c.psi, steps_f);
    const int first_step = steps - count_binary(drive_value, c.theta_pre, steps, stride);
    for (int t = 0; t < steps; ++t) y[static_cast<I>(t) * neurons + i] = t >= first_step ? c.spike : zero<S>();
  }
}

}  // namespace

const char* launch_parallel_spike(DType dtype, const void* x, const Params<void>& params, void* y,
                                  const Geometry& geometry, void* stream) {
  const int steps = static_cast<int>(geometry.steps);
  const int stride = top_stride(steps);
  return launch_per_neuron(dtype, geometry, [&](auto storage, auto index) {
    using S = typename decltype(storage)::type;
    using I = typename decltype(index)::type;
    parallel_spike_kernel<S, I><<<blocks_for(geometry), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const S*>(x), typed<S>(params), static_cast<S*>(y), static_cast<I>(geometry.neurons), steps,
        static_cast<int>(geometry.input_steps),
        static_cast<I>(geometry.channels), static_cast<I>(geometry.inner), stride);
  });
}

}  // namespace snncc::cuda
