// CUDA kernel of snn.ParallelSpike: one thread per neuron (grid-stride). For every step,
// neighbouring threads read and write neighbouring neurons, so each access is coalesced.
// Float16 values are widened to float32 for the sum and the comparisons.
// Built with --fmad=false so that the float32 results equal the CPU kernel's bit for bit.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_kernel.h"

namespace snncc::cuda {
namespace {

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }

template <typename S>
__device__ __forceinline__ S zero();
template <>
__device__ __forceinline__ float zero<float>() { return 0.0f; }
template <>
__device__ __forceinline__ __half zero<__half>() { return __ushort_as_half(0); }

/// S: storage type; I: index type, wide enough for steps * neurons plus one grid stride.
template <typename S, typename I>
__global__ void parallel_spike_kernel(const S* __restrict__ x, Params<S> params, S* __restrict__ y, I neurons,
                                      int steps, I channels, I inner, int stride) {
  const float steps_f = static_cast<float>(steps);
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < neurons;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    float sum = widen(x[i]);
    for (int t = 1; t < steps; ++t) sum += widen(x[static_cast<I>(t) * neurons + i]);
    const I channel = (i / inner) % channels;
    const float theta_pre = widen(params.theta_pre[channel * params.theta_pre_stride]);
    const float psi = widen(params.psi[channel * params.psi_stride]);
    const S spike = params.theta_post[channel * params.theta_post_stride];
    const float drive_value = drive(sum / steps_f, theta_pre, psi, steps_f);
    const int first_step = steps - count_binary(drive_value, theta_pre, steps, stride);
    for (int t = 0; t < steps; ++t) y[static_cast<I>(t) * neurons + i] = t >= first_step ? spike : zero<S>();
  }
}

template <typename S>
Params<S> typed(const Params<void>& p) {
  return {static_cast<const S*>(p.theta_pre), static_cast<const S*>(p.theta_post), static_cast<const S*>(p.psi),
          p.theta_pre_stride, p.theta_post_stride, p.psi_stride};
}

template <typename S>
void launch(const void* x, const Params<void>& params, void* y, const Geometry& g, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((g.neurons + kThreads - 1) / kThreads, INT32_MAX);
  const int steps = static_cast<int>(g.steps);
  const int stride = top_stride(steps);
  const auto* xs = static_cast<const S*>(x);
  auto* ys = static_cast<S*>(y);
  if (g.steps * g.neurons <= INT32_MAX) {
    parallel_spike_kernel<S, uint32_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        xs, typed<S>(params), ys, static_cast<uint32_t>(g.neurons), steps, static_cast<uint32_t>(g.channels),
        static_cast<uint32_t>(g.inner), stride);
  } else {
    parallel_spike_kernel<S, int64_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        xs, typed<S>(params), ys, g.neurons, steps, g.channels, g.inner, stride);
  }
}

}  // namespace

const char* launch_parallel_spike(DType dtype, const void* x, const Params<void>& params, void* y,
                                  const Geometry& geometry, void* stream) {
  if (geometry.neurons == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == DType::kFloat16) {
    launch<__half>(x, params, y, geometry, s);
  } else {
    launch<float>(x, params, y, geometry, s);
  }
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace snncc::cuda
