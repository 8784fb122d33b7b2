// Offline helpers that drive a Backend for one or several sequences without the scheduler:
// `hyla-model logits`, golden and invariance tests, benchmarks.
//
// Thread-safety: same as the Backend (one thread at a time).
#ifndef HYLA_RUNTIME_ENGINE_SEQUENCE_RUNNER_H_
#define HYLA_RUNTIME_ENGINE_SEQUENCE_RUNNER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "runtime/engine/backend.h"

namespace hyla {

// Feeds `ids` to a fresh sequence in calls of `chunks` sizes (empty: one call; the sizes must
// sum to ids.size()) and returns the logits of every position, [T, vocab] row-major.
absl::StatusOr<std::vector<float>> RunSequenceLogits(Backend& backend,
                                                     absl::Span<const int32_t> ids,
                                                     absl::Span<const int64_t> chunks);

// Runs several sequences together, batch by batch: at each step every unfinished sequence feeds
// its next chunk (from its own chunk list). Returns each sequence's [T_i, vocab] logits.
absl::StatusOr<std::vector<std::vector<float>>> RunBatchedLogits(
    Backend& backend, const std::vector<std::vector<int32_t>>& ids,
    const std::vector<std::vector<int64_t>>& chunks);

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_SEQUENCE_RUNNER_H_
