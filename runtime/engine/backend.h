// Backend: runs one model step over a batch of sequences at different lengths and positions.
// The same batch description serves the CPU backend (the reference) and the CUDA backend.
//
// A step takes, for every sequence in the batch, its new tokens (1..n: a prefill chunk or one
// decode token), folds them into the sequence's state (slot + KV blocks from the StateStore) and
// returns logits for the rows asked for. Sequences are independent: a sequence's results do not
// depend on what else is in the batch.
//
// Thread-safety: a Backend is owned and driven by one worker's scheduler thread.
#ifndef HYLA_RUNTIME_ENGINE_BACKEND_H_
#define HYLA_RUNTIME_ENGINE_BACKEND_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "runtime/engine/sampling.h"
#include "runtime/model/config.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"

namespace hyla {

enum class LogitsMode {
  kNone,  // no logits (a prefill chunk that does not end the prompt)
  kLast,  // logits of the last new token only
  kAll,   // logits of every new token
};

struct SequenceWork {
  SequenceState* seq = nullptr;      // advanced by Step: num_tokens += tokens.size()
  absl::Span<const int32_t> tokens;  // new tokens (at least one), ids < vocab_size
  LogitsMode logits = LogitsMode::kLast;
  // Device sampling (only where Backend::SamplesOnDevice() and logits == kLast): the request's
  // sampler. The backend samples the last row where the logits are, records the choice in the
  // sampler (Sampler::RecordExternal) and reports it in StepOutput::sampled instead of returning
  // the row's logits (~200 bytes back instead of vocab × 4).
  Sampler* sampler = nullptr;
  absl::Span<const int32_t> suppressed;  // ids excluded from this draw (e.g. EOS before min_tokens)
  int num_top = 0;                       // alternatives wanted (top logprobs), ≤ 20
};

// A token sampled by the backend (SequenceWork::sampler).
struct BackendSample {
  bool valid = false;
  SampledToken token;
  std::vector<SampledToken> top;  // the alternatives asked for, best first
};

// NAtS-L routing decisions made during a step (chunks completed × decision heads).
struct RoutingCounts {
  int64_t to_softmax = 0;
  int64_t to_gdn = 0;
};

struct StepOutput {
  // Rows of logits, [rows, vocab_size] fp32, in batch order; row_offset[i] is the first row of
  // batch item i and row_count[i] its number of rows (0, 1 or tokens.size()).
  std::vector<float> logits;
  std::vector<int64_t> row_offset;
  std::vector<int64_t> row_count;
  // [batch] where any item was sampled by the backend (then its row_count is 0), else empty.
  std::vector<BackendSample> sampled;
  RoutingCounts routing;
};

// The checks every Backend::Step makes before touching any state: each item has a valid slot
// (< num_slots) used once in the batch, at least one token, and every token id in
// [0, vocab_size). InvalidArgument naming the item and the value.
absl::Status ValidateStepBatch(absl::Span<const SequenceWork> batch, int num_slots, int vocab_size);

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const StateLayout& layout() const = 0;
  virtual StateStore& store() = 0;

  // Clears slot memory for a new, empty sequence.
  virtual void ResetSlot(int32_t slot) = 0;
  // Copies slot memory (fork). Blocks are shared through the StateStore.
  virtual void CopySlot(int32_t src, int32_t dst) = 0;

  // Whether Step samples the items that carry a SequenceWork::sampler (see there).
  virtual bool SamplesOnDevice() const { return false; }

  // Runs one step. On error no sequence of the batch may be used again (its state may be
  // partially updated): the caller releases them. InvalidArgument for bad token ids,
  // ResourceExhausted when the KV pool or a per-sequence cap runs out.
  virtual absl::Status Step(absl::Span<const SequenceWork> batch, StepOutput* out) = 0;
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_BACKEND_H_
