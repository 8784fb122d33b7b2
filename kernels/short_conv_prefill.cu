// Short causal depthwise conv over the packed rows of several sequences, with carried tails.
// API and semantics: kernels/short_conv_prefill.h. CPU reference: hyla::cpu::ShortConv.
//
// Two launches on the stream:
//  1. outputs: one thread per (row, channel) (grid-stride); the thread finds its sequence by a
//     binary search of cu_seqlens and reads its K inputs from x or from the old tail;
//  2. tails: one thread per (sequence, channel) writes the last K-1 inputs, oldest first. Slot j
//     is written with input n − (K-1) + j, which (when it still comes from the old tail) is old
//     slot j + n, n >= 1: ascending j reads each old slot before it is overwritten.
// Launch 2 runs after launch 1 in stream order, so every output reads the old tail.
// Products and sums are rounded separately (__fmul_rn / __fadd_rn: no FMA contraction), in the
// CPU's tap order, so the conv is bitwise the CPU's before the SiLU.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

// The sequence owning packed row r: the largest s with cu_seqlens[s] <= r (empty sequences are
// skipped because a later s with the same offset wins).
__device__ __forceinline__ int SequenceOfRow(const int32_t* cu_seqlens, int num_seqs, int64_t r) {
  int lo = 0;
  int hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu_seqlens[mid] <= r) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ShortConvPrefillOutKernel(ShortConvPrefillParams p) {
  const int64_t total = p.total_rows * p.channels;
  const int taps = p.kernel - 1;
  const T* x = static_cast<const T*>(p.x);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = i / p.channels;
    const int c = static_cast<int>(i - r * p.channels);
    T* out = static_cast<T*>(p.out) + r * p.out_stride + c;
    const int s = SequenceOfRow(p.cu_seqlens, p.num_seqs, r);
    const int32_t slot = p.slots[s];
    if (slot < 0) {
      *out = FromFloat<T>(0.0f);
      continue;
    }
    const int64_t begin = p.cu_seqlens[s];
    const int64_t local = r - begin;  // row index inside the sequence
    const float* w = p.weight + static_cast<int64_t>(c) * p.kernel;
    const float* tail =
        taps > 0 ? p.tail + static_cast<int64_t>(slot) * p.tail_slot_stride + c : nullptr;
    // Oldest tap first, the current input last (cpu::ShortConv's order).
    float acc = 0.0f;
    for (int j = 0; j <= taps; ++j) {
      const int64_t pos = local - taps + j;
      const float h =
          pos < 0 ? tail[(pos + taps) * p.channels] : ToFloat(x[(begin + pos) * p.x_stride + c]);
      acc = __fadd_rn(acc, __fmul_rn(h, w[j]));
    }
    *out = FromFloat<T>(p.silu ? acc / (1.0f + expf(-acc)) : acc);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ShortConvPrefillTailKernel(ShortConvPrefillParams p) {
  const int64_t total = static_cast<int64_t>(p.num_seqs) * p.channels;
  const int taps = p.kernel - 1;
  const T* x = static_cast<const T*>(p.x);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int s = static_cast<int>(i / p.channels);
    const int c = static_cast<int>(i - static_cast<int64_t>(s) * p.channels);
    const int32_t slot = p.slots[s];
    const int64_t begin = p.cu_seqlens[s];
    const int64_t n = p.cu_seqlens[s + 1] - begin;
    if (slot < 0 || n <= 0) continue;
    float* tail = p.tail + static_cast<int64_t>(slot) * p.tail_slot_stride + c;
    for (int j = 0; j < taps; ++j) {
      const int64_t pos = n - taps + j;
      const float h =
          pos < 0 ? tail[(pos + taps) * p.channels] : ToFloat(x[(begin + pos) * p.x_stride + c]);
      tail[static_cast<int64_t>(j) * p.channels] = h;
    }
  }
}

template <typename T>
int Launch(const ShortConvPrefillParams& p, cudaStream_t stream) {
  const int64_t out_total = p.total_rows * p.channels;
  if (out_total > 0) {
    const int64_t blocks = std::min<int64_t>((out_total + kThreads - 1) / kThreads, kMaxBlocks);
    ShortConvPrefillOutKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
    const int err = LaunchResult();
    if (err != 0) return err;
  }
  if (p.kernel > 1) {
    const int64_t tail_total = static_cast<int64_t>(p.num_seqs) * p.channels;
    const int64_t blocks = std::min<int64_t>((tail_total + kThreads - 1) / kThreads, kMaxBlocks);
    ShortConvPrefillTailKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
    return LaunchResult();
  }
  return static_cast<int>(cudaSuccess);
}

}  // namespace

int ShortConvPrefill(const ShortConvPrefillParams& p, void* stream) {
  if (p.num_seqs < 0 || p.total_rows < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.num_seqs == 0) {
    return p.total_rows == 0 ? static_cast<int>(cudaSuccess)
                             : static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.channels < 1 || p.kernel < 1 || p.weight == nullptr || p.cu_seqlens == nullptr ||
      p.slots == nullptr || (p.kernel > 1 && p.tail == nullptr) ||
      (p.total_rows > 0 && (p.x == nullptr || p.out == nullptr)) || p.x_stride < p.channels ||
      p.out_stride < p.channels ||
      (p.kernel > 1 && p.tail_slot_stride < static_cast<int64_t>(p.kernel - 1) * p.channels)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.dtype == KernelDType::kF32) return Launch<float>(p, AsStream(stream));
  if (p.dtype == KernelDType::kBf16) return Launch<__nv_bfloat16>(p, AsStream(stream));
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace hyla::kernels
