// Fused residual-block ops (ResidualRmsNorm, SiluMulToBf16). API and semantics:
// kernels/residual.h. One CTA of kThreads per row for the norm: pass 1 adds and stores h and sums
// its squares (per-thread partial sums, then a block reduction), pass 2 re-reads the row (L1/L2)
// and writes the normalised values. Elementwise SwiGLU walks 4-wide packs.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kThreads = 256;

// grid: rows, block: kThreads; kVec-wide packs when n and the pointers allow it.
template <int kVec>
__global__ void __launch_bounds__(kThreads) ResidualRmsNormKernel(ResidualRmsNormParams p) {
  const int64_t row = blockIdx.x;
  const int n = static_cast<int>(p.n);
  float* h = p.h + row * p.n;
  const float* add = p.add != nullptr ? p.add + row * p.n : nullptr;
  float ss = 0.0f;
  for (int i = threadIdx.x * kVec; i < n; i += kThreads * kVec) {
    Pack<float, kVec> v = LoadPack<float, kVec>(h + i);
    if (add != nullptr) {
      const Pack<float, kVec> a = LoadPack<float, kVec>(add + i);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v.v[j] += a.v[j];
      StorePack<float, kVec>(h + i, v);
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) ss += v.v[j] * v.v[j];
  }
  ss = BlockSum<kThreads>(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + p.eps);
  for (int i = threadIdx.x * kVec; i < n; i += kThreads * kVec) {
    // Each thread re-reads only what it wrote itself: no barrier needed before this pass.
    const Pack<float, kVec> v = LoadPack<float, kVec>(h + i);
    const Pack<float, kVec> w = LoadPack<float, kVec>(p.weight + i);
    Pack<float, kVec> y;
#pragma unroll
    for (int j = 0; j < kVec; ++j) y.v[j] = v.v[j] * inv * (p.gemma ? 1.0f + w.v[j] : w.v[j]);
    if (p.out_f32 != nullptr) StorePack<float, kVec>(p.out_f32 + row * p.n + i, y);
    if (p.out_bf16 != nullptr) {
      Pack<__nv_bfloat16, kVec> b;
#pragma unroll
      for (int j = 0; j < kVec; ++j) b.v[j] = __float2bfloat16_rn(y.v[j]);
      StorePack<__nv_bfloat16, kVec>(reinterpret_cast<__nv_bfloat16*>(p.out_bf16) + row * p.n + i,
                                     b);
    }
  }
}

template <int kVec>
__global__ void __launch_bounds__(kThreads)
    SiluMulToBf16Kernel(const float* gu, int64_t rows, int64_t n, __nv_bfloat16* out) {
  const int64_t packs_per_row = n / kVec;
  const int64_t total = rows * packs_per_row;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; q < total;
       q += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = q / packs_per_row;
    const int64_t c = (q - r * packs_per_row) * kVec;
    const Pack<float, kVec> g = LoadPack<float, kVec>(gu + r * 2 * n + c);
    const Pack<float, kVec> u = LoadPack<float, kVec>(gu + r * 2 * n + n + c);
    Pack<__nv_bfloat16, kVec> res;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float gv = g.v[j];
      res.v[j] = __float2bfloat16_rn(gv / (1.0f + expf(-gv)) * u.v[j]);
    }
    StorePack<__nv_bfloat16, kVec>(out + r * n + c, res);
  }
}

}  // namespace

int ResidualRmsNorm(const ResidualRmsNormParams& p, void* stream) {
  if (p.rows < 0 || p.n < 1 || p.n > INT_MAX || p.rows > INT_MAX ||
      (p.out_f32 == nullptr && p.out_bf16 == nullptr) ||
      (p.out_f32 != nullptr && p.add != nullptr && p.out_f32 == p.h)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.rows == 0) return 0;
  if (p.h == nullptr || p.weight == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const bool vec = p.n % 4 == 0 && IsAligned(p.h, 16) && IsAligned(p.weight, 16) &&
                   (p.add == nullptr || IsAligned(p.add, 16)) &&
                   (p.out_f32 == nullptr || IsAligned(p.out_f32, 16)) &&
                   (p.out_bf16 == nullptr || IsAligned(p.out_bf16, 8));
  if (vec) {
    ResidualRmsNormKernel<4><<<static_cast<unsigned>(p.rows), kThreads, 0, AsStream(stream)>>>(p);
  } else {
    ResidualRmsNormKernel<1><<<static_cast<unsigned>(p.rows), kThreads, 0, AsStream(stream)>>>(p);
  }
  return LaunchResult();
}

int SiluMulToBf16(const float* gate_up, int64_t rows, int64_t n, uint16_t* out, void* stream) {
  if (rows < 0 || n < 1 || (rows > 0 && (gate_up == nullptr || out == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (rows == 0) return 0;
  auto* o = reinterpret_cast<__nv_bfloat16*>(out);
  const bool vec = n % 4 == 0 && IsAligned(gate_up, 16) && IsAligned(out, 8);
  const int64_t total = rows * (vec ? n / 4 : n);
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
  if (vec) {
    SiluMulToBf16Kernel<4>
        <<<static_cast<unsigned>(blocks), kThreads, 0, AsStream(stream)>>>(gate_up, rows, n, o);
  } else {
    SiluMulToBf16Kernel<1>
        <<<static_cast<unsigned>(blocks), kThreads, 0, AsStream(stream)>>>(gate_up, rows, n, o);
  }
  return LaunchResult();
}

}  // namespace hyla::kernels
