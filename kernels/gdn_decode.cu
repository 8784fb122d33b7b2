// Gated DeltaNet decode: the fused one-token step (gates, q/k L2 norms, in-place fp32 state
// update, read-out) and the short-conv decode update. API and semantics: kernels/ops.h. CPU
// reference: runtime/cpu/gdn_core.h (GatedDeltaStep, GdnNormalizeQk, GdnDecayGate, GdnBeta,
// ShortConv).
//
// GdnDecode is bound by the state traffic (dk·dv·4 bytes read and written per (sequence, value
// head); everything else is a few hundred bytes). A tile is one (sequence, value head, kCols value
// columns) piece of S, [dk, kCols] fp32, held in registers: it is read once and written once.
// Thread layout (kCols · 4 threads): lane % (kCols / 4) picks 4 adjacent columns (one 16-byte
// access), lane / (kCols / 4) plus (32 / (kCols / 4))·warp picks a row phase 0..15, and a thread
// holds rows phase + 16·r (r < kRows), so one load instruction of a warp covers full row segments
// of kCols · 4 bytes and every thread holds kRows · 4 state values whatever kCols is. All state
// loads of a tile are issued before the q/k norms and the gates are computed, so their latency
// overlaps that work. The two reductions over dk (Sᵀk and Sᵀq) go through lane shuffles and a
// [warps, kCols] shared buffer.
//
// Variants (GdnDecodeVariant; kernels_bench times them all, the default is the best measured):
//   kTile32         one 32-column tile per CTA of 128 threads, plain loads/stores (the run-2
//                   kernel: 8192 CTAs at 2048 head-states of 128x128).
//   kTile32Stream   the same with evict-first state accesses (ld/st.global.cs): the state is
//                   touched once, so it should not displace anything in L1/L2; and registers
//                   capped at 64 (MinBlocks): 8 CTAs per SM instead of 5 (89 registers).
//   kTile64Stream   64-column tiles, 256 threads, evict-first, 64 registers: half the CTAs,
//                   256-byte row segments (better DRAM locality), the q/k norms computed half as
//                   often.
//   kTile64         kTile64Stream with plain loads/stores (isolates the cache hints).
//   kTile128Stream  whole 128-column heads, 512 threads, evict-first, 64 registers (2 CTAs per
//                   SM): one contiguous 64 KiB state per CTA. dk > 128: 64-column tiles.
//   kPersistent32   32-column tiles, evict-first, one CTA per resident slot (occupancy × SMs,
//                   rounded so every CTA gets the same number of tiles) looping over tiles t,
//                   t + grid, ...; the next tile's state loads are issued (into a second register
//                   set, 128 registers: 4 CTAs per SM) and its activations prefetched into L2
//                   before the current tile is finished, so a CTA never waits for a fresh CTA's
//                   first loads. dk > 128: one tile per CTA (two register sets of [256, 32] spill).
// Registers (nvcc 13 -Xptxas -v, sm_90, dk <= 128, 16-byte path, f32/bf16): kTile32 95/82 (5 and
// 6 CTAs per SM; the run-2 kernel had 89/86), every capped variant 64 (4-8 bytes of spills),
// kPersistent32 128 (8 bytes of spills).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kRowPhases = 16;  // rows covered by one register row of the CTA
constexpr int kMaxDk = 256;
constexpr float kL2NormEps = 1e-6f;  // cpu::kGdnL2NormEps

// PyTorch softplus (beta 1, threshold 20) and the sigmoid, as runtime/cpu/ops.h computes them.
__device__ __forceinline__ float SoftplusF(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }

// State accesses: evict-first (cache-streaming) when kStream.
template <bool kStream>
__device__ __forceinline__ float4 LoadState4(const float* p) {
  if (kStream) return __ldcs(reinterpret_cast<const float4*>(p));
  return *reinterpret_cast<const float4*>(p);
}
template <bool kStream>
__device__ __forceinline__ float LoadState1(const float* p) {
  if (kStream) return __ldcs(p);
  return *p;
}
template <bool kStream>
__device__ __forceinline__ void StoreState4(float* p, float4 v) {
  if (kStream) {
    __stcs(reinterpret_cast<float4*>(p), v);
  } else {
    *reinterpret_cast<float4*>(p) = v;
  }
}
template <bool kStream>
__device__ __forceinline__ void StoreState1(float* p, float v) {
  if (kStream) {
    __stcs(p, v);
  } else {
    *p = v;
  }
}

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

// The thread layout of a kCols-column tile (top of file).
template <int kCols>
struct TileLayout {
  static_assert(kCols == 32 || kCols == 64 || kCols == 128, "tile width");
  static constexpr int kThreads = kCols * 4;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kLanesPerRow = kCols / 4;
  static constexpr int kRowsPerWarp = 32 / kLanesPerRow;
  static_assert(kRowsPerWarp * kWarps == kRowPhases, "16 row phases");
};

// CTAs per SM asked of ptxas (__launch_bounds__): dk <= 128 with kCap: 64 registers a thread
// (the 32 state values and their addresses fit without spills), so that an SM holds 2048 threads'
// worth of tiles, 128 KiB of state loads in flight; otherwise 1 (no cap beyond the block size).
template <int kRows, int kCols, bool kCap>
constexpr int MinBlocks() {
  return kCap && kRows <= 8 ? 65536 / (64 * TileLayout<kCols>::kThreads) : 1;
}

template <int kRows, int kCols>
struct DecodeSmem {
  float qs[kRows * kRowPhases];
  float ks[kRows * kRowPhases];
  alignas(16) float red_u[TileLayout<kCols>::kWarps][kCols];
  alignas(16) float red_o[TileLayout<kCols>::kWarps][kCols];
  float gate[2];  // decay factor exp(g), β
};

// Sum over the kRowPhases row phases of the CTA for each of the thread's 4 columns: lanes with the
// same lane % kLanesPerRow are combined by shuffles, then the warps through `buf` (read in warp
// order). Every thread gets the totals of its columns. Ends with the buffer still in use: callers
// use a different buffer for the next reduction.
template <int kCols>
__device__ __forceinline__ void ReduceColumns(float (&v)[4], float (*buf)[kCols]) {
  using L = TileLayout<kCols>;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int off = L::kLanesPerRow; off < 32; off *= 2) {
#pragma unroll
    for (int c = 0; c < 4; ++c) v[c] += __shfl_xor_sync(0xffffffffu, v[c], off);
  }
  const int cg = lane % L::kLanesPerRow;
  if (lane < L::kLanesPerRow) {
    *reinterpret_cast<float4*>(&buf[warp][cg * 4]) = make_float4(v[0], v[1], v[2], v[3]);
  }
  __syncthreads();
  float total[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int w = 0; w < L::kWarps; ++w) {
    const float4 t = *reinterpret_cast<const float4*>(&buf[w][cg * 4]);
    total[0] += t.x;
    total[1] += t.y;
    total[2] += t.z;
    total[3] += t.w;
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) v[c] = total[c];
}

// Where tile `t` (tile fastest, then value head, then sequence) lives. state is nullptr for a
// padding row (slot < 0).
struct TileRef {
  int64_t s;
  int hv;
  int col_base;  // first column of the tile
  float* state;  // S of (slots[s], hv), or nullptr
};

__device__ __forceinline__ TileRef Locate(const GdnDecodeParams& p, int64_t t, int tiles,
                                          int cols) {
  TileRef r;
  const int tile = static_cast<int>(t % tiles);
  const int64_t rest = t / tiles;
  r.hv = static_cast<int>(rest % p.num_v_heads);
  r.s = rest / p.num_v_heads;
  r.col_base = tile * cols;
  const int32_t slot = p.slots[r.s];
  r.state = slot < 0 ? nullptr
                     : p.state + static_cast<int64_t>(slot) * p.state_slot_stride +
                           static_cast<int64_t>(r.hv) * p.dk * p.dv;
  return r;
}

// The thread's row phase and first column inside a tile.
template <int kCols>
__device__ __forceinline__ int RowPhase() {
  using L = TileLayout<kCols>;
  const int lane = threadIdx.x % 32;
  return lane / L::kLanesPerRow + L::kRowsPerWarp * static_cast<int>(threadIdx.x / 32);
}
template <int kCols>
__device__ __forceinline__ int ColOffset() {
  return static_cast<int>(threadIdx.x % 32) % TileLayout<kCols>::kLanesPerRow * 4;
}

// Issues the loads of the thread's part of the tile's state (zeros outside [dk, dv] and for a
// padding row).
template <int kRows, int kCols, bool kVec, bool kStream>
__device__ __forceinline__ void LoadTile(const GdnDecodeParams& p, const TileRef& ref,
                                         float (&reg)[kRows][4]) {
  const int phase = RowPhase<kCols>();
  const int col0 = ref.col_base + ColOffset<kCols>();
  const int dk = p.dk, dv = p.dv;
  const float* S = ref.state;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = phase + kRowPhases * r;
    if (kVec) {
      if (S != nullptr && row < dk && col0 < dv) {
        const float4 t = LoadState4<kStream>(S + static_cast<int64_t>(row) * dv + col0);
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
        reg[r][c] = (S != nullptr && row < dk && col0 + c < dv)
                        ? LoadState1<kStream>(S + static_cast<int64_t>(row) * dv + col0 + c)
                        : 0.0f;
      }
    }
  }
}

// Pulls the tile's activations (q and k head rows, its v columns, a, b) into L2, one line per
// thread, so the next ProcessTile does not wait on DRAM for them.
template <typename T, int kCols>
__device__ __forceinline__ void PrefetchActivations(const GdnDecodeParams& p, const TileRef& ref) {
  if (ref.state == nullptr) return;
  const int h = ref.hv / (p.num_v_heads / p.num_heads);
  const int qk_lines = (p.dk * static_cast<int>(sizeof(T)) + 127) / 128 + 1;
  const int v_lines = (kCols * static_cast<int>(sizeof(T)) + 127) / 128 + 1;
  int i = static_cast<int>(threadIdx.x);
  const char* addr = nullptr;
  int64_t bytes = 0;
  if (i < qk_lines) {
    addr = reinterpret_cast<const char*>(static_cast<const T*>(p.q) + ref.s * p.q_stride +
                                         static_cast<int64_t>(h) * p.dk);
    bytes = int64_t{p.dk} * sizeof(T);
  } else if ((i -= qk_lines) < qk_lines) {
    addr = reinterpret_cast<const char*>(static_cast<const T*>(p.k) + ref.s * p.k_stride +
                                         static_cast<int64_t>(h) * p.dk);
    bytes = int64_t{p.dk} * sizeof(T);
  } else if ((i -= qk_lines) < v_lines) {
    const int cols = min(kCols, p.dv - ref.col_base);
    addr = reinterpret_cast<const char*>(static_cast<const T*>(p.v) + ref.s * p.v_stride +
                                         static_cast<int64_t>(ref.hv) * p.dv + ref.col_base);
    bytes = int64_t{cols} * sizeof(T);
  } else if ((i -= v_lines) == 0) {
    addr = reinterpret_cast<const char*>(static_cast<const T*>(p.a) + ref.s * p.a_stride + ref.hv);
    bytes = sizeof(T);
  } else if (i == 1) {
    addr = reinterpret_cast<const char*>(static_cast<const T*>(p.b) + ref.s * p.b_stride + ref.hv);
    bytes = sizeof(T);
  } else {
    return;
  }
  // Line i of the range (the range may start mid-line, hence the + 1 lines above); clamped to its
  // last byte so nothing outside it is touched.
  const int64_t off = min(static_cast<int64_t>(i) * 128, bytes - 1);
  asm volatile("prefetch.global.L2 [%0];" ::"l"(addr + off));
}

// A padding row's tile: zeroes its o columns.
template <typename T, int kCols>
__device__ __forceinline__ void ZeroOutput(const GdnDecodeParams& p, const TileRef& ref) {
  const int col0 = ref.col_base + ColOffset<kCols>();
  T* o = static_cast<T*>(p.o) + ref.s * p.o_stride + static_cast<int64_t>(ref.hv) * p.dv;
  if (RowPhase<kCols>() == 0) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (col0 + c < p.dv) o[col0 + c] = FromFloat<T>(0.0f);
    }
  }
}

// Finishes one tile whose state is in `reg` (LoadTile): gates and q/k norms, decay, u = β·(v −
// Sᵀk), the rank-1 write and its store, o = Sᵀq. A padding row only zeroes its o columns. Every
// thread of the CTA calls it with the same tile (it has barriers). The shared memory it writes
// first (qs, ks, gate) is last read before the barrier of the second reduction, and each
// reduction buffer is rewritten only after a barrier that follows its last read, so calls may
// follow each other without another barrier.
template <typename T, int kRows, int kCols, bool kVec, bool kStream>
__device__ __forceinline__ void ProcessTile(const GdnDecodeParams& p, const TileRef& ref,
                                            float (&reg)[kRows][4], DecodeSmem<kRows, kCols>& sm) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int phase = RowPhase<kCols>();
  const int col0 = ref.col_base + ColOffset<kCols>();
  const int dk = p.dk, dv = p.dv;
  const int64_t s = ref.s;
  const int hv = ref.hv;
  T* o = static_cast<T*>(p.o) + s * p.o_stride + static_cast<int64_t>(hv) * dv;
  float* S = ref.state;
  if (S == nullptr) {  // padding row: zero its output, touch no state
    ZeroOutput<T, kCols>(p, ref);
    return;
  }
  const T* vrow = static_cast<const T*>(p.v) + s * p.v_stride + static_cast<int64_t>(hv) * dv;
  float vv[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) vv[c] = col0 + c < dv ? ToFloat(vrow[col0 + c]) : 0.0f;

  // 1. q/k norms (warps 0 and 1) and gates (warp 2) into shared memory.
  const int h = hv / (p.num_v_heads / p.num_heads);
  if (warp == 0) {
    NormalizeHeadWarp(static_cast<const T*>(p.q) + s * p.q_stride + static_cast<int64_t>(h) * dk,
                      dk, kRows * kRowPhases, p.q_scale, sm.qs);
  } else if (warp == 1) {
    NormalizeHeadWarp(static_cast<const T*>(p.k) + s * p.k_stride + static_cast<int64_t>(h) * dk,
                      dk, kRows * kRowPhases, 1.0f, sm.ks);
  } else if (warp == 2 && lane == 0) {
    const float a = ToFloat(static_cast<const T*>(p.a)[s * p.a_stride + hv]);
    const float b = ToFloat(static_cast<const T*>(p.b)[s * p.b_stride + hv]);
    const float g = -expf(p.a_log[hv]) * SoftplusF(a + p.dt_bias[hv]);
    const float beta = SigmoidF(b);
    sm.gate[0] = expf(g);
    sm.gate[1] = p.allow_neg_eigval ? beta * 2.0f : beta;
  }
  __syncthreads();

  // 2. Decay, then u = β·(v − Sᵀk).
  const float decay = sm.gate[0];
  const float beta = sm.gate[1];
  float u[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float kr = sm.ks[phase + kRowPhases * r];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      reg[r][c] *= decay;
      u[c] += reg[r][c] * kr;
    }
  }
  ReduceColumns<kCols>(u, sm.red_u);
#pragma unroll
  for (int c = 0; c < 4; ++c) u[c] = beta * (vv[c] - u[c]);

  // 3. Rank-1 write, store, and o = Sᵀq of the new state.
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = phase + kRowPhases * r;
    const float kr = sm.ks[row];
    const float qr = sm.qs[row];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      reg[r][c] += kr * u[c];
      acc[c] += reg[r][c] * qr;
    }
    if (kVec) {
      if (row < dk && col0 < dv) {
        StoreState4<kStream>(S + static_cast<int64_t>(row) * dv + col0,
                             make_float4(reg[r][0], reg[r][1], reg[r][2], reg[r][3]));
      }
    } else {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (row < dk && col0 + c < dv) {
          StoreState1<kStream>(S + static_cast<int64_t>(row) * dv + col0 + c, reg[r][c]);
        }
      }
    }
  }
  ReduceColumns<kCols>(acc, sm.red_o);
  if (phase == 0) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (col0 + c < dv) o[col0 + c] = FromFloat<T>(acc[c]);
    }
  }
}

// One tile per CTA: grid = num_seqs · HV · ceil(dv / kCols) CTAs of kCols · 4 threads;
// kRows · 16 >= dk. kVec: 16-byte state accesses (dv % 4 == 0, state and slot stride 16-byte
// aligned).
template <typename T, int kRows, int kCols, bool kVec, bool kStream, bool kCap>
__global__ void __launch_bounds__(TileLayout<kCols>::kThreads, (MinBlocks<kRows, kCols, kCap>()))
    GdnDecodeKernel(GdnDecodeParams p, int tiles) {
  GridDependencyWait();
  __shared__ DecodeSmem<kRows, kCols> sm;
  const TileRef ref = Locate(p, blockIdx.x, tiles, kCols);
  if (ref.state == nullptr) {  // padding row
    ZeroOutput<T, kCols>(p, ref);
    return;
  }
  float reg[kRows][4];
  LoadTile<kRows, kCols, kVec, kStream>(p, ref, reg);
  ProcessTile<T, kRows, kCols, kVec, kStream>(p, ref, reg, sm);
}

// Persistent: CTA b handles tiles b, b + gridDim.x, ... (num_tiles in all), two register sets
// alternating so that the next tile's loads are in flight while the current one is finished.
// dk <= 128: at most 128 registers (two sets of 32 state values), 4 CTAs of 128 threads per SM.
template <typename T, int kRows, int kCols, bool kVec, bool kStream>
__global__ void __launch_bounds__(TileLayout<kCols>::kThreads,
                                  kRows <= 8 ? 65536 / (128 * TileLayout<kCols>::kThreads) : 1)
    GdnDecodePersistentKernel(GdnDecodeParams p, int tiles, int64_t num_tiles) {
  GridDependencyWait();
  __shared__ DecodeSmem<kRows, kCols> sm;
  const int64_t stride = gridDim.x;
  int64_t t = blockIdx.x;
  if (t >= num_tiles) return;
  float ra[kRows][4], rb[kRows][4];
  TileRef a = Locate(p, t, tiles, kCols);
  LoadTile<kRows, kCols, kVec, kStream>(p, a, ra);
  for (;;) {
    int64_t tn = t + stride;
    TileRef b{};
    if (tn < num_tiles) {
      b = Locate(p, tn, tiles, kCols);
      LoadTile<kRows, kCols, kVec, kStream>(p, b, rb);
      PrefetchActivations<T, kCols>(p, b);
    }
    ProcessTile<T, kRows, kCols, kVec, kStream>(p, a, ra, sm);
    if (tn >= num_tiles) break;
    t = tn + stride;
    if (t < num_tiles) {
      a = Locate(p, t, tiles, kCols);
      LoadTile<kRows, kCols, kVec, kStream>(p, a, ra);
      PrefetchActivations<T, kCols>(p, a);
    }
    ProcessTile<T, kRows, kCols, kVec, kStream>(p, b, rb, sm);
    if (t >= num_tiles) break;
  }
}

template <typename T, int kRows, int kCols, bool kVec, bool kStream, bool kCap, bool kPersistent>
int LaunchTiles(const GdnDecodeParams& p, cudaStream_t stream) {
  constexpr int kThreads = TileLayout<kCols>::kThreads;
  const int tiles = (p.dv + kCols - 1) / kCols;
  const int64_t num_tiles = static_cast<int64_t>(p.num_seqs) * p.num_v_heads * tiles;
  if constexpr (!kPersistent) {
    if (num_tiles > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
    (void)LaunchPdl(GdnDecodeKernel<T, kRows, kCols, kVec, kStream, kCap>,
                    dim3(static_cast<unsigned>(num_tiles)), dim3(kThreads), 0, stream, p, tiles);
  } else {
    // One CTA per resident slot, then as few CTAs as give every CTA the same number of tiles.
    int device = 0, sms = 0, per_sm = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) {
      err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    }
    if (err == cudaSuccess) {
      err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &per_sm, GdnDecodePersistentKernel<T, kRows, kCols, kVec, kStream>, kThreads, 0);
    }
    if (err != cudaSuccess) return static_cast<int>(err);
    const int64_t slots = std::max<int64_t>(int64_t{sms} * std::max(per_sm, 1), 1);
    const int64_t per_cta = (num_tiles + slots - 1) / slots;
    const int64_t grid = (num_tiles + per_cta - 1) / per_cta;
    (void)LaunchPdl(GdnDecodePersistentKernel<T, kRows, kCols, kVec, kStream>,
                    dim3(static_cast<unsigned>(grid)), dim3(kThreads), 0, stream, p, tiles,
                    num_tiles);
  }
  return LaunchResult();
}

template <typename T, int kRows, int kCols, bool kStream, bool kCap, bool kPersistent = false>
int LaunchVec(const GdnDecodeParams& p, cudaStream_t stream) {
  const bool vec = p.dv % 4 == 0 && p.state_slot_stride % 4 == 0 && IsAligned(p.state, 16);
  if (vec) return LaunchTiles<T, kRows, kCols, true, kStream, kCap, kPersistent>(p, stream);
  return LaunchTiles<T, kRows, kCols, false, kStream, kCap, kPersistent>(p, stream);
}

// dk > 128 (kRows 16): 512 threads cannot hold [256, 128] without spilling (128 registers at
// most), and two register sets of [256, 32] spill too, so kTile128Stream takes 64-column tiles
// and kPersistent32 the one-tile kernel there.
template <typename T, int kRows>
int LaunchVariant(const GdnDecodeParams& p, GdnDecodeVariant variant, cudaStream_t stream) {
  constexpr bool kSmallDk = kRows <= 8;
  constexpr int kWideCols = kSmallDk ? 128 : 64;
  switch (variant) {
    case GdnDecodeVariant::kTile32:
      return LaunchVec<T, kRows, 32, false, false>(p, stream);
    case GdnDecodeVariant::kTile64:
      return LaunchVec<T, kRows, 64, false, true>(p, stream);
    case GdnDecodeVariant::kTile64Stream:
      return LaunchVec<T, kRows, 64, true, true>(p, stream);
    case GdnDecodeVariant::kTile128Stream:
      return LaunchVec<T, kRows, kWideCols, true, true>(p, stream);
    case GdnDecodeVariant::kPersistent32:
      return LaunchVec<T, kRows, 32, true, false, kSmallDk>(p, stream);
    case GdnDecodeVariant::kTile32Stream:
    default:
      return LaunchVec<T, kRows, 32, true, true>(p, stream);
  }
}

// The kernel of kDefault. dk > 128: 64-column tiles need 138 registers (one CTA of 256 threads
// per SM), 32-column ones 127 (four of 128).
// Measured on the H100 (kernels_bench, 2026-11-23, bench/results/ of that day): 64-column tiles
// with plain loads/stores are the fastest at dk 128 (89.7-94.5% of copy at 2048-8192
// head-states, 1-3% ahead of the other variants); at dk 256 the 32-column kernel (87.3%).
GdnDecodeVariant DefaultVariant(int dk) {
  return dk <= 128 ? GdnDecodeVariant::kTile64 : GdnDecodeVariant::kTile32;
}

template <typename T>
int LaunchDecode(const GdnDecodeParams& p, cudaStream_t stream) {
  const GdnDecodeVariant v =
      p.variant == GdnDecodeVariant::kDefault ? DefaultVariant(p.dk) : p.variant;
  if (p.dk <= 32) return LaunchVariant<T, 2>(p, v, stream);
  if (p.dk <= 64) return LaunchVariant<T, 4>(p, v, stream);
  if (p.dk <= 128) return LaunchVariant<T, 8>(p, v, stream);
  return LaunchVariant<T, 16>(p, v, stream);
}

// ---- short conv decode ----------------------------------------------------------------------

constexpr int kConvThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kConvThreads) ShortConvDecodeKernel(ShortConvDecodeParams p) {
  GridDependencyWait();
  TriggerDependents();
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

// Four channels per thread: grid (ceil(C / 4 / kConvVecThreads), num_seqs), block
// kConvVecThreads. x, the kK weights of the 4 channels and the slot index are loaded together
// (x and w do not depend on the slot), then the kK - 1 tail rows as 16-byte packs; the shifted
// tail and out are stored after every load. Per channel the arithmetic of the scalar kernel.
constexpr int kConvVecThreads = 128;

template <typename T, int kK>
__global__ void __launch_bounds__(kConvVecThreads)
    ShortConvDecodeVecKernel(ShortConvDecodeParams p) {
  GridDependencyWait();
  TriggerDependents();
  constexpr int kTaps = kK - 1;
  const int64_t s = blockIdx.y;
  const int c =
      (static_cast<int>(blockIdx.x) * kConvVecThreads + static_cast<int>(threadIdx.x)) * 4;
  if (c >= p.channels) return;
  T* out = static_cast<T*>(p.out) + s * p.out_stride + c;
  const int32_t slot = p.slots[s];
  const Pack<T, 4> xp = LoadPack<T, 4>(static_cast<const T*>(p.x) + s * p.x_stride + c);
  float w[4][kK];
  const float* wp = p.weight + static_cast<int64_t>(c) * kK;
  if constexpr (kK == 4) {
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const Pack<float, 4> wm = LoadPack<float, 4>(wp + 4 * m);
#pragma unroll
      for (int j = 0; j < 4; ++j) w[m][j] = wm.v[j];
    }
  } else {
#pragma unroll
    for (int m = 0; m < 4; ++m) {
#pragma unroll
      for (int j = 0; j < kK; ++j) w[m][j] = wp[m * kK + j];
    }
  }
  if (slot < 0) {
    Pack<T, 4> zero;
#pragma unroll
    for (int m = 0; m < 4; ++m) zero.v[m] = FromFloat<T>(0.0f);
    StorePack<T, 4>(out, zero);
    return;
  }
  float* tail = p.tail + static_cast<int64_t>(slot) * p.tail_slot_stride + c;
  Pack<float, 4> t[kTaps > 0 ? kTaps : 1];
#pragma unroll
  for (int j = 0; j < kTaps; ++j)
    t[j] = LoadPack<float, 4>(tail + static_cast<int64_t>(j) * p.channels);
  Pack<float, 4> xf;
#pragma unroll
  for (int m = 0; m < 4; ++m) xf.v[m] = ToFloat(xp.v[m]);
  Pack<T, 4> res;
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    // Oldest tap first, the current input last (cpu::ShortConv's order).
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kTaps; ++j) acc += t[j].v[m] * w[m][j];
    acc += xf.v[m] * w[m][kTaps];
    res.v[m] = FromFloat<T>(p.silu ? acc / (1.0f + expf(-acc)) : acc);
  }
#pragma unroll
  for (int j = 1; j < kTaps; ++j)
    StorePack<float, 4>(tail + static_cast<int64_t>(j - 1) * p.channels, t[j]);
  if constexpr (kTaps > 0)
    StorePack<float, 4>(tail + static_cast<int64_t>(kTaps - 1) * p.channels, xf);
  StorePack<T, 4>(out, res);
}

template <typename T>
int LaunchShortConvVec(const ShortConvDecodeParams& p, cudaStream_t stream) {
  const int64_t bx = (p.channels / 4 + kConvVecThreads - 1) / kConvVecThreads;
  const dim3 grid(static_cast<unsigned>(bx), static_cast<unsigned>(p.num_seqs));
  switch (p.kernel) {
    case 1:
      (void)LaunchPdl(ShortConvDecodeVecKernel<T, 1>, dim3(grid), dim3(kConvVecThreads), 0, stream,
                      p);
      break;
    case 2:
      (void)LaunchPdl(ShortConvDecodeVecKernel<T, 2>, dim3(grid), dim3(kConvVecThreads), 0, stream,
                      p);
      break;
    case 3:
      (void)LaunchPdl(ShortConvDecodeVecKernel<T, 3>, dim3(grid), dim3(kConvVecThreads), 0, stream,
                      p);
      break;
    default:
      (void)LaunchPdl(ShortConvDecodeVecKernel<T, 4>, dim3(grid), dim3(kConvVecThreads), 0, stream,
                      p);
      break;
  }
  return LaunchResult();
}

// True when ShortConvDecodeVecKernel applies to p.
bool ShortConvVecApplies(const ShortConvDecodeParams& p) {
  const uintptr_t elem = p.dtype == KernelDType::kBf16 ? 2 : 4;
  return p.kernel >= 1 && p.kernel <= 4 && p.num_seqs <= 65535 && p.channels % 4 == 0 &&
         p.x_stride % 4 == 0 && p.out_stride % 4 == 0 && IsAligned(p.x, 4 * elem) &&
         IsAligned(p.out, 4 * elem) && IsAligned(p.weight, p.kernel == 4 ? 16 : 4) &&
         (p.kernel == 1 || (p.tail_slot_stride % 4 == 0 && IsAligned(p.tail, 16)));
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
      p.o_stride < static_cast<int64_t>(p.num_v_heads) * p.dv ||
      static_cast<int>(p.variant) < static_cast<int>(GdnDecodeVariant::kDefault) ||
      static_cast<int>(p.variant) > static_cast<int>(GdnDecodeVariant::kTile64)) {
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
      (p.kernel > 1 && p.tail_slot_stride < static_cast<int64_t>(p.kernel - 1) * p.channels) ||
      static_cast<int>(p.variant) < 0 ||
      static_cast<int>(p.variant) > static_cast<int>(ShortConvDecodeVariant::kVec4)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.variant != ShortConvDecodeVariant::kScalar && ShortConvVecApplies(p)) {
    if (p.dtype == KernelDType::kF32) return LaunchShortConvVec<float>(p, AsStream(stream));
    if (p.dtype == KernelDType::kBf16) {
      return LaunchShortConvVec<__nv_bfloat16>(p, AsStream(stream));
    }
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t total = static_cast<int64_t>(p.num_seqs) * p.channels;
  const int64_t blocks = std::min<int64_t>((total + kConvThreads - 1) / kConvThreads, 1 << 20);
  if (p.dtype == KernelDType::kF32) {
    (void)LaunchPdl(ShortConvDecodeKernel<float>, dim3(static_cast<unsigned>(blocks)),
                    dim3(kConvThreads), 0, AsStream(stream), p);
  } else if (p.dtype == KernelDType::kBf16) {
    (void)LaunchPdl(ShortConvDecodeKernel<__nv_bfloat16>, dim3(static_cast<unsigned>(blocks)),
                    dim3(kConvThreads), 0, AsStream(stream), p);
  } else {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  return LaunchResult();
}

}  // namespace hyla::kernels
