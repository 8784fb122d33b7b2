// Tensor-core path of PagedAttentionPrefill (API and semantics: kernels/paged_attention_prefill.h)
// for bf16 KV blocks with dk == dv in {64, 128, 256}; kernels/paged_attention_prefill.cu selects it
// (PagedAttentionPrefillUsesTensorCores) and keeps its fp32 kernel for everything else.
//
// FlashAttention-2 style: one CTA of 8 warps (4 without kPagedAttentionPrefillWideTiles) per
// (tile, KV head, chunk of that head's query heads), 128 (64) query vectors = the (row, head)
// pairs of the tile (GQA packing, as the fp32 kernel: query vector qi = (row row0 + qi / hpc,
// head hc·hpc + qi % hpc of the group)); warp w owns query vectors 16w .. 16w + 15 (the M of its
// m16n8k16 MMAs). Every K/V row copied to shared memory serves all 128 query vectors. Head dim
// 256: 4 warps, 64 query vectors, Q in shared memory (registers go to the O accumulators).
//   * Q·scale·log2(e) is rounded to bf16 once into the warp's A fragments (registers);
//   * the K and V rows of one table entry (one 64-token block) are copied to shared memory with
//     cp.async, 3 stages deep (2 at head dim 256): the next entries' copies overlap this entry's
//     math; rows outside the tile's visible range are zero-filled (unwritten cache slots may hold
//     anything);
//   * S = Q·Kᵀ with mma.sync.m16n8k16 bf16 → fp32 (K fragments by ldmatrix), masked per row
//     (lo <= position <= pos), online softmax in fp32 with exp2 (running max and partial sums in
//     registers, row max over the 4 lanes of a row by shuffles);
//   * P rounded to bf16 is reused from the S accumulators as the A fragments of O += P·V (V
//     fragments by ldmatrix.trans), O in fp32 registers; normalised and written as fp32.
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16; lane = 4·g + t):
//   A (16x16, row): reg0 (row g, k 2t..2t+1), reg1 (row g+8, k 2t..), reg2 (row g, k 2t+8..),
//                   reg3 (row g+8, k 2t+8..); the lower k in the low 16 bits;
//   B (16x8, col):  reg0 (k 2t..2t+1, n g), reg1 (k 2t+8.., n g);
//   C (16x8 fp32):  c0, c1 (row g, n 2t, 2t+1), c2, c3 (row g+8, n 2t, 2t+1).
// ldmatrix.x4: lanes 8j..8j+7 give the row addresses of 8x8 matrix j; r[j] of lane 4g+t holds
// M_j[g][2t..2t+1] (.trans: M_j[2t][g], M_j[2t+1][g]).
//
// Shared rows are padded by 8 bf16 (row stride ≡ 4 banks mod 32: ldmatrix reads of 8 rows are
// conflict-free). HYLA_PREFILL_MMA_EMULATION (never set in the build) compiles only the kernel
// body as host code for a CPU emulation of the warp primitives, used to check the index math.
#ifndef HYLA_PREFILL_MMA_EMULATION
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/common.cuh"
#endif

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/ops.h"

namespace hyla::kernels {
namespace prefill_mma {

constexpr int kBlockTokens = 64;  // keys per table entry (one block)
constexpr int kPad = 8;           // bf16 elements of padding per shared row

// Warps per CTA (16 query vectors each): internal::PagedAttentionPrefillMmaQueries / 16.
template <int kD>
constexpr int kWarpsOf = internal::PagedAttentionPrefillMmaQueries(kD, kD) / 16;
// Head dims > 128 keep Q in shared memory (bf16, read by ldmatrix per k-step): their O
// accumulators need the registers.
template <int kD>
constexpr bool kQInSmemOf = kD > 128;

// K/V pipeline depth: entries in flight while one is computed on (2 at 256: shared memory).
template <int kD>
constexpr int kStagesOf = kD > 128 ? 2 : 3;

template <int kD>
constexpr size_t SmemBytes() {
  return (size_t{kStagesOf<kD>} * 2 /*K, V*/ * kBlockTokens +
          (kQInSmemOf<kD> ? size_t{16} * kWarpsOf<kD> : 0)) *
         (kD + kPad) * sizeof(uint16_t);
}

#ifdef HYLA_PREFILL_MMA_EMULATION
#define HYLA_PA_DEV inline
// Provided by the emulator.
void SyncThreads();
float ShflXor(float v, int mask);
void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void LdMatrixX4(uint32_t (&r)[4], const uint16_t* row);
void LdMatrixX4Trans(uint32_t (&r)[4], const uint16_t* row);
void CpAsync16(uint16_t* dst, const uint16_t* src, bool fill);
void CpAsyncCommit();
void CpAsyncWaitN(int n);
template <int kN>
inline void CpAsyncWait() {
  CpAsyncWaitN(kN);
}
uint32_t PackBf16(float lo, float hi);
#else
#define HYLA_PA_DEV __device__ __forceinline__

HYLA_PA_DEV void SyncThreads() { __syncthreads(); }
HYLA_PA_DEV float ShflXor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }

// c += A·B, A 16x16 bf16 (row), B 16x8 bf16 (col), c 16x8 fp32.
HYLA_PA_DEV void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

HYLA_PA_DEV uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; this lane gives the address of row (lane % 8) of matrix lane / 8.
HYLA_PA_DEV void LdMatrixX4(uint32_t (&r)[4], const uint16_t* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row))
               : "memory");
}
HYLA_PA_DEV void LdMatrixX4Trans(uint32_t (&r)[4], const uint16_t* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row))
               : "memory");
}

// 16 bytes global → shared, asynchronous; fill == false writes zeros and reads nothing.
HYLA_PA_DEV void CpAsync16(uint16_t* dst, const uint16_t* src, bool fill) {
  const int src_bytes = fill ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(dst)),
               "l"(src), "r"(src_bytes)
               : "memory");
}
HYLA_PA_DEV void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kN committed groups of this thread are still in flight.
template <int kN>
HYLA_PA_DEV void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kN) : "memory");
}

// Two floats → bf16x2 (round to nearest even), lo in the low 16 bits.
HYLA_PA_DEV uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
#endif

HYLA_PA_DEV int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
HYLA_PA_DEV int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }

// How the query heads of a KV head are split over CTAs (tile_rows: PagedAttentionPrefillTileRows).
struct MmaPlan {
  int hpc;          // query heads per CTA
  int head_chunks;  // CTAs per (tile, KV head)
  int tile_rows;    // rows per tile
};

// The work of CTA `cta`, thread `tid` (0..32·kWarpsOf<kD>-1); smem: SmemBytes<kD>() bytes,
// 16-aligned: K/V stages [kStagesOf][K, V][64][kD + kPad], then (kQInSmemOf) Q [16·warps][kD +
// kPad].
template <int kD>
HYLA_PA_DEV void PrefillMmaBody(const PagedAttentionPrefillParams& p, const MmaPlan& g, int cta,
                                int tid, uint16_t* smem) {
  constexpr int kThreads = 32 * kWarpsOf<kD>;
  constexpr bool kQSmem = kQInSmemOf<kD>;
  constexpr int kStages = kStagesOf<kD>;
  constexpr int kLd = kD + kPad;                  // shared row stride (bf16)
  constexpr int kTileElems = kBlockTokens * kLd;  // one K or V tile
  constexpr int kKSteps = kD / 16;                // k-steps of Q·Kᵀ
  constexpr int kSTiles = kBlockTokens / 8;       // 8-key column tiles of S
  constexpr int kOTiles = kD / 8;                 // 8-column tiles of O
  constexpr int kChunks = kD / 8;                 // 16-byte chunks per K/V row
  static_assert(kD % 32 == 0, "two k-steps per K ldmatrix.x4, two O tiles per V ldmatrix.x4");

  const int Hkv = p.num_kv_heads;
  const int group = p.num_heads / Hkv;
  int bid = cta;
  const int hc = bid % g.head_chunks;
  bid /= g.head_chunks;
  const int kvh = bid % Hkv;
  // Last tiles first: in a sequence they see the most keys.
  const int tile = p.num_tiles - 1 - bid / Hkv;
  const int s = p.tiles[3 * tile];
  const int row0 = p.tiles[3 * tile + 1];
  const int count = p.tiles[3 * tile + 2] < g.tile_rows ? p.tiles[3 * tile + 2] : g.tile_rows;
  const int warp = tid / 32, lane = tid % 32;
  const int lg = lane / 4, lt = lane % 4;  // fragment row group and column pair

  // The tile's visible positions [tile_lo, tile_hi] (every thread computes them).
  int64_t tile_lo = INT_MAX, tile_hi = -1;
  for (int r = 0; r < count; ++r) {
    const int pos = p.row_pos[row0 + r];
    const int lo = p.window > 0 ? (pos + 1 - p.window > 0 ? pos + 1 - p.window : 0) : 0;
    tile_lo = Min64(tile_lo, lo);
    tile_hi = Max64(tile_hi, pos);
  }

  // This lane's two query vectors: rows lg (h = 0) and lg + 8 (h = 1) of the warp's 16.
  bool valid[2];
  int64_t pos_r[2], lo_r[2];
  const float* q_r[2];
  float* o_r[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int qi = 16 * warp + lg + 8 * h;
    const int token = qi / g.hpc, hg = hc * g.hpc + qi % g.hpc;
    valid[h] = token < count && hg < group;
    pos_r[h] = -1;
    lo_r[h] = 0;
    q_r[h] = nullptr;
    o_r[h] = nullptr;
    if (valid[h]) {
      pos_r[h] = p.row_pos[row0 + token];
      lo_r[h] = p.window > 0 ? Max64(0, pos_r[h] + 1 - p.window) : 0;
      q_r[h] = p.q + static_cast<int64_t>(row0 + token) * p.q_stride +
               static_cast<int64_t>(kvh * group + hg) * kD;
      o_r[h] = p.out + static_cast<int64_t>(row0 + token) * p.out_stride +
               static_cast<int64_t>(kvh * group + hg) * kD;
    }
  }

  // Table entries that intersect [tile_lo, tile_hi]: a contiguous range (ascending chunks),
  // [first entry with chunk >= tile_lo / 64, first entry with chunk > tile_hi / 64).
  const int64_t table_row = static_cast<int64_t>(s) * p.max_blocks;
  const int entries = p.num_blocks[s];
  auto chunk_of = [&](int64_t e) -> int64_t {
    return p.block_chunks != nullptr ? p.block_chunks[table_row + e] : e;
  };
  auto base_of = [&](int e) -> int64_t { return chunk_of(e) * kBlockTokens; };
  int e_begin = 0, e_end = 0;
  if (entries > 0 && tile_hi >= tile_lo) {
    const int64_t chunk0 = chunk_of(0);
    // First entry with chunk > c: tables of consecutive chunks (the usual case) are answered by
    // the guess c - chunk0 + 1 (checked), others by binary search.
    auto first_above = [&](int64_t c) -> int {
      const int64_t guess = c - chunk0 + 1;
      if (guess >= 0 && guess <= entries && (guess == 0 || chunk_of(guess - 1) <= c) &&
          (guess == entries || chunk_of(guess) > c)) {
        return static_cast<int>(guess);
      }
      int lo = 0, hi = entries;
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (chunk_of(mid) > c) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
      return lo;
    };
    e_begin = first_above(tile_lo / kBlockTokens - 1);
    e_end = first_above(tile_hi / kBlockTokens);
  }

  const uint16_t* pool = static_cast<const uint16_t*>(p.kv);
  const int64_t v_off = static_cast<int64_t>(kBlockTokens) * Hkv * kD;
  // Entry e → stage: K rows [blo, bhi) of head kvh, then V rows; other rows zero.
  auto load = [&](int e, int stage) {
    const int64_t base = base_of(e);
    const int64_t blo = Max64(tile_lo, base) - base;
    const int64_t bhi = Min64(tile_hi + 1, base + kBlockTokens) - base;
    const uint16_t* block =
        pool + static_cast<int64_t>(p.block_table[table_row + e]) * p.block_stride;
    uint16_t* ks = smem + stage * 2 * kTileElems;
    uint16_t* vs = ks + kTileElems;
    for (int i = tid; i < kBlockTokens * kChunks; i += kThreads) {
      const int t = i / kChunks, c = i % kChunks;
      const bool in = t >= blo && t < bhi;
      const int64_t off = (static_cast<int64_t>(t) * Hkv + kvh) * kD + 8 * c;
      CpAsync16(ks + t * kLd + 8 * c, in ? block + off : block, in);
      CpAsync16(vs + t * kLd + 8 * c, in ? block + v_off + off : block, in);
    }
  };

  float o[kOTiles][4];
#pragma unroll
  for (int j = 0; j < kOTiles; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) o[j][i] = 0.0f;
  }
  float m_r[2] = {-INFINITY, -INFINITY};  // running max (log2 units)
  float l_r[2] = {0.0f, 0.0f};            // this lane's part of the running sum

  // Entry e lives in stage (e - e_begin) % kStages. Prologue: the first kStages - 1 entries, one
  // commit group each (possibly empty: the group count stays uniform).
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (e_begin + i < e_end) load(e_begin + i, i);
    CpAsyncCommit();
  }
  // (After the prologue's copies are issued: the Q loads overlap them.)
  // A fragments of Q·scale·log2(e) (zeros for absent query vectors): in registers, or (kQSmem)
  // stored as this lane's pieces of the warp's Q rows in shared memory (visible after the first
  // barrier of the loop below).
  const float qscale = p.scale * 1.4426950408889634f;
  uint32_t qf[kQSmem ? 1 : kKSteps][4];
  uint16_t* qs = smem + 2 * kStages * kTileElems + 16 * warp * kLd;  // kQSmem: the warp's rows
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int c = 16 * kk + 8 * half + 2 * lt;
        float x0 = 0.0f, x1 = 0.0f;
        if (valid[h]) {
          x0 = q_r[h][c] * qscale;
          x1 = q_r[h][c + 1] * qscale;
        }
        const uint32_t packed = PackBf16(x0, x1);
        if constexpr (kQSmem) {
          *reinterpret_cast<uint32_t*>(qs + (lg + 8 * h) * kLd + c) = packed;
        } else {
          qf[kk][h + 2 * half] = packed;
        }
      }
    }
  }

  int stage = 0;
  for (int e = e_begin; e < e_end; ++e) {
    // Entry e + kStages - 1 goes to the stage read in the previous iteration (which ended with a
    // barrier), or at e_begin to the one stage the prologue left free.
    const int ahead = e + kStages - 1;
    if (ahead < e_end) load(ahead, stage == 0 ? kStages - 1 : stage - 1);
    CpAsyncCommit();
    CpAsyncWait<kStages - 1>();  // entry e's group (kStages - 1 groups follow it) has landed
    SyncThreads();               // ... for every thread
    const uint16_t* ks = smem + stage * 2 * kTileElems;
    const uint16_t* vs = ks + kTileElems;

    // S = Q·Kᵀ [16 query vectors, 64 keys] per warp.
    float sc[kSTiles][4];
#pragma unroll
    for (int n = 0; n < kSTiles; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) sc[n][i] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < kKSteps; kk += 2) {
      uint32_t qa[2][4];  // kQSmem: A fragments of k-steps kk, kk + 1
      if constexpr (kQSmem) {
        // Matrices: rows 0-7 / 8-15 of the warp's 16, columns 16kk + 0 / 8 (A reg order).
#pragma unroll
        for (int x = 0; x < 2; ++x) {
          LdMatrixX4(qa[x], qs + ((lane & 7) + 8 * ((lane >> 3) & 1)) * kLd + 16 * (kk + x) +
                                8 * (lane >> 4));
        }
      }
#pragma unroll
      for (int n = 0; n < kSTiles; ++n) {
        uint32_t b[4];  // matrices: keys 8n.., columns 16kk + 0, 8, 16, 24
        LdMatrixX4(b, ks + (8 * n + (lane & 7)) * kLd + 16 * kk + 8 * (lane >> 3));
        if constexpr (kQSmem) {
          Mma(sc[n], qa[0], b[0], b[1]);
          Mma(sc[n], qa[1], b[2], b[3]);
        } else {
          Mma(sc[n], qf[kk], b[0], b[1]);
          Mma(sc[n], qf[kk + 1], b[2], b[3]);
        }
      }
    }

    // Mask, online softmax; P stays in sc.
    const int64_t base = base_of(e);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // Visible keys of this row in the block: offsets vlo..vhi (empty when vlo > vhi).
      const int vlo = static_cast<int>(Min64(Max64(lo_r[h] - base, 0), kBlockTokens));
      const int vhi = static_cast<int>(Max64(Min64(pos_r[h] - base, kBlockTokens - 1), -1));
      const bool full = vlo == 0 && vhi == kBlockTokens - 1;
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kSTiles; ++n) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int t = 8 * n + 2 * lt + j;
          float v = sc[n][2 * h + j];
          if (!full && !(t >= vlo && t <= vhi)) v = -INFINITY;
          sc[n][2 * h + j] = v;
          mx = fmaxf(mx, v);
        }
      }
      mx = fmaxf(mx, ShflXor(mx, 1));
      mx = fmaxf(mx, ShflXor(mx, 2));
      const float m_new = fmaxf(m_r[h], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m_r[h] - m_use);  // 0 while nothing was visible
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < kSTiles; ++n) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const float pj = exp2f(sc[n][2 * h + j] - m_use);  // masked: exp2(-inf) = 0
          sc[n][2 * h + j] = pj;
          sum += pj;
        }
      }
      l_r[h] = l_r[h] * alpha + sum;
      m_r[h] = m_new;
#pragma unroll
      for (int j = 0; j < kOTiles; ++j) {
        o[j][2 * h] *= alpha;
        o[j][2 * h + 1] *= alpha;
      }
    }

    // O += P·V: P's A fragments are the S accumulators of key tiles 2kk and 2kk + 1.
#pragma unroll
    for (int kk = 0; kk < kBlockTokens / 16; ++kk) {
      const uint32_t a[4] = {PackBf16(sc[2 * kk][0], sc[2 * kk][1]),
                             PackBf16(sc[2 * kk][2], sc[2 * kk][3]),
                             PackBf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                             PackBf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
      for (int j = 0; j < kOTiles; j += 2) {
        uint32_t b[4];  // matrices: keys 16kk + 0, 8, columns 8j + 0, 8 (transposed)
        LdMatrixX4Trans(
            b, vs + (16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1)) * kLd + 8 * j + 8 * (lane >> 4));
        Mma(o[j], a, b[0], b[1]);
        Mma(o[j + 1], a, b[2], b[3]);
      }
    }
    SyncThreads();  // done with this stage before the next iteration refills it
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }

  // Row sums over the 4 lanes of a row, normalise, write.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_r[h] += ShflXor(l_r[h], 1);
    l_r[h] += ShflXor(l_r[h], 2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (!valid[h]) continue;
    const float inv = l_r[h] > 0.0f ? 1.0f / l_r[h] : 0.0f;
#pragma unroll
    for (int j = 0; j < kOTiles; ++j) {
      const int c = 8 * j + 2 * lt;
      o_r[h][c] = o[j][2 * h] * inv;
      o_r[h][c + 1] = o[j][2 * h + 1] * inv;
    }
  }
}

#ifndef HYLA_PREFILL_MMA_EMULATION
template <int kD>
__global__ void __launch_bounds__(32 * kWarpsOf<kD>)
    PagedAttentionPrefillMmaKernel(PagedAttentionPrefillParams p, MmaPlan g) {
  extern __shared__ __align__(16) uint16_t mma_smem[];
  PrefillMmaBody<kD>(p, g, static_cast<int>(blockIdx.x), static_cast<int>(threadIdx.x), mma_smem);
}

template <int kD>
int Launch(const PagedAttentionPrefillParams& p, cudaStream_t stream) {
  constexpr int kBM = 16 * kWarpsOf<kD>;
  const int group = p.num_heads / p.num_kv_heads;
  MmaPlan g;
  g.hpc = group < kBM ? group : kBM;
  g.head_chunks = (group + g.hpc - 1) / g.hpc;
  g.tile_rows = kBM / g.hpc;
  constexpr size_t kSmem = SmemBytes<kD>();
  cudaError_t err =
      cudaFuncSetAttribute(PagedAttentionPrefillMmaKernel<kD>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem));
  if (err != cudaSuccess) return static_cast<int>(err);
  const int64_t ctas = int64_t{p.num_tiles} * p.num_kv_heads * g.head_chunks;
  if (ctas > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  PagedAttentionPrefillMmaKernel<kD>
      <<<static_cast<unsigned>(ctas), 32 * kWarpsOf<kD>, kSmem, stream>>>(p, g);
  return LaunchResult();
}
#endif  // HYLA_PREFILL_MMA_EMULATION

}  // namespace prefill_mma

#ifndef HYLA_PREFILL_MMA_EMULATION
bool PagedAttentionPrefillUsesTensorCores(const PagedAttentionPrefillParams& p) {
  return p.kv_dtype == KernelDType::kBf16 &&
         internal::PagedAttentionPrefillMmaQueries(p.dk, p.dv) > 0 && IsAligned(p.kv, 16) &&
         p.block_stride % 8 == 0;
}

namespace internal {
// Launches the tensor-core kernel; the caller (PagedAttentionPrefill) validated the arguments
// and checked PagedAttentionPrefillUsesTensorCores.
int PagedAttentionPrefillMma(const PagedAttentionPrefillParams& p, void* stream) {
  switch (p.dk) {
    case 64:
      return prefill_mma::Launch<64>(p, AsStream(stream));
    case 128:
      return prefill_mma::Launch<128>(p, AsStream(stream));
    case 256:
      return prefill_mma::Launch<256>(p, AsStream(stream));
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}
}  // namespace internal
#endif  // HYLA_PREFILL_MMA_EMULATION

}  // namespace hyla::kernels
