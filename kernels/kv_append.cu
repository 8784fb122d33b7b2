// K/V rows into paged blocks (API and semantics: kernels/kv_append.h).
//
// One thread per element of a row's K|V (Hkv · (dk + dv) per row), rows in the y dimension of
// the grid (chunks of 65535): consecutive threads read consecutive fp32 elements and write
// consecutive block elements (a row's keys of all heads are contiguous in a block, so are its
// values), i.e. coalesced on both sides.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kBlockTokens = 64;
constexpr int kMaxGridY = 65535;

template <typename Tkv>
__global__ void __launch_bounds__(kThreads) KvAppendKernel(KvAppendParams p, int64_t row0) {
  GridDependencyWait();
  TriggerDependents();
  const int64_t r = row0 + blockIdx.y;
  if (r >= p.rows) return;
  const int32_t block = p.row_block[r];
  if (block < 0) return;
  const int64_t kw = static_cast<int64_t>(p.num_kv_heads) * p.dk;
  const int64_t vw = static_cast<int64_t>(p.num_kv_heads) * p.dv;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= kw + vw) return;
  const int64_t t = p.row_pos[r] % kBlockTokens;
  Tkv* dst = static_cast<Tkv*>(p.kv) + static_cast<int64_t>(block) * p.block_stride;
  if (e < kw) {
    dst[t * kw + e] = FromFloat<Tkv>(p.k[r * p.k_stride + e]);
  } else {
    const int64_t ev = e - kw;
    dst[kBlockTokens * kw + t * vw + ev] = FromFloat<Tkv>(p.v[r * p.v_stride + ev]);
  }
}

}  // namespace

int KvAppend(const KvAppendParams& p, void* stream) {
  if (p.rows < 0 || p.num_kv_heads < 1 || p.dk < 1 || p.dv < 1) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.rows == 0) return static_cast<int>(cudaSuccess);
  const int64_t kw = int64_t{p.num_kv_heads} * p.dk;
  const int64_t vw = int64_t{p.num_kv_heads} * p.dv;
  if (p.k == nullptr || p.v == nullptr || p.row_block == nullptr || p.row_pos == nullptr ||
      p.kv == nullptr || p.k_stride < kw || p.v_stride < vw ||
      p.block_stride < kBlockTokens * (kw + vw) ||
      (p.kv_dtype != KernelDType::kF32 && p.kv_dtype != KernelDType::kBf16)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t xblocks = (kw + vw + kThreads - 1) / kThreads;
  if (xblocks > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  const cudaStream_t st = AsStream(stream);
  for (int64_t row0 = 0; row0 < p.rows; row0 += kMaxGridY) {
    const unsigned ry = static_cast<unsigned>(std::min<int64_t>(kMaxGridY, p.rows - row0));
    const dim3 grid(static_cast<unsigned>(xblocks), ry);
    if (p.kv_dtype == KernelDType::kF32) {
      (void)LaunchPdl(KvAppendKernel<float>, dim3(grid), dim3(kThreads), 0, st, p, row0);
    } else {
      (void)LaunchPdl(KvAppendKernel<__nv_bfloat16>, dim3(grid), dim3(kThreads), 0, st, p, row0);
    }
    const int err = LaunchResult();
    if (err != 0) return err;
  }
  return static_cast<int>(cudaSuccess);
}

}  // namespace hyla::kernels
