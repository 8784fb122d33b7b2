// Softmax attention decode over paged KV blocks (GQA, sliding window, split-K with a combine
// kernel). API and semantics: kernels/ops.h. CPU reference: the attention layer's AttendOne
// (runtime/cpu/attention_layer.cc).
//
// Bound by the KV traffic. Grid (both kernels): one CTA per (sequence, KV head, up to 8 of the
// head's query heads, split): every K/V row it reads serves all those query heads. The launch
// configuration depends only on num_seqs, the head counts and dims, max_blocks, window,
// num_splits and the workspace (CUDA-graph friendly): each CTA finds its sequence's table row
// (table_rows), the visible table entries [v0, v1) (VisibleEntries: binary searches over the
// ascending chunks, so with a window the entries before kv_len − window are never visited), and
// takes the split-th of `splits` equal pieces of them; pieces that get no entry write m = −inf,
// l = 0, and the combine kernel merges (m, l, unnormalised acc) of the splits (zeros when no
// split saw a position).
//
// Tensor-core kernel (PagedAttentionMmaKernel; bf16 blocks, dk and dv multiples of 16):
//   * the split's entries are cut into tiles of kTile (32 or 64) tokens; the K and V rows of the
//     tile are copied to shared memory with cp.async into a ring of kStages stages (rows outside
//     the visible range zero-filled, reading nothing), so the copies of the next kStages − 1
//     tiles are in flight while one tile is computed; one barrier per tile; the table entries
//     of the first kStages tiles are loaded at once (one latency before the first copies, not
//     a chain), later ones one iteration ahead; each thread's 16-byte copies step through
//     (row, unit) pairs with precomputed increments (no division per copy); "e" variants give
//     the copies an L2 evict_first policy (K/V rows are read once: they do not evict other
//     lines, e.g. dirty ones a preceding kernel left, whose write-back would slow this
//     read-only kernel);
//   * kCols · kTile / 16 warps; warp w owns tokens 16·(w mod kTile/16) .. + 15 of every tile
//     and the value columns [c0, c0 + kD / kCols), c0 = (w div kTile/16) · kD / kCols, with its
//     own online softmax (m, l) and fp32 O accumulators (the kCols warps of a token slice
//     compute the same S and (m, l)); the token slices merge through shared memory at the end.
//     kCols > 1 buys warps per SM where one CTA fills the SM (head dim 256: 66 KB per 64-token
//     stage, so 4 warps per SM at kCols = 1) and halves the accumulator registers; with
//     kSplitS ("s" variants) the kCols warps of a token slice instead split the dims of S (kD /
//     kCols each: S is 2/3 of the MMAs at head dim 256), publish their partial S in shared
//     memory, meet at a named barrier (one per token slice) and each add the kCols partials in
//     the same order, so they agree bit for bit on S, m and l;
//   * S = Q·Kᵀ and O += P·V with mma.sync.m16n8k16 bf16 → fp32 (K by ldmatrix, V by
//     ldmatrix.trans). The 16 MMA rows are the ≤ 8 query heads twice: rows g hold bf16(x), rows
//     g + 8 hold bf16(x − bf16(x)) for x = q·scale·log2(e) (A of S) and x = p (A of P·V), and
//     the two halves of each result are summed: 16 significant bits of q and p at no extra MMA,
//     so fp32 queries keep fp32-level accuracy (~1e-5) over bf16 blocks;
//   * variants (tile, stages, column slices, target waves of the automatic split count) are
//     selectable through PagedAttentionDecodeParams::variant for the benchmark; automatic
//     splits aim at waves · (resident CTAs per SM) · SMs CTAs (or at SMs CTAs: "wS" variants,
//     no split and no combine when the (sequence, head) pairs already fill the SMs), capped by
//     the entries a window can cover.
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16; lane = 4·g + t): A reg0 (row g, k 2t..2t+1),
// reg1 (row g+8, k 2t..), reg2 (row g, k 2t+8..), reg3 (row g+8, k 2t+8..); B reg0 (k 2t..,
// n g), reg1 (k 2t+8.., n g); C c0, c1 (row g, n 2t, 2t+1), c2, c3 (row g+8, n 2t, 2t+1).
// Shared K/V rows are padded to an odd number of 16-byte units (conflict-free ldmatrix).
//
// CUDA-core kernel (PagedAttentionSplitKernel; fp32 blocks, other head dims, variants
// cuda_cores and cc_*), 128 threads; automatic splits aim at whole waves of resident CTAs
// (cc_w1, the default; cuda_cores keeps the original 4 · SMs plan): per table entry it copies the
// visible K and V rows of its head into shared memory with cp.async (16-byte copies, all in flight
// at once), then
//   scores  [heads, 64]: thread (token, head) dot products over dk from shared memory,
//   softmax: online (running max m, sum l, rescale factor α) per head, one warp per head,
//   P·V:     thread d owns output dims d and d + 128 of every head.
// K rows in shared memory are padded so that their stride is an odd number of 16-byte units
// (conflict-free 16-byte reads by 8 consecutive rows).
// CUDA-core ring kernel (PagedAttentionRingKernel; variants cc_r*; 16-byte rows): the same
// computation over 32-token tiles (two per table entry) copied into a kStages-deep cp.async
// ring, so the next tiles' copies stay in flight while one is computed (the kernel above waits
// for each block it copies; fp32 blocks at d 128: 66 KB per block, 3 CTAs per SM).
//
// The combine kernel is a programmatic dependent launch of the split kernels (they trigger it
// after their main loops; it waits for their completion before reading the workspace).
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
constexpr int kWarps = kThreads / 32;
constexpr int kMaxHeadsPerCta = 8;
constexpr int kMaxDim = 256;
constexpr int kDimsPerThread = kMaxDim / kThreads;  // 2

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}
__device__ __forceinline__ void CpAsyncCommitGroup() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void CpAsyncWaitGroup() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}
// Programmatic dependent launch (sm_90, kernels/common.cuh): the split kernels let the combine
// kernel launch once all their CTAs are past their main loops (TriggerDependents); the combine
// kernel waits for their completion (and memory) before it reads the workspace
// (GridDependencyWait), so its launch latency overlaps their epilogues.
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// The 16-byte copies of thread tid among `threads` over rows of u units: copy j = tid +
// n·threads is (row j / u, unit j % u); consecutive ones differ by (dr, dc) plus a carry.
struct CopySlots {
  int r0, c0, dr, dc, u;
};
__device__ __forceinline__ CopySlots MakeCopySlots(int u, int tid, int threads) {
  return CopySlots{tid / u, tid % u, threads / u, threads % u, u};
}

// Row strides in shared memory, in elements of T.
template <typename T>
__host__ __device__ __forceinline__ int KRowStride(int dk) {
  constexpr int kPer16 = 16 / sizeof(T);
  const int units = (dk + kPer16 - 1) / kPer16;
  return (units % 2 == 1 ? units : units + 1) * kPer16;
}
template <typename T>
__host__ __device__ __forceinline__ int VRowStride(int dv) {
  constexpr int kPer16 = 16 / sizeof(T);
  return (dv + kPer16 - 1) / kPer16 * kPer16;
}

template <typename Tkv>
size_t SplitSmemBytes(int dk, int dv) {
  const size_t kv =
      sizeof(Tkv) * kBlockTokens * static_cast<size_t>(KRowStride<Tkv>(dk) + VRowStride<Tkv>(dv));
  const size_t f = sizeof(float) * (kMaxHeadsPerCta * static_cast<size_t>((dk + 3) / 4 * 4) +
                                    kMaxHeadsPerCta * kBlockTokens + 4 * kMaxHeadsPerCta);
  return kv + f;
}

struct SplitPlan {
  int head_chunks;  // CTAs per KV head (ceil(group / 8))
  int splits;       // pieces of each sequence's visible table entries
  int evict_first;  // tensor-core kernel: K/V copies with an L2 evict_first policy (streaming)
};

// The table entries [*e0, *e1) of row `row` whose chunks hold a position in
// [first_visible, kv_len) (chunks ascending; binary searches over block_chunks). Every thread
// computes the same range.
__device__ __forceinline__ void VisibleEntries(const PagedAttentionDecodeParams& p, int row,
                                               int first_visible, int kv_len, int* e0, int* e1) {
  const int entries = min(max(p.num_blocks[row], 0), p.max_blocks);
  if (kv_len <= first_visible || entries == 0) {
    *e0 = *e1 = 0;
    return;
  }
  if (p.block_chunks == nullptr) {  // entry i is chunk i
    *e0 = min(entries, first_visible / kBlockTokens);
    *e1 = min(entries, (kv_len + kBlockTokens - 1) / kBlockTokens);
    return;
  }
  const int32_t* chunks = p.block_chunks + static_cast<int64_t>(row) * p.max_blocks;
  // Strictly ascending chunks: chunks[0] + e <= chunks[e] <= chunks[last] − (last − e), which
  // bounds the first entry with chunk >= c to [c − chunks[last] + last, c − chunks[0]]; the
  // binary searches run only inside those bounds (no step at all for a dense table).
  const int c_first = chunks[0], c_last = chunks[entries - 1], last = entries - 1;
  auto first_at_least = [&](int c, int floor) {
    int lo = min(max(c - c_last + last, floor), entries);
    int hi = min(max(c - c_first, floor), entries);
    if (lo > hi) {  // not strictly ascending: search everything
      lo = floor;
      hi = entries;
    }
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (chunks[mid] < c) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  };
  // First entry whose chunk ends after first_visible, then first that starts at or after kv_len.
  *e0 = first_at_least(first_visible / kBlockTokens, 0);
  *e1 = first_at_least((kv_len + kBlockTokens - 1) / kBlockTokens, *e0);
}

// grid: num_seqs · Hkv · head_chunks · splits. kHeads >= the query heads of one CTA (1, 2, 4
// or 8). kAsync: 16-byte cp.async copies and K reads (row lengths in bytes, block stride and
// pool multiples of 16); else element-wise.
template <typename Tq, typename Tkv, int kHeads, bool kAsync>
__global__ void __launch_bounds__(kThreads)
    PagedAttentionSplitKernel(PagedAttentionDecodeParams p, SplitPlan plan, float* ws_acc,
                              float* ws_ml) {
  extern __shared__ float4 smem4[];
  const int dk = p.dk, dv = p.dv, Hkv = p.num_kv_heads;
  const int sk = KRowStride<Tkv>(dk), sv = VRowStride<Tkv>(dv);
  const int ldq = (dk + 3) / 4 * 4;
  Tkv* Ks = reinterpret_cast<Tkv*>(smem4);
  Tkv* Vs = Ks + kBlockTokens * sk;
  float* Qs = reinterpret_cast<float*>(Vs + kBlockTokens * sv);  // [8, ldq]
  float* Sc = Qs + kMaxHeadsPerCta * ldq;                        // [8, 64] scores, then p
  float* Ms = Sc + kMaxHeadsPerCta * kBlockTokens;               // [8] running max
  float* Ls = Ms + kMaxHeadsPerCta;                              // [8] running sum
  float* Al = Ls + kMaxHeadsPerCta;                              // [8] rescale of this block

  int64_t bid = blockIdx.x;
  const int split = static_cast<int>(bid % plan.splits);
  bid /= plan.splits;
  const int chunk_of_heads = static_cast<int>(bid % plan.head_chunks);
  bid /= plan.head_chunks;
  const int kvh = static_cast<int>(bid % Hkv);
  const int s = static_cast<int>(bid / Hkv);
  const int group = p.num_heads / Hkv;
  const int h0 = kvh * group + chunk_of_heads * kMaxHeadsPerCta;  // first query head
  const int nh = min(kMaxHeadsPerCta, group - chunk_of_heads * kMaxHeadsPerCta);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  const Tq* q = static_cast<const Tq*>(p.q) + static_cast<int64_t>(s) * p.q_stride;
  for (int i = tid; i < kMaxHeadsPerCta * ldq; i += kThreads) {
    const int g = i / ldq, d = i % ldq;
    Qs[i] = (g < nh && d < dk) ? ToFloat(q[static_cast<int64_t>(h0 + g) * dk + d]) : 0.0f;
  }
  if (tid < kMaxHeadsPerCta) {
    Ms[tid] = -INFINITY;
    Ls[tid] = 0.0f;
  }
  for (int i = tid; i < kMaxHeadsPerCta * kBlockTokens; i += kThreads) Sc[i] = 0.0f;
  float acc[kHeads][kDimsPerThread];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
#pragma unroll
    for (int r = 0; r < kDimsPerThread; ++r) acc[g][r] = 0.0f;
  }

  const int kv_len = p.kv_len[s];
  const int first_visible = p.window > 0 ? max(0, kv_len - p.window) : 0;
  const int row = p.table_rows != nullptr ? p.table_rows[s] : s;
  int v0, v1;
  VisibleEntries(p, row, first_visible, kv_len, &v0, &v1);
  const int64_t n_visible = v1 - v0;
  const int e_begin = v0 + static_cast<int>(n_visible * split / plan.splits);
  const int e_end = v0 + static_cast<int>(n_visible * (split + 1) / plan.splits);
  const Tkv* pool = static_cast<const Tkv*>(p.kv);
  const int64_t v_off = static_cast<int64_t>(kBlockTokens) * Hkv * dk;
  __syncthreads();

  for (int e = e_begin; e < e_end; ++e) {
    const int64_t table_index = static_cast<int64_t>(row) * p.max_blocks + e;
    const int64_t base =
        static_cast<int64_t>(p.block_chunks != nullptr ? p.block_chunks[table_index] : e) *
        kBlockTokens;
    const int64_t lo64 = first_visible > base ? first_visible : base;
    const int64_t hi64 = kv_len < base + kBlockTokens ? kv_len : base + kBlockTokens;
    const int lo = static_cast<int>(lo64 - base);
    const int hi = static_cast<int>(hi64 - base);
    if (lo >= hi) continue;  // uniform over the CTA
    const Tkv* block = pool + static_cast<int64_t>(p.block_table[table_index]) * p.block_stride;

    // Copy the visible K and V rows of head kvh.
    if (kAsync) {
      constexpr int kPer16 = 16 / sizeof(Tkv);
      const int ku = dk / kPer16, vu = dv / kPer16;
      const int rows = hi - lo;
      for (int i = tid; i < rows * ku; i += kThreads) {
        const int t = lo + i / ku, c = (i % ku) * kPer16;
        CpAsync16(Ks + t * sk + c, block + (static_cast<int64_t>(t) * Hkv + kvh) * dk + c);
      }
      for (int i = tid; i < rows * vu; i += kThreads) {
        const int t = lo + i / vu, c = (i % vu) * kPer16;
        CpAsync16(Vs + t * sv + c, block + v_off + (static_cast<int64_t>(t) * Hkv + kvh) * dv + c);
      }
      CpAsyncWaitAll();
    } else {
      for (int i = tid; i < (hi - lo) * dk; i += kThreads) {
        const int t = lo + i / dk, c = i % dk;
        Ks[t * sk + c] = block[(static_cast<int64_t>(t) * Hkv + kvh) * dk + c];
      }
      for (int i = tid; i < (hi - lo) * dv; i += kThreads) {
        const int t = lo + i / dv, c = i % dv;
        Vs[t * sv + c] = block[v_off + (static_cast<int64_t>(t) * Hkv + kvh) * dv + c];
      }
    }
    __syncthreads();

    // Scores: thread (t = tid % 64, heads tid / 64 + 2r).
    {
      const int t = tid % kBlockTokens;
      const bool visible = t >= lo && t < hi;
#pragma unroll
      for (int r = 0; r < (kHeads + 1) / 2; ++r) {
        const int g = tid / kBlockTokens + 2 * r;
        if (g >= nh) continue;
        float dot = -INFINITY;
        if (visible) {
          const Tkv* kr = Ks + t * sk;
          const float* qg = Qs + g * ldq;
          float d0 = 0.0f;
          if (kAsync) {
            constexpr int kPer16 = 16 / sizeof(Tkv);
            for (int d = 0; d < dk; d += kPer16) {
              const Pack<Tkv, kPer16> kp = LoadPack<Tkv, kPer16>(kr + d);
#pragma unroll
              for (int c = 0; c < kPer16; ++c) d0 += qg[d + c] * ToFloat(kp.v[c]);
            }
          } else {
            for (int d = 0; d < dk; ++d) d0 += qg[d] * ToFloat(kr[d]);
          }
          dot = d0 * p.scale;
        }
        Sc[g * kBlockTokens + t] = dot;
      }
    }
    __syncthreads();

    // Online softmax, one warp per head.
    for (int g = warp; g < nh; g += kWarps) {
      const float s0 = Sc[g * kBlockTokens + lane];
      const float s1 = Sc[g * kBlockTokens + lane + 32];
      float mx = fmaxf(s0, s1);
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_old = Ms[g];
      const float m_new = fmaxf(m_old, mx);  // finite: the block has a visible token
      const float p0 = expf(s0 - m_new), p1 = expf(s1 - m_new);
      const float sum = WarpSum(p0 + p1);
      Sc[g * kBlockTokens + lane] = p0;
      Sc[g * kBlockTokens + lane + 32] = p1;
      __syncwarp();
      if (lane == 0) {
        const float alpha = expf(m_old - m_new);  // 0 for the first visible block
        Al[g] = alpha;
        Ms[g] = m_new;
        Ls[g] = Ls[g] * alpha + sum;
      }
    }
    __syncthreads();

    // acc ← α·acc + P·V over the visible rows.
#pragma unroll
    for (int r = 0; r < kDimsPerThread; ++r) {
      const int d = tid + kThreads * r;
      if (d >= dv) continue;
      float part[kHeads] = {};
      for (int t = lo; t < hi; ++t) {
        const float vt = ToFloat(Vs[t * sv + d]);
#pragma unroll
        for (int g = 0; g < kHeads; ++g) part[g] += Sc[g * kBlockTokens + t] * vt;
      }
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        if (g < nh) acc[g][r] = acc[g][r] * Al[g] + part[g];
      }
    }
    __syncthreads();
  }

  TriggerDependents();
  // Write the result (one split) or the partial state.
  const int q_heads = p.num_heads;
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    if (g >= nh) break;
    const int h = h0 + g;
    const float l = Ls[g];
    if (plan.splits == 1) {
      Tq* out = static_cast<Tq*>(p.out) + static_cast<int64_t>(s) * p.out_stride +
                static_cast<int64_t>(h) * dv;
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
      for (int r = 0; r < kDimsPerThread; ++r) {
        const int d = tid + kThreads * r;
        if (d < dv) out[d] = FromFloat<Tq>(acc[g][r] * inv);
      }
    } else {
      const int64_t part = (static_cast<int64_t>(s) * q_heads + h) * plan.splits + split;
#pragma unroll
      for (int r = 0; r < kDimsPerThread; ++r) {
        const int d = tid + kThreads * r;
        if (d < dv) ws_acc[part * dv + d] = acc[g][r];
      }
      if (tid == 0) {
        ws_ml[part * 2] = Ms[g];
        ws_ml[part * 2 + 1] = l;
      }
    }
  }
}

// The CUDA-core kernel with a cp.async ring (fp32 blocks at long context): the split's table
// entries are cut into tiles of 32 tokens (two per entry); the visible K and V rows of each
// tile go into a kStages-deep ring of shared buffers, so the copies of the next kStages − 1
// tiles are in flight while one tile is computed (the kernel above waits for every block it
// copies). Per tile, 128 threads: scores [heads, 32] (thread (token tid mod 32, heads
// tid / 32 + 4r)), the online softmax one warp per head (one token per lane), P·V with thread d
// owning output dims d and d + 128. One barrier at the top of each tile (its copies landed;
// the stage of the previous tile and Sc are free) and two inside. 16-byte copies only (kAsync
// rows). Same grid, split plan semantics and outputs as PagedAttentionSplitKernel.
constexpr int kRingTile = 32;

template <typename Tkv>
size_t RingSmemBytes(int stages, int dk, int dv) {
  const size_t kv = sizeof(Tkv) * static_cast<size_t>(stages) * kRingTile *
                    static_cast<size_t>(KRowStride<Tkv>(dk) + VRowStride<Tkv>(dv));
  const size_t f = sizeof(float) * (kMaxHeadsPerCta * static_cast<size_t>((dk + 3) / 4 * 4) +
                                    kMaxHeadsPerCta * kRingTile + 4 * kMaxHeadsPerCta);
  return kv + f;
}

template <typename Tq, typename Tkv, int kHeads, int kStages>
__global__ void __launch_bounds__(kThreads)
    PagedAttentionRingKernel(PagedAttentionDecodeParams p, SplitPlan plan, float* ws_acc,
                             float* ws_ml) {
  static_assert(kStages >= 2 && kBlockTokens % kRingTile == 0, "ring");
  constexpr int kTilesPerEntry = kBlockTokens / kRingTile;
  constexpr int kPer16 = 16 / sizeof(Tkv);
  extern __shared__ float4 smem4[];
  __shared__ int tile_range[kStages][2];  // visible rows [lo, hi) of the tile in each stage
  const int dk = p.dk, dv = p.dv, Hkv = p.num_kv_heads;
  const int sk = KRowStride<Tkv>(dk), sv = VRowStride<Tkv>(dv);
  const int ldq = (dk + 3) / 4 * 4;
  const int stage_elems = kRingTile * (sk + sv);
  Tkv* ring = reinterpret_cast<Tkv*>(smem4);
  float* Qs = reinterpret_cast<float*>(ring + kStages * stage_elems);  // [8, ldq]
  float* Sc = Qs + kMaxHeadsPerCta * ldq;                              // [8, 32] scores, then p
  float* Ms = Sc + kMaxHeadsPerCta * kRingTile;                        // [8] running max
  float* Ls = Ms + kMaxHeadsPerCta;                                    // [8] running sum
  float* Al = Ls + kMaxHeadsPerCta;                                    // [8] rescale of a tile

  int64_t bid = blockIdx.x;
  const int split = static_cast<int>(bid % plan.splits);
  bid /= plan.splits;
  const int chunk_of_heads = static_cast<int>(bid % plan.head_chunks);
  bid /= plan.head_chunks;
  const int kvh = static_cast<int>(bid % Hkv);
  const int s = static_cast<int>(bid / Hkv);
  const int group = p.num_heads / Hkv;
  const int h0 = kvh * group + chunk_of_heads * kMaxHeadsPerCta;  // first query head
  const int nh = min(kMaxHeadsPerCta, group - chunk_of_heads * kMaxHeadsPerCta);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  const int kv_len = p.kv_len[s];
  const int first_visible = p.window > 0 ? max(0, kv_len - p.window) : 0;
  const int row = p.table_rows != nullptr ? p.table_rows[s] : s;
  int v0, v1;
  VisibleEntries(p, row, first_visible, kv_len, &v0, &v1);
  const int64_t n_visible = v1 - v0;
  const int e_begin = v0 + static_cast<int>(n_visible * split / plan.splits);
  const int e_end = v0 + static_cast<int>(n_visible * (split + 1) / plan.splits);
  const int n_tiles = (e_end - e_begin) * kTilesPerEntry;
  const Tkv* pool = static_cast<const Tkv*>(p.kv);
  const int64_t v_off = static_cast<int64_t>(kBlockTokens) * Hkv * dk;
  const int64_t row_base = static_cast<int64_t>(row) * p.max_blocks;

  int next_block = 0, next_chunk = 0;  // table entry of the next tile to load (one ahead)
  auto fetch = [&](int i) {
    if (i < n_tiles) {
      const int e = e_begin + i / kTilesPerEntry;
      next_block = p.block_table[row_base + e];
      next_chunk = p.block_chunks != nullptr ? p.block_chunks[row_base + e] : e;
    }
  };
  const CopySlots ck = MakeCopySlots(dk / kPer16, tid, kThreads);
  const CopySlots cv = MakeCopySlots(dv / kPer16, tid, kThreads);
  const int k_gstride = Hkv * dk, v_gstride = Hkv * dv;  // elements between token rows
  auto load = [&](int i) {  // the visible rows of tile i into stage i % kStages
    if (i >= n_tiles) return;
    const int sub = i % kTilesPerEntry;
    const int pos0 = next_chunk * kBlockTokens + sub * kRingTile;
    const int lo = min(max(first_visible - pos0, 0), kRingTile);
    const int hi = max(min(kv_len - pos0, kRingTile), 0);
    Tkv* ks = ring + (i % kStages) * stage_elems;
    Tkv* vs = ks + kRingTile * sk;
    const Tkv* block = pool + static_cast<int64_t>(next_block) * p.block_stride;
    const Tkv* ksrc = block + (static_cast<int64_t>(sub) * kRingTile * Hkv + kvh) * dk;
    for (int r = ck.r0, c = ck.c0; r < kRingTile;) {
      if (r >= lo && r < hi) CpAsync16(ks + r * sk + kPer16 * c, ksrc + r * k_gstride + kPer16 * c);
      r += ck.dr;
      c += ck.dc;
      if (c >= ck.u) {
        c -= ck.u;
        ++r;
      }
    }
    const Tkv* vsrc = block + v_off + (static_cast<int64_t>(sub) * kRingTile * Hkv + kvh) * dv;
    for (int r = cv.r0, c = cv.c0; r < kRingTile;) {
      if (r >= lo && r < hi) CpAsync16(vs + r * sv + kPer16 * c, vsrc + r * v_gstride + kPer16 * c);
      r += cv.dr;
      c += cv.dc;
      if (c >= cv.u) {
        c -= cv.u;
        ++r;
      }
    }
    if (tid == 0) {
      tile_range[i % kStages][0] = lo;
      tile_range[i % kStages][1] = hi;
    }
  };

  fetch(0);
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    load(st);
    fetch(st + 1);
    CpAsyncCommitGroup();
  }

  const Tq* q = static_cast<const Tq*>(p.q) + static_cast<int64_t>(s) * p.q_stride;
  for (int i = tid; i < kMaxHeadsPerCta * ldq; i += kThreads) {
    const int g = i / ldq, d = i % ldq;
    Qs[i] = (g < nh && d < dk) ? ToFloat(q[static_cast<int64_t>(h0 + g) * dk + d]) : 0.0f;
  }
  if (tid < kMaxHeadsPerCta) {
    Ms[tid] = -INFINITY;
    Ls[tid] = 0.0f;
  }
  float acc[kHeads][kDimsPerThread];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
#pragma unroll
    for (int r = 0; r < kDimsPerThread; ++r) acc[g][r] = 0.0f;
  }

  for (int i = 0; i < n_tiles; ++i) {
    CpAsyncWaitGroup<kStages - 2>();  // this thread's copies of tile i have landed
    __syncthreads();                  // everyone's; the previous stage, Sc and Al are free
    load(i + kStages - 1);
    fetch(i + kStages);
    CpAsyncCommitGroup();

    const int stage = i % kStages;
    const int lo = tile_range[stage][0], hi = tile_range[stage][1];
    if (lo >= hi) continue;  // uniform over the CTA
    const Tkv* ks = ring + stage * stage_elems;
    const Tkv* vs = ks + kRingTile * sk;

    // Scores: thread (t = tid % 32, heads tid / 32 + 4r).
    {
      const int t = tid % kRingTile;
      const bool visible = t >= lo && t < hi;
#pragma unroll
      for (int r = 0; r < (kHeads + 3) / 4; ++r) {
        const int g = tid / kRingTile + 4 * r;
        if (g >= nh) continue;
        float dot = -INFINITY;
        if (visible) {
          const Tkv* kr = ks + t * sk;
          const float* qg = Qs + g * ldq;
          float d0 = 0.0f;
          for (int d = 0; d < dk; d += kPer16) {
            const Pack<Tkv, kPer16> kp = LoadPack<Tkv, kPer16>(kr + d);
#pragma unroll
            for (int c = 0; c < kPer16; ++c) d0 += qg[d + c] * ToFloat(kp.v[c]);
          }
          dot = d0 * p.scale;
        }
        Sc[g * kRingTile + t] = dot;
      }
    }
    __syncthreads();

    // Online softmax, one warp per head, one token per lane.
    for (int g = warp; g < nh; g += kWarps) {
      const float s0 = Sc[g * kRingTile + lane];
      const float mx = WarpMax(s0);
      const float m_old = Ms[g];
      const float m_new = fmaxf(m_old, mx);  // finite: the tile has a visible token
      const float p0 = expf(s0 - m_new);
      const float sum = WarpSum(p0);
      Sc[g * kRingTile + lane] = p0;
      __syncwarp();
      if (lane == 0) {
        const float alpha = expf(m_old - m_new);  // 0 for the first visible tile
        Al[g] = alpha;
        Ms[g] = m_new;
        Ls[g] = Ls[g] * alpha + sum;
      }
    }
    __syncthreads();

    // acc ← α·acc + P·V over the visible rows.
#pragma unroll
    for (int r = 0; r < kDimsPerThread; ++r) {
      const int d = tid + kThreads * r;
      if (d >= dv) continue;
      float part[kHeads] = {};
      for (int t = lo; t < hi; ++t) {
        const float vt = ToFloat(vs[t * sv + d]);
#pragma unroll
        for (int g = 0; g < kHeads; ++g) part[g] += Sc[g * kRingTile + t] * vt;
      }
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        if (g < nh) acc[g][r] = acc[g][r] * Al[g] + part[g];
      }
    }
  }
  CpAsyncWaitGroup<0>();
  __syncthreads();  // Ms, Ls (also when no tile was visible)

  TriggerDependents();
  // Write the result (one split) or the partial state.
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    if (g >= nh) break;
    const int h = h0 + g;
    const float l = Ls[g];
    if (plan.splits == 1) {
      Tq* out = static_cast<Tq*>(p.out) + static_cast<int64_t>(s) * p.out_stride +
                static_cast<int64_t>(h) * dv;
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
      for (int r = 0; r < kDimsPerThread; ++r) {
        const int d = tid + kThreads * r;
        if (d < dv) out[d] = FromFloat<Tq>(acc[g][r] * inv);
      }
    } else {
      const int64_t part = (static_cast<int64_t>(s) * p.num_heads + h) * plan.splits + split;
#pragma unroll
      for (int r = 0; r < kDimsPerThread; ++r) {
        const int d = tid + kThreads * r;
        if (d < dv) ws_acc[part * dv + d] = acc[g][r];
      }
      if (tid == 0) {
        ws_ml[part * 2] = Ms[g];
        ws_ml[part * 2 + 1] = l;
      }
    }
  }
}

// grid: num_seqs · Hq; merges the splits of one (sequence, query head).
template <typename Tq>
__global__ void __launch_bounds__(kThreads)
    PagedAttentionCombineKernel(PagedAttentionDecodeParams p, int splits, const float* ws_acc,
                                const float* ws_ml) {
  const int64_t sh = blockIdx.x;  // s · Hq + h
  const int s = static_cast<int>(sh / p.num_heads);
  const int h = static_cast<int>(sh % p.num_heads);
  GridDependencyWait();  // the split kernel has completed (launched as its dependent)
  const float* ml = ws_ml + sh * splits * 2;
  float m = -INFINITY;
  for (int i = 0; i < splits; ++i) m = fmaxf(m, ml[2 * i]);
  float l = 0.0f;
  if (m != -INFINITY) {
    for (int i = 0; i < splits; ++i) l += ml[2 * i + 1] * expf(ml[2 * i] - m);
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  Tq* out = static_cast<Tq*>(p.out) + static_cast<int64_t>(s) * p.out_stride +
            static_cast<int64_t>(h) * p.dv;
  for (int d = threadIdx.x; d < p.dv; d += kThreads) {
    float o = 0.0f;
    if (l > 0.0f) {
      for (int i = 0; i < splits; ++i) {
        const float w = ml[2 * i] == -INFINITY ? 0.0f : expf(ml[2 * i] - m);
        o += ws_acc[(sh * splits + i) * p.dv + d] * w;
      }
    }
    out[d] = FromFloat<Tq>(o * inv);
  }
}

template <typename Tq>
int LaunchCombine(const PagedAttentionDecodeParams& p, const SplitPlan& plan, const float* ws_acc,
                  const float* ws_ml, cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(static_cast<int64_t>(p.num_seqs) * p.num_heads));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return static_cast<int>(
      cudaLaunchKernelEx(&config, PagedAttentionCombineKernel<Tq>, p, plan.splits, ws_acc, ws_ml));
}

int SmCount() {
  int device = 0;
  int sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 132;
  }
  return sms;
}

int ChooseSplits(const PagedAttentionDecodeParams& p, int64_t base, int64_t want_ctas);
int DeviceAttribute(cudaDeviceAttr attr, int fallback);

// waves > 0: the automatic split count aims at waves x (resident CTAs per SM) x SMs CTAs (the
// plan's splits otherwise). ring: stages of PagedAttentionRingKernel (2, 3 or 4; 16-byte rows
// only, and only where the ring fits), else 0: PagedAttentionSplitKernel.
template <typename Tq, typename Tkv, int kHeads, bool kAsync>
int LaunchTyped(const PagedAttentionDecodeParams& p, SplitPlan plan, int waves, int ring,
                cudaStream_t stream) {
  using Kernel = void (*)(PagedAttentionDecodeParams, SplitPlan, float*, float*);
  Kernel kernel = PagedAttentionSplitKernel<Tq, Tkv, kHeads, kAsync>;
  size_t smem = SplitSmemBytes<Tkv>(p.dk, p.dv);
  if (kAsync && ring >= 2 && ring <= 4) {
    const size_t ring_smem = RingSmemBytes<Tkv>(ring, p.dk, p.dv);
    const int optin = DeviceAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, 227 * 1024);
    if (ring_smem + 2 * 1024 <= static_cast<size_t>(optin)) {
      smem = ring_smem;
      kernel = ring == 2   ? PagedAttentionRingKernel<Tq, Tkv, kHeads, 2>
               : ring == 3 ? PagedAttentionRingKernel<Tq, Tkv, kHeads, 3>
                           : PagedAttentionRingKernel<Tq, Tkv, kHeads, 4>;
    }
  }
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return static_cast<int>(err);
  if (waves > 0) {
    int per_sm = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
    if (err != cudaSuccess) return static_cast<int>(err);
    const int64_t base = int64_t{p.num_seqs} * p.num_kv_heads * plan.head_chunks;
    plan.splits = ChooseSplits(p, base, int64_t{waves} * std::max(1, per_sm) * SmCount());
  }
  const int64_t ctas =
      static_cast<int64_t>(p.num_seqs) * p.num_kv_heads * plan.head_chunks * plan.splits;
  if (ctas > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  float* ws_acc = static_cast<float*>(p.workspace);
  float* ws_ml = plan.splits > 1
                     ? ws_acc + static_cast<int64_t>(p.num_seqs) * p.num_heads * plan.splits * p.dv
                     : nullptr;
  kernel<<<static_cast<unsigned>(ctas), kThreads, smem, stream>>>(p, plan, ws_acc, ws_ml);
  err = cudaGetLastError();
  if (err != cudaSuccess || plan.splits == 1) return static_cast<int>(err);
  return LaunchCombine<Tq>(p, plan, ws_acc, ws_ml, stream);
}

template <typename Tq, typename Tkv, bool kAsync>
int LaunchHeads(const PagedAttentionDecodeParams& p, const SplitPlan& plan, int waves, int ring,
                cudaStream_t stream) {
  const int heads = std::min(kMaxHeadsPerCta, p.num_heads / p.num_kv_heads);
  if (heads <= 1) return LaunchTyped<Tq, Tkv, 1, kAsync>(p, plan, waves, ring, stream);
  if (heads <= 2) return LaunchTyped<Tq, Tkv, 2, kAsync>(p, plan, waves, ring, stream);
  if (heads <= 4) return LaunchTyped<Tq, Tkv, 4, kAsync>(p, plan, waves, ring, stream);
  return LaunchTyped<Tq, Tkv, 8, kAsync>(p, plan, waves, ring, stream);
}

template <typename Tq, typename Tkv>
int LaunchKv(const PagedAttentionDecodeParams& p, const SplitPlan& plan, int waves, int ring,
             cudaStream_t stream) {
  const int64_t row_bytes_k = int64_t{p.dk} * sizeof(Tkv);
  const int64_t row_bytes_v = int64_t{p.dv} * sizeof(Tkv);
  const bool async = row_bytes_k % 16 == 0 && row_bytes_v % 16 == 0 &&
                     (p.block_stride * static_cast<int64_t>(sizeof(Tkv))) % 16 == 0 &&
                     IsAligned(p.kv, 16);
  return async ? LaunchHeads<Tq, Tkv, true>(p, plan, waves, ring, stream)
               : LaunchHeads<Tq, Tkv, false>(p, plan, waves, ring, stream);
}

// ---- Tensor-core path (bf16 KV, dk and dv multiples of 16) ----------------------------------

// The variants of PagedAttentionDecodeParams::variant: 0 picks per shape (MmaDefaultVariant);
// 1 forces the CUDA-core kernel above; the rest fix the tensor-core kernel's tile tokens (warps =
// tile / 16), pipeline stages and the target waves of the automatic split count.
struct DecodeVariant {
  const char* name;
  int tile;    // tokens per pipeline stage (0: default / CUDA-core kernel)
  int stages;  // cp.async stages
  int waves;   // automatic splits aim at waves x resident CTAs; kWavesSms: one CTA per SM
               // (CUDA-core variants: 0 = the original 4 x SMs plan; stages: ring stages of
               // PagedAttentionRingKernel, 0 = PagedAttentionSplitKernel)
  int cols;    // value-column slices (warps = cols x tile / 16); 0 = 1
  int flags;   // kEvictFirst | kSplitS (tensor-core variants)
};
// DecodeVariant::flags. kEvictFirst: the K/V copies carry an L2 evict_first policy (each K/V
// row is read once per step: they do not push out other data, e.g. the dirty lines a
// preceding kernel left, whose write-back a read-only kernel would otherwise pay for).
// kSplitS: the cols warps of a token slice split the dims of S = Q·Kᵀ (each kD / cols of
// them) and add their partials through shared memory (one named barrier per tile), instead of
// each computing the whole S (head dim 256: S is 2/3 of the MMAs and of the K reads).
// kMinBlocks3: __launch_bounds__ minimum of 3 CTAs per SM (registers capped at 80: t64s2w1c2
// takes 110 at head dim 128, so 2 CTAs per SM although 3 rings of 74 KB fit).
constexpr int kEvictFirst = 1;
constexpr int kSplitS = 2;
constexpr int kMinBlocks3 = 4;
// DecodeVariant::waves: automatic splits aim at one CTA per SM (however many are resident), so
// short contexts with many (sequence, head) pairs get no split and no combine kernel.
constexpr int kWavesSms = -1;
constexpr DecodeVariant kVariants[] = {
    {"default", 0, 0, 0, 0, 0},
    {"cuda_cores", 0, 0, 0, 0, 0},
    {"t64s2", 64, 2, 2, 1, 0},
    {"t64s3", 64, 3, 2, 1, 0},
    {"t64s4", 64, 4, 2, 1, 0},
    {"t32s3", 32, 3, 2, 1, 0},
    {"t32s4", 32, 4, 2, 1, 0},
    {"t32s6", 32, 6, 2, 1, 0},
    {"t64s3w1", 64, 3, 1, 1, 0},
    {"t64s3w4", 64, 3, 4, 1, 0},
    {"t32s4w1", 32, 4, 1, 1, 0},
    {"t32s4w4", 32, 4, 4, 1, 0},
    // Deep rings at one wave (fewest splits; t64s4 at head dim 128: one CTA per SM, often no
    // split and no combine kernel).
    {"t64s4w1", 64, 4, 1, 1, 0},
    {"t32s6w1", 32, 6, 1, 1, 0},
    // Value columns split over cols warps that share a token slice (each computes S of its 16
    // tokens, P·V of kD / cols columns): more warps per SM and fewer accumulator registers
    // where one CTA fills the SM (head dim 256: a 64-token stage is 66 KB).
    {"t64s3w1c2", 64, 3, 1, 2, 0},
    {"t64s2w1c2", 64, 2, 1, 2, 0},
    {"t32s3w1c2", 32, 3, 1, 2, 0},
    {"t64s3w1c4", 64, 3, 1, 4, 0},
    {"t32s6w1c4", 32, 6, 1, 4, 0},
    {"t64s3w2c2", 64, 3, 2, 2, 0},
    // One CTA per SM for the split count (short contexts: no split, no combine kernel).
    {"t64s3wS", 64, 3, kWavesSms, 1, 0},
    {"t64s3wSc2", 64, 3, kWavesSms, 2, 0},
    // CUDA-core kernel (fp32 blocks; any head dims) with the split count aimed at whole waves of
    // resident CTAs (variant 1 keeps the original 4 x SMs plan, which leaves a partial wave).
    {"cc_w1", 0, 0, 1, 0, 0},
    {"cc_w2", 0, 0, 2, 0, 0},
    // CUDA-core ring kernel (PagedAttentionRingKernel; stages = ring stages of 32 tokens; rows
    // of 16-byte multiples, else the kernel above).
    {"cc_r2w1", 0, 2, 1, 0, 0},
    {"cc_r3w1", 0, 3, 1, 0, 0},
    {"cc_r4w1", 0, 4, 1, 0, 0},
    {"cc_r3w2", 0, 3, 2, 0, 0},
    // One CTA per SM with a deeper ring (short contexts: 3 tiles ahead, no combine).
    {"t64s4wS", 64, 4, kWavesSms, 1, 0},
    // Suffix e: K/V copies with an L2 evict_first policy; s: S split over the column warps.
    {"t64s2w1c2e", 64, 2, 1, 2, kEvictFirst},
    {"t64s3w1e", 64, 3, 1, 1, kEvictFirst},
    {"t64s3w1c2e", 64, 3, 1, 2, kEvictFirst},
    {"t64s3w1c4e", 64, 3, 1, 4, kEvictFirst},
    {"t64s3wSc2e", 64, 3, kWavesSms, 2, kEvictFirst},
    {"t64s2w1c2s", 64, 2, 1, 2, kSplitS},
    {"t64s2w1c2se", 64, 2, 1, 2, kSplitS | kEvictFirst},
    {"t64s3w1c2s", 64, 3, 1, 2, kSplitS},
    {"t64s3w1c2se", 64, 3, 1, 2, kSplitS | kEvictFirst},
    {"t32s3w1c2se", 32, 3, 1, 2, kSplitS | kEvictFirst},
    {"t64s3w1c4se", 64, 3, 1, 4, kSplitS | kEvictFirst},
    // No split where the (sequence, head) pairs fill the SMs (no combine kernel; short contexts
    // pay no split overhead), one CTA per SM with 8 warps and 3 tiles (96 KB at d 128) in flight.
    {"t64s4wSc2", 64, 4, kWavesSms, 2, 0},
    {"t64s4wSc2e", 64, 4, kWavesSms, 2, kEvictFirst},
    // Suffix b3: 3 CTAs per SM (kMinBlocks3).
    {"t64s2w1c2eb3", 64, 2, 1, 2, kEvictFirst | kMinBlocks3},
};
constexpr int kNumVariants = static_cast<int>(sizeof(kVariants) / sizeof(kVariants[0]));

// The default per shape class; the only place that picks it. Measured on the H100
// (kernels_bench, run 3, 2026-11-23, bench/results/2026-11-23-h100-run3): two 64-token stages
// with the value columns over 2 warps (t64s2w1c2: 74 KB at head dim 128, 110 registers: 2 CTAs
// and 16 warps per SM) is the fastest or within 0.5% of it on every bf16 head-dim-128 row and 1-3%
// faster than the previous default t64s3w1 on each: 64 x 1K Hq 16 / Hkv 2 45.7 us (t64s3w1 47.1),
// 64 x 8K 210.9 (215.4), 64 x 32K 768.4 (772.3), 1 x 128K 210.1 (213.2), 8 x 32K 395.2
// (398.7), window 4096 115.6 (117.0), 64 x 4K Hq 32 / Hkv 8 390.4 (393.5). Head dims above 128
// (one 64-token CTA fills an SM): t64s3w1c2se (S split over the two column warps), H100 run 4
// at d 256, group 8, 4 x 32K: 108.7 us = 82.9% of copy with a clean L2 (74.4% after the
// benchmark's memset flush, whose ~50 MB of dirty lines a read-only kernel writes back; the
// previous default t64s3w1c2: 115.5 us / 78.0% clean). The evict_first copies (kEvictFirst)
// measured within noise of their plain twins (d 128, 64 x 1K: 37.0 vs 37.8 us clean).
DecodeVariant MmaDefaultVariant(int d) {
  if (d > 128) return DecodeVariant{"t64s3w1c2se", 64, 3, 1, 2, kSplitS | kEvictFirst};
  return DecodeVariant{"t64s2w1c2e", 64, 2, 1, 2, kEvictFirst};
}
// The CUDA-core kernel's split plan when no CUDA-core variant is named (fp32 blocks, head dims
// that are not multiples of 16): whole waves of resident CTAs (the original plan, variant
// cuda_cores, left 576 CTAs for 396 slots at fp32 8 x 16K, Hq 32 / Hkv 8: 75.0% of copy).
constexpr DecodeVariant kCudaCoreDefault = {"cc_w1", 0, 0, 1, 0, 0};

// Shared row stride in bf16 elements: an odd number of 16-byte units (ldmatrix reads of 8 rows
// are conflict-free).
__host__ __device__ __forceinline__ int MmaRowStride(int d) {
  const int units = d / 8;
  return (units % 2 == 1 ? units : units + 1) * 8;
}
// Words per row of the split query in shared memory (kD / 2 pairs + 4: the 8 rows of one
// fragment read fall in distinct banks).
__host__ __device__ constexpr int MmaQWords(int kd) { return kd / 2 + 4; }

// Ring, split query, and (split S) the partial-S exchange of [tile / 16][cols][32][4] fp32.
size_t MmaSmemBytes(int kd, int tile, int stages, int cols, bool split_s, int dk, int dv) {
  return sizeof(__nv_bfloat16) * static_cast<size_t>(stages) * tile *
             (MmaRowStride(dk) + MmaRowStride(dv)) +
         sizeof(uint32_t) * 2 * kMaxHeadsPerCta * static_cast<size_t>(MmaQWords(kd)) +
         (split_s ? sizeof(float) * static_cast<size_t>(tile / 16) * cols * 32 * 4 : 0);
}

__device__ __forceinline__ void CpAsync16Fill(void* smem, const void* gmem, bool fill) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = fill ? 16 : 0;  // 0: writes 16 zero bytes, reads nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes)
               : "memory");
}
// The same with an L2 cache policy (createpolicy), e.g. evict_first for data read once.
__device__ __forceinline__ void CpAsync16FillHint(void* smem, const void* gmem, bool fill,
                                                  uint64_t policy) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = fill ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(s),
               "l"(gmem), "r"(src_bytes), "l"(policy)
               : "memory");
}
__device__ __forceinline__ uint64_t EvictFirstPolicy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
// Named barrier of `threads` threads (whole warps), id 1..15 (0 is __syncthreads).
__device__ __forceinline__ void NamedBarrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void CpAsyncWaitPending() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// c += A·B, A 16x16 bf16 (row), B 16x8 bf16 (col), c 16x8 fp32.
__device__ __forceinline__ void MmaBf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Four 8x8 b16 matrices; lanes 8j..8j+7 give the row addresses of matrix j.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* row) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* row) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
}
__device__ __forceinline__ uint32_t Bf16Bits(__nv_bfloat162 v) {
  return *reinterpret_cast<const uint32_t*>(&v);
}
// (x, y) ≈ hi + lo with hi, lo bf16 pairs (x in the low halves): 16 significant bits.
__device__ __forceinline__ void SplitBf16(float x, float y, uint32_t* hi, uint32_t* lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  const float2 hf = __bfloat1622float2(h);
  *hi = Bf16Bits(h);
  *lo = Bf16Bits(__floats2bfloat162_rn(x - hf.x, y - hf.y));
}

// grid: num_seqs · Hkv · head_chunks · splits (as the CUDA-core kernel); 2·kTile threads =
// kTile / 16 warps. kD >= dk, dv (64, 128 or 256; both multiples of 16).
//
// Per CTA: the split's visible table entries are cut into tiles of kTile tokens (64 / kTile per
// entry), copied K and V rows of head kvh to a kStages-deep cp.async ring (rows outside the
// visible range zero-filled); warp w takes tokens 16w .. 16w + 15 of every tile and keeps its own
// online softmax (m, l) and O accumulators; the warps merge through shared memory at the end.
// Query rows: the M = 16 rows of the MMAs are the ≤ 8 query heads twice, rows g = bf16(q), rows
// g + 8 = bf16(q − bf16(q)) (q·scale·log2 e), so S = hi + lo carries 16 bits of q; likewise the P
// fragments hold bf16(p) in rows g and bf16(p − bf16(p)) in rows g + 8, and O = rows g + g + 8.
template <typename Tq, int kD, int kTile, int kStages, int kCols, bool kSplitS, int kMinBlocks = 1>
__global__ void __launch_bounds__(2 * kTile * kCols, kMinBlocks)
    PagedAttentionMmaKernel(PagedAttentionDecodeParams p, SplitPlan plan, float* ws_acc,
                            float* ws_ml) {
  constexpr int kNumThreads = 2 * kTile * kCols;
  constexpr int kTokWarps = kTile / 16;  // warps per column slice (one per 16 tokens)
  constexpr int kColDims = kD / kCols;   // value columns of one warp
  constexpr int kTilesPerEntry = kBlockTokens / kTile;
  constexpr int kQw = MmaQWords(kD);
  static_assert(kStages >= 2 && kBlockTokens % kTile == 0 && kTile % 16 == 0, "tiles");
  static_assert(kCols >= 1 && kColDims % 16 == 0, "column slices");
  static_assert(!kSplitS || (kCols >= 2 && (kD / 16) % kCols == 0), "split S");
  constexpr int kKSteps = kSplitS ? kD / 16 / kCols : kD / 16;  // k-steps of S per warp
  extern __shared__ float4 smem4[];
  __shared__ float Mw[kTokWarps][kMaxHeadsPerCta];
  __shared__ float Lw[kTokWarps][kMaxHeadsPerCta];
  __shared__ int tile_range[kStages][2];  // visible rows [lo, hi) of the tile in each stage

  const int dk = p.dk, dv = p.dv, Hkv = p.num_kv_heads;
  const int sk = MmaRowStride(dk), sv = MmaRowStride(dv);
  const int stage_elems = kTile * (sk + sv);
  __nv_bfloat16* ring = reinterpret_cast<__nv_bfloat16*>(smem4);
  uint32_t* Qs = reinterpret_cast<uint32_t*>(ring + kStages * stage_elems);  // [2][8][kQw]
  // kSplitS: partial S of each warp, [kTokWarps][kCols][32 lanes] float4.
  float* Sx = reinterpret_cast<float*>(Qs + 2 * kMaxHeadsPerCta * kQw);

  int64_t bid = blockIdx.x;
  const int split = static_cast<int>(bid % plan.splits);
  bid /= plan.splits;
  const int chunk_of_heads = static_cast<int>(bid % plan.head_chunks);
  bid /= plan.head_chunks;
  const int kvh = static_cast<int>(bid % Hkv);
  const int s = static_cast<int>(bid / Hkv);
  const int group = p.num_heads / Hkv;
  const int h0 = kvh * group + chunk_of_heads * kMaxHeadsPerCta;
  const int nh = min(kMaxHeadsPerCta, group - chunk_of_heads * kMaxHeadsPerCta);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t4 = lane % 4;
  const int tw = warp % kTokWarps;             // token slice: tokens 16·tw .. of every tile
  const int cs = warp / kTokWarps;             // column slice
  const int col0 = cs * kColDims;              // first value column of this warp
  const int kk0 = kSplitS ? cs * kKSteps : 0;  // first k-step of S (kSplitS: dims 16·kk0 ..)
  const uint64_t policy = plan.evict_first ? EvictFirstPolicy() : 0;

  // This split's table entries (a chain of dependent loads), then the first copies, then the
  // query staging, whose latency overlaps the copies.
  const int kv_len = p.kv_len[s];
  const int first_visible = p.window > 0 ? max(0, kv_len - p.window) : 0;
  const int row = p.table_rows != nullptr ? p.table_rows[s] : s;
  int v0, v1;
  VisibleEntries(p, row, first_visible, kv_len, &v0, &v1);
  const int64_t n_visible = v1 - v0;
  const int e_begin = v0 + static_cast<int>(n_visible * split / plan.splits);
  const int e_end = v0 + static_cast<int>(n_visible * (split + 1) / plan.splits);
  const int n_tiles = (e_end - e_begin) * kTilesPerEntry;
  const __nv_bfloat16* pool = static_cast<const __nv_bfloat16*>(p.kv);
  const int64_t v_off = static_cast<int64_t>(kBlockTokens) * Hkv * dk;
  const int64_t row_base = static_cast<int64_t>(row) * p.max_blocks;

  // Table entry of the next tile to load, fetched one iteration ahead (its latency overlaps).
  int next_block = 0, next_chunk = 0;
  auto fetch = [&](int i) {
    if (i < n_tiles) {
      const int e = e_begin + i / kTilesPerEntry;
      next_block = p.block_table[row_base + e];
      next_chunk = p.block_chunks != nullptr ? p.block_chunks[row_base + e] : e;
    }
  };
  const CopySlots ck = MakeCopySlots(dk / 8, tid, kNumThreads);
  const CopySlots cv = MakeCopySlots(dv / 8, tid, kNumThreads);
  const int k_gstride = Hkv * dk, v_gstride = Hkv * dv;  // elements between token rows
  auto load = [&](int i) {  // tile i into stage i % kStages, with the fetched entry
    if (i >= n_tiles) return;
    const int sub = i % kTilesPerEntry;
    const int pos0 = next_chunk * kBlockTokens + sub * kTile;
    const int lo = min(max(first_visible - pos0, 0), kTile);
    const int hi = max(min(kv_len - pos0, kTile), 0);
    __nv_bfloat16* ks = ring + (i % kStages) * stage_elems;
    __nv_bfloat16* vs = ks + kTile * sk;
    const __nv_bfloat16* block = pool + static_cast<int64_t>(next_block) * p.block_stride;
    // Copy j = tid + n·kNumThreads is (row j / u, 16-byte unit j % u): the (row, unit) pairs of
    // this thread step by (kNumThreads / u, kNumThreads % u) with a carry (no divisions here).
    {
      const __nv_bfloat16* src = block + (static_cast<int64_t>(sub) * kTile * Hkv + kvh) * dk;
      for (int r = ck.r0, c = ck.c0; r < kTile;) {
        const bool vis = r >= lo && r < hi;
        const __nv_bfloat16* from = vis ? src + r * k_gstride + 8 * c : block;
        if (plan.evict_first) {
          CpAsync16FillHint(ks + r * sk + 8 * c, from, vis, policy);
        } else {
          CpAsync16Fill(ks + r * sk + 8 * c, from, vis);
        }
        r += ck.dr;
        c += ck.dc;
        if (c >= ck.u) {
          c -= ck.u;
          ++r;
        }
      }
    }
    {
      const __nv_bfloat16* src =
          block + v_off + (static_cast<int64_t>(sub) * kTile * Hkv + kvh) * dv;
      for (int r = cv.r0, c = cv.c0; r < kTile;) {
        const bool vis = r >= lo && r < hi;
        const __nv_bfloat16* from = vis ? src + r * v_gstride + 8 * c : block;
        if (plan.evict_first) {
          CpAsync16FillHint(vs + r * sv + 8 * c, from, vis, policy);
        } else {
          CpAsync16Fill(vs + r * sv + 8 * c, from, vis);
        }
        r += cv.dr;
        c += cv.dc;
        if (c >= cv.u) {
          c -= cv.u;
          ++r;
        }
      }
    }
    if (tid == 0) {
      tile_range[i % kStages][0] = lo;
      tile_range[i % kStages][1] = hi;
    }
  };

  float m_run = -INFINITY, l_run = 0.0f;  // of query head g, over this warp's tokens
  float acc[kColDims / 8][4];  // O columns col0 + 8n ..: [n][0..1] rows g (p hi), [2..3] g + 8
#pragma unroll
  for (int n = 0; n < kColDims / 8; ++n) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[n][c] = 0.0f;
  }

  // The table entries of the first kStages tiles as independent loads (one latency, not a chain
  // of kStages), then the first kStages − 1 tiles' copies.
  {
    int pre_block[kStages], pre_chunk[kStages];
#pragma unroll
    for (int st = 0; st < kStages; ++st) {
      const int e = e_begin + min(st, max(n_tiles - 1, 0)) / kTilesPerEntry;
      pre_block[st] = n_tiles > 0 ? p.block_table[row_base + e] : 0;
      pre_chunk[st] = n_tiles > 0 && p.block_chunks != nullptr ? p.block_chunks[row_base + e] : e;
    }
#pragma unroll
    for (int st = 0; st < kStages - 1; ++st) {
      next_block = pre_block[st];
      next_chunk = pre_chunk[st];
      load(st);
      CpAsyncCommit();
    }
    next_block = pre_block[kStages - 1];
    next_chunk = pre_chunk[kStages - 1];
  }

  // The query heads, scaled by scale·log2(e), as bf16 hi (rows 0..7) and lo (rows 8..15) pairs.
  {
    const Tq* q = static_cast<const Tq*>(p.q) + static_cast<int64_t>(s) * p.q_stride;
    const float qscale = p.scale * 1.4426950408889634f;
#pragma unroll
    for (int i = tid; i < kMaxHeadsPerCta * (kD / 2); i += kNumThreads) {
      const int gg = i / (kD / 2), w = i % (kD / 2);
      float x = 0.0f, y = 0.0f;
      if (gg < nh && 2 * w < dk) {  // dk even: 2w + 1 < dk too
        const Tq* qr = q + static_cast<int64_t>(h0 + gg) * dk + 2 * w;
        x = ToFloat(qr[0]) * qscale;
        y = ToFloat(qr[1]) * qscale;
      }
      uint32_t hi, lo;
      SplitBf16(x, y, &hi, &lo);
      Qs[gg * kQw + w] = hi;
      Qs[(kMaxHeadsPerCta + gg) * kQw + w] = lo;
    }
  }  // (read after the first barrier of the loop)

  const int mat = lane / 8, mrow = lane % 8;  // ldmatrix: this lane's matrix and row
  const int r0 = tw * 16;                     // this warp's first token of each tile
  for (int i = 0; i < n_tiles; ++i) {
    CpAsyncWaitPending<kStages - 2>();  // this thread's copies of tile i have landed
    __syncthreads();                    // everyone's; and stage (i − 1) % kStages is free
    load(i + kStages - 1);
    fetch(i + kStages);
    CpAsyncCommit();

    const int stage = i % kStages;
    const int lo = tile_range[stage][0], hi = tile_range[stage][1];
    if (lo >= hi || hi <= r0 || lo >= r0 + 16) continue;  // warp-uniform: nothing visible
    const __nv_bfloat16* ks = ring + stage * stage_elems;
    const __nv_bfloat16* vs = ks + kTile * sk;

    // S (rows: heads hi/lo, cols: tokens r0 .. r0 + 15 as two n-tiles of 8).
    // Even and odd k-steps accumulate separately (four independent MMA chains, half as long),
    // then add.
    float sc[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int c = 0; c < 4; ++c) sc[j][c] = 0.0f;
    }
    const __nv_bfloat16* krow = ks + (r0 + mrow + (mat / 2) * 8) * sk + (mat % 2) * 8;
#pragma unroll
    for (int k = 0; k < kKSteps; ++k) {
      const int kk = kk0 + k;
      if (kk * 16 < dk) {
        uint32_t a[4];
        a[0] = Qs[g * kQw + 8 * kk + t4];
        a[1] = Qs[(kMaxHeadsPerCta + g) * kQw + 8 * kk + t4];
        a[2] = Qs[g * kQw + 8 * kk + 4 + t4];
        a[3] = Qs[(kMaxHeadsPerCta + g) * kQw + 8 * kk + 4 + t4];
        uint32_t b[4];
        LdMatrixX4(b, krow + kk * 16);
        MmaBf16(sc[2 * (k % 2)], a, b[0], b[1]);
        MmaBf16(sc[2 * (k % 2) + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      sc[0][c] += sc[2][c];
      sc[1][c] += sc[3][c];
    }
    if (kSplitS) {
      // The kCols warps of this token slice hold partial S over dims 16·kk0 .. + 16·kKSteps:
      // each publishes its partial (hi + lo query rows added: head g, tokens 8j + 2·t4 + c),
      // and all add the kCols partials in the same order (so they agree bit for bit on S, m
      // and l). The previous tile's reads of Sx finished before this iteration's
      // __syncthreads. Warp (tw, o)'s partial: float4 [tw][o][lane] (conflict-free).
      float4* mine = reinterpret_cast<float4*>(Sx) + (tw * kCols + cs) * 32 + lane;
      *mine = make_float4(sc[0][0] + sc[0][2], sc[0][1] + sc[0][3], sc[1][0] + sc[1][2],
                          sc[1][1] + sc[1][3]);
      NamedBarrier(1 + tw, 32 * kCols);
      float4 sum = reinterpret_cast<const float4*>(Sx)[tw * kCols * 32 + lane];
#pragma unroll
      for (int o = 1; o < kCols; ++o) {
        const float4 x = reinterpret_cast<const float4*>(Sx)[(tw * kCols + o) * 32 + lane];
        sum.x += x.x;
        sum.y += x.y;
        sum.z += x.z;
        sum.w += x.w;
      }
      sc[0][0] = sum.x;
      sc[0][1] = sum.y;
      sc[1][0] = sum.z;
      sc[1][1] = sum.w;
      sc[0][2] = sc[0][3] = sc[1][2] = sc[1][3] = 0.0f;  // (S = sc[j][c] + sc[j][c + 2] below)
    }

    // Online softmax of head g over tokens r0 + 8j + 2·t4 + c (4 lanes of a quad share a head).
    float sv_[2][2];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int tok = r0 + 8 * j + 2 * t4 + c;
        const float x = (tok >= lo && tok < hi) ? sc[j][c] + sc[j][c + 2] : -INFINITY;
        sv_[j][c] = x;
        mx = fmaxf(mx, x);
      }
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m_run, mx);
    const float m_base = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = exp2f(m_run - m_base);  // 0 while nothing was visible
    m_run = m_new;
    float pr[2][2];
    float psum = 0.0f;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        pr[j][c] = exp2f(sv_[j][c] - m_base);
        psum += pr[j][c];
      }
    }
    l_run = l_run * alpha + psum;
    uint32_t pa[4];
    SplitBf16(pr[0][0], pr[0][1], &pa[0], &pa[1]);
    SplitBf16(pr[1][0], pr[1][1], &pa[2], &pa[3]);

    // O = α·O + P·V (V fragments by ldmatrix.trans: rows = tokens, 8 dims each).
    const __nv_bfloat16* vrow = vs + (r0 + mrow + (mat % 2) * 8) * sv + (mat / 2) * 8 + col0;
#pragma unroll
    for (int dn = 0; dn < kColDims / 16; ++dn) {
      if (col0 + dn * 16 < dv) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          acc[2 * dn][c] *= alpha;
          acc[2 * dn + 1][c] *= alpha;
        }
        uint32_t b[4];
        LdMatrixX4Trans(b, vrow + dn * 16);
        MmaBf16(acc[2 * dn], pa, b[0], b[1]);
        MmaBf16(acc[2 * dn + 1], pa, b[2], b[3]);
      }
    }
  }

  // Merge the warps: the ring becomes Ob [warps][8][dv] (fp32, scaled to the common max).
  TriggerDependents();
  CpAsyncWaitPending<0>();
  __syncthreads();
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  if (t4 == 0 && col0 == 0) {  // the column slices of a token slice share (m, l)
    Mw[tw][g] = m_run;
    Lw[tw][g] = l_run;
  }
  __syncthreads();
  float m_all = -INFINITY;
#pragma unroll
  for (int w = 0; w < kTokWarps; ++w) m_all = fmaxf(m_all, Mw[w][g]);
  const float f = m_run == -INFINITY ? 0.0f : exp2f(m_run - m_all);
  float* Ob = reinterpret_cast<float*>(smem4);  // [kTokWarps][8][dv]
#pragma unroll
  for (int n = 0; n < kColDims / 8; ++n) {
    if (col0 + n * 8 < dv) {
      float* o = Ob + (tw * kMaxHeadsPerCta + g) * dv + col0 + 8 * n + 2 * t4;
      o[0] = (acc[n][0] + acc[n][2]) * f;
      o[1] = (acc[n][1] + acc[n][3]) * f;
    }
  }
  __syncthreads();
  for (int i = tid; i < nh * dv; i += kNumThreads) {
    const int gg = i / dv, d = i % dv;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kTokWarps; ++w) m = fmaxf(m, Mw[w][gg]);
    float l = 0.0f, o = 0.0f;
#pragma unroll
    for (int w = 0; w < kTokWarps; ++w) {
      const float mw = Mw[w][gg];
      l += mw == -INFINITY ? 0.0f : Lw[w][gg] * exp2f(mw - m);
      o += Ob[(w * kMaxHeadsPerCta + gg) * dv + d];
    }
    const int h = h0 + gg;
    if (plan.splits == 1) {
      Tq* out = static_cast<Tq*>(p.out) + static_cast<int64_t>(s) * p.out_stride +
                static_cast<int64_t>(h) * dv;
      out[d] = FromFloat<Tq>(l > 0.0f ? o / l : 0.0f);
    } else {
      const int64_t part = (static_cast<int64_t>(s) * p.num_heads + h) * plan.splits + split;
      ws_acc[part * dv + d] = o;
      if (d == 0) {  // the combine kernel works in natural-log units
        ws_ml[part * 2] = m == -INFINITY ? -INFINITY : m * 0.6931471805599453f;
        ws_ml[part * 2 + 1] = l;
      }
    }
  }
}

using DecodeKernel = void (*)(PagedAttentionDecodeParams, SplitPlan, float*, float*);

template <typename Tq, int kD>
DecodeKernel PickMmaKernel(int tile, int stages, int cols, bool split_s, int min_blocks) {
  if (min_blocks == 3) {  // registers capped for 3 CTAs per SM (head dim 128 only: no spills)
    if constexpr (kD == 128) {
      if (tile == 64 && stages == 2 && cols == 2 && !split_s) {
        return PagedAttentionMmaKernel<Tq, kD, 64, 2, 2, false, 3>;
      }
    }
    return nullptr;
  }
  if (split_s) {
    if (cols == 2) {
      if (tile == 64 && stages == 2) return PagedAttentionMmaKernel<Tq, kD, 64, 2, 2, true>;
      if (tile == 64 && stages == 3) return PagedAttentionMmaKernel<Tq, kD, 64, 3, 2, true>;
      if (tile == 32 && stages == 3) return PagedAttentionMmaKernel<Tq, kD, 32, 3, 2, true>;
    } else if (cols == 4) {
      if (tile == 64 && stages == 3) return PagedAttentionMmaKernel<Tq, kD, 64, 3, 4, true>;
    }
    return nullptr;
  }
  if (cols <= 1) {
    if (tile == 64) {
      if (stages == 2) return PagedAttentionMmaKernel<Tq, kD, 64, 2, 1, false>;
      if (stages == 3) return PagedAttentionMmaKernel<Tq, kD, 64, 3, 1, false>;
      if (stages == 4) return PagedAttentionMmaKernel<Tq, kD, 64, 4, 1, false>;
    } else if (tile == 32) {
      if (stages == 3) return PagedAttentionMmaKernel<Tq, kD, 32, 3, 1, false>;
      if (stages == 4) return PagedAttentionMmaKernel<Tq, kD, 32, 4, 1, false>;
      if (stages == 6) return PagedAttentionMmaKernel<Tq, kD, 32, 6, 1, false>;
    }
  } else if (cols == 2) {
    if (tile == 64 && stages == 2) return PagedAttentionMmaKernel<Tq, kD, 64, 2, 2, false>;
    if (tile == 64 && stages == 3) return PagedAttentionMmaKernel<Tq, kD, 64, 3, 2, false>;
    if (tile == 64 && stages == 4) return PagedAttentionMmaKernel<Tq, kD, 64, 4, 2, false>;
    if (tile == 32 && stages == 3) return PagedAttentionMmaKernel<Tq, kD, 32, 3, 2, false>;
  } else if (cols == 4) {
    if (tile == 64 && stages == 3) return PagedAttentionMmaKernel<Tq, kD, 64, 3, 4, false>;
    if (tile == 32 && stages == 6) return PagedAttentionMmaKernel<Tq, kD, 32, 6, 4, false>;
  }
  return nullptr;
}

int DeviceAttribute(cudaDeviceAttr attr, int fallback) {
  int device = 0;
  int value = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&value, attr, device) != cudaSuccess) {
    return fallback;
  }
  return value;
}

}  // namespace

size_t PagedAttentionDecodeWorkspaceBytes(int num_seqs, int num_heads, int dv, int num_splits) {
  if (num_seqs <= 0 || num_heads <= 0 || dv <= 0 || num_splits <= 1) return 0;
  return sizeof(float) * static_cast<size_t>(num_seqs) * static_cast<size_t>(num_heads) *
         static_cast<size_t>(num_splits) * static_cast<size_t>(dv + 2);
}

namespace {

// Splits for `p` given the CTAs per split (base) and, for automatic splits, the CTAs wanted in
// all; clamped to [1, max_blocks] and to what the workspace holds.
int ChooseSplits(const PagedAttentionDecodeParams& p, int64_t base, int64_t want_ctas) {
  const int max_blocks = std::max(1, p.max_blocks);
  int splits = p.num_splits;
  if (splits == 0) {
    // At most the entries one sequence can have visible (a window covers window / 64 + 2).
    const int64_t visible_max =
        p.window > 0 ? std::min<int64_t>(max_blocks, p.window / kBlockTokens + 2) : max_blocks;
    splits =
        static_cast<int>(std::min<int64_t>(std::max<int64_t>(1, want_ctas / base), visible_max));
  }
  splits = std::max(1, std::min(splits, max_blocks));
  // Fewer splits when the workspace is too small (none without one).
  while (splits > 1 && (p.workspace == nullptr || !IsAligned(p.workspace, 16) ||
                        PagedAttentionDecodeWorkspaceBytes(p.num_seqs, p.num_heads, p.dv, splits) >
                            p.workspace_bytes)) {
    --splits;
  }
  return splits;
}

// The tensor-core kernel of `v` for `p` (nullptr when it does not apply or does not fit).
DecodeKernel MmaKernelFor(const PagedAttentionDecodeParams& p, const DecodeVariant& v,
                          size_t* smem) {
  const int d = std::max(p.dk, p.dv);
  const int kd = d <= 128 ? 128 : 256;
  const bool q32 = p.q_dtype == KernelDType::kF32;
  const bool split_s = (v.flags & kSplitS) != 0;
  const int mb = (v.flags & kMinBlocks3) != 0 ? 3 : 1;
  DecodeKernel k =
      kd == 128 ? (q32 ? PickMmaKernel<float, 128>(v.tile, v.stages, v.cols, split_s, mb)
                       : PickMmaKernel<__nv_bfloat16, 128>(v.tile, v.stages, v.cols, split_s, mb))
                : (q32 ? PickMmaKernel<float, 256>(v.tile, v.stages, v.cols, split_s, mb)
                       : PickMmaKernel<__nv_bfloat16, 256>(v.tile, v.stages, v.cols, split_s, mb));
  *smem = MmaSmemBytes(kd, v.tile, v.stages, std::max(1, v.cols), split_s, p.dk, p.dv);
  const int optin = DeviceAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, 227 * 1024);
  return *smem + 2 * 1024 <= static_cast<size_t>(optin) ? k : nullptr;
}

int LaunchMma(const PagedAttentionDecodeParams& p, SplitPlan plan, const DecodeVariant& v,
              DecodeKernel kernel, size_t smem, cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return static_cast<int>(err);
  const int threads = 2 * v.tile * std::max(1, v.cols);
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
  if (err != cudaSuccess) return static_cast<int>(err);
  const int64_t base = int64_t{p.num_seqs} * p.num_kv_heads * plan.head_chunks;
  const int64_t want = v.waves == kWavesSms ? int64_t{SmCount()}
                                            : int64_t{v.waves} * std::max(1, per_sm) * SmCount();
  plan.splits = ChooseSplits(p, base, want);
  plan.evict_first = (v.flags & kEvictFirst) != 0 ? 1 : 0;
  const int64_t ctas = base * plan.splits;
  if (ctas > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  float* ws_acc = static_cast<float*>(p.workspace);
  float* ws_ml = plan.splits > 1
                     ? ws_acc + static_cast<int64_t>(p.num_seqs) * p.num_heads * plan.splits * p.dv
                     : nullptr;
  kernel<<<static_cast<unsigned>(ctas), threads, smem, stream>>>(p, plan, ws_acc, ws_ml);
  err = cudaGetLastError();
  if (err != cudaSuccess || plan.splits == 1) return static_cast<int>(err);
  return p.q_dtype == KernelDType::kF32
             ? LaunchCombine<float>(p, plan, ws_acc, ws_ml, stream)
             : LaunchCombine<__nv_bfloat16>(p, plan, ws_acc, ws_ml, stream);
}

}  // namespace

const char* PagedAttentionDecodeVariantName(int variant) {
  return variant >= 0 && variant < kNumVariants ? kVariants[variant].name : nullptr;
}

int PagedAttentionDecode(const PagedAttentionDecodeParams& p, void* stream) {
  if (p.num_seqs < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.num_seqs == 0) return static_cast<int>(cudaSuccess);
  if (p.num_heads < 1 || p.num_kv_heads < 1 || p.num_heads % p.num_kv_heads != 0 || p.dk < 1 ||
      p.dk > kMaxDim || p.dv < 1 || p.dv > kMaxDim || p.q == nullptr || p.kv == nullptr ||
      p.block_table == nullptr || p.num_blocks == nullptr || p.kv_len == nullptr ||
      p.out == nullptr || p.max_blocks < 0 || p.window < 0 || p.num_splits < 0 || p.variant < 0 ||
      p.variant >= kNumVariants || p.q_stride < int64_t{p.num_heads} * p.dk ||
      p.out_stride < int64_t{p.num_heads} * p.dv ||
      p.block_stride < int64_t{kBlockTokens} * p.num_kv_heads * (p.dk + p.dv) ||
      (p.q_dtype != KernelDType::kF32 && p.q_dtype != KernelDType::kBf16) ||
      (p.kv_dtype != KernelDType::kF32 && p.kv_dtype != KernelDType::kBf16)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  SplitPlan plan;
  plan.evict_first = 0;
  const int group = p.num_heads / p.num_kv_heads;
  plan.head_chunks = (group + kMaxHeadsPerCta - 1) / kMaxHeadsPerCta;
  const int64_t base = int64_t{p.num_seqs} * p.num_kv_heads * plan.head_chunks;
  const cudaStream_t st = AsStream(stream);

  // Tensor cores: bf16 blocks, head dims multiples of 16, 16-byte aligned rows.
  const bool mma_ok = p.kv_dtype == KernelDType::kBf16 && p.dk % 16 == 0 && p.dv % 16 == 0 &&
                      (p.block_stride * 2) % 16 == 0 && IsAligned(p.kv, 16);
  const bool cuda_core_variant = p.variant != 0 && kVariants[p.variant].tile == 0;
  if (mma_ok && !cuda_core_variant) {
    DecodeVariant v =
        p.variant == 0 ? MmaDefaultVariant(std::max(p.dk, p.dv)) : kVariants[p.variant];
    size_t smem = 0;
    DecodeKernel k = MmaKernelFor(p, v, &smem);
    if (k == nullptr) {  // the variant's ring does not fit: the default
      v = MmaDefaultVariant(std::max(p.dk, p.dv));
      k = MmaKernelFor(p, v, &smem);
    }
    if (k != nullptr) return LaunchMma(p, plan, v, k, smem, st);
  }

  // CUDA cores: the named CUDA-core variant's split plan, else kCudaCoreDefault's.
  const DecodeVariant& cv = cuda_core_variant ? kVariants[p.variant] : kCudaCoreDefault;
  const int waves = cv.waves, ring = cv.stages;
  plan.splits = ChooseSplits(p, base, 4 * int64_t{SmCount()} + base - 1);  // waves == 0
  const bool q32 = p.q_dtype == KernelDType::kF32;
  const bool kv32 = p.kv_dtype == KernelDType::kF32;
  if (q32 && kv32) return LaunchKv<float, float>(p, plan, waves, ring, st);
  if (q32) return LaunchKv<float, __nv_bfloat16>(p, plan, waves, ring, st);
  if (kv32) return LaunchKv<__nv_bfloat16, float>(p, plan, waves, ring, st);
  return LaunchKv<__nv_bfloat16, __nv_bfloat16>(p, plan, waves, ring, st);
}

}  // namespace hyla::kernels
