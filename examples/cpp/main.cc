// snn_classify: classifies inputs with a compiled SNN model on ONNX Runtime's C++ API.
//
//   snn_classify [--library libsnncc_ops.so] [--threads N] MODEL.onnx INPUTS
//
// INPUTS is a .npy file (float32, C order) or raw float32 values; either holds a batch for the
// model's single input, whose leading (batch) dimension may be dynamic. The native `snn` op
// library is registered when --library is given (else the model's own ONNX functions run).
// Prints the argmax class of each batch row of the first output, one per line.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Batch {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

int64_t product(const std::vector<int64_t>& dims, size_t from) {
  return std::accumulate(dims.begin() + static_cast<std::ptrdiff_t>(from), dims.end(), int64_t{1},
                         std::multiplies<>());
}

/// The value of `key` in a .npy header dictionary, e.g. "'<f4'" or "(2, 3)".
std::string npy_field(const std::string& header, const std::string& key) {
  const size_t at = header.find("'" + key + "':");
  if (at == std::string::npos) throw std::runtime_error("npy header lacks " + key);
  size_t begin = header.find_first_not_of(' ', at + key.size() + 3);
  const char open = header[begin];
  const size_t end = open == '(' ? header.find(')', begin) + 1 : header.find_first_of(",}", begin);
  return header.substr(begin, end - begin);
}

/// A float32 C-order .npy file (format versions 1-3).
Batch read_npy(const std::string& bytes) {
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw std::runtime_error("not a .npy file");
  const bool v1 = bytes[6] == 1;
  const auto u8 = [&](size_t i) { return static_cast<size_t>(static_cast<unsigned char>(bytes[i])); };
  const size_t header_len = v1 ? u8(8) | u8(9) << 8 : u8(8) | u8(9) << 8 | u8(10) << 16 | u8(11) << 24;
  const size_t data_at = (v1 ? 10 : 12) + header_len;
  const std::string header = bytes.substr(v1 ? 10 : 12, header_len);
  if (npy_field(header, "descr") != "'<f4'") throw std::runtime_error("npy dtype must be float32 ('<f4')");
  if (npy_field(header, "fortran_order") != "False") throw std::runtime_error("npy must be in C order");
  Batch batch;
  const std::string shape = npy_field(header, "shape");
  for (size_t i = 1; i < shape.size();) {
    const size_t next = shape.find_first_of(",)", i);
    const std::string dim = shape.substr(i, next - i);
    if (dim.find_first_not_of(' ') != std::string::npos) batch.shape.push_back(std::stoll(dim));
    i = next + 1;
  }
  const size_t count = static_cast<size_t>(product(batch.shape, 0));
  if (bytes.size() < data_at + count * sizeof(float)) throw std::runtime_error("npy data is truncated");
  batch.values.resize(count);
  std::copy_n(bytes.data() + data_at, count * sizeof(float), reinterpret_cast<char*>(batch.values.data()));
  return batch;
}

/// Raw float32 values shaped like `input_shape`, its dynamic batch dimension from the file size.
Batch read_raw(const std::string& bytes, std::vector<int64_t> input_shape) {
  const int64_t per_row = product(input_shape, 1);
  if (per_row <= 0) throw std::runtime_error("raw input needs a model input with static non-batch dims");
  const auto count = static_cast<int64_t>(bytes.size() / sizeof(float));
  if (bytes.size() % sizeof(float) != 0 || count % per_row != 0) {
    throw std::runtime_error("raw input size is not a whole number of float32 rows");
  }
  input_shape[0] = count / per_row;
  Batch batch{input_shape, std::vector<float>(static_cast<size_t>(count))};
  std::copy_n(bytes.data(), bytes.size(), reinterpret_cast<char*>(batch.values.data()));
  return batch;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int run(int argc, char** argv) {
  std::string library, model_path, input_path;
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--library" && i + 1 < argc) {
      library = argv[++i];
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = std::stoi(argv[++i]);
    } else if (model_path.empty()) {
      model_path = arg;
    } else if (input_path.empty()) {
      input_path = arg;
    } else {
      throw std::runtime_error("unexpected argument " + arg);
    }
  }
  if (model_path.empty() || input_path.empty()) {
    std::cerr << "usage: snn_classify [--library libsnncc_ops.so] [--threads N] MODEL.onnx INPUTS(.npy|raw f32)\n";
    return 2;
  }

  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "snn_classify");
  Ort::SessionOptions options;
  if (threads > 0) options.SetIntraOpNumThreads(threads);
  if (!library.empty()) options.RegisterCustomOpsLibrary(library.c_str());
  Ort::Session session(env, model_path.c_str(), options);

  Ort::AllocatorWithDefaultOptions allocator;
  const std::string input_name = session.GetInputNameAllocated(0, allocator).get();
  const std::string output_name = session.GetOutputNameAllocated(0, allocator).get();
  const std::vector<int64_t> input_shape =
      session.GetInputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape();

  const std::string bytes = read_file(input_path);
  Batch batch = ends_with(input_path, ".npy") ? read_npy(bytes) : read_raw(bytes, input_shape);
  const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  const Ort::Value input = Ort::Value::CreateTensor<float>(memory, batch.values.data(), batch.values.size(),
                                                           batch.shape.data(), batch.shape.size());
  const char* input_names[] = {input_name.c_str()};
  const char* output_names[] = {output_name.c_str()};
  std::vector<Ort::Value> outputs = session.Run(Ort::RunOptions{nullptr}, input_names, &input, 1, output_names, 1);

  const std::vector<int64_t> out_shape = outputs[0].GetTensorTypeAndShapeInfo().GetShape();
  if (out_shape.empty()) throw std::runtime_error("the output is a scalar");
  const int64_t rows = out_shape[0];
  const int64_t classes = product(out_shape, 1);
  const float* scores = outputs[0].GetTensorData<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = scores + r * classes;
    std::cout << std::max_element(row, row + classes) - row << '\n';
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "snn_classify: " << e.what() << '\n';
    return 1;
  }
}
