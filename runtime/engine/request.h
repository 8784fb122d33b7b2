// The engine's request and event types: what a caller (the gRPC service, a CLI, a test) submits
// and what it receives back on the request's stream. Plain values, no behaviour.
//
// Thread-safety: values; copy freely.
#ifndef HYLA_RUNTIME_ENGINE_REQUEST_H_
#define HYLA_RUNTIME_ENGINE_REQUEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "runtime/engine/sampling.h"
#include "runtime/engine/stop_criteria.h"
#include "runtime/state/state_store.h"

namespace hyla {

inline constexpr int kMaxTopLogprobs = 20;

struct Request {
  std::vector<int32_t> prompt;  // new input token ids, each in [0, vocab_size)
  // Continue this session (only `prompt` is processed; the state after the request is kept).
  // Empty: a one-off request whose state is freed when it ends.
  std::string session_id;
  SamplingParams sampling;
  // max_new_tokens 0: the engine's default. Clamped to the maximum context.
  StopParams stopping;
  bool logprobs = false;  // report the chosen token's log-probability
  int top_logprobs = 0;   // and this many alternatives, [0, 20] (needs logprobs)
  // Ends the request with DeadlineExceeded when the engine's clock passes it (queued or running).
  absl::Time deadline = absl::InfiniteFuture();
};

// Why a request ended.
enum class FinishReason {
  kStop,          // EOS, a stop token or a stop string
  kLength,        // max_new_tokens or the maximum context (or a prefill-only session request)
  kCancelled,     // the caller cancelled (client gone)
  kDeadline,      // the request's deadline passed
  kSlowConsumer,  // the caller did not read its events within the stall timeout
  kShutdown,      // the engine shut down before the request finished
  kError,         // the backend failed (status says why)
};
// "stop", "length", "cancelled", "deadline", "slow_consumer", "shutdown", "error".
const char* FinishReasonName(FinishReason r);

// State memory of a sequence by kind, beside what a full-softmax model would hold.
struct StateMemory {
  int64_t slot_bytes = 0;  // fixed-size recurrent state
  int64_t kv_bytes = 0;    // softmax KV blocks held
  int64_t kv_blocks = 0;
  int64_t softmax_equivalent_bytes = 0;
  int64_t context_tokens = 0;  // tokens the sequence holds (folded into its state)
};

struct Usage {
  int64_t prompt_tokens = 0;           // new input tokens of this request
  int64_t reused_tokens = 0;           // session tokens already in state before the request
  int64_t generated_tokens = 0;        // sampled tokens (a stop token included)
  absl::Duration queue_time;           // accepted → admitted into the running batch
  absl::Duration time_to_first_token;  // accepted → first token (zero when none)
  absl::Duration total_time;           // accepted → finished
  StateMemory state;                   // the sequence's state at the end of the request
};

struct TokenLogprob {
  int32_t id = -1;
  float logprob = 0.0f;
  std::vector<SampledToken> top;  // best first
};

struct Finish {
  FinishReason reason = FinishReason::kStop;
  // OK for kStop/kLength; Cancelled (client, slow consumer), DeadlineExceeded, Unavailable
  // (shutdown) or the backend's error otherwise.
  absl::Status status;
  std::string matched_stop;         // the stop string that ended generation, if any
  int32_t matched_stop_token = -1;  // or the EOS / stop token id
  Usage usage;
};

// One message of a request's stream. Several steps' tokens are merged into one event when the
// consumer lags. The last event has `finish` set (it may carry tokens too).
struct StreamEvent {
  std::vector<int32_t> token_ids;
  std::string text;                    // incremental, whole UTF-8 characters
  std::vector<TokenLogprob> logprobs;  // one per token id when logprobs were requested
  std::optional<Finish> finish;
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_REQUEST_H_
