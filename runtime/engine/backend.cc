#include "runtime/engine/backend.h"

#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace hyla {

absl::Status ValidateStepBatch(absl::Span<const SequenceWork> batch, int num_slots,
                               int vocab_size) {
  std::unordered_set<int32_t> slots;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceWork& w = batch[i];
    if (w.seq == nullptr || w.seq->slot < 0 || w.seq->slot >= num_slots) {
      return absl::InvalidArgumentError(absl::StrCat("batch item ", i, ": no valid state slot"));
    }
    if (!slots.insert(w.seq->slot).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch item ", i, ": slot ", w.seq->slot, " appears twice in one step"));
    }
    if (w.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("batch item ", i, ": no tokens"));
    }
    for (int32_t t : w.tokens) {
      if (t < 0 || t >= vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", t, " is outside the vocabulary [0, ", vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace hyla
