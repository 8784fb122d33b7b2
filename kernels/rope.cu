// Rotary position embedding, in place on q and k (API and semantics: kernels/rope.h).
//
// One thread per (row, head, rotation pair i): it computes cos/sin of its angle (sincosf, full
// precision: the kernels are not built with fast math) and rotates pair i of its head, so that a
// decode batch's few rows still spread over many threads. Consecutive threads touch consecutive
// i: the accesses of a warp are coalesced.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void RotatePair(float* x, int half, int i, float c, float s) {
  const float a = x[i];
  const float b = x[i + half];
  x[i] = a * c - b * s;
  x[i + half] = b * c + a * s;
}

// One thread per (row, head, rotation pair): heads h < q_heads are q's, the rest k's.
__global__ void __launch_bounds__(kThreads) RopeKernel(RopeParams p) {
  const int half = p.rotary_dim / 2;
  const int heads = p.q_heads + p.k_heads;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= p.rows * heads * half) return;
  const int i = static_cast<int>(idx % half);
  const int h = static_cast<int>((idx / half) % heads);
  const int64_t r = idx / half / heads;
  const float angle = static_cast<float>(p.row_pos[r]) * p.inv_freq[i];
  float s, c;
  sincosf(angle, &s, &c);
  float* x = h < p.q_heads
                 ? p.q + r * p.q_stride + static_cast<int64_t>(h) * p.head_dim
                 : p.k + r * p.k_stride + static_cast<int64_t>(h - p.q_heads) * p.head_dim;
  RotatePair(x, half, i, c, s);
}

}  // namespace

int Rope(const RopeParams& p, void* stream) {
  if (p.rows < 0 || p.head_dim < 1 || p.rotary_dim < 0 || p.rotary_dim % 2 != 0 ||
      p.rotary_dim > p.head_dim || p.q_heads < 0 || p.k_heads < 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.rows == 0 || p.rotary_dim == 0 || (p.q_heads == 0 && p.k_heads == 0)) {
    return static_cast<int>(cudaSuccess);
  }
  if (p.inv_freq == nullptr || p.row_pos == nullptr || (p.q_heads > 0 && p.q == nullptr) ||
      (p.k_heads > 0 && p.k == nullptr) ||
      (p.q_heads > 0 && p.q_stride < int64_t{p.q_heads} * p.head_dim) ||
      (p.k_heads > 0 && p.k_stride < int64_t{p.k_heads} * p.head_dim)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  RopeParams params = p;
  if (params.q_heads == 0) {
    // Only k: rotate it through the q slot (the kernel always walks q first).
    params.q = params.k;
    params.q_stride = params.k_stride;
    params.q_heads = params.k_heads;
    params.k = nullptr;
    params.k_heads = 0;
  }
  const int64_t threads = p.rows * (params.q_heads + params.k_heads) * (p.rotary_dim / 2);
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  RopeKernel<<<static_cast<unsigned>(blocks), kThreads, 0, AsStream(stream)>>>(params);
  return LaunchResult();
}

}  // namespace hyla::kernels
