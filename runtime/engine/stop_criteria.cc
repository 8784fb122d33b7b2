#include "runtime/engine/stop_criteria.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/base/check.h"

namespace hyla {

absl::Status ValidateStopParams(const StopParams& p, int vocab_size, bool have_tokenizer) {
  if (p.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens must be >= 0, got ", p.max_new_tokens));
  }
  if (p.min_new_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_new_tokens must be >= 0, got ", p.min_new_tokens));
  }
  if (p.max_new_tokens > 0 && p.min_new_tokens > p.max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "min_new_tokens (", p.min_new_tokens, ") exceeds max_new_tokens (", p.max_new_tokens, ")"));
  }
  if (p.stop.size() > static_cast<size_t>(kMaxStopStrings)) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop: at most ", kMaxStopStrings, " stop strings, got ", p.stop.size()));
  }
  if (!p.stop.empty() && !have_tokenizer) {
    return absl::InvalidArgumentError("stop: stop strings need a tokenizer, the model has none");
  }
  for (size_t i = 0; i < p.stop.size(); ++i) {
    if (p.stop[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "] must not be empty"));
    }
    if (p.stop[i].size() > static_cast<size_t>(kMaxStopStringBytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stop[", i, "] is longer than ", kMaxStopStringBytes, " bytes (", p.stop[i].size(), ")"));
    }
  }
  if (p.stop_token_ids.size() > static_cast<size_t>(kMaxStopTokenIds)) {
    return absl::InvalidArgumentError(absl::StrCat("stop_token_ids: at most ", kMaxStopTokenIds,
                                                   " ids, got ", p.stop_token_ids.size()));
  }
  for (size_t i = 0; i < p.stop_token_ids.size(); ++i) {
    const int32_t id = p.stop_token_ids[i];
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stop_token_ids[", i, "] = ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

StopChecker::StopChecker(const StopParams& params, int32_t eos_id, const Tokenizer* tokenizer)
    : params_(params), eos_id_(params.ignore_eos ? -1 : eos_id) {
  if (tokenizer != nullptr) detokenizer_ = std::make_unique<Detokenizer>(*tokenizer);
  if (eos_id_ >= 0) suppressed_.push_back(eos_id_);
  for (int32_t id : params_.stop_token_ids) {
    if (std::find(suppressed_.begin(), suppressed_.end(), id) == suppressed_.end()) {
      suppressed_.push_back(id);
    }
  }
}

const std::vector<int32_t>& StopChecker::SuppressedIds() const {
  static const std::vector<int32_t>* const kNone = new std::vector<int32_t>();
  return generated_ < params_.min_new_tokens ? suppressed_ : *kNone;
}

size_t StopChecker::HoldBack() const {
  size_t best = 0;
  for (const std::string& s : params_.stop) {
    const size_t max_len = std::min(s.size() - 1, pending_.size());
    for (size_t len = max_len; len > best; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        best = len;
        break;
      }
    }
  }
  return best;
}

StopUpdate StopChecker::Add(int32_t id) {
  HYLA_CHECK(!done_);
  StopUpdate u;
  ++generated_;
  const bool is_eos = id == eos_id_ && eos_id_ >= 0;
  const bool is_stop_token = std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(),
                                       id) != params_.stop_token_ids.end();
  // A suppressed token can still come out when every other logit is -inf; it only stops
  // generation once the minimum is met (the token itself is the generated_-th).
  if ((is_eos || is_stop_token) && generated_ > params_.min_new_tokens) {
    u.stop = is_eos ? StopKind::kEos : StopKind::kStopToken;
    u.text = Flush();
    done_ = true;
    return u;
  }
  if (detokenizer_ != nullptr) pending_ += detokenizer_->Add(id);

  if (!params_.stop.empty() && generated_ >= params_.min_new_tokens) {
    size_t best_pos = std::string::npos;
    const std::string* best = nullptr;
    for (const std::string& s : params_.stop) {
      const size_t pos = pending_.find(s);
      if (pos != std::string::npos && (best == nullptr || pos < best_pos)) {
        best_pos = pos;
        best = &s;
      }
    }
    if (best != nullptr) {
      u.text = pending_.substr(0, best_pos);
      u.stop = StopKind::kStopString;
      u.matched_stop = *best;
      pending_.clear();
      done_ = true;
      return u;
    }
  }
  if (params_.max_new_tokens > 0 && generated_ >= params_.max_new_tokens) {
    u.stop = StopKind::kLength;
    u.text = Flush();
    done_ = true;
    return u;
  }
  const size_t hold = HoldBack();
  u.text = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return u;
}

std::string StopChecker::Flush() {
  std::string out = std::move(pending_);
  pending_.clear();
  if (detokenizer_ != nullptr) out += detokenizer_->Flush();
  return out;
}

}  // namespace hyla
