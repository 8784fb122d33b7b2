// Checkpoint: a Hugging Face style model directory — config.json plus model.safetensors or a
// sharded model.safetensors.index.json — opened for loading weights.
//
// Loading protocol: each layer takes its tensors by name with the shape it expects
// (TakeF32); at the end CheckAllTaken() rejects tensors nobody took. Every error names the
// file, the tensor or key and what was expected.
//
// Thread-safety: not thread-safe (loading is single-threaded). F32Tensor values are independent
// of the Checkpoint once taken only when they own their storage; zero-copy fp32 views point into
// the mapping, so keep the Checkpoint alive as long as the weights (CpuBackend does).
#ifndef HYLA_RUNTIME_MODEL_CHECKPOINT_H_
#define HYLA_RUNTIME_MODEL_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/model/config.h"
#include "runtime/model/safetensors.h"

namespace hyla {

// An fp32 weight: a view into the mapping (fp32 checkpoints, aligned) or an owned conversion
// (bf16/fp16 checkpoints). Move-only.
class F32Tensor {
 public:
  F32Tensor() = default;
  F32Tensor(F32Tensor&&) = default;
  F32Tensor& operator=(F32Tensor&&) = default;
  F32Tensor(const F32Tensor&) = delete;
  F32Tensor& operator=(const F32Tensor&) = delete;

  static F32Tensor View(const float* data, std::vector<int64_t> shape);
  static F32Tensor Owned(std::vector<float> values, std::vector<int64_t> shape);

  const float* data() const { return data_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const;
  bool empty() const { return data_ == nullptr; }

 private:
  const float* data_ = nullptr;
  std::vector<int64_t> shape_;
  std::vector<float> storage_;
};

class Checkpoint {
 public:
  // Opens `dir`: parses config.json (see ParseModelConfig) and maps the weights.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);
  // Parses config.json only (no weights needed): `hyla-model info`.
  static absl::StatusOr<ModelConfig> ReadConfig(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  const TensorInfo* Find(absl::string_view name) const;
  bool Has(absl::string_view name) const { return Find(name) != nullptr; }

  // Takes tensor `name`, checking that its shape equals `shape` and that its dtype is F32, BF16
  // or F16, and returns it as fp32. NotFound / InvalidArgument naming file, tensor and the
  // expected and actual shape or dtype.
  absl::StatusOr<F32Tensor> TakeF32(absl::string_view name, const std::vector<int64_t>& shape);
  // InvalidArgument naming the first tensor present in the files but never taken.
  absl::Status CheckAllTaken() const;

 private:
  Checkpoint() = default;
  std::string dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::set<std::string> taken_;
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_MODEL_CHECKPOINT_H_
