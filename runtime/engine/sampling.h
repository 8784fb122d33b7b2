// Token sampling on the CPU: temperature, top-k, top-p, min-p, repetition / presence /
// frequency penalties, seeded and reproducible. Used by the engine for every backend (the CUDA
// backend may sample on the GPU with the same semantics) and by `hyla-model generate`.
//
// Semantics (vLLM's): penalties first (repetition divides positive / multiplies negative logits
// of tokens seen in prompt or output; presence subtracts once for tokens in the output;
// frequency subtracts count × penalty), then temperature (0 = greedy), then top-k, top-p (min
// set whose probability ≥ p), min-p (drop tokens below min_p × max prob), then a draw from the
// renormalised distribution with the request's RNG.
//
// Thread-safety: a Sampler belongs to one request; not thread-safe.
#ifndef HYLA_RUNTIME_ENGINE_SAMPLING_H_
#define HYLA_RUNTIME_ENGINE_SAMPLING_H_

#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace hyla {

struct SamplingParams {
  float temperature = 1.0f;         // 0: greedy (argmax, lowest id on ties)
  int top_k = 0;                    // 0: off
  float top_p = 1.0f;               // (0, 1]
  float min_p = 0.0f;               // [0, 1]
  float repetition_penalty = 1.0f;  // > 0; 1: off
  float presence_penalty = 0.0f;    // [-2, 2]
  float frequency_penalty = 0.0f;   // [-2, 2]
  uint64_t seed = 0;
};

// InvalidArgument naming the field when a value is out of range.
absl::Status ValidateSamplingParams(const SamplingParams& p);

struct SampledToken {
  int32_t id = -1;
  float logprob = 0.0f;  // log-probability of `id` under the final (processed) distribution
};

// A request's random stream: (mt19937_64(seed)() >> 11) · 2^-53, with a one-value lookahead so
// that a device sampler can be handed the next uniform before it is known whether the draw
// happens (greedy rows and rows without a finite logit draw nothing). Peek() returns the next
// uniform (drawn once, then kept); Consume() moves past it.
class UniformStream {
 public:
  explicit UniformStream(uint64_t seed) : rng_(seed) {}
  double Peek();
  void Consume() { pending_ = false; }

 private:
  std::mt19937_64 rng_;
  bool pending_ = false;
  double value_ = 0.0;
};

// One distinct token a request has seen: count = occurrences in the output (0 for a token seen
// only in the prompt).
struct TokenCount {
  int32_t token = 0;
  int32_t count = 0;
};

// The distinct tokens a request has seen, sparse (what a device sampler uploads for the
// penalties). Invariant: entries() holds each token once, every token in [0, vocab_size).
class TokenHistory {
 public:
  explicit TokenHistory(int vocab_size) : vocab_size_(vocab_size) {}
  // Ids outside [0, vocab_size) are ignored.
  void AddPrompt(absl::Span<const int32_t> tokens);
  void AddOutput(int32_t token);
  absl::Span<const TokenCount> entries() const { return entries_; }
  // Index of `token` in entries(), or -1.
  int64_t Find(int32_t token) const;

 private:
  int64_t Insert(int32_t token);  // index of token's entry, created with count 0
  int vocab_size_;
  std::vector<TokenCount> entries_;
  std::unordered_map<int32_t, int64_t> index_;
};

// A request's sampling state. Sample() samples on the CPU; a backend that samples on the device
// (Backend::SamplesOnDevice) reads params(), history() and the next uniform, and reports its
// choice with RecordExternal, so that either way the request sees the same stream of draws.
class Sampler {
 public:
  Sampler(const SamplingParams& params, int vocab_size);
  // Records prompt tokens (for the repetition penalty).
  void AddPrompt(absl::Span<const int32_t> tokens);
  // Samples from `logits` [vocab] and records the choice as output.
  SampledToken Sample(absl::Span<const float> logits);
  // Top-n alternatives of the last Sample (id, logprob), best first; n ≤ 20.
  std::vector<SampledToken> TopAlternatives(int n) const;

  // Device sampling.
  const SamplingParams& params() const { return params_; }
  const TokenHistory& history() const { return history_; }
  UniformStream& uniforms() { return uniforms_; }
  // Records a token chosen elsewhere with the same semantics: `used_uniform` when the draw
  // consumed the stream's next uniform; `top` becomes what TopAlternatives returns.
  void RecordExternal(const SampledToken& token, bool used_uniform, std::vector<SampledToken> top);

 private:
  void RecordOutput(int32_t id);

  SamplingParams params_;
  int vocab_size_;
  UniformStream uniforms_;
  TokenHistory history_;  // prompt and output tokens, sparse (no per-request [vocab] arrays)
  std::vector<float> last_logprobs_;    // [vocab] of the last CPU step
  bool last_external_ = false;          // the last token came from RecordExternal
  std::vector<SampledToken> last_top_;  // its alternatives
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_SAMPLING_H_
