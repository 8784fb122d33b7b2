// Per-head RMSNorm with the swish output gate (fla FusedRMSNormGated, norm before gate).
// API and semantics: kernels/gated_rmsnorm.h. CPU reference: hyla::cpu::GatedRmsNorm (RmsNorm
// without a gate).
//
// One warp per (row, head), kWarps warps per block, grid-stride over the (row, head) pairs: the
// lanes accumulate the sum of squares over i = lane, lane + 32, ..., reduce it with shuffles,
// then each lane scales its own elements (x is read twice; the second read hits L1).
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

}  // namespace

int GatedRmsNorm(const GatedRmsNormParams& p, void* stream) {
  if (p.rows < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.rows == 0) return static_cast<int>(cudaSuccess);
  const int64_t width = static_cast<int64_t>(p.heads) * p.n;
  if (p.heads < 1 || p.n < 1 || p.x == nullptr || p.out == nullptr || p.x_stride < width ||
      p.out_stride < width || (p.gate != nullptr && p.gate_stride < width) || !(p.eps >= 0.0f)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t tasks = p.rows * p.heads;
  const int64_t blocks = std::min<int64_t>((tasks + kWarps - 1) / kWarps, kMaxBlocks);
  GatedRmsNormKernel<<<static_cast<unsigned>(blocks), kThreads, 0, AsStream(stream)>>>(p);
  return LaunchResult();
}

}  // namespace hyla::kernels
