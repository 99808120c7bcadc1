// How a kernel call sees its tensors, shared by every kernel of the `snn` op library (CPU and CUDA).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SNNCC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SNNCC_HOST_DEVICE inline
#endif

namespace snncc {

/// One call: Y is [T*B, C, ...] time-major, viewed as [T, neurons]; X is viewed as
/// [input_steps, neurons]: one row per step (input_steps = T), or one row that holds every step's
/// input (input_steps = 1: a current constant over the steps). With block = 1 (plain NCHW),
/// neuron i has channel (i / inner) % channels. With block = b > 1, each sample is stored in ONNX
/// Runtime's CPU layout NCHWc: [C / b, inner, b], channels in blocks of b innermost (C % b == 0),
/// and neuron i has channel ((i / (inner * b)) % (C / b)) * b + i % b.
struct Geometry {
  int64_t steps;        // T
  int64_t neurons;      // elements per step: B * C * inner
  int64_t channels;     // X.shape[1] (1 for rank-1 X)
  int64_t inner;        // prod(X.shape[2:])
  int64_t input_steps;  // rows of X: T, or 1
  int64_t block = 1;    // the channel block of the NCHWc layout, or 1 (the node's channel_block)
};

/// Per-channel parameters: element c * stride of each array, stride 0 (one value) or 1 ([C]).
/// theta_post is null for SpikeCount; rate_per_spike is SpikeCount's optional fourth input (null
/// when absent: the kernel outputs the count itself).
template <typename P>
struct Params {
  const P* theta_pre;
  const P* theta_post;
  const P* psi;
  int64_t theta_pre_stride;
  int64_t theta_post_stride;
  int64_t psi_stride;
  const P* rate_per_spike = nullptr;
  int64_t rate_per_spike_stride = 0;
};

}  // namespace snncc
