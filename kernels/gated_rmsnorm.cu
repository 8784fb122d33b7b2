// Per-head RMSNorm with the swish output gate (fla FusedRMSNormGated, norm before gate).
// API and semantics: kernels/gated_rmsnorm.h. CPU reference: hyla::cpu::GatedRmsNorm (RmsNorm
// without a gate).
//
// One warp per (row, head), kWarps warps per block, grid-stride over the (row, head) pairs.
// kVec (default where it applies): lane l holds the 4-wide packs l, l + 32, ... (kPacks of them,
// n <= 128 · kPacks) of x, gate and w in registers, all loaded before the shuffle reduction, then
// writes out (16 bytes) and out_bf16 (8 bytes) per pack: one read of every input.
// kScalar (the first version, and the fallback): the lanes accumulate the sum of squares over
// i = lane, lane + 32, ..., reduce it with shuffles, then each lane scales its own elements (x is
// read twice; the second read hits L1).
// Per element the CPU's operation order: ((x·inv)·w)·g then ·sigmoid(g) = 1 / (1 + exp(−g)).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

__global__ void __launch_bounds__(kThreads) GatedRmsNormKernel(GatedRmsNormParams p) {
  GridDependencyWait();
  TriggerDependents();
  const int lane = threadIdx.x % 32;
  const int64_t tasks = p.rows * p.heads;
  const int64_t warp_step = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; t < tasks;
       t += warp_step) {  // uniform per warp: whole warps iterate together
    const int64_t r = t / p.heads;
    const int64_t h = t - r * p.heads;
    const float* x = p.x + r * p.x_stride + h * p.n;
    float ss = 0.0f;
    for (int i = lane; i < p.n; i += 32) ss += x[i] * x[i];
    ss = WarpSum(ss);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(p.n) + p.eps);
    const float* g = p.gate != nullptr ? p.gate + r * p.gate_stride + h * p.n : nullptr;
    float* out = p.out + r * p.out_stride + h * p.n;
    // Every lane reads its elements before writing them, and no lane touches another lane's
    // elements, so out may alias x or gate (same strides).
    for (int i = lane; i < p.n; i += 32) {
      float y = __fmul_rn(x[i], inv);
      if (p.weight != nullptr) y = __fmul_rn(y, p.weight[i]);
      if (g != nullptr) {
        const float gi = g[i];
        y = __fmul_rn(__fmul_rn(y, gi), 1.0f / (1.0f + expf(-gi)));
      }
      out[i] = y;
      if (p.out_bf16 != nullptr) {
        reinterpret_cast<__nv_bfloat16*>(p.out_bf16)[(r * p.heads + h) * p.n + i] =
            __float2bfloat16_rn(y);
      }
    }
  }
}

// One (row, head) per warp, kPacks 4-wide packs per lane (n % 4 == 0, n <= 128 · kPacks).
template <int kPacks>
__global__ void __launch_bounds__(kThreads) GatedRmsNormVecKernel(GatedRmsNormParams p) {
  GridDependencyWait();
  TriggerDependents();
  const int lane = threadIdx.x % 32;
  const int64_t tasks = p.rows * p.heads;
  const int64_t warp_step = static_cast<int64_t>(gridDim.x) * kWarps;
  const int packs = p.n / 4;
  auto* out_bf16 = reinterpret_cast<__nv_bfloat16*>(p.out_bf16);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; t < tasks;
       t += warp_step) {  // uniform per warp: whole warps iterate together
    const int64_t r = t / p.heads;
    const int64_t h = t - r * p.heads;
    const float* x = p.x + r * p.x_stride + h * p.n;
    const float* g = p.gate != nullptr ? p.gate + r * p.gate_stride + h * p.n : nullptr;
    Pack<float, 4> xv[kPacks], gv[kPacks], wv[kPacks];
    // Every load of the task before any store: out may alias x or gate.
#pragma unroll
    for (int k = 0; k < kPacks; ++k) {
      const int q = lane + 32 * k;
#pragma unroll
      for (int j = 0; j < 4; ++j) xv[k].v[j] = gv[k].v[j] = wv[k].v[j] = 0.0f;
      if (q < packs) {
        xv[k] = LoadPack<float, 4>(x + 4 * q);
        if (g != nullptr) gv[k] = LoadPack<float, 4>(g + 4 * q);
        if (p.weight != nullptr) wv[k] = LoadPack<float, 4>(p.weight + 4 * q);
      }
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < kPacks; ++k) {
#pragma unroll
      for (int j = 0; j < 4; ++j) ss += xv[k].v[j] * xv[k].v[j];  // zero beyond the head
    }
    ss = WarpSum(ss);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(p.n) + p.eps);
    float* out = p.out + r * p.out_stride + h * p.n;
#pragma unroll
    for (int k = 0; k < kPacks; ++k) {
      const int q = lane + 32 * k;
      if (q < packs) {
        Pack<float, 4> y;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float v = __fmul_rn(xv[k].v[j], inv);
          if (p.weight != nullptr) v = __fmul_rn(v, wv[k].v[j]);
          if (g != nullptr) {
            const float gi = gv[k].v[j];
            v = __fmul_rn(__fmul_rn(v, gi), 1.0f / (1.0f + expf(-gi)));
          }
          y.v[j] = v;
        }
        StorePack<float, 4>(out + 4 * q, y);
        if (out_bf16 != nullptr) {
          Pack<__nv_bfloat16, 4> b;
#pragma unroll
          for (int j = 0; j < 4; ++j) b.v[j] = __float2bfloat16_rn(y.v[j]);
          StorePack<__nv_bfloat16, 4>(out_bf16 + (r * p.heads + h) * p.n + 4 * q, b);
        }
      }
    }
  }
}

// True when the 16-byte shape applies to p.
bool VecApplies(const GatedRmsNormParams& p) {
  return p.n % 4 == 0 && p.n <= 128 * 4 && p.x_stride % 4 == 0 && p.out_stride % 4 == 0 &&
         IsAligned(p.x, 16) && IsAligned(p.out, 16) &&
         (p.gate == nullptr || (p.gate_stride % 4 == 0 && IsAligned(p.gate, 16))) &&
         (p.weight == nullptr || IsAligned(p.weight, 16)) &&
         (p.out_bf16 == nullptr || IsAligned(p.out_bf16, 8));
}

}  // namespace

int GatedRmsNorm(const GatedRmsNormParams& p, void* stream) {
  if (p.rows < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.rows == 0) return static_cast<int>(cudaSuccess);
  const int64_t width = static_cast<int64_t>(p.heads) * p.n;
  if (p.heads < 1 || p.n < 1 || p.x == nullptr || p.out == nullptr || p.x_stride < width ||
      p.out_stride < width || (p.gate != nullptr && p.gate_stride < width) || !(p.eps >= 0.0f) ||
      static_cast<int>(p.variant) < 0 ||
      static_cast<int>(p.variant) > static_cast<int>(GatedRmsNormVariant::kVec)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t tasks = p.rows * p.heads;
  const int64_t blocks = std::min<int64_t>((tasks + kWarps - 1) / kWarps, kMaxBlocks);
  const cudaStream_t s = AsStream(stream);
  if (p.variant != GatedRmsNormVariant::kScalar && VecApplies(p)) {
    const int packs = p.n / 4;
    if (packs <= 32) {
      (void)LaunchPdl(GatedRmsNormVecKernel<1>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                      0, s, p);
    } else if (packs <= 64) {
      (void)LaunchPdl(GatedRmsNormVecKernel<2>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                      0, s, p);
    } else {
      (void)LaunchPdl(GatedRmsNormVecKernel<4>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                      0, s, p);
    }
    return LaunchResult();
  }
  (void)LaunchPdl(GatedRmsNormKernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0, s, p);
  return LaunchResult();
}

}  // namespace hyla::kernels
