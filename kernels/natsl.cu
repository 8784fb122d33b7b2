// The NAtS-L kernels (API and semantics: kernels/natsl.h). CPU reference:
// runtime/cpu/natsl_layer.cc.
//
// All of them are small and memory-bound; they are written for exactness and clarity:
//   NatslChunkSums:    block per (segment, 256 features); thread per feature, sequential over
//                      the segment's rows (the CPU's addition order), then a second launch
//                      stores the new x_sum of every sequence.
//   NatslRouterLogits: thread per (chunk, output), the CPU Dot's 8-lane order.
//   NatslKvWrite:      grid-stride over (row, softmax head, element).
//   NatslDecodeCommit: block per (sequence, head); thread 0 updates g_sum, all threads copy or
//                      decay the [dk, dv] state.
//   NatslMixOutput:    warp per (row, softmax head), like GatedRmsNorm.
// Element-wise arithmetic that must follow the CPU's order uses __fadd_rn / __fmul_rn /
// __fmaf_rn (no contraction into fused multiply-adds the CPU does not do).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kBlockTokens = 64;
constexpr int64_t kMaxGrid = int64_t{1} << 20;

unsigned GridFor(int64_t count, int threads) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(kMaxGrid, (count + threads - 1) / threads)));
}

// ---- NatslChunkSums ------------------------------------------------------------------------

constexpr int kSumThreads = 256;

__global__ void __launch_bounds__(kSumThreads) ChunkSumsKernel(NatslChunkSumsParams p) {
  const NatslSegment seg = p.segments[blockIdx.x];
  const int64_t i = static_cast<int64_t>(blockIdx.y) * kSumThreads + threadIdx.x;
  if (i >= p.d) return;
  const int64_t slot = p.slots[seg.seq];
  float acc =
      (seg.flags & kNatslSegmentFirst) != 0 ? p.x_sum[slot * p.x_sum_slot_stride + i] : 0.0f;
  for (int64_t r = seg.row_begin; r < seg.row_end; ++r) {
    acc = __fadd_rn(acc, p.x[r * p.x_stride + i]);
  }
  if (seg.completion >= 0) {
    p.means[static_cast<int64_t>(seg.completion) * p.d + i] =
        __fdiv_rn(acc, static_cast<float>(kBlockTokens));
  }
  if ((seg.flags & kNatslSegmentLast) != 0) {
    p.new_x_sum[static_cast<int64_t>(seg.seq) * p.d + i] = seg.completion >= 0 ? 0.0f : acc;
  }
}

__global__ void __launch_bounds__(kSumThreads) StoreXSumKernel(NatslChunkSumsParams p) {
  const NatslSegment seg = p.segments[blockIdx.x];
  const int64_t i = static_cast<int64_t>(blockIdx.y) * kSumThreads + threadIdx.x;
  if (i >= p.d || (seg.flags & kNatslSegmentLast) == 0) return;
  const int64_t slot = p.slots[seg.seq];
  p.x_sum[slot * p.x_sum_slot_stride + i] = p.new_x_sum[static_cast<int64_t>(seg.seq) * p.d + i];
}

// ---- NatslRouterLogits ---------------------------------------------------------------------

constexpr int kRouterThreads = 128;

__global__ void __launch_bounds__(kRouterThreads)
    RouterLogitsKernel(const float* means, int num_chunks, int64_t d, const float* weight,
                       int outputs, float* logits) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRouterThreads + threadIdx.x;
  if (t >= static_cast<int64_t>(num_chunks) * outputs) return;
  const int64_t c = t / outputs;
  const int64_t o = t - c * outputs;
  const float* x = means + c * d;
  const float* w = weight + o * d;
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int64_t k = 0;
  for (; k + 8 <= d; k += 8) {
#pragma unroll
    for (int l = 0; l < 8; ++l) acc[l] = __fmaf_rn(x[k + l], w[k + l], acc[l]);
  }
  float tail = 0.0f;
  for (int64_t j = k; j < d; ++j) tail = __fmaf_rn(x[j], w[j], tail);
  const float hsum = __fadd_rn(__fadd_rn(__fadd_rn(acc[0], acc[4]), __fadd_rn(acc[1], acc[5])),
                               __fadd_rn(__fadd_rn(acc[2], acc[6]), __fadd_rn(acc[3], acc[7])));
  logits[t] = __fadd_rn(hsum, tail);
}

// ---- NatslKvWrite --------------------------------------------------------------------------

constexpr int kKvThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kKvThreads) KvWriteKernel(NatslKvWriteParams p) {
  const int Ha = p.num_heads * p.groups;
  const int per_head = p.dk + p.dv;
  const int64_t total = static_cast<int64_t>(p.num_rows) * Ha * per_head;
  T* kv = static_cast<T*>(p.kv);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kKvThreads + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * kKvThreads) {
    const int64_t m = t / (static_cast<int64_t>(Ha) * per_head);
    const int rest = static_cast<int>(t - m * Ha * per_head);
    const int a = rest / per_head;
    const int e = rest - a * per_head;
    const int n = a / p.groups;
    const int g = a - n * p.groups;
    const int64_t r = p.rows[m];
    const int64_t j = p.tokens[m];
    T* block = kv + static_cast<int64_t>(p.blocks[m * p.num_heads + n]) * p.block_stride;
    if (e < p.dk) {
      block[(j * p.groups + g) * p.dk + e] =
          FromFloat<T>(p.k[r * p.k_stride + static_cast<int64_t>(a) * p.dk + e]);
    } else {
      const int ev = e - p.dk;
      block[static_cast<int64_t>(kBlockTokens) * p.groups * p.dk + (j * p.groups + g) * p.dv + ev] =
          FromFloat<T>(p.v[r * p.v_stride + static_cast<int64_t>(a) * p.dv + ev]);
    }
  }
}

// ---- NatslDecodeCommit ---------------------------------------------------------------------

constexpr int kCommitThreads = 256;

__device__ __forceinline__ float SoftplusF(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

__global__ void __launch_bounds__(kCommitThreads) DecodeCommitKernel(NatslDecodeCommitParams p) {
  const int s = static_cast<int>(blockIdx.x / p.num_heads);
  const int n = static_cast<int>(blockIdx.x - static_cast<int64_t>(s) * p.num_heads);
  const int64_t slot = p.slots[s];
  if (slot < 0) return;  // padding row (uniform over the block)
  __shared__ float new_g_sum;
  const int decision = p.decision[static_cast<int64_t>(s) * p.num_heads + n];
  float* g_sum = p.g_sum + slot * p.g_sum_slot_stride + n;
  if (threadIdx.x == 0) {
    // The CPU's GdnDecayGate: (−exp(A_log)) · softplus(a + dt_bias), then g_sum += g.
    const float a = p.a[static_cast<int64_t>(s) * p.a_stride + n];
    const float g = __fmul_rn(-expf(p.a_log[n]), SoftplusF(__fadd_rn(a, p.dt_bias[n])));
    new_g_sum = __fadd_rn(*g_sum, g);
  }
  __syncthreads();
  const float gs = new_g_sum;
  if (decision >= 0) {
    const int64_t elems = static_cast<int64_t>(p.dk) * p.dv;
    float* S = p.state + slot * p.state_slot_stride + n * elems;
    float* Sc = p.committed + slot * p.committed_slot_stride + n * elems;
    if (decision > 0) {
      for (int64_t i = threadIdx.x; i < elems; i += kCommitThreads) Sc[i] = S[i];
    } else {
      const float decay = p.decay_uncommitted ? expf(gs) : 1.0f;
      for (int64_t i = threadIdx.x; i < elems; i += kCommitThreads) {
        const float c = p.decay_uncommitted ? __fmul_rn(Sc[i], decay) : Sc[i];
        Sc[i] = c;
        S[i] = c;
      }
    }
  }
  if (threadIdx.x == 0) *g_sum = decision >= 0 ? 0.0f : gs;
}

// ---- NatslMixOutput ------------------------------------------------------------------------

constexpr int kMixWarps = 4;
constexpr int kMixThreads = 32 * kMixWarps;

__global__ void __launch_bounds__(kMixThreads) MixOutputKernel(NatslMixOutputParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t tasks = p.rows * p.heads;
  const int64_t warp_step = static_cast<int64_t>(gridDim.x) * kMixWarps;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kMixWarps + threadIdx.x / 32; t < tasks;
       t += warp_step) {  // uniform per warp
    const int64_t r = t / p.heads;
    const int64_t a = t - r * p.heads;
    const int64_t ar = p.attn_rows != nullptr ? p.attn_rows[r] : r;
    const float* x1 = p.o_gdn + r * p.o_gdn_stride + a * p.dv;
    const float* x2 = p.o_attn + ar * p.o_attn_stride + a * p.dv;
    const float* z = p.z + r * p.z_stride + a * p.dv;
    float* y = p.y + r * p.y_stride + a * p.dv;
    float ss1 = 0.0f, ss2 = 0.0f;
    for (int i = lane; i < p.dv; i += 32) {
      ss1 += x1[i] * x1[i];
      ss2 += x2[i] * x2[i];
    }
    ss1 = WarpSum(ss1);
    ss2 = WarpSum(ss2);
    // The CPU's RmsNorm: inv = 1 / sqrt(Σx² / n + eps).
    const float n = static_cast<float>(p.dv);
    const float inv1 = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss1, n), p.eps)));
    const float inv2 = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss2, n), p.eps)));
    // The CPU's Softmax over the two ops.
    const float l0 = p.mix[r * p.mix_stride + 2 * a];
    const float l1 = p.mix[r * p.mix_stride + 2 * a + 1];
    const float mx = fmaxf(l0, l1);
    const float e0 = expf(__fadd_rn(l0, -mx));
    const float e1 = expf(__fadd_rn(l1, -mx));
    const float inv_s = __fdiv_rn(1.0f, __fadd_rn(e0, e1));
    const float m0 = __fmul_rn(e0, inv_s);
    const float m1 = __fmul_rn(e1, inv_s);
    for (int i = lane; i < p.dv; i += 32) {
      const float n1 = __fmul_rn(__fmul_rn(x1[i], inv1), p.w_gdn[i]);
      const float n2 = __fmul_rn(__fmul_rn(x2[i], inv2), p.w_attn[i]);
      const float zi = z[i];
      const float mixed = __fadd_rn(__fmul_rn(n1, m0), __fmul_rn(n2, m1));
      y[i] = __fmul_rn(__fmul_rn(mixed, zi), __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-zi))));
    }
  }
}

}  // namespace

int NatslChunkSums(const NatslChunkSumsParams& p, void* stream) {
  if (p.num_segments < 0 || p.num_seqs < 0 || p.num_completions < 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.num_segments == 0) return static_cast<int>(cudaSuccess);
  if (p.d < 1 || p.num_seqs < 1 || p.x == nullptr || p.x_stride < p.d || p.segments == nullptr ||
      p.slots == nullptr || p.x_sum == nullptr || p.x_sum_slot_stride < p.d ||
      p.new_x_sum == nullptr || (p.num_completions > 0 && p.means == nullptr)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t feature_blocks = (p.d + kSumThreads - 1) / kSumThreads;
  if (feature_blocks > 65535) return static_cast<int>(cudaErrorInvalidValue);
  const dim3 grid(static_cast<unsigned>(p.num_segments), static_cast<unsigned>(feature_blocks));
  ChunkSumsKernel<<<grid, kSumThreads, 0, AsStream(stream)>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  StoreXSumKernel<<<grid, kSumThreads, 0, AsStream(stream)>>>(p);
  return LaunchResult();
}

int NatslRouterLogits(const float* means, int num_chunks, int64_t d, const float* weight,
                      int outputs, float* logits, void* stream) {
  if (num_chunks < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (num_chunks == 0) return static_cast<int>(cudaSuccess);
  if (means == nullptr || weight == nullptr || logits == nullptr || d < 1 || outputs < 1) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t total = static_cast<int64_t>(num_chunks) * outputs;
  const int64_t blocks = (total + kRouterThreads - 1) / kRouterThreads;
  if (blocks > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  RouterLogitsKernel<<<static_cast<unsigned>(blocks), kRouterThreads, 0, AsStream(stream)>>>(
      means, num_chunks, d, weight, outputs, logits);
  return LaunchResult();
}

int NatslKvWrite(const NatslKvWriteParams& p, void* stream) {
  if (p.num_rows < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.num_rows == 0) return static_cast<int>(cudaSuccess);
  const int64_t Ha = static_cast<int64_t>(p.num_heads) * p.groups;
  if (p.num_heads < 1 || p.groups < 1 || p.dk < 1 || p.dv < 1 || p.rows == nullptr ||
      p.tokens == nullptr || p.blocks == nullptr || p.k == nullptr || p.v == nullptr ||
      p.kv == nullptr || p.k_stride < Ha * p.dk || p.v_stride < Ha * p.dv ||
      p.block_stride < int64_t{kBlockTokens} * p.groups * (p.dk + p.dv)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t total = static_cast<int64_t>(p.num_rows) * Ha * (p.dk + p.dv);
  const unsigned grid = GridFor(total, kKvThreads);
  if (p.kv_dtype == KernelDType::kF32) {
    KvWriteKernel<float><<<grid, kKvThreads, 0, AsStream(stream)>>>(p);
  } else if (p.kv_dtype == KernelDType::kBf16) {
    KvWriteKernel<__nv_bfloat16><<<grid, kKvThreads, 0, AsStream(stream)>>>(p);
  } else {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  return LaunchResult();
}

int NatslDecodeCommit(const NatslDecodeCommitParams& p, void* stream) {
  if (p.num_seqs < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.num_seqs == 0) return static_cast<int>(cudaSuccess);
  const int64_t state = static_cast<int64_t>(p.num_heads) * p.dk * p.dv;
  if (p.num_heads < 1 || p.dk < 1 || p.dv < 1 || p.a == nullptr || p.a_stride < p.num_heads ||
      p.a_log == nullptr || p.dt_bias == nullptr || p.slots == nullptr || p.decision == nullptr ||
      p.state == nullptr || p.state_slot_stride < state || p.committed == nullptr ||
      p.committed_slot_stride < state || p.g_sum == nullptr || p.g_sum_slot_stride < p.num_heads) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t blocks = static_cast<int64_t>(p.num_seqs) * p.num_heads;
  if (blocks > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  DecodeCommitKernel<<<static_cast<unsigned>(blocks), kCommitThreads, 0, AsStream(stream)>>>(p);
  return LaunchResult();
}

int NatslMixOutput(const NatslMixOutputParams& p, void* stream) {
  if (p.rows < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.rows == 0) return static_cast<int>(cudaSuccess);
  const int64_t width = static_cast<int64_t>(p.heads) * p.dv;
  if (p.heads < 1 || p.dv < 1 || p.o_gdn == nullptr || p.o_attn == nullptr || p.mix == nullptr ||
      p.z == nullptr || p.w_gdn == nullptr || p.w_attn == nullptr || p.y == nullptr ||
      p.o_gdn_stride < width || p.o_attn_stride < width || p.z_stride < width ||
      p.y_stride < width || p.mix_stride < 2 * int64_t{p.heads} || !(p.eps >= 0.0f)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t tasks = p.rows * p.heads;
  const int64_t blocks = std::min<int64_t>((tasks + kMixWarps - 1) / kMixWarps, kMaxGrid);
  MixOutputKernel<<<static_cast<unsigned>(blocks), kMixThreads, 0, AsStream(stream)>>>(p);
  return LaunchResult();
}

}  // namespace hyla::kernels
