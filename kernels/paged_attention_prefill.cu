// Causal softmax attention over paged KV blocks for many query rows per sequence (API and
// semantics: kernels/paged_attention_prefill.h). CPU reference: AttendOne of
// runtime/cpu/attention_layer.cc. bf16 KV at head dims 64, 128 and 256 goes to the tensor-core
// kernel of kernels/paged_attention_prefill_mma.cu; this file's kernel serves the rest.
//
// Flash-attention style in fp32 (no tensor cores: the fp32 path stays within fp32 rounding of
// the CPU reference). One CTA of 128 threads per (tile, KV head, chunk of that head's query
// heads, sub-tile of rows: tiles sized for the tensor-core kernel's twice larger CTAs are split
// over GroupPlan::sub_tiles CTAs here): its kBM query vectors are the (row, head) pairs of the
// sub-tile's rows and of up to kBM of the KV head's query heads (GQA packing: every K/V row read
// serves the whole group). The CTA streams the table entries of its sequence that intersect the
// tile's visible range; per entry (one 64-token block):
//   1. K rows of the visible range → shared memory as fp32 (zero-padded to kD columns),
//   2. S = Q·Kᵀ [kBM, 64]: thread (tr, tc) owns rows tr + 16i and columns tc + 8j; scale, mask
//      (per row: lo <= position <= pos), online softmax with running max m and sum l per row in
//      registers (the 8 threads of a row are 8 adjacent lanes: shuffles), P → shared memory,
//   3. V rows → the same shared buffer, 4. acc[rows tr + 16i, columns tc + 8j] = α·acc + P·V.
// Shared rows are padded to odd strides (conflict-free column reads by 8 rows).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kBlockTokens = 64;
constexpr int kThreads = 128;
constexpr int kTR = 16;  // thread rows
constexpr int kTC = 8;   // thread columns (adjacent lanes)
constexpr int kMaxDim = 256;
constexpr int kLdp = kBlockTokens + 1;

__host__ __device__ constexpr int TileQueries(int kd) { return kd > 128 ? 32 : 64; }

template <int kD>
__host__ __device__ constexpr size_t SmemFloats() {
  return static_cast<size_t>(TileQueries(kD)) * (kD + 1) + size_t{kBlockTokens} * (kD + 1) +
         static_cast<size_t>(TileQueries(kD)) * kLdp;
}

// Padded head dim of a shape (0: unsupported).
int PaddedDim(int dk, int dv) {
  const int d = std::max(dk, dv);
  if (d <= 32) return 32;
  if (d <= 64) return 64;
  if (d <= 128) return 128;
  if (d <= kMaxDim) return 256;
  return 0;
}

struct GroupPlan {
  int hpc;          // query heads per CTA
  int head_chunks;  // CTAs per (tile, KV head) along the heads
  int tile_rows;    // rows per CTA
  int sub_tiles;    // CTAs per (tile, KV head, head chunk) along the rows
};

GroupPlan PlanGroup(int group, int bm) {
  GroupPlan g;
  g.hpc = std::min(group, bm);
  g.head_chunks = (group + g.hpc - 1) / g.hpc;
  g.tile_rows = bm / g.hpc;
  g.sub_tiles = 1;
  return g;
}

// Rows per tile of the API (PagedAttentionPrefillTileRows) for a valid shape: sized for the
// tensor-core kernel's CTAs where it applies (whatever the KV dtype: tiles are planned before it
// is known; this file's kernel splits them over sub_tiles), else for this file's kernel.
int ApiTileRows(int group, int dk, int dv) {
  const int mma = internal::PagedAttentionPrefillMmaQueries(dk, dv);
  if (mma > 0) return PlanGroup(group, mma).tile_rows;
  return PlanGroup(group, TileQueries(PaddedDim(dk, dv))).tile_rows;
}

template <typename Tkv, int kD>
__global__ void __launch_bounds__(kThreads)
    PagedAttentionPrefillKernel(PagedAttentionPrefillParams p, GroupPlan g) {
  constexpr int kBM = TileQueries(kD);
  constexpr int kRows = kBM / kTR;            // query rows per thread
  constexpr int kSCols = kBlockTokens / kTC;  // score columns per thread
  constexpr int kOCols = kD / kTC;            // output columns per thread
  constexpr int kLd = kD + 1;
  extern __shared__ float smem[];
  float* Qs = smem;                      // [kBM, kLd]
  float* KVs = Qs + kBM * kLd;           // [64, kLd]: K, then V of the current block
  float* Ps = KVs + kBlockTokens * kLd;  // [kBM, kLdp]
  __shared__ int range[2];               // tile's smallest lo, largest pos

  const int Hkv = p.num_kv_heads;
  const int group = p.num_heads / Hkv;
  int64_t bid = blockIdx.x;
  const int sub = static_cast<int>(bid % g.sub_tiles);
  bid /= g.sub_tiles;
  const int hc = static_cast<int>(bid % g.head_chunks);
  bid /= g.head_chunks;
  const int kvh = static_cast<int>(bid % Hkv);
  // Last tiles first: in a sequence they see the most keys.
  const int tile = p.num_tiles - 1 - static_cast<int>(bid / Hkv);
  const int s = p.tiles[3 * tile];
  // Rows [sub · tile_rows, +tile_rows) of the tile (none: the whole CTA returns).
  const int row0 = p.tiles[3 * tile + 1] + sub * g.tile_rows;
  const int count =
      min(min(p.tiles[3 * tile + 2], g.tile_rows * g.sub_tiles) - sub * g.tile_rows, g.tile_rows);
  if (count <= 0) return;
  const int dk = p.dk, dv = p.dv;
  const int tid = threadIdx.x;
  const int tr = tid / kTC, tc = tid % kTC;

  // Q tile: query vector qi = (row row0 + qi / hpc, head kvh·group + hc·hpc + qi % hpc).
  for (int i = tid; i < kBM * kD; i += kThreads) {
    const int qi = i / kD, d = i % kD;
    const int token = qi / g.hpc, hg = hc * g.hpc + qi % g.hpc;
    float val = 0.0f;
    if (token < count && hg < group && d < dk) {
      val = p.q[static_cast<int64_t>(row0 + token) * p.q_stride +
                static_cast<int64_t>(kvh * group + hg) * dk + d];
    }
    Qs[qi * kLd + d] = val;
  }
  if (tid == 0) {
    int lo_min = INT_MAX, pos_max = -1;
    for (int t = 0; t < count; ++t) {
      const int pos = p.row_pos[row0 + t];
      const int lo = p.window > 0 ? max(0, pos + 1 - p.window) : 0;
      lo_min = min(lo_min, lo);
      pos_max = max(pos_max, pos);
    }
    range[0] = lo_min;
    range[1] = pos_max;
  }
  // Per owned row: position (-1: no query, sees nothing) and first visible position.
  int pos_r[kRows], lo_r[kRows];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int qi = tr + kTR * i;
    const int token = qi / g.hpc, hg = hc * g.hpc + qi % g.hpc;
    pos_r[i] = -1;
    lo_r[i] = 0;
    if (token < count && hg < group) {
      pos_r[i] = p.row_pos[row0 + token];
      lo_r[i] = p.window > 0 ? max(0, pos_r[i] + 1 - p.window) : 0;
    }
  }
  float m_r[kRows], l_r[kRows], acc[kRows][kOCols];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    m_r[i] = -INFINITY;
    l_r[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < kOCols; ++j) acc[i][j] = 0.0f;
  }
  __syncthreads();
  const int64_t tile_lo = range[0], tile_hi = range[1];  // inclusive

  const Tkv* pool = static_cast<const Tkv*>(p.kv);
  const int64_t v_off = static_cast<int64_t>(kBlockTokens) * Hkv * dk;
  const int entries = p.num_blocks[s];
  for (int e = 0; e < entries; ++e) {
    const int64_t table_index = static_cast<int64_t>(s) * p.max_blocks + e;
    const int64_t base =
        static_cast<int64_t>(p.block_chunks != nullptr ? p.block_chunks[table_index] : e) *
        kBlockTokens;
    if (base > tile_hi) break;  // ascending chunks: nothing later is visible
    const int blo = static_cast<int>(max(tile_lo, base) - base);
    const int bhi = static_cast<int>(min(tile_hi + 1, base + kBlockTokens) - base);
    if (blo >= bhi) continue;  // uniform over the CTA
    const Tkv* block = pool + static_cast<int64_t>(p.block_table[table_index]) * p.block_stride;

    // 1. K rows [blo, bhi) of head kvh.
    __syncthreads();  // the previous block's P·V is done with KVs and Ps
    for (int i = blo * kD + tid; i < bhi * kD; i += kThreads) {
      const int t = i / kD, d = i % kD;
      KVs[t * kLd + d] =
          d < dk ? ToFloat(block[(static_cast<int64_t>(t) * Hkv + kvh) * dk + d]) : 0.0f;
    }
    __syncthreads();

    // 2. Scores, mask, online softmax.
    float sc[kRows][kSCols];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
#pragma unroll
      for (int j = 0; j < kSCols; ++j) sc[i][j] = 0.0f;
    }
#pragma unroll 4
    for (int d = 0; d < dk; ++d) {
      float qv[kRows], kv[kSCols];
#pragma unroll
      for (int i = 0; i < kRows; ++i) qv[i] = Qs[(tr + kTR * i) * kLd + d];
#pragma unroll
      for (int j = 0; j < kSCols; ++j) kv[j] = KVs[(tc + kTC * j) * kLd + d];
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
#pragma unroll
        for (int j = 0; j < kSCols; ++j) sc[i][j] += qv[i] * kv[j];
      }
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kSCols; ++j) {
        const int t = tc + kTC * j;
        const int64_t kp = base + t;
        const bool vis = t >= blo && t < bhi && kp >= lo_r[i] && kp <= pos_r[i];
        sc[i][j] = vis ? sc[i][j] * p.scale : -INFINITY;
        mx = fmaxf(mx, sc[i][j]);
      }
#pragma unroll
      for (int off = 1; off < kTC; off <<= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      }
      const float m_new = fmaxf(m_r[i], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kSCols; ++j) {
        const float pj = expf(sc[i][j] - m_use);  // exp(-inf) = 0 for masked keys
        Ps[(tr + kTR * i) * kLdp + tc + kTC * j] = pj;
        sum += pj;
      }
#pragma unroll
      for (int off = 1; off < kTC; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      const float alpha = expf(m_r[i] - m_use);  // 0 while nothing was visible
      l_r[i] = l_r[i] * alpha + sum;
      m_r[i] = m_new;
#pragma unroll
      for (int j = 0; j < kOCols; ++j) acc[i][j] *= alpha;
    }
    __syncthreads();  // scores done with K; P complete

    // 3. V rows [blo, bhi).
    for (int i = blo * kD + tid; i < bhi * kD; i += kThreads) {
      const int t = i / kD, d = i % kD;
      KVs[t * kLd + d] =
          d < dv ? ToFloat(block[v_off + (static_cast<int64_t>(t) * Hkv + kvh) * dv + d]) : 0.0f;
    }
    __syncthreads();

    // 4. acc += P·V.
    for (int t = blo; t < bhi; ++t) {
      float pv[kRows], vv[kOCols];
#pragma unroll
      for (int i = 0; i < kRows; ++i) pv[i] = Ps[(tr + kTR * i) * kLdp + t];
#pragma unroll
      for (int j = 0; j < kOCols; ++j) vv[j] = KVs[t * kLd + tc + kTC * j];
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
#pragma unroll
        for (int j = 0; j < kOCols; ++j) acc[i][j] += pv[i] * vv[j];
      }
    }
  }

  // Normalise and write the owned rows.
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int qi = tr + kTR * i;
    const int token = qi / g.hpc, hg = hc * g.hpc + qi % g.hpc;
    if (token >= count || hg >= group) continue;
    const float inv = l_r[i] > 0.0f ? 1.0f / l_r[i] : 0.0f;
    float* o = p.out + static_cast<int64_t>(row0 + token) * p.out_stride +
               static_cast<int64_t>(kvh * group + hg) * dv;
#pragma unroll
    for (int j = 0; j < kOCols; ++j) {
      const int c = tc + kTC * j;
      if (c < dv) o[c] = acc[i][j] * inv;
    }
  }
}

template <typename Tkv, int kD>
int LaunchTyped(const PagedAttentionPrefillParams& p, cudaStream_t stream) {
  const int group = p.num_heads / p.num_kv_heads;
  GroupPlan g = PlanGroup(group, TileQueries(kD));
  g.sub_tiles = (ApiTileRows(group, p.dk, p.dv) + g.tile_rows - 1) / g.tile_rows;
  const size_t smem = sizeof(float) * SmemFloats<kD>();
  cudaError_t err =
      cudaFuncSetAttribute(PagedAttentionPrefillKernel<Tkv, kD>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return static_cast<int>(err);
  const int64_t ctas = int64_t{p.num_tiles} * p.num_kv_heads * g.head_chunks * g.sub_tiles;
  if (ctas > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  PagedAttentionPrefillKernel<Tkv, kD>
      <<<static_cast<unsigned>(ctas), kThreads, smem, stream>>>(p, g);
  return LaunchResult();
}

template <typename Tkv>
int LaunchKv(const PagedAttentionPrefillParams& p, cudaStream_t stream) {
  switch (PaddedDim(p.dk, p.dv)) {
    case 32:
      return LaunchTyped<Tkv, 32>(p, stream);
    case 64:
      return LaunchTyped<Tkv, 64>(p, stream);
    case 128:
      return LaunchTyped<Tkv, 128>(p, stream);
    case 256:
      return LaunchTyped<Tkv, 256>(p, stream);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace

int PagedAttentionPrefillTileRows(int num_heads, int num_kv_heads, int dk, int dv) {
  if (num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0 || dk < 1 || dv < 1) {
    return 0;
  }
  const int kd = PaddedDim(dk, dv);
  if (kd == 0) return 0;
  return ApiTileRows(num_heads / num_kv_heads, dk, dv);
}

int PagedAttentionPrefill(const PagedAttentionPrefillParams& p, void* stream) {
  if (p.num_tiles < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.num_tiles == 0) return static_cast<int>(cudaSuccess);
  if (PagedAttentionPrefillTileRows(p.num_heads, p.num_kv_heads, p.dk, p.dv) == 0 ||
      p.q == nullptr || p.kv == nullptr || p.block_table == nullptr || p.num_blocks == nullptr ||
      p.row_pos == nullptr || p.tiles == nullptr || p.out == nullptr || p.max_blocks < 0 ||
      p.window < 0 || p.q_stride < int64_t{p.num_heads} * p.dk ||
      p.out_stride < int64_t{p.num_heads} * p.dv ||
      p.block_stride < int64_t{kBlockTokens} * p.num_kv_heads * (p.dk + p.dv) ||
      (p.kv_dtype != KernelDType::kF32 && p.kv_dtype != KernelDType::kBf16)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (PagedAttentionPrefillUsesTensorCores(p)) return internal::PagedAttentionPrefillMma(p, stream);
  const cudaStream_t st = AsStream(stream);
  return p.kv_dtype == KernelDType::kF32 ? LaunchKv<float>(p, st) : LaunchKv<__nv_bfloat16>(p, st);
}

}  // namespace hyla::kernels
