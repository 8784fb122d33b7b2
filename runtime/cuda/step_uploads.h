// StepUploads: host-staged writes into persistent device memory, applied in one copy and one
// kernel before a step's device work.
//
// Decode steps replayed from CUDA graphs read their per-row tables (block tables, the block of
// each new token) from device buffers at fixed addresses; the host stages only what changed
// since the last step (Write), and CudaBackend applies everything at once (Apply: one upload into
// step scratch, one ScatterInt32Runs launch) before it launches the graph. Stream order makes the
// writes visible to the graph.
//
// Thread-safety: owned and used by one worker thread.
#ifndef HYLA_RUNTIME_CUDA_STEP_UPLOADS_H_
#define HYLA_RUNTIME_CUDA_STEP_UPLOADS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/ops.h"
#include "runtime/cuda/device_context.h"

namespace hyla::cuda {

class StepUploads {
 public:
  // Forgets everything staged (nothing reaches the device).
  void Clear() {
    runs_.clear();
    values_.clear();
  }
  // Stages dst[i] = values[i] for i < count (dst: device memory that outlives the step).
  void Write(int32_t* dst, const int32_t* values, int64_t count);
  void Write(int32_t* dst, int32_t value) { Write(dst, &value, 1); }

  int64_t num_runs() const { return static_cast<int64_t>(runs_.size()); }
  int64_t num_values() const { return static_cast<int64_t>(values_.size()); }

  // Enqueues the staged writes on dev's stream (the upload takes step scratch, which the caller
  // may rewind right after: the scatter reads it before any later work of the stream) and
  // clears the stage.
  absl::Status Apply(DeviceContext& dev);

 private:
  std::vector<kernels::Int32Run> runs_;
  std::vector<int32_t> values_;
  std::vector<uint8_t> packed_;  // runs then values, uploaded in one copy
};

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_STEP_UPLOADS_H_
