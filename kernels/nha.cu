// NHA token mixer core: slot recurrence, window ring and the joint softmax. API and semantics:
// kernels/nha.h. CPU reference: NhaLayer::RunHead (runtime/cpu/nha_layer.cc).
//
// The CPU walks the rows of a (sequence, KV head) one by one. Only the state update is
// sequential, and it is elementwise: H_K[i, m] depends on the update tokens' k[i], α[m], s[m]
// only, H_V[m, j] on v[j], α[m], s[m]. The slot logits of a row need a column of H_K (all i of
// one m), its slot read-out a column of H_V (all m of one j), and the joint softmax needs both
// the slot logits and the window logits. So the work is cut as follows (launch order):
//   1. prepare, per (row, KV head): the row's ring entry in fp32 ("tok": k, SiLU(v), gate), the
//      slot update the row applies ("upd": SiLU(k_u), v_u, α_u, s_u of token u = p − kv_shift,
//      from the ring, an earlier row or the row itself) and SiLU(q) of its query heads.
//   2. scan (sequences of more than C rows): per (sequence, KV head, 1024 state elements), walk
//      all rows, store the state at every chunk start (snapshots), write the final state.
//   3. slot logits, per (chunk, KV head, 16 slots): a warp owns 4 slots × all dk (lanes over i,
//      state in registers), walks the chunk's rows: update, then scale·SiLU(q)ᵀH_K[:, m] for the
//      G query heads (warp sums). A one-chunk sequence starts from and writes back its slot.
//   4. window + joint softmax, per (tile of T rows, KV head): one warp per (row, query head);
//      32-key tiles of RoPE'd keys and values in shared memory (from the ring before the step,
//      from this step's tok rows after), online softmax, then the join with the slot logits: the
//      slot probabilities replace the logits, the window part of o goes to o.
//   5. slot values, per (chunk, KV head, 128 value columns): a lane owns one column j and all
//      M slots of it (registers), walks the chunk's rows: update, o = SiLU(o_win + Σ π_m H_V[m,
//      j]).
//   6. ring write: the last R rows of every sequence enter the ring (after every read of it).
// Every state element goes through the same update operations in the same order in the scan and
// in the chunk kernels, so the chunked result equals the sequential one bitwise.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kPrepThreads = 128;
constexpr int kScanThreads = 256;
constexpr int kScanPerThread = 4;                         // state elements per scan thread
constexpr int kScanStageFloats = 8192;                    // staged update rows (32 KiB)
constexpr int kSlotsPerWarp = 4;                          // slot-logit kernel
constexpr int kLogitWarps = 4;                            // slot-logit CTA: 16 slots
constexpr int kLogitSlots = kSlotsPerWarp * kLogitWarps;  // slots per slot-logit CTA
constexpr int kValueThreads = 128;                        // slot-value CTA: 128 value columns
constexpr int kKeyTile = 32;                              // window kernel: keys per tile
constexpr int kMaxWindowWarps = 16;                       // T · G
constexpr int kMaxCols = kNhaMaxHeadDim / 32;             // value columns per lane (window)
constexpr int kDefaultSmem = 48 * 1024;

// Everything the kernels read, with the derived sizes and the workspace carved up.
struct NhaDev {
  int num_seqs;
  int H, Hkv, G, dk, dv, M, W, shift, R;
  int RE;     // ring entry: dk + dv + M
  int UE;     // update entry: dk + dv + 2M (SiLU(k), v, α, s)
  int64_t E;  // state floats per KV head: dk·M + M·dv
  float scale, norm;
  const float* inv_freq;
  const float* q;
  const float* k;
  const float* v;
  const float* f;
  int64_t q_stride, k_stride, v_stride, f_stride;
  const int32_t* cu;
  const int64_t* start;
  const int32_t* slots;
  float* hk;
  float* hv;
  int64_t state_stride;
  void* ring;
  int64_t ring_stride;
  float* o;
  int64_t o_stride;
  int C, T;
  int scan_rows;          // update rows staged at a time by the scan
  const int32_t* chunks;  // nullptr: item i = (sequence i, row 0, no snapshot)
  const int32_t* tiles;   // nullptr: item i = (sequence i, row 0)
  const int32_t* scans;
  float* qf;    // [rows, H, dk]
  float* tok;   // [rows, Hkv, RE]
  float* upd;   // [rows, Hkv, UE]
  float* lg;    // [rows, H, M] slot logits, then slot probabilities
  float* snap;  // [snapshots, Hkv, E]
};

// ---- elementwise maps, in the CPU's operation order (no fused multiply-add) -----------------

__device__ __forceinline__ float SiluX(float x) { return __fdiv_rn(x, __fadd_rn(1.0f, expf(-x))); }
// logsigmoid(x) / normalizer (cpu::LogSigmoid).
__device__ __forceinline__ float GateX(float x, float norm) {
  const float ls = x < 0.0f ? __fsub_rn(x, log1pf(expf(x))) : -log1pf(expf(-x));
  return __fdiv_rn(ls, norm);
}
// One state element: h·a + x·s.
__device__ __forceinline__ float StepX(float h, float a, float x, float s) {
  return __fadd_rn(__fmul_rn(h, a), __fmul_rn(x, s));
}
// The pair (x[i], x[i + dk/2]) rotated to position pos (cpu::ApplyRope).
__device__ __forceinline__ void RopeX(float a, float b, int64_t pos, float inv_freq, float* ra,
                                      float* rb) {
  const float angle = __fmul_rn(static_cast<float>(pos), inv_freq);
  float sn, cs;
  sincosf(angle, &sn, &cs);
  *ra = __fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn));
  *rb = __fadd_rn(__fmul_rn(b, cs), __fmul_rn(a, sn));
}
// x as stored in the ring and read back.
template <typename T>
__device__ __forceinline__ float RoundTo(float x) {
  return ToFloat(FromFloat<T>(x));
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// The sequence owning packed row `row`: the largest s with cu[s] <= row.
__device__ __forceinline__ int SeqOfRow(const int32_t* cu, int num_seqs, int64_t row) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= row) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

struct ChunkItem {
  int seq, first, snap;
};
__device__ __forceinline__ ChunkItem GetChunk(const NhaDev& d, int item) {
  if (d.chunks == nullptr) return {item, 0, -1};
  return {d.chunks[3 * item], d.chunks[3 * item + 1], d.chunks[3 * item + 2]};
}

// ---- 1. prepare ----------------------------------------------------------------------------
// Grid (rows, Hkv). Writes tok, upd (of KV head h) and qf (of h's query heads) for one row.
template <typename RingT>
__global__ void __launch_bounds__(kPrepThreads) NhaPrepKernel(NhaDev d) {
  const int64_t row = blockIdx.x;
  const int h = blockIdx.y;
  const int s = SeqOfRow(d.cu, d.num_seqs, row);
  const int32_t slot = d.slots[s];
  if (slot < 0) return;
  const int dk = d.dk, dv = d.dv, M = d.M;
  const int64_t start = d.start[s];
  const int64_t p = start + (row - d.cu[s]);

  // The row's own token (the ring entry it will become), fp32.
  const float* kr = d.k + row * d.k_stride + int64_t{h} * dk;
  const float* vr = d.v + row * d.v_stride + int64_t{h} * dv;
  const float* fr = d.f + row * d.f_stride + int64_t{h} * M;
  float* tok = d.tok + (row * d.Hkv + h) * d.RE;
  for (int c = threadIdx.x; c < d.RE; c += blockDim.x) {
    float x;
    if (c < dk) {
      x = kr[c];
    } else if (c < dk + dv) {
      x = SiluX(vr[c - dk]);
    } else {
      x = GateX(fr[c - dk - dv], d.norm);
    }
    tok[c] = x;
  }

  // SiLU(q) of the query heads of h.
  for (int idx = threadIdx.x; idx < d.G * dk; idx += blockDim.x) {
    const int64_t qcol = int64_t{h} * d.G * dk + idx;
    d.qf[row * d.H * dk + qcol] = SiluX(d.q[row * d.q_stride + qcol]);
  }

  // The slot update of this row: token u = p − shift, from
  //   0: nowhere (u < 0; α = 1, s = 0: the state is unchanged),
  //   1: this row (kv_shift 0; unrounded, as the CPU's current token),
  //   2: an earlier row of this step (rounded as if read back from the ring),
  //   3: the ring.
  const int64_t u = p - d.shift;
  int mode;
  if (u < 0) {
    mode = 0;
  } else if (d.shift == 0) {
    mode = 1;
  } else if (u >= start) {
    mode = 2;
  } else {
    mode = 3;
  }
  const int64_t src_row = (mode == 1 || mode == 2) ? row - d.shift : row;
  const float* sk = d.k + src_row * d.k_stride + int64_t{h} * dk;
  const float* sv = d.v + src_row * d.v_stride + int64_t{h} * dv;
  const float* sf = d.f + src_row * d.f_stride + int64_t{h} * M;
  const RingT* re = nullptr;
  if (mode == 3) {
    re = static_cast<const RingT*>(d.ring) + int64_t{slot} * d.ring_stride +
         ((u % d.R) * d.Hkv + h) * d.RE;
  }
  float* upd = d.upd + (row * d.Hkv + h) * d.UE;
  for (int c = threadIdx.x; c < d.UE; c += blockDim.x) {
    float x = 0.0f;
    if (c < dk) {
      if (mode == 1) x = SiluX(sk[c]);
      if (mode == 2) x = SiluX(RoundTo<RingT>(sk[c]));
      if (mode == 3) x = SiluX(ToFloat(re[c]));
    } else if (c < dk + dv) {
      const int j = c - dk;
      if (mode == 1) x = SiluX(sv[j]);
      if (mode == 2) x = RoundTo<RingT>(SiluX(sv[j]));
      if (mode == 3) x = ToFloat(re[dk + j]);
    } else {
      const int m = (c - dk - dv) % M;
      const bool decay = c < dk + dv + M;
      if (mode == 0) {
        x = decay ? 1.0f : 0.0f;
      } else {
        float g;
        if (mode == 1) {
          g = GateX(sf[m], d.norm);
        } else if (mode == 2) {
          g = RoundTo<RingT>(GateX(sf[m], d.norm));
        } else {
          g = ToFloat(re[dk + dv + m]);
        }
        x = decay ? expf(__fmul_rn(kNhaDecayLogScale, g)) : __fsub_rn(1.0f, expf(g));
      }
    }
    upd[c] = x;
  }
}

// ---- 2. scan -------------------------------------------------------------------------------
// Grid (scans, Hkv, ceil(E / (kScanThreads · kScanPerThread))). Thread t of block z owns the
// state elements e = z·1024 + t + 256·q (q < 4) of its (sequence, KV head): e < dk·M is H_K[i, m]
// (e = i·M + m), else H_V[m, j] (e − dk·M = m·dv + j). Update rows are staged in shared memory
// scan_rows at a time.
__global__ void __launch_bounds__(kScanThreads) NhaScanKernel(NhaDev d) {
  extern __shared__ float stage[];  // [scan_rows][UE]
  const int s = d.scans[2 * blockIdx.x];
  const int snap_base = d.scans[2 * blockIdx.x + 1];
  const int h = blockIdx.y;
  const int32_t slot = d.slots[s];
  if (slot < 0) return;
  const int64_t row_begin = d.cu[s];
  const int rows = d.cu[s + 1] - d.cu[s];
  const int dk = d.dk, dv = d.dv, M = d.M;
  const int64_t hk_size = int64_t{dk} * M;
  float* hk = d.hk + int64_t{slot} * d.state_stride + int64_t{h} * hk_size;
  float* hv = d.hv + int64_t{slot} * d.state_stride + int64_t{h} * M * dv;

  float st[kScanPerThread];
  int xcol[kScanPerThread];  // column of the update row holding SiLU(k)[i] or v[j]
  int mcol[kScanPerThread];  // slot m
  int64_t elem[kScanPerThread];
#pragma unroll
  for (int q = 0; q < kScanPerThread; ++q) {
    const int64_t e = int64_t{blockIdx.z} * kScanThreads * kScanPerThread + threadIdx.x +
                      int64_t{q} * kScanThreads;
    elem[q] = e < d.E ? e : -1;
    st[q] = 0.0f;
    xcol[q] = 0;
    mcol[q] = 0;
    if (e < hk_size) {
      st[q] = hk[e];
      xcol[q] = static_cast<int>(e / M);
      mcol[q] = static_cast<int>(e % M);
    } else if (e < d.E) {
      const int64_t e2 = e - hk_size;
      st[q] = hv[e2];
      xcol[q] = dk + static_cast<int>(e2 % dv);
      mcol[q] = static_cast<int>(e2 / dv);
    }
  }
  for (int r0 = 0; r0 < rows; r0 += d.scan_rows) {
    const int nr = min(d.scan_rows, rows - r0);
    __syncthreads();
    for (int idx = threadIdx.x; idx < nr * d.UE; idx += blockDim.x) {
      const int rr = idx / d.UE;
      const int c = idx % d.UE;
      stage[idx] = d.upd[((row_begin + r0 + rr) * d.Hkv + h) * d.UE + c];
    }
    __syncthreads();
    for (int rr = 0; rr < nr; ++rr) {
      const int r = r0 + rr;
      const float* u = stage + rr * d.UE;
      if (r % d.C == 0) {
        float* snap = d.snap + (int64_t{snap_base + r / d.C} * d.Hkv + h) * d.E;
#pragma unroll
        for (int q = 0; q < kScanPerThread; ++q) {
          if (elem[q] >= 0) snap[elem[q]] = st[q];
        }
      }
#pragma unroll
      for (int q = 0; q < kScanPerThread; ++q) {
        st[q] = StepX(st[q], u[dk + dv + mcol[q]], u[xcol[q]], u[dk + dv + M + mcol[q]]);
      }
    }
  }
#pragma unroll
  for (int q = 0; q < kScanPerThread; ++q) {
    const int64_t e = elem[q];
    if (e < 0) continue;
    if (e < hk_size) {
      hk[e] = st[q];
    } else {
      hv[e - hk_size] = st[q];
    }
  }
}

// ---- 3. slot logits ------------------------------------------------------------------------
// Grid (chunks, Hkv, ceil(M / 16)), 4 warps. Warp w owns slots m0 + mm (m0 = 16·z + 4·w,
// mm < 4); lane owns rows i = lane + 32·k (k < KI) of H_K. Writes lg[row, qh, m].
template <int KI>
__global__ void __launch_bounds__(kLogitWarps * 32) NhaSlotLogitsKernel(NhaDev d) {
  const ChunkItem ci = GetChunk(d, blockIdx.x);
  const int h = blockIdx.y;
  const int32_t slot = d.slots[ci.seq];
  if (slot < 0) return;
  const int64_t row_begin = d.cu[ci.seq];
  const int n = min(d.C, d.cu[ci.seq + 1] - d.cu[ci.seq] - ci.first);
  if (n <= 0) return;
  const int dk = d.dk, dv = d.dv, M = d.M;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int m0 = blockIdx.z * kLogitSlots + warp * kSlotsPerWarp;
  if (m0 >= M) return;  // no barrier below: whole warps may leave

  float* home = d.hk + int64_t{slot} * d.state_stride + int64_t{h} * dk * M;
  const float* src =
      ci.snap < 0 ? home : d.snap + (int64_t{ci.snap} * d.Hkv + h) * d.E;  // H_K first
  float hk[KI][kSlotsPerWarp];
#pragma unroll
  for (int kq = 0; kq < KI; ++kq) {
    const int i = lane + 32 * kq;
#pragma unroll
    for (int mm = 0; mm < kSlotsPerWarp; ++mm) {
      const int m = m0 + mm;
      hk[kq][mm] = (i < dk && m < M) ? src[int64_t{i} * M + m] : 0.0f;
    }
  }
  for (int r = 0; r < n; ++r) {
    const int64_t row = row_begin + ci.first + r;
    const float* u = d.upd + (row * d.Hkv + h) * d.UE;
    float a[kSlotsPerWarp], sm[kSlotsPerWarp];
#pragma unroll
    for (int mm = 0; mm < kSlotsPerWarp; ++mm) {
      const int m = m0 + mm;
      a[mm] = m < M ? u[dk + dv + m] : 1.0f;
      sm[mm] = m < M ? u[dk + dv + M + m] : 0.0f;
    }
#pragma unroll
    for (int kq = 0; kq < KI; ++kq) {
      const int i = lane + 32 * kq;
      const float kf = i < dk ? u[i] : 0.0f;
#pragma unroll
      for (int mm = 0; mm < kSlotsPerWarp; ++mm) hk[kq][mm] = StepX(hk[kq][mm], a[mm], kf, sm[mm]);
    }
    for (int g = 0; g < d.G; ++g) {
      const int qh = h * d.G + g;
      const float* qf = d.qf + (row * d.H + qh) * dk;
      float qv[KI];
#pragma unroll
      for (int kq = 0; kq < KI; ++kq) {
        const int i = lane + 32 * kq;
        qv[kq] = i < dk ? qf[i] : 0.0f;
      }
      float* lg = d.lg + (row * d.H + qh) * M;
#pragma unroll
      for (int mm = 0; mm < kSlotsPerWarp; ++mm) {
        float part = 0.0f;
#pragma unroll
        for (int kq = 0; kq < KI; ++kq) part += qv[kq] * hk[kq][mm];
        part = WarpSum(part);
        if (lane == mm && m0 + mm < M) lg[m0 + mm] = part * d.scale;
      }
    }
  }
  if (ci.snap < 0) {
#pragma unroll
    for (int kq = 0; kq < KI; ++kq) {
      const int i = lane + 32 * kq;
#pragma unroll
      for (int mm = 0; mm < kSlotsPerWarp; ++mm) {
        const int m = m0 + mm;
        if (i < dk && m < M) home[int64_t{i} * M + m] = hk[kq][mm];
      }
    }
  }
}

// ---- 4. window + joint softmax -------------------------------------------------------------
// Grid (tiles, Hkv), T·G warps; warp w serves row r = w / G of the tile and query head
// qh = h·G + w % G. Shared memory: qs [T·G][dk] (RoPE'd queries), kself [T][dk] and vself [T][dv]
// (each row's own token, unrounded), ks [32][dk + 1] and vs [32][dv] (the key tile).
int64_t WindowSmemFloats(int T, int G, int dk, int dv) {
  return int64_t{T} * G * dk + int64_t{T} * (dk + dv) + int64_t{kKeyTile} * (dk + 1 + dv);
}

template <typename RingT>
__global__ void __launch_bounds__(kMaxWindowWarps * 32) NhaWindowKernel(NhaDev d) {
  extern __shared__ float smem[];
  const int h = blockIdx.y;
  int seq, first;
  if (d.tiles == nullptr) {
    seq = blockIdx.x;
    first = 0;
  } else {
    seq = d.tiles[2 * blockIdx.x];
    first = d.tiles[2 * blockIdx.x + 1];
  }
  const int32_t slot = d.slots[seq];
  if (slot < 0) return;
  const int64_t row_begin = d.cu[seq];
  const int nt = min(d.T, d.cu[seq + 1] - d.cu[seq] - first);
  if (nt <= 0) return;
  const int dk = d.dk, dv = d.dv, G = d.G, T = d.T, half = dk / 2;
  const int ks_stride = dk + 1;
  const int64_t start = d.start[seq];
  const int64_t p0 = start + first;
  const int64_t klo = max(int64_t{0}, p0 - d.W);
  const int64_t khi = p0 + nt - 1;
  const RingT* ring =
      d.R > 0 ? static_cast<const RingT*>(d.ring) + int64_t{slot} * d.ring_stride : nullptr;

  float* qs = smem;
  float* kself = qs + T * G * dk;
  float* vself = kself + T * dk;
  float* ks = vself + T * dv;
  float* vs = ks + kKeyTile * ks_stride;

  // Queries and the rows' own tokens.
  for (int idx = threadIdx.x; idx < T * G * half; idx += blockDim.x) {
    const int pair = idx / half;
    const int i = idx % half;
    const int r = pair / G;
    if (r >= nt) continue;
    const int qh = h * G + pair % G;
    const float* q = d.q + (row_begin + first + r) * d.q_stride + int64_t{qh} * dk;
    RopeX(q[i], q[i + half], p0 + r, d.inv_freq[i], &qs[pair * dk + i], &qs[pair * dk + i + half]);
  }
  for (int idx = threadIdx.x; idx < T * half; idx += blockDim.x) {
    const int r = idx / half;
    const int i = idx % half;
    if (r >= nt) continue;
    const float* t = d.tok + ((row_begin + first + r) * d.Hkv + h) * d.RE;
    RopeX(t[i], t[i + half], p0 + r, d.inv_freq[i], &kself[r * dk + i], &kself[r * dk + i + half]);
  }
  for (int idx = threadIdx.x; idx < T * dv; idx += blockDim.x) {
    const int r = idx / dv;
    const int j = idx % dv;
    if (r >= nt) continue;
    vself[idx] = d.tok[((row_begin + first + r) * d.Hkv + h) * d.RE + dk + j];
  }

  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int r = warp / G;
  const bool active = r < nt;
  const int64_t p = p0 + r;
  const int64_t vis_lo = max(int64_t{0}, p - d.W);
  const int ncols = (dv + 31) / 32;
  float m_run = -INFINITY;
  float l_run = 0.0f;
  float acc[kMaxCols];
#pragma unroll
  for (int c = 0; c < kMaxCols; ++c) acc[c] = 0.0f;

  for (int64_t kt0 = klo; kt0 <= khi; kt0 += kKeyTile) {
    const int nk = static_cast<int>(min(int64_t{kKeyTile}, khi - kt0 + 1));
    __syncthreads();  // the previous tile is consumed (and, first time, qs/kself/vself written)
    for (int idx = threadIdx.x; idx < nk * half; idx += blockDim.x) {
      const int kk = idx / half;
      const int i = idx % half;
      const int64_t kp = kt0 + kk;
      float a, b;
      if (kp < start) {
        const RingT* e = ring + ((kp % d.R) * d.Hkv + h) * d.RE;
        a = ToFloat(e[i]);
        b = ToFloat(e[i + half]);
      } else {
        const float* t = d.tok + ((row_begin + (kp - start)) * d.Hkv + h) * d.RE;
        a = RoundTo<RingT>(t[i]);
        b = RoundTo<RingT>(t[i + half]);
      }
      RopeX(a, b, kp, d.inv_freq[i], &ks[kk * ks_stride + i], &ks[kk * ks_stride + i + half]);
    }
    for (int idx = threadIdx.x; idx < nk * dv; idx += blockDim.x) {
      const int kk = idx / dv;
      const int j = idx % dv;
      const int64_t kp = kt0 + kk;
      float x;
      if (kp < start) {
        x = ToFloat(ring[((kp % d.R) * d.Hkv + h) * d.RE + dk + j]);
      } else {
        x = RoundTo<RingT>(d.tok[((row_begin + (kp - start)) * d.Hkv + h) * d.RE + dk + j]);
      }
      vs[kk * dv + j] = x;
    }
    __syncthreads();
    // Warp-uniform: skip tiles this row does not see (no barrier until the next iteration).
    if (!active || kt0 > p || kt0 + nk - 1 < vis_lo) continue;
    const int64_t kp = kt0 + lane;
    const bool vis = lane < nk && kp >= vis_lo && kp <= p;
    float logit = -INFINITY;
    if (vis) {
      const float* kv = kp == p ? kself + r * dk : ks + lane * ks_stride;
      const float* qv = qs + warp * dk;
      float s0 = 0.0f, s1 = 0.0f;
      int i = 0;
      for (; i + 1 < dk; i += 2) {
        s0 += qv[i] * kv[i];
        s1 += qv[i + 1] * kv[i + 1];
      }
      if (i < dk) s0 += qv[i] * kv[i];
      logit = d.scale * (s0 + s1);
    }
    const float m_new = fmaxf(m_run, WarpMax(logit));  // finite: some lane is visible
    const float corr = expf(m_run - m_new);
    const float pe = vis ? expf(logit - m_new) : 0.0f;
    l_run = l_run * corr + WarpSum(pe);
    m_run = m_new;
#pragma unroll
    for (int c = 0; c < kMaxCols; ++c) acc[c] *= corr;
    for (int kk = 0; kk < nk; ++kk) {
      const float pk = __shfl_sync(0xffffffffu, pe, kk);
      if (pk == 0.0f) continue;  // warp-uniform
      const float* vrow = kt0 + kk == p ? vself + r * dv : vs + kk * dv;
#pragma unroll
      for (int c = 0; c < kMaxCols; ++c) {
        const int j = lane + 32 * c;
        if (c < ncols && j < dv) acc[c] += pk * vrow[j];
      }
    }
  }
  if (!active) return;

  // Join with the slots: one softmax over [slots ; window].
  const int qh = h * G + warp % G;
  const int64_t row = row_begin + first + r;
  float* lg = d.lg + (row * d.H + qh) * d.M;
  float smax = -INFINITY;
  for (int m = lane; m < d.M; m += 32) smax = fmaxf(smax, lg[m]);
  const float m_tot = fmaxf(m_run, WarpMax(smax));
  float ssum = 0.0f;
  for (int m = lane; m < d.M; m += 32) ssum += expf(lg[m] - m_tot);
  const float wexp = expf(m_run - m_tot);
  const float inv = 1.0f / (l_run * wexp + WarpSum(ssum));
  for (int m = lane; m < d.M; m += 32) lg[m] = expf(lg[m] - m_tot) * inv;
  const float wscale = wexp * inv;
  float* o = d.o + row * d.o_stride + int64_t{qh} * dv;
#pragma unroll
  for (int c = 0; c < kMaxCols; ++c) {
    const int j = lane + 32 * c;
    if (c < ncols && j < dv) o[j] = acc[c] * wscale;
  }
}

// ---- 5. slot values ------------------------------------------------------------------------
// Grid (chunks, Hkv, ceil(dv / 128)), 128 threads; thread owns column j = 128·z + t of H_V, all
// M slots in registers (kMaxM >= M). o[row, qh, j] = SiLU(o_win + Σ_m π_m H_V[m, j]).
template <int kMaxM>
__global__ void __launch_bounds__(kValueThreads) NhaSlotValuesKernel(NhaDev d) {
  const ChunkItem ci = GetChunk(d, blockIdx.x);
  const int h = blockIdx.y;
  const int64_t row_begin = d.cu[ci.seq];
  const int n = min(d.C, d.cu[ci.seq + 1] - d.cu[ci.seq] - ci.first);
  if (n <= 0) return;
  const int dk = d.dk, dv = d.dv, M = d.M, G = d.G;
  const int j = blockIdx.z * kValueThreads + threadIdx.x;
  const bool jv = j < dv;
  const int32_t slot = d.slots[ci.seq];
  if (slot < 0) {  // padding: zero outputs
    for (int r = 0; r < n && jv; ++r) {
      float* o = d.o + (row_begin + ci.first + r) * d.o_stride + int64_t{h} * G * dv + j;
      for (int g = 0; g < G; ++g) o[int64_t{g} * dv] = 0.0f;
    }
    return;
  }
  float* home = d.hv + int64_t{slot} * d.state_stride + int64_t{h} * M * dv;
  const float* src =
      ci.snap < 0 ? home : d.snap + (int64_t{ci.snap} * d.Hkv + h) * d.E + int64_t{dk} * M;
  float hv[kMaxM];
#pragma unroll
  for (int m = 0; m < kMaxM; ++m) hv[m] = (m < M && jv) ? src[int64_t{m} * dv + j] : 0.0f;
  for (int r = 0; r < n; ++r) {
    const int64_t row = row_begin + ci.first + r;
    const float* u = d.upd + (row * d.Hkv + h) * d.UE;
    const float vj = jv ? u[dk + j] : 0.0f;
    const float* a = u + dk + dv;
    const float* sm = a + M;
#pragma unroll
    for (int m = 0; m < kMaxM; ++m) {
      if (m < M) hv[m] = StepX(hv[m], a[m], vj, sm[m]);
    }
    for (int g = 0; g < G; ++g) {
      const int qh = h * G + g;
      const float* pr = d.lg + (row * d.H + qh) * M;
      float acc = 0.0f;
#pragma unroll
      for (int m = 0; m < kMaxM; ++m) {
        if (m < M) acc = __fadd_rn(acc, __fmul_rn(pr[m], hv[m]));
      }
      if (jv) {
        float* o = d.o + row * d.o_stride + int64_t{qh} * dv + j;
        *o = SiluX(acc + *o);
      }
    }
  }
  if (ci.snap < 0 && jv) {
#pragma unroll
    for (int m = 0; m < kMaxM; ++m) {
      if (m < M) home[int64_t{m} * dv + j] = hv[m];
    }
  }
}

// ---- 6. ring write -------------------------------------------------------------------------
// Grid (rows, Hkv): the rows at the last R positions of their sequence store their token.
template <typename RingT>
__global__ void __launch_bounds__(kPrepThreads) NhaRingWriteKernel(NhaDev d) {
  const int64_t row = blockIdx.x;
  const int h = blockIdx.y;
  const int s = SeqOfRow(d.cu, d.num_seqs, row);
  const int32_t slot = d.slots[s];
  if (slot < 0) return;
  const int64_t r = row - d.cu[s];
  const int rows = d.cu[s + 1] - d.cu[s];
  if (r < rows - d.R) return;
  const int64_t p = d.start[s] + r;
  RingT* e =
      static_cast<RingT*>(d.ring) + int64_t{slot} * d.ring_stride + ((p % d.R) * d.Hkv + h) * d.RE;
  const float* t = d.tok + (row * d.Hkv + h) * d.RE;
  for (int c = threadIdx.x; c < d.RE; c += blockDim.x) e[c] = FromFloat<RingT>(t[c]);
}

// ---- launch --------------------------------------------------------------------------------

int64_t AlignFloats(int64_t n) { return (n + 63) / 64 * 64; }

struct Layout {
  int64_t qf, tok, upd, lg, snap, total;  // float offsets
};

Layout WorkspaceLayout(const NhaParams& p) {
  const int64_t rows = p.total_rows;
  const int64_t re = int64_t{p.dk} + p.dv + p.num_slots;
  const int64_t ue = int64_t{p.dk} + p.dv + 2 * int64_t{p.num_slots};
  const int64_t e = int64_t{p.dk} * p.num_slots + int64_t{p.num_slots} * p.dv;
  Layout l;
  l.qf = 0;
  l.tok = l.qf + AlignFloats(rows * p.num_heads * p.dk);
  l.upd = l.tok + AlignFloats(rows * p.num_kv_heads * re);
  l.lg = l.upd + AlignFloats(rows * p.num_kv_heads * ue);
  l.snap = l.lg + AlignFloats(rows * p.num_heads * p.num_slots);
  l.total = l.snap + AlignFloats(int64_t{p.work.num_snapshots} * p.num_kv_heads * e);
  return l;
}

bool ValidShape(int num_heads, int num_kv_heads) {
  return num_heads >= 1 && num_kv_heads >= 1 && num_heads % num_kv_heads == 0 &&
         num_heads / num_kv_heads <= kNhaMaxGroup && num_kv_heads <= 65535;
}

int TileRows(int group, int max_rows) {
  int t = std::max(1, kMaxWindowWarps / group);
  return std::max(1, std::min(t, max_rows));
}

template <typename F>
int SetSmem(F* kernel, int64_t bytes) {
  if (bytes <= kDefaultSmem) return 0;
  return static_cast<int>(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes)));
}

template <typename RingT>
int LaunchAll(const NhaParams& p, const NhaDev& d, cudaStream_t stream) {
  const dim3 row_grid(static_cast<unsigned>(p.total_rows), static_cast<unsigned>(d.Hkv));
  NhaPrepKernel<RingT><<<row_grid, kPrepThreads, 0, stream>>>(d);
  int err = LaunchResult();
  if (err != 0) return err;

  if (p.work.num_scans > 0) {
    const int64_t per_block = int64_t{kScanThreads} * kScanPerThread;
    const dim3 grid(static_cast<unsigned>(p.work.num_scans), static_cast<unsigned>(d.Hkv),
                    static_cast<unsigned>((d.E + per_block - 1) / per_block));
    const int64_t smem = int64_t{d.scan_rows} * d.UE * 4;
    err = SetSmem(NhaScanKernel, smem);
    if (err != 0) return err;
    NhaScanKernel<<<grid, kScanThreads, static_cast<size_t>(smem), stream>>>(d);
    err = LaunchResult();
    if (err != 0) return err;
  }

  if (p.work.num_chunks > 0) {
    const dim3 grid(static_cast<unsigned>(p.work.num_chunks), static_cast<unsigned>(d.Hkv),
                    static_cast<unsigned>((d.M + kLogitSlots - 1) / kLogitSlots));
    const int ki = (d.dk + 31) / 32;
    if (ki <= 1) {
      NhaSlotLogitsKernel<1><<<grid, kLogitWarps * 32, 0, stream>>>(d);
    } else if (ki <= 2) {
      NhaSlotLogitsKernel<2><<<grid, kLogitWarps * 32, 0, stream>>>(d);
    } else if (ki <= 4) {
      NhaSlotLogitsKernel<4><<<grid, kLogitWarps * 32, 0, stream>>>(d);
    } else {
      NhaSlotLogitsKernel<8><<<grid, kLogitWarps * 32, 0, stream>>>(d);
    }
    err = LaunchResult();
    if (err != 0) return err;
  }

  if (p.work.num_tiles > 0) {
    const int64_t smem = WindowSmemFloats(d.T, d.G, d.dk, d.dv) * 4;
    err = SetSmem(NhaWindowKernel<RingT>, smem);
    if (err != 0) return err;
    const dim3 grid(static_cast<unsigned>(p.work.num_tiles), static_cast<unsigned>(d.Hkv));
    NhaWindowKernel<RingT><<<grid, d.T * d.G * 32, static_cast<size_t>(smem), stream>>>(d);
    err = LaunchResult();
    if (err != 0) return err;
  }

  if (p.work.num_chunks > 0) {
    const dim3 grid(static_cast<unsigned>(p.work.num_chunks), static_cast<unsigned>(d.Hkv),
                    static_cast<unsigned>((d.dv + kValueThreads - 1) / kValueThreads));
    if (d.M <= 16) {
      NhaSlotValuesKernel<16><<<grid, kValueThreads, 0, stream>>>(d);
    } else if (d.M <= 32) {
      NhaSlotValuesKernel<32><<<grid, kValueThreads, 0, stream>>>(d);
    } else if (d.M <= 64) {
      NhaSlotValuesKernel<64><<<grid, kValueThreads, 0, stream>>>(d);
    } else {
      NhaSlotValuesKernel<128><<<grid, kValueThreads, 0, stream>>>(d);
    }
    err = LaunchResult();
    if (err != 0) return err;
  }

  if (d.R > 0) {
    NhaRingWriteKernel<RingT><<<row_grid, kPrepThreads, 0, stream>>>(d);
    err = LaunchResult();
    if (err != 0) return err;
  }
  return 0;
}

}  // namespace

int NhaMakePlan(const int32_t* host_cu_seqlens, int num_seqs, int num_heads, int num_kv_heads,
                int chunk_rows, NhaPlan* plan) {
  const int invalid = static_cast<int>(cudaErrorInvalidValue);
  if (plan == nullptr || num_seqs < 0 || chunk_rows < 1 || !ValidShape(num_heads, num_kv_heads) ||
      (num_seqs > 0 && host_cu_seqlens == nullptr)) {
    return invalid;
  }
  int max_rows = 0;
  if (num_seqs > 0 && host_cu_seqlens[0] != 0) return invalid;
  for (int s = 0; s < num_seqs; ++s) {
    const int n = host_cu_seqlens[s + 1] - host_cu_seqlens[s];
    if (n < 0) return invalid;
    max_rows = std::max(max_rows, n);
  }
  NhaWork w;
  w.chunk_rows = chunk_rows;
  w.tile_rows = TileRows(num_heads / num_kv_heads, max_rows);
  std::vector<int32_t> chunks, tiles, scans;
  int64_t snaps = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const int n = host_cu_seqlens[s + 1] - host_cu_seqlens[s];
    if (n > chunk_rows) {
      const int nc = (n + chunk_rows - 1) / chunk_rows;
      if (snaps + nc > INT_MAX) return invalid;
      scans.push_back(s);
      scans.push_back(static_cast<int32_t>(snaps));
      for (int c = 0; c < nc; ++c) {
        chunks.push_back(s);
        chunks.push_back(c * chunk_rows);
        chunks.push_back(static_cast<int32_t>(snaps + c));
      }
      snaps += nc;
    } else if (n > 0) {
      chunks.push_back(s);
      chunks.push_back(0);
      chunks.push_back(-1);
    }
    for (int t = 0; t < n; t += w.tile_rows) {
      tiles.push_back(s);
      tiles.push_back(t);
    }
  }
  w.num_chunks = static_cast<int>(chunks.size() / 3);
  w.num_tiles = static_cast<int>(tiles.size() / 2);
  w.num_scans = static_cast<int>(scans.size() / 2);
  w.num_snapshots = static_cast<int>(snaps);
  plan->work = w;
  plan->data.clear();
  plan->data.reserve(chunks.size() + tiles.size() + scans.size());
  plan->data.insert(plan->data.end(), chunks.begin(), chunks.end());
  plan->data.insert(plan->data.end(), tiles.begin(), tiles.end());
  plan->data.insert(plan->data.end(), scans.begin(), scans.end());
  return 0;
}

NhaWork NhaDecodeWork(int num_seqs) {
  NhaWork w;
  w.chunk_rows = 1;
  w.tile_rows = 1;
  w.num_chunks = std::max(0, num_seqs);
  w.num_tiles = std::max(0, num_seqs);
  return w;
}

size_t NhaWorkspaceBytes(const NhaParams& p) {
  if (p.total_rows <= 0 || p.num_seqs <= 0) return 0;
  return static_cast<size_t>(WorkspaceLayout(p).total) * sizeof(float);
}

int Nha(const NhaParams& p, void* stream) {
  const int invalid = static_cast<int>(cudaErrorInvalidValue);
  if (p.num_seqs < 0 || p.total_rows < 0) return invalid;
  if (p.num_seqs == 0 || p.total_rows == 0) return 0;
  if (!ValidShape(p.num_heads, p.num_kv_heads) || p.dk < 2 || p.dk % 2 != 0 ||
      p.dk > kNhaMaxHeadDim || p.dv < 1 || p.dv > kNhaMaxHeadDim || p.num_slots < 1 ||
      p.num_slots > kNhaMaxSlots || p.window < 0 || p.kv_shift < 0 || !std::isfinite(p.scale) ||
      !std::isfinite(p.gate_logit_normalizer) || p.gate_logit_normalizer == 0.0f ||
      p.total_rows > INT_MAX) {
    return invalid;
  }
  const int G = p.num_heads / p.num_kv_heads;
  const int R = std::max(p.window, p.kv_shift);
  if (p.inv_freq == nullptr || p.q == nullptr || p.k == nullptr || p.v == nullptr ||
      p.f == nullptr || p.cu_seqlens == nullptr || p.start_pos == nullptr || p.slots == nullptr ||
      p.hk == nullptr || p.hv == nullptr || p.o == nullptr || (R > 0 && p.ring == nullptr)) {
    return invalid;
  }
  const int64_t re = int64_t{p.dk} + p.dv + p.num_slots;
  const int64_t state_floats =
      int64_t{p.num_kv_heads} * (int64_t{p.dk} * p.num_slots + int64_t{p.num_slots} * p.dv);
  if (p.q_stride < int64_t{p.num_heads} * p.dk || p.k_stride < int64_t{p.num_kv_heads} * p.dk ||
      p.v_stride < int64_t{p.num_kv_heads} * p.dv ||
      p.f_stride < int64_t{p.num_kv_heads} * p.num_slots ||
      p.o_stride < int64_t{p.num_heads} * p.dv || p.state_slot_stride < state_floats ||
      (R > 0 && p.ring_slot_stride < int64_t{R} * p.num_kv_heads * re)) {
    return invalid;
  }
  const NhaWork& w = p.work;
  if (w.chunk_rows < 1 || w.tile_rows < 1 || w.tile_rows * G > kMaxWindowWarps ||
      w.num_chunks < 0 || w.num_tiles < 0 || w.num_scans < 0 || w.num_snapshots < 0) {
    return invalid;
  }
  if (p.plan == nullptr && (w.num_chunks != p.num_seqs || w.num_tiles != p.num_seqs ||
                            w.num_scans != 0 || w.tile_rows != 1)) {
    return invalid;
  }
  if (w.num_scans > 0 && w.num_snapshots < 1) return invalid;
  const size_t need = NhaWorkspaceBytes(p);
  if (p.workspace == nullptr || p.workspace_bytes < need || !IsAligned(p.workspace, 256)) {
    return invalid;
  }

  NhaDev d;
  d.num_seqs = p.num_seqs;
  d.H = p.num_heads;
  d.Hkv = p.num_kv_heads;
  d.G = G;
  d.dk = p.dk;
  d.dv = p.dv;
  d.M = p.num_slots;
  d.W = p.window;
  d.shift = p.kv_shift;
  d.R = R;
  d.RE = static_cast<int>(re);
  d.UE = p.dk + p.dv + 2 * p.num_slots;
  d.E = int64_t{p.dk} * p.num_slots + int64_t{p.num_slots} * p.dv;
  d.scale = p.scale;
  d.norm = p.gate_logit_normalizer;
  d.inv_freq = p.inv_freq;
  d.q = p.q;
  d.k = p.k;
  d.v = p.v;
  d.f = p.f;
  d.q_stride = p.q_stride;
  d.k_stride = p.k_stride;
  d.v_stride = p.v_stride;
  d.f_stride = p.f_stride;
  d.cu = p.cu_seqlens;
  d.start = p.start_pos;
  d.slots = p.slots;
  d.hk = p.hk;
  d.hv = p.hv;
  d.state_stride = p.state_slot_stride;
  d.ring = p.ring;
  d.ring_stride = p.ring_slot_stride;
  d.o = p.o;
  d.o_stride = p.o_stride;
  d.C = w.chunk_rows;
  d.T = w.tile_rows;
  d.scan_rows = std::max(1, std::min(64, kScanStageFloats / d.UE));
  if (p.plan == nullptr) {
    d.chunks = nullptr;
    d.tiles = nullptr;
    d.scans = nullptr;
  } else {
    d.chunks = p.plan;
    d.tiles = p.plan + int64_t{3} * w.num_chunks;
    d.scans = d.tiles + int64_t{2} * w.num_tiles;
  }
  const Layout l = WorkspaceLayout(p);
  float* ws = static_cast<float*>(p.workspace);
  d.qf = ws + l.qf;
  d.tok = ws + l.tok;
  d.upd = ws + l.upd;
  d.lg = ws + l.lg;
  d.snap = ws + l.snap;

  const cudaStream_t s = AsStream(stream);
  return p.ring_dtype == KernelDType::kBf16 ? LaunchAll<__nv_bfloat16>(p, d, s)
                                            : LaunchAll<float>(p, d, s);
}

}  // namespace hyla::kernels
