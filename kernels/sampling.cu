// Token sampling on the device (API and exact semantics: kernels/sampling.h via kernels/ops.h;
// CPU reference: hyla::Sampler::Sample, runtime/engine/sampling.cc).
//
// One thread-block cluster of C CTAs (kThreads threads each) per row (C = 1: one block per row,
// no cluster). CTA `rank` owns the slice [rank·S, min(vocab, (rank+1)·S)) of the row (S =
// ceil(vocab / C) rounded up to 32) and keeps its processed logits in shared memory (when they
// fit; else it reads them back from `work`). Every step is a pass over the slices with
// reductions that are deterministic (fixed association order, integer atomics only) and
// identical in every CTA of the cluster (block reduction, then the C partials combined in rank
// order through distributed shared memory after one cluster barrier; partial slots are double
// buffered by a phase counter that every thread advances alike, so one barrier per exchange):
//   1. processed logits into `work` (and the slice cache): history entries first (penalties;
//      their tokens marked in the slice's bitmap), then every other token (NaN → -inf,
//      temperature), loads batched ahead of the stores. In place (work == logits) works because
//      each element is read and written by one thread. The same pass finds the packed
//      (key, ~id) max = the greedy argmax (lowest id on ties).
//   2. greedy: the log-softmax normaliser of the max.
//   3. top-k: radix select (4 passes of 8 bits over an order-preserving uint32 key of the value)
//      of the k-th largest value by counts; per pass the C histograms are summed bin-wise and
//      warp 0 scans the 256 bins (shuffle scan + ballot).
//   4. top-p: radix select by probability mass in 2^-62 fixed point of the key K0 whose group
//      straddles top_p; inside that group of equal values the lowest ids are kept (CPU order),
//      as many as keep the mass above them < top_p (a second radix select on the ids when only
//      part of the group stays).
//   5. min-p: a threshold on exp(x − max) / Σ, as the CPU computes it. exp(x − max) (double) of
//      the elements top-k keeps is computed once into shared memory when it fits (exp cache).
//   6. inverse CDF over ids ascending: each thread sums the weights of a contiguous id range of
//      its CTA's slice; a block scan (warp shuffles) and the CTA totals in rank order give each
//      range's offset; the range that crosses u · total is walked. The weights exp(logprob) come
//      from the exp cache with a second-order correction for the fp32 rounding of the logprob
//      (within ~1e-13 relative of exp(fp32 logprob); a max logit within ±1e3, else exp itself).
// Values are compared through the key, so -0 and +0 are one value as in the CPU's float
// comparisons; every fp32 operation that the CPU does in fp32 uses __f*_rn (no FMA contraction).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kLoadBatch = 8;  // pass 1: loads issued per thread before its stores
constexpr double kFixedOne = 4611686018427387904.0;  // 2^62: probability 1 in fixed point
constexpr unsigned kFullMask = 0xffffffffu;
// Largest slice cache (bytes of dynamic shared memory); the kernel's registers allow one CTA of
// 512 threads per SM anyway.
constexpr size_t kMaxCacheBytes = 200 * 1024;

using u64 = unsigned long long;

__device__ __forceinline__ float NegInf() { return __int_as_float(static_cast<int>(0xff800000u)); }

// Order-preserving map of a non-NaN float to uint32 (-0 and +0 map to one key, as they compare
// equal). -inf maps to 0x007fffff, +inf to 0xff800000.
__device__ __forceinline__ uint32_t OrderKey(float v) {
  uint32_t b = __float_as_uint(v);
  if ((b & 0x7fffffffu) == 0u) b = 0u;
  return (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float KeyToFloat(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) != 0u ? (k & 0x7fffffffu) : ~k);
}
// Larger value first, lower id first among equal values (ids are < 2^31).
__device__ __forceinline__ u64 PackKeyId(uint32_t key, int32_t id) {
  return (static_cast<u64>(key) << 32) | static_cast<u64>(~static_cast<uint32_t>(id));
}
__device__ __forceinline__ int32_t PackedId(u64 packed) {
  return static_cast<int32_t>(~static_cast<uint32_t>(packed & 0xffffffffull));
}
__device__ __forceinline__ uint32_t PackedKey(u64 packed) {
  return static_cast<uint32_t>(packed >> 32);
}

struct SharedState {
  u64 hist[2][256];  // this CTA's histogram of a radix pass (slot = exchange phase parity)
  u64 bins[256];     // the cluster's histogram
  double dpart[kWarps];
  u64 upart[kWarps];
  u64 upart2[kWarps];
  double xd[2];  // this CTA's partial of a cluster exchange (double), by phase parity
  u64 xu[2][2];  // this CTA's partials of a cluster exchange (two u64), by phase parity
  int digit;
  u64 above;
  u64 at;
};

// Deterministic block reductions (every thread gets the result; they end with a barrier).
__device__ double BlockSumD(double v, SharedState& s) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  if (threadIdx.x % 32 == 0) s.dpart[threadIdx.x / 32] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kWarps; ++w) total += s.dpart[w];
  __syncthreads();
  return total;
}

// Block max of a and min of b together.
__device__ void BlockMaxMinU64(u64* a, u64* b, SharedState& s) {
  u64 va = *a;
  u64 vb = *b;
  for (int o = 16; o > 0; o >>= 1) {
    const u64 oa = __shfl_xor_sync(kFullMask, va, o);
    const u64 ob = __shfl_xor_sync(kFullMask, vb, o);
    va = oa > va ? oa : va;
    vb = ob < vb ? ob : vb;
  }
  if (threadIdx.x % 32 == 0) {
    s.upart[threadIdx.x / 32] = va;
    s.upart2[threadIdx.x / 32] = vb;
  }
  __syncthreads();
  u64 best = 0;
  u64 least = ~0ull;
  for (int w = 0; w < kWarps; ++w) {
    best = s.upart[w] > best ? s.upart[w] : best;
    least = s.upart2[w] < least ? s.upart2[w] : least;
  }
  __syncthreads();
  *a = best;
  *b = least;
}

// The CTAs of a row's cluster (C of them; C = 1: a lone block, no cluster operations). Every
// thread of every CTA calls the same exchanges in the same order (uniform control flow).
template <int C>
struct Group {
  SharedState& s;
  int phase = 0;

  __device__ explicit Group(SharedState& state) : s(state) {}

  static __device__ unsigned Rank() {
    if constexpr (C == 1) {
      return 0u;
    } else {
      return cg::this_cluster().block_rank();
    }
  }
  // Barrier over the cluster (C = 1: the block); orders shared memory for the other CTAs.
  static __device__ void Sync() {
    if constexpr (C == 1) {
      __syncthreads();
    } else {
      cg::this_cluster().sync();
    }
  }
  template <typename T>
  static __device__ const T* Remote(const T* p, unsigned rank) {
    if constexpr (C == 1) {
      return p;
    } else {
      return cg::this_cluster().map_shared_rank(p, rank);
    }
  }

  __device__ double SumD(double v) {
    const double block = BlockSumD(v, s);
    if constexpr (C == 1) {
      return block;
    } else {
      const int slot = phase++ & 1;
      if (threadIdx.x == 0) s.xd[slot] = block;
      Sync();
      double total = 0.0;
      for (unsigned r = 0; r < static_cast<unsigned>(C); ++r) total += *Remote(&s.xd[slot], r);
      return total;
    }
  }
  // *a = max over the group, *b = min over the group.
  __device__ void MaxMinU64(u64* a, u64* b) {
    BlockMaxMinU64(a, b, s);
    if constexpr (C > 1) {
      const int slot = phase++ & 1;
      if (threadIdx.x == 0) {
        s.xu[slot][0] = *a;
        s.xu[slot][1] = *b;
      }
      Sync();
      u64 best = 0;
      u64 least = ~0ull;
      for (unsigned r = 0; r < static_cast<unsigned>(C); ++r) {
        const u64* part = Remote(&s.xu[slot][0], r);
        best = part[0] > best ? part[0] : best;
        least = part[1] < least ? part[1] : least;
      }
      *a = best;
      *b = least;
    }
  }
  __device__ u64 MaxU64(u64 v) {
    u64 unused = ~0ull;
    MaxMinU64(&v, &unused);
    return v;
  }
  // Exclusive prefix (ids ascending: ranks, then threads) and total of a per-thread double.
  __device__ double ExclusiveScanD(double v, double* total_out) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    double incl = v;
    for (int o = 1; o < 32; o <<= 1) {
      const double up = __shfl_up_sync(kFullMask, incl, o);
      if (lane >= o) incl += up;
    }
    const double up1 = __shfl_up_sync(kFullMask, incl, 1);
    const double excl = lane == 0 ? 0.0 : up1;  // the prefix of the lanes below, as summed
    if (lane == 31) s.dpart[warp] = incl;
    __syncthreads();
    double before = 0.0;
    double block = 0.0;
    for (int w = 0; w < kWarps; ++w) {
      if (w == warp) before = block;
      block += s.dpart[w];
    }
    __syncthreads();
    double offset = 0.0;
    double total = block;
    if constexpr (C > 1) {
      const int slot = phase++ & 1;
      if (threadIdx.x == 0) s.xd[slot] = block;
      Sync();
      const unsigned rank = Rank();
      total = 0.0;
      for (unsigned r = 0; r < static_cast<unsigned>(C); ++r) {
        if (r == rank) offset = total;
        total += *Remote(&s.xd[slot], r);
      }
    }
    *total_out = total;
    return offset + before + excl;
  }
  // Before a CTA exits: no CTA of the cluster may still read its shared memory.
  __device__ void Exit() {
    if constexpr (C > 1) Sync();
  }
};

// Among the ids i in [lo, hi) of every CTA for which key_of(i, &key) is true, finds the key K
// with
//   W(key > K) < target <= W(key >= K),
// W the sum over the row of weight_of(i) (called only for elements whose key matches the digits
// chosen so far), one byte at a time from the most significant. target >= 1. Returns false when
// the total weight is below target. *above = W(key > K), *at = W(key == K). Uniform over the
// cluster.
template <int C, typename KeyFn, typename WeightFn>
__device__ bool RadixSelect(Group<C>& g, int lo, int hi, KeyFn key_of, WeightFn weight_of,
                            u64 target, uint32_t* key_out, u64* above_out, u64* at_out) {
  SharedState& s = g.s;
  const int lane = threadIdx.x % 32;
  uint32_t prefix = 0u;
  uint32_t mask = 0u;
  u64 above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    const int slot = g.phase++ & 1;
    u64* hist = s.hist[slot];
    for (int b = threadIdx.x; b < 256; b += kThreads) hist[b] = 0;
    __syncthreads();
    for (int i = lo + threadIdx.x; i < hi; i += kThreads) {
      uint32_t key;
      if (!key_of(i, &key) || (key & mask) != prefix) continue;
      const u64 w = weight_of(i);
      if (w != 0) atomicAdd(&hist[(key >> shift) & 255u], w);
    }
    g.Sync();  // every CTA's histogram is complete
    for (int b = threadIdx.x; b < 256; b += kThreads) {
      u64 t = 0;
      for (unsigned r = 0; r < static_cast<unsigned>(C); ++r) t += Group<C>::Remote(hist, r)[b];
      s.bins[b] = t;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l holds bins 255 − 8l down to 248 − 8l: lanes in descending bin order.
      u64 lane_sum = 0;
      for (int j = 0; j < 8; ++j) lane_sum += s.bins[255 - 8 * lane - j];
      u64 incl = lane_sum;
      for (int o = 1; o < 32; o <<= 1) {
        const u64 up = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o) incl += up;
      }
      const u64 before = above + (incl - lane_sum);
      const unsigned hit = __ballot_sync(kFullMask, before + lane_sum >= target);
      if (hit == 0u) {
        if (lane == 0) {
          s.digit = -1;
          s.above = 0;
          s.at = 0;
        }
      } else if (lane == __ffs(hit) - 1) {
        u64 acc = before;
        int chosen = 255 - 8 * lane - 7;
        for (int j = 0; j < 8; ++j) {
          const int b = 255 - 8 * lane - j;
          if (acc + s.bins[b] >= target) {
            chosen = b;
            break;
          }
          acc += s.bins[b];
        }
        s.digit = chosen;
        s.above = acc;
        s.at = s.bins[chosen];
      }
    }
    __syncthreads();
    const int digit = s.digit;
    above = s.above;
    const u64 at = s.at;
    __syncthreads();  // s.digit/above/at/bins are rewritten by the next pass or the next call
    if (digit < 0) return false;
    prefix |= static_cast<uint32_t>(digit) << shift;
    mask |= 255u << shift;
    *at_out = at;
  }
  *key_out = prefix;
  *above_out = above;
  return true;
}

// Dynamic shared memory: [slice] fp64 exp(x − max) of the slice (when `ecached`), [slice] fp32
// cache of the processed slice (when `cached`; always when ecached), then the slice's history
// bitmap [slice / 32] words. slice: a multiple of 32.
template <int C>
__global__ void __launch_bounds__(kThreads)
    SampleRowsKernel(const float* logits, int64_t logits_stride, float* work, int64_t work_stride,
                     int vocab, int slice, bool cached, bool ecached,
                     const SamplingRowParams* __restrict__ params,
                     const int32_t* __restrict__ history_offsets,
                     const SamplingTokenCount* __restrict__ history, SampledRow* __restrict__ out) {
  __shared__ SharedState s;
  extern __shared__ uint32_t dyn_smem[];
  Group<C> g(s);

  const unsigned rank = Group<C>::Rank();
  const int64_t row = blockIdx.x / C;
  const int tid = threadIdx.x;
  const int lo = min(vocab, static_cast<int>(rank) * slice);
  const int hi = min(vocab, lo + slice);
  double* ecache = reinterpret_cast<double*>(dyn_smem);
  float* cache = reinterpret_cast<float*>(dyn_smem + (ecached ? 2 * slice : 0));
  uint32_t* seen_bitmap =  // [slice / 32]: local ids
      dyn_smem + (ecached ? 2 * slice : 0) + (cached ? slice : 0);
  const float* in = logits + row * logits_stride;
  float* x = work + row * work_stride;
  const SamplingRowParams p = params[row];
  const bool greedy = p.temperature == 0.0f;
  const float inv_t = greedy ? 1.0f : __fdiv_rn(1.0f, p.temperature);
  const float neg_inf = NegInf();
  // The processed value of id i of this CTA's slice.
  auto xv = [&](int i) -> float { return cached ? cache[i - lo] : x[i]; };

  // ---- 1. processed logits (and the max) -----------------------------------------------------
  int32_t h_begin = 0;
  int32_t h_end = 0;
  if (history != nullptr) {
    h_begin = history_offsets[row];
    h_end = history_offsets[row + 1];
  }
  const bool has_history = h_end > h_begin;
  u64 best = 0;
  if (has_history) {
    const int words = slice / 32;
    for (int w = tid; w < words; w += kThreads) seen_bitmap[w] = 0u;
    __syncthreads();
    const float r = p.repetition_penalty;
    const bool freq_presence = p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
    for (int32_t j = h_begin + tid; j < h_end; j += kThreads) {
      const SamplingTokenCount e = history[j];
      if (e.token < lo || e.token >= hi) continue;  // other slices, or outside the vocabulary
      float v = in[e.token];
      if (isnan(v) || e.count < 0) {
        v = neg_inf;
      } else {
        if (r != 1.0f) v = v > 0.0f ? __fdiv_rn(v, r) : __fmul_rn(v, r);
        if (freq_presence && e.count > 0) {
          v = __fsub_rn(v, __fadd_rn(__fmul_rn(p.frequency_penalty, __int2float_rn(e.count)),
                                     p.presence_penalty));
        }
      }
      if (!greedy && v != neg_inf) v = __fmul_rn(v, inv_t);
      x[e.token] = v;
      if (cached) cache[e.token - lo] = v;
      const u64 packed = PackKeyId(OrderKey(v), e.token);
      best = packed > best ? packed : best;
      atomicOr(&seen_bitmap[(e.token - lo) >> 5], 1u << ((e.token - lo) & 31));
    }
    __syncthreads();
  }
  for (int base = lo + tid; base < hi; base += kThreads * kLoadBatch) {
    float v[kLoadBatch];
#pragma unroll
    for (int j = 0; j < kLoadBatch; ++j) {
      const int i = base + j * kThreads;
      v[j] = i < hi ? in[i] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kLoadBatch; ++j) {
      const int i = base + j * kThreads;
      if (i >= hi) break;
      if (has_history && (seen_bitmap[(i - lo) >> 5] & (1u << ((i - lo) & 31))) != 0u) continue;
      float t = v[j];
      if (isnan(t)) t = neg_inf;
      if (!greedy && t != neg_inf) t = __fmul_rn(t, inv_t);
      x[i] = t;
      if (cached) cache[i - lo] = t;
      const u64 packed = PackKeyId(OrderKey(t), i);
      best = packed > best ? packed : best;
    }
  }
  __syncthreads();

  const int num_top =
      p.num_top < 0 ? 0 : (p.num_top > kSamplingMaxTop ? kSamplingMaxTop : p.num_top);

  // Max value (and the greedy pick: lowest id among the maxima).
  best = g.MaxU64(best);
  const float max_value = KeyToFloat(PackedKey(best));
  const double max_d = static_cast<double>(max_value);
  const bool finite = isfinite(max_value);
  const bool leader = rank == 0u && tid == 0;

  // Top-n alternatives among kept(i) by (logprob descending, id ascending); the leader writes
  // them. Each thread keeps the best of its elements below the last pick (packed keys are
  // unique: ids differ); only the thread that held the pick rescans its elements.
  auto write_top = [&](auto kept, double log_norm) -> int {
    if (num_top == 0) return 0;
    auto best_below = [&](u64 bound) {
      u64 local = 0;
      for (int i = lo + tid; i < hi; i += kThreads) {
        const float v = xv(i);
        if (!kept(i, v)) continue;
        const float lp = static_cast<float>(static_cast<double>(v) - log_norm);
        const u64 packed = PackKeyId(OrderKey(lp), i);
        if (packed < bound && packed > local) local = packed;
      }
      return local;
    };
    int count = 0;
    u64 local = best_below(~0ull);
    for (int r = 0; r < num_top; ++r) {
      const u64 pick = g.MaxU64(local);
      if (pick == 0) break;  // a finite logprob has a key > 0: none left
      if (leader) {
        out[row].top_ids[r] = PackedId(pick);
        out[row].top_logprobs[r] = KeyToFloat(PackedKey(pick));
      }
      if (local == pick) local = best_below(pick);
      ++count;
    }
    return count;
  };

  // ---- 2. greedy -----------------------------------------------------------------------------
  if (greedy) {
    const int32_t id = PackedId(best);
    float logprob = neg_inf;
    int top = 0;
    if (finite) {
      double local = 0.0;
      for (int i = lo + tid; i < hi; i += kThreads) {
        const float v = xv(i);
        if (v != neg_inf) local += exp(static_cast<double>(v) - max_d);
      }
      const double sum = g.SumD(local);
      const double log_norm = max_d + log(sum);
      logprob = static_cast<float>(max_d - log_norm);
      // Entries whose fp32 logprob underflows to -inf are dropped, as on the CPU.
      top = write_top(
          [&](int, float v) {
            return v != neg_inf && static_cast<float>(static_cast<double>(v) - log_norm) != neg_inf;
          },
          log_norm);
    }
    if (leader) {
      out[row].token = id;
      out[row].logprob = logprob;
      out[row].used_uniform = 0;
      out[row].num_top = top;
    }
    g.Exit();
    return;
  }

  // Degenerate (no finite maximum): the CPU's log-softmax fails before the draw.
  if (!finite) {
    if (leader) {
      out[row].token = 0;
      out[row].logprob = neg_inf;
      out[row].used_uniform = 0;
      out[row].num_top = 0;
    }
    g.Exit();
    return;
  }

  // ---- 3. top-k ------------------------------------------------------------------------------
  uint32_t key_k = 0u;  // kept: key >= key_k (0: everything)
  if (p.top_k > 0 && p.top_k < vocab) {
    u64 above = 0;
    u64 at = 0;
    RadixSelect(
        g, lo, hi,
        [&](int i, uint32_t* key) {
          *key = OrderKey(xv(i));
          return true;
        },
        [](int) -> u64 { return 1; }, static_cast<u64>(p.top_k), &key_k, &above, &at);
  }

  // exp(x − max) in double of every element that top-k keeps: computed once (the same values
  // as the CPU's each time it needs them), then read by top-p, min-p and the normalisers.
  if (ecached) {
    for (int i = lo + tid; i < hi; i += kThreads) {
      const float v = xv(i);
      ecache[i - lo] =
          v != neg_inf && OrderKey(v) >= key_k ? exp(static_cast<double>(v) - max_d) : 0.0;
    }
    __syncthreads();
  }
  // exp(v − max) of element i (value v), for elements that top-k keeps.
  auto ev = [&](int i, float v) -> double {
    return ecached ? ecache[i - lo] : exp(static_cast<double>(v) - max_d);
  };

  // ---- 4. top-p ------------------------------------------------------------------------------
  bool topp_on = false;
  uint32_t key_p = 0u;  // kept: key > key_p, or key == key_p and id <= id_p
  int32_t id_p = INT_MAX;
  if (p.top_p < 1.0f) {
    double local = 0.0;
    for (int i = lo + tid; i < hi; i += kThreads) {
      const float v = xv(i);
      if (v != neg_inf && OrderKey(v) >= key_k) local += ev(i, v);
    }
    const double sum1 = g.SumD(local);
    auto mass_of = [&](double e) -> u64 { return __double2ull_rn(e / sum1 * kFixedOne); };
    const u64 target = __double2ull_rn(static_cast<double>(p.top_p) * kFixedOne);
    u64 above = 0;
    u64 at = 0;
    uint32_t k0 = 0u;
    const bool found =
        target > 0 && RadixSelect(
                          g, lo, hi,
                          [&](int i, uint32_t* key) {
                            const float v = xv(i);
                            *key = OrderKey(v);
                            return v != neg_inf && *key >= key_k;
                          },
                          [&](int i) { return mass_of(ev(i, xv(i))); }, target, &k0, &above, &at);
    if (found) {
      topp_on = true;
      key_p = k0;
      // Every element of the group has the same mass q > 0 (above < target <= above + at).
      const u64 q = mass_of(exp(static_cast<double>(KeyToFloat(k0)) - max_d));
      const u64 count = q > 0 ? at / q : 1;
      const u64 keep = q > 0 ? (target - above + q - 1) / q : 1;
      if (keep < count) {
        // The keep-th smallest id of the group: radix select on ~id (larger = smaller id).
        uint32_t id_key = 0u;
        u64 id_above = 0;
        u64 id_at = 0;
        RadixSelect(
            g, lo, hi,
            [&](int i, uint32_t* key) {
              *key = ~static_cast<uint32_t>(i);
              const float v = xv(i);
              return v != neg_inf && OrderKey(v) == k0;
            },
            [](int) -> u64 { return 1; }, keep, &id_key, &id_above, &id_at);
        id_p = static_cast<int32_t>(~id_key);
      }
    }
  }
  auto kept_k_p = [&](int i, float v) {
    if (v == neg_inf) return false;
    const uint32_t key = OrderKey(v);
    if (key < key_k) return false;
    if (topp_on && (key < key_p || (key == key_p && i > id_p))) return false;
    return true;
  };

  // ---- 5. min-p ------------------------------------------------------------------------------
  const bool minp_on = p.min_p > 0.0f;
  double sum2 = 1.0;
  double min_prob = 0.0;
  if (minp_on) {
    double local = 0.0;
    for (int i = lo + tid; i < hi; i += kThreads) {
      const float v = xv(i);
      if (kept_k_p(i, v)) local += ev(i, v);
    }
    sum2 = g.SumD(local);
    min_prob = static_cast<double>(p.min_p) * (1.0 / sum2);  // largest probability: exp(0) / Σ
  }
  auto kept = [&](int i, float v) {
    if (!kept_k_p(i, v)) return false;
    return !minp_on || !(ev(i, v) / sum2 < min_prob);
  };

  // ---- 6. log-softmax and the inverse CDF ----------------------------------------------------
  double local = 0.0;
  for (int i = lo + tid; i < hi; i += kThreads) {
    const float v = xv(i);
    if (kept(i, v)) local += ev(i, v);
  }
  const double sum3 = g.SumD(local);
  const double log_norm = max_d + log(sum3);
  // The CPU's final distribution: fp32 logprobs; one that underflows to -inf is dropped.
  auto logprob_of = [&](float v) { return static_cast<float>(static_cast<double>(v) - log_norm); };
  auto kept_final = [&](int i, float v) { return kept(i, v) && logprob_of(v) != neg_inf; };
  // The CDF weight exp(logprob) of a kept element. With the exp cache and moderate logits:
  // exp(t + d) = exp(x − max) / Σ · exp(d), t = x − log_norm in double, d = fp32(t) − t (exact,
  // |d| <= 2^-24 |t|; exp(d) to second order), within ~1e-13 relative of the CPU's exp(fp32(t))
  // (the double roundings of t and x − max, scaled by |t| < 745 and |max| <= 1e3).
  const bool fast_weight = ecached && fabs(max_d) <= 1.0e3;
  const double inv_sum3 = 1.0 / sum3;
  auto weight = [&](int i, float v) -> double {
    const double t = static_cast<double>(v) - log_norm;
    const double lp = static_cast<double>(static_cast<float>(t));
    if (!fast_weight) return exp(lp);
    const double d = lp - t;
    return ev(i, v) * inv_sum3 * (1.0 + d * (1.0 + 0.5 * d));
  };

  const int chunk = (hi - lo + kThreads - 1) / kThreads;
  const int begin = lo + tid * chunk < hi ? lo + tid * chunk : hi;
  const int end = begin + chunk < hi ? begin + chunk : hi;
  double range_sum = 0.0;
  u64 last = 0;  // largest kept id + 1 (the CPU's fallback when rounding leaves no pick)
  for (int i = begin; i < end; ++i) {
    const float v = xv(i);
    if (!kept_final(i, v)) continue;
    range_sum += weight(i, v);
    last = static_cast<u64>(i) + 1;
  }
  double total = 0.0;
  const double range_begin = g.ExclusiveScanD(range_sum, &total);
  const double target = p.uniform * total;
  u64 candidate = ~0ull;  // smallest id whose cumulative weight exceeds target
  if (range_begin + range_sum > target) {
    double cum = range_begin;
    for (int i = begin; i < end; ++i) {
      const float v = xv(i);
      if (!kept_final(i, v)) continue;
      cum += weight(i, v);
      if (cum > target) {
        candidate = static_cast<u64>(i);
        break;
      }
    }
  }
  g.MaxMinU64(&last, &candidate);
  int32_t pick = 0;
  if (candidate != ~0ull) {
    pick = static_cast<int32_t>(candidate);
  } else if (last > 0) {
    pick = static_cast<int32_t>(last - 1);
  }
  const int top = write_top(kept_final, log_norm);
  if (tid == 0 && pick >= lo && pick < hi) {  // the CTA that holds the pick's value
    out[row].token = pick;
    out[row].logprob = logprob_of(xv(pick));
    out[row].used_uniform = 1;
  }
  if (leader) out[row].num_top = top;
  g.Exit();
}

bool Overlap(const float* a, int64_t a_len, const float* b, int64_t b_len) {
  return a < b + b_len && b < a + a_len;
}

template <int C>
int LaunchSampleRows(const SampleRowsParams& a, cudaStream_t stream) {
  // Slices of a multiple of 32 ids (whole bitmap words; 128-byte aligned in a row).
  const int64_t per = (static_cast<int64_t>(a.vocab) + C - 1) / C;
  const int slice = static_cast<int>((per + 31) / 32 * 32);
  const size_t bitmap_bytes = static_cast<size_t>(slice / 32) * sizeof(uint32_t);
  const size_t cache_bytes = static_cast<size_t>(slice) * sizeof(float);
  const size_t e_bytes = static_cast<size_t>(slice) * sizeof(double);
  const bool cached = cache_bytes + bitmap_bytes <= kMaxCacheBytes;
  const bool ecached = a.exp_cache && e_bytes + cache_bytes + bitmap_bytes <= kMaxCacheBytes;
  const size_t smem = bitmap_bytes + (cached ? cache_bytes : 0) + (ecached ? e_bytes : 0);
  auto kernel = SampleRowsKernel<C>;
  if (smem > 48 * 1024 - sizeof(SharedState)) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  const int64_t blocks = a.rows * C;
  if (blocks > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  if constexpr (C == 1) {
    kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
        a.logits, a.logits_stride, a.work, a.work_stride, a.vocab, slice, cached, ecached, a.params,
        a.history_offsets, a.history, a.out);
    return LaunchResult();
  } else {
    if constexpr (C > 8) {
      const cudaError_t err =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
      if (err != cudaSuccess) return static_cast<int>(err);
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(static_cast<unsigned>(blocks));
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = C;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if constexpr (C > 8) {
      // A non-portable size may not fit one GPC (registers: one CTA per SM): then 8 CTAs a row.
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess || clusters < 1) {
        (void)cudaGetLastError();
        return LaunchSampleRows<8>(a, stream);
      }
    }
    const cudaError_t err =
        cudaLaunchKernelEx(&cfg, kernel, a.logits, a.logits_stride, a.work, a.work_stride, a.vocab,
                           slice, cached, ecached, a.params, a.history_offsets, a.history, a.out);
    if (err != cudaSuccess) return static_cast<int>(err);
    return LaunchResult();
  }
}

}  // namespace

int SampleRowsClusterFor(int64_t rows, int vocab, int sms) {
  // Slices of at least 2048 ids (smaller ones spend more on the cluster barriers than they save),
  // and rows · C <= sms while C > 1 (one CTA per SM fits the kernel's registers: a second wave
  // of CTAs would repeat every barrier's latency).
  int c = 1;
  while (c < 8 && static_cast<int64_t>(vocab) >= int64_t{4096} * c && rows * 2 * c <= sms) c *= 2;
  return c;
}

int SampleRows(const SampleRowsParams& a, void* stream) {
  if (a.rows < 0 || a.vocab < 1) return static_cast<int>(cudaErrorInvalidValue);
  if (a.rows == 0) return 0;
  if (a.rows > INT_MAX || a.logits == nullptr || a.work == nullptr || a.params == nullptr ||
      a.history_offsets == nullptr || a.out == nullptr || a.logits_stride < a.vocab ||
      a.work_stride < a.vocab) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (a.work == a.logits) {
    if (a.work_stride != a.logits_stride) return static_cast<int>(cudaErrorInvalidValue);
  } else if (Overlap(a.logits, (a.rows - 1) * a.logits_stride + a.vocab, a.work,
                     (a.rows - 1) * a.work_stride + a.vocab)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  int cluster = a.cluster;
  if (cluster <= 0) {
    int device = 0;
    int sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return static_cast<int>(cudaGetLastError());
    }
    cluster = SampleRowsClusterFor(a.rows, a.vocab, sms);
  }
  cudaStream_t s = AsStream(stream);
  switch (cluster) {
    case 1:
      return LaunchSampleRows<1>(a, s);
    case 2:
      return LaunchSampleRows<2>(a, s);
    case 4:
      return LaunchSampleRows<4>(a, s);
    case 8:
      return LaunchSampleRows<8>(a, s);
    case 16:  // 8 where 16 CTAs of the kernel cannot be co-scheduled
      return LaunchSampleRows<16>(a, s);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace hyla::kernels
