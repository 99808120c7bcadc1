// CUDA kernel of snn.SerialIF: one thread per neuron (grid-stride) keeps its membrane in a
// register and runs the T steps in order (serial_if.h). For every step, neighbouring threads read
// and write neighbouring neurons, so each access is coalesced. Float16 values are widened to
// float32; the membrane is float32. Built with --fmad=false so that the float32 results equal the
// CPU kernel's (and the model-local function's) bit for bit.
#include "cuda_common.cuh"
#include "serial_if.h"
#include "serial_if_cuda.h"

namespace snncc::cuda {
namespace {

/// S: storage type; I: index type, wide enough for steps * neurons plus one grid stride.
template <typename S, typename I>
__global__ void serial_if_kernel(const S* __restrict__ x, Params<S> params, S* __restrict__ y, I neurons,
                                 int steps, I channels, I inner) {
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < neurons;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    const Channel<S> c = channel_params(params, (i / inner) % channels);
    float membrane = initial_membrane(c.theta_pre);
    for (int t = 0; t < steps; ++t) {
      const I at = static_cast<I>(t) * neurons + i;
      y[at] = integrate_and_fire(membrane, widen(x[at]), c.theta_pre, c.psi) ? c.spike : zero<S>();
    }
  }
}

}  // namespace

const char* launch_serial_if(DType dtype, const void* x, const Params<void>& params, void* y,
                             const Geometry& geometry, void* stream) {
  const int steps = static_cast<int>(geometry.steps);
  return launch_per_neuron(dtype, geometry, [&](auto storage, auto index) {
    using S = typename decltype(storage)::type;
    using I = typename decltype(index)::type;
    serial_if_kernel<S, I><<<blocks_for(geometry), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const S*>(x), typed<S>(params), static_cast<S*>(y), static_cast<I>(geometry.neurons), steps,
        static_cast<I>(geometry.channels), static_cast<I>(geometry.inner));
  });
}

}  // namespace snncc::cuda
