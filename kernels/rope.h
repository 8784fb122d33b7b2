// Host-only API of kernels/rope.cu: part of kernels/ops.h (include that, never this).
//
// Rotary position embedding of the softmax attention layer, in place on the fp32 q and k rows of
// a step (CPU reference: AttentionLayer::ProjectAndRotate and RotateHalf of
// runtime/cpu/attention_layer.cc). For every row r, head h and i < rotary_dim / 2:
//   angle  = float(row_pos[r]) · inv_freq[i]            (fp32 product, as transformers)
//   (a, b) = (x[r, h, i], x[r, h, i + rotary_dim / 2])
//   x[r, h, i] = a·cos(angle) − b·sin(angle);  x[r, h, i + rotary_dim / 2] = b·cos + a·sin
// (rotate-half / neox pairing; dims >= rotary_dim are left alone: partial rotary). inv_freq comes
// from cpu::AttentionRopeInvFreq (default and llama3 rope types), uploaded once. cos/sin are
// full-precision sincosf of the fp32 angle in every variant.
#ifndef HYLA_KERNELS_ROPE_H_
#define HYLA_KERNELS_ROPE_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {

// Kernel mapping (all give identical results; kernels_bench times each):
//   kAuto: kSharedAngleVec4 when the rows allow float4 accesses (rotary_dim % 8 == 0,
//     head_dim, strides % 4 == 0, q and k 16-byte aligned), else kSharedAngleScalar;
//   kPerElement: one thread per (row, head, pair), one sincosf each (the original kernel);
//   kSharedAngleScalar / kSharedAngleVec4: cos/sin once per (row, pair) and block, applied to a
//     chunk of heads; Vec4 falls back to Scalar where float4 accesses are not allowed.
enum class RopeVariant : int {
  kAuto = 0,
  kPerElement = 1,
  kSharedAngleScalar = 2,
  kSharedAngleVec4 = 3
};

struct RopeParams {
  int64_t rows = 0;    // may be 0 (nothing is launched)
  int head_dim = 0;    // >= 1
  int rotary_dim = 0;  // even, 0..head_dim (0: nothing is launched)
  float* q = nullptr;  // [rows, q_heads, head_dim] fp32, rows q_stride elements apart
  int64_t q_stride = 0;
  int q_heads = 0;     // >= 0
  float* k = nullptr;  // [rows, k_heads, head_dim] fp32 (nullptr when k_heads == 0)
  int64_t k_stride = 0;
  int k_heads = 0;                   // >= 0
  const float* inv_freq = nullptr;   // [rotary_dim / 2] fp32 device
  const int32_t* row_pos = nullptr;  // [rows] int32 device: absolute position of each row
  RopeVariant variant = RopeVariant::kAuto;
};
int Rope(const RopeParams& params, void* stream);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_ROPE_H_
