#include "runtime/engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "runtime/base/check.h"

namespace hyla {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kMaxTopAlternatives = 20;

// Log-softmax of `x` in place (entries at -inf stay -inf). Returns false when no entry is finite
// (then every entry becomes -inf).
bool LogSoftmaxInPlace(std::vector<float>* x) {
  float max = kNegInf;
  for (float v : *x) max = std::max(max, v);
  if (!std::isfinite(max)) {
    std::fill(x->begin(), x->end(), kNegInf);
    return false;
  }
  double sum = 0.0;
  for (float v : *x) {
    if (v != kNegInf) sum += std::exp(static_cast<double>(v) - max);
  }
  const double log_norm = static_cast<double>(max) + std::log(sum);
  for (float& v : *x) {
    if (v != kNegInf) v = static_cast<float>(static_cast<double>(v) - log_norm);
  }
  return true;
}

// Ids ordered by value descending, ties by id ascending.
std::vector<int32_t> OrderDescending(const std::vector<float>& x) {
  std::vector<int32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&x](int32_t a, int32_t b) { return x[a] > x[b]; });
  return order;
}

// Probabilities of softmax(x) in double precision (zero where x is -inf).
std::vector<double> Probabilities(const std::vector<float>& x) {
  float max = kNegInf;
  for (float v : x) max = std::max(max, v);
  std::vector<double> p(x.size(), 0.0);
  if (!std::isfinite(max)) return p;
  double sum = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] != kNegInf) {
      p[i] = std::exp(static_cast<double>(x[i]) - max);
      sum += p[i];
    }
  }
  for (double& v : p) v /= sum;
  return p;
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  // The negated comparisons also reject NaN.
  if (!(p.temperature >= 0.0f && p.temperature <= 100.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be in [0, 100] (0 = greedy), got ", p.temperature));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0 (0 = off), got ", p.top_k));
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1], got ", p.min_p));
  }
  if (!(p.repetition_penalty > 0.0f && p.repetition_penalty <= 10.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "repetition_penalty must be in (0, 10] (1 = off), got ", p.repetition_penalty));
  }
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("presence_penalty must be in [-2, 2], got ", p.presence_penalty));
  }
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("frequency_penalty must be in [-2, 2], got ", p.frequency_penalty));
  }
  return absl::OkStatus();
}

double UniformStream::Peek() {
  if (!pending_) {
    value_ = static_cast<double>(rng_() >> 11) * 0x1.0p-53;  // 53-bit uniform in [0, 1)
    pending_ = true;
  }
  return value_;
}

void TokenHistory::AddPrompt(absl::Span<const int32_t> tokens) {
  for (int32_t t : tokens) {
    if (t >= 0 && t < vocab_size_) Insert(t);
  }
}

void TokenHistory::AddOutput(int32_t token) {
  if (token < 0 || token >= vocab_size_) return;
  ++entries_[static_cast<size_t>(Insert(token))].count;
}

int64_t TokenHistory::Find(int32_t token) const {
  const auto it = index_.find(token);
  return it == index_.end() ? -1 : it->second;
}

int64_t TokenHistory::Insert(int32_t token) {
  const auto [it, inserted] = index_.emplace(token, static_cast<int64_t>(entries_.size()));
  if (inserted) entries_.push_back(TokenCount{token, 0});
  return it->second;
}

Sampler::Sampler(const SamplingParams& params, int vocab_size)
    : params_(params), vocab_size_(vocab_size), uniforms_(params.seed), history_(vocab_size) {
  HYLA_CHECK(vocab_size > 0);
}

void Sampler::AddPrompt(absl::Span<const int32_t> tokens) { history_.AddPrompt(tokens); }

void Sampler::RecordOutput(int32_t id) { history_.AddOutput(id); }

void Sampler::RecordExternal(const SampledToken& token, bool used_uniform,
                             std::vector<SampledToken> top) {
  HYLA_CHECK(token.id >= 0 && token.id < vocab_size_);
  RecordOutput(token.id);
  if (used_uniform) {
    uniforms_.Peek();  // the draw's uniform, whether or not the caller peeked it first
    uniforms_.Consume();
  }
  last_external_ = true;
  last_top_ = std::move(top);
}

SampledToken Sampler::Sample(absl::Span<const float> logits) {
  HYLA_CHECK(static_cast<int>(logits.size()) == vocab_size_);
  last_external_ = false;
  std::vector<float>& x = last_logprobs_;
  x.assign(logits.begin(), logits.end());
  for (float& v : x) {
    if (std::isnan(v)) v = kNegInf;
  }

  // 1. Penalties (vLLM order: repetition, then frequency and presence on output counts).
  // Over the sparse history: every token of the prompt or the output once (count = times
  // generated), not over the vocabulary.
  if (params_.repetition_penalty != 1.0f) {
    const float r = params_.repetition_penalty;
    for (const TokenCount& e : history_.entries()) {
      float& v = x[static_cast<size_t>(e.token)];
      v = v > 0.0f ? v / r : v * r;
    }
  }
  if (params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f) {
    for (const TokenCount& e : history_.entries()) {
      if (e.count > 0) {
        x[static_cast<size_t>(e.token)] -=
            params_.frequency_penalty * static_cast<float>(e.count) + params_.presence_penalty;
      }
    }
  }

  SampledToken chosen;
  if (params_.temperature == 0.0f) {
    // 2a. Greedy: argmax, lowest id on ties; logprobs of the penalised logits.
    int32_t best = 0;
    for (int i = 1; i < vocab_size_; ++i) {
      if (x[i] > x[best]) best = i;
    }
    LogSoftmaxInPlace(&x);
    chosen.id = best;
    chosen.logprob = x[best];
    RecordOutput(best);
    return chosen;
  }

  // 2b. Temperature.
  const float inv_t = 1.0f / params_.temperature;
  for (float& v : x) {
    if (v != kNegInf) v *= inv_t;
  }
  // 3. Top-k: keep every token whose logit is at least the k-th largest (ties at the boundary
  // are kept, as in vLLM).
  if (params_.top_k > 0 && params_.top_k < vocab_size_) {
    std::vector<float> sorted = x;
    std::nth_element(sorted.begin(), sorted.begin() + (params_.top_k - 1), sorted.end(),
                     std::greater<float>());
    const float kth = sorted[params_.top_k - 1];
    for (float& v : x) {
      if (v < kth) v = kNegInf;
    }
  }
  // 4. Top-p: the smallest set of most likely tokens whose probability reaches p (a token is kept
  // when the mass of the tokens ranked above it is below p).
  if (params_.top_p < 1.0f) {
    const std::vector<double> p = Probabilities(x);
    const std::vector<int32_t> order = OrderDescending(x);
    double above = 0.0;
    for (int32_t id : order) {
      if (above >= params_.top_p && above > 0.0) {
        x[id] = kNegInf;
      } else {
        above += p[id];
      }
    }
  }
  // 5. Min-p: drop tokens whose probability is below min_p times the largest probability.
  if (params_.min_p > 0.0f) {
    const std::vector<double> p = Probabilities(x);
    const double top = *std::max_element(p.begin(), p.end());
    const double threshold = static_cast<double>(params_.min_p) * top;
    for (int i = 0; i < vocab_size_; ++i) {
      if (p[i] < threshold) x[i] = kNegInf;
    }
  }
  // 6. Draw from the renormalised distribution: inverse CDF over ids in ascending order with a
  // 53-bit uniform from the request's generator (independent of the standard library's
  // distributions, so streams are reproducible everywhere).
  if (!LogSoftmaxInPlace(&x)) {
    chosen.id = 0;
    chosen.logprob = kNegInf;
    RecordOutput(0);
    return chosen;
  }
  const double u = uniforms_.Peek();
  uniforms_.Consume();
  double total = 0.0;
  for (float v : x) {
    if (v != kNegInf) total += std::exp(static_cast<double>(v));
  }
  const double target = u * total;
  double cum = 0.0;
  int32_t pick = -1;
  int32_t last_possible = -1;
  for (int i = 0; i < vocab_size_; ++i) {
    if (x[i] == kNegInf) continue;
    last_possible = i;
    cum += std::exp(static_cast<double>(x[i]));
    if (cum > target) {
      pick = i;
      break;
    }
  }
  if (pick < 0) pick = last_possible;  // rounding at the top end
  chosen.id = pick;
  chosen.logprob = x[pick];
  RecordOutput(pick);
  return chosen;
}

std::vector<SampledToken> Sampler::TopAlternatives(int n) const {
  n = std::clamp(n, 0, kMaxTopAlternatives);
  if (last_external_) {
    return std::vector<SampledToken>(last_top_.begin(),
                                     last_top_.begin() + std::min<size_t>(last_top_.size(), n));
  }
  std::vector<SampledToken> out;
  if (n == 0 || last_logprobs_.empty()) return out;
  std::vector<int32_t> ids;
  for (int i = 0; i < vocab_size_; ++i) {
    if (last_logprobs_[i] != kNegInf) ids.push_back(i);
  }
  const size_t k = std::min<size_t>(static_cast<size_t>(n), ids.size());
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [this](int32_t a, int32_t b) {
    if (last_logprobs_[a] != last_logprobs_[b]) return last_logprobs_[a] > last_logprobs_[b];
    return a < b;
  });
  for (size_t i = 0; i < k; ++i) out.push_back(SampledToken{ids[i], last_logprobs_[ids[i]]});
  return out;
}

}  // namespace hyla
