// RegisterCustomOps: the native kernels of the `snn` domain (docs/ops.md) for ONNX Runtime.
//
// The library does not link libonnxruntime: the API arrives through the OrtApiBase handed to
// RegisterCustomOps (ORT_API_MANUAL_INIT, set by CMake for the whole target). Built against the
// 1.21 headers, it loads into any runtime >= 1.21, the C API being append-only.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cpu_kernel.h"
#include "neuron.h"
#if SNNCC_WITH_CUDA
#include "cuda_kernel.h"
#endif

namespace snncc {
namespace {

constexpr const char* kDomain = "snn";
constexpr const char* kOpType = "ParallelSpike";

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

[[noreturn]] void fail(const std::string& message) {
  throw Ort::Exception(std::string(kDomain) + "." + kOpType + ": " + message, ORT_INVALID_ARGUMENT);
}

/// SNNCC_NEURON_ALGO = binary (default) | dense | closed.
Algorithm algorithm_from_environment() {
  const char* value = std::getenv("SNNCC_NEURON_ALGO");
  const std::string name = value == nullptr ? "" : value;
  if (name.empty() || name == "binary") return Algorithm::kBinary;
  if (name == "dense") return Algorithm::kDense;
  if (name == "closed") return Algorithm::kClosed;
  fail("SNNCC_NEURON_ALGO must be binary, dense or closed, not '" + name + "'");
}

/// What a kernel instance fixes when the session creates it: the node's T and the algorithm.
struct NeuronConfig {
  int64_t steps;
  Algorithm algorithm;

  explicit NeuronConfig(const OrtKernelInfo* info)
      : steps(Ort::ConstKernelInfo(info).GetAttribute<int64_t>("T")), algorithm(algorithm_from_environment()) {
    // Up to 2^24, T and every step index are exact in float32 and fit the kernels' int.
    if (steps < 1 || steps > (int64_t{1} << 24)) fail("attribute T must be in 1..2^24, got " + std::to_string(steps));
  }
};

/// Stride of a parameter over channels: 0 for one value, 1 for one per channel.
int64_t parameter_stride(const Ort::ConstValue& value, const char* name, int64_t channels) {
  const size_t count = value.GetTensorTypeAndShapeInfo().GetElementCount();
  if (count == 1) return 0;
  if (static_cast<int64_t>(count) == channels) return 1;
  fail(std::string(name) + " has " + std::to_string(count) + " elements; expected 1 or X.shape[1] = " +
       std::to_string(channels));
}

/// One validated call: geometry, raw parameter pointers and the allocated output.
struct Call {
  Geometry geometry{};
  Params<void> params{};
  const void* x = nullptr;
  void* y = nullptr;

  Call(OrtKernelContext* context, int64_t steps) {
    Ort::KernelContext ctx(context);
    const Ort::ConstValue x_value = ctx.GetInput(0);
    const std::vector<int64_t> shape = x_value.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty()) fail("X must have rank >= 1");
    if (shape[0] % steps != 0) {
      fail("X.shape[0] = " + std::to_string(shape[0]) + " is not a multiple of T = " + std::to_string(steps));
    }
    int64_t inner = 1;
    for (size_t axis = 2; axis < shape.size(); ++axis) inner *= shape[axis];
    const int64_t channels = shape.size() > 1 ? shape[1] : 1;
    geometry = {steps, shape[0] / steps * channels * inner, channels, inner};
    const Ort::ConstValue theta_pre = ctx.GetInput(1);
    const Ort::ConstValue theta_post = ctx.GetInput(2);
    const Ort::ConstValue psi = ctx.GetInput(3);
    params = {theta_pre.GetTensorRawData(),
              theta_post.GetTensorRawData(),
              psi.GetTensorRawData(),
              parameter_stride(theta_pre, "theta_pre", channels),
              parameter_stride(theta_post, "theta_post", channels),
              parameter_stride(psi, "psi", channels)};
    x = x_value.GetTensorRawData();
    y = ctx.GetOutput(0, shape).GetTensorMutableRawData();
  }
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

/// The CPUExecutionProvider kernel, parallel over chunks of neurons on ORT's intra-op thread
/// pool. It covers every type the model-local function runs with on the CPU (a registered
/// library replaces the function for all of them).
template <ONNXTensorElementDataType Type>
struct CpuKernel {
  using S = typename CpuStorage<Type>::type;
  static constexpr const char* kProvider = "CPUExecutionProvider";
  static constexpr ONNXTensorElementDataType kType = Type;
  NeuronConfig config;

  struct Work {
    const S* x;
    Params<S> params;
    S* y;
    Geometry geometry;
    Algorithm algorithm;
    int64_t item_neurons;  // neurons per work item, a multiple of kCpuChunk
  };

  static void run_item(void* data, size_t item) {
    const auto& w = *static_cast<const Work*>(data);
    const int64_t begin = static_cast<int64_t>(item) * w.item_neurons;
    parallel_spike_cpu(w.x, w.params, w.y, w.geometry, w.algorithm, begin,
                       std::min(begin + w.item_neurons, w.geometry.neurons));
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded([&] {
      const Call call(context, config.steps);
      const Params<void>& p = call.params;
      Work work{static_cast<const S*>(call.x),
                {static_cast<const S*>(p.theta_pre), static_cast<const S*>(p.theta_post),
                 static_cast<const S*>(p.psi), p.theta_pre_stride, p.theta_post_stride, p.psi_stride},
                static_cast<S*>(call.y),
                call.geometry,
                config.algorithm,
                0};
      // Work items of whole chunks: up to 16 each, so that most chunks overlap their reads with
      // the previous chunk's writes, yet 64 items or more where there are enough chunks, so that
      // any thread count gets balanced work.
      const int64_t chunks = (call.geometry.neurons + kCpuChunk - 1) / kCpuChunk;
      work.item_neurons = std::clamp<int64_t>(chunks / 64, 1, 16) * kCpuChunk;
      const int64_t items = (call.geometry.neurons + work.item_neurons - 1) / work.item_neurons;
      if (items > 0) Ort::KernelContext(context).ParallelFor(run_item, static_cast<size_t>(items), 0, &work);
    });
  }
};

#if SNNCC_WITH_CUDA
/// The CUDAExecutionProvider kernel, enqueued on ORT's compute stream (binary search always).
template <ONNXTensorElementDataType Type>
struct CudaKernel {
  static constexpr const char* kProvider = "CUDAExecutionProvider";
  static constexpr ONNXTensorElementDataType kType = Type;
  NeuronConfig config;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded([&] {
      const Call call(context, config.steps);
      const auto dtype = Type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? cuda::DType::kFloat16 : cuda::DType::kFloat32;
      void* stream = Ort::KernelContext(context).GetGPUComputeStream();
      if (const char* error = cuda::launch_parallel_spike(dtype, call.x, call.params, call.y, call.geometry, stream)) {
        throw Ort::Exception(std::string("snn.ParallelSpike CUDA launch failed: ") + error, ORT_EP_FAIL);
      }
    });
  }
};
#endif

/// snn.ParallelSpike for one (execution provider, element type) pair: all four inputs and the
/// output share the type; the output has X's shape.
template <typename Kernel>
struct ParallelSpikeOp : Ort::CustomOpBase<ParallelSpikeOp<Kernel>, Kernel, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return guarded([&] { *kernel = new Kernel{NeuronConfig(info)}; });
  }
  const char* GetName() const { return kOpType; }
  const char* GetExecutionProviderType() const { return Kernel::kProvider; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return Kernel::kType; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return Kernel::kType; }

  ParallelSpikeOp() { this->InferOutputShapeFn = output_like_x; }

  /// Y has X's type and shape. ORT merges the ops of one name into one schema that uses one
  /// op's function for every type, so the type comes from X, not from Kernel. The shape is passed
  /// on only when each dimension is a number or a symbol: ORT would turn an unknown dimension
  /// into the number -1, and an unknown rank into rank 0.
  static OrtStatusPtr output_like_x(const OrtCustomOp* /*op*/, OrtShapeInferContext* ctx) {
    return guarded([&] {
      const OrtApi& api = Ort::GetApi();
      OrtTensorTypeAndShapeInfo* x_info = nullptr;  // owned by ctx
      Ort::ThrowOnError(api.ShapeInferContext_GetInputTypeShape(ctx, 0, &x_info));
      const Ort::ConstTensorTypeAndShapeInfo x_type(x_info);
      const std::vector<int64_t> dims = x_type.GetShape();
      std::vector<const char*> symbols(dims.size());
      x_type.GetSymbolicDimensions(symbols.data(), symbols.size());
      bool known = !dims.empty();
      for (size_t axis = 0; axis < dims.size(); ++axis) known &= dims[axis] >= 0 || *symbols[axis] != '\0';
      if (known) Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, x_info));
    });
  }
};

void add_domain(OrtSessionOptions* options) {
  static ParallelSpikeOp<CpuKernel<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT>> cpu_float;
  static ParallelSpikeOp<CpuKernel<ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE>> cpu_double;
  static ParallelSpikeOp<CpuKernel<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16>> cpu_half;
#if SNNCC_WITH_CUDA
  static ParallelSpikeOp<CudaKernel<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT>> cuda_float;
  static ParallelSpikeOp<CudaKernel<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16>> cuda_half;
#endif
  // Sessions keep pointers to their domain, so every domain lives as long as the library.
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;

  Ort::CustomOpDomain domain(kDomain);
  domain.Add(&cpu_float);
  domain.Add(&cpu_double);
  domain.Add(&cpu_half);
#if SNNCC_WITH_CUDA
  domain.Add(&cuda_float);
  domain.Add(&cuda_half);
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
