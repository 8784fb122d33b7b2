// Host-only API of the CUDA kernels (hyla_kernels). One op per .cu file in kernels/.
//
// This header is plain C++: no CUDA types, so host code (runtime/cuda/) includes it without
// the CUDA headers, and nvcc never sees Abseil, protobuf or gRPC. Device pointers are plain
// pointers; bf16 tensors are passed as `uint16_t` bit patterns (the layout of __nv_bfloat16);
// a `cudaStream_t` is passed as `void*` (nullptr = the legacy default stream).
//
// Every launcher is asynchronous on its stream and returns 0 (cudaSuccess) or a cudaError_t
// value as int: cudaErrorInvalidValue (1) for arguments it rejects, else the launch error.
// Errors of the kernel's execution surface at the next synchronisation. KernelErrorString()
// names a code.
//
// Numerics: inputs are read as fp32 and every op accumulates in fp32; bf16 outputs are rounded
// to nearest even. The CPU backend (runtime/cpu/ops.h) is the reference for each op; results
// agree with it to rounding (reductions run in a different order).
//
// Thread-safety: launchers are stateless and may be called from any thread.
#ifndef HYLA_KERNELS_OPS_H_
#define HYLA_KERNELS_OPS_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {

// The text of a code returned by a launcher (cudaGetErrorString).
const char* KernelErrorString(int error);

// Programmatic dependent launch (sm_90) of the small kernels of a decode step (norms, short
// conv, GDN decode, RoPE, KV append, conversions; kernels/common.cuh LaunchPdl): each may start
// while the previous kernel of its stream finishes and waits for it (griddepcontrol.wait) before
// reading anything, so consecutive launches overlap their launch latency. Process-wide, on by
// default; off: plain launches (results are the same either way).
void SetProgrammaticDependentLaunch(bool enabled);
bool ProgrammaticDependentLaunch();

// ---- rmsnorm.cu ----------------------------------------------------------------------------
// Row-wise RMSNorm over the last dimension:
//   out[r, i] = x[r, i] / sqrt(mean_i(x[r, :]²) + eps) · w[i]         (plain)
//   out[r, i] = x[r, i] / sqrt(mean_i(x[r, :]²) + eps) · (1 + w[i])   (gemma = true)
// x:   [rows, n] (fp32 or bf16), rows `x_stride` elements apart (x_stride >= n)
// w:   [n] fp32, or nullptr for no affine weight
// out: [rows, n], same dtype as x, rows `out_stride` elements apart; out == x is allowed.
// rows may be 0 (nothing is launched); n >= 1.
int RmsNormF32(const float* x, int64_t x_stride, const float* w, float eps, int64_t rows, int64_t n,
               bool gemma, float* out, int64_t out_stride, void* stream);
int RmsNormBf16(const uint16_t* x, int64_t x_stride, const float* w, float eps, int64_t rows,
                int64_t n, bool gemma, uint16_t* out, int64_t out_stride, void* stream);

// ---- silu_mul.cu ---------------------------------------------------------------------------
// SwiGLU activation: out[r, i] = silu(gate[r, i]) · up[r, i], silu(g) = g / (1 + exp(-g)).
// gate, up: [rows, n] with row strides gate_stride / up_stride (elements); a fused gate|up
// projection output [rows, 2n] is gate = p, up = p + n, both strides 2n.
// out: [rows, n], same dtype, row stride out_stride; may alias gate (same stride) but must not
// partially overlap up. rows may be 0; n >= 1.
int SiluMulF32(const float* gate, int64_t gate_stride, const float* up, int64_t up_stride,
               int64_t rows, int64_t n, float* out, int64_t out_stride, void* stream);
int SiluMulBf16(const uint16_t* gate, int64_t gate_stride, const uint16_t* up, int64_t up_stride,
                int64_t rows, int64_t n, uint16_t* out, int64_t out_stride, void* stream);

// ---- storage types of the kernels below -----------------------------------------------------
// Element type of an activation or KV tensor passed as `const void*`.
enum class KernelDType : int { kF32 = 0, kBf16 = 1 };

// ---- gdn_decode.cu -------------------------------------------------------------------------
// One Gated DeltaNet decode step (one new token) for a batch of sequences, fused: gates, L2 norms
// of q and k, the in-place fp32 state update and the read-out (reference/models.md §0; CPU
// reference: GdnNormalizeQk, GdnDecayGate, GdnBeta, GatedDeltaStep of runtime/cpu/gdn_core.h).
// For row s and value head hv (q/k head h = hv / (HV / H), GVA):
//   g  = −exp(A_log[hv]) · softplus(a[s, hv] + dt_bias[hv])     (softplus threshold 20)
//   β  = sigmoid(b[s, hv]), ×2 when allow_neg_eigval
//   q̂  = q[s, h] / sqrt(Σq² + 1e-6) · q_scale;  k̂ = k[s, h] / sqrt(Σk² + 1e-6)
//   S  ← exp(g)·S;  u = β·(v[s, hv] − Sᵀk̂);  S ← S + k̂ uᵀ;  o[s, hv] = Sᵀq̂
// S is the [dk, dv] fp32 state of (slots[s], hv) at state + slots[s] · state_slot_stride +
// hv · dk · dv (the CPU layout [HV, dk, dv] per slot). A row with slots[s] < 0 is padding: its
// state is not touched and its o row is zeroed. Distinct rows must name distinct slots.
// Activations (q, k, v, a, b, o) are all fp32 or all bf16 (`dtype`); gate math is fp32.
// `variant` picks the kernel (all compute the same; kernels/gdn_decode.cu describes them, and
// kernels_bench times each); kDefault is the one to use.
enum class GdnDecodeVariant : int {
  kDefault = 0,
  kTile32 = 1,         // 32 value columns per CTA of 128 threads, plain state loads/stores
  kTile32Stream = 2,   // as kTile32, state loads/stores evict-first (ld/st.global.cs)
  kTile64Stream = 3,   // 64 columns per CTA of 256 threads, evict-first
  kTile128Stream = 4,  // 128 columns per CTA of 512 threads, evict-first
  kPersistent32 = 5,   // persistent CTAs over 32-column tiles, next tile's state prefetched
  kTile64 = 6,         // kTile64Stream with plain loads/stores
};
struct GdnDecodeParams {
  int num_seqs = 0;     // rows (may be 0: nothing is launched)
  int num_heads = 0;    // H, q/k heads
  int num_v_heads = 0;  // HV, a multiple of H
  int dk = 0;           // head_k_dim, 1..256
  int dv = 0;           // head_v_dim, >= 1
  KernelDType dtype = KernelDType::kF32;
  const void* q = nullptr;  // [num_seqs, H, dk], rows q_stride elements apart
  int64_t q_stride = 0;
  const void* k = nullptr;  // [num_seqs, H, dk]
  int64_t k_stride = 0;
  const void* v = nullptr;  // [num_seqs, HV, dv]
  int64_t v_stride = 0;
  const void* a = nullptr;  // [num_seqs, HV] raw decay-gate projection
  int64_t a_stride = 0;
  const void* b = nullptr;  // [num_seqs, HV] raw write-strength projection
  int64_t b_stride = 0;
  const float* a_log = nullptr;    // [HV]
  const float* dt_bias = nullptr;  // [HV]
  bool allow_neg_eigval = false;
  float q_scale = 1.0f;            // usually dk^-1/2
  const int32_t* slots = nullptr;  // [num_seqs]
  float* state = nullptr;          // slot pool; [HV, dk, dv] fp32 per slot
  int64_t state_slot_stride = 0;   // elements between slots, >= HV·dk·dv
  void* o = nullptr;               // [num_seqs, HV, dv]
  int64_t o_stride = 0;
  GdnDecodeVariant variant = GdnDecodeVariant::kDefault;
};
int GdnDecode(const GdnDecodeParams& params, void* stream);

// Short causal depthwise conv, decode update (one new input per sequence), then SiLU when `silu`
// (CPU reference: ShortConv of runtime/cpu/gdn_core.h with rows = 1):
//   out[s, c] = f( Σ_{j<K-1} tail[j, c] · w[c, j] + x[s, c] · w[c, K-1] )   (oldest tap first)
//   tail ← [tail[1:], x[s]]
// tail: [(K-1), channels] fp32 at tail + slots[s] · tail_slot_stride, oldest first (the bf16 x
// is stored exactly). slots[s] < 0: padding row, out zeroed, nothing else touched. out may alias
// x (same stride).
enum class ShortConvDecodeVariant : int { kDefault = 0, kScalar = 1, kVec4 = 2 };
struct ShortConvDecodeParams {
  int num_seqs = 0;
  int channels = 0;                       // C >= 1
  int kernel = 0;                         // K >= 1
  KernelDType dtype = KernelDType::kF32;  // of x and out
  const void* x = nullptr;                // [num_seqs, C], rows x_stride elements apart
  int64_t x_stride = 0;
  const float* weight = nullptr;   // [C, K] (PyTorch Conv1d [C, 1, K])
  const int32_t* slots = nullptr;  // [num_seqs]
  float* tail = nullptr;           // slot pool; [(K-1), C] fp32 per slot (unused when K == 1)
  int64_t tail_slot_stride = 0;    // elements between slots
  bool silu = true;
  void* out = nullptr;  // [num_seqs, C]
  int64_t out_stride = 0;
  // Launch shape (same values): kScalar one channel per thread (the first version); kVec4 four
  // channels per thread in 16-byte packs, a 2-D grid (channel blocks × sequences), needs C, the
  // strides and tail_slot_stride % 4 == 0, aligned pointers and K <= 4 (else kScalar runs).
  // kDefault = kVec4 where it applies (kernels_bench: the short_conv_decode rows).
  ShortConvDecodeVariant variant = ShortConvDecodeVariant::kDefault;
};
int ShortConvDecode(const ShortConvDecodeParams& params, void* stream);

// ---- gdn_prefill.cu ------------------------------------------------------------------------
// Variants of GdnPrefill's tensor-core path (GdnPrefillParams::mma_variant; kDefault is the one
// kernels/gdn_prefill_mma.cu names the fastest). Its sequential state pass runs one CTA per
// (sequence, value head, N value columns). kColsN: the state pass stores the per-piece state and
// a third, parallel launch computes the outputs (fla's layout); kFusedColsN: the state pass
// computes the outputs itself (nothing per-piece stored); Split2: two warps per 16 value rows,
// each holding half of dk.
enum class GdnPrefillMmaVariant : int {
  kDefault = 0,
  kCols16 = 1,
  kCols32 = 2,
  kCols64 = 3,
  kFusedCols16 = 4,
  kFusedCols32 = 5,
  kFusedCols16Split2 = 6,
  kFusedCols32Split2 = 7,
  kFusedCols64Split2 = 8,
  kCols32Stages3 = 9,              // kCols32 with three pieces in shared memory (two by default)
  kFusedCols16Split2Stages3 = 10,  // kFusedCols16Split2 likewise
  // Launch 1 with the parallel T solve (warp-scan gates, T_ij = −T_ii·Σ A_ik T_kj per warp):
  kFusedCols32Split2Solve2 = 11,
  kFusedCols64Split2Solve2 = 12,
  kCols32Solve2 = 13,
  kFusedCols32Split4Solve2 = 14,  // four warps per 16 value rows (dk = 128; else Split2)
  // kFusedColsNSplit2Solve2 with launch 1 overlapped with the state pass: the pieces are cut into
  // segments (GdnPrefillParams::overlap_segments), launch 1 runs segment by segment on the
  // caller's stream and the state pass on a high-priority side stream, each of its segments
  // after that segment's launch 1 (so the state pass of segment i runs beside launch 1 of the
  // segments after it; the state stays fp32 in the pool between segments).
  kOverlapCols64Split2Solve2 = 15,
  kOverlapCols32Split2Solve2 = 16,
};
// The last GdnPrefillMmaVariant: GdnPrefill rejects larger values (keep it the last one above).
constexpr GdnPrefillMmaVariant kLastGdnPrefillMmaVariant =
    GdnPrefillMmaVariant::kOverlapCols32Split2Solve2;

// Chunked gated delta rule (WY/UT form, reference/models.md §3.3) over variable-length sequences
// in one call. Sequence s owns the packed rows [cu_seqlens[s], cu_seqlens[s+1]) of q, k, v, a, b
// and o, and start_pos[s] tokens are already folded into its state. Its new tokens are cut into
// pieces at absolute positions that are multiples of 64 (the NAtS-L chunk grid): a sequence that
// starts mid-chunk has a shorter first piece, one that ends mid-chunk a shorter last piece.
// Per piece, with S the state at the piece start and G the in-piece cumulative gate:
//   V_new = T·diag(β)V − T·diag(β·e^G)K·S  (T = (I + StrictLower(diag(β)(KKᵀ ⊙ e^{Gi−Gj})))⁻¹)
//   O     = (Q ⊙ e^G)·S + tril(QKᵀ ⊙ e^{Gi−Gj})·V_new
//   S     ← e^{G_last}·S + (K ⊙ e^{G_last − G})ᵀ·V_new
// which is, up to rounding, the per-token recurrence of GdnDecode (gates and q/k norms as there),
// so any split of a sequence into calls gives the same result.
//
// NAtS-L commit/decay (optional: `commit` non-null; then `committed` and `g_sum` are required).
// `state` is the running state (including the tokens of the current, unfinished chunk),
// `committed` the state at the start of the current chunk and g_sum the sum of g over the current
// chunk's tokens (CPU NAtS-L layer: "S", "S_committed", "g_sum"). Every piece advances `state`
// and g_sum; a piece that completes its chunk (ends at a multiple of 64) then applies the
// decision commit[piece, hv]:
//   1 (GDN):     committed ← state
//   0 (softmax): committed ← exp(g_sum)·committed (decay_uncommitted) or unchanged; state ←
//   committed
// and resets g_sum to 0. Outputs never depend on the decision of their own chunk.
//
// Pieces are numbered sequence by sequence (piece_offsets, from GdnPrefillPlan on the host).
// Scratch: workspace of GdnPrefillWorkspaceBytes(num_pieces, HV, dk, dv) bytes (or the smaller
// GdnPrefillWorkspaceBytesFor(params)).
struct GdnPrefillParams {
  int num_seqs = 0;
  int num_heads = 0;                      // H
  int num_v_heads = 0;                    // HV, multiple of H
  int dk = 0;                             // 1..256
  int dv = 0;                             // 1..512
  KernelDType dtype = KernelDType::kF32;  // of q, k, v, a, b, o
  const void* q = nullptr;                // [total_rows, H, dk], rows q_stride elements apart
  int64_t q_stride = 0;
  const void* k = nullptr;  // [total_rows, H, dk]
  int64_t k_stride = 0;
  const void* v = nullptr;  // [total_rows, HV, dv]
  int64_t v_stride = 0;
  const void* a = nullptr;  // [total_rows, HV]
  int64_t a_stride = 0;
  const void* b = nullptr;  // [total_rows, HV]
  int64_t b_stride = 0;
  const float* a_log = nullptr;    // [HV]
  const float* dt_bias = nullptr;  // [HV]
  bool allow_neg_eigval = false;
  float q_scale = 1.0f;
  const int32_t* cu_seqlens = nullptr;     // [num_seqs + 1] device, non-decreasing, [0] = 0
  const int64_t* start_pos = nullptr;      // [num_seqs] device; nullptr: all 0
  const int32_t* piece_offsets = nullptr;  // [num_seqs + 1] device, from GdnPrefillPlan
  int num_pieces = 0;                      // piece_offsets[num_seqs]
  const int32_t* slots = nullptr;          // [num_seqs] device, distinct, >= 0
  float* state = nullptr;                  // [HV, dk, dv] fp32 per slot, in/out
  int64_t state_slot_stride = 0;
  const uint8_t* commit = nullptr;  // [num_pieces, HV] or nullptr (plain GDN)
  float* committed = nullptr;       // [HV, dk, dv] fp32 per slot (with commit)
  int64_t committed_slot_stride = 0;
  float* g_sum = nullptr;  // [HV] fp32 per slot (with commit)
  int64_t g_sum_slot_stride = 0;
  bool decay_uncommitted = true;
  void* o = nullptr;  // [total_rows, HV, dv]
  int64_t o_stride = 0;
  void* workspace = nullptr;  // device scratch, 256-byte aligned
  size_t workspace_bytes = 0;
  // Tensor-core path (GdnPrefillUsesTensorCores): false forces the fp32 kernels (benchmarks,
  // tests); mma_variant picks its kernel variant (a benchmark knob).
  bool tensor_cores = true;
  GdnPrefillMmaVariant mma_variant = GdnPrefillMmaVariant::kDefault;
  // kOverlap* variants: the number of segments the pieces are cut into (at most num_pieces);
  // 0 picks kernels/gdn_prefill_mma.cu's default.
  int overlap_segments = 0;
};
int GdnPrefill(const GdnPrefillParams& params, void* stream);
// Covers every path of GdnPrefill (the fp32 kernels need the most).
size_t GdnPrefillWorkspaceBytes(int num_pieces, int num_v_heads, int dk, int dv);
// True when GdnPrefill runs `params` on its tensor-core path (kernels/gdn_prefill_mma.cu): bf16
// activations, no commit (plain GDN), dk and dv in {64, 128}, tensor_cores set. That path keeps
// the state in fp32 but rounds its operands and intermediates (T, W, U, V_new, the per-piece
// state) to bf16, as fla's chunk_gated_delta_rule does: outputs and the final state are within
// bf16 rounding of the recurrence, not fp32 rounding (the fp32 kernels are the exact path).
bool GdnPrefillUsesTensorCores(const GdnPrefillParams& params);
// The workspace that `params` needs on the path GdnPrefill takes for it (num_pieces, HV, dk, dv,
// dtype, commit, tensor_cores are read): <= GdnPrefillWorkspaceBytes; the tensor-core path
// needs 2·(64·dk + 64·dv + dk·dv + 4096) + 768 bytes per (piece, value head).
size_t GdnPrefillWorkspaceBytesFor(const GdnPrefillParams& params);
namespace internal {
// Benchmarks only (kernels_bench's per-launch rows): runs launch `launch` alone (1: the per-piece
// kernel, 2: the sequential state pass, 3: the output kernel of unfused variants, nothing for
// fused ones) of GdnPrefill's tensor-core path for params that GdnPrefill would run on it (only
// cheap checks here). Results are meaningful only when the earlier launches ran before.
int GdnPrefillMmaLaunch(const GdnPrefillParams& params, int launch, void* stream);
}  // namespace internal
// Host-side plan: from host copies of cu_seqlens [num_seqs + 1] and start_pos [num_seqs]
// (nullptr: all 0), fills piece_offsets [num_seqs + 1] and returns the number of pieces
// (-1 on invalid input).
int GdnPrefillPlan(const int32_t* cu_seqlens, const int64_t* start_pos, int num_seqs,
                   int32_t* piece_offsets);

// ---- paged_attention_decode.cu -------------------------------------------------------------
// Softmax attention of one query per sequence over its paged KV blocks (CPU reference: the
// attention layer's AttendOne). Block b lives at kv + b · block_stride elements: keys
// [64, num_kv_heads, dk] then values [64, num_kv_heads, dv] (runtime/cpu/cpu_layer.h BlockKey /
// BlockValue); RoPE is already applied to the stored keys. Sequence s has num_blocks[s] table
// entries block_table[s, i] covering positions block_chunks[s, i]·64 + [0, 64) (strictly
// ascending chunks; block_chunks nullptr: chunk i). Its query sees the positions p < kv_len[s],
// and with window > 0 only p >= kv_len[s] − window:
//   out[s, h] = Σ_p softmax_p(scale · q[s, h]·k_p) v_p,  KV head h / (Hq / Hkv)   (GQA)
// A sequence with no visible position gets zeros. Table entries whose 64 positions are all
// outside [kv_len[s] − window, kv_len[s]) are skipped by the kernel (the caller need not trim
// the table), so the time scales with the visible positions.
// Long contexts are split over blocks (num_splits pieces, 0 = chosen from num_seqs, Hkv, the
// head chunks, the SM count and max_blocks) and merged by a combine kernel, which needs
// workspace of PagedAttentionDecodeWorkspaceBytes(num_seqs, Hq, dv, splits) bytes; with too
// little workspace fewer splits are used (none without workspace). Each sequence's split
// boundaries are computed on the device from its own visible table entries, so the launch
// configuration depends only on num_seqs, the head counts and dims, max_blocks, window,
// num_splits and workspace_bytes — never on per-step lengths or tables (CUDA-graph friendly: a
// graph captured once stays valid while the device-side num_blocks / kv_len / tables change).
// table_rows (optional, device): sequence s reads row table_rows[s] of block_table,
// block_chunks AND num_blocks (row s when nullptr); kv_len, q and out stay indexed by s.
struct PagedAttentionDecodeParams {
  int num_seqs = 0;
  int num_heads = 0;                         // Hq
  int num_kv_heads = 0;                      // Hkv, divides Hq
  int dk = 0;                                // 1..256
  int dv = 0;                                // 1..256
  KernelDType q_dtype = KernelDType::kF32;   // of q and out
  KernelDType kv_dtype = KernelDType::kF32;  // of the blocks
  const void* q = nullptr;                   // [num_seqs, Hq, dk], rows q_stride elements apart
  int64_t q_stride = 0;
  const void* kv = nullptr;               // block pool
  int64_t block_stride = 0;               // elements between blocks, >= 64 · Hkv · (dk + dv)
  const int32_t* block_table = nullptr;   // [num_seqs, max_blocks]
  const int32_t* block_chunks = nullptr;  // [num_seqs, max_blocks] or nullptr
  const int32_t* num_blocks = nullptr;    // [num_seqs] (rows: table_rows), each <= max_blocks
  int max_blocks = 0;                     // row stride of the tables
  const int32_t* kv_len = nullptr;        // [num_seqs]
  int window = 0;
  float scale = 1.0f;
  void* out = nullptr;  // [num_seqs, Hq, dv]
  int64_t out_stride = 0;
  int num_splits = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  const int32_t* table_rows = nullptr;  // [num_seqs] device or nullptr (row s)
  // Kernel variant (benchmarks): 0 = chosen per shape, 1 = the CUDA-core kernel, others name a
  // tensor-core tiling or ("cc_*") a CUDA-core split plan (PagedAttentionDecodeVariantName).
  // All compute the same.
  int variant = 0;
};
int PagedAttentionDecode(const PagedAttentionDecodeParams& params, void* stream);
size_t PagedAttentionDecodeWorkspaceBytes(int num_seqs, int num_heads, int dv, int num_splits);
// Name of PagedAttentionDecodeParams::variant `variant`; nullptr past the last one.
const char* PagedAttentionDecodeVariantName(int variant);

}  // namespace hyla::kernels

// The APIs of the remaining ops, one header per .cu (each is part of this header: include
// kernels/ops.h, never them directly; they use KernelDType from above).
#include "kernels/elementwise.h"
#include "kernels/gated_rmsnorm.h"
#include "kernels/kv_append.h"
#include "kernels/natsl.h"
#include "kernels/nha.h"
#include "kernels/paged_attention_prefill.h"
#include "kernels/residual.h"
#include "kernels/rope.h"
#include "kernels/sampling.h"
#include "kernels/short_conv_prefill.h"
#include "kernels/skinny_gemm.h"

#endif  // HYLA_KERNELS_OPS_H_
