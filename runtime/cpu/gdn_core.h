// The Gated DeltaNet core shared by GDN layers and the GDN branch of NAtS-L layers: the short
// causal convolution with its carried tail, and the recurrent gated-delta-rule step
// (fla fused_recurrent_gated_delta_rule semantics; reference/models.md §0).
//
// Thread-safety: stateless functions.
#ifndef HYLA_RUNTIME_CPU_GDN_CORE_H_
#define HYLA_RUNTIME_CPU_GDN_CORE_H_

#include <cstdint>

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

}  // namespace hyla::cpu

#endif  // HYLA_RUNTIME_CPU_GDN_CORE_H_
