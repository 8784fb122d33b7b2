// Token sampling on the device (API and exact semantics: kernels/sampling.h via kernels/ops.h;
// CPU reference: hyla::Sampler::Sample, runtime/engine/sampling.cc).
//
// One block of kThreads threads per row; every step is a pass over the row with block-wide
// reductions that are deterministic (fixed association order, integer atomics only):
//   1. processed logits into `work`: history entries first (penalties; their tokens marked in a
//      shared-memory bitmap), then every other token (NaN → -inf, temperature). In place
//      (work == logits) works because each element is read and written by one thread.
//   2. greedy: packed (key, ~id) max = argmax with the lowest id on ties.
//   3. top-k: radix select (4 passes of 8 bits over an order-preserving uint32 key of the value)
//      of the k-th largest value by counts.
//   4. top-p: radix select by probability mass in 2^-62 fixed point of the key K0 whose group
//      straddles top_p; inside that group of equal values the lowest ids are kept (CPU order),
//      as many as keep the mass above them < top_p (a second radix select on the ids when only
//      part of the group stays).
//   5. min-p: a threshold on exp(x − max) / Σ, as the CPU computes it.
//   6. inverse CDF over ids ascending: each thread sums the weights of a contiguous id range,
//      thread 0 scans the range sums, the range that crosses u · total is walked.
// Values are compared through the key, so -0 and +0 are one value as in the CPU's float
// comparisons; every fp32 operation that the CPU does in fp32 uses __f*_rn (no FMA contraction).
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr double kFixedOne = 4611686018427387904.0;  // 2^62: probability 1 in fixed point
constexpr unsigned kFullMask = 0xffffffffu;

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
  u64 hist[256];
  double range_sum[kThreads];  // per-thread sums of the CDF ranges, then their exclusive prefix
  double dpart[kWarps];
  u64 upart[kWarps];
  double total;
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

__device__ u64 BlockMaxU64(u64 v, SharedState& s) {
  for (int o = 16; o > 0; o >>= 1) {
    const u64 other = __shfl_xor_sync(kFullMask, v, o);
    v = other > v ? other : v;
  }
  if (threadIdx.x % 32 == 0) s.upart[threadIdx.x / 32] = v;
  __syncthreads();
  u64 best = 0;
  for (int w = 0; w < kWarps; ++w) best = s.upart[w] > best ? s.upart[w] : best;
  __syncthreads();
  return best;
}

__device__ u64 BlockMinU64(u64 v, SharedState& s) {
  for (int o = 16; o > 0; o >>= 1) {
    const u64 other = __shfl_xor_sync(kFullMask, v, o);
    v = other < v ? other : v;
  }
  if (threadIdx.x % 32 == 0) s.upart[threadIdx.x / 32] = v;
  __syncthreads();
  u64 best = ~0ull;
  for (int w = 0; w < kWarps; ++w) best = s.upart[w] < best ? s.upart[w] : best;
  __syncthreads();
  return best;
}

// Among the ids i < n for which key_of(i, &key) is true, finds the key K with
//   W(key > K) < target <= W(key >= K),
// W the sum of weight_of(i) (called only for elements whose key matches the digits chosen so
// far), one byte at a time from the most significant. target >= 1. Returns false when the total
// weight is below target. *above = W(key > K), *at = W(key == K). Uniform over the block.
template <typename KeyFn, typename WeightFn>
__device__ bool RadixSelect(int n, KeyFn key_of, WeightFn weight_of, u64 target, SharedState& s,
                            uint32_t* key_out, u64* above_out, u64* at_out) {
  uint32_t prefix = 0u;
  uint32_t mask = 0u;
  u64 above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) s.hist[b] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += kThreads) {
      uint32_t key;
      if (!key_of(i, &key) || (key & mask) != prefix) continue;
      const u64 w = weight_of(i);
      if (w != 0) atomicAdd(&s.hist[(key >> shift) & 255u], w);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int chosen = -1;
      for (int b = 255; b >= 0; --b) {
        if (above + s.hist[b] >= target) {
          chosen = b;
          break;
        }
        above += s.hist[b];
      }
      s.digit = chosen;
      s.above = above;
      s.at = chosen >= 0 ? s.hist[chosen] : 0;
    }
    __syncthreads();
    const int digit = s.digit;
    above = s.above;
    const u64 at = s.at;
    __syncthreads();  // s.digit/above/at are rewritten by the next pass or the next call
    if (digit < 0) return false;
    prefix |= static_cast<uint32_t>(digit) << shift;
    mask |= 255u << shift;
    *at_out = at;
  }
  *key_out = prefix;
  *above_out = above;
  return true;
}

__global__ void __launch_bounds__(kThreads)
    SampleRowsKernel(const float* logits, int64_t logits_stride, float* work, int64_t work_stride,
                     int vocab, const SamplingRowParams* __restrict__ params,
                     const int32_t* __restrict__ history_offsets,
                     const SamplingTokenCount* __restrict__ history, SampledRow* __restrict__ out) {
  __shared__ SharedState s;
  extern __shared__ uint32_t seen_bitmap[];  // [ceil(vocab / 32)]: tokens of the history

  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const float* in = logits + row * logits_stride;
  float* x = work + row * work_stride;
  const SamplingRowParams p = params[row];
  const bool greedy = p.temperature == 0.0f;
  const float inv_t = greedy ? 1.0f : __fdiv_rn(1.0f, p.temperature);
  const float neg_inf = NegInf();

  // ---- 1. processed logits -------------------------------------------------------------------
  int32_t h_begin = 0;
  int32_t h_end = 0;
  if (history != nullptr) {
    h_begin = history_offsets[row];
    h_end = history_offsets[row + 1];
  }
  const bool has_history = h_end > h_begin;
  if (has_history) {
    const int words = (vocab + 31) / 32;
    for (int w = tid; w < words; w += kThreads) seen_bitmap[w] = 0u;
    __syncthreads();
    const float r = p.repetition_penalty;
    const bool freq_presence = p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
    for (int32_t j = h_begin + tid; j < h_end; j += kThreads) {
      const SamplingTokenCount e = history[j];
      if (e.token < 0 || e.token >= vocab) continue;
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
      atomicOr(&seen_bitmap[e.token >> 5], 1u << (e.token & 31));
    }
    __syncthreads();
  }
  for (int i = tid; i < vocab; i += kThreads) {
    if (has_history && (seen_bitmap[i >> 5] & (1u << (i & 31))) != 0u) continue;
    float v = in[i];
    if (isnan(v)) v = neg_inf;
    if (!greedy && v != neg_inf) v = __fmul_rn(v, inv_t);
    x[i] = v;
  }
  __syncthreads();

  const int num_top =
      p.num_top < 0 ? 0 : (p.num_top > kSamplingMaxTop ? kSamplingMaxTop : p.num_top);

  // Max value (and the greedy pick: lowest id among the maxima).
  u64 best = 0;
  for (int i = tid; i < vocab; i += kThreads) {
    const u64 packed = PackKeyId(OrderKey(x[i]), i);
    best = packed > best ? packed : best;
  }
  best = BlockMaxU64(best, s);
  const float max_value = KeyToFloat(PackedKey(best));
  const double max_d = static_cast<double>(max_value);
  const bool finite = isfinite(max_value);

  // Top-n alternatives among kept(i) by (logprob descending, id ascending); thread 0 writes them.
  auto write_top = [&](auto kept, double log_norm) -> int {
    int count = 0;
    u64 bound = ~0ull;
    for (int r = 0; r < num_top; ++r) {
      u64 local = 0;
      for (int i = tid; i < vocab; i += kThreads) {
        const float v = x[i];
        if (!kept(i, v)) continue;
        const float lp = static_cast<float>(static_cast<double>(v) - log_norm);
        const u64 packed = PackKeyId(OrderKey(lp), i);
        if (packed < bound && packed > local) local = packed;
      }
      const u64 pick = BlockMaxU64(local, s);
      if (pick == 0) break;  // a finite logprob has a key > 0: none left
      if (tid == 0) {
        out[row].top_ids[r] = PackedId(pick);
        out[row].top_logprobs[r] = KeyToFloat(PackedKey(pick));
      }
      bound = pick;
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
      for (int i = tid; i < vocab; i += kThreads) {
        const float v = x[i];
        if (v != neg_inf) local += exp(static_cast<double>(v) - max_d);
      }
      const double sum = BlockSumD(local, s);
      const double log_norm = max_d + log(sum);
      logprob = static_cast<float>(max_d - log_norm);
      // Entries whose fp32 logprob underflows to -inf are dropped, as on the CPU.
      top = write_top(
          [&](int, float v) {
            return v != neg_inf && static_cast<float>(static_cast<double>(v) - log_norm) != neg_inf;
          },
          log_norm);
    }
    if (tid == 0) {
      out[row].token = id;
      out[row].logprob = logprob;
      out[row].used_uniform = 0;
      out[row].num_top = top;
    }
    return;
  }

  // Degenerate (no finite maximum): the CPU's log-softmax fails before the draw.
  if (!finite) {
    if (tid == 0) {
      out[row].token = 0;
      out[row].logprob = neg_inf;
      out[row].used_uniform = 0;
      out[row].num_top = 0;
    }
    return;
  }

  // ---- 3. top-k ------------------------------------------------------------------------------
  uint32_t key_k = 0u;  // kept: key >= key_k (0: everything)
  if (p.top_k > 0 && p.top_k < vocab) {
    u64 above = 0;
    u64 at = 0;
    RadixSelect(
        vocab,
        [&](int i, uint32_t* key) {
          *key = OrderKey(x[i]);
          return true;
        },
        [](int) -> u64 { return 1; }, static_cast<u64>(p.top_k), s, &key_k, &above, &at);
  }

  // ---- 4. top-p ------------------------------------------------------------------------------
  bool topp_on = false;
  uint32_t key_p = 0u;  // kept: key > key_p, or key == key_p and id <= id_p
  int32_t id_p = INT_MAX;
  if (p.top_p < 1.0f) {
    double local = 0.0;
    for (int i = tid; i < vocab; i += kThreads) {
      const float v = x[i];
      if (v != neg_inf && OrderKey(v) >= key_k) local += exp(static_cast<double>(v) - max_d);
    }
    const double sum1 = BlockSumD(local, s);
    auto mass = [&](float v) -> u64 {
      return __double2ull_rn(exp(static_cast<double>(v) - max_d) / sum1 * kFixedOne);
    };
    const u64 target = __double2ull_rn(static_cast<double>(p.top_p) * kFixedOne);
    u64 above = 0;
    u64 at = 0;
    uint32_t k0 = 0u;
    const bool found =
        target > 0 && RadixSelect(
                          vocab,
                          [&](int i, uint32_t* key) {
                            const float v = x[i];
                            *key = OrderKey(v);
                            return v != neg_inf && *key >= key_k;
                          },
                          [&](int i) { return mass(x[i]); }, target, s, &k0, &above, &at);
    if (found) {
      topp_on = true;
      key_p = k0;
      // Every element of the group has the same mass q > 0 (above < target <= above + at).
      const u64 q = mass(KeyToFloat(k0));
      const u64 count = q > 0 ? at / q : 1;
      const u64 keep = q > 0 ? (target - above + q - 1) / q : 1;
      if (keep < count) {
        // The keep-th smallest id of the group: radix select on ~id (larger = smaller id).
        uint32_t id_key = 0u;
        u64 id_above = 0;
        u64 id_at = 0;
        RadixSelect(
            vocab,
            [&](int i, uint32_t* key) {
              *key = ~static_cast<uint32_t>(i);
              const float v = x[i];
              return v != neg_inf && OrderKey(v) == k0;
            },
            [](int) -> u64 { return 1; }, keep, s, &id_key, &id_above, &id_at);
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
    for (int i = tid; i < vocab; i += kThreads) {
      const float v = x[i];
      if (kept_k_p(i, v)) local += exp(static_cast<double>(v) - max_d);
    }
    sum2 = BlockSumD(local, s);
    min_prob = static_cast<double>(p.min_p) * (1.0 / sum2);  // largest probability: exp(0) / Σ
  }
  auto kept = [&](int i, float v) {
    if (!kept_k_p(i, v)) return false;
    return !minp_on || !(exp(static_cast<double>(v) - max_d) / sum2 < min_prob);
  };

  // ---- 6. log-softmax and the inverse CDF ----------------------------------------------------
  double local = 0.0;
  for (int i = tid; i < vocab; i += kThreads) {
    const float v = x[i];
    if (kept(i, v)) local += exp(static_cast<double>(v) - max_d);
  }
  const double sum3 = BlockSumD(local, s);
  const double log_norm = max_d + log(sum3);
  // The CPU's final distribution: fp32 logprobs; one that underflows to -inf is dropped.
  auto logprob_of = [&](float v) { return static_cast<float>(static_cast<double>(v) - log_norm); };
  auto kept_final = [&](int i, float v) { return kept(i, v) && logprob_of(v) != neg_inf; };

  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int begin = tid * chunk < vocab ? tid * chunk : vocab;
  const int end = begin + chunk < vocab ? begin + chunk : vocab;
  double range_sum = 0.0;
  u64 last = 0;  // largest kept id + 1 (the CPU's fallback when rounding leaves no pick)
  for (int i = begin; i < end; ++i) {
    const float v = x[i];
    if (!kept_final(i, v)) continue;
    range_sum += exp(static_cast<double>(logprob_of(v)));
    last = static_cast<u64>(i) + 1;
  }
  s.range_sum[tid] = range_sum;
  __syncthreads();
  if (tid == 0) {
    double acc = 0.0;
    for (int t = 0; t < kThreads; ++t) {
      const double v = s.range_sum[t];
      s.range_sum[t] = acc;
      acc += v;
    }
    s.total = acc;
  }
  __syncthreads();
  const double target = p.uniform * s.total;
  const double range_begin = s.range_sum[tid];
  u64 candidate = ~0ull;  // smallest id whose cumulative weight exceeds target
  if (range_begin + range_sum > target) {
    double cum = range_begin;
    for (int i = begin; i < end; ++i) {
      const float v = x[i];
      if (!kept_final(i, v)) continue;
      cum += exp(static_cast<double>(logprob_of(v)));
      if (cum > target) {
        candidate = static_cast<u64>(i);
        break;
      }
    }
  }
  candidate = BlockMinU64(candidate, s);
  last = BlockMaxU64(last, s);
  int32_t pick = 0;
  if (candidate != ~0ull) {
    pick = static_cast<int32_t>(candidate);
  } else if (last > 0) {
    pick = static_cast<int32_t>(last - 1);
  }
  const int top = write_top(kept_final, log_norm);
  if (tid == 0) {
    out[row].token = pick;
    out[row].logprob = logprob_of(x[pick]);
    out[row].used_uniform = 1;
    out[row].num_top = top;
  }
}

bool Overlap(const float* a, int64_t a_len, const float* b, int64_t b_len) {
  return a < b + b_len && b < a + a_len;
}

}  // namespace

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
  const size_t bitmap_bytes = static_cast<size_t>((a.vocab + 31) / 32) * sizeof(uint32_t);
  if (bitmap_bytes > 48 * 1024 - sizeof(SharedState)) {
    const cudaError_t err =
        cudaFuncSetAttribute(SampleRowsKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(bitmap_bytes));
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  SampleRowsKernel<<<static_cast<unsigned>(a.rows), kThreads, bitmap_bytes, AsStream(stream)>>>(
      a.logits, a.logits_stride, a.work, a.work_stride, a.vocab, a.params, a.history_offsets,
      a.history, a.out);
  return LaunchResult();
}

}  // namespace hyla::kernels
