// Token sampling on the GPU for the CUDA backend: the logits stay on the device and only the
// chosen token ids (with their logprobs and the top alternatives a request asks for) come back,
// ~200 bytes per row instead of vocab × 4.
//
// Semantics are exactly those of the engine's CPU sampler (hyla::Sampler, runtime/engine/
// sampling.h; kernel: kernels::SampleRows): the same penalties, temperature, top-k / top-p /
// min-p, greedy rule and inverse-CDF draw, driven by the same per-request random stream. For
// the same logits a request samples the same tokens on either side, except where a cumulative
// probability lies within rounding (~1e-13 relative) of its threshold.
//
// A request's state is its hyla::Sampler (alias SamplingState below): its sparse history() of
// seen tokens is uploaded for the penalties (only for requests with a penalty on), the next
// uniform of its stream is peeked before the kernel runs, and Sampler::RecordExternal records
// the choice (output count, uniform consumed only when the kernel drew, exactly when the CPU
// Sampler draws). DeviceSampler samples a batch of rows in one launch.
//
// Thread-safety: a DeviceSampler and the SamplingStates it samples belong to one worker thread
// (the one driving the DeviceContext); not thread-safe.
#ifndef HYLA_RUNTIME_CUDA_DEVICE_SAMPLER_H_
#define HYLA_RUNTIME_CUDA_DEVICE_SAMPLER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/ops.h"
#include "runtime/cuda/cuda_util.h"
#include "runtime/cuda/device_context.h"
#include "runtime/engine/sampling.h"

namespace hyla::cuda {

// A request's sampling state is the engine's hyla::Sampler (runtime/engine/sampling.h): its
// params(), sparse history() and uniform stream are what the kernel needs, and RecordExternal
// records the device's choice, so CPU and device sampling share one state.
using SamplingState = ::hyla::Sampler;

// One row to sample: row r of the logits passed to DeviceSampler::Sample.
struct DeviceSampleRow {
  SamplingState* state = nullptr;  // updated by Sample (output count, uniform consumed)
  // Ids whose logits become -inf first (the stop criteria's suppressed ids, e.g. EOS before
  // min_tokens); ids outside the vocabulary are ignored.
  absl::Span<const int32_t> suppressed;
  int num_top = 0;  // alternatives wanted (top logprobs), [0, kernels::kSamplingMaxTop]
};

struct DeviceSampleResult {
  SampledToken token;             // as hyla::Sampler::Sample returns it
  std::vector<SampledToken> top;  // as Sampler::TopAlternatives(num_top) after that Sample
};

class DeviceSampler {
 public:
  // Pinned host memory for the results of up to `max_rows` rows per call.
  static absl::StatusOr<std::unique_ptr<DeviceSampler>> Create(int vocab_size, int max_rows);

  int vocab_size() const { return vocab_size_; }
  int max_rows() const { return max_rows_; }

  // Samples one token for each row of `logits` [rows.size(), vocab_size] fp32 on ctx's stream
  // (rows `stride` elements apart, stride >= vocab_size). The logits are overwritten with the
  // processed values (penalties, temperature). The per-row parameters, histories and uniforms
  // are uploaded into ctx.scratch() (released again before returning); waits for the results.
  // On success *out has one result per row and each row's state has recorded its token.
  // InvalidArgument for a bad row (null state, invalid params, num_top out of range) or too
  // many rows; on error no state is changed.
  absl::Status Sample(DeviceContext& ctx, float* logits, int64_t stride,
                      absl::Span<const DeviceSampleRow> rows, std::vector<DeviceSampleResult>* out);

 private:
  DeviceSampler(int vocab_size, int max_rows, PinnedBuffer results)
      : vocab_size_(vocab_size), max_rows_(max_rows), results_(std::move(results)) {}

  int vocab_size_;
  int max_rows_;
  PinnedBuffer results_;  // [max_rows] kernels::SampledRow
  // Host staging, reused across calls.
  std::vector<kernels::SamplingRowParams> params_;
  std::vector<int32_t> offsets_;
  std::vector<kernels::SamplingTokenCount> entries_;
};

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_DEVICE_SAMPLER_H_
