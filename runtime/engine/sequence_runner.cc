#include "runtime/engine/sequence_runner.h"

#include <memory>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "runtime/base/status_macros.h"

namespace hyla {

absl::StatusOr<std::vector<std::vector<float>>> RunBatchedLogits(
    Backend& backend, const std::vector<std::vector<int32_t>>& ids,
    const std::vector<std::vector<int64_t>>& chunks) {
  if (ids.size() != chunks.size()) {
    return absl::InvalidArgumentError("RunBatchedLogits: ids and chunks differ in length");
  }
  const int64_t vocab = backend.config().vocab_size;
  const size_t n = ids.size();
  std::vector<std::vector<int64_t>> plan(n);
  for (size_t i = 0; i < n; ++i) {
    plan[i] =
        chunks[i].empty() ? std::vector<int64_t>{static_cast<int64_t>(ids[i].size())} : chunks[i];
    int64_t sum = 0;
    for (int64_t c : plan[i]) {
      if (c <= 0)
        return absl::InvalidArgumentError(absl::StrCat("chunk sizes must be positive, got ", c));
      sum += c;
    }
    if (sum != static_cast<int64_t>(ids[i].size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk sizes sum to ", sum, " but there are ", ids[i].size(), " ids"));
    }
  }
  std::vector<std::unique_ptr<SequenceState>> seqs(n);
  auto release_all = [&] {
    for (auto& s : seqs) {
      if (s != nullptr) backend.store().Release(std::move(s));
    }
  };
  for (size_t i = 0; i < n; ++i) {
    auto seq = backend.store().NewSequence();
    if (!seq.ok()) {
      release_all();
      return seq.status();
    }
    seqs[i] = std::move(seq).value();
    backend.ResetSlot(seqs[i]->slot);
  }
  std::vector<std::vector<float>> logits(n);
  std::vector<size_t> next_chunk(n, 0);
  std::vector<int64_t> pos(n, 0);
  for (;;) {
    std::vector<SequenceWork> batch;
    std::vector<size_t> who;
    for (size_t i = 0; i < n; ++i) {
      if (next_chunk[i] >= plan[i].size()) continue;
      const int64_t c = plan[i][next_chunk[i]];
      SequenceWork w;
      w.seq = seqs[i].get();
      w.tokens = absl::MakeConstSpan(ids[i]).subspan(pos[i], c);
      w.logits = LogitsMode::kAll;
      batch.push_back(w);
      who.push_back(i);
    }
    if (batch.empty()) break;
    StepOutput out;
    absl::Status st = backend.Step(batch, &out);
    if (!st.ok()) {
      release_all();
      return st;
    }
    for (size_t b = 0; b < who.size(); ++b) {
      const size_t i = who[b];
      const float* rows = out.logits.data() + out.row_offset[b] * vocab;
      logits[i].insert(logits[i].end(), rows, rows + out.row_count[b] * vocab);
      pos[i] += plan[i][next_chunk[i]];
      ++next_chunk[i];
    }
  }
  release_all();
  return logits;
}

absl::StatusOr<std::vector<float>> RunSequenceLogits(Backend& backend,
                                                     absl::Span<const int32_t> ids,
                                                     absl::Span<const int64_t> chunks) {
  HYLA_ASSIGN_OR_RETURN(std::vector<std::vector<float>> all,
                        RunBatchedLogits(backend, {std::vector<int32_t>(ids.begin(), ids.end())},
                                         {std::vector<int64_t>(chunks.begin(), chunks.end())}));
  return std::move(all[0]);
}

}  // namespace hyla
