// SafetensorsFile: a memory-mapped .safetensors file with a fully validated header.
//
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape,
// data_offsets: [begin, end]}, "__metadata__": {...}}, then the data buffer. Validation
// rejects, naming the file and the tensor: a truncated file, a header longer than the file,
// unknown dtypes, negative or overflowing shapes, offsets outside the buffer or not matching
// shape × dtype size, and overlapping tensors.
//
// Thread-safety: immutable after Open; tensor data may be read from any thread while the
// SafetensorsFile lives.
#ifndef HYLA_RUNTIME_MODEL_SAFETENSORS_H_
#define HYLA_RUNTIME_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/model/dtype.h"

namespace hyla {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping; not necessarily aligned
  uint64_t nbytes = 0;
  std::string file;  // path of the file holding it, for messages
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* Find(absl::string_view name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;                // in header order
  std::unordered_map<std::string, size_t> index_;  // name -> position in tensors_
};

// Writes a safetensors file (tests and the model generator). Tensors are written in the given
// order; `metadata` becomes "__metadata__" (string values).
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // raw little-endian data, numel × DTypeSize(dtype)
};
absl::Status WriteSafetensors(
    const std::string& path, const std::vector<TensorToWrite>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata = {});

}  // namespace hyla

#endif  // HYLA_RUNTIME_MODEL_SAFETENSORS_H_
