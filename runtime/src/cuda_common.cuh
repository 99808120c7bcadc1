// Pieces shared by the CUDA kernels: one thread per neuron (grid-stride), float16 widened to
// float32, and the launch over element and index types.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_launch.h"
#include "layout.h"

namespace snncc::cuda {

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }

template <typename S>
__device__ __forceinline__ S zero();
template <>
__device__ __forceinline__ float zero<float>() { return 0.0f; }
template <>
__device__ __forceinline__ __half zero<__half>() { return __ushort_as_half(0); }

/// The parameters of one channel: theta_pre and psi widened to float32, the spike value as stored.
template <typename S>
struct Channel {
  float theta_pre;
  float psi;
  S spike;
};

template <typename S, typename I>
__device__ __forceinline__ Channel<S> channel_params(const Params<S>& p, I channel) {
  return {widen(p.theta_pre[channel * p.theta_pre_stride]), widen(p.psi[channel * p.psi_stride]),
          p.theta_post[channel * p.theta_post_stride]};
}

template <typename S>
Params<S> typed(const Params<void>& p) {
  return {static_cast<const S*>(p.theta_pre), static_cast<const S*>(p.theta_post), static_cast<const S*>(p.psi),
          p.theta_pre_stride, p.theta_post_stride, p.psi_stride};
}

/// Threads per block; the grid covers every neuron once (or as many blocks as a grid may have,
/// the kernels' grid-stride loops doing the rest).
constexpr int kThreads = 256;

inline unsigned blocks_for(const Geometry& g) {
  return static_cast<unsigned>(std::min<int64_t>((g.neurons + kThreads - 1) / kThreads, INT32_MAX));
}

template <typename T>
struct Tag {
  using type = T;
};

/// Calls launch(Tag<S>, Tag<I>) with the storage type S of dtype and the index type I, 32-bit
/// when steps * neurons (plus one grid stride) fits, else 64-bit; then reports the launch's error.
template <typename Launch>
const char* launch_per_neuron(DType dtype, const Geometry& g, Launch&& launch) {
  if (g.neurons == 0) return nullptr;
  const bool narrow = g.steps * g.neurons <= INT32_MAX;
  const auto with_index = [&](auto storage) {
    if (narrow) {
      launch(storage, Tag<uint32_t>{});
    } else {
      launch(storage, Tag<int64_t>{});
    }
  };
  if (dtype == DType::kFloat16) {
    with_index(Tag<__half>{});
  } else {
    with_index(Tag<float>{});
  }
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace snncc::cuda
