// Host-only API of kernels/sampling.cu: part of kernels/ops.h (include that, never this).
//
// Token sampling on the device with exactly the semantics of the engine's CPU sampler,
// hyla::Sampler::Sample (runtime/engine/sampling.cc, vLLM's order), one cluster of CTAs per row
// of [rows, vocab] fp32 logits (each CTA a slice of the row, kept in shared memory):
//   0. NaN logits become -inf; suppressed tokens become -inf.
//   1. repetition penalty on every token seen (prompt or output): x > 0 ? x / r : x · r;
//      then on every output token x -= frequency · count + presence (fp32, no FMA).
//   2. temperature 0: greedy — argmax, lowest id on ties; logprob = log-softmax of the
//      penalised logits. No uniform is consumed.
//      temperature > 0: x ·= 1 / temperature (fp32), then
//   3. top-k (0 < k < vocab): keep every token whose value is >= the k-th largest (ties kept);
//   4. top-p (< 1): order by value descending, ties by id ascending; keep a token when the
//      probability mass of the tokens ranked above it is < top_p;
//   5. min-p (> 0): drop tokens whose probability is < min_p × the largest probability;
//   6. log-softmax of what is left (the reported logprobs), then the inverse CDF over ids in
//      ascending order: the first id whose cumulative exp(logprob) exceeds u × Σ exp(logprob),
//      u the row's uniform in [0, 1) (the request's stream: the host draws it, so host and
//      device pick the same token for the same u); the last kept id when rounding leaves none.
//   When after step 2 no logit is finite (all -inf, or one is +inf) the CPU sampler's
//   LogSoftmax fails: token 0, logprob -inf, no alternatives and no uniform consumed.
// Probabilities are computed in double as on the CPU (exp(x − max) / Σ); the top-p prefix
// sums run in 2^-62 fixed point (exact, order independent: deterministic), the CDF in double.
// Results equal the CPU's except where a cumulative sum lies within rounding (~1e-13 relative)
// of its threshold (top_p, min_p · max, u · total).
//
// Thread-safety: stateless launchers; any thread.
#ifndef HYLA_KERNELS_SAMPLING_H_
#define HYLA_KERNELS_SAMPLING_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {

// Most alternatives (top logprobs) a row may ask for (the engine's kMaxTopLogprobs).
constexpr int kSamplingMaxTop = 20;
// SamplingTokenCount::count of a suppressed token.
constexpr int32_t kSamplingSuppressed = -1;

// Per-row sampling parameters (the engine's SamplingParams, validated by the host, plus the
// row's uniform and number of alternatives). Plain data, copied to the device as is.
struct SamplingRowParams {
  float temperature = 1.0f;         // [0, 100]; 0: greedy
  int32_t top_k = 0;                // 0 or >= vocab: off
  float top_p = 1.0f;               // (0, 1]; 1: off
  float min_p = 0.0f;               // [0, 1]; 0: off
  float repetition_penalty = 1.0f;  // > 0; 1: off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t num_top = 0;   // alternatives to report, clamped to [0, kSamplingMaxTop]
  double uniform = 0.0;  // [0, 1); read only when temperature > 0
};

// One entry of a row's token history: a token seen in the prompt or the output (count = its
// number of occurrences in the output, 0 for prompt-only tokens), or a suppressed token
// (count = kSamplingSuppressed: its logit becomes -inf; a token both seen and suppressed is
// listed once, as suppressed). Each token appears at most once per row; entries whose token is
// outside [0, vocab) are ignored.
struct SamplingTokenCount {
  int32_t token = 0;
  int32_t count = 0;
};

// What SampleRows writes per row.
struct SampledRow {
  int32_t token = -1;
  float logprob = 0.0f;      // log-probability of `token` under the final distribution
  int32_t used_uniform = 0;  // 1 when `uniform` was consumed (temperature > 0, not degenerate)
  int32_t num_top = 0;       // alternatives written: min(num_top, tokens left)
  int32_t top_ids[kSamplingMaxTop];  // best first: logprob descending, id ascending on ties
  float top_logprobs[kSamplingMaxTop];
};

struct SampleRowsParams {
  int64_t rows = 0;   // may be 0 (nothing is launched)
  int32_t vocab = 0;  // >= 1
  // [rows, vocab] fp32, rows logits_stride elements apart (>= vocab).
  const float* logits = nullptr;
  int64_t logits_stride = 0;
  // [rows, vocab] fp32, rows work_stride elements apart: receives the processed logits (after
  // penalties and temperature). work == logits (same stride) samples in place; otherwise the
  // two must not overlap.
  float* work = nullptr;
  int64_t work_stride = 0;
  const SamplingRowParams* params = nullptr;    // [rows]
  const int32_t* history_offsets = nullptr;     // [rows + 1]: row r's entries are
  const SamplingTokenCount* history = nullptr;  // history[offsets[r] .. offsets[r+1])
  SampledRow* out = nullptr;                    // [rows]
  // CTAs per row (a thread-block cluster sharing the row's reductions through distributed
  // shared memory): 1, 2, 4, 8 or 16 (16: a non-portable cluster size, 8 where the device cannot
  // co-schedule 16); 0: SampleRowsClusterFor.
  // Every choice gives the same results but for the association order of the double sums.
  int cluster = 0;
  // Keep exp(x − max) of the row in shared memory (when it fits) instead of recomputing it in
  // each pass (top-p, min-p, the normalisers, the CDF weights); false: recompute (for
  // comparison in kernels_bench; the same results up to the CDF weights' last bits). Off by
  // default: H100 run 4, 64 rows x 32000, temperature 1: 44.4 us without, 51.3 us with; top-k,
  // top-p and greedy within 2 us either way.
  bool exp_cache = false;
};

// The default CTAs per row (a power of two, at most 8) for rows x vocab on a device of `sms`
// SMs: slices of at least 2048 ids, and no more CTAs than SMs once C > 1 (rows 64, vocab 32000
// on an H100: 2; rows 1: 8).
int SampleRowsClusterFor(int64_t rows, int vocab, int sms);

// Samples one token per row. cudaErrorInvalidValue for a null pointer, rows < 0, vocab < 1,
// a stride < vocab, a partial overlap of work and logits or a cluster size not listed; a slice
// whose token bitmap does not fit in shared memory (vocab / cluster > ~1.8M) fails at launch.
int SampleRows(const SampleRowsParams& params, void* stream);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_SAMPLING_H_
