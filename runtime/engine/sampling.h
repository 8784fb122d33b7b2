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

class Sampler {
 public:
  Sampler(const SamplingParams& params, int vocab_size);
  // Records prompt tokens (for the repetition penalty).
  void AddPrompt(absl::Span<const int32_t> tokens);
  // Samples from `logits` [vocab] and records the choice as output.
  SampledToken Sample(absl::Span<const float> logits);
  // Top-n alternatives of the last Sample (id, logprob), best first; n ≤ 20.
  std::vector<SampledToken> TopAlternatives(int n) const;

 private:
  SamplingParams params_;
  int vocab_size_;
  std::mt19937_64 rng_;
  std::vector<uint8_t> in_prompt_;      // [vocab]
  std::vector<int32_t> output_counts_;  // [vocab]
  std::vector<float> last_logprobs_;    // [vocab] of the last step
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_SAMPLING_H_
