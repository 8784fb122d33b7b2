// Host-only API of kernels/residual.cu: part of kernels/ops.h (include that, never this).
// The fused ops between the pieces of a residual block in the CUDA backend's decode and prefill
// steps, which save a launch and a pass over the activations each:
//   ResidualRmsNorm: h += add (the previous piece's output), then the next piece's RMSNorm of h,
//                    written as fp32 and/or already rounded to bf16 for a bf16 GEMM;
//   SiluMulToBf16:   the SwiGLU activation of a fused gate|up projection, rounded to bf16 for the
//                    down projection.
// CPU references: the residual add, hyla::cpu::RmsNorm and the SwiGLU of cpu::CpuBackend::Step,
// hyla::FloatToBf16 for the rounding (the same values the unfused ops give).
#ifndef HYLA_KERNELS_RESIDUAL_H_
#define HYLA_KERNELS_RESIDUAL_H_

#include <cstdint>

namespace hyla::kernels {

// Launch shapes of ResidualRmsNorm (ResidualRmsNormParams::variant). All give the same values
// up to the order of the sum of squares.
//   kLoop:     one CTA of 256 threads per row, two passes over the row (h re-read from L1/L2);
//   kRegs:     one CTA per row, each thread holds its packs of the row in registers (one read
//              of h / add / w, all issued before the reduction), up to 512 threads;
//   kCluster2/kCluster4: kRegs with the row split over a cluster of 2 / 4 CTAs (sm_90), the
//              partial sums exchanged through distributed shared memory: more SMs busy when
//              rows are few (decode). Need the 16-byte path (else they fall back to kRegs);
//   kRegs256:  kRegs aiming at <= 256 threads per CTA (more packs per thread).
// kDefault picks kRegs (kernels_bench times all of them: the residual_rmsnorm rows).
enum class ResidualRmsNormVariant : int {
  kDefault = 0,
  kLoop = 1,
  kRegs = 2,
  kCluster2 = 3,
  kCluster4 = 4,
  kRegs256 = 5,
};

// Dense fp32 rows [rows, n]. For each row: h ← h + add (add may be nullptr: h unchanged), then
// y = h / sqrt(mean(h²) + eps) · w (w' = 1 + w when gemma) written to out_f32 and/or out_bf16
// (either may be nullptr, not both). out_f32 may alias h only when add is nullptr.
struct ResidualRmsNormParams {
  int64_t rows = 0;  // may be 0: nothing is launched
  int64_t n = 0;     // >= 1
  float* h = nullptr;
  const float* add = nullptr;
  const float* weight = nullptr;  // [n]
  float eps = 1e-6f;
  bool gemma = false;
  float* out_f32 = nullptr;
  uint16_t* out_bf16 = nullptr;
  ResidualRmsNormVariant variant = ResidualRmsNormVariant::kDefault;
};
int ResidualRmsNorm(const ResidualRmsNormParams& params, void* stream);

// out[r, i] = bf16(silu(gate[r, i]) · up[r, i]) for a fused gate|up projection p [rows, 2n]
// (gate = p[r, 0:n], up = p[r, n:2n]); out dense [rows, n] bf16 bits.
int SiluMulToBf16(const float* gate_up, int64_t rows, int64_t n, uint16_t* out, void* stream);

// Launch shapes of SiluMulToBf16 (same values): kGridStride: a 1-D grid-stride loop over the
// 4-wide packs of all rows; kRowGrid: a 2-D grid (packs of a row × rows), one pack per thread, no
// index division; kRowGrid2: the 2-D grid with two packs per thread (both loads in flight
// together). kDefault = kRowGrid (kernels_bench times all: the silu_mul_bf16 rows).
enum class SiluMulVariant : int { kDefault = 0, kGridStride = 1, kRowGrid = 2, kRowGrid2 = 3 };
int SiluMulToBf16(const float* gate_up, int64_t rows, int64_t n, uint16_t* out, void* stream,
                  SiluMulVariant variant);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_RESIDUAL_H_
