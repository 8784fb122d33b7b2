// Host-only API of kernels/skinny_gemm.cu: part of kernels/ops.h (include that, never this).
//
// Tensor-core GEMM for decode-size batches ("skinny": few activation rows, many weight rows),
// meant to stream bf16 weights at close to the copy bandwidth where cuBLAS pays fixed costs:
//   y[i, j] = sum_c x[i, c] · W[j, c]  (+ bias[j])     i < m, j < n, c < k
// x bf16 [m, k] (rows x_stride elements apart), W bf16 [n, k] row-major (rows w_stride apart),
// y fp32 [m, n] (rows y_stride apart), bias fp32 [n] or nullptr; accumulation in fp32 (tensor
// cores, bf16 products exact). Deterministic: the same inputs give bitwise the same y on every
// launch (no atomics; split-K partial sums are added in a fixed order).
//
// Limits (cudaErrorInvalidValue otherwise, so that the caller can fall back to cuBLAS):
// 1 <= m <= 64, n >= 1, k >= 8 and a multiple of 8, x_stride and w_stride multiples of 8 and
// >= k, x and W 16-byte aligned, y_stride >= n, y not overlapping x or W.
// Design: kernels/skinny_gemm.cu.
#ifndef HYLA_KERNELS_SKINNY_GEMM_H_
#define HYLA_KERNELS_SKINNY_GEMM_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {

struct SkinnyGemmParams {
  int m = 0;                    // activation rows, 1..64
  int n = 0;                    // weight rows = output columns, >= 1
  int k = 0;                    // reduction length, a multiple of 8
  const uint16_t* x = nullptr;  // bf16 [m, k], rows x_stride elements apart (16-byte aligned)
  int64_t x_stride = 0;         // elements; 0 = k
  const uint16_t* w = nullptr;  // bf16 [n, k] row-major, rows w_stride elements apart
  int64_t w_stride = 0;         // elements; 0 = k
  const float* bias = nullptr;  // fp32 [n] or nullptr
  float* y = nullptr;           // fp32 [m, n], rows y_stride elements apart
  int64_t y_stride = 0;         // elements; 0 = n
  // Tuning (benchmarks; every choice computes the same y up to fp32 summation order, and each
  // is deterministic). variant: 0 = chosen per shape, else SkinnyGemmVariantName(variant).
  // num_splits: K ranges reduced inside a thread-block cluster (1, 2, 4 or 8; 0 = chosen per
  // shape).
  int variant = 0;
  int num_splits = 0;
};
int SkinnyGemmBf16(const SkinnyGemmParams& params, void* stream);

// Name of SkinnyGemmParams::variant `variant` (1, 2, ...); nullptr past the last one.
const char* SkinnyGemmVariantName(int variant);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_SKINNY_GEMM_H_
