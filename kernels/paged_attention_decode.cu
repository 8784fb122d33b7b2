// Softmax attention decode over paged KV blocks (GQA, sliding window, split-K with a combine
// kernel). API and semantics: kernels/ops.h. CPU reference: the attention layer's AttendOne
// (runtime/cpu/attention_layer.cc).
//
// Bound by the KV traffic. One CTA (128 threads) handles one (sequence, KV head, up to 8 of the
// head's query heads, split of the block table): every K/V row it reads serves all those query
// heads. Per table entry it copies the visible K and V rows of its head into shared memory with
// cp.async (16-byte copies, all in flight at once), then
//   scores  [heads, 64]: thread (token, head) dot products over dk from shared memory,
//   softmax: online (running max m, sum l, rescale factor α) per head, one warp per head,
//   P·V:     thread d owns output dims d and d + 128 of every head.
// K rows in shared memory are padded so that their stride is an odd number of 16-byte units
// (conflict-free 16-byte reads by 8 consecutive rows). With more than one split every CTA writes
// (m, l, unnormalised acc) to the workspace and PagedAttentionCombineKernel merges them.
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
  // First entry whose chunk ends after first_visible: chunk >= first_visible / 64.
  const int c_lo = first_visible / kBlockTokens;
  int lo = 0, hi = entries;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (chunks[mid] < c_lo)
      lo = mid + 1;
    else
      hi = mid;
  }
  *e0 = lo;
  // First entry whose chunk starts at or after kv_len: chunk >= ceil(kv_len / 64).
  const int c_hi = (kv_len + kBlockTokens - 1) / kBlockTokens;
  hi = entries;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (chunks[mid] < c_hi)
      lo = mid + 1;
    else
      hi = mid;
  }
  *e1 = lo;
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

// grid: num_seqs · Hq; merges the splits of one (sequence, query head).
template <typename Tq>
__global__ void __launch_bounds__(kThreads)
    PagedAttentionCombineKernel(PagedAttentionDecodeParams p, int splits, const float* ws_acc,
                                const float* ws_ml) {
  const int64_t sh = blockIdx.x;  // s · Hq + h
  const int s = static_cast<int>(sh / p.num_heads);
  const int h = static_cast<int>(sh % p.num_heads);
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

int SmCount() {
  int device = 0;
  int sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 132;
  }
  return sms;
}

template <typename Tq, typename Tkv, int kHeads, bool kAsync>
int LaunchTyped(const PagedAttentionDecodeParams& p, const SplitPlan& plan, cudaStream_t stream) {
  const size_t smem = SplitSmemBytes<Tkv>(p.dk, p.dv);
  cudaError_t err =
      cudaFuncSetAttribute(PagedAttentionSplitKernel<Tq, Tkv, kHeads, kAsync>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return static_cast<int>(err);
  const int64_t ctas =
      static_cast<int64_t>(p.num_seqs) * p.num_kv_heads * plan.head_chunks * plan.splits;
  if (ctas > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  float* ws_acc = static_cast<float*>(p.workspace);
  float* ws_ml = plan.splits > 1
                     ? ws_acc + static_cast<int64_t>(p.num_seqs) * p.num_heads * plan.splits * p.dv
                     : nullptr;
  PagedAttentionSplitKernel<Tq, Tkv, kHeads, kAsync>
      <<<static_cast<unsigned>(ctas), kThreads, smem, stream>>>(p, plan, ws_acc, ws_ml);
  err = cudaGetLastError();
  if (err != cudaSuccess || plan.splits == 1) return static_cast<int>(err);
  PagedAttentionCombineKernel<Tq>
      <<<static_cast<unsigned>(static_cast<int64_t>(p.num_seqs) * p.num_heads), kThreads, 0,
         stream>>>(p, plan.splits, ws_acc, ws_ml);
  return LaunchResult();
}

template <typename Tq, typename Tkv, bool kAsync>
int LaunchHeads(const PagedAttentionDecodeParams& p, const SplitPlan& plan, cudaStream_t stream) {
  const int heads = std::min(kMaxHeadsPerCta, p.num_heads / p.num_kv_heads);
  if (heads <= 1) return LaunchTyped<Tq, Tkv, 1, kAsync>(p, plan, stream);
  if (heads <= 2) return LaunchTyped<Tq, Tkv, 2, kAsync>(p, plan, stream);
  if (heads <= 4) return LaunchTyped<Tq, Tkv, 4, kAsync>(p, plan, stream);
  return LaunchTyped<Tq, Tkv, 8, kAsync>(p, plan, stream);
}

template <typename Tq, typename Tkv>
int LaunchKv(const PagedAttentionDecodeParams& p, const SplitPlan& plan, cudaStream_t stream) {
  const int64_t row_bytes_k = int64_t{p.dk} * sizeof(Tkv);
  const int64_t row_bytes_v = int64_t{p.dv} * sizeof(Tkv);
  const bool async = row_bytes_k % 16 == 0 && row_bytes_v % 16 == 0 &&
                     (p.block_stride * static_cast<int64_t>(sizeof(Tkv))) % 16 == 0 &&
                     IsAligned(p.kv, 16);
  return async ? LaunchHeads<Tq, Tkv, true>(p, plan, stream)
               : LaunchHeads<Tq, Tkv, false>(p, plan, stream);
}

}  // namespace

size_t PagedAttentionDecodeWorkspaceBytes(int num_seqs, int num_heads, int dv, int num_splits) {
  if (num_seqs <= 0 || num_heads <= 0 || dv <= 0 || num_splits <= 1) return 0;
  return sizeof(float) * static_cast<size_t>(num_seqs) * static_cast<size_t>(num_heads) *
         static_cast<size_t>(num_splits) * static_cast<size_t>(dv + 2);
}

int PagedAttentionDecode(const PagedAttentionDecodeParams& p, void* stream) {
  if (p.num_seqs < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.num_seqs == 0) return static_cast<int>(cudaSuccess);
  if (p.num_heads < 1 || p.num_kv_heads < 1 || p.num_heads % p.num_kv_heads != 0 || p.dk < 1 ||
      p.dk > kMaxDim || p.dv < 1 || p.dv > kMaxDim || p.q == nullptr || p.kv == nullptr ||
      p.block_table == nullptr || p.num_blocks == nullptr || p.kv_len == nullptr ||
      p.out == nullptr || p.max_blocks < 0 || p.window < 0 || p.num_splits < 0 ||
      p.q_stride < int64_t{p.num_heads} * p.dk || p.out_stride < int64_t{p.num_heads} * p.dv ||
      p.block_stride < int64_t{kBlockTokens} * p.num_kv_heads * (p.dk + p.dv) ||
      (p.q_dtype != KernelDType::kF32 && p.q_dtype != KernelDType::kBf16) ||
      (p.kv_dtype != KernelDType::kF32 && p.kv_dtype != KernelDType::kBf16)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  SplitPlan plan;
  const int group = p.num_heads / p.num_kv_heads;
  plan.head_chunks = (group + kMaxHeadsPerCta - 1) / kMaxHeadsPerCta;
  const int max_blocks = std::max(1, p.max_blocks);
  int splits = p.num_splits;
  if (splits == 0) {
    // At most the entries one sequence can have visible (a window covers window / 64 + 2).
    const int64_t visible_max =
        p.window > 0 ? std::min<int64_t>(max_blocks, p.window / kBlockTokens + 2) : max_blocks;
    const int64_t base = int64_t{p.num_seqs} * p.num_kv_heads * plan.head_chunks;
    const int64_t want = (4 * int64_t{SmCount()} + base - 1) / base;
    splits = static_cast<int>(std::min<int64_t>(want, visible_max));
  }
  splits = std::max(1, std::min(splits, max_blocks));
  // Fewer splits when the workspace is too small (none without one).
  while (splits > 1 && (p.workspace == nullptr || !IsAligned(p.workspace, 16) ||
                        PagedAttentionDecodeWorkspaceBytes(p.num_seqs, p.num_heads, p.dv, splits) >
                            p.workspace_bytes)) {
    --splits;
  }
  plan.splits = splits;

  const cudaStream_t st = AsStream(stream);
  const bool q32 = p.q_dtype == KernelDType::kF32;
  const bool kv32 = p.kv_dtype == KernelDType::kF32;
  if (q32 && kv32) return LaunchKv<float, float>(p, plan, st);
  if (q32) return LaunchKv<float, __nv_bfloat16>(p, plan, st);
  if (kv32) return LaunchKv<__nv_bfloat16, float>(p, plan, st);
  return LaunchKv<__nv_bfloat16, __nv_bfloat16>(p, plan, st);
}

}  // namespace hyla::kernels
