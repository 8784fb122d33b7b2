// Tensor-core path of GdnPrefill (API and semantics: kernels/ops.h) for bf16 activations without
// the NAtS-L commit (plain GDN), dk and dv in {64, 128}; kernels/gdn_prefill.cu selects it
// (GdnPrefillUsesTensorCores) and keeps its fp32 kernels for everything else. The structure is
// the chunked WY/UT algorithm of reference/models.md §3.3 as fla's chunk_gated_delta_rule lays it
// out (three launches, bf16 intermediates, fp32 accumulation and state):
//
//  1. GdnMmaPieceKernel, one CTA (4 warps) per (piece, value head), all pieces in parallel: gates
//     g, β and the in-piece cumulative gate G (fp32), r_k = 1/‖k‖ per row, A = KKᵀ on mma (raw
//     bf16 k; the norms are applied in fp32 afterwards), A_ij = β_i r_i r_j e^{G_i−G_j} (KKᵀ)_ij
//     for i > j, T = (I + A)⁻¹ (unit lower triangular, fp32, by 16×16 blocks: the diagonal
//     blocks by forward substitution, then block distances 1, 2, 3), and on mma with T rounded
//     to bf16:  W = T·diag(β e^G r_k)K  [64, dk] and Uᵀ = (diag(β)V)ᵀ·Tᵀ  [dv, 64].
//     Stored per (piece, head) in the workspace: W, Uᵀ (bf16), G and r_k (fp32).
//     The *Solve2 variants (PieceBody's kFastSolve) do the same in parallel form: G by warp
//     scans, and each off-diagonal block as two small fp32 products T_ij = −T_ii·(Σ_k A_ik T_kj),
//     one warp per block of a distance, instead of a forward substitution per column after each
//     distance (4 CTA barriers instead of 7); V is loaded only once T is dead, into its space, so
//     the CTA takes 52 KB (four per SM, not 3). They also trim launch 1's instruction count (it
//     is issue-bound at 12-16 warps per SM): Γ by the hardware exp2 (__expf) and only on key
//     tiles at or left of the warp's rows, and K, V row scaling 8 elements (16 bytes) a step.
//     Fused *Solve2 variants store e^{G_last − G} r_k in place of r_k (the state pass's update
//     factor: 16 exponentials per lane and piece off launch 2's sequential path).
//  2. GdnMmaStateKernel, one CTA of kCols/16 warps per (sequence, value head, kCols value
//     columns), sequential over the sequence's pieces. Sᵀ [kCols, dk] lives in fp32 registers as
//     mma accumulators (warp w: rows 16w..16w+15, all dk columns), so it is also directly the A
//     operand (rounded to bf16) of
//       V_newᵀ = Uᵀ − Sᵀ·Wᵀ                                (stored bf16 over Uᵀ)
//       Sᵀ    ← e^{G_last}·Sᵀ + (V_new ⊙ e^{G_last−G} r_k)ᵀ·K   (raw k rows, bf16)
//     and Sᵀ at the piece start is stored (bf16) as h for launch 3. W, the piece's k rows and the
//     Uᵀ tile are copied with cp.async kStages − 1 pieces ahead of the one computed on (2 or 3
//     stages: a variant).
//  3. GdnMmaOutputKernel, one CTA (4 warps, 16 rows each) per (piece, value head):
//       O = diag(r_q e^G)·Q·h + tril(diag(r_q) QKᵀ diag(r_k) ⊙ Γ)·V_new,   r_q = q_scale/‖q‖
//     with Q, K the raw bf16 rows; written as bf16.
// Fused variants (GdnPrefillMmaVariant::kFused*) skip launch 3 and the per-piece h and V_new in
// memory: launch 1 also stores P = tril(diag(r_q) QKᵀ diag(r_k) ⊙ Γ) (bf16) and r_q e^G, and
// GdnMmaStateOutKernel computes, per piece, with the same Sᵀ A fragments as V_new,
//       Oᵀ = diag(r_q e^G)-scaled Sᵀ·Qᵀ + V_newᵀ·Pᵀ
// (raw q rows copied with the piece), staged through shared memory and written out while the
// next piece is computed. With Split2, two warps share 16 value rows, each holding half of dk's
// columns of Sᵀ; they add their partial Sᵀ·Wᵀ and Sᵀ·Qᵀ through shared memory (one extra
// barrier per piece) and halve the per-warp mma work on the sequential critical path; Split4
// (kFusedCols32Split4Solve2, dk = 128): four warps of 32 columns each, each adding three parts
// (8 warps a CTA: two per SM sub-partition hide each other's latency). A warp stores its partial
// Oᵀ only for its partners' token tiles and adds the partners' only on its own.
// Γ_ij = e^{G_i − G_j} is evaluated only for i >= j, as in the fp32 kernels. Padding rows of a
// short piece have k = v = 0, β = g = 0 and r = 0: W, U and V_new rows are zero there.
// Overlapped variants (kOverlap*, LaunchOverlapped; the default for one sequence of >= 16
// pieces): launch 1 and the fused state pass take a range of pieces, so the pieces are cut into
// segments, launch 1 runs segment by segment on the caller's stream and the state pass of each
// segment on a high-priority side stream after that segment's launch 1. With cols 64 the state
// CTAs fill their SMs' shared memory, so the state pass holds about half the SMs and launch 1 of
// the later segments runs on the rest (H100, 1 × 32K, HV 32: 1.85 ms against 0.79 + 1.13 ms for
// the two launches of kFusedCols32Split2Solve2 one after the other).
// Where the time goes (Nsight Compute, H100): both launches are issue bound on scalar work, not
// on the tensor cores (mma is 3% of launch 1's instructions and 7% of the state pass's). The
// state pass runs one warp per scheduler (IPC ~1.2), so its speed is its instruction count per
// piece: 1,607 per warp before the tile copies got constant strides (the generic index math of
// the copies was 45% of it), 979 after. Launch 1 (~4,400 per warp) spreads over the T solve,
// the Γ factors and the bf16 row scalings.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16; lane = 4·g + t), as in
// kernels/paged_attention_prefill_mma.cu:
//   A (16x16, row): reg0 (row g, k 2t..2t+1), reg1 (row g+8, k 2t..), reg2 (row g, k 2t+8..),
//                   reg3 (row g+8, k 2t+8..); the lower k in the low 16 bits;
//   B (16x8, col):  reg0 (k 2t..2t+1, n g), reg1 (k 2t+8.., n g);
//   C (16x8 fp32):  c0, c1 (row g, n 2t, 2t+1), c2, c3 (row g+8, n 2t, 2t+1).
// So C tiles n = 2kk, 2kk + 1 of one product are, packed to bf16, the A fragment of k-step kk of
// the next (Sᵀ and V_newᵀ never leave registers inside the state pass). Shared rows are padded
// by 8 bf16 (ldmatrix reads of 8 rows are conflict-free).
//
// HYLA_GDN_MMA_EMULATION (never set in the build) compiles only the kernel bodies as host code,
// for a CPU emulation of the warp primitives that checks the index math.
#ifndef HYLA_GDN_MMA_EMULATION
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/common.cuh"
#endif

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#ifndef HYLA_GDN_MMA_EMULATION
#include <algorithm>
#include <mutex>
#include <vector>
#endif

#include "kernels/ops.h"

namespace hyla::kernels {
namespace gdn_mma {

constexpr int kChunk = 64;
constexpr int kPad = 8;              // bf16 elements of padding per shared row
constexpr int kLdt = kChunk + kPad;  // shared row stride of 64-wide bf16 tiles
constexpr int kPieceThreads = 128;   // launches 1 and 3: 4 warps of 16 rows
constexpr float kL2NormEps = 1e-6f;  // cpu::kGdnL2NormEps
// GdnPrefillMmaVariant::kDefault (kernels/ops.h): kDefaultLongVariant for one sequence of at
// least kLongPieces pieces, else kDefaultVariant. The overlapped variants cut the pieces into
// segments by their global numbers, so with several sequences a segment's state pass would
// walk one sequence at a time (the sequences' passes run side by side in the fused variants).
// H100 run 4 (1 x 32768, H 16, HV 32, d 128): kFusedCols32Split2Solve2 2,418 us (launch 1
// 878 + launch 2 1,546) against 2,836 for kFusedCols32Split2 and 2,562 for the Split4 one.
// H100, 2026-11-23, after the copy and Γ changes (same shape): kOverlapCols64Split2Solve2
// 1,847 us with 8 tapered segments (4: 2,025, 6: 1,901, 12: 1,856, 16: 1,858, 32: 1,933)
// against 1,912 for kFusedCols32Split2Solve2 (launch 1 794 + state pass 1,128) and 1,926 for
// the overlapped cols-32 one; the cols-64 state pass alone takes 1,523 us.
constexpr GdnPrefillMmaVariant kDefaultVariant = GdnPrefillMmaVariant::kFusedCols32Split2Solve2;
constexpr GdnPrefillMmaVariant kDefaultLongVariant =
    GdnPrefillMmaVariant::kOverlapCols64Split2Solve2;
constexpr int kLongPieces = 16;

#ifdef HYLA_GDN_MMA_EMULATION
#define HYLA_GDN_DEV inline
#define HYLA_GDN_ASSUME(x) ((void)0)
// Provided by the emulator.
void SyncThreads();
void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void LdMatrixX4(uint32_t (&r)[4], const uint16_t* row);
void LdMatrixX4Trans(uint32_t (&r)[4], const uint16_t* row);
void CpAsync16(void* dst, const void* src, bool fill);
void CpAsyncCommit();
void CpAsyncWaitN(int n);
void SyncWarp();
float ShflUpF(float v, int delta);
template <int kN>
inline void CpAsyncWait() {
  CpAsyncWaitN(kN);
}
uint32_t PackBf16(float lo, float hi);
uint16_t ToBf16(float v);
float Bf16ToF(uint16_t v);
#else
#define HYLA_GDN_DEV __device__ __forceinline__
#define HYLA_GDN_ASSUME(x) __builtin_assume(x)

HYLA_GDN_DEV void SyncThreads() { __syncthreads(); }
HYLA_GDN_DEV void SyncWarp() { __syncwarp(); }
// v of lane (lane − delta) of the warp (this lane's own v when lane < delta).
HYLA_GDN_DEV float ShflUpF(float v, int delta) { return __shfl_up_sync(0xffffffffu, v, delta); }

// c += A·B, A 16x16 bf16 (row), B 16x8 bf16 (col), c 16x8 fp32.
HYLA_GDN_DEV void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

HYLA_GDN_DEV uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; this lane gives the address of row (lane % 8) of matrix lane / 8.
HYLA_GDN_DEV void LdMatrixX4(uint32_t (&r)[4], const uint16_t* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row))
               : "memory");
}
HYLA_GDN_DEV void LdMatrixX4Trans(uint32_t (&r)[4], const uint16_t* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row))
               : "memory");
}

// 16 bytes global → shared, asynchronous; fill == false writes zeros and reads nothing.
HYLA_GDN_DEV void CpAsync16(void* dst, const void* src, bool fill) {
  const int src_bytes = fill ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(dst)),
               "l"(src), "r"(src_bytes)
               : "memory");
}
HYLA_GDN_DEV void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kN committed groups of this thread are still in flight.
template <int kN>
HYLA_GDN_DEV void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kN) : "memory");
}

// Two floats → bf16x2 (round to nearest even), lo in the low 16 bits.
HYLA_GDN_DEV uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
HYLA_GDN_DEV uint16_t ToBf16(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
HYLA_GDN_DEV float Bf16ToF(uint16_t v) { return __bfloat162float(__ushort_as_bfloat16(v)); }
#endif

HYLA_GDN_DEV float LoBf16(uint32_t v) { return Bf16ToF(static_cast<uint16_t>(v & 0xffffu)); }
HYLA_GDN_DEV float HiBf16(uint32_t v) { return Bf16ToF(static_cast<uint16_t>(v >> 16)); }
HYLA_GDN_DEV int MinI(int a, int b) { return a < b ? a : b; }
HYLA_GDN_DEV float SoftplusF(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
HYLA_GDN_DEV float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }
// e^x: kFast (the *Solve2 variants' launch 1) by the hardware exp2 (__expf: a relative error of
// about 2^-22·(2 + 1.16|x|), far below the bf16 rounding of the products it scales).
template <bool kFast>
HYLA_GDN_DEV float ExpF(float x) {
#ifdef HYLA_GDN_MMA_EMULATION
  return expf(x);
#else
  return kFast ? __expf(x) : expf(x);
#endif
}

// Which global accesses may be 16-byte (cp.async) or 4-byte wide; decided on the host.
struct Access {
  bool q16 = false;  // q rows: base and stride 16-byte aligned
  bool k16 = false;
  bool v16 = false;
  bool o4 = false;   // o: bf16 pairs as one 4-byte store
  bool o16 = false;  // o: 8 bf16 (fused variants' rows of 16, 32 or 64 columns) as one store
};

// Workspace entry of one (piece, value head), bf16 element offsets (every array 16-byte
// aligned): W [64, dk], VT [dv, 64] (Uᵀ from launch 1, V_newᵀ after launch 2), H [dv, dk]
// (Sᵀ at the piece start), P [64, 64] (fused variants: tril(diag(r_q) QKᵀ diag(r_k) ⊙ Γ)), then
// fp32 G [64], r_k [64] and r_q e^G [64] (fused variants).
template <int kDk, int kDv>
struct Entry {
  static constexpr int64_t kW = 0;
  static constexpr int64_t kVT = int64_t{kChunk} * kDk;
  static constexpr int64_t kH = kVT + int64_t{kDv} * kChunk;
  static constexpr int64_t kP = kH + int64_t{kDv} * kDk;
  static constexpr int64_t kFloats = kP + int64_t{kChunk} * kChunk;  // bf16 offset of G
  static constexpr int64_t kBytes = 2 * kFloats + 3 * kChunk * sizeof(float);
  static_assert(kBytes % 16 == 0, "entries stay 16-byte aligned");
};

template <int kDk, int kDv>
HYLA_GDN_DEV uint16_t* EntryOf(const GdnPrefillParams& p, int piece, int hv) {
  return reinterpret_cast<uint16_t*>(static_cast<char*>(p.workspace) +
                                     (static_cast<int64_t>(piece) * p.num_v_heads + hv) *
                                         Entry<kDk, kDv>::kBytes);
}

// The sequence of piece `piece`: the last s with piece_offsets[s] <= piece.
HYLA_GDN_DEV int SeqOfPiece(const GdnPrefillParams& p, int piece) {
  int lo = 0, hi = p.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.piece_offsets[mid] <= piece) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Rows [begin, end) of the sequence that piece `lp` of a sequence with `sp` tokens already in
// the state and `len` new tokens covers.
struct PieceRange {
  int begin;
  int end;
};
HYLA_GDN_DEV PieceRange PieceOf(int64_t sp, int len, int lp) {
  const int first = kChunk - static_cast<int>(sp % kChunk);
  const int begin = lp == 0 ? 0 : first + (lp - 1) * kChunk;
  const int end = MinI(len, first + lp * kChunk);
  return {begin, end};
}

// Copies kRows rows of kCols bf16 (kCols % 8 == 0) from src (rows `stride` elements apart) to
// dst (rows kLd apart): rows >= n are zero. vec: 16-byte cp.async (the caller commits and
// waits); otherwise element by element (done on return). Thread tid copies the 16-byte chunks
// tid, tid + kThreads, ...: with kThreads a multiple of the chunks per row that is one column
// and the rows r0 + j·kStep, so every address after the first advances by a constant (a few
// instructions per chunk; the generic index math of a loop over chunks cost ~24, which made
// these copies half of the state pass's instructions).
template <int kRows, int kCols, int kLd, int kThreads>
HYLA_GDN_DEV void LoadRows(uint16_t* dst, const uint16_t* src, int64_t stride, int n, bool vec,
                           int tid) {
  constexpr int kCpr = kCols / 8;  // 16-byte chunks per row
  static_assert(kCols % 8 == 0 && kThreads % kCpr == 0, "a pass covers whole rows");
  constexpr int kStep = kThreads / kCpr;
  constexpr int kIters = (kRows + kStep - 1) / kStep;
  HYLA_GDN_ASSUME(tid >= 0 && tid < kThreads);  // folds the row checks of full tiles
  const int r0 = tid / kCpr, c = 8 * (tid % kCpr);
  if (vec) {
    const uint16_t* s = src + r0 * stride + c;
    const int64_t step = int64_t{kStep} * stride;
    uint16_t* d = dst + r0 * kLd + c;
#pragma unroll
    for (int j = 0; j < kIters; ++j) {
      const int r = r0 + j * kStep;
      if (kRows % kStep == 0 || r < kRows) {
        const bool in = r < n;
        CpAsync16(d + j * kStep * kLd, in ? s + j * step : src, in);
      }
    }
  } else {
    for (int r = r0; r < kRows; r += kStep) {
      const bool in = r < n;
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[r * kLd + c + e] = in ? src[r * stride + c + e] : 0;
    }
  }
}

// Σ x² of a row of `cols` bf16 in shared memory, read 16 bytes at a time starting at chunk
// `rot` (rotating the start by row keeps a quarter-warp's reads on distinct banks).
HYLA_GDN_DEV float RowSumSq(const uint16_t* row, int cols, int rot) {
  const int chunks = cols / 8;
  float ss = 0.0f;
  for (int j = 0; j < chunks; ++j) {
    const int c = 8 * ((j + rot) % chunks);
#ifdef HYLA_GDN_MMA_EMULATION
    for (int e = 0; e < 8; ++e) {
      const float x = Bf16ToF(row[c + e]);
      ss += x * x;
    }
#else
    const uint4 v = *reinterpret_cast<const uint4*>(row + c);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float lo = LoBf16(w[e]), hi = HiBf16(w[e]);
      ss += lo * lo + hi * hi;
    }
#endif
  }
  return ss;
}

// A fragment (16x16 at rows r0.., columns c0..) of a row-major bf16 shared matrix.
HYLA_GDN_DEV void LoadA(uint32_t (&a)[4], const uint16_t* m, int ld, int r0, int c0, int lane) {
  LdMatrixX4(a, m + (r0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ld + c0 + 8 * (lane >> 4));
}
// A fragment (16x16, A[m][k] = M[c0 + k][r0 + m]) of the transpose of a row-major shared matrix.
HYLA_GDN_DEV void LoadATrans(uint32_t (&a)[4], const uint16_t* m, int ld, int r0, int c0,
                             int lane) {
  LdMatrixX4Trans(a, m + (c0 + (lane & 7) + 8 * (lane >> 4)) * ld + r0 + 8 * ((lane >> 3) & 1));
}
// B fragments of n-tile rows n0..n0+7 of a row-major matrix holding Bᵀ (B[k][n] = M[n0 + n][k]):
// b[0], b[1] for k-step k0..k0+15, b[2], b[3] for k0+16..k0+31.
HYLA_GDN_DEV void LoadBRows(uint32_t (&b)[4], const uint16_t* m, int ld, int n0, int k0, int lane) {
  LdMatrixX4(b, m + (n0 + (lane & 7)) * ld + k0 + 8 * (lane >> 3));
}
// B fragments of a row-major matrix holding B (B[k][n] = M[k0 + k][n0 + n]), k-step k0..k0+15:
// b[0], b[1] for n-tile n0..n0+7, b[2], b[3] for n0+8..n0+15.
HYLA_GDN_DEV void LoadBCols(uint32_t (&b)[4], const uint16_t* m, int ld, int k0, int n0, int lane) {
  LdMatrixX4Trans(b, m + (k0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ld + n0 + 8 * (lane >> 4));
}
// The A fragment of k-step kk from the C tiles 2kk, 2kk + 1 of a product (rounded to bf16).
HYLA_GDN_DEV void AFromC(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = PackBf16(c0[0], c0[1]);
  a[1] = PackBf16(c0[2], c0[3]);
  a[2] = PackBf16(c1[0], c1[1]);
  a[3] = PackBf16(c1[2], c1[3]);
}

// ---- launch 1: per (piece, value head) -------------------------------------------------------

template <int kDk, int kDv, bool kWithP, bool kLateV = false>
struct PieceSmem {
  static constexpr int kLdk = kDk + kPad, kLdv = kDv + kPad, kLdf = kChunk + 4;
  // bf16: K [64, kLdk], V [64, kLdv]; fp32: A [64, kLdf], T [64, kLdf], G, β, r_k, the W row
  // scale β e^G r_k, r_q [64 each]. Reused space: (kWithP) Q [64, kLdk] bf16 lives in T's space
  // until P is computed (before T is), Tb [64, kLdt] (bf16 T) in A's once A is dead. 68 KB at
  // dk = dv = 128: three CTAs per SM. kLateV (the kFastSolve kernels): V is loaded only once T
  // is converted to Tb, into T's space (its load overlaps the W product): 52 KB at dk = dv =
  // 128, four CTAs per SM.
  static constexpr int64_t kK = 0, kVOwn = kK + kChunk * kLdk;
  static constexpr int64_t kF32 = (kLateV ? kVOwn : kVOwn + kChunk * kLdv) / 2;  // float offset
  static constexpr int64_t kA = kF32, kT = kA + kChunk * kLdf, kG = kT + kChunk * kLdf;
  static constexpr int64_t kBeta = kG + kChunk, kRk = kBeta + kChunk, kSk = kRk + kChunk;
  static constexpr int64_t kRq = kSk + kChunk;
  static constexpr int64_t kTb = 2 * kA, kQ = 2 * kT;  // bf16 offsets
  static constexpr int64_t kV = kLateV ? 2 * kT : kVOwn;
  static constexpr size_t kBytes = sizeof(float) * (kRq + kChunk);
  static_assert(kF32 % 4 == 0 && kLdf % 4 == 0, "fp32 arrays 16-byte aligned");
  static_assert(kChunk * kLdt <= 2 * kChunk * kLdf, "Tb fits in A");
  static_assert(kChunk * kLdk <= 2 * kChunk * kLdf, "Q fits in T");
  static_assert(kChunk * kLdv <= 2 * kChunk * kLdf, "V fits in T");
};

// kFastSolve (the *Solve2 variants): the cumulative gate by warp scans, and the off-diagonal
// blocks of T as two fp32 products per block, T_ij = −T_ii·(Σ_k A_ik T_kj), one warp per block of
// a distance (register-blocked: a lane computes rows r, r + 8 × 4 columns), instead of a serial
// forward substitution per column; 4 block barriers instead of 7 and no single-thread loop.
template <int kDk, int kDv, bool kWithP, bool kFastSolve>
HYLA_GDN_DEV void PieceBody(const GdnPrefillParams& p, const Access& acc, int piece0, int cta,
                            int tid, uint16_t* smem) {
  using L = PieceSmem<kDk, kDv, kWithP, kFastSolve>;
  using E = Entry<kDk, kDv>;
  constexpr int kLdk = L::kLdk, kLdv = L::kLdv, kLdf = L::kLdf;
  uint16_t* Ks = smem + L::kK;
  uint16_t* Vs = smem + L::kV;
  uint16_t* Tb = smem + L::kTb;
  float* fs = reinterpret_cast<float*>(smem);
  float* As = fs + L::kA;
  float* Ts = fs + L::kT;
  float* Gs = fs + L::kG;
  float* Bs = fs + L::kBeta;
  float* Rk = fs + L::kRk;
  float* Sk = fs + L::kSk;
  float* Rq = fs + L::kRq;
  uint16_t* Qs = smem + L::kQ;  // kWithP

  const int HV = p.num_v_heads;
  const int piece = piece0 + cta / HV, hv = cta % HV;
  const int h = hv / (HV / p.num_heads);
  const int s = SeqOfPiece(p, piece);
  const int64_t sp = p.start_pos != nullptr ? p.start_pos[s] : 0;
  const int row0 = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - row0;
  const PieceRange range = PieceOf(sp, len, piece - p.piece_offsets[s]);
  const int n = range.end - range.begin;
  const int64_t first_row = static_cast<int64_t>(row0) + range.begin;
  const int warp = tid / 32, lane = tid % 32;
  const int lg = lane / 4, lt = lane % 4;

  LoadRows<kChunk, kDk, kLdk, kPieceThreads>(
      Ks, static_cast<const uint16_t*>(p.k) + first_row * p.k_stride + int64_t{h} * kDk, p.k_stride,
      n, acc.k16, tid);
  const uint16_t* v_rows =
      static_cast<const uint16_t*>(p.v) + first_row * p.v_stride + int64_t{hv} * kDv;
  if (!kFastSolve) {  // else V goes to T's space once T is dead (PieceSmem kLateV)
    LoadRows<kChunk, kDv, kLdv, kPieceThreads>(Vs, v_rows, p.v_stride, n, acc.v16, tid);
  }
  if (kWithP) {
    LoadRows<kChunk, kDk, kLdk, kPieceThreads>(
        Qs, static_cast<const uint16_t*>(p.q) + first_row * p.q_stride + int64_t{h} * kDk,
        p.q_stride, n, acc.q16, tid);
  }
  CpAsyncCommit();
  // Gates of the piece's rows (padding rows: g = 0, β = 0).
  if (tid < kChunk) {
    float g = 0.0f, beta = 0.0f;
    if (tid < n) {
      const int64_t r = first_row + tid;
      const float a = Bf16ToF(static_cast<const uint16_t*>(p.a)[r * p.a_stride + hv]);
      const float b = Bf16ToF(static_cast<const uint16_t*>(p.b)[r * p.b_stride + hv]);
      g = -expf(p.a_log[hv]) * SoftplusF(a + p.dt_bias[hv]);
      beta = SigmoidF(b);
      if (p.allow_neg_eigval) beta *= 2.0f;
    }
    if (kFastSolve) {  // inclusive scan within warps 0 and 1 (warp 1 adds warp 0's total below)
#pragma unroll
      for (int d = 1; d < 32; d *= 2) {
        const float up = ShflUpF(g, d);
        if (lane >= d) g += up;
      }
    }
    Gs[tid] = g;
    Bs[tid] = beta;
  }
  CpAsyncWait<0>();
  SyncThreads();
  if (kFastSolve && tid < kChunk) {
    if (tid >= 32) Gs[tid] += Gs[31];    // Gs[31] is warp 0's total, final since the barrier
  } else if (!kFastSolve && tid == 0) {  // in-piece cumulative gate, in token order
    float a = 0.0f;
    for (int t = 0; t < kChunk; ++t) {
      a += Gs[t];
      Gs[t] = a;
    }
  } else if (tid >= kChunk) {  // r_k of row tid − 64
    const int r = tid - kChunk;
    const float ss = RowSumSq(Ks + r * kLdk, kDk, r);
    Rk[r] = r < n ? 1.0f / sqrtf(ss + kL2NormEps) : 0.0f;
  }
  SyncThreads();
  uint16_t* entry = EntryOf<kDk, kDv>(p, piece, hv);
  float* entry_g = reinterpret_cast<float*>(entry + E::kFloats);
  if (tid < kChunk) {
    Sk[tid] = Bs[tid] * expf(Gs[tid]) * Rk[tid];
    entry_g[tid] = Gs[tid];
    // Fused Solve2 variants: r_k already decayed to the piece end, e^{G_last − G} r_k (the
    // state pass's update factor, off its critical path); else r_k.
    entry_g[kChunk + tid] =
        kWithP && kFastSolve ? Rk[tid] * expf(Gs[kChunk - 1] - Gs[tid]) : Rk[tid];
    if (kWithP) {
      const float ss = RowSumSq(Qs + tid * kLdk, kDk, tid);
      Rq[tid] = tid < n ? p.q_scale / sqrtf(ss + kL2NormEps) : 0.0f;
      entry_g[2 * kChunk + tid] = Rq[tid] * expf(Gs[tid]);
    }
  }

  // A = StrictLower(diag(β r_k) KKᵀ diag(r_k) ⊙ Γ): warp w rows 16w.., key tiles <= its rows.
  {
    float c[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < kDk / 16; kk += 2) {
      uint32_t a0[4], a1[4];
      LoadA(a0, Ks, kLdk, 16 * warp, 16 * kk, lane);
      LoadA(a1, Ks, kLdk, 16 * warp, 16 * kk + 16, lane);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        if (nt > 2 * warp + 1) continue;  // warp-uniform: keys above the warp's rows
        uint32_t b[4];
        LoadBRows(b, Ks, kLdk, 8 * nt, 16 * kk, lane);
        Mma(c[nt], a0, b[0], b[1]);
        Mma(c[nt], a1, b[2], b[3]);
      }
    }
    if (kFastSolve) {  // row factors once, no exponentials on the key tiles above the rows
      float fi[2], gi[2];
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int i = 16 * warp + lg + 8 * hh;
        fi[hh] = Bs[i] * Rk[i];
        gi[hh] = Gs[i];
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const bool live = nt <= 2 * warp + 1;  // warp-uniform
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hh = e >> 1;
          const int i = 16 * warp + lg + 8 * hh, j = 8 * nt + 2 * lt + (e & 1);
          // Branch-free (a select, not a divergent branch per element): Γ is clamped to 1
          // above the diagonal, where the value is discarded.
          const float x = fi[hh] * Rk[j] * ExpF<true>(fminf(gi[hh] - Gs[j], 0.0f)) * c[nt][e];
          As[i * kLdf + j] = live && i > j ? x : 0.0f;
        }
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = 16 * warp + lg + 8 * (e >> 1), j = 8 * nt + 2 * lt + (e & 1);
          As[i * kLdf + j] = i > j ? Bs[i] * Rk[i] * Rk[j] * expf(Gs[i] - Gs[j]) * c[nt][e] : 0.0f;
        }
      }
    }
  }
  SyncThreads();
  // (kWithP) P = tril(diag(r_q) QKᵀ diag(r_k) ⊙ Γ) [64, 64] for the fused state pass.
  if (kWithP) {
    float c[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < kDk / 16; kk += 2) {
      uint32_t a0[4], a1[4];
      LoadA(a0, Qs, kLdk, 16 * warp, 16 * kk, lane);
      LoadA(a1, Qs, kLdk, 16 * warp, 16 * kk + 16, lane);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        if (nt > 2 * warp + 1) continue;  // warp-uniform: keys after the warp's rows
        uint32_t b[4];
        LoadBRows(b, Ks, kLdk, 8 * nt, 16 * kk, lane);
        Mma(c[nt], a0, b[0], b[1]);
        Mma(c[nt], a1, b[2], b[3]);
      }
    }
    uint16_t* P = entry + E::kP;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const bool live = !kFastSolve || nt <= 2 * warp + 1;  // warp-uniform
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int i = 16 * warp + lg + 8 * hh, j = 8 * nt + 2 * lt;
        // Selects, not branches (Γ clamped to 1 above the diagonal, where it is discarded).
        const float y0 =
            c[nt][2 * hh] * Rq[i] * Rk[j] * ExpF<kFastSolve>(fminf(Gs[i] - Gs[j], 0.0f));
        const float y1 = c[nt][2 * hh + 1] * Rq[i] * Rk[j + 1] *
                         ExpF<kFastSolve>(fminf(Gs[i] - Gs[j + 1], 0.0f));
        const float x0 = live && j <= i ? y0 : 0.0f;
        const float x1 = live && j + 1 <= i ? y1 : 0.0f;
        *reinterpret_cast<uint32_t*>(P + i * kChunk + j) = PackBf16(x0, x1);
      }
    }
    SyncThreads();  // Q (in T's space) is read by every warp before T is written
  }

  // T = (I + A)⁻¹. Diagonal 16x16 blocks: one thread per column, forward substitution.
  if (tid < kChunk) {
    const int base = 16 * (tid / 16), col = tid % 16;
    float x[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      float v = 0.0f;
#pragma unroll
      for (int k = 0; k < r; ++k) v -= As[(base + r) * kLdf + base + k] * x[k];
      x[r] = r == col ? 1.0f : (r < col ? 0.0f : v);
      Ts[(base + r) * kLdf + base + col] = x[r];
    }
  }
  SyncThreads();
  // Block (i, j), i > j, by distance d = i − j: T_ij = −T_ii · Σ_{k=j}^{i−1} A_ik T_kj.
  if (kFastSolve) {
    // Warp w < 4 − d: block j = w, i = w + d. Lane: rows r, r + 8 of the block, columns
    // c..c + 3. M = Σ_k A_ik T_kj goes to A's block (j, i) (above the diagonal: never read as
    // A), then T_ij = −T_ii·M (T_ii is the full diagonal block, zeros and the unit included).
    const int r = lane / 4, c = 4 * (lane % 4);
    for (int d = 1; d < 4; ++d) {
      if (warp < 4 - d) {
        const int j = warp, i = warp + d;
        float m[2][4] = {};
        for (int k = 16 * j; k < 16 * i; ++k) {
          const float a0 = As[(16 * i + r) * kLdf + k], a1 = As[(16 * i + r + 8) * kLdf + k];
          const float4 t = *reinterpret_cast<const float4*>(Ts + k * kLdf + 16 * j + c);
          m[0][0] += a0 * t.x;
          m[0][1] += a0 * t.y;
          m[0][2] += a0 * t.z;
          m[0][3] += a0 * t.w;
          m[1][0] += a1 * t.x;
          m[1][1] += a1 * t.y;
          m[1][2] += a1 * t.z;
          m[1][3] += a1 * t.w;
        }
        float* mb = As + 16 * j * kLdf + 16 * i;  // M [16, 16] at A's block (j, i)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          *reinterpret_cast<float4*>(mb + (r + 8 * hh) * kLdf + c) =
              make_float4(m[hh][0], m[hh][1], m[hh][2], m[hh][3]);
        }
        SyncWarp();
        float t[2][4] = {};
#pragma unroll
        for (int q = 0; q < 16; ++q) {
          const float d0 = Ts[(16 * i + r) * kLdf + 16 * i + q];
          const float d1 = Ts[(16 * i + r + 8) * kLdf + 16 * i + q];
          const float4 mq = *reinterpret_cast<const float4*>(mb + q * kLdf + c);
          t[0][0] -= d0 * mq.x;
          t[0][1] -= d0 * mq.y;
          t[0][2] -= d0 * mq.z;
          t[0][3] -= d0 * mq.w;
          t[1][0] -= d1 * mq.x;
          t[1][1] -= d1 * mq.y;
          t[1][2] -= d1 * mq.z;
          t[1][3] -= d1 * mq.w;
        }
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          *reinterpret_cast<float4*>(Ts + (16 * i + r + 8 * hh) * kLdf + 16 * j + c) =
              make_float4(t[hh][0], t[hh][1], t[hh][2], t[hh][3]);
        }
      }
      SyncThreads();
    }
  } else {
    for (int d = 1; d < 4; ++d) {
      const int blocks = 4 - d;
      for (int idx = tid; idx < blocks * 256; idx += kPieceThreads) {
        const int j = idx / 256, i = j + d;
        const int r = (idx % 256) / 16, c = idx % 16;
        float m = 0.0f;
        for (int k = 16 * j; k < 16 * i; ++k)
          m += As[(16 * i + r) * kLdf + k] * Ts[k * kLdf + 16 * j + c];
        Ts[(16 * i + r) * kLdf + 16 * j + c] = m;  // M, replaced by T_ij below
      }
      SyncThreads();
      for (int idx = tid; idx < blocks * 16; idx += kPieceThreads) {
        const int j = idx / 16, i = j + d, c = idx % 16;
        float m[16];
#pragma unroll
        for (int r = 0; r < 16; ++r) m[r] = Ts[(16 * i + r) * kLdf + 16 * j + c];
#pragma unroll
        for (int r = 0; r < 16; ++r) {
          float v = m[r];
#pragma unroll
          for (int k = 0; k < r; ++k) v += Ts[(16 * i + r) * kLdf + 16 * i + k] * m[k];
          Ts[(16 * i + r) * kLdf + 16 * j + c] = -v;
        }
      }
      SyncThreads();
    }
  }

  // Tb = bf16(T) (zero above the diagonal); K ← diag(β e^G r_k) K, V ← diag(β) V in bf16.
  // kFastSolve folds the row scalings into T's columns instead (64 x 64, not 64 x dk twice):
  // W's A fragments = bf16(T·diag(β e^G r_k)) straight from the fp32 T into registers, and
  // Tb = bf16(T·diag(β)) for U; K and V stay raw (two roundings per product either way).
  uint32_t wa[4][4];  // kFastSolve: W's A fragments, k-steps <= warp
  if (kFastSolve) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (kk > warp) continue;  // warp-uniform
#pragma unroll
      for (int q = 0; q < 4; ++q) {  // A layout: row + 8(q & 1), k + 8(q >> 1)
        const int i = 16 * warp + lg + 8 * (q & 1), j = 16 * kk + 2 * lt + 8 * (q >> 1);
        const float2 t = *reinterpret_cast<const float2*>(Ts + i * kLdf + j);
        wa[kk][q] = PackBf16(j <= i ? t.x * Sk[j] : 0.0f, j + 1 <= i ? t.y * Sk[j + 1] : 0.0f);
      }
    }
    for (int idx = tid; idx < kChunk * kChunk / 2; idx += kPieceThreads) {  // two a step
      const int i = idx / (kChunk / 2), j = 2 * (idx % (kChunk / 2));
      const float2 t = *reinterpret_cast<const float2*>(Ts + i * kLdf + j);
      *reinterpret_cast<uint32_t*>(Tb + i * kLdt + j) =
          PackBf16(j <= i ? t.x * Bs[j] : 0.0f, j + 1 <= i ? t.y * Bs[j + 1] : 0.0f);
    }
  } else {
    for (int idx = tid; idx < kChunk * kChunk; idx += kPieceThreads) {
      const int i = idx / kChunk, j = idx % kChunk;
      Tb[i * kLdt + j] = ToBf16(j <= i ? Ts[i * kLdf + j] : 0.0f);
    }
  }
  if (!kFastSolve) {
    for (int idx = tid; idx < kChunk * kDk / 2; idx += kPieceThreads) {
      const int r = idx / (kDk / 2), c = 2 * (idx % (kDk / 2));
      uint32_t* x = reinterpret_cast<uint32_t*>(Ks + r * kLdk + c);
      *x = PackBf16(LoBf16(*x) * Sk[r], HiBf16(*x) * Sk[r]);
    }
  }
  if (!kFastSolve) {
    for (int idx = tid; idx < kChunk * kDv / 2; idx += kPieceThreads) {
      const int r = idx / (kDv / 2), c = 2 * (idx % (kDv / 2));
      uint32_t* x = reinterpret_cast<uint32_t*>(Vs + r * kLdv + c);
      *x = PackBf16(LoBf16(*x) * Bs[r], HiBf16(*x) * Bs[r]);
    }
  }
  SyncThreads();
  if (kFastSolve) {  // T (read above) is dead: V into its space while W is computed
    LoadRows<kChunk, kDv, kLdv, kPieceThreads>(Vs, v_rows, p.v_stride, n, acc.v16, tid);
    CpAsyncCommit();
  }

  // W = Tb·K' [64, dk]: warp w rows 16w.. (T is zero right of the diagonal: k-steps <= w).
  {
    float c[kDk / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (kk > warp) continue;
      uint32_t a[4];
      if (kFastSolve) {
#pragma unroll
        for (int q = 0; q < 4; ++q) a[q] = wa[kk][q];
      } else {
        LoadA(a, Tb, kLdt, 16 * warp, 16 * kk, lane);
      }
#pragma unroll
      for (int nt = 0; nt < kDk / 8; nt += 2) {
        uint32_t b[4];
        LoadBCols(b, Ks, kLdk, 16 * kk, 8 * nt, lane);
        Mma(c[nt], a, b[0], b[1]);
        Mma(c[nt + 1], a, b[2], b[3]);
      }
    }
    uint16_t* W = entry + E::kW;
#pragma unroll
    for (int nt = 0; nt < kDk / 8; ++nt) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int i = 16 * warp + lg + 8 * hh;
        *reinterpret_cast<uint32_t*>(W + i * kDk + 8 * nt + 2 * lt) =
            PackBf16(c[nt][2 * hh], c[nt][2 * hh + 1]);
      }
    }
  }
  if (kFastSolve) {  // V (raw: β is in Tb) has landed
    CpAsyncWait<0>();
    SyncThreads();
  }
  // Uᵀ = V'ᵀ·Tbᵀ [dv, 64]: warp w value rows 16(w + 4m)..
  {
    uint16_t* VT = entry + E::kVT;
#pragma unroll
    for (int vb = warp; vb < kDv / 16; vb += 4) {
      float c[8][4] = {};
#pragma unroll
      for (int kk = 0; kk < 4; kk += 2) {
        uint32_t a0[4], a1[4];
        LoadATrans(a0, Vs, kLdv, 16 * vb, 16 * kk, lane);
        LoadATrans(a1, Vs, kLdv, 16 * vb, 16 * kk + 16, lane);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          if (16 * kk > 8 * nt + 7) continue;  // T[i][j] = 0 for j > i
          uint32_t b[4];
          LoadBRows(b, Tb, kLdt, 8 * nt, 16 * kk, lane);
          Mma(c[nt], a0, b[0], b[1]);
          Mma(c[nt], a1, b[2], b[3]);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int v = 16 * vb + lg + 8 * hh;
          *reinterpret_cast<uint32_t*>(VT + v * kChunk + 8 * nt + 2 * lt) =
              PackBf16(c[nt][2 * hh], c[nt][2 * hh + 1]);
        }
      }
    }
  }
}

// ---- launch 2: per (sequence, value head, kCols value columns), sequential over pieces --------

template <int kDk, int kCols, int kStages>
struct StateSmem {
  static constexpr int kLdk = kDk + kPad;
  // Per stage: bf16 W [64, kLdk], K [64, kLdk], UT [kCols, kLdt]; fp32 G [64], r_k [64].
  static constexpr int64_t kW = 0, kK = kW + kChunk * kLdk, kUT = kK + kChunk * kLdk;
  static constexpr int64_t kG = kUT + kCols * kLdt;  // bf16 offset of the fp32 part
  static constexpr int64_t kStage = kG + 2 * 2 * kChunk;
  static constexpr size_t kBytes = 2 * kStage * kStages;
  static_assert(kBytes <= 227 * 1024, "shared memory per CTA");
  static_assert(kG % 8 == 0 && kStage % 8 == 0, "16-byte aligned arrays");
};

template <int kDk, int kDv, int kCols, int kStages>
HYLA_GDN_DEV void StateBody(const GdnPrefillParams& p, const Access& acc, int cta, int tid,
                            uint16_t* smem) {
  using L = StateSmem<kDk, kCols, kStages>;
  using E = Entry<kDk, kDv>;
  constexpr int kLdk = L::kLdk;
  constexpr int kThreads = 2 * kCols;  // kCols / 16 warps
  constexpr int kTiles = kDv / kCols;
  constexpr int kNt = kDk / 8;  // 8-column tiles of Sᵀ

  const int HV = p.num_v_heads;
  const int tile = cta % kTiles;
  const int hv = (cta / kTiles) % HV;
  const int s = cta / kTiles / HV;
  const int h = hv / (HV / p.num_heads);
  const int row0 = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - row0;
  if (len <= 0) return;
  const int64_t sp = p.start_pos != nullptr ? p.start_pos[s] : 0;
  const int first_piece = p.piece_offsets[s];
  const int num_pieces = p.piece_offsets[s + 1] - first_piece;
  const int warp = tid / 32, lane = tid % 32;
  const int lg = lane / 4, lt = lane % 4;
  const int v0 = tile * kCols;    // first value column of the CTA
  const int vw = 16 * warp + lg;  // this lane's rows of Sᵀ (tile-relative): vw, vw + 8
  float* state = p.state + static_cast<int64_t>(p.slots[s]) * p.state_slot_stride +
                 static_cast<int64_t>(hv) * kDk * kDv;
  const uint16_t* kbase = static_cast<const uint16_t*>(p.k) + int64_t{h} * kDk;

  auto load = [&](int lp, int stage) {
    uint16_t* st = smem + stage * L::kStage;
    const int piece = first_piece + lp;
    const PieceRange range = PieceOf(sp, len, lp);
    const uint16_t* entry = EntryOf<kDk, kDv>(p, piece, hv);
    LoadRows<kChunk, kDk, kLdk, kThreads>(st + L::kW, entry + E::kW, kDk, kChunk, true, tid);
    LoadRows<kChunk, kDk, kLdk, kThreads>(
        st + L::kK, kbase + (static_cast<int64_t>(row0) + range.begin) * p.k_stride, p.k_stride,
        range.end - range.begin, acc.k16, tid);
    LoadRows<kCols, kChunk, kLdt, kThreads>(st + L::kUT, entry + E::kVT + int64_t{v0} * kChunk,
                                            kChunk, kCols, true, tid);
    if (tid < 32) {
      CpAsync16(st + L::kG + 8 * tid, entry + E::kFloats + 8 * tid, true);  // G, r_k
    }
  };

  // Sᵀ: element e of tile nt is (row vw + 8(e >> 1), column 8nt + 2lt + (e & 1)).
  float sacc[kNt][4];
#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = 8 * nt + 2 * lt + (e & 1);
      sacc[nt][e] = state[static_cast<int64_t>(c) * kDv + v0 + vw + 8 * (e >> 1)];
    }
  }

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < num_pieces) load(i, i);
    CpAsyncCommit();
  }
  for (int lp = 0; lp < num_pieces; ++lp) {
    CpAsyncWait<kStages - 2>();  // piece lp's group has landed (kStages − 2 groups follow it)
    SyncThreads();               // ... for every thread; everyone is done with piece lp − 1
    const int ahead = lp + kStages - 1;
    if (ahead < num_pieces) load(ahead, ahead % kStages);
    CpAsyncCommit();

    const uint16_t* st = smem + (lp % kStages) * L::kStage;
    const uint16_t* Ws = st + L::kW;
    const uint16_t* Ksm = st + L::kK;
    const uint16_t* UT = st + L::kUT;
    const float* Gs = reinterpret_cast<const float*>(st + L::kG);
    const float* Rk = Gs + kChunk;
    uint16_t* entry = EntryOf<kDk, kDv>(p, first_piece + lp, hv);

    // h = Sᵀ at the piece start, for launch 3.
    {
      uint16_t* H = entry + E::kH + int64_t{v0} * kDk;
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          *reinterpret_cast<uint32_t*>(H + (vw + 8 * hh) * kDk + 8 * nt + 2 * lt) =
              PackBf16(sacc[nt][2 * hh], sacc[nt][2 * hh + 1]);
        }
      }
    }

    // V_newᵀ = Uᵀ − Sᵀ·Wᵀ [16 rows of the warp, 64 tokens].
    float vn[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < kDk / 16; kk += 2) {
      uint32_t a0[4], a1[4];
      AFromC(a0, sacc[2 * kk], sacc[2 * kk + 1]);
      AFromC(a1, sacc[2 * kk + 2], sacc[2 * kk + 3]);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        uint32_t b[4];
        LoadBRows(b, Ws, kLdk, 8 * nt, 16 * kk, lane);
        Mma(vn[nt], a0, b[0], b[1]);
        Mma(vn[nt], a1, b[2], b[3]);
      }
    }
    const float g_last = Gs[kChunk - 1];
    {
      uint16_t* VT = entry + E::kVT + int64_t{v0} * kChunk;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int t = 8 * nt + 2 * lt;
        const float f0 = expf(g_last - Gs[t]) * Rk[t];
        const float f1 = expf(g_last - Gs[t + 1]) * Rk[t + 1];
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int v = vw + 8 * hh;
          const uint32_t u = *reinterpret_cast<const uint32_t*>(UT + v * kLdt + t);
          const float x0 = LoBf16(u) - vn[nt][2 * hh];
          const float x1 = HiBf16(u) - vn[nt][2 * hh + 1];
          *reinterpret_cast<uint32_t*>(VT + v * kChunk + t) = PackBf16(x0, x1);
          vn[nt][2 * hh] = x0 * f0;  // the rows of the state update
          vn[nt][2 * hh + 1] = x1 * f1;
        }
      }
    }

    // Sᵀ ← e^{G_last}·Sᵀ + (V_new ⊙ e^{G_last − G} r_k)ᵀ·K.
    const float decay = expf(g_last);
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) sacc[nt][e] *= decay;
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      AFromC(a, vn[2 * kk], vn[2 * kk + 1]);
#pragma unroll
      for (int nt = 0; nt < kNt; nt += 2) {
        uint32_t b[4];
        LoadBCols(b, Ksm, kLdk, 16 * kk, 8 * nt, lane);
        Mma(sacc[nt], a, b[0], b[1]);
        Mma(sacc[nt + 1], a, b[2], b[3]);
      }
    }
  }

#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = 8 * nt + 2 * lt + (e & 1);
      state[static_cast<int64_t>(c) * kDv + v0 + vw + 8 * (e >> 1)] = sacc[nt][e];
    }
  }
}

// ---- launch 2, fused variants: the state pass also writes O (no launch 3, no h) ---------------

template <int kDk, int kCols, int kSplit, int kStages>
struct StateOutSmem {
  static constexpr int kLdk = kDk + kPad, kLdo = kCols + kPad;
  static constexpr int kWarps = kCols / 16 * kSplit;
  // Per stage: bf16 W, K, Q [64, kLdk], UT [kCols, kLdt], P [64, kLdt]; fp32 G, r_k, r_q e^G
  // [64 each]. After the stages: two O tiles [64, kLdo] bf16 (piece lp is written out while
  // lp + 1 is computed), then (kSplit > 1) each warp's fp32 partial V_newᵀ (8 tiles) and the
  // partial Oᵀ of its partners' token tiles (kOqSlots tiles), a float4 per lane and tile.
  static constexpr int64_t kW = 0, kK = kW + kChunk * kLdk, kQ = kK + kChunk * kLdk;
  static constexpr int64_t kUT = kQ + kChunk * kLdk, kP = kUT + kCols * kLdt;
  static constexpr int64_t kG = kP + kChunk * kLdt;
  static constexpr int64_t kStage = kG + 2 * 3 * kChunk;
  static constexpr int64_t kO = kStages * kStage;
  static constexpr int64_t kX = kO + 2 * kChunk * kLdo;
  // Split2: a warp's partner owns 4 of the 8 token tiles (slot nt % 4); Split4: 6 of 8 (slot nt).
  static constexpr int kOqSlots = kSplit == 2 ? 4 : 8;
  static constexpr int kXFloats = (8 + kOqSlots) * 4 * 32;
  static constexpr size_t kBytes =
      2 * kX + (kSplit > 1 ? sizeof(float) * kWarps * kXFloats : size_t{0});
  static_assert(kG % 8 == 0 && kStage % 8 == 0 && kX % 8 == 0, "16-byte aligned arrays");
  static_assert(kBytes <= 227 * 1024, "shared memory per CTA");
};

// kPreDecay (with launch 1's kFastSolve): the entry's r_k is e^{G_last − G} r_k already.
// Only the pieces numbered [g0, g1) (over all sequences, as launch 1 numbers them) are computed:
// a CTA whose sequence has none of them returns at once, the others read Sᵀ from `state` at
// their first such piece and write it back after their last (the overlapped variants run the
// state pass as one launch per segment of pieces).
template <int kDk, int kDv, int kCols, int kSplit, int kStages, bool kPreDecay>
HYLA_GDN_DEV void StateOutBody(const GdnPrefillParams& p, const Access& acc, int g0, int g1,
                               int cta, int tid, uint16_t* smem) {
  using L = StateOutSmem<kDk, kCols, kSplit, kStages>;
  using E = Entry<kDk, kDv>;
  constexpr int kLdk = L::kLdk, kLdo = L::kLdo;
  constexpr int kRowBlocks = kCols / 16;
  constexpr int kThreads = 32 * L::kWarps;
  constexpr int kTiles = kDv / kCols;
  constexpr int kDkw = kDk / kSplit;     // columns of Sᵀ per warp
  constexpr int kNt = kDkw / 8;          // their 8-column tiles
  constexpr int kTokTiles = 8 / kSplit;  // 8-token tiles of O per warp
  static_assert(kSplit == 1 || kSplit == 2 || kSplit == 4, "split");
  static_assert(kSplit == 1 || kDkw >= 32, "a warp's Sᵀ columns are whole 32-column k-steps");

  const int HV = p.num_v_heads;
  const int tile = cta % kTiles;
  const int hv = (cta / kTiles) % HV;
  const int s = cta / kTiles / HV;
  const int h = hv / (HV / p.num_heads);
  const int row0 = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - row0;
  if (len <= 0) return;
  const int64_t sp = p.start_pos != nullptr ? p.start_pos[s] : 0;
  // This CTA's pieces: local numbers lp0 + [0, num_pieces) of its sequence.
  const int seq_first = p.piece_offsets[s];
  const int lp0 = g0 > seq_first ? g0 - seq_first : 0;
  const int num_pieces = MinI(p.piece_offsets[s + 1], g1) - seq_first - lp0;
  if (num_pieces <= 0) return;
  const int first_piece = seq_first + lp0;
  const int warp = tid / 32, lane = tid % 32;
  const int lg = lane / 4, lt = lane % 4;
  const int vb = warp % kRowBlocks, dh = warp / kRowBlocks;
  const int c0 = dh * kDkw;     // first Sᵀ column of the warp
  const int v0 = tile * kCols;  // first value column of the CTA
  const int vw = 16 * vb + lg;  // this lane's rows of Sᵀ (tile-relative): vw, vw + 8
  float* state = p.state + static_cast<int64_t>(p.slots[s]) * p.state_slot_stride +
                 static_cast<int64_t>(hv) * kDk * kDv;
  const uint16_t* kbase = static_cast<const uint16_t*>(p.k) + int64_t{h} * kDk;
  const uint16_t* qbase = static_cast<const uint16_t*>(p.q) + int64_t{h} * kDk;
  uint16_t* obase = static_cast<uint16_t*>(p.o) + int64_t{hv} * kDv + v0;

  auto load = [&](int lp, int stage) {
    uint16_t* st = smem + stage * L::kStage;
    const PieceRange range = PieceOf(sp, len, lp0 + lp);
    const int n = range.end - range.begin;
    const int64_t first_row = static_cast<int64_t>(row0) + range.begin;
    const uint16_t* entry = EntryOf<kDk, kDv>(p, first_piece + lp, hv);
    LoadRows<kChunk, kDk, kLdk, kThreads>(st + L::kW, entry + E::kW, kDk, kChunk, true, tid);
    LoadRows<kChunk, kDk, kLdk, kThreads>(st + L::kK, kbase + first_row * p.k_stride, p.k_stride, n,
                                          acc.k16, tid);
    LoadRows<kChunk, kDk, kLdk, kThreads>(st + L::kQ, qbase + first_row * p.q_stride, p.q_stride, n,
                                          acc.q16, tid);
    LoadRows<kCols, kChunk, kLdt, kThreads>(st + L::kUT, entry + E::kVT + int64_t{v0} * kChunk,
                                            kChunk, kCols, true, tid);
    LoadRows<kChunk, kChunk, kLdt, kThreads>(st + L::kP, entry + E::kP, kChunk, kChunk, true, tid);
    for (int i = tid; i < 3 * kChunk / 4; i += kThreads) {
      CpAsync16(st + L::kG + 8 * i, entry + E::kFloats + 8 * i, true);  // G, r_k, r_q e^G
    }
  };
  // Piece lp's O tile (Os[lp % 2], token rows) → o.
  auto write_out = [&](int lp) {
    const PieceRange range = PieceOf(sp, len, lp0 + lp);
    const int n = range.end - range.begin;
    const uint16_t* os = smem + L::kO + (lp % 2) * kChunk * kLdo;
    uint16_t* out = obase + (static_cast<int64_t>(row0) + range.begin) * p.o_stride;
    constexpr int kChunks = kCols / 8;  // a fixed column per thread (kThreads % kChunks == 0)
    constexpr int kRowStep = kThreads / kChunks;
    const int c = 8 * (tid % kChunks);
    for (int r = tid / kChunks; r < n; r += kRowStep) {
      uint16_t* dst = out + r * p.o_stride + c;
      if (acc.o16) {
#ifdef HYLA_GDN_MMA_EMULATION
        for (int e = 0; e < 8; ++e) dst[e] = os[r * kLdo + c + e];
#else
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(os + r * kLdo + c);
#endif
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e] = os[r * kLdo + c + e];
      }
    }
  };

  // Sᵀ: element e of tile nt is (row vw + 8(e >> 1), column c0 + 8nt + 2lt + (e & 1)).
  float sacc[kNt][4];
#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = c0 + 8 * nt + 2 * lt + (e & 1);
      sacc[nt][e] = state[static_cast<int64_t>(c) * kDv + v0 + vw + 8 * (e >> 1)];
    }
  }

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < num_pieces) load(i, i);
    CpAsyncCommit();
  }
  for (int lp = 0; lp < num_pieces; ++lp) {
    CpAsyncWait<kStages - 2>();  // piece lp's group has landed (kStages − 2 groups follow it)
    SyncThreads();               // ... for every thread; everyone is done with piece lp − 1
    if (lp > 0) write_out(lp - 1);
    const int ahead = lp + kStages - 1;
    if (ahead < num_pieces) load(ahead, ahead % kStages);
    CpAsyncCommit();

    const uint16_t* st = smem + (lp % kStages) * L::kStage;
    const uint16_t* Ws = st + L::kW;
    const uint16_t* Ksm = st + L::kK;
    const uint16_t* Qsm = st + L::kQ;
    const uint16_t* UT = st + L::kUT;
    const uint16_t* Ps = st + L::kP;
    const float* Gs = reinterpret_cast<const float*>(st + L::kG);
    const float* Rk = Gs + kChunk;
    const float* Rqg = Rk + kChunk;

    // (partial over the warp's Sᵀ columns) Sᵀ·Wᵀ and Sᵀ·Qᵀ [16 rows, 64 tokens].
    float vn[8][4] = {}, oq[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < kDkw / 16; kk += 2) {
      uint32_t a0[4], a1[4];
      AFromC(a0, sacc[2 * kk], sacc[2 * kk + 1]);
      AFromC(a1, sacc[2 * kk + 2], sacc[2 * kk + 3]);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        uint32_t b[4];
        LoadBRows(b, Ws, kLdk, 8 * nt, c0 + 16 * kk, lane);
        Mma(vn[nt], a0, b[0], b[1]);
        Mma(vn[nt], a1, b[2], b[3]);
        LoadBRows(b, Qsm, kLdk, 8 * nt, c0 + 16 * kk, lane);
        Mma(oq[nt], a0, b[0], b[1]);
        Mma(oq[nt], a1, b[2], b[3]);
      }
    }
    if (kSplit > 1) {  // add the partner warps' parts (the other Sᵀ columns)
      // Every warp needs all of V_newᵀ but only its own token tiles of Oᵀ (nt / kTokTiles ==
      // dh): the Oᵀ parts of a warp's own tiles are neither stored nor read by its partners.
      // One 16-byte store / load per lane and tile (a warp's 512 contiguous bytes).
      constexpr int kOqSlots = L::kOqSlots;
      float4* xs = reinterpret_cast<float4*>(smem + L::kX);
      float4* mine = xs + warp * (L::kXFloats / 4);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const bool own = nt / kTokTiles == dh;  // warp-uniform
        mine[nt * 32 + lane] = make_float4(vn[nt][0], vn[nt][1], vn[nt][2], vn[nt][3]);
        if (!own) {
          mine[(8 + nt % kOqSlots) * 32 + lane] =
              make_float4(oq[nt][0], oq[nt][1], oq[nt][2], oq[nt][3]);
        }
      }
      SyncThreads();
#pragma unroll
      for (int o = 1; o < kSplit; ++o) {
        const float4* other = xs + (vb + ((dh + o) % kSplit) * kRowBlocks) * (L::kXFloats / 4);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          const bool own = nt / kTokTiles == dh;
          const float4 x = other[nt * 32 + lane];
          vn[nt][0] += x.x;
          vn[nt][1] += x.y;
          vn[nt][2] += x.z;
          vn[nt][3] += x.w;
          if (own) {
            const float4 y = other[(8 + nt % kOqSlots) * 32 + lane];
            oq[nt][0] += y.x;
            oq[nt][1] += y.y;
            oq[nt][2] += y.z;
            oq[nt][3] += y.w;
          }
        }
      }
    }
    const float g_last = Gs[kChunk - 1];
    // V_new = U − S·W (fp32), Oᵀ = diag(r_q e^G)-scaled Sᵀ·Qᵀ; then V_newᵀ's A fragments.
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int t = 8 * nt + 2 * lt;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const uint32_t u = *reinterpret_cast<const uint32_t*>(UT + (vw + 8 * hh) * kLdt + t);
        vn[nt][2 * hh] = LoBf16(u) - vn[nt][2 * hh];
        vn[nt][2 * hh + 1] = HiBf16(u) - vn[nt][2 * hh + 1];
        oq[nt][2 * hh] *= Rqg[t];
        oq[nt][2 * hh + 1] *= Rqg[t + 1];
      }
    }
    uint32_t va[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) AFromC(va[kk], vn[2 * kk], vn[2 * kk + 1]);
    // Oᵀ += V_newᵀ·Pᵀ on this warp's token tiles (P is zero right of the diagonal), then to Os.
    uint16_t* os = smem + L::kO + (lp % 2) * kChunk * kLdo;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      if (kSplit > 1 && nt / kTokTiles != dh) continue;  // warp-uniform
#pragma unroll
      for (int kk = 0; kk < 4; kk += 2) {
        if (16 * kk > 8 * nt + 7) continue;
        uint32_t b[4];
        LoadBRows(b, Ps, kLdt, 8 * nt, 16 * kk, lane);
        Mma(oq[nt], va[kk], b[0], b[1]);
        Mma(oq[nt], va[kk + 1], b[2], b[3]);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        os[(8 * nt + 2 * lt + (e & 1)) * kLdo + vw + 8 * (e >> 1)] = ToBf16(oq[nt][e]);
      }
    }

    // Sᵀ ← e^{G_last}·Sᵀ + (V_new ⊙ e^{G_last − G} r_k)ᵀ·K on the warp's columns.
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int t = 8 * nt + 2 * lt;
      const float f0 = kPreDecay ? Rk[t] : expf(g_last - Gs[t]) * Rk[t];
      const float f1 = kPreDecay ? Rk[t + 1] : expf(g_last - Gs[t + 1]) * Rk[t + 1];
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        vn[nt][2 * hh] *= f0;
        vn[nt][2 * hh + 1] *= f1;
      }
    }
    const float decay = expf(g_last);
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) sacc[nt][e] *= decay;
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      AFromC(a, vn[2 * kk], vn[2 * kk + 1]);
#pragma unroll
      for (int nt = 0; nt < kNt; nt += 2) {
        uint32_t b[4];
        LoadBCols(b, Ksm, kLdk, 16 * kk, c0 + 8 * nt, lane);
        Mma(sacc[nt], a, b[0], b[1]);
        Mma(sacc[nt + 1], a, b[2], b[3]);
      }
    }
  }
  SyncThreads();
  write_out(num_pieces - 1);

#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = c0 + 8 * nt + 2 * lt + (e & 1);
      state[static_cast<int64_t>(c) * kDv + v0 + vw + 8 * (e >> 1)] = sacc[nt][e];
    }
  }
}

// ---- launch 3: per (piece, value head) -------------------------------------------------------

template <int kDk, int kDv>
struct OutputSmem {
  static constexpr int kLdk = kDk + kPad;
  // bf16 Q [64, kLdk], K [64, kLdk], VT [kDv, kLdt], HT [kDv, kLdk]; fp32 G, r_k, r_q [64 each].
  static constexpr int64_t kQ = 0, kK = kQ + kChunk * kLdk, kVT = kK + kChunk * kLdk;
  static constexpr int64_t kHT = kVT + kDv * kLdt, kF = kHT + kDv * kLdk;
  static constexpr size_t kBytes = 2 * kF + 3 * kChunk * sizeof(float);
  static_assert(kF % 8 == 0, "16-byte aligned arrays");
};

template <int kDk, int kDv>
HYLA_GDN_DEV void OutputBody(const GdnPrefillParams& p, const Access& acc, int cta, int tid,
                             uint16_t* smem) {
  using L = OutputSmem<kDk, kDv>;
  using E = Entry<kDk, kDv>;
  constexpr int kLdk = L::kLdk;
  uint16_t* Qs = smem + L::kQ;
  uint16_t* Ks = smem + L::kK;
  uint16_t* VTs = smem + L::kVT;
  uint16_t* HTs = smem + L::kHT;
  float* Gs = reinterpret_cast<float*>(smem + L::kF);
  float* Rk = Gs + kChunk;
  float* Rq = Rk + kChunk;

  const int HV = p.num_v_heads;
  const int piece = cta / HV, hv = cta % HV;
  const int h = hv / (HV / p.num_heads);
  const int s = SeqOfPiece(p, piece);
  const int64_t sp = p.start_pos != nullptr ? p.start_pos[s] : 0;
  const int row0 = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - row0;
  const PieceRange range = PieceOf(sp, len, piece - p.piece_offsets[s]);
  const int n = range.end - range.begin;
  const int64_t first_row = static_cast<int64_t>(row0) + range.begin;
  const int warp = tid / 32, lane = tid % 32;
  const int lg = lane / 4, lt = lane % 4;
  const uint16_t* entry = EntryOf<kDk, kDv>(p, piece, hv);

  LoadRows<kChunk, kDk, kLdk, kPieceThreads>(
      Qs, static_cast<const uint16_t*>(p.q) + first_row * p.q_stride + int64_t{h} * kDk, p.q_stride,
      n, acc.q16, tid);
  LoadRows<kChunk, kDk, kLdk, kPieceThreads>(
      Ks, static_cast<const uint16_t*>(p.k) + first_row * p.k_stride + int64_t{h} * kDk, p.k_stride,
      n, acc.k16, tid);
  LoadRows<kDv, kChunk, kLdt, kPieceThreads>(VTs, entry + E::kVT, kChunk, kDv, true, tid);
  LoadRows<kDv, kDk, kLdk, kPieceThreads>(HTs, entry + E::kH, kDk, kDv, true, tid);
  if (tid < 32) {
    CpAsync16(smem + L::kF + 8 * tid, entry + E::kFloats + 8 * tid, true);  // G, r_k
  }
  CpAsyncCommit();
  CpAsyncWait<0>();
  SyncThreads();
  if (tid < kChunk) {
    const float ss = RowSumSq(Qs + tid * kLdk, kDk, tid);
    Rq[tid] = tid < n ? p.q_scale / sqrtf(ss + kL2NormEps) : 0.0f;
  }
  SyncThreads();

  // This lane's rows i = 16w + lg + 8hh.
  float row_scale[2], g_row[2], rq_row[2];
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int i = 16 * warp + lg + 8 * hh;
    g_row[hh] = Gs[i];
    rq_row[hh] = Rq[i];
    row_scale[hh] = Rq[i] * expf(Gs[i]);
  }
  uint32_t qf[kDk / 16][4];
#pragma unroll
  for (int kk = 0; kk < kDk / 16; ++kk) LoadA(qf[kk], Qs, kLdk, 16 * warp, 16 * kk, lane);

  // P = tril(diag(r_q) QKᵀ diag(r_k) ⊙ Γ) [16 rows of the warp, 64 keys].
  float pc[8][4] = {};
#pragma unroll
  for (int kk = 0; kk < kDk / 16; kk += 2) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      if (nt > 2 * warp + 1) continue;  // warp-uniform: keys after the warp's rows
      uint32_t b[4];
      LoadBRows(b, Ks, kLdk, 8 * nt, 16 * kk, lane);
      Mma(pc[nt], qf[kk], b[0], b[1]);
      Mma(pc[nt], qf[kk + 1], b[2], b[3]);
    }
  }
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int hh = e >> 1;
      const int i = 16 * warp + lg + 8 * hh, j = 8 * nt + 2 * lt + (e & 1);
      pc[nt][e] = j <= i ? pc[nt][e] * rq_row[hh] * Rk[j] * expf(g_row[hh] - Gs[j]) : 0.0f;
    }
  }

  // O = diag(r_q e^G)·Q·h + P·V_new.
  float o[kDv / 8][4] = {};
#pragma unroll
  for (int kk = 0; kk < kDk / 16; kk += 2) {
#pragma unroll
    for (int nt = 0; nt < kDv / 8; ++nt) {
      uint32_t b[4];
      LoadBRows(b, HTs, kLdk, 8 * nt, 16 * kk, lane);
      Mma(o[nt], qf[kk], b[0], b[1]);
      Mma(o[nt], qf[kk + 1], b[2], b[3]);
    }
  }
#pragma unroll
  for (int nt = 0; nt < kDv / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[nt][e] *= row_scale[e >> 1];
  }
#pragma unroll
  for (int kk = 0; kk < 4; kk += 2) {
    if (16 * kk > 16 * warp + 15) continue;  // warp-uniform: P is zero there
    uint32_t a0[4], a1[4];
    AFromC(a0, pc[2 * kk], pc[2 * kk + 1]);
    AFromC(a1, pc[2 * kk + 2], pc[2 * kk + 3]);
#pragma unroll
    for (int nt = 0; nt < kDv / 8; ++nt) {
      uint32_t b[4];
      LoadBRows(b, VTs, kLdt, 8 * nt, 16 * kk, lane);
      Mma(o[nt], a0, b[0], b[1]);
      Mma(o[nt], a1, b[2], b[3]);
    }
  }

  uint16_t* out = static_cast<uint16_t*>(p.o) + first_row * p.o_stride + int64_t{hv} * kDv;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int i = 16 * warp + lg + 8 * hh;
    if (i >= n) continue;
#pragma unroll
    for (int nt = 0; nt < kDv / 8; ++nt) {
      uint16_t* dst = out + i * p.o_stride + 8 * nt + 2 * lt;
      const uint32_t v = PackBf16(o[nt][2 * hh], o[nt][2 * hh + 1]);
      if (acc.o4) {
        *reinterpret_cast<uint32_t*>(dst) = v;
      } else {
        dst[0] = static_cast<uint16_t>(v & 0xffffu);
        dst[1] = static_cast<uint16_t>(v >> 16);
      }
    }
  }
}

#ifndef HYLA_GDN_MMA_EMULATION
// Pieces piece0 + blockIdx.x / HV.
template <int kDk, int kDv, bool kWithP, bool kFastSolve>
__global__ void __launch_bounds__(kPieceThreads)
    GdnMmaPieceKernel(GdnPrefillParams p, Access acc, int piece0) {
  extern __shared__ __align__(16) uint16_t gdn_smem[];
  PieceBody<kDk, kDv, kWithP, kFastSolve>(p, acc, piece0, static_cast<int>(blockIdx.x),
                                          static_cast<int>(threadIdx.x), gdn_smem);
}
template <int kDk, int kDv, int kCols, int kStages>
__global__ void __launch_bounds__(2 * kCols) GdnMmaStateKernel(GdnPrefillParams p, Access acc) {
  extern __shared__ __align__(16) uint16_t gdn_smem[];
  StateBody<kDk, kDv, kCols, kStages>(p, acc, static_cast<int>(blockIdx.x),
                                      static_cast<int>(threadIdx.x), gdn_smem);
}
// Pieces [g0, g1) of the sequential pass.
template <int kDk, int kDv, int kCols, int kSplit, int kStages, bool kPreDecay>
__global__ void __launch_bounds__(2 * kCols * kSplit)
    GdnMmaStateOutKernel(GdnPrefillParams p, Access acc, int g0, int g1) {
  extern __shared__ __align__(16) uint16_t gdn_smem[];
  StateOutBody<kDk, kDv, kCols, kSplit, kStages, kPreDecay>(
      p, acc, g0, g1, static_cast<int>(blockIdx.x), static_cast<int>(threadIdx.x), gdn_smem);
}
template <int kDk, int kDv>
__global__ void __launch_bounds__(kPieceThreads)
    GdnMmaOutputKernel(GdnPrefillParams p, Access acc) {
  extern __shared__ __align__(16) uint16_t gdn_smem[];
  OutputBody<kDk, kDv>(p, acc, static_cast<int>(blockIdx.x), static_cast<int>(threadIdx.x),
                       gdn_smem);
}

template <typename Kernel>
cudaError_t SetSmem(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

// Launch 2 (and, unless fused, 3) of variant (kCols, kSplit, kFused, kStages); only: 0 both, else
// that one. kPreDecay: launch 1 ran with kFastSolve (fused: the entry holds decayed r_k). Fused:
// pieces [g0, g1) only (the unfused launches take every piece).
template <int kDk, int kDv, int kCols, int kSplit, bool kFused, int kStages, bool kPreDecay>
int LaunchSequential(const GdnPrefillParams& p, const Access& acc, cudaStream_t stream, int only,
                     int g0, int g1) {
  const int64_t ctas = int64_t{p.num_seqs} * p.num_v_heads * (kDv / kCols);
  if (ctas > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  if constexpr (kFused) {
    if (only == 3) return static_cast<int>(cudaSuccess);
    constexpr size_t kSmem = StateOutSmem<kDk, kCols, kSplit, kStages>::kBytes;
    const cudaError_t err =
        SetSmem(GdnMmaStateOutKernel<kDk, kDv, kCols, kSplit, kStages, kPreDecay>, kSmem);
    if (err != cudaSuccess) return static_cast<int>(err);
    GdnMmaStateOutKernel<kDk, kDv, kCols, kSplit, kStages, kPreDecay>
        <<<static_cast<unsigned>(ctas), 2 * kCols * kSplit, kSmem, stream>>>(p, acc, g0, g1);
    return LaunchResult();
  } else {
    constexpr size_t kSmem = StateSmem<kDk, kCols, kStages>::kBytes;
    cudaError_t err = SetSmem(GdnMmaStateKernel<kDk, kDv, kCols, kStages>, kSmem);
    if (err != cudaSuccess) return static_cast<int>(err);
    if (only != 3) {
      GdnMmaStateKernel<kDk, kDv, kCols, kStages>
          <<<static_cast<unsigned>(ctas), 2 * kCols, kSmem, stream>>>(p, acc);
      err = cudaGetLastError();
      if (err != cudaSuccess || only == 2) return static_cast<int>(err);
    }
    constexpr size_t kOutSmem = OutputSmem<kDk, kDv>::kBytes;
    err = SetSmem(GdnMmaOutputKernel<kDk, kDv>, kOutSmem);
    if (err != cudaSuccess) return static_cast<int>(err);
    const int64_t piece_ctas = int64_t{p.num_pieces} * p.num_v_heads;
    GdnMmaOutputKernel<kDk, kDv>
        <<<static_cast<unsigned>(piece_ctas), kPieceThreads, kOutSmem, stream>>>(p, acc);
    return LaunchResult();
  }
}

// Launch 1 over pieces [g0, g1).
template <int kDk, int kDv, bool kFused, bool kFastSolve>
int LaunchPieces(const GdnPrefillParams& p, const Access& acc, cudaStream_t stream, int g0,
                 int g1) {
  constexpr size_t kSmem = PieceSmem<kDk, kDv, kFused, kFastSolve>::kBytes;
  const cudaError_t err = SetSmem(GdnMmaPieceKernel<kDk, kDv, kFused, kFastSolve>, kSmem);
  if (err != cudaSuccess) return static_cast<int>(err);
  const int64_t piece_ctas = int64_t{g1 - g0} * p.num_v_heads;
  GdnMmaPieceKernel<kDk, kDv, kFused, kFastSolve>
      <<<static_cast<unsigned>(piece_ctas), kPieceThreads, kSmem, stream>>>(p, acc, g0);
  return LaunchResult();
}

// only: 0 runs every launch, 1..3 that launch alone (internal::GdnPrefillMmaLaunch).
// kFastSolve: launch 1's T by PieceBody's kFastSolve (the *Solve2 variants).
template <int kDk, int kDv, int kCols, int kSplit, bool kFused, int kStages,
          bool kFastSolve = false>
int LaunchVariant(const GdnPrefillParams& p, const Access& acc, cudaStream_t stream, int only) {
  if (only == 0 || only == 1) {
    const int rc = LaunchPieces<kDk, kDv, kFused, kFastSolve>(p, acc, stream, 0, p.num_pieces);
    if (rc != 0 || only == 1) return rc;
  }
  return LaunchSequential<kDk, kDv, kCols, kSplit, kFused, kStages, kFastSolve>(
      p, acc, stream, only, 0, p.num_pieces);
}

// ---- the overlapped variants ------------------------------------------------------------------
// The state pass is latency bound (one CTA of 4 or 8 warps per SM, walking the pieces in order)
// and launch 1 is issue bound with every piece independent, so they share the GPU: launch 1 runs
// segment by segment on the caller's stream, and after each segment's launch 1 the state pass
// of that segment runs on a side stream of the greatest priority (its CTAs are dispatched first
// whenever an SM frees up; the cols-64 CTAs take most of an SM's shared memory, so the state
// pass holds about half the SMs and launch 1 of the later segments runs on the others). The
// caller's stream waits for the side stream's last launch before anything after GdnPrefill.
// Side stream and events are per device and process-wide (like a cuBLAS handle), created on
// first use; a mutex makes the enqueue sequence of concurrent callers atomic (an event is
// re-recorded only after every wait on its previous record has been enqueued).
constexpr int kDefaultOverlapSegments = 8;
constexpr int kMaxDevices = 64;

struct SideStream {
  std::mutex mu;
  cudaStream_t stream = nullptr;
  std::vector<cudaEvent_t> events;
};

// The device's side stream with at least `events` events, locked by *lock; nullptr on error.
SideStream* SideStreamFor(int events, std::unique_lock<std::mutex>* lock) {
  static SideStream sides[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    return nullptr;
  }
  SideStream& side = sides[device];
  *lock = std::unique_lock<std::mutex>(side.mu);
  if (side.stream == nullptr) {
    int least = 0, greatest = 0;
    if (cudaDeviceGetStreamPriorityRange(&least, &greatest) != cudaSuccess ||
        cudaStreamCreateWithPriority(&side.stream, cudaStreamNonBlocking, greatest) !=
            cudaSuccess) {
      side.stream = nullptr;
      return nullptr;
    }
  }
  while (static_cast<int>(side.events.size()) < events) {
    cudaEvent_t e = nullptr;
    if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) return nullptr;
    side.events.push_back(e);
  }
  return &side;
}

template <int kDk, int kDv, int kCols>
int LaunchOverlapped(const GdnPrefillParams& p, const Access& acc, cudaStream_t stream, int only) {
  constexpr int kSplit = 2, kStages = 2;
  const int pieces = p.num_pieces;
  const int segments =
      std::min(p.overlap_segments > 0 ? p.overlap_segments : kDefaultOverlapSegments, pieces);
  std::unique_lock<std::mutex> lock;
  SideStream* side = only == 0 && segments > 1 ? SideStreamFor(segments + 1, &lock) : nullptr;
  if (side == nullptr) {  // one segment, a launch timed alone, or no side stream: not overlapped
    cudaGetLastError();   // (a failed stream or event creation is not the caller's error)
    return LaunchVariant<kDk, kDv, kCols, kSplit, true, kStages, true>(p, acc, stream, only);
  }
  // Tapered segments: the first and the last a quarter of the others' size (the state pass
  // waits for the first segment's launch 1 alone, and the last segment's state pass runs after
  // launch 1 has finished: both are time when half the GPU idles).
  const int edge = segments > 2 ? std::max(1, pieces / (4 * segments)) : 0;
  auto boundary = [&](int i) {
    if (edge == 0) return static_cast<int>(int64_t{pieces} * i / segments);
    if (i == 0) return 0;
    if (i == segments) return pieces;
    return edge + static_cast<int>(int64_t{pieces - 2 * edge} * (i - 1) / (segments - 2));
  };
  int rc = 0;
  for (int i = 0; i < segments && rc == 0; ++i) {
    const int g0 = boundary(i), g1 = boundary(i + 1);
    if (g1 == g0) continue;
    rc = LaunchPieces<kDk, kDv, true, true>(p, acc, stream, g0, g1);
    if (rc == 0) rc = static_cast<int>(cudaEventRecord(side->events[i], stream));
    if (rc == 0) rc = static_cast<int>(cudaStreamWaitEvent(side->stream, side->events[i], 0));
    if (rc == 0) {
      rc = LaunchSequential<kDk, kDv, kCols, kSplit, true, kStages, true>(p, acc, side->stream, 0,
                                                                          g0, g1);
    }
  }
  // Join even after an error, so the caller's stream never runs ahead of enqueued work.
  const cudaEvent_t join = side->events[segments];
  const cudaError_t joined = cudaEventRecord(join, side->stream);
  const cudaError_t waited = cudaStreamWaitEvent(stream, join, 0);
  if (rc != 0) return rc;
  return static_cast<int>(joined != cudaSuccess ? joined : waited);
}

template <int kDk, int kDv>
int Launch(const GdnPrefillParams& p, cudaStream_t stream, int only) {
  Access acc;
  auto rows16 = [](const void* base, int64_t stride) {
    return IsAligned(base, 16) && stride % 8 == 0;
  };
  acc.q16 = rows16(p.q, p.q_stride);
  acc.k16 = rows16(p.k, p.k_stride);
  acc.v16 = rows16(p.v, p.v_stride);
  acc.o4 = IsAligned(p.o, 4) && p.o_stride % 2 == 0;
  acc.o16 = rows16(p.o, p.o_stride);
  const int64_t piece_ctas = int64_t{p.num_pieces} * p.num_v_heads;
  if (piece_ctas > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  if (piece_ctas == 0) return static_cast<int>(cudaSuccess);  // every sequence is empty
  using V = GdnPrefillMmaVariant;
  const V variant = p.mma_variant != V::kDefault                     ? p.mma_variant
                    : p.num_seqs == 1 && p.num_pieces >= kLongPieces ? kDefaultLongVariant
                                                                     : kDefaultVariant;
  switch (variant) {
    case V::kCols16:
      return LaunchVariant<kDk, kDv, 16, 1, false, 2>(p, acc, stream, only);
    case V::kCols32:
      return LaunchVariant<kDk, kDv, 32, 1, false, 2>(p, acc, stream, only);
    case V::kCols64:
      return LaunchVariant<kDk, kDv, 64, 1, false, 2>(p, acc, stream, only);
    case V::kFusedCols16:
      return LaunchVariant<kDk, kDv, 16, 1, true, 2>(p, acc, stream, only);
    case V::kFusedCols32:
      return LaunchVariant<kDk, kDv, 32, 1, true, 2>(p, acc, stream, only);
    case V::kFusedCols16Split2:
      return LaunchVariant<kDk, kDv, 16, 2, true, 2>(p, acc, stream, only);
    case V::kFusedCols32Split2:
      return LaunchVariant<kDk, kDv, 32, 2, true, 2>(p, acc, stream, only);
    case V::kFusedCols64Split2:
      return LaunchVariant<kDk, kDv, 64, 2, true, 2>(p, acc, stream, only);
    case V::kCols32Stages3:
      return LaunchVariant<kDk, kDv, 32, 1, false, 3>(p, acc, stream, only);
    case V::kFusedCols16Split2Stages3:
      return LaunchVariant<kDk, kDv, 16, 2, true, 3>(p, acc, stream, only);
    case V::kFusedCols32Split2Solve2:
      return LaunchVariant<kDk, kDv, 32, 2, true, 2, true>(p, acc, stream, only);
    case V::kFusedCols64Split2Solve2:
      return LaunchVariant<kDk, kDv, 64, 2, true, 2, true>(p, acc, stream, only);
    case V::kCols32Solve2:
      return LaunchVariant<kDk, kDv, 32, 1, false, 2, true>(p, acc, stream, only);
    case V::kFusedCols32Split4Solve2:  // Split4 needs dk = 128 (32 Sᵀ columns a warp): else 2
      return LaunchVariant < kDk, kDv, 32, kDk >= 128 ? 4 : 2, true, 2,
             true > (p, acc, stream, only);
    case V::kOverlapCols64Split2Solve2:  // dv = 64: one 64-column tile
      return LaunchOverlapped<kDk, kDv, 64>(p, acc, stream, only);
    case V::kOverlapCols32Split2Solve2:
      return LaunchOverlapped<kDk, kDv, 32>(p, acc, stream, only);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}
#endif  // HYLA_GDN_MMA_EMULATION

}  // namespace gdn_mma

#ifndef HYLA_GDN_MMA_EMULATION
namespace internal {

size_t GdnPrefillMmaWorkspaceBytes(int num_pieces, int num_v_heads, int dk, int dv) {
  if (num_pieces <= 0 || num_v_heads <= 0) return 0;
  const size_t entry = 2 * (size_t{64} * dk + size_t{64} * dv + size_t{1} * dk * dv + 64 * 64) +
                       3 * 64 * sizeof(float);
  return entry * static_cast<size_t>(num_pieces) * static_cast<size_t>(num_v_heads);
}

// Launches the tensor-core path (only: 0 every launch, else that one); the caller validated the
// arguments and checked GdnPrefillUsesTensorCores.
int GdnPrefillMmaOnly(const GdnPrefillParams& p, void* stream, int only) {
  const cudaStream_t st = AsStream(stream);
  if (p.dk == 64 && p.dv == 64) return gdn_mma::Launch<64, 64>(p, st, only);
  if (p.dk == 64 && p.dv == 128) return gdn_mma::Launch<64, 128>(p, st, only);
  if (p.dk == 128 && p.dv == 64) return gdn_mma::Launch<128, 64>(p, st, only);
  if (p.dk == 128 && p.dv == 128) return gdn_mma::Launch<128, 128>(p, st, only);
  return static_cast<int>(cudaErrorInvalidValue);
}

int GdnPrefillMma(const GdnPrefillParams& p, void* stream) {
  return GdnPrefillMmaOnly(p, stream, 0);
}

int GdnPrefillMmaLaunch(const GdnPrefillParams& p, int launch, void* stream) {
  if (!GdnPrefillUsesTensorCores(p) || launch < 1 || launch > 3 || p.num_seqs <= 0 ||
      p.workspace_bytes < GdnPrefillWorkspaceBytesFor(p)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  return GdnPrefillMmaOnly(p, stream, launch);
}

}  // namespace internal
#endif  // HYLA_GDN_MMA_EMULATION

}  // namespace hyla::kernels
