// Conversion between the public API (hyla.v1 protobuf messages) and the runtime's types
// (runtime/engine/request.h, session_manager.h, engine.h), with validation whose
// INVALID_ARGUMENT messages name the proto field ("sampling.top_p must be in (0, 1], got 1.5",
// "token_ids.ids[3]: token id 300 is outside the vocabulary [0, 256)").
//
// The ranges themselves are the engine's (ValidateSamplingParams, ValidateStopParams,
// SessionManager::ValidateId, Engine::Submit): this file only decides which proto field an
// engine message is about (ProtoFieldStatus) so that there is one source of truth for limits.
//
// Thread-safety: pure functions; safe from any thread.
#ifndef HYLA_SERVICE_CONVERT_H_
#define HYLA_SERVICE_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "hyla/v1/hyla.pb.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/request.h"
#include "runtime/engine/session_manager.h"
#include "runtime/model/tokenizer.h"

namespace hyla::service {

// Which member of an `input`/`prefix` oneof carried the tokens (decides how "prompt" is named).
enum class InputField {
  kNone,      // neither was set
  kText,      // "text"
  kTokenIds,  // "token_ids.ids"
};

// Rewrites an engine INVALID_ARGUMENT/ALREADY_EXISTS message so that it starts with the proto
// field path: "top_p ..." → "sampling.top_p ...", "stop[2] ..." → "stopping.stop[2] ...",
// "prompt[4]: ..." → "token_ids.ids[4]: ..." (or "text: ..." for text input), "top_logprobs" →
// "logprobs.top_n", "prefix" → "text"/"token_ids.ids" (CreateSession). Other statuses and
// messages that name no known field are returned unchanged.
absl::Status ProtoFieldStatus(const absl::Status& status, InputField input);

// The tokens of an `input`/`prefix` oneof. `text` needs a tokenizer (InvalidArgument "text: ..."
// otherwise); token ids are checked against the vocabulary ("token_ids.ids[i]: ...").
absl::StatusOr<std::vector<int32_t>> InputTokens(InputField field, const std::string& text,
                                                 const v1::TokenIds& ids,
                                                 const Tokenizer* tokenizer, int vocab_size);

struct RequestLimits {
  int vocab_size = 0;
  int64_t max_context = 0;
  bool has_tokenizer = false;
};

// Validates a GenerateRequest and builds the engine Request (deadline left infinite: the caller
// sets it from the gRPC deadline). `default_seed` is used when sampling.seed is unset.
// InvalidArgument naming the proto field.
absl::StatusOr<Request> ToEngineRequest(const v1::GenerateRequest& request,
                                        const Tokenizer* tokenizer, const RequestLimits& limits,
                                        uint64_t default_seed);
// The InputField of a GenerateRequest / CreateSessionRequest.
InputField InputFieldOf(const v1::GenerateRequest& request);
InputField InputFieldOf(const v1::CreateSessionRequest& request);

// Runtime → proto.
void StateMemoryToProto(const StateMemory& state, v1::StateMemory* out);
void UsageToProto(const Usage& usage, v1::Usage* out);
// An event's tokens, text, logprobs and (when set and OK) its `finished` part.
void StreamEventToProto(const StreamEvent& event, v1::GenerateResponse* out);
void SessionInfoToProto(const SessionInfo& info, absl::Time now, v1::SessionInfo* out);
// `device`: "cpu" per worker, comma separated; `parameters`: the model's parameter count.
void ModelInfoToProto(const EngineInfo& info, const Tokenizer* tokenizer, const std::string& device,
                      int64_t parameters, v1::ModelInfo* out);

}  // namespace hyla::service

#endif  // HYLA_SERVICE_CONVERT_H_
