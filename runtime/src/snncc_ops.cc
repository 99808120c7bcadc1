// RegisterCustomOps: the native kernels of the `snn` domain (docs/ops.md) for ONNX Runtime.
//
// The library does not link libonnxruntime: the API arrives through the OrtApiBase handed to
// RegisterCustomOps (ORT_API_MANUAL_INIT, set by CMake for the whole target). Built against the
// 1.21 headers, it loads into any runtime >= 1.21, the C API being append-only.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cpu_kernels.h"
#if SNNCC_WITH_CUDA
#include "cuda_kernel.h"
#include "serial_if_cuda.h"
#include "spike_count_cuda.h"
#endif

namespace snncc {
namespace {

constexpr const char* kDomain = "snn";

/// Runs fn and turns any exception into an OrtStatus: nothing may unwind into ONNX Runtime.
template <typename Fn>
OrtStatusPtr guarded(Fn&& fn) noexcept {
  try {
    fn();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
}

/// Rejects a node or call of op `op` (e.g. "ParallelSpike") with an error that names it.
[[noreturn]] void fail(const char* op, const std::string& message) {
  throw Ort::Exception(std::string(kDomain) + "." + op + ": " + message, ORT_INVALID_ARGUMENT);
}

/// SNNCC_NEURON_ALGO = binary (default) | dense | closed.
Algorithm algorithm_from_environment(const char* op) {
  const char* value = std::getenv("SNNCC_NEURON_ALGO");
  const std::string name = value == nullptr ? "" : value;
  if (name.empty() || name == "binary") return Algorithm::kBinary;
  if (name == "dense") return Algorithm::kDense;
  if (name == "closed") return Algorithm::kClosed;
  fail(op, "SNNCC_NEURON_ALGO must be binary, dense or closed, not '" + name + "'");
}

/// SNNCC_CPU_VARIANT = baseline | avx | avx2 | avx512: the CPU kernels' instruction-set variant
/// (default: the best one that this build and the CPU have).
CpuVariant cpu_variant_from_environment(const char* op) {
  const char* value = std::getenv("SNNCC_CPU_VARIANT");
  const std::string name = value == nullptr ? "" : value;
  if (name.empty()) return best_cpu_variant();
  for (const CpuVariant variant : kCpuVariants) {
    if (name != cpu_variant_name(variant)) continue;
    if (!cpu_variant_available(variant)) {
      fail(op, "SNNCC_CPU_VARIANT=" + name + ", but this build or CPU has no " + name + " variant");
    }
    return variant;
  }
  fail(op, "SNNCC_CPU_VARIANT must be baseline, avx, avx2 or avx512, not '" + name + "'");
}

/// The node's attribute T.
int64_t steps_attribute(const OrtKernelInfo* info, const char* op) {
  const auto steps = Ort::ConstKernelInfo(info).GetAttribute<int64_t>("T");
  // Up to 2^24, T and every step index are exact in float32 and fit the kernels' int.
  if (steps < 1 || steps > (int64_t{1} << 24)) fail(op, "attribute T must be in 1..2^24, got " + std::to_string(steps));
  return steps;
}

/// The node's optional attribute constant_input (ParallelSpike): 0 (default) or 1.
bool constant_input_attribute(const OrtKernelInfo* info, const char* op) {
  int64_t value = 0;
  OrtStatus* missing = Ort::GetApi().KernelInfoGetAttribute_int64(info, "constant_input", &value);
  if (missing != nullptr) {
    Ort::GetApi().ReleaseStatus(missing);
    return false;
  }
  if (value != 0 && value != 1) fail(op, "attribute constant_input must be 0 or 1, got " + std::to_string(value));
  return value == 1;
}

/// The node's optional attribute channel_block: 1 (default, NCHW), or the block b of ONNX Runtime's
/// CPU layout NCHWc that X and Y are stored in (written by snncc's CPU layout preparation).
int64_t channel_block_attribute(const OrtKernelInfo* info, const char* op) {
  int64_t value = 1;
  OrtStatus* missing = Ort::GetApi().KernelInfoGetAttribute_int64(info, "channel_block", &value);
  if (missing != nullptr) {
    Ort::GetApi().ReleaseStatus(missing);
    return 1;
  }
  if (value < 1) fail(op, "attribute channel_block must be >= 1, got " + std::to_string(value));
  return value;
}

/// Stride of a parameter over channels: 0 for one value, 1 for one per channel.
int64_t parameter_stride(const char* op, const Ort::ConstValue& value, const char* name, int64_t channels) {
  const size_t count = value.GetTensorTypeAndShapeInfo().GetElementCount();
  if (count == 1) return 0;
  if (static_cast<int64_t>(count) == channels) return 1;
  fail(op, std::string(name) + " has " + std::to_string(count) + " elements; expected 1 or X.shape[1] = " +
       std::to_string(channels));
}

/// One validated call of a neuron op: X (or M), theta_pre, [theta_post,] psi[, rate_per_spike]. Y
/// has `steps` rows of neurons (T for ParallelSpike and SerialIF, 1 for SpikeCount, whose T only
/// enters the arithmetic), X has `input_steps` rows (T, or 1: a current constant over the steps),
/// so Y's first dimension is X's times steps / input_steps. Without theta_post (SpikeCount),
/// params.theta_post is null, and its optional fourth input, where the node has one, is
/// params.rate_per_spike.
struct Call {
  Geometry geometry{};
  Params<void> params{};
  const void* x = nullptr;
  void* y = nullptr;

  Call(OrtKernelContext* context, int64_t steps, int64_t input_steps, int64_t block, bool with_theta_post,
       const char* op) {
    Ort::KernelContext ctx(context);
    const Ort::ConstValue x_value = ctx.GetInput(0);
    std::vector<int64_t> shape = x_value.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty()) fail(op, "X must have rank >= 1");
    if (shape[0] % input_steps != 0) {
      fail(op, "X.shape[0] = " + std::to_string(shape[0]) + " is not a multiple of T = " + std::to_string(steps));
    }
    int64_t inner = 1;
    for (size_t axis = 2; axis < shape.size(); ++axis) inner *= shape[axis];
    const int64_t channels = shape.size() > 1 ? shape[1] : 1;
    if (block > 1 && (shape.size() < 3 || channels % block != 0)) {
      fail(op, "channel_block = " + std::to_string(block) + " needs X of rank >= 3 with X.shape[1] a multiple of it");
    }
    geometry = {steps, shape[0] / input_steps * channels * inner, channels, inner, input_steps, block};
    const Ort::ConstValue theta_pre = ctx.GetInput(1);
    const Ort::ConstValue psi = ctx.GetInput(with_theta_post ? 3 : 2);
    params.theta_pre = theta_pre.GetTensorRawData();
    params.theta_pre_stride = parameter_stride(op, theta_pre, "theta_pre", channels);
    params.psi = psi.GetTensorRawData();
    params.psi_stride = parameter_stride(op, psi, "psi", channels);
    if (with_theta_post) {
      const Ort::ConstValue theta_post = ctx.GetInput(2);
      params.theta_post = theta_post.GetTensorRawData();
      params.theta_post_stride = parameter_stride(op, theta_post, "theta_post", channels);
    } else if (ctx.GetInputCount() > 3) {
      const Ort::ConstValue rate = ctx.GetInput(3);
      if (static_cast<const OrtValue*>(rate) != nullptr) {
        params.rate_per_spike = rate.GetTensorRawData();
        params.rate_per_spike_stride = parameter_stride(op, rate, "rate_per_spike", channels);
      }
    }
    x = x_value.GetTensorRawData();
    shape[0] = shape[0] / input_steps * steps;
    y = ctx.GetOutput(0, shape).GetTensorMutableRawData();
  }

  template <typename Op, typename Config>
  Call(OrtKernelContext* context, const Op& /*op*/, const Config& config, int64_t block)
      : Call(context, Op::output_steps(config), Op::input_steps(config), block, Op::kThetaPost, Op::kName) {}
};

/// The element type with ONNX type Type, on the CPU.
template <ONNXTensorElementDataType Type>
struct CpuStorage;
template <>
struct CpuStorage<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT> {
  using type = float;
};
template <>
struct CpuStorage<ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE> {
  using type = double;
};
template <>
struct CpuStorage<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16> {
  using type = _Float16;
};

/// snn.ParallelSpike: the op's name, inputs (X, theta_pre, theta_post, psi; X time-major, or one
/// step when the attribute constant_input is 1), what a kernel instance fixes when the session
/// creates it (T, constant_input and the algorithm), and its CPU and CUDA kernels.
struct ParallelSpike {
  static constexpr const char* kName = "ParallelSpike";
  static constexpr size_t kInputs = 4;
  static constexpr size_t kRequiredInputs = 4;
  static constexpr bool kThetaPost = true;
  struct Config {
    int64_t steps;
    bool constant_input;
    Algorithm algorithm;
  };

  static Config configure(const OrtKernelInfo* info) {
    return {steps_attribute(info, kName), constant_input_attribute(info, kName), algorithm_from_environment(kName)};
  }
  static int64_t output_steps(const Config& config) { return config.steps; }
  static int64_t input_steps(const Config& config) { return config.constant_input ? 1 : config.steps; }

  template <typename S>
  static void cpu(CpuVariant variant, const S* x, const Params<S>& params, S* y, const Geometry& geometry,
                  const Config& config, int64_t begin, int64_t end) {
    SNNCC_CPU_DISPATCH(variant, parallel_spike_cpu<S>)(x, params, y, geometry, config.algorithm, begin, end);
  }

#if SNNCC_WITH_CUDA
  static const char* cuda(cuda::DType dtype, const void* x, const Params<void>& params, void* y,
                          const Geometry& geometry, void* stream, const Config& /*config*/) {
    return cuda::launch_parallel_spike(dtype, x, params, y, geometry, stream);  // binary search always
  }
#endif
};

/// The configuration of an op whose kernel instances fix T alone (Op::kName names it in errors).
template <typename Op>
struct StepsConfig {
  struct Config {
    int64_t steps;
  };

  static Config configure(const OrtKernelInfo* info) { return {steps_attribute(info, Op::kName)}; }
};

/// snn.SerialIF: the integrate-and-fire neuron, run step by step; float32 only (as its function).
struct SerialIF : StepsConfig<SerialIF> {
  static constexpr const char* kName = "SerialIF";
  static constexpr size_t kInputs = 4;
  static constexpr size_t kRequiredInputs = 4;
  static constexpr bool kThetaPost = true;
  static int64_t output_steps(const Config& config) { return config.steps; }
  static int64_t input_steps(const Config& config) { return config.steps; }

  static void cpu(CpuVariant variant, const float* x, const Params<float>& params, float* y,
                  const Geometry& geometry, const Config& /*config*/, int64_t begin, int64_t end) {
    SNNCC_CPU_DISPATCH(variant, serial_if_cpu)(x, params, y, geometry, begin, end);
  }

#if SNNCC_WITH_CUDA
  static const char* cuda(cuda::DType dtype, const void* x, const Params<void>& params, void* y,
                          const Geometry& geometry, void* stream, const Config& /*config*/) {
    return cuda::launch_serial_if(dtype, x, params, y, geometry, stream);
  }
#endif
};

/// snn.SpikeCount: the spike count of a folded parallel neuron from its mean current M (inputs M,
/// theta_pre, psi; M has no time axis, T only enters the arithmetic); float32, float64 and
/// float16 on the CPU, each bit-identical to the function (spike_count.h). The optional fourth
/// input rate_per_spike (CPU only, written by snncc's CPU preparation) makes the output the
/// firing rate K * rate_per_spike, bit-identical to the function followed by that Mul.
struct SpikeCount : StepsConfig<SpikeCount> {
  static constexpr const char* kName = "SpikeCount";
  static constexpr size_t kInputs = 4;
  static constexpr size_t kRequiredInputs = 3;
  static constexpr bool kThetaPost = false;
  static int64_t output_steps(const Config& /*config*/) { return 1; }
  static int64_t input_steps(const Config& /*config*/) { return 1; }

  template <typename S>
  static void cpu(CpuVariant variant, const S* m, const Params<S>& params, S* k, const Geometry& geometry,
                  const Config& config, int64_t begin, int64_t end) {
    SNNCC_CPU_DISPATCH(variant, spike_count_cpu<S>)(m, params, k, geometry, config.steps, begin, end);
  }

#if SNNCC_WITH_CUDA
  static const char* cuda(cuda::DType dtype, const void* m, const Params<void>& params, void* k,
                          const Geometry& geometry, void* stream, const Config& config) {
    return cuda::launch_spike_count(dtype, m, params, k, geometry, config.steps, stream);
  }
#endif
};

/// Values (neurons x output steps) below which a CPU call is not split further (see ComputeV2).
constexpr int64_t kMinItemValues = int64_t{1} << 16;

/// The CPUExecutionProvider kernel of op Op (ParallelSpike, SerialIF, SpikeCount) for element type Type,
/// parallel over chunks of neurons on ORT's intra-op thread pool. An op's CPU kernels cover every
/// type its model-local function runs with on the CPU (a registered library replaces the
/// function for all of them).
template <typename Op, ONNXTensorElementDataType Type>
struct CpuKernel {
  using S = typename CpuStorage<Type>::type;
  using OpType = Op;
  static constexpr const char* kProvider = "CPUExecutionProvider";
  static constexpr ONNXTensorElementDataType kType = Type;
  typename Op::Config config;
  int64_t block;  // channel_block
  CpuVariant variant;

  explicit CpuKernel(const OrtKernelInfo* info)
      : config(Op::configure(info)),
        block(channel_block_attribute(info, Op::kName)),
        variant(cpu_variant_from_environment(Op::kName)) {}

  struct Work {
    const S* x;
    Params<S> params;
    S* y;
    Geometry geometry;
    typename Op::Config config;
    CpuVariant variant;
    int64_t item_neurons;  // neurons per work item, a multiple of kCpuChunk
  };

  static void run_item(void* data, size_t item) {
    const auto& w = *static_cast<const Work*>(data);
    const int64_t begin = static_cast<int64_t>(item) * w.item_neurons;
    Op::cpu(w.variant, w.x, w.params, w.y, w.geometry, w.config, begin,
            std::min(begin + w.item_neurons, w.geometry.neurons));
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded([&] {
      const Call call(context, Op{}, config, block);
      const Params<void>& p = call.params;
      Work work{static_cast<const S*>(call.x),
                {static_cast<const S*>(p.theta_pre), static_cast<const S*>(p.theta_post),
                 static_cast<const S*>(p.psi), p.theta_pre_stride, p.theta_post_stride, p.psi_stride,
                 static_cast<const S*>(p.rate_per_spike), p.rate_per_spike_stride},
                static_cast<S*>(call.y),
                call.geometry,
                config,
                variant,
                0};
      // Work items of whole chunks: up to 16 each, so that most chunks overlap their reads with
      // the previous chunk's writes (ParallelSpike), yet 64 items or more where there are enough
      // chunks, so that any thread count gets balanced work; but no item covers fewer than
      // kMinItemValues values (neurons x output steps) where the call has that many, so that a
      // small call runs on the calling thread instead of paying to wake others.
      const int64_t chunks = (call.geometry.neurons + kCpuChunk - 1) / kCpuChunk;
      const int64_t min_chunks = (kMinItemValues + kCpuChunk * call.geometry.steps - 1) / (kCpuChunk * call.geometry.steps);
      work.item_neurons = std::clamp<int64_t>(chunks / 64, min_chunks, std::max<int64_t>(16, min_chunks)) * kCpuChunk;
      const int64_t items = (call.geometry.neurons + work.item_neurons - 1) / work.item_neurons;
      if (items > 0) Ort::KernelContext(context).ParallelFor(run_item, static_cast<size_t>(items), 0, &work);
    });
  }
};

#if SNNCC_WITH_CUDA
/// The CUDAExecutionProvider kernel of op Op for element type Type, enqueued on ORT's compute
/// stream.
template <typename Op, ONNXTensorElementDataType Type>
struct CudaKernel {
  using OpType = Op;
  static constexpr const char* kProvider = "CUDAExecutionProvider";
  static constexpr ONNXTensorElementDataType kType = Type;
  typename Op::Config config;

  explicit CudaKernel(const OrtKernelInfo* info) : config(Op::configure(info)) {
    if (channel_block_attribute(info, Op::kName) != 1) {
      fail(Op::kName, "channel_block (ONNX Runtime's CPU layout NCHWc) has no CUDA kernel; it must be 1 on CUDA");
    }
    const Ort::ConstKernelInfo kernel_info(info);
    if (kernel_info.GetInputCount() > Op::kRequiredInputs && !kernel_info.GetInputName(Op::kRequiredInputs).empty()) {
      fail(Op::kName, "the optional input rate_per_spike has no CUDA kernel");
    }
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded([&] {
      const Call call(context, Op{}, config, 1);
      const auto dtype = Type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? cuda::DType::kFloat16 : cuda::DType::kFloat32;
      void* stream = Ort::KernelContext(context).GetGPUComputeStream();
      if (const char* error = Op::cuda(dtype, call.x, call.params, call.y, call.geometry, stream, config)) {
        throw Ort::Exception(std::string(kDomain) + "." + Op::kName + " CUDA launch failed: " + error, ORT_EP_FAIL);
      }
    });
  }
};
#endif

/// A neuron op (ParallelSpike, SerialIF, SpikeCount) for one (execution provider, element type)
/// pair: all inputs and the output share the type; the output has X's shape.
template <typename Kernel>
struct NeuronOp : Ort::CustomOpBase<NeuronOp<Kernel>, Kernel, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return guarded([&] { *kernel = new Kernel(info); });
  }
  const char* GetName() const { return Kernel::OpType::kName; }
  const char* GetExecutionProviderType() const { return Kernel::kProvider; }
  size_t GetInputTypeCount() const { return Kernel::OpType::kInputs; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < Kernel::OpType::kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return Kernel::kType; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return Kernel::kType; }

  NeuronOp() { this->InferOutputShapeFn = output_like_x; }

  /// Y has X's type and shape, except for a ParallelSpike with constant_input = 1, whose first
  /// dimension is T times X's. ORT merges the ops of one name into one schema that uses one op's
  /// function for every type, so the type comes from X, not from Kernel. The shape is passed on
  /// only when each dimension is a number or a symbol (with constant_input, a number): ORT would
  /// turn an unknown dimension into the number -1, and an unknown rank into rank 0.
  static OrtStatusPtr output_like_x(const OrtCustomOp* /*op*/, OrtShapeInferContext* ctx) {
    return guarded([&] {
      const OrtApi& api = Ort::GetApi();
      OrtTensorTypeAndShapeInfo* x_info = nullptr;  // owned by ctx
      Ort::ThrowOnError(api.ShapeInferContext_GetInputTypeShape(ctx, 0, &x_info));
      const Ort::ConstTensorTypeAndShapeInfo x_type(x_info);
      std::vector<int64_t> dims = x_type.GetShape();
      std::vector<const char*> symbols(dims.size());
      x_type.GetSymbolicDimensions(symbols.data(), symbols.size());
      bool known = !dims.empty();
      for (size_t axis = 0; axis < dims.size(); ++axis) known &= dims[axis] >= 0 || *symbols[axis] != '\0';
      if (!known) return;
      const int64_t repeats = int_attribute(ctx, "constant_input", 0) == 1 ? int_attribute(ctx, "T", 1) : 1;
      if (repeats == 1) {
        Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, x_info));
        return;
      }
      if (std::any_of(dims.begin(), dims.end(), [](int64_t d) { return d < 0; })) return;
      dims[0] *= repeats;
      OrtTensorTypeAndShapeInfo* y_info = nullptr;
      Ort::ThrowOnError(api.CreateTensorTypeAndShapeInfo(&y_info));
      const std::unique_ptr<OrtTensorTypeAndShapeInfo, decltype(api.ReleaseTensorTypeAndShapeInfo)> owned(
          y_info, api.ReleaseTensorTypeAndShapeInfo);
      Ort::ThrowOnError(api.SetTensorElementType(y_info, x_type.GetElementType()));
      Ort::ThrowOnError(api.SetDimensions(y_info, dims.data(), dims.size()));
      Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, y_info));
    });
  }

  /// The node's int attribute `name`, or `fallback` when it has none.
  static int64_t int_attribute(OrtShapeInferContext* ctx, const char* name, int64_t fallback) {
    const OrtApi& api = Ort::GetApi();
    const OrtOpAttr* attr = nullptr;
    OrtStatus* missing = api.ShapeInferContext_GetAttribute(ctx, name, &attr);
    if (missing != nullptr) {
      api.ReleaseStatus(missing);
      return fallback;
    }
    if (attr == nullptr) return fallback;
    int64_t value = fallback;
    size_t size = 0;
    Ort::ThrowOnError(api.ReadOpAttr(attr, ORT_OP_ATTR_INT, &value, sizeof value, &size));
    return value;
  }
};

void add_domain(OrtSessionOptions* options) {
  constexpr auto kFloat = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  constexpr auto kDouble = ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
  constexpr auto kHalf = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  // Every (provider, type) pair that the op's model-local function runs with: ParallelSpike's
  // and SpikeCount's functions are typed by X, SerialIF's Scan body is float32 only. On CUDA,
  // the types the compiler can emit (float32) and, for ParallelSpike and SpikeCount, float16.
  static NeuronOp<CpuKernel<ParallelSpike, kFloat>> parallel_cpu_float;
  static NeuronOp<CpuKernel<ParallelSpike, kDouble>> parallel_cpu_double;
  static NeuronOp<CpuKernel<ParallelSpike, kHalf>> parallel_cpu_half;
  static NeuronOp<CpuKernel<SerialIF, kFloat>> serial_cpu_float;
  static NeuronOp<CpuKernel<SpikeCount, kFloat>> count_cpu_float;
  static NeuronOp<CpuKernel<SpikeCount, kDouble>> count_cpu_double;
  static NeuronOp<CpuKernel<SpikeCount, kHalf>> count_cpu_half;
#if SNNCC_WITH_CUDA
  static NeuronOp<CudaKernel<ParallelSpike, kFloat>> parallel_cuda_float;
  static NeuronOp<CudaKernel<ParallelSpike, kHalf>> parallel_cuda_half;
  static NeuronOp<CudaKernel<SerialIF, kFloat>> serial_cuda_float;
  static NeuronOp<CudaKernel<SpikeCount, kFloat>> count_cuda_float;
  static NeuronOp<CudaKernel<SpikeCount, kHalf>> count_cuda_half;
#endif
  // Sessions keep pointers to their domain, so every domain lives as long as the library.
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;

  Ort::CustomOpDomain domain(kDomain);
  domain.Add(&parallel_cpu_float);
  domain.Add(&parallel_cpu_double);
  domain.Add(&parallel_cpu_half);
  domain.Add(&serial_cpu_float);
  domain.Add(&count_cpu_float);
  domain.Add(&count_cpu_double);
  domain.Add(&count_cpu_half);
#if SNNCC_WITH_CUDA
  domain.Add(&parallel_cuda_float);
  domain.Add(&parallel_cuda_half);
  domain.Add(&serial_cuda_float);
  domain.Add(&count_cuda_float);
  domain.Add(&count_cuda_half);
#endif
  Ort::UnownedSessionOptions(options).Add(domain);
  const std::lock_guard<std::mutex> lock(mutex);
  domains.push_back(std::move(domain));
}

}  // namespace
}  // namespace snncc

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // Version 1 of the API exists in every runtime: enough to say why we cannot load.
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, "libsnncc_ops needs ONNX Runtime >= 1.21");
  }
  Ort::InitApi(api);
  return snncc::guarded([&] { snncc::add_domain(options); });
}

/// The name of the CPU kernels' variant that a session created now would run (SNNCC_CPU_VARIANT,
/// else the best one available), or "error: ..." for an invalid SNNCC_CPU_VARIANT: for reports and
/// tests (ctypes), no ONNX Runtime needed.
extern "C" __attribute__((visibility("default"))) const char* SnnccCpuVariant() {
  static thread_local std::string answer;
  try {
    answer = snncc::cpu_variant_name(snncc::cpu_variant_from_environment("ops"));
  } catch (const std::exception& e) {
    answer = std::string("error: ") + e.what();
  }
  return answer.c_str();
}

/// 1 when this library holds the CUDAExecutionProvider kernels (built with nvcc), else 0.
extern "C" __attribute__((visibility("default"))) int SnnccCudaKernels() { return SNNCC_WITH_CUDA; }
