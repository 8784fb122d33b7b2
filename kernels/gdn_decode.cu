// Gated DeltaNet decode: the fused one-token step (gates, q/k L2 norms, in-place fp32 state
// update, read-out) and the short-conv decode update. API and semantics: kernels/ops.h. CPU
// reference: runtime/cpu/gdn_core.h (GatedDeltaStep, GdnNormalizeQk, GdnDecayGate, GdnBeta,
// ShortConv).
//
// GdnDecode is bound by the state traffic (dk·dv·4 bytes read and written per (sequence, value
// head); everything else is a few hundred bytes). Each CTA owns one (sequence, value head, 32
// value columns) tile of S, [dk, 32] fp32, held in registers: it is read once and written once.
// Thread layout (128 threads): lane % 8 picks 4 adjacent columns (one 16-byte access), lane / 8
// plus 4·warp picks a row phase 0..15, and a thread holds rows phase + 16·r (r < kRows), so one
// load instruction of a warp covers 4 full 128-byte row segments. All state loads are issued
// before the q/k norms and the gates are computed, so their latency overlaps that work.
// The two reductions over dk (Sᵀk and Sᵀq) go through lane shuffles and a [4 warps, 32] buffer.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTileCols = 32;
constexpr int kRowPhases = 16;  // rows covered by one register row of the CTA
constexpr int kMaxDk = 256;
constexpr float kL2NormEps = 1e-6f;  // cpu::kGdnL2NormEps

// PyTorch softplus (beta 1, threshold 20) and the sigmoid, as runtime/cpu/ops.h computes them.
__device__ __forceinline__ float SoftplusF(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }

// x ← x / sqrt(Σx² + eps) · scale over n values of one head, by one warp, into dst [n]; entries
// n..padded-1 of dst are zeroed.
template <typename T>
__device__ __forceinline__ void NormalizeHeadWarp(const T* x, int n, int padded, float scale,
                                                  float* dst) {
  const int lane = threadIdx.x % 32;
  float ss = 0.0f;
  for (int i = lane; i < n; i += 32) {
    const float v = ToFloat(x[i]);
    ss += v * v;
  }
  ss = WarpSum(ss);
  const float inv = 1.0f / sqrtf(ss + kL2NormEps);
  for (int i = lane; i < padded; i += 32) dst[i] = i < n ? (ToFloat(x[i]) * inv) * scale : 0.0f;
}

// Sum over the kRowPhases row phases of the CTA for each of the thread's 4 columns: lanes with the
// same lane % 8 are combined by shuffles, then the 4 warps through `buf` (read in warp order).
// Every thread gets the totals of its columns. Ends with the buffer still in use: callers use a
// different buffer for the next reduction.
__device__ __forceinline__ void ReduceColumns(float (&v)[4], float (*buf)[kTileCols]) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    v[c] += __shfl_xor_sync(0xffffffffu, v[c], 8);
    v[c] += __shfl_xor_sync(0xffffffffu, v[c], 16);
  }
  if (lane < 8) {
#pragma unroll
    for (int c = 0; c < 4; ++c) buf[warp][lane * 4 + c] = v[c];
  }
  __syncthreads();
  const int cg = lane % 8;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += buf[w][cg * 4 + c];
    v[c] = total;
  }
}

// grid: num_seqs · HV · ceil(dv / 32) CTAs of kThreads; kRows · 16 >= dk. kVec: 16-byte state
// accesses (dv % 4 == 0, state and slot stride 16-byte aligned).
template <typename T, int kRows, bool kVec>
__global__ void __launch_bounds__(kThreads) GdnDecodeKernel(GdnDecodeParams p, int tiles) {
  __shared__ float qs[kRows * kRowPhases];
  __shared__ float ks[kRows * kRowPhases];
  __shared__ float red_u[kWarps][kTileCols];
  __shared__ float red_o[kWarps][kTileCols];
  __shared__ float gate[2];  // decay factor exp(g), β

  const int64_t bid = blockIdx.x;
  const int tile = static_cast<int>(bid % tiles);
  const int64_t rest = bid / tiles;
  const int hv = static_cast<int>(rest % p.num_v_heads);
  const int64_t s = rest / p.num_v_heads;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int cg = lane % 8;
  const int phase = lane / 8 + 4 * warp;
  const int col0 = tile * kTileCols + cg * 4;
  const int dk = p.dk, dv = p.dv;
  T* o = static_cast<T*>(p.o) + s * p.o_stride + static_cast<int64_t>(hv) * dv;

  const int32_t slot = p.slots[s];
  if (slot < 0) {  // padding row: zero its output, touch no state
    if (phase == 0) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (col0 + c < dv) o[col0 + c] = FromFloat<T>(0.0f);
      }
    }
    return;
  }
  float* S = p.state + static_cast<int64_t>(slot) * p.state_slot_stride +
             static_cast<int64_t>(hv) * dk * dv;

  // 1. Issue the state loads.
  float reg[kRows][4];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = phase + kRowPhases * r;
    if (kVec) {
      if (row < dk && col0 < dv) {
        const float4 t =
            *reinterpret_cast<const float4*>(S + static_cast<int64_t>(row) * dv + col0);
        reg[r][0] = t.x;
        reg[r][1] = t.y;
        reg[r][2] = t.z;
        reg[r][3] = t.w;
      } else {
#pragma unroll
        for (int c = 0; c < 4; ++c) reg[r][c] = 0.0f;
      }
    } else {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        reg[r][c] =
            (row < dk && col0 + c < dv) ? S[static_cast<int64_t>(row) * dv + col0 + c] : 0.0f;
      }
    }
  }
  const T* vrow = static_cast<const T*>(p.v) + s * p.v_stride + static_cast<int64_t>(hv) * dv;
  float vv[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) vv[c] = col0 + c < dv ? ToFloat(vrow[col0 + c]) : 0.0f;

  // 2. q/k norms (warps 0 and 1) and gates (warp 2) into shared memory.
  const int h = hv / (p.num_v_heads / p.num_heads);
  if (warp == 0) {
    NormalizeHeadWarp(static_cast<const T*>(p.q) + s * p.q_stride + static_cast<int64_t>(h) * dk,
                      dk, kRows * kRowPhases, p.q_scale, qs);
  } else if (warp == 1) {
    NormalizeHeadWarp(static_cast<const T*>(p.k) + s * p.k_stride + static_cast<int64_t>(h) * dk,
                      dk, kRows * kRowPhases, 1.0f, ks);
  } else if (warp == 2 && lane == 0) {
    const float a = ToFloat(static_cast<const T*>(p.a)[s * p.a_stride + hv]);
    const float b = ToFloat(static_cast<const T*>(p.b)[s * p.b_stride + hv]);
    const float g = -expf(p.a_log[hv]) * SoftplusF(a + p.dt_bias[hv]);
    const float beta = SigmoidF(b);
    gate[0] = expf(g);
    gate[1] = p.allow_neg_eigval ? beta * 2.0f : beta;
  }
  __syncthreads();

  // 3. Decay, then u = β·(v − Sᵀk).
  const float decay = gate[0];
  const float beta = gate[1];
  float u[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float kr = ks[phase + kRowPhases * r];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      reg[r][c] *= decay;
      u[c] += reg[r][c] * kr;
    }
  }
  ReduceColumns(u, red_u);
#pragma unroll
  for (int c = 0; c < 4; ++c) u[c] = beta * (vv[c] - u[c]);

  // 4. Rank-1 write, store, and o = Sᵀq of the new state.
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = phase + kRowPhases * r;
    const float kr = ks[row];
    const float qr = qs[row];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      reg[r][c] += kr * u[c];
      acc[c] += reg[r][c] * qr;
    }
    if (kVec) {
      if (row < dk && col0 < dv) {
        *reinterpret_cast<float4*>(S + static_cast<int64_t>(row) * dv + col0) =
            make_float4(reg[r][0], reg[r][1], reg[r][2], reg[r][3]);
      }
    } else {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (row < dk && col0 + c < dv) S[static_cast<int64_t>(row) * dv + col0 + c] = reg[r][c];
      }
    }
  }
  ReduceColumns(acc, red_o);
  if (phase == 0) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (col0 + c < dv) o[col0 + c] = FromFloat<T>(acc[c]);
    }
  }
}

template <typename T, int kRows>
int LaunchDecodeRows(const GdnDecodeParams& p, bool vec, cudaStream_t stream) {
  const int tiles = (p.dv + kTileCols - 1) / kTileCols;
  const int64_t blocks = static_cast<int64_t>(p.num_seqs) * p.num_v_heads * tiles;
  if (blocks > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  if (vec) {
    GdnDecodeKernel<T, kRows, true>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p, tiles);
  } else {
    GdnDecodeKernel<T, kRows, false>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p, tiles);
  }
  return LaunchResult();
}

template <typename T>
int LaunchDecode(const GdnDecodeParams& p, cudaStream_t stream) {
  const bool vec = p.dv % 4 == 0 && p.state_slot_stride % 4 == 0 && IsAligned(p.state, 16);
  if (p.dk <= 32) return LaunchDecodeRows<T, 2>(p, vec, stream);
  if (p.dk <= 64) return LaunchDecodeRows<T, 4>(p, vec, stream);
  if (p.dk <= 128) return LaunchDecodeRows<T, 8>(p, vec, stream);
  return LaunchDecodeRows<T, 16>(p, vec, stream);
}

// ---- short conv decode ----------------------------------------------------------------------

constexpr int kConvThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kConvThreads) ShortConvDecodeKernel(ShortConvDecodeParams p) {
  const int64_t total = static_cast<int64_t>(p.num_seqs) * p.channels;
  const int taps = p.kernel - 1;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kConvThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kConvThreads) {
    const int64_t s = i / p.channels;
    const int c = static_cast<int>(i - s * p.channels);
    T* out = static_cast<T*>(p.out) + s * p.out_stride + c;
    const int32_t slot = p.slots[s];
    if (slot < 0) {
      *out = FromFloat<T>(0.0f);
      continue;
    }
    const float x = ToFloat(static_cast<const T*>(p.x)[s * p.x_stride + c]);
    const float* w = p.weight + static_cast<int64_t>(c) * p.kernel;
    float* tail = p.tail + static_cast<int64_t>(slot) * p.tail_slot_stride + c;
    // Oldest tap first, the current input last (cpu::ShortConv's order); shift the tail as we go.
    float acc = 0.0f;
    for (int j = 0; j < taps; ++j) {
      const float hj = tail[static_cast<int64_t>(j) * p.channels];
      acc += hj * w[j];
      if (j > 0) tail[static_cast<int64_t>(j - 1) * p.channels] = hj;
    }
    acc += x * w[taps];
    if (taps > 0) tail[static_cast<int64_t>(taps - 1) * p.channels] = x;
    *out = FromFloat<T>(p.silu ? acc / (1.0f + expf(-acc)) : acc);
  }
}

}  // namespace

int GdnDecode(const GdnDecodeParams& p, void* stream) {
  if (p.num_seqs < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.num_seqs == 0) return static_cast<int>(cudaSuccess);
  if (p.num_heads < 1 || p.num_v_heads < 1 || p.num_v_heads % p.num_heads != 0 || p.dk < 1 ||
      p.dk > kMaxDk || p.dv < 1 || p.q == nullptr || p.k == nullptr || p.v == nullptr ||
      p.a == nullptr || p.b == nullptr || p.a_log == nullptr || p.dt_bias == nullptr ||
      p.slots == nullptr || p.state == nullptr || p.o == nullptr ||
      p.q_stride < static_cast<int64_t>(p.num_heads) * p.dk ||
      p.k_stride < static_cast<int64_t>(p.num_heads) * p.dk ||
      p.v_stride < static_cast<int64_t>(p.num_v_heads) * p.dv || p.a_stride < p.num_v_heads ||
      p.b_stride < p.num_v_heads ||
      p.state_slot_stride < static_cast<int64_t>(p.num_v_heads) * p.dk * p.dv ||
      p.o_stride < static_cast<int64_t>(p.num_v_heads) * p.dv) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.dtype == KernelDType::kF32) return LaunchDecode<float>(p, AsStream(stream));
  if (p.dtype == KernelDType::kBf16) return LaunchDecode<__nv_bfloat16>(p, AsStream(stream));
  return static_cast<int>(cudaErrorInvalidValue);
}

int ShortConvDecode(const ShortConvDecodeParams& p, void* stream) {
  if (p.num_seqs < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.num_seqs == 0) return static_cast<int>(cudaSuccess);
  if (p.channels < 1 || p.kernel < 1 || p.x == nullptr || p.weight == nullptr ||
      p.slots == nullptr || p.out == nullptr || (p.kernel > 1 && p.tail == nullptr) ||
      p.x_stride < p.channels || p.out_stride < p.channels ||
      (p.kernel > 1 && p.tail_slot_stride < static_cast<int64_t>(p.kernel - 1) * p.channels)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t total = static_cast<int64_t>(p.num_seqs) * p.channels;
  const int64_t blocks = std::min<int64_t>((total + kConvThreads - 1) / kConvThreads, 1 << 20);
  if (p.dtype == KernelDType::kF32) {
    ShortConvDecodeKernel<float>
        <<<static_cast<unsigned>(blocks), kConvThreads, 0, AsStream(stream)>>>(p);
  } else if (p.dtype == KernelDType::kBf16) {
    ShortConvDecodeKernel<__nv_bfloat16>
        <<<static_cast<unsigned>(blocks), kConvThreads, 0, AsStream(stream)>>>(p);
  } else {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  return LaunchResult();
}

}  // namespace hyla::kernels
