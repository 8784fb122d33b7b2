// Rotary position embedding, in place on q and k (API and semantics: kernels/rope.h).
//
// The angle of pair i depends on the row only, not on the head, so the default kernels compute
// each (row, pair) cos/sin once per thread and apply it to several heads:
//   grid (rows, head chunks), block (pair groups G, head lanes L). Thread (g, l) owns the V
//   consecutive pairs g·V .. g·V + V − 1 (V = 4: float4 accesses of x[i..i+3] and
//   x[i+half..i+half+3]; V = 1: scalar), computes their sincosf once (full precision: the kernels
//   are not built with fast math, so cos/sin equal those of the per-element kernel bit for bit)
//   and rotates them in heads h0 + l, h0 + l + L, ... of its chunk. Consecutive threads touch
//   consecutive pairs: a warp's accesses are coalesced. The head chunks are sized so that a decode
//   batch (64 rows) still gives a few hundred blocks.
// RopeVariant::kPerElement keeps the original mapping (one thread per (row, head, pair), one
// sincosf each) for comparison in kernels_bench.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kThreads = 256;       // per-element kernel
constexpr int kMaxBlock = 256;      // shared-angle kernels: most threads per block
constexpr int kTargetBlocks = 264;  // ~2 blocks per SM of an H100

__device__ __forceinline__ void RotatePair(float* x, int half, int i, float c, float s) {
  const float a = x[i];
  const float b = x[i + half];
  x[i] = a * c - b * s;
  x[i + half] = b * c + a * s;
}

// One thread per (row, head, rotation pair): heads h < q_heads are q's, the rest k's.
__global__ void __launch_bounds__(kThreads) RopePerElementKernel(RopeParams p) {
  GridDependencyWait();
  TriggerDependents();
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

// Shared-angle kernel: blockIdx.x = row, blockIdx.y = head chunk of heads_per_chunk heads;
// threadIdx.x = pair group (V pairs), threadIdx.y = head lane.
template <int V>
__global__ void __launch_bounds__(kMaxBlock)
    RopeSharedAngleKernel(RopeParams p, int heads_per_chunk) {
  GridDependencyWait();
  TriggerDependents();
  const int half = p.rotary_dim / 2;
  const int heads = p.q_heads + p.k_heads;
  const int i0 = static_cast<int>(threadIdx.x) * V;
  if (i0 >= half) return;  // V divides half when V > 1: a group is all in or all out
  const int64_t r = blockIdx.x;
  const float pos = static_cast<float>(p.row_pos[r]);
  float c[V], s[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    if (V == 1 || i0 + v < half) {
      sincosf(pos * p.inv_freq[i0 + v], &s[v], &c[v]);
    } else {
      s[v] = 0.0f;
      c[v] = 1.0f;
    }
  }
  const int h_begin = static_cast<int>(blockIdx.y) * heads_per_chunk;
  const int h_end = min(heads, h_begin + heads_per_chunk);
  for (int h = h_begin + static_cast<int>(threadIdx.y); h < h_end;
       h += static_cast<int>(blockDim.y)) {
    float* x = h < p.q_heads
                   ? p.q + r * p.q_stride + static_cast<int64_t>(h) * p.head_dim
                   : p.k + r * p.k_stride + static_cast<int64_t>(h - p.q_heads) * p.head_dim;
    if constexpr (V == 4) {
      float4* pa = reinterpret_cast<float4*>(x + i0);
      float4* pb = reinterpret_cast<float4*>(x + i0 + half);
      const float4 a = *pa;
      const float4 b = *pb;
      *pa = make_float4(a.x * c[0] - b.x * s[0], a.y * c[1] - b.y * s[1], a.z * c[2] - b.z * s[2],
                        a.w * c[3] - b.w * s[3]);
      *pb = make_float4(b.x * c[0] + a.x * s[0], b.y * c[1] + a.y * s[1], b.z * c[2] + a.z * s[2],
                        b.w * c[3] + a.w * s[3]);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) RotatePair(x, half, i0 + v, c[v], s[v]);
    }
  }
}

bool Aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

template <int V>
int LaunchSharedAngle(const RopeParams& p, cudaStream_t stream) {
  const int half = p.rotary_dim / 2;
  const int heads = p.q_heads + p.k_heads;
  const int groups = (half + V - 1) / V;
  // Head chunks: enough blocks to fill the GPU, at least one head each.
  int64_t chunks = (kTargetBlocks + p.rows - 1) / p.rows;
  chunks = std::max<int64_t>(1, std::min<int64_t>(chunks, heads));
  const int heads_per_chunk = static_cast<int>((heads + chunks - 1) / chunks);
  chunks = (heads + heads_per_chunk - 1) / heads_per_chunk;
  if (groups > kMaxBlock) return -1;  // rotary_dim > 512 (V = 1): the per-element kernel
  const int lanes = std::max(1, std::min(heads_per_chunk, kMaxBlock / groups));
  if (p.rows > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  const dim3 grid(static_cast<unsigned>(p.rows), static_cast<unsigned>(chunks));
  const dim3 block(static_cast<unsigned>(groups), static_cast<unsigned>(lanes));
  (void)LaunchPdl(RopeSharedAngleKernel<V>, dim3(grid), dim3(block), 0, stream, p, heads_per_chunk);
  return LaunchResult();
}

int LaunchPerElement(const RopeParams& p, cudaStream_t stream) {
  const int64_t threads = p.rows * (p.q_heads + p.k_heads) * (p.rotary_dim / 2);
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  (void)LaunchPdl(RopePerElementKernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0,
                  stream, p);
  return LaunchResult();
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
    // Only k: rotate it through the q slot (the kernels always walk q first).
    params.q = params.k;
    params.q_stride = params.k_stride;
    params.q_heads = params.k_heads;
    params.k = nullptr;
    params.k_heads = 0;
  }
  cudaStream_t s = AsStream(stream);
  if (p.variant == RopeVariant::kPerElement) return LaunchPerElement(params, s);
  const int half = p.rotary_dim / 2;
  const bool vec4 = half % 4 == 0 && p.head_dim % 4 == 0 && params.q_stride % 4 == 0 &&
                    Aligned16(params.q) &&
                    (params.k_heads == 0 || (params.k_stride % 4 == 0 && Aligned16(params.k)));
  int rc = -1;
  if (vec4 && p.variant != RopeVariant::kSharedAngleScalar) {
    rc = LaunchSharedAngle<4>(params, s);
  } else {
    rc = LaunchSharedAngle<1>(params, s);
  }
  if (rc == -1) return LaunchPerElement(params, s);  // rotary dims beyond one block's pairs
  return rc;
}

}  // namespace hyla::kernels
