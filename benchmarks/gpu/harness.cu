// Checks the CUDA kernels of snn.ParallelSpike and snn.SerialIF against their CPU kernels and times
// them (no ONNX Runtime).
//
//   harness [--neurons N] [--steps T ...] [--repeats R]      (JSON report on stdout)
//
// For float32 and float16 and every T: random currents (with NaN and +-inf sprinkled in) and
// per-channel parameters; the GPU outputs must equal the CPU kernels' bit for bit (float16: the CPU
// kernel on the widened values, as both compute in float32). Then it times, with CUDA events on
// one stream, the parallel neuron, the serial integrate-and-fire neuron with the same T (the
// step-by-step baseline: one thread per neuron, T dependent steps, same bytes moved) and a
// device-to-device copy of the same bytes. GB/s count the bytes read and written (2*T*N*size).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#include "cuda_kernel.h"
#include "serial_if_cuda.h"

using namespace snncc;

namespace {

constexpr int64_t kChannels = 64;
constexpr int64_t kInner = 256;  // 16 x 16 pixels per channel

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::fprintf(stderr, "harness: %s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}

/// Runs fn(begin, end) on disjoint ranges of [0, n) on all hardware threads.
template <typename Fn>
void parallel_for(int64_t n, Fn fn) {
  const int64_t workers = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> threads;
  for (int64_t w = 0; w < workers; ++w) threads.emplace_back(fn, n * w / workers, n * (w + 1) / workers);
  for (auto& t : threads) t.join();
}

/// Deterministic pseudo-random value in [0, 1) for index i (splitmix64).
float uniform(uint64_t i) {
  uint64_t z = i + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return static_cast<float>((z ^ (z >> 31)) >> 40) / 16777216.0f;
}

template <typename S>
S store(float v);
template <>
float store<float>(float v) { return v; }
template <>
__half store<__half>(float v) { return __float2half_rn(v); }
float widen(float v) { return v; }
float widen(__half v) { return __half2float(v); }

/// Values of y (widened) that differ in bits from the float32 reference.
template <typename S>
int64_t count_mismatches(const std::vector<S>& y, const std::vector<float>& reference) {
  int64_t mismatches = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const float a = widen(y[i]);
    mismatches += std::memcmp(&a, &reference[i], sizeof(float)) != 0;
  }
  return mismatches;
}

/// Milliseconds per call of fn on `stream`, best of `repeats` (after one warm-up call).
template <typename Fn>
float best_ms(Fn fn, cudaStream_t stream, int repeats) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  fn();
  float best = INFINITY;
  for (int r = 0; r < repeats; ++r) {
    check(cudaEventRecord(start, stream), "record");
    fn();
    check(cudaEventRecord(stop, stream), "record");
    check(cudaEventSynchronize(stop), "synchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    best = std::min(best, ms);
  }
  check(cudaEventDestroy(start), "event");
  check(cudaEventDestroy(stop), "event");
  return best;
}

/// One (type, T) case; prints its JSON object.
template <typename S>
void run_case(const char* type_name, int steps, int64_t neurons, int repeats, cudaStream_t stream, bool first) {
  const int64_t size = steps * neurons;
  const cuda::DType dtype = std::is_same_v<S, float> ? cuda::DType::kFloat32 : cuda::DType::kFloat16;
  std::vector<S> x(size), params(3 * kChannels);
  std::vector<float> x_wide(size), params_wide(3 * kChannels), y_parallel_ref(size), y_serial_ref(size);
  parallel_for(size, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float u = uniform(static_cast<uint64_t>(i) * 7 + steps);
      // Every 9973rd value non-finite: NaN, +inf or -inf.
      const float v = i % 9973 == 0 ? (i % 3 == 0 ? NAN : (i % 3 == 1 ? INFINITY : -INFINITY)) : 3.0f * u - 0.5f;
      x[i] = store<S>(v);
      x_wide[i] = widen(x[i]);
    }
  });
  for (int64_t c = 0; c < kChannels; ++c) {
    params[c] = store<S>(0.5f + uniform(c));                       // theta_pre
    params[kChannels + c] = store<S>(0.5f + uniform(c + 1000));    // theta_post
    params[2 * kChannels + c] = store<S>(0.2f * uniform(c + 2000) - 0.1f);  // psi
  }
  for (size_t k = 0; k < params.size(); ++k) params_wide[k] = widen(params[k]);

  const Geometry g{steps, neurons, kChannels, kInner, steps};
  // The same neurons with a constant input (constant_input = 1): X's first row at every step.
  const Geometry constant_g{steps, neurons, kChannels, kInner, 1};
  std::vector<float> y_constant_ref(size);
  const Params<float> cpu_params{params_wide.data(), params_wide.data() + kChannels,
                                 params_wide.data() + 2 * kChannels, 1, 1, 1};
  parallel_for(neurons, [&](int64_t begin, int64_t end) {
    baseline::parallel_spike_cpu(x_wide.data(), cpu_params, y_parallel_ref.data(), g, Algorithm::kBinary, begin, end);
    baseline::serial_if_cpu(x_wide.data(), cpu_params, y_serial_ref.data(), g, begin, end);
    baseline::parallel_spike_cpu(x_wide.data(), cpu_params, y_constant_ref.data(), constant_g, Algorithm::kBinary,
                                 begin, end);
  });

  S *d_x, *d_y, *d_params;
  check(cudaMalloc(&d_x, size * sizeof(S)), "malloc x");
  check(cudaMalloc(&d_y, size * sizeof(S)), "malloc y");
  check(cudaMalloc(&d_params, params.size() * sizeof(S)), "malloc params");
  check(cudaMemcpy(d_x, x.data(), size * sizeof(S), cudaMemcpyHostToDevice), "copy x");
  check(cudaMemcpy(d_params, params.data(), params.size() * sizeof(S), cudaMemcpyHostToDevice), "copy params");
  const Params<void> gpu_params{d_params, d_params + kChannels, d_params + 2 * kChannels, 1, 1, 1};
  // A kernel's launch, as a callable for best_ms.
  const auto launcher = [&](auto launch_kernel, const Geometry& geometry) {
    return [&, launch_kernel, geometry] {
      if (const char* error = launch_kernel(dtype, d_x, gpu_params, d_y, geometry, stream)) {
        std::fprintf(stderr, "harness: launch: %s\n", error);
        std::exit(1);
      }
    };
  };
  const auto parallel = launcher(cuda::launch_parallel_spike, g);
  const auto serial = launcher(cuda::launch_serial_if, g);
  std::vector<S> y(size);
  // Runs a kernel once and counts the values that differ from its CPU kernel's.
  const auto mismatches_of = [&](auto run, const std::vector<float>& reference) {
    run();
    check(cudaStreamSynchronize(stream), "kernel");
    check(cudaMemcpy(y.data(), d_y, size * sizeof(S), cudaMemcpyDeviceToHost), "copy y");
    return count_mismatches(y, reference);
  };
  const int64_t mismatches = mismatches_of(parallel, y_parallel_ref);
  const int64_t serial_mismatches = mismatches_of(serial, y_serial_ref);
  const int64_t constant_mismatches = mismatches_of(launcher(cuda::launch_parallel_spike, constant_g), y_constant_ref);

  const float parallel_ms = best_ms(parallel, stream, repeats);
  const float serial_ms = best_ms(serial, stream, repeats);
  const float copy_ms = best_ms(
      [&] { check(cudaMemcpyAsync(d_y, d_x, size * sizeof(S), cudaMemcpyDeviceToDevice, stream), "copy"); }, stream,
      repeats);
  check(cudaGetLastError(), "timing");
  check(cudaFree(d_x), "free");
  check(cudaFree(d_y), "free");
  check(cudaFree(d_params), "free");

  const double gb = 2.0 * size * sizeof(S) / 1e9;
  std::printf(
      "%s    {\"dtype\": \"%s\", \"T\": %d, \"neurons\": %lld, \"mismatched_values\": %lld, "
      "\"serial_if_mismatched_values\": %lld, \"constant_input_mismatched_values\": %lld, "
      "\"ms\": {\"parallel\": %.4f, \"serial_if\": %.4f, \"copy\": %.4f}, "
      "\"gb_per_s\": {\"parallel\": %.1f, \"serial_if\": %.1f, \"copy\": %.1f}}",
      first ? "" : ",\n", type_name, steps, static_cast<long long>(neurons), static_cast<long long>(mismatches),
      static_cast<long long>(serial_mismatches), static_cast<long long>(constant_mismatches),
      parallel_ms, serial_ms, copy_ms, gb / parallel_ms * 1e3, gb / serial_ms * 1e3, gb / copy_ms * 1e3);
  std::fflush(stdout);
  std::fprintf(stderr,
               "harness: %s T=%d: %lld + %lld (serial IF) + %lld (constant input) mismatches, parallel %.3f ms, "
               "serial IF %.3f ms, copy %.3f ms\n",
               type_name, steps, static_cast<long long>(mismatches), static_cast<long long>(serial_mismatches),
               static_cast<long long>(constant_mismatches), parallel_ms, serial_ms, copy_ms);
  if (mismatches != 0 || serial_mismatches != 0 || constant_mismatches != 0) std::exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t neurons = 16 << 20;
  int repeats = 10;
  std::vector<int> steps;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--neurons" && i + 1 < argc) {
      neurons = std::atoll(argv[++i]);
    } else if (arg == "--repeats" && i + 1 < argc) {
      repeats = std::atoi(argv[++i]);
    } else if (arg == "--steps") {
      while (i + 1 < argc && argv[i + 1][0] != '-') steps.push_back(std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: harness [--neurons N] [--steps T ...] [--repeats R]\n");
      return 2;
    }
  }
  if (steps.empty()) steps = {4, 8, 16, 32, 64, 128};
  neurons -= neurons % (kChannels * kInner);
  if (neurons <= 0) {
    std::fprintf(stderr, "harness: --neurons must be at least %lld\n", static_cast<long long>(kChannels * kInner));
    return 2;
  }

  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "device");
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "stream");
  std::printf("{\"device\": \"%s\", \"neurons\": %lld, \"repeats\": %d, \"results\": [\n", prop.name,
              static_cast<long long>(neurons), repeats);
  bool first = true;
  for (int t : steps) {
    run_case<float>("float32", t, neurons, repeats, stream, first);
    first = false;
    run_case<__half>("float16", t, neurons, repeats, stream, first);
  }
  std::printf("\n]}\n");
  check(cudaStreamDestroy(stream), "stream");
  return 0;
}
