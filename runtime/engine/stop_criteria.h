// Stop criteria and streaming text of one request: which token ids min_new_tokens suppresses,
// when generation ends (EOS, stop token ids, stop strings, max_new_tokens) and which text may be
// streamed so far.
//
// Semantics (vLLM's):
//   - EOS (unless ignore_eos) and stop_token_ids end generation with reason "stop". The stop token
//     counts as generated and is reported among the token ids, but adds no text.
//   - While fewer than min_new_tokens tokens have been generated, EOS and the stop token ids are
//     suppressed (their logits are set to -inf before sampling: SuppressedIds) and stop strings
//     are not matched; a stop string is matched once the token that completes it is at least the
//     min_new_tokens-th.
//   - Stop strings are matched on the detokenized text, across token boundaries; the matched text
//     and anything after it are excluded from the output. Text that could still become a stop
//     string is held back until it is decided, so the streamed text never has to be retracted.
//   - max_new_tokens ends generation with reason "length"; held-back text is then released.
//   - Text is UTF-8 at every step (Detokenizer): a character split across tokens is released when
//     it completes.
//
// Thread-safety: a StopChecker belongs to one request; not thread-safe.
#ifndef HYLA_RUNTIME_ENGINE_STOP_CRITERIA_H_
#define HYLA_RUNTIME_ENGINE_STOP_CRITERIA_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "runtime/model/tokenizer.h"

namespace hyla {

inline constexpr int kMaxStopStrings = 16;
inline constexpr int kMaxStopStringBytes = 256;
inline constexpr int kMaxStopTokenIds = 64;

struct StopParams {
  // Generated tokens at most (the engine resolves 0 = its default and clamps to the context).
  int max_new_tokens = 0;
  int min_new_tokens = 0;         // EOS and stop tokens suppressed before this many
  std::vector<std::string> stop;  // stop strings (UTF-8, non-empty)
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
};

// InvalidArgument naming the field ("max_new_tokens", "min_new_tokens", "stop[i]",
// "stop_token_ids[i]") when a value is out of range. `vocab_size` bounds stop token ids;
// `have_tokenizer` false rejects stop strings (there is no text to match them on).
absl::Status ValidateStopParams(const StopParams& p, int vocab_size, bool have_tokenizer);

enum class StopKind {
  kNone,        // generation goes on
  kEos,         // the EOS token
  kStopToken,   // one of stop_token_ids
  kStopString,  // a stop string matched
  kLength,      // max_new_tokens reached
};

struct StopUpdate {
  std::string text;  // text released by this token (valid UTF-8, possibly empty)
  StopKind stop = StopKind::kNone;
  std::string matched_stop;  // the stop string, when stop == kStopString
};

class StopChecker {
 public:
  // `tokenizer` may be null (no text is produced); it must outlive the checker. eos_id < 0: none.
  StopChecker(const StopParams& params, int32_t eos_id, const Tokenizer* tokenizer);

  // Ids whose logits must be set to -inf before the next sample (EOS and stop token ids while
  // fewer than min_new_tokens tokens were generated); empty otherwise.
  const std::vector<int32_t>& SuppressedIds() const;

  // Records the next generated token and reports the text it releases and whether generation
  // ends. Must not be called after a stop was reported.
  StopUpdate Add(int32_t id);

  // Ends the stream early (cancellation, deadline...): returns the text still held back.
  std::string Flush();

  int generated() const { return generated_; }
  bool done() const { return done_; }

 private:
  // Length of the longest suffix of pending_ that is a proper prefix of some stop string.
  size_t HoldBack() const;

  StopParams params_;
  int32_t eos_id_;
  std::unique_ptr<Detokenizer> detokenizer_;  // null without a tokenizer
  std::vector<int32_t> suppressed_;           // EOS (unless ignored) + stop token ids
  std::string pending_;  // detokenized text not yet released (a possible stop-string prefix)
  int generated_ = 0;
  bool done_ = false;
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_STOP_CRITERIA_H_
