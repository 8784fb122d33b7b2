// Host-only API of kernels/paged_attention_prefill.cu: part of kernels/ops.h (include that, never
// this).
//
// Causal softmax attention of many query rows per sequence over paged KV blocks (the prefill /
// chunked-prefill counterpart of PagedAttentionDecode; CPU reference: the attention layer's
// AttendOne, runtime/cpu/attention_layer.cc). The new tokens' K/V are already in the blocks
// (KvAppend). Blocks and tables as PagedAttentionDecode: block b at kv + b · block_stride
// elements of kv_dtype, keys [64, Hkv, dk] then values [64, Hkv, dv]; sequence s has
// num_blocks[s] entries block_table[s, i] covering positions block_chunks[s, i]·64 + [0, 64)
// (ascending chunks; block_chunks nullptr: chunk i).
//
// Query row r (of sequence s) at position pos = row_pos[r] sees the positions p of s's table
// with lo <= p <= pos, lo = max(0, pos + 1 − window) when window > 0 else 0:
//   out[r, h] = Σ_p softmax_p(scale · q[r, h]·k_p) v_p,   KV head h / (Hq / Hkv)   (GQA)
// A row with no visible position gets zeros. The keys of positions <= pos that a table holds
// must have been written.
//
// Work is given as tiles: tile i = (seq, first row, rows) = tiles[3i], tiles[3i+1], tiles[3i+2]:
// `rows` consecutive query rows of one sequence (1 <= rows <= PagedAttentionPrefillTileRows),
// every row in at most one tile; rows in no tile are not written. Tiles may mix sequences freely
// (one launch for all sequences of a step) and may start anywhere in a block.
//
// Precision: fp32 KV, and shapes outside the tensor-core path, run an fp32 CUDA-core kernel
// (within fp32 rounding of the CPU reference). bf16 KV with dk == dv in {64, 128, 256} (16-byte
// aligned pool and block_stride % 8 == 0) runs on tensor cores (PagedAttentionPrefillUsesTensor-
// Cores), FlashAttention-2 style: q·scale and the probabilities are rounded to bf16 for the
// MMAs, accumulation and softmax in fp32 (about 3e-3 relative to the exact softmax).
#ifndef HYLA_KERNELS_PAGED_ATTENTION_PREFILL_H_
#define HYLA_KERNELS_PAGED_ATTENTION_PREFILL_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {

struct PagedAttentionPrefillParams {
  int num_heads = 0;                         // Hq
  int num_kv_heads = 0;                      // Hkv, divides Hq
  int dk = 0;                                // 1..256
  int dv = 0;                                // 1..256
  KernelDType kv_dtype = KernelDType::kF32;  // of the blocks
  const float* q = nullptr;                  // [rows, Hq, dk] fp32, rows q_stride elements apart
  int64_t q_stride = 0;
  const void* kv = nullptr;               // block pool
  int64_t block_stride = 0;               // elements between blocks, >= 64 · Hkv · (dk + dv)
  const int32_t* block_table = nullptr;   // [num_seqs, max_blocks] device
  const int32_t* block_chunks = nullptr;  // [num_seqs, max_blocks] device, or nullptr
  const int32_t* num_blocks = nullptr;    // [num_seqs] device, each <= max_blocks
  int max_blocks = 0;                     // row stride of the tables
  const int32_t* row_pos = nullptr;       // [rows] device, absolute position of each row (>= 0)
  const int32_t* tiles = nullptr;         // [num_tiles, 3] device (seq, first row, rows)
  int num_tiles = 0;                      // may be 0 (nothing is launched)
  int window = 0;                         // 0: full causal
  float scale = 1.0f;
  float* out = nullptr;  // [rows, Hq, dv] fp32, rows out_stride elements apart
  int64_t out_stride = 0;
};
int PagedAttentionPrefill(const PagedAttentionPrefillParams& params, void* stream);

// True when PagedAttentionPrefill(params) runs the tensor-core kernel (see Precision above).
// kPagedAttentionPrefillTensorCores = false keeps every shape on the fp32 kernel.
// kPagedAttentionPrefillWideTiles: the tensor-core kernel serves 128 query vectors per CTA (8
// warps) at dk == dv in {64, 128}, else 64 (always 64 at 256); tiles of its shapes are sized for
// it and the fp32 kernel splits them.
inline constexpr bool kPagedAttentionPrefillTensorCores = true;
inline constexpr bool kPagedAttentionPrefillWideTiles = true;
bool PagedAttentionPrefillUsesTensorCores(const PagedAttentionPrefillParams& params);

namespace internal {
// Query vectors per CTA of the tensor-core kernel at these head dims (tiles are sized for it
// whatever the KV dtype), or 0 where it does not apply.
constexpr int PagedAttentionPrefillMmaQueries(int dk, int dv) {
  if (!kPagedAttentionPrefillTensorCores || dk != dv) return 0;
  if (dk == 64 || dk == 128) return kPagedAttentionPrefillWideTiles ? 128 : 64;
  return dk == 256 ? 64 : 0;
}
// The tensor-core kernel (kernels/paged_attention_prefill_mma.cu); called by
// PagedAttentionPrefill after validating params.
int PagedAttentionPrefillMma(const PagedAttentionPrefillParams& params, void* stream);
}  // namespace internal

// Most query rows of one tile for this shape (>= 1), or 0 for an unsupported shape: a tile
// covers up to internal::PagedAttentionPrefillMmaQueries(dk, dv) (head, row) query vectors of one
// KV head where the tensor-core kernel applies (128 at dk == dv in {64, 128}, 64 at 256), else
// 64 (32 at head dims > 128).
int PagedAttentionPrefillTileRows(int num_heads, int num_kv_heads, int dk, int dv);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_PAGED_ATTENTION_PREFILL_H_
