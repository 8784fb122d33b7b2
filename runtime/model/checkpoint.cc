#include "runtime/model/checkpoint.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/base/float16.h"
#include "runtime/base/status_macros.h"
#include "runtime/model/json.h"

namespace hyla {
namespace {

namespace fs = std::filesystem;

constexpr char kConfigFile[] = "config.json";
constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string JoinPath(const std::string& dir, absl::string_view file) {
  return (fs::path(dir) / fs::path(std::string(file))).string();
}

bool IsRegularFile(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(path, ": read error"));
  return ss.str();
}

// A shard name from an index must stay inside the checkpoint directory.
bool IsPlainRelativePath(const std::string& name) {
  if (name.empty()) return false;
  const fs::path p(name);
  if (p.is_absolute()) return false;
  for (const fs::path& part : p) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

F32Tensor F32Tensor::View(const float* data, std::vector<int64_t> shape) {
  F32Tensor t;
  t.data_ = data;
  t.shape_ = std::move(shape);
  return t;
}

F32Tensor F32Tensor::Owned(std::vector<float> values, std::vector<int64_t> shape) {
  F32Tensor t;
  t.storage_ = std::move(values);
  t.shape_ = std::move(shape);
  // A moved std::vector keeps its buffer, so data_ stays valid when the tensor is moved.
  t.data_ = t.storage_.data();
  return t;
}

int64_t F32Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

absl::StatusOr<ModelConfig> Checkpoint::ReadConfig(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir,
                                            ": not a checkpoint directory (does not exist "
                                            "or is not a directory)"));
  }
  const std::string config_path = JoinPath(dir, kConfigFile);
  if (!IsRegularFile(config_path)) {
    return absl::NotFoundError(
        absl::StrCat(config_path, ": missing (a checkpoint directory needs config.json)"));
  }
  return LoadModelConfig(config_path);
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = dir;
  HYLA_ASSIGN_OR_RETURN(ckpt->config_, ReadConfig(dir));

  const std::string single_path = JoinPath(dir, kSingleFile);
  const std::string index_path = JoinPath(dir, kIndexFile);
  if (IsRegularFile(single_path)) {
    // Like transformers, a single-file checkpoint wins over an index beside it.
    HYLA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                          SafetensorsFile::Open(single_path));
    ckpt->files_.push_back(std::move(file));
    return ckpt;
  }
  if (!IsRegularFile(index_path)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no weights: neither ", kSingleFile, " nor ",
                                            kIndexFile, " is present"));
  }

  // Sharded checkpoint: {"weight_map": {tensor: shard file}}.
  HYLA_ASSIGN_OR_RETURN(const std::string index_text, ReadWholeFile(index_path));
  absl::StatusOr<JsonValue> index = ParseJson(index_text);
  if (!index.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", index.status().message()));
  }
  if (!index->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": expected a JSON object with \"weight_map\""));
  }
  const JsonValue* weight_map = index->Find("weight_map");
  if (weight_map == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": key \"weight_map\": missing"));
  }
  if (!weight_map->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path,
                     ": key \"weight_map\": expected an object {tensor: shard file}, "
                     "got ",
                     JsonValue::TypeName(weight_map->type())));
  }
  if (weight_map->object_members().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": key \"weight_map\": empty (no tensors)"));
  }
  // Shards in order of first mention; tensor -> shard position.
  std::vector<std::string> shard_names;
  std::map<std::string, size_t> shard_position;
  std::map<std::string, size_t> tensor_shard;
  for (const auto& [tensor, shard] : weight_map->object_members()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": key \"weight_map\": tensor \"", tensor,
          "\": expected a shard file name (string), got ", JsonValue::TypeName(shard.type())));
    }
    const std::string& name = shard.string_value();
    if (!IsPlainRelativePath(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": key \"weight_map\": tensor \"", tensor, "\": shard \"", name,
                       "\" must be a file name relative to the checkpoint directory"));
    }
    auto [it, inserted] = shard_position.emplace(name, shard_names.size());
    if (inserted) shard_names.push_back(name);
    tensor_shard.emplace(tensor, it->second);
  }
  for (size_t s = 0; s < shard_names.size(); ++s) {
    const std::string shard_path = JoinPath(dir, shard_names[s]);
    if (!IsRegularFile(shard_path)) {
      std::string example;
      for (const auto& [tensor, pos] : tensor_shard) {
        if (pos == s) {
          example = tensor;
          break;
        }
      }
      return absl::NotFoundError(absl::StrCat(index_path, ": shard \"", shard_names[s],
                                              "\" (holding tensor \"", example,
                                              "\") does not exist: ", shard_path));
    }
    HYLA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(shard_path));
    ckpt->files_.push_back(std::move(file));
  }
  // Every tensor of every shard is in weight_map, under that shard, and in no other shard.
  std::map<std::string, size_t> seen;  // tensor -> shard position holding it
  for (size_t s = 0; s < ckpt->files_.size(); ++s) {
    const SafetensorsFile& file = *ckpt->files_[s];
    for (const TensorInfo& t : file.tensors()) {
      auto [it, inserted] = seen.emplace(t.name, s);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor \"", t.name, "\" is present in two shards: ", ckpt->files_[it->second]->path(),
            " and ", file.path(), " (", index_path, " must map each tensor to one shard)"));
      }
      auto mapped = tensor_shard.find(t.name);
      if (mapped == tensor_shard.end()) {
        return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor \"", t.name,
                                                       "\" is not listed in the weight_map of ",
                                                       index_path));
      }
      if (mapped->second != s) {
        return absl::InvalidArgumentError(
            absl::StrCat(file.path(), ": tensor \"", t.name, "\" is mapped to shard \"",
                         shard_names[mapped->second], "\" in ", index_path,
                         ", but it is in shard \"", shard_names[s], "\""));
      }
    }
  }
  for (const auto& [tensor, pos] : tensor_shard) {
    if (ckpt->files_[pos]->Find(tensor) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": tensor \"", tensor, "\" is mapped to shard \"", shard_names[pos],
          "\", but ", ckpt->files_[pos]->path(), " does not contain it"));
    }
  }
  return ckpt;
}

const TensorInfo* Checkpoint::Find(absl::string_view name) const {
  for (const auto& file : files_) {
    if (const TensorInfo* t = file->Find(name)) return t;
  }
  return nullptr;
}

absl::StatusOr<F32Tensor> Checkpoint::TakeF32(absl::string_view name,
                                              const std::vector<int64_t>& shape) {
  const TensorInfo* t = Find(name);
  if (t == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        dir_, ": tensor \"", name, "\" missing (expected shape ", ShapeString(shape), ")"));
  }
  if (t->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(t->file, ": tensor \"", name,
                                                   "\": expected shape ", ShapeString(shape),
                                                   ", got ", ShapeString(t->shape)));
  }
  if (t->dtype != DType::kF32 && t->dtype != DType::kBF16 && t->dtype != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat(t->file, ": tensor \"", name, "\": dtype ", DTypeName(t->dtype),
                     " is not supported (expected F32, BF16 or F16)"));
  }
  taken_.insert(std::string(name));
  const int64_t n = t->numel();
  if (t->dtype == DType::kF32) {
    if (reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0) {
      return F32Tensor::View(reinterpret_cast<const float*>(t->data), shape);
    }
    std::vector<float> values(static_cast<size_t>(n));
    if (n > 0) std::memcpy(values.data(), t->data, static_cast<size_t>(n) * sizeof(float));
    return F32Tensor::Owned(std::move(values), shape);
  }
  std::vector<float> values(static_cast<size_t>(n));
  const bool bf16 = t->dtype == DType::kBF16;
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, t->data + 2 * i, sizeof(h));  // little-endian host
    values[static_cast<size_t>(i)] = bf16 ? Bf16ToFloat(h) : Fp16ToFloat(h);
  }
  return F32Tensor::Owned(std::move(values), shape);
}

absl::Status Checkpoint::CheckAllTaken() const {
  for (const auto& file : files_) {
    for (const TensorInfo& t : file->tensors()) {
      if (taken_.count(t.name) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(file->path(), ": unexpected tensor \"",
                                                       t.name, "\" (not used by a ",
                                                       config_.model_type, " model)"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace hyla
