#include "runtime/cuda/device_sampler.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace hyla::cuda {

absl::StatusOr<std::unique_ptr<DeviceSampler>> DeviceSampler::Create(int vocab_size, int max_rows) {
  if (vocab_size < 1 || max_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("DeviceSampler needs vocab_size >= 1 and ",
                                                   "max_rows >= 1, got ", vocab_size, " and ",
                                                   max_rows));
  }
  absl::StatusOr<PinnedBuffer> results = PinnedBuffer::Allocate(
      static_cast<size_t>(max_rows) * sizeof(kernels::SampledRow), "sampling results");
  if (!results.ok()) return results.status();
  return std::unique_ptr<DeviceSampler>(
      new DeviceSampler(vocab_size, max_rows, std::move(*results)));
}

absl::Status DeviceSampler::Sample(DeviceContext& ctx, float* logits, int64_t stride,
                                   absl::Span<const DeviceSampleRow> rows,
                                   std::vector<DeviceSampleResult>* out) {
  const int64_t n = static_cast<int64_t>(rows.size());
  out->clear();
  if (n == 0) return absl::OkStatus();
  if (n > max_rows_) {
    return absl::InvalidArgumentError(
        absl::StrCat("device sampling of ", n, " rows; the sampler was created for ", max_rows_));
  }
  if (logits == nullptr || stride < vocab_size_) {
    return absl::InvalidArgumentError(absl::StrCat("device sampling: logits must be non-null ",
                                                   "with stride >= vocab ", vocab_size_,
                                                   ", got stride ", stride));
  }

  // Per-row parameters, and the history entries of rows with a penalty plus suppressed ids.
  params_.resize(static_cast<size_t>(n));
  offsets_.assign(1, 0);
  entries_.clear();
  for (int64_t r = 0; r < n; ++r) {
    const DeviceSampleRow& row = rows[static_cast<size_t>(r)];
    if (row.state == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("device sampling: row ", r, " has no state"));
    }
    const SamplingParams& sp = row.state->params();
    const absl::Status valid = ValidateSamplingParams(sp);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("device sampling: row ", r, ": ", valid.message()));
    }
    if (row.num_top < 0 || row.num_top > kernels::kSamplingMaxTop) {
      return absl::InvalidArgumentError(absl::StrCat("device sampling: row ", r, " asks for ",
                                                     row.num_top, " alternatives (at most ",
                                                     kernels::kSamplingMaxTop, ")"));
    }
    kernels::SamplingRowParams& kp = params_[static_cast<size_t>(r)];
    kp.temperature = sp.temperature;
    kp.top_k = sp.top_k;
    kp.top_p = sp.top_p;
    kp.min_p = sp.min_p;
    kp.repetition_penalty = sp.repetition_penalty;
    kp.presence_penalty = sp.presence_penalty;
    kp.frequency_penalty = sp.frequency_penalty;
    kp.num_top = row.num_top;
    kp.uniform = sp.temperature > 0.0f ? row.state->uniforms().Peek() : 0.0;

    const size_t base = entries_.size();
    const bool penalties = sp.repetition_penalty != 1.0f || sp.presence_penalty != 0.0f ||
                           sp.frequency_penalty != 0.0f;
    const absl::Span<const TokenCount> seen = row.state->history().entries();
    if (penalties) {
      for (const TokenCount& e : seen) {
        entries_.push_back(kernels::SamplingTokenCount{e.token, e.count});
      }
    }
    const size_t appended_from = entries_.size();
    for (int32_t id : row.suppressed) {
      if (id < 0 || id >= vocab_size_) continue;
      const int64_t at = penalties ? row.state->history().Find(id) : -1;
      if (at >= 0) {
        entries_[base + static_cast<size_t>(at)].count = kernels::kSamplingSuppressed;
        continue;
      }
      const bool listed =
          std::any_of(entries_.begin() + static_cast<std::ptrdiff_t>(appended_from), entries_.end(),
                      [id](const kernels::SamplingTokenCount& e) { return e.token == id; });
      if (!listed)
        entries_.push_back(kernels::SamplingTokenCount{id, kernels::kSamplingSuppressed});
    }
    if (entries_.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      return absl::ResourceExhaustedError("device sampling: more than 2^31 history entries");
    }
    offsets_.push_back(static_cast<int32_t>(entries_.size()));
  }

  // Upload, sample, copy the results back; the scratch is released once the stream is idle.
  ScratchArena& scratch = ctx.scratch();
  const size_t mark = scratch.Mark();
  const absl::Status run = [&]() -> absl::Status {
    absl::StatusOr<kernels::SamplingRowParams*> params_d =
        ctx.Upload(params_.data(), n, "sampling parameters");
    if (!params_d.ok()) return params_d.status();
    absl::StatusOr<int32_t*> offsets_d = ctx.Upload(offsets_.data(), n + 1, "sampling offsets");
    if (!offsets_d.ok()) return offsets_d.status();
    absl::StatusOr<kernels::SamplingTokenCount*> entries_d = ctx.Upload(
        entries_.data(), static_cast<int64_t>(entries_.size()), "sampling token histories");
    if (!entries_d.ok()) return entries_d.status();
    absl::StatusOr<kernels::SampledRow*> out_d =
        scratch.AllocArray<kernels::SampledRow>(n, "sampling results");
    if (!out_d.ok()) return out_d.status();

    kernels::SampleRowsParams kp;
    kp.rows = n;
    kp.vocab = vocab_size_;
    kp.logits = logits;
    kp.logits_stride = stride;
    kp.work = logits;
    kp.work_stride = stride;
    kp.params = *params_d;
    kp.history_offsets = *offsets_d;
    kp.history = entries_.empty() ? nullptr : *entries_d;
    kp.out = *out_d;
    HYLA_KERNEL_RETURN_IF_ERROR(kernels::SampleRows(kp, ctx.kernel_stream()), "SampleRows");
    absl::Status st = ctx.CopyToHost(results_.get(), *out_d,
                                     static_cast<size_t>(n) * sizeof(kernels::SampledRow));
    if (!st.ok()) return st;
    return ctx.Synchronize();
  }();
  if (!run.ok()) {
    ctx.Synchronize().IgnoreError();  // the scratch may still be in use by the stream
    scratch.RewindTo(mark);
    return run;
  }
  scratch.RewindTo(mark);

  const kernels::SampledRow* results = results_.as<kernels::SampledRow>();
  for (int64_t r = 0; r < n; ++r) {
    const kernels::SampledRow& sr = results[r];
    if (sr.token < 0 || sr.token >= vocab_size_ || sr.num_top < 0 ||
        sr.num_top > rows[static_cast<size_t>(r)].num_top) {
      return absl::InternalError(absl::StrCat("device sampling: row ", r, " came back with token ",
                                              sr.token, " and ", sr.num_top, " alternatives"));
    }
  }
  out->resize(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    const kernels::SampledRow& sr = results[r];
    DeviceSampleResult& res = (*out)[static_cast<size_t>(r)];
    res.token = SampledToken{sr.token, sr.logprob};
    res.top.clear();
    for (int i = 0; i < sr.num_top; ++i) {
      res.top.push_back(SampledToken{sr.top_ids[i], sr.top_logprobs[i]});
    }
    rows[static_cast<size_t>(r)].state->RecordExternal(res.token, sr.used_uniform != 0, res.top);
  }
  return absl::OkStatus();
}

}  // namespace hyla::cuda
