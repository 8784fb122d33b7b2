// Host-only API of kernels/kv_append.cu: part of kernels/ops.h (include that, never this).
//
// Writes the post-RoPE K and V rows of a step into paged KV blocks (CPU reference: the memcpy
// of K/V rows into BlockKey / BlockValue in AttentionLayer::Forward,
// runtime/cpu/attention_layer.cc). Block b lives at kv + b · block_stride elements of kv_dtype:
// keys [64, num_kv_heads, dk] then values [64, num_kv_heads, dv] (runtime/cpu/cpu_layer.h). Row r
// goes to block row_block[r] at token_in_block = row_pos[r] % 64:
//   key(block, t, h)[d]   = k[r, h, d]   (d < dk)
//   value(block, t, h)[d] = v[r, h, d]   (d < dv)
// converted to kv_dtype (bf16: round to nearest even). A row with row_block[r] < 0 is skipped
// (rows of other rounds, padding). Distinct rows must not name the same (block, token).
#ifndef HYLA_KERNELS_KV_APPEND_H_
#define HYLA_KERNELS_KV_APPEND_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {

struct KvAppendParams {
  int64_t rows = 0;          // may be 0 (nothing is launched)
  int num_kv_heads = 0;      // Hkv >= 1
  int dk = 0;                // >= 1
  int dv = 0;                // >= 1
  const float* k = nullptr;  // [rows, Hkv, dk] fp32, rows k_stride elements apart
  int64_t k_stride = 0;
  const float* v = nullptr;  // [rows, Hkv, dv] fp32, rows v_stride elements apart
  int64_t v_stride = 0;
  const int32_t* row_block = nullptr;        // [rows] device: destination block (< 0: skip the row)
  const int32_t* row_pos = nullptr;          // [rows] device: absolute position (>= 0) of each row
  KernelDType kv_dtype = KernelDType::kF32;  // of the blocks
  void* kv = nullptr;                        // block pool
  int64_t block_stride = 0;                  // elements between blocks, >= 64 · Hkv · (dk + dv)
};
int KvAppend(const KvAppendParams& params, void* stream);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_KV_APPEND_H_
