// Test helpers shared by the golden and invariance suites: fixture paths, golden tensors,
// backends over fixture checkpoints, random chunk splits and max-abs-diff.
#ifndef HYLA_TESTS_TESTING_GOLDEN_UTIL_H_
#define HYLA_TESTS_TESTING_GOLDEN_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/safetensors.h"

namespace hyla::testing {

// $HYLA_GOLDEN_DIR overrides the build's fixture directory (bundles run on another machine).
inline std::string GoldenDir(const std::string& family) {
  const char* env = std::getenv("HYLA_GOLDEN_DIR");
  return std::string(env != nullptr && *env != '\0' ? env : HYLA_GOLDEN_DIR) + "/" + family;
}

// A tensor of golden.safetensors as float (F32) or int32 values (I32/I64 widened).
inline absl::StatusOr<std::vector<float>> GoldenF32(const std::string& family,
                                                    const std::string& name,
                                                    std::vector<int64_t>* shape = nullptr) {
  auto file = SafetensorsFile::Open(GoldenDir(family) + "/golden.safetensors");
  if (!file.ok()) return file.status();
  const TensorInfo* t = (*file)->Find(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat("golden tensor ", name, " missing"));
  if (t->dtype != DType::kF32) return absl::InvalidArgumentError(name + " is not F32");
  std::vector<float> v(static_cast<size_t>(t->numel()));
  std::memcpy(v.data(), t->data, t->nbytes);
  if (shape) *shape = t->shape;
  return v;
}

inline absl::StatusOr<std::vector<int32_t>> GoldenI32(const std::string& family,
                                                      const std::string& name,
                                                      std::vector<int64_t>* shape = nullptr) {
  auto file = SafetensorsFile::Open(GoldenDir(family) + "/golden.safetensors");
  if (!file.ok()) return file.status();
  const TensorInfo* t = (*file)->Find(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat("golden tensor ", name, " missing"));
  std::vector<int32_t> v(static_cast<size_t>(t->numel()));
  if (t->dtype == DType::kI32) {
    std::memcpy(v.data(), t->data, t->nbytes);
  } else if (t->dtype == DType::kI64) {
    for (int64_t i = 0; i < t->numel(); ++i) {
      int64_t x;
      std::memcpy(&x, t->data + 8 * i, 8);
      v[i] = static_cast<int32_t>(x);
    }
  } else {
    return absl::InvalidArgumentError(name + " is not an integer tensor");
  }
  if (shape) *shape = t->shape;
  return v;
}

inline absl::StatusOr<std::unique_ptr<cpu::CpuBackend>> LoadCpuBackend(const std::string& dir,
                                                                       int num_slots = 8,
                                                                       int64_t num_blocks = 512) {
  auto ck = Checkpoint::Open(dir);
  if (!ck.ok()) return ck.status();
  cpu::CpuBackendOptions o;
  o.num_threads = 2;
  o.store.num_slots = num_slots;
  o.store.num_blocks = num_blocks;
  return cpu::CpuBackend::Create(std::move(ck).value(), o);
}

inline float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b, size_t begin = 0,
                        size_t end = SIZE_MAX) {
  end = std::min({end, a.size(), b.size()});
  float m = a.size() == b.size() ? 0.0f : INFINITY;
  for (size_t i = begin; i < end; ++i) {
    const float d = std::fabs(a[i] - b[i]);
    if (!(d <= m)) m = d;  // NaN propagates as the maximum
  }
  return m;
}

// Random chunk sizes in [1, max_chunk] summing to total.
inline std::vector<int64_t> RandomSplit(int64_t total, int64_t max_chunk, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> dist(1, max_chunk);
  std::vector<int64_t> out;
  int64_t left = total;
  while (left > 0) {
    const int64_t c = std::min(left, dist(rng));
    out.push_back(c);
    left -= c;
  }
  return out;
}

// `prefill` then ones: {P, 1, 1, ...} summing to total.
inline std::vector<int64_t> PrefillThenDecode(int64_t total, int64_t prefill) {
  std::vector<int64_t> out{prefill};
  for (int64_t i = prefill; i < total; ++i) out.push_back(1);
  return out;
}

}  // namespace hyla::testing

#endif  // HYLA_TESTS_TESTING_GOLDEN_UTIL_H_
