#include "service/convert.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "runtime/base/status_macros.h"
#include "runtime/engine/sampling.h"
#include "runtime/engine/stop_criteria.h"

namespace hyla::service {
namespace {

constexpr absl::string_view kSamplingFields[] = {
    "temperature",       "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "seed"};
constexpr absl::string_view kStoppingFields[] = {"max_new_tokens", "min_new_tokens",
                                                 "stop_token_ids", "stop", "ignore_eos"};

// The leading identifier of a message ("top_p" of "top_p must be ...").
absl::string_view LeadingName(absl::string_view m) {
  size_t n = 0;
  while (n < m.size() && ((m[n] >= 'a' && m[n] <= 'z') || m[n] == '_')) ++n;
  return m.substr(0, n);
}

absl::string_view InputName(InputField input) {
  switch (input) {
    case InputField::kText:
      return "text";
    case InputField::kTokenIds:
      return "token_ids.ids";
    case InputField::kNone:
      break;
  }
  return "input";
}

absl::Status WithMessage(const absl::Status& status, std::string message) {
  return absl::Status(status.code(), message);
}

}  // namespace

absl::Status ProtoFieldStatus(const absl::Status& status, InputField input) {
  if (status.ok()) return status;
  const absl::string_view m = status.message();
  const absl::string_view name = LeadingName(m);
  if (name.empty()) return status;
  const absl::string_view rest = m.substr(name.size());
  for (absl::string_view f : kSamplingFields) {
    if (name == f) return WithMessage(status, absl::StrCat("sampling.", m));
  }
  for (absl::string_view f : kStoppingFields) {
    if (name == f) return WithMessage(status, absl::StrCat("stopping.", m));
  }
  if (name == "top_logprobs") return WithMessage(status, absl::StrCat("logprobs.top_n", rest));
  if (name == "prompt" || name == "prefix") {
    // "prompt[4]: token id ..." names one id; text input has no per-id position to name.
    if (absl::StartsWith(rest, "[") && input == InputField::kText) {
      const size_t colon = rest.find(':');
      return WithMessage(
          status,
          absl::StrCat("text", colon == absl::string_view::npos ? rest : rest.substr(colon)));
    }
    return WithMessage(status, absl::StrCat(InputName(input), rest));
  }
  return status;
}

InputField InputFieldOf(const v1::GenerateRequest& request) {
  switch (request.input_case()) {
    case v1::GenerateRequest::kText:
      return InputField::kText;
    case v1::GenerateRequest::kTokenIds:
      return InputField::kTokenIds;
    default:
      return InputField::kNone;
  }
}

InputField InputFieldOf(const v1::CreateSessionRequest& request) {
  switch (request.prefix_case()) {
    case v1::CreateSessionRequest::kText:
      return InputField::kText;
    case v1::CreateSessionRequest::kTokenIds:
      return InputField::kTokenIds;
    default:
      return InputField::kNone;
  }
}

absl::StatusOr<std::vector<int32_t>> InputTokens(InputField field, const std::string& text,
                                                 const v1::TokenIds& ids,
                                                 const Tokenizer* tokenizer, int vocab_size) {
  std::vector<int32_t> tokens;
  switch (field) {
    case InputField::kNone:
      return tokens;
    case InputField::kText: {
      if (text.empty()) return tokens;
      if (tokenizer == nullptr) {
        return absl::InvalidArgumentError(
            "text: this model has no tokenizer on the server; send token_ids instead");
      }
      auto encoded = tokenizer->Encode(text);
      if (!encoded.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("text: ", encoded.status().message()));
      }
      tokens = std::move(*encoded);
      return tokens;
    }
    case InputField::kTokenIds: {
      tokens.reserve(ids.ids_size());
      for (int i = 0; i < ids.ids_size(); ++i) {
        const int32_t id = ids.ids(i);
        if (id < 0 || id >= vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat("token_ids.ids[", i, "]: token id ", id,
                                                         " is outside the vocabulary [0, ",
                                                         vocab_size, ")"));
        }
        tokens.push_back(id);
      }
      return tokens;
    }
  }
  return tokens;
}

absl::StatusOr<Request> ToEngineRequest(const v1::GenerateRequest& request,
                                        const Tokenizer* tokenizer, const RequestLimits& limits,
                                        uint64_t default_seed) {
  Request r;
  const InputField input = InputFieldOf(request);
  HYLA_ASSIGN_OR_RETURN(r.prompt, InputTokens(input, request.text(), request.token_ids(), tokenizer,
                                              limits.vocab_size));
  r.session_id = request.session_id();
  if (r.session_id.empty() && r.prompt.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        input == InputField::kNone ? "input" : InputName(input),
        ": the input is empty; set text or token_ids (only a session_id request may send none)"));
  }
  if (!r.session_id.empty()) {
    HYLA_RETURN_IF_ERROR(SessionManager::ValidateId(r.session_id, "session_id"));
  }
  const v1::SamplingParams& s = request.sampling();
  r.sampling.temperature = s.has_temperature() ? s.temperature() : 1.0f;
  r.sampling.top_k = s.top_k();
  r.sampling.top_p = s.has_top_p() ? s.top_p() : 1.0f;
  r.sampling.min_p = s.min_p();
  r.sampling.repetition_penalty = s.has_repetition_penalty() ? s.repetition_penalty() : 1.0f;
  r.sampling.presence_penalty = s.presence_penalty();
  r.sampling.frequency_penalty = s.frequency_penalty();
  r.sampling.seed = s.has_seed() ? s.seed() : default_seed;
  HYLA_RETURN_IF_ERROR(ProtoFieldStatus(ValidateSamplingParams(r.sampling), input));
  if (r.sampling.top_k > limits.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.top_k must be in [0, ",
                                                   limits.vocab_size, "] (the vocabulary), got ",
                                                   r.sampling.top_k));
  }

  const v1::StoppingCriteria& st = request.stopping();
  r.stopping.max_new_tokens = st.max_new_tokens();
  r.stopping.min_new_tokens = st.min_new_tokens();
  r.stopping.stop.assign(st.stop().begin(), st.stop().end());
  r.stopping.stop_token_ids.assign(st.stop_token_ids().begin(), st.stop_token_ids().end());
  r.stopping.ignore_eos = st.ignore_eos();
  HYLA_RETURN_IF_ERROR(ProtoFieldStatus(
      ValidateStopParams(r.stopping, limits.vocab_size, limits.has_tokenizer), input));
  if (r.stopping.max_new_tokens > limits.max_context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stopping.max_new_tokens must be in [0, ", limits.max_context,
        "] (0 = the server's default; the maximum context), got ", r.stopping.max_new_tokens));
  }

  const v1::LogprobsOptions& lp = request.logprobs();
  if (lp.top_n() < 0 || lp.top_n() > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("logprobs.top_n must be in [0, ", kMaxTopLogprobs, "], got ", lp.top_n()));
  }
  r.logprobs = lp.enabled() || lp.top_n() > 0;
  r.top_logprobs = lp.top_n();
  return r;
}

void StateMemoryToProto(const StateMemory& state, v1::StateMemory* out) {
  out->set_slot_bytes(state.slot_bytes);
  out->set_kv_bytes(state.kv_bytes);
  out->set_kv_blocks(state.kv_blocks);
  out->set_softmax_equivalent_bytes(state.softmax_equivalent_bytes);
  out->set_context_tokens(state.context_tokens);
}

void UsageToProto(const Usage& usage, v1::Usage* out) {
  out->set_prompt_tokens(static_cast<int32_t>(usage.prompt_tokens));
  out->set_reused_tokens(static_cast<int32_t>(usage.reused_tokens));
  out->set_generated_tokens(static_cast<int32_t>(usage.generated_tokens));
  out->set_queue_seconds(absl::ToDoubleSeconds(usage.queue_time));
  out->set_time_to_first_token_seconds(absl::ToDoubleSeconds(usage.time_to_first_token));
  out->set_total_seconds(absl::ToDoubleSeconds(usage.total_time));
  StateMemoryToProto(usage.state, out->mutable_state());
}

void StreamEventToProto(const StreamEvent& event, v1::GenerateResponse* out) {
  out->Clear();
  out->mutable_token_ids()->Assign(event.token_ids.begin(), event.token_ids.end());
  out->set_text(event.text);
  for (const TokenLogprob& lp : event.logprobs) {
    v1::TokenLogprob* p = out->add_logprobs();
    p->set_id(lp.id);
    p->set_logprob(lp.logprob);
    for (const SampledToken& t : lp.top) {
      v1::TopLogprob* top = p->add_top();
      top->set_id(t.id);
      top->set_logprob(t.logprob);
    }
  }
  if (event.finish.has_value() && event.finish->status.ok()) {
    const Finish& f = *event.finish;
    v1::Finished* fin = out->mutable_finished();
    fin->set_reason(f.reason == FinishReason::kStop ? v1::FINISH_REASON_STOP
                                                    : v1::FINISH_REASON_LENGTH);
    fin->set_matched_stop(f.matched_stop);
    if (f.matched_stop_token >= 0) fin->set_matched_stop_token_id(f.matched_stop_token);
    UsageToProto(f.usage, fin->mutable_usage());
  }
}

void SessionInfoToProto(const SessionInfo& info, absl::Time now, v1::SessionInfo* out) {
  out->set_session_id(info.id);
  out->set_context_tokens(info.state.context_tokens);
  StateMemoryToProto(info.state, out->mutable_state());
  out->set_idle_seconds(info.busy ? 0.0
                                  : std::max(0.0, absl::ToDoubleSeconds(now - info.last_use)));
  out->set_busy(info.busy);
  out->set_worker(info.worker);
}

void ModelInfoToProto(const EngineInfo& info, const Tokenizer* tokenizer, const std::string& device,
                      int64_t parameters, v1::ModelInfo* out) {
  const ModelConfig& c = *info.config;
  out->set_family(std::string(FamilyName(c.family)));
  out->set_model_type(c.model_type);
  for (const LayerConfig& l : c.layers) out->add_layer_kinds(std::string(LayerKindName(l.kind)));
  out->set_vocab_size(c.vocab_size);
  out->set_hidden_size(c.hidden_size);
  out->set_parameters(parameters);
  out->set_max_context(static_cast<int32_t>(info.max_context));
  out->set_max_new_tokens_default(info.default_max_new_tokens);
  out->set_slot_bytes(info.slot_bytes);
  out->set_kv_block_bytes(info.block_bytes);
  out->set_memory_budget_bytes(info.memory_budget_bytes);
  out->set_state_slots(info.slots_per_worker * info.num_workers);
  out->set_kv_blocks(info.blocks_per_worker * info.num_workers);
  out->set_device(device);
  out->set_workers(info.num_workers);
  out->set_bos_token_id(tokenizer != nullptr ? tokenizer->bos_id() : c.bos_token_id);
  out->set_eos_token_id(tokenizer != nullptr ? tokenizer->eos_id() : c.eos_token_id);
}

}  // namespace hyla::service
