// Chunked Gated DeltaNet prefill (WY/UT form, chunk 64) over variable-length sequences, with the
// NAtS-L per-(chunk, head) commit/decay. API and semantics: kernels/ops.h; algorithm:
// reference/models.md §3.3; CPU reference: the per-token recurrence of runtime/cpu/gdn_core.h
// (and the NAtS-L layer's Decide for commit/decay).
//
// bf16 activations without commit and dk, dv in {64, 128} take the tensor-core path of
// kernels/gdn_prefill_mma.cu instead (GdnPrefillUsesTensorCores; bf16 intermediates). Everything
// else (fp32 always: the exact path) runs the kernels below.
//
// Three launches, all fp32 arithmetic (no tensor cores, so results stay within fp32 rounding of
// the recurrence):
//  1. GdnPrefillPieceKernel, one CTA per (piece, value head), all pieces in parallel: gates and
//     their in-piece cumulative sum G, L2-normalised q/k, A = StrictLower(diag(β)(KKᵀ ⊙ Γ)),
//     the intra-piece matrix P = tril(QKᵀ ⊙ Γ), Qg = Q ⊙ e^G, Kd = K ⊙ e^{G_last − G}, and the
//     forward substitution (I + A)·[W | U] = [diag(β e^G) K | diag(β) V] (one thread per column,
//     in place in shared memory). Everything goes to the workspace. V is held in slices of at
//     most 256 columns (one slice when dv <= 256; dv up to 512 takes two), so shared memory stays
//     within the dk = dv = 256 size; the first slice is substituted together with W.
//  2. GdnPrefillStateKernel, one CTA per (sequence, value head, 32 value columns), sequential
//     over the sequence's pieces, with the [dk, 32] state tile in shared memory:
//       V_new = U − W·S;  O = Qg·S + P·V_new;  S ← e^{G_last}·S + Kdᵀ·V_new
//     and the commit/decay at chunk ends. The state is read once and written once per call.
//  3. GdnPrefillGsumKernel (commit mode only): the new g_sum of every (sequence, value head),
//     written after kernel 2 has read the old one.
// Γ_ij = e^{G_i − G_j} is evaluated only for i >= j (the exponent is <= 0), so nothing overflows
// however strong the decay.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kChunk = 64;
constexpr int kMaxDk = 256;
constexpr int kMaxDv = 512;
constexpr int kMaxVSlice = 256;  // kernel 1: value columns held in shared memory at a time
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileCols = 32;
constexpr float kL2NormEps = 1e-6f;  // cpu::kGdnL2NormEps

__device__ __forceinline__ float SoftplusF(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }

__host__ __device__ __forceinline__ int RoundUp4(int x) { return (x + 3) / 4 * 4; }

// Workspace entry of one (piece, value head), in floats; every array starts 16-byte aligned.
struct EntryLayout {
  int ldk;  // row stride of W, Qg, Kd (dk rounded up to 4)
  int ldv;  // row stride of U (dv rounded up to 4)
  __host__ __device__ EntryLayout(int dk, int dv) : ldk(RoundUp4(dk)), ldv(RoundUp4(dv)) {}
  __host__ __device__ int64_t w() const { return 0; }
  __host__ __device__ int64_t qg() const { return int64_t{kChunk} * ldk; }
  __host__ __device__ int64_t kd() const { return int64_t{2} * kChunk * ldk; }
  __host__ __device__ int64_t u() const { return int64_t{3} * kChunk * ldk; }
  __host__ __device__ int64_t p() const { return u() + int64_t{kChunk} * ldv; }
  __host__ __device__ int64_t misc() const { return p() + int64_t{kChunk} * kChunk; }  // G_last, Σg
  __host__ __device__ int64_t size() const { return misc() + 4; }
};

// Kernel 1's value-column slices: as few as fit kMaxVSlice, of equal width (a multiple of 4) that
// covers RoundUp4(dv). dv <= 256: one slice of RoundUp4(dv) columns.
__host__ __device__ __forceinline__ int VSliceWidth(int dv) {
  const int ldv = RoundUp4(dv);
  const int slices = (ldv + kMaxVSlice - 1) / kMaxVSlice;
  return RoundUp4((ldv + slices - 1) / slices);
}

// Position of piece `lp` of a sequence with `sp` tokens already in the state and `len` new
// tokens: rows [begin, end) of the sequence.
struct PieceRange {
  int begin;
  int end;
};
__device__ __forceinline__ int FirstPieceLen(int64_t sp) {
  return kChunk - static_cast<int>(sp % kChunk);
}
__device__ __forceinline__ PieceRange PieceOf(int64_t sp, int len, int lp) {
  const int first = FirstPieceLen(sp);
  const int begin = lp == 0 ? 0 : first + (lp - 1) * kChunk;
  const int end = min(len, first + lp * kChunk);
  return {begin, end};
}

// Row stride (floats) of a [64, n] shared-memory matrix read as float4 rows by 8 lanes of
// consecutive rows: the stride in 16-byte units is odd, so such accesses are conflict-free.
__host__ __device__ __forceinline__ int PaddedStride(int n) {
  const int ld = RoundUp4(n);
  return (ld / 4) % 2 == 1 ? ld : ld + 4;
}

// ---- kernel 1: per (piece, value head) ---------------------------------------------------

// Loads value columns [v0, v0 + sv) of the piece's rows into Vs [64, sv] (zero beyond the
// piece's n rows and beyond dv).
template <typename T>
__device__ __forceinline__ void LoadVSlice(const GdnPrefillParams& p, int64_t first_row, int n,
                                           int hv, int v0, int sv, float* Vs) {
  const T* v = static_cast<const T*>(p.v);
  for (int i = threadIdx.x; i < kChunk * sv; i += kThreads) {
    const int r = i / sv, c = i % sv;
    Vs[i] =
        (r < n && v0 + c < p.dv)
            ? ToFloat(v[(first_row + r) * p.v_stride + static_cast<int64_t>(hv) * p.dv + v0 + c])
            : 0.0f;
  }
}

// Shared memory: Ks, Qs [64, sk], Vs [64, sv] (one value slice), A [64, 65], G, beta [64].
template <typename T>
__global__ void __launch_bounds__(kThreads) GdnPrefillPieceKernel(GdnPrefillParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int dk = p.dk, dv = p.dv, HV = p.num_v_heads;
  const int sk = PaddedStride(dk);
  const int sv = VSliceWidth(dv);
  float* Ks = smem;
  float* Qs = Ks + kChunk * sk;
  float* Vs = Qs + kChunk * sk;
  float* As = Vs + kChunk * sv;            // [64, 65]
  float* Gs = As + kChunk * (kChunk + 1);  // [64]
  float* Bs = Gs + kChunk;                 // [64] β
  float* Gl = Bs + kChunk;                 // [64] raw g

  const int piece = static_cast<int>(blockIdx.x / HV);
  const int hv = static_cast<int>(blockIdx.x % HV);
  const int h = hv / (HV / p.num_heads);
  // The sequence of this piece: the last s with piece_offsets[s] <= piece.
  int lo = 0, hi = p.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.piece_offsets[mid] <= piece) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int s = lo;
  const int64_t sp = p.start_pos != nullptr ? p.start_pos[s] : 0;
  const int row0 = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - row0;
  const PieceRange range = PieceOf(sp, len, piece - p.piece_offsets[s]);
  const int n = range.end - range.begin;
  const int64_t first_row = static_cast<int64_t>(row0) + range.begin;
  const int tid = threadIdx.x;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);

  // Gates of the piece's rows (padding rows: g = 0, β = 0, so they change nothing).
  if (tid < kChunk) {
    float g = 0.0f, beta = 0.0f;
    if (tid < n) {
      const int64_t r = first_row + tid;
      const float a = ToFloat(static_cast<const T*>(p.a)[r * p.a_stride + hv]);
      const float b = ToFloat(static_cast<const T*>(p.b)[r * p.b_stride + hv]);
      g = -expf(p.a_log[hv]) * SoftplusF(a + p.dt_bias[hv]);
      beta = SigmoidF(b);
      if (p.allow_neg_eigval) beta *= 2.0f;
    }
    Gl[tid] = g;
    Bs[tid] = beta;
  }
  // q, k rows of head h and the first value slice of head hv (zero padding rows and columns).
  for (int i = tid; i < kChunk * sk; i += kThreads) {
    const int r = i / sk, c = i % sk;
    float qv = 0.0f, kv = 0.0f;
    if (r < n && c < dk) {
      const int64_t row = first_row + r;
      qv = ToFloat(q[row * p.q_stride + static_cast<int64_t>(h) * dk + c]);
      kv = ToFloat(k[row * p.k_stride + static_cast<int64_t>(h) * dk + c]);
    }
    Qs[i] = qv;
    Ks[i] = kv;
  }
  LoadVSlice<T>(p, first_row, n, hv, 0, sv, Vs);
  __syncthreads();
  if (tid == 0) {  // in-piece cumulative gate, in token order
    float acc = 0.0f;
    for (int t = 0; t < kChunk; ++t) {
      acc += Gl[t];
      Gs[t] = acc;
    }
  }
  // L2 norms: one warp per row (q scaled after the norm, as cpu::GdnNormalizeQk).
  const int lane = tid % 32, warp = tid / 32;
  for (int r = warp; r < n; r += kWarps) {
    float ssq = 0.0f, ssk = 0.0f;
    for (int c = lane; c < dk; c += 32) {
      ssq += Qs[r * sk + c] * Qs[r * sk + c];
      ssk += Ks[r * sk + c] * Ks[r * sk + c];
    }
    const float invq = 1.0f / sqrtf(WarpSum(ssq) + kL2NormEps);
    const float invk = 1.0f / sqrtf(WarpSum(ssk) + kL2NormEps);
    for (int c = lane; c < dk; c += 32) {
      Qs[r * sk + c] = (Qs[r * sk + c] * invq) * p.q_scale;
      Ks[r * sk + c] = Ks[r * sk + c] * invk;
    }
  }
  __syncthreads();

  const EntryLayout lay(dk, dv);
  float* entry =
      static_cast<float*>(p.workspace) + (static_cast<int64_t>(piece) * HV + hv) * lay.size();
  // A (strict lower) and P (lower incl. diagonal): thread (ib, jb) computes rows ib + 16a and
  // columns jb + 16c, a, c < 4.
  {
    const int ib = tid / 16, jb = tid % 16;
    float kk[4][4] = {}, qk[4][4] = {};
    for (int d = 0; d < dk; d += 4) {
      float4 ki[4], qi[4], kj[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        ki[a] = *reinterpret_cast<const float4*>(Ks + (ib + 16 * a) * sk + d);
        qi[a] = *reinterpret_cast<const float4*>(Qs + (ib + 16 * a) * sk + d);
        kj[a] = *reinterpret_cast<const float4*>(Ks + (jb + 16 * a) * sk + d);
      }
#pragma unroll
      for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          kk[a][c] += ki[a].x * kj[c].x + ki[a].y * kj[c].y + ki[a].z * kj[c].z + ki[a].w * kj[c].w;
          qk[a][c] += qi[a].x * kj[c].x + qi[a].y * kj[c].y + qi[a].z * kj[c].z + qi[a].w * kj[c].w;
        }
      }
    }
    float* P = entry + lay.p();
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int i = ib + 16 * a;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int j = jb + 16 * c;
        const float decay = i >= j ? expf(Gs[i] - Gs[j]) : 0.0f;
        As[i * (kChunk + 1) + j] = i > j ? Bs[i] * kk[a][c] * decay : 0.0f;
        P[i * kChunk + j] = qk[a][c] * decay;
      }
    }
  }
  // Qg = Q ⊙ e^G and Kd = K ⊙ e^{G_last − G} (rows >= n are zero already).
  {
    const float g_last = Gs[kChunk - 1];
    float* Qg = entry + lay.qg();
    float* Kd = entry + lay.kd();
    for (int i = tid; i < kChunk * lay.ldk; i += kThreads) {
      const int r = i / lay.ldk, c = i % lay.ldk;
      Qg[i] = Qs[r * sk + c] * expf(Gs[r]);
      Kd[i] = Ks[r * sk + c] * expf(g_last - Gs[r]);
    }
    if (tid == 0) {
      entry[lay.misc()] = g_last;
      entry[lay.misc() + 1] = g_last;  // Σg of the piece (the same sequential sum)
    }
  }
  __syncthreads();
  // Forward substitution, one column of [W | U] per thread, in place in Ks / Vs:
  //   X_i = rhs_i − Σ_{j<i} A_ij X_j   with rhs = β e^G k (W) or β v (U).
  // Value slice by slice (W with the first); U columns [v0, v0 + sv) ∩ [0, ldv) per slice.
  float* W = entry + lay.w();
  float* U = entry + lay.u();
  for (int v0 = 0; v0 < lay.ldv; v0 += sv) {
    if (v0 > 0) {
      __syncthreads();  // the previous slice is written out of Vs
      LoadVSlice<T>(p, first_row, n, hv, v0, sv, Vs);
      __syncthreads();
    }
    const int wcols = v0 == 0 ? dk : 0;
    const int vcols = min(sv, dv - v0);
    for (int c = tid; c < wcols + vcols; c += kThreads) {
      const bool is_w = c < wcols;
      float* col = is_w ? Ks + c : Vs + (c - wcols);
      const int stride = is_w ? sk : sv;
      for (int i = 0; i < n; ++i) {
        float x = col[i * stride] * (is_w ? Bs[i] * expf(Gs[i]) : Bs[i]);
        for (int j = 0; j < i; ++j) x -= As[i * (kChunk + 1) + j] * col[j * stride];
        col[i * stride] = x;
      }
      for (int i = n; i < kChunk; ++i) col[i * stride] = 0.0f;
    }
    __syncthreads();
    if (v0 == 0) {
      for (int i = tid; i < kChunk * lay.ldk; i += kThreads) {
        const int r = i / lay.ldk, c = i % lay.ldk;
        W[i] = Ks[r * sk + c];
      }
    }
    const int vw = min(sv, lay.ldv - v0);
    if (vw == lay.ldv) {  // one slice covering U (dv <= 256): same layout
      for (int i = tid; i < kChunk * lay.ldv; i += kThreads) U[i] = Vs[i];
    } else {
      for (int i = tid; i < kChunk * vw; i += kThreads) {
        const int r = i / vw, c = i % vw;
        U[static_cast<int64_t>(r) * lay.ldv + v0 + c] = Vs[r * sv + c];
      }
    }
  }
}

// ---- kernel 2: per (sequence, value head, 32 value columns) ------------------------------

// Copies a [64, ld] row-major matrix (ld % 4 == 0) from global to shared memory, 16 bytes a move.
__device__ __forceinline__ void CopyRows(const float* src, int ld, float* dst, int dst_ld) {
  const int vecs = ld / 4;
  for (int i = threadIdx.x; i < kChunk * vecs; i += kThreads) {
    const int r = i / vecs, c = (i % vecs) * 4;
    *reinterpret_cast<float4*>(dst + r * dst_ld + c) =
        *reinterpret_cast<const float4*>(src + static_cast<int64_t>(r) * ld + c);
  }
}

// Shared memory: Ss [dk, 32], Buf [64, ldk], Ps [64, 64], Vn [64, 32].
// Thread layout: column j = tid % 32, row group tg = tid / 32 (the warp).
template <typename T>
__global__ void __launch_bounds__(kThreads) GdnPrefillStateKernel(GdnPrefillParams p, int tiles) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int dk = p.dk, dv = p.dv, HV = p.num_v_heads;
  const EntryLayout lay(dk, dv);
  float* Ss = smem;                    // [dk, 32]
  float* Buf = Ss + dk * kTileCols;    // [64, ldk]
  float* Ps = Buf + kChunk * lay.ldk;  // [64, 64]
  float* Vn = Ps + kChunk * kChunk;    // [64, 32]

  const int tile = static_cast<int>(blockIdx.x % tiles);
  const int hv = static_cast<int>((blockIdx.x / tiles) % HV);
  const int s = static_cast<int>(blockIdx.x / tiles / HV);
  const int row0 = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - row0;
  if (len <= 0) return;
  const int64_t sp = p.start_pos != nullptr ? p.start_pos[s] : 0;
  const int first_piece = p.piece_offsets[s];
  const int num_pieces = p.piece_offsets[s + 1] - first_piece;
  const int j = threadIdx.x % kTileCols;
  const int tg = threadIdx.x / kTileCols;
  const int col = tile * kTileCols + j;
  const bool col_ok = col < dv;
  const int64_t slot = p.slots[s];
  const int64_t head_off = static_cast<int64_t>(hv) * dk * dv;
  float* S = p.state + slot * p.state_slot_stride + head_off;
  float* Sc =
      p.committed != nullptr ? p.committed + slot * p.committed_slot_stride + head_off : nullptr;
  T* out = static_cast<T*>(p.o);

  for (int i = tg; i < dk; i += kWarps) {
    Ss[i * kTileCols + j] = col_ok ? S[static_cast<int64_t>(i) * dv + col] : 0.0f;
  }
  float g_acc = p.commit != nullptr ? p.g_sum[slot * p.g_sum_slot_stride + hv] : 0.0f;

  for (int lp = 0; lp < num_pieces; ++lp) {
    const int piece = first_piece + lp;
    const PieceRange range = PieceOf(sp, len, lp);
    const int n = range.end - range.begin;
    const float* entry = static_cast<const float*>(p.workspace) +
                         (static_cast<int64_t>(piece) * HV + hv) * lay.size();
    const float g_last = entry[lay.misc()];
    const float g_piece = entry[lay.misc() + 1];

    // V_new = U − W·S (rows t = tg + 8a).
    CopyRows(entry + lay.w(), lay.ldk, Buf, lay.ldk);
    for (int a = 0; a < kChunk / kWarps; ++a) {
      const int t = tg + kWarps * a;
      Vn[t * kTileCols + j] =
          col_ok ? entry[lay.u() + static_cast<int64_t>(t) * lay.ldv + col] : 0.0f;
    }
    __syncthreads();
    {
      float acc[kChunk / kWarps] = {};
      for (int i = 0; i < dk; ++i) {
        const float sij = Ss[i * kTileCols + j];
#pragma unroll
        for (int a = 0; a < kChunk / kWarps; ++a)
          acc[a] += Buf[(tg + kWarps * a) * lay.ldk + i] * sij;
      }
#pragma unroll
      for (int a = 0; a < kChunk / kWarps; ++a) {
        const int t = tg + kWarps * a;
        Vn[t * kTileCols + j] = t < n ? Vn[t * kTileCols + j] - acc[a] : 0.0f;
      }
    }
    __syncthreads();

    // O = Qg·S + P·V_new for the piece's rows.
    CopyRows(entry + lay.qg(), lay.ldk, Buf, lay.ldk);
    CopyRows(entry + lay.p(), kChunk, Ps, kChunk);
    __syncthreads();
    {
      float acc[kChunk / kWarps] = {};
      for (int i = 0; i < dk; ++i) {
        const float sij = Ss[i * kTileCols + j];
#pragma unroll
        for (int a = 0; a < kChunk / kWarps; ++a)
          acc[a] += Buf[(tg + kWarps * a) * lay.ldk + i] * sij;
      }
      for (int r = 0; r < n; ++r) {
        const float vr = Vn[r * kTileCols + j];
#pragma unroll
        for (int a = 0; a < kChunk / kWarps; ++a) acc[a] += Ps[(tg + kWarps * a) * kChunk + r] * vr;
      }
#pragma unroll
      for (int a = 0; a < kChunk / kWarps; ++a) {
        const int t = tg + kWarps * a;
        if (t < n && col_ok) {
          out[(static_cast<int64_t>(row0) + range.begin + t) * p.o_stride +
              static_cast<int64_t>(hv) * dv + col] = FromFloat<T>(acc[a]);
        }
      }
    }
    __syncthreads();

    // S ← e^{G_last}·S + Kdᵀ·V_new (rows i = tg + 8a of the tile).
    CopyRows(entry + lay.kd(), lay.ldk, Buf, lay.ldk);
    __syncthreads();
    {
      const float decay = expf(g_last);
      for (int i = tg; i < dk; i += kWarps) {
        float acc = Ss[i * kTileCols + j] * decay;
        for (int t = 0; t < n; ++t) acc += Buf[t * lay.ldk + i] * Vn[t * kTileCols + j];
        Ss[i * kTileCols + j] = acc;
      }
    }

    // NAtS-L: the decision at the end of a chunk (each thread touches only its own elements).
    if (p.commit != nullptr) {
      g_acc += g_piece;
      if ((sp + range.end) % kChunk == 0) {
        const bool commit = p.commit[static_cast<int64_t>(piece) * HV + hv] != 0;
        const float decay = p.decay_uncommitted ? expf(g_acc) : 1.0f;
        for (int i = tg; i < dk; i += kWarps) {
          if (!col_ok) continue;
          float* sc = Sc + static_cast<int64_t>(i) * dv + col;
          if (commit) {
            *sc = Ss[i * kTileCols + j];
          } else {
            const float c = *sc * decay;
            *sc = c;
            Ss[i * kTileCols + j] = c;
          }
        }
        g_acc = 0.0f;
      }
    }
    __syncthreads();
  }

  for (int i = tg; i < dk; i += kWarps) {
    if (col_ok) S[static_cast<int64_t>(i) * dv + col] = Ss[i * kTileCols + j];
  }
}

// ---- kernel 3: g_sum of every (sequence, value head) in commit mode ------------------------

__global__ void GdnPrefillGsumKernel(GdnPrefillParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(p.num_seqs) * p.num_v_heads) return;
  const int s = static_cast<int>(i / p.num_v_heads);
  const int hv = static_cast<int>(i % p.num_v_heads);
  const int len = p.cu_seqlens[s + 1] - p.cu_seqlens[s];
  if (len <= 0) return;
  const int64_t sp = p.start_pos != nullptr ? p.start_pos[s] : 0;
  const EntryLayout lay(p.dk, p.dv);
  float* g_sum = p.g_sum + static_cast<int64_t>(p.slots[s]) * p.g_sum_slot_stride + hv;
  float acc = *g_sum;
  for (int piece = p.piece_offsets[s]; piece < p.piece_offsets[s + 1]; ++piece) {
    const float* entry = static_cast<const float*>(p.workspace) +
                         (static_cast<int64_t>(piece) * p.num_v_heads + hv) * lay.size();
    acc += entry[lay.misc() + 1];
    const PieceRange range = PieceOf(sp, len, piece - p.piece_offsets[s]);
    if ((sp + range.end) % kChunk == 0) acc = 0.0f;
  }
  *g_sum = acc;
}

size_t PieceSmemBytes(int dk, int dv) {
  return sizeof(float) * (2 * kChunk * PaddedStride(dk) + kChunk * VSliceWidth(dv) +
                          kChunk * (kChunk + 1) + 3 * kChunk);
}
size_t StateSmemBytes(int dk, int dv) {
  const EntryLayout lay(dk, dv);
  return sizeof(float) * (dk * kTileCols + kChunk * lay.ldk + kChunk * kChunk + kChunk * kTileCols);
}

template <typename T>
int LaunchPrefill(const GdnPrefillParams& p, cudaStream_t stream) {
  const size_t piece_smem = PieceSmemBytes(p.dk, p.dv);
  const size_t state_smem = StateSmemBytes(p.dk, p.dv);
  cudaError_t err =
      cudaFuncSetAttribute(GdnPrefillPieceKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(piece_smem));
  if (err != cudaSuccess) return static_cast<int>(err);
  err = cudaFuncSetAttribute(GdnPrefillStateKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(state_smem));
  if (err != cudaSuccess) return static_cast<int>(err);
  const int64_t piece_blocks = static_cast<int64_t>(p.num_pieces) * p.num_v_heads;
  const int tiles = (p.dv + kTileCols - 1) / kTileCols;
  const int64_t state_blocks = static_cast<int64_t>(p.num_seqs) * p.num_v_heads * tiles;
  if (piece_blocks > INT_MAX || state_blocks > INT_MAX) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (piece_blocks > 0) {
    GdnPrefillPieceKernel<T>
        <<<static_cast<unsigned>(piece_blocks), kThreads, piece_smem, stream>>>(p);
    err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  GdnPrefillStateKernel<T>
      <<<static_cast<unsigned>(state_blocks), kThreads, state_smem, stream>>>(p, tiles);
  err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  if (p.commit != nullptr) {
    const int64_t n = static_cast<int64_t>(p.num_seqs) * p.num_v_heads;
    GdnPrefillGsumKernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(p);
  }
  return LaunchResult();
}

size_t Fp32WorkspaceBytes(int num_pieces, int num_v_heads, int dk, int dv) {
  if (num_pieces <= 0 || num_v_heads <= 0 || dk <= 0 || dv <= 0) return 0;
  const EntryLayout lay(dk, dv);
  return sizeof(float) * static_cast<size_t>(lay.size()) * static_cast<size_t>(num_pieces) *
         static_cast<size_t>(num_v_heads);
}

}  // namespace

namespace internal {
// kernels/gdn_prefill_mma.cu: the tensor-core path.
size_t GdnPrefillMmaWorkspaceBytes(int num_pieces, int num_v_heads, int dk, int dv);
int GdnPrefillMma(const GdnPrefillParams& p, void* stream);
}  // namespace internal

bool GdnPrefillUsesTensorCores(const GdnPrefillParams& p) {
  auto tc_dim = [](int d) { return d == 64 || d == 128; };
  return p.tensor_cores && p.dtype == KernelDType::kBf16 && p.commit == nullptr && tc_dim(p.dk) &&
         tc_dim(p.dv);
}

size_t GdnPrefillWorkspaceBytes(int num_pieces, int num_v_heads, int dk, int dv) {
  if (num_pieces <= 0 || num_v_heads <= 0 || dk <= 0 || dv <= 0) return 0;
  return std::max(Fp32WorkspaceBytes(num_pieces, num_v_heads, dk, dv),
                  internal::GdnPrefillMmaWorkspaceBytes(num_pieces, num_v_heads, dk, dv));
}

size_t GdnPrefillWorkspaceBytesFor(const GdnPrefillParams& p) {
  if (p.num_pieces <= 0 || p.num_v_heads <= 0 || p.dk <= 0 || p.dv <= 0) return 0;
  return GdnPrefillUsesTensorCores(p)
             ? internal::GdnPrefillMmaWorkspaceBytes(p.num_pieces, p.num_v_heads, p.dk, p.dv)
             : Fp32WorkspaceBytes(p.num_pieces, p.num_v_heads, p.dk, p.dv);
}

int GdnPrefillPlan(const int32_t* cu_seqlens, const int64_t* start_pos, int num_seqs,
                   int32_t* piece_offsets) {
  if (num_seqs < 0 || cu_seqlens == nullptr || piece_offsets == nullptr || cu_seqlens[0] != 0) {
    return -1;
  }
  int64_t total = 0;
  piece_offsets[0] = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const int64_t len = int64_t{cu_seqlens[s + 1]} - cu_seqlens[s];
    const int64_t sp = start_pos != nullptr ? start_pos[s] : 0;
    if (len < 0 || sp < 0) return -1;
    if (len > 0) {
      const int64_t first = kChunk - sp % kChunk;
      total += 1 + (len > first ? (len - first + kChunk - 1) / kChunk : 0);
    }
    if (total > INT_MAX) return -1;
    piece_offsets[s + 1] = static_cast<int32_t>(total);
  }
  return static_cast<int>(total);
}

int GdnPrefill(const GdnPrefillParams& p, void* stream) {
  if (p.num_seqs < 0 || p.num_pieces < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.num_seqs == 0) return static_cast<int>(cudaSuccess);
  const bool commit_ok =
      p.commit == nullptr || (p.committed != nullptr && p.g_sum != nullptr &&
                              p.committed_slot_stride >= int64_t{p.num_v_heads} * p.dk * p.dv &&
                              p.g_sum_slot_stride >= p.num_v_heads);
  if (p.num_heads < 1 || p.num_v_heads < 1 || p.num_v_heads % p.num_heads != 0 || p.dk < 1 ||
      p.dk > kMaxDk || p.dv < 1 || p.dv > kMaxDv || p.q == nullptr || p.k == nullptr ||
      p.v == nullptr || p.a == nullptr || p.b == nullptr || p.a_log == nullptr ||
      p.dt_bias == nullptr || p.cu_seqlens == nullptr || p.piece_offsets == nullptr ||
      p.slots == nullptr || p.state == nullptr || p.o == nullptr || !commit_ok ||
      p.q_stride < int64_t{p.num_heads} * p.dk || p.k_stride < int64_t{p.num_heads} * p.dk ||
      p.v_stride < int64_t{p.num_v_heads} * p.dv || p.a_stride < p.num_v_heads ||
      p.b_stride < p.num_v_heads || p.state_slot_stride < int64_t{p.num_v_heads} * p.dk * p.dv ||
      p.o_stride < int64_t{p.num_v_heads} * p.dv ||
      (p.num_pieces > 0 && (p.workspace == nullptr || !IsAligned(p.workspace, 16) ||
                            p.workspace_bytes < GdnPrefillWorkspaceBytesFor(p)))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (GdnPrefillUsesTensorCores(p)) {
    const int v = static_cast<int>(p.mma_variant);
    if (v < 0 || v > static_cast<int>(kLastGdnPrefillMmaVariant) || p.overlap_segments < 0) {
      return static_cast<int>(cudaErrorInvalidValue);
    }
    return internal::GdnPrefillMma(p, stream);
  }
  if (p.dtype == KernelDType::kF32) return LaunchPrefill<float>(p, AsStream(stream));
  if (p.dtype == KernelDType::kBf16) return LaunchPrefill<__nv_bfloat16>(p, AsStream(stream));
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace hyla::kernels
