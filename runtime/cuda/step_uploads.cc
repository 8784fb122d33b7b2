#include "runtime/cuda/step_uploads.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/base/status_macros.h"
#include "runtime/cuda/cuda_util.h"

namespace hyla::cuda {

void StepUploads::Write(int32_t* dst, const int32_t* values, int64_t count) {
  if (count <= 0) return;
  kernels::Int32Run run;
  run.dst = dst;
  run.src = static_cast<int32_t>(values_.size());
  run.count = static_cast<int32_t>(count);
  // Consecutive writes to consecutive addresses extend the previous run.
  if (!runs_.empty()) {
    kernels::Int32Run& last = runs_.back();
    if (last.dst + last.count == dst && last.src + last.count == run.src) {
      last.count += run.count;
      values_.insert(values_.end(), values, values + count);
      return;
    }
  }
  runs_.push_back(run);
  values_.insert(values_.end(), values, values + count);
}

absl::Status StepUploads::Apply(DeviceContext& dev) {
  if (runs_.empty()) return absl::OkStatus();
  const size_t runs_bytes = runs_.size() * sizeof(kernels::Int32Run);
  const size_t values_at = (runs_bytes + 15) / 16 * 16;
  const size_t total = values_at + values_.size() * sizeof(int32_t);
  packed_.resize(total);
  std::memcpy(packed_.data(), runs_.data(), runs_bytes);
  std::memcpy(packed_.data() + values_at, values_.data(), values_.size() * sizeof(int32_t));
  HYLA_ASSIGN_OR_RETURN(
      uint8_t * d, dev.Upload(packed_.data(), static_cast<int64_t>(total), "step table updates"));
  const int64_t num_runs = static_cast<int64_t>(runs_.size());
  Clear();
  HYLA_KERNEL_RETURN_IF_ERROR(
      kernels::ScatterInt32Runs(reinterpret_cast<const kernels::Int32Run*>(d), num_runs,
                                reinterpret_cast<const int32_t*>(d + values_at),
                                dev.kernel_stream()),
      "ScatterInt32Runs");
  return absl::OkStatus();
}

}  // namespace hyla::cuda
