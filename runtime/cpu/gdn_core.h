// The Gated DeltaNet core shared by GDN layers and the GDN branch of NAtS-L layers: the short
// causal convolution with its carried tail, and the recurrent gated-delta-rule step
// (fla fused_recurrent_gated_delta_rule semantics; reference/models.md §0).
//
// Thread-safety: stateless functions.
#ifndef HYLA_RUNTIME_CPU_GDN_CORE_H_
#define HYLA_RUNTIME_CPU_GDN_CORE_H_

#include <cmath>
#include <cstdint>

#include "runtime/cpu/ops.h"

namespace hyla::cpu {

// Causal depthwise conv1d (no bias) over `rows` new time steps of `channels` channels, then SiLU
// when `silu`. in: [rows, channels] with row stride `in_stride`; weight: [channels, kernel] (the
// PyTorch Conv1d weight [C, 1, K] flattened; tap K-1 multiplies the current input); tail:
// [kernel-1, channels] the previous inputs, oldest first, updated in place; out: [rows, channels]
// with row stride `out_stride`.
void ShortConv(const float* in, int64_t in_stride, int64_t rows, int64_t channels,
               const float* weight, int kernel, float* tail, bool silu, float* out,
               int64_t out_stride);

// One gated delta rule step for one head, in place on S [dk, dv] (fla layout):
//   S ← exp(g)·S;  u = β·(v − Sᵀk);  S ← S + k uᵀ;  o = Sᵀq
// q, k are already L2-normalised and q already scaled by dk^-1/2. o: [dv].
void GatedDeltaStep(float* S, const float* q, const float* k, const float* v, float g, float beta,
                    int dk, int dv, float* o);

// S ← exp(g)·S (decay only).
void DecayState(float* S, float g, int dk, int dv);

// The gates of one value head from the raw projections (fla gdn gate, computed in fp32):
//   g = −exp(A_log)·softplus(a + dt_bias)   (softplus threshold 20)
//   β = sigmoid(b), ×2 when allow_neg_eigval.
// neg_exp_a_log is −exp(A_log) precomputed (GdnNegExpALog).
inline float GdnNegExpALog(float a_log) { return -std::exp(a_log); }
inline float GdnDecayGate(float a, float dt_bias, float neg_exp_a_log) {
  return neg_exp_a_log * Softplus(a + dt_bias);
}
inline float GdnBeta(float b, bool allow_neg_eigval) {
  const float beta = Sigmoid(b);
  return allow_neg_eigval ? beta * 2.0f : beta;
}

// q/k preparation of fla's use_qk_l2norm_in_kernel: x ← x / sqrt(Σx² + 1e-6), then × scale
// (scale = 1 for k, dk^-1/2 for q). In place on n values.
inline constexpr float kGdnL2NormEps = 1e-6f;
void GdnNormalizeQk(float* x, int n, float scale);

// fla FusedRMSNormGated with the swish gate (norm before gate), on one head vector of n values:
//   out = x / sqrt(mean(x²) + eps) · w · gate · sigmoid(gate)      (w may be null: no affine)
// In place allowed (out == x).
void GatedRmsNorm(const float* x, const float* gate, const float* w, float eps, int64_t n,
                  float* out);

}  // namespace hyla::cpu

#endif  // HYLA_RUNTIME_CPU_GDN_CORE_H_
