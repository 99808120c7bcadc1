// CUDA kernel of snn.SpikeCount: one thread per neuron (grid-stride), coalesced reads and writes,
// the rule of spike_count.h. Built with --fmad=false so that the results equal the CPU kernel's
// (and the model-local function's) bit for bit.
#include "cuda_common.cuh"
#include "spike_count.h"
#include "spike_count_cuda.h"

namespace snncc::cuda {
namespace {

/// Rounds a float32 value to storage type S and back.
template <typename S>
struct NarrowTo {
  __host__ __device__ __forceinline__ float operator()(float v) const { return v; }
};
template <>
struct NarrowTo<__half> {
  __host__ __device__ __forceinline__ float operator()(float v) const { return __half2float(__float2half_rn(v)); }
};

/// floor(v) rounded to storage type S and back (spike_count's floor_to).
template <typename S>
struct FloorTo {
  __host__ __device__ __forceinline__ float operator()(float v) const { return NarrowTo<S>{}(floor_exact(v)); }
};

__device__ __forceinline__ float narrow(float v, float /*tag*/) { return v; }
__device__ __forceinline__ __half narrow(float v, __half /*tag*/) { return __float2half_rn(v); }

/// S: storage type; I: index type, wide enough for the neurons plus one grid stride.
template <typename S, typename I>
__global__ void spike_count_kernel(const S* __restrict__ m, Params<S> params, S* __restrict__ k, I neurons,
                                   float steps_f, I channels, I inner) {
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < neurons;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    const I channel = (i / inner) % channels;
    const float theta_pre = widen(params.theta_pre[channel * params.theta_pre_stride]);
    const float psi = widen(params.psi[channel * params.psi_stride]);
    k[i] = narrow(spike_count(widen(m[i]), theta_pre, psi, steps_f, FloorTo<S>{}), S{});
  }
}

}  // namespace

const char* launch_spike_count(DType dtype, const void* m, const Params<void>& params, void* k,
                               const Geometry& geometry, int64_t steps, void* stream) {
  return launch_per_neuron(dtype, geometry, [&](auto storage, auto index) {
    using S = typename decltype(storage)::type;
    using I = typename decltype(index)::type;
    const float steps_f = NarrowTo<S>{}(static_cast<float>(steps));  // CastLike(T, M)
    spike_count_kernel<S, I><<<blocks_for(geometry), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const S*>(m), typed<S>(params), static_cast<S*>(k), static_cast<I>(geometry.neurons), steps_f,
        static_cast<I>(geometry.channels), static_cast<I>(geometry.inner));
  });
}

}  // namespace snncc::cuda
