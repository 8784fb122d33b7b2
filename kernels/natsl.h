// Host-only API of kernels/natsl.cu: part of kernels/ops.h (include that, never this).
// The NAtS-L specific kernels of the CUDA NAtS-L layer (runtime/cuda/natsl_layer.cc); the CPU
// reference of every one is runtime/cpu/natsl_layer.cc (reference/models.md §1.4-1.6):
//   NatslChunkSums     Σx over the current chunk ("x_sum" in the slot) and the router input
//                      mean(x) of every chunk completed in the step
//   NatslRouterLogits  the router logits W_s · mean(x), with the CPU's exact summation order
//   NatslKvWrite       K/V of the softmax view into the current chunk's KV block of each
//                      decision head
//   NatslDecodeCommit  decode steps: g_sum += g and the commit/decay of a completed chunk (the
//                      GDN recurrence itself is GdnDecode)
//   NatslMixOutput     the dual RMSNorm, the per-token mixing weights and the SiLU output gate
// The GDN branch (GdnPrefill / GdnDecode) and the block-sparse softmax (PagedAttentionDecode with
// per-query block tables) are the generic kernels of kernels/ops.h.
#ifndef HYLA_KERNELS_NATSL_H_
#define HYLA_KERNELS_NATSL_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {

// ---- natsl.cu ------------------------------------------------------------------------------
// One piece of one sequence's rows inside one 64-token chunk (the GdnPrefill pieces): rows
// [row_begin, row_end) of the step, in token order.
struct NatslSegment {
  int32_t seq = 0;          // index into the step's sequences (slots[seq])
  int32_t row_begin = 0;    // first packed row
  int32_t row_end = 0;      // one past the last packed row (row_end - row_begin in 1..64)
  int32_t completion = -1;  // >= 0: the segment ends its chunk; its row in `means`
  int32_t flags = 0;        // kNatslSegmentFirst | kNatslSegmentLast
};
// The sequence's first segment of the step: the sum starts from the slot's x_sum (the tokens of
// the chunk folded in by earlier steps), else from 0 (a chunk that starts in this step).
inline constexpr int32_t kNatslSegmentFirst = 1;
// The sequence's last segment of the step: its running sum (0 when it completes its chunk)
// becomes the slot's new x_sum.
inline constexpr int32_t kNatslSegmentLast = 2;

// The router input of every chunk completed in a step and the new Σx of every sequence (CPU:
// NatslLayer::ForwardSequence / Decide). For segment g, feature i, in token order:
//   acc = (flags & First ? x_sum[slot, i] : 0) + x[row_begin, i] + ... + x[row_end - 1, i]
//   completion >= 0:  means[completion, i] = acc / 64
//   flags & Last:     x_sum[slot, i] ← (completion >= 0 ? 0 : acc)
// The additions are the CPU's (fp32, one by one in row order), so the means are bitwise those of
// the CPU for bitwise equal x. A sequence's segments must be given in row order, a sequence with
// rows must have exactly one First and one Last segment (the same one when it has one segment),
// and distinct sequences must name distinct slots. Two launches (the sums, then the x_sum
// stores, so that the first segment reads the old x_sum).
struct NatslChunkSumsParams {
  int num_segments = 0;  // may be 0: nothing is launched
  int num_seqs = 0;
  int num_completions = 0;   // rows of means
  int64_t d = 0;             // hidden size, >= 1
  const float* x = nullptr;  // [rows, d] the normalised layer input, rows x_stride apart
  int64_t x_stride = 0;
  const NatslSegment* segments = nullptr;  // [num_segments] device
  const int32_t* slots = nullptr;          // [num_seqs] device, >= 0
  float* x_sum = nullptr;         // slot pool: [d] fp32 at x_sum + slot · x_sum_slot_stride
  int64_t x_sum_slot_stride = 0;  // floats between slots, >= d
  float* means = nullptr;         // [num_completions, d] fp32 out
  float* new_x_sum = nullptr;     // [num_seqs, d] fp32 scratch
};
int NatslChunkSums(const NatslChunkSumsParams& params, void* stream);

// Router logits of completed chunks: logits[c, o] = Σ_i means[c, i] · weight[o, i], summed in the
// order of the CPU's Dot (runtime/cpu/ops.cc, AVX2/FMA build): eight lanes l = i mod 8 of
// fused multiply-adds over the full groups of 8, the lanes added as ((l0+l4)+(l1+l5)) +
// ((l2+l6)+(l3+l7)), plus the fused multiply-add tail of the last d mod 8 features. For bitwise
// equal inputs the logits are bitwise the CPU's, so the argmax routing decisions agree exactly.
// weight: [outputs, d] fp32 (nats_layer.weight, row 2n + op); logits [num_chunks, outputs].
int NatslRouterLogits(const float* means, int num_chunks, int64_t d, const float* weight,
                      int outputs, float* logits, void* stream);

// K and V of the softmax view of some rows into KV blocks (the block layout of
// runtime/cpu/cpu_layer.h with `groups` heads per block: keys [64, G, dk] then values
// [64, G, dv], elements of kv_dtype). For m < num_rows, softmax head a = n·G + g (decision head
// n = a / G):
//   block blocks[m, n], token tokens[m], head g:  key = k[rows[m], a, :],  value = v[rows[m], a, :]
// fp32 in; bf16 blocks are rounded to nearest even. Destinations must be distinct.
struct NatslKvWriteParams {
  int num_rows = 0;                 // may be 0: nothing is launched
  int num_heads = 0;                // H decision heads (KV streams)
  int groups = 0;                   // G softmax heads per decision head
  int dk = 0;                       // d_ak >= 1
  int dv = 0;                       // d_av >= 1
  const int32_t* rows = nullptr;    // [num_rows] device, source rows of k and v
  const int32_t* tokens = nullptr;  // [num_rows] device, 0..63
  const int32_t* blocks = nullptr;  // [num_rows, num_heads] device, destination blocks
  const float* k = nullptr;         // [*, H·G·dk] fp32 rows k_stride elements apart
  int64_t k_stride = 0;
  const float* v = nullptr;  // [*, H·G·dv] fp32 rows v_stride elements apart
  int64_t v_stride = 0;
  KernelDType kv_dtype = KernelDType::kF32;
  void* kv = nullptr;        // block pool
  int64_t block_stride = 0;  // elements between blocks, >= 64·G·(dk + dv)
};
int NatslKvWrite(const NatslKvWriteParams& params, void* stream);

// The GDN bookkeeping of a NAtS-L decode step after GdnDecode advanced the running state (CPU:
// RunHead's g_sum and Decide). For row s (one token of sequence slots[s]) and head n:
//   g      = −exp(A_log[n]) · softplus(a[s, n] + dt_bias[n])      (the token's decay gate)
//   g_sum ← g_sum + g
//   decision[s, n] = 1 (GDN):     committed ← state,                        g_sum ← 0
//   decision[s, n] = 0 (softmax): committed ← exp(g_sum)·committed (decay_uncommitted; else
//                                 unchanged), state ← committed,            g_sum ← 0
//   decision[s, n] < 0: the token does not complete its chunk (g_sum only)
// state, committed: [H, dk, dv] fp32 per slot; g_sum [H] fp32 per slot. slots[s] < 0: padding.
struct NatslDecodeCommitParams {
  int num_seqs = 0;  // may be 0: nothing is launched
  int num_heads = 0;
  int dk = 0;
  int dv = 0;
  const float* a = nullptr;  // [num_seqs, H] raw decay-gate projections, rows a_stride apart
  int64_t a_stride = 0;
  const float* a_log = nullptr;      // [H]
  const float* dt_bias = nullptr;    // [H]
  const int32_t* slots = nullptr;    // [num_seqs] device
  const int8_t* decision = nullptr;  // [num_seqs, H] device
  float* state = nullptr;
  int64_t state_slot_stride = 0;  // floats, >= H·dk·dv
  float* committed = nullptr;
  int64_t committed_slot_stride = 0;
  float* g_sum = nullptr;
  int64_t g_sum_slot_stride = 0;  // floats, >= H
  bool decay_uncommitted = true;
};
int NatslDecodeCommit(const NatslDecodeCommitParams& params, void* stream);

// The NAtS-L output mix (FusedMultiInputRMSNormGated; CPU: the end of RunHead), per row r and
// softmax head a over its dv values:
//   n1 = o_gdn[r, a] / sqrt(mean(o_gdn[r, a]²) + eps) · w_gdn
//   n2 = o_attn[attn_rows[r], a] / sqrt(mean(o_attn[.]²) + eps) · w_attn
//   (m0, m1) = softmax(mix[r, 2a], mix[r, 2a + 1])         (m0 weighs the GDN output)
//   y[r, a] = ((n1·m0 + n2·m1) · z[r, a]) · sigmoid(z[r, a])
// o_gdn, z, y: [rows, heads, dv]; o_attn: [*, heads, dv] (attn_rows nullptr: row r); mix:
// [rows, 2·heads] logits. All fp32; y must not alias the inputs.
struct NatslMixOutputParams {
  int64_t rows = 0;  // may be 0: nothing is launched
  int heads = 0;     // Ha
  int dv = 0;        // d_av
  const float* o_gdn = nullptr;
  int64_t o_gdn_stride = 0;
  const float* o_attn = nullptr;
  int64_t o_attn_stride = 0;
  const int32_t* attn_rows = nullptr;  // [rows] device or nullptr
  const float* mix = nullptr;
  int64_t mix_stride = 0;
  const float* z = nullptr;
  int64_t z_stride = 0;
  const float* w_gdn = nullptr;   // [dv] o_norm.weight1
  const float* w_attn = nullptr;  // [dv] o_norm.weight2
  float eps = 1e-6f;
  float* y = nullptr;
  int64_t y_stride = 0;
};
int NatslMixOutput(const NatslMixOutputParams& params, void* stream);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_NATSL_H_
