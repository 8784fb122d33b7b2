// Host-only API of kernels/gated_rmsnorm.cu: part of kernels/ops.h (include that, never this).
// The output norm of GDN layers: fla FusedRMSNormGated with the swish gate, per head.
#ifndef HYLA_KERNELS_GATED_RMSNORM_H_
#define HYLA_KERNELS_GATED_RMSNORM_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {

// ---- gated_rmsnorm.cu ----------------------------------------------------------------------
// Launch shapes of GatedRmsNorm (GatedRmsNormParams::variant), the same values:
//   kScalar: one warp per (row, head), lane-strided scalar loads, x read twice (the first version;
//            also the fallback when kVec does not apply);
//   kVec:    one warp per (row, head), 16-byte packs held in registers (x, gate and w read once,
//            all loads issued before the reduction); needs n % 4 == 0, n <= 512, strides % 4 == 0
//            and 16-byte aligned pointers (8-byte for out_bf16).
// kDefault = kVec where it applies (kernels_bench times both: the gated_rmsnorm rows).
enum class GatedRmsNormVariant : int { kDefault = 0, kScalar = 1, kVec = 2 };

// Per (row r, head h), over the n values of the head (CPU reference: GatedRmsNorm / RmsNorm of
// runtime/cpu/gdn_core.h / ops.h, norm before gate):
//   y = x[r, h, :] / sqrt(mean(x[r, h, :]²) + eps) · w          (w nullptr: no affine weight)
//   out[r, h, :] = (y · g) · sigmoid(g),  g = gate[r, h, :]      (gate nullptr: out = y)
// All fp32. x, gate, out: [rows, heads, n] with row strides (elements) x_stride, gate_stride,
// out_stride (each >= heads·n); out may alias x (same stride) or gate (same stride).
struct GatedRmsNormParams {
  int64_t rows = 0;  // may be 0: nothing is launched
  int heads = 0;     // >= 1
  int n = 0;         // head width, >= 1
  const float* x = nullptr;
  int64_t x_stride = 0;
  const float* gate = nullptr;  // or nullptr (plain RMSNorm per head)
  int64_t gate_stride = 0;
  const float* weight = nullptr;  // [n] or nullptr
  float eps = 1e-6f;
  float* out = nullptr;
  int64_t out_stride = 0;
  // Optional: the same values rounded to bf16 (FloatToBf16), dense [rows, heads·n], for a bf16
  // GEMM after the norm.
  uint16_t* out_bf16 = nullptr;
  GatedRmsNormVariant variant = GatedRmsNormVariant::kDefault;
};
int GatedRmsNorm(const GatedRmsNormParams& params, void* stream);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_GATED_RMSNORM_H_
