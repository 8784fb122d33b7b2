// Shared by the default-model tests: where the model and the training program's exports live,
// and the exports themselves (tests/default_model/golden.safetensors, written by
// tools/train/train.py).
#ifndef HYLA_TESTS_DEFAULT_MODEL_DEFAULT_MODEL_UTIL_H_
#define HYLA_TESTS_DEFAULT_MODEL_DEFAULT_MODEL_UTIL_H_

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "runtime/model/safetensors.h"

namespace hyla::default_model_testing {

constexpr int kVocab = 256;
constexpr int kHeads = 3;  // decision heads (config num_heads)

inline std::string ModelDir() { return std::string(HYLA_SOURCE_DIR) + "/models/default"; }
inline std::string TestDir() { return std::string(HYLA_SOURCE_DIR) + "/tests/default_model"; }

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The training program's exports for the C++ side (tests/default_model/golden.safetensors).
struct Golden {
  std::vector<int32_t> ids;        // [T] held-out validation passage
  std::vector<float> logits;       // [T, 256] fp32 forward of the exported weights
  std::vector<int32_t> routing;    // [3, N, 3]: 0 softmax, 1 GDN, -1 incomplete chunk
  int64_t chunks = 0;              // N
  std::vector<int32_t> slice_ids;  // [S] held-out slice scored for bits per byte
};

inline absl::StatusOr<Golden> LoadGolden() {
  auto file = SafetensorsFile::Open(TestDir() + "/golden.safetensors");
  if (!file.ok()) return file.status();
  Golden g;
  auto i32 = [&](const char* name, std::vector<int32_t>* out,
                 std::vector<int64_t>* shape) -> absl::Status {
    const TensorInfo* t = (*file)->Find(name);
    if (t == nullptr || t->dtype != DType::kI32) {
      return absl::NotFoundError(absl::StrCat("golden tensor ", name, " (I32) missing"));
    }
    out->resize(static_cast<size_t>(t->numel()));
    std::memcpy(out->data(), t->data, t->nbytes);
    *shape = t->shape;
    return absl::OkStatus();
  };
  std::vector<int64_t> shape;
  if (absl::Status s = i32("input_ids", &g.ids, &shape); !s.ok()) return s;
  if (absl::Status s = i32("bpb_slice_ids", &g.slice_ids, &shape); !s.ok()) return s;
  if (absl::Status s = i32("routing", &g.routing, &shape); !s.ok()) return s;
  if (shape.size() != 3 || shape[0] != 3 || shape[2] != kHeads) {
    return absl::InvalidArgumentError("routing is not [3, N, 3]");
  }
  g.chunks = shape[1];
  const TensorInfo* t = (*file)->Find("logits");
  if (t == nullptr || t->dtype != DType::kF32) return absl::NotFoundError("logits (F32) missing");
  g.logits.resize(static_cast<size_t>(t->numel()));
  std::memcpy(g.logits.data(), t->data, t->nbytes);
  if (g.logits.size() != g.ids.size() * kVocab) {
    return absl::InvalidArgumentError("logits is not [T, 256]");
  }
  return g;
}

}  // namespace hyla::default_model_testing

#endif  // HYLA_TESTS_DEFAULT_MODEL_DEFAULT_MODEL_UTIL_H_
