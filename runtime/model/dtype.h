// Element types of checkpoint tensors and of state storage.
#ifndef HYLA_RUNTIME_MODEL_DTYPE_H_
#define HYLA_RUNTIME_MODEL_DTYPE_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace hyla {

enum class DType { kF32, kBF16, kF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

inline int64_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF64:
    case DType::kI64:
      return 8;
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
    case DType::kI16:
      return 2;
    case DType::kI8:
    case DType::kU8:
    case DType::kBool:
      return 1;
  }
  return 0;
}

// Safetensors spelling: "F32", "BF16", ...
inline absl::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kF64:
      return "F64";
    case DType::kI64:
      return "I64";
    case DType::kI32:
      return "I32";
    case DType::kI16:
      return "I16";
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kBool:
      return "BOOL";
  }
  return "?";
}

// Parses a safetensors dtype name; returns false when unknown.
inline bool ParseDTypeName(absl::string_view s, DType* out) {
  static constexpr DType kAll[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF64,
                                   DType::kI64, DType::kI32,  DType::kI16, DType::kI8,
                                   DType::kU8,  DType::kBool};
  for (DType t : kAll) {
    if (DTypeName(t) == s) {
      *out = t;
      return true;
    }
  }
  return false;
}

}  // namespace hyla

#endif  // HYLA_RUNTIME_MODEL_DTYPE_H_
