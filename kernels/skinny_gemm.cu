// SkinnyGemmBf16 (API and semantics: kernels/skinny_gemm.h): y = x·Wᵀ (+ bias) for decode-size
// batches (m <= 64) with bf16 W streamed once from memory at close to the copy bandwidth.
//
// Design:
//   * "Swap AB": the weight rows are the M side of mma.sync.m16n8k16 (bf16 → fp32) and the
//     activation rows its N side, so a warp computes a 16-row × kMT-column block of yᵀ with
//     kMT / 8 MMAs per 16 k; kMT (8, 16, 32, 64: the smallest tile >= m) is a template
//     parameter, so small batches do not pay for 64 columns.
//   * One CTA of kWarps warps owns kRows = 16·kWarps consecutive weight rows (warp w: rows
//     16w .. 16w + 15) and one K range (split); the grid is (ceil(n / kRows), splits).
//   * Main loop: steps of 64 k. Each step copies the W tile [kRows, 64] and the x tile [kMT, 64]
//     into shared memory with cp.async.cg (16 bytes a thread, 8 consecutive threads per 128-byte
//     row segment), kStages steps deep: kStages - 1 steps of W are in flight while one is
//     multiplied. Rows past n or m and columns past k are zero-filled (k is a multiple of 8, so a
//     16-byte chunk is wholly inside or outside). Fragments by ldmatrix.x4 (A: W rows; B: x rows,
//     "col" operand = x's own k-contiguous rows). Shared rows are padded to 72 bf16 (144 bytes:
//     ldmatrix reads of 8 rows are conflict-free).
//   * Split K (when ceil(n / kRows) CTAs would not fill the GPU): the splits of one row tile
//     form a thread-block cluster of (1, splits, 1); each CTA leaves its fp32 partial tile in its
//     shared memory, and after cluster.sync() CTA rank q adds the partials of ranks 0 .. S-1 (in
//     that order: deterministic) for its 1/S of the tile through distributed shared memory, adds
//     the bias and writes y. No workspace, no atomics, one kernel.
//   * Epilogue without splits: the same shared-memory tile ([kMT][kRows] fp32), written to y
//     row by row (coalesced along n).
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16; lane = 4·g + t):
//   A (16x16, row): a0 (row g, k 2t..2t+1), a1 (row g+8, ..), a2 (row g, k 2t+8..), a3 (g+8, ..)
//   B (16x8, col):  b0 (k 2t..2t+1, col g), b1 (k 2t+8.., col g)
//   C (16x8 fp32):  c0, c1 (row g, col 2t, 2t+1), c2, c3 (row g+8, col 2t, 2t+1)
// ldmatrix.x4: lanes 8j..8j+7 give the row addresses of 8x8 matrix j; r[j] of lane 4g+t holds
// M_j[g][2t..2t+1]. A = matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
// (rows 8-15, k 8-15); B of one 8-column tile over 32 k = matrices (x rows 8j..8j+7, k 0-7),
// (.., k 8-15), (.., k 16-23), (.., k 24-31) → (b0, b1) of the first 16 k, then of the second.
//
// Variants (SkinnyGemmParams::variant; kernels_bench times all): rows per CTA 64 or 128, 4 to 8
// stages, and (_l2pf) W copies with the .L2::256B prefetch hint (the next step's 128 bytes of the
// row come into L2 with this one's). Default: 128 rows (6 stages) for m > 32 (x tile reads from L2
// per weight byte halve), 64 rows (6 stages) otherwise; splits: when the row tiles alone leave SMs
// idle, the largest of 8, 4, 2 whose clusters all fit at once (cudaOccupancyMaxActiveClusters) with
// at least 4 steps (256 k) per split; else 1.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

namespace cg = cooperative_groups;

constexpr int kKStep = 64;             // k per pipeline step
constexpr int kRowElems = kKStep + 8;  // bf16 per padded shared row (144 bytes)

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// c += A·B, A 16x16 bf16 (row), B 16x8 bf16 (col), c 16x8 fp32.
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices; this lane gives the address of row (lane % 8) of matrix lane / 8.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const uint16_t* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row))
               : "memory");
}

// 16 bytes global → shared, asynchronous, L2 only; fill == false writes zeros and reads nothing.
__device__ __forceinline__ void CpAsync16(uint16_t* dst, const uint16_t* src, bool fill) {
  const int src_bytes = fill ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(dst)),
               "l"(src), "r"(src_bytes)
               : "memory");
}
// As CpAsync16, with a hint to fetch the enclosing 256 bytes into L2 (the next step of the row).
__device__ __forceinline__ void CpAsync16Prefetch256(uint16_t* dst, const uint16_t* src,
                                                     bool fill) {
  const int src_bytes = fill ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(dst)),
               "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kN>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kN) : "memory");
}

struct KernelArgs {
  int m, n, k;
  const uint16_t* x;
  int64_t x_stride;
  const uint16_t* w;
  int64_t w_stride;
  const float* bias;
  float* y;
  int64_t y_stride;
};

template <int kMT, int kWarps, int kStages, bool kL2Prefetch>
struct Config {
  static constexpr int kRows = 16 * kWarps;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStageElems = (kRows + kMT) * kRowElems;
  static constexpr int kRedStride = kRows + 4;  // fp32 per row of the partial tile
  static constexpr size_t kSmemBytes = size_t{kStages} * kStageElems * sizeof(uint16_t);
  static_assert(kStages >= 2, "stages");
  static_assert(size_t{kMT} * kRedStride * sizeof(float) <= kSmemBytes, "partial tile fits");
  static_assert((kRows * 8) % kThreads == 0, "W chunks per thread");
};

template <int kMT, int kWarps, int kStages, bool kL2Prefetch>
__global__ void __launch_bounds__(32 * kWarps) SkinnyGemmKernel(KernelArgs a) {
  using C = Config<kMT, kWarps, kStages, kL2Prefetch>;
  constexpr int kRows = C::kRows;
  constexpr int kThreads = C::kThreads;
  constexpr int kTilesN = kMT / 8;
  extern __shared__ uint4 smem_raw[];
  uint16_t* smem = reinterpret_cast<uint16_t*>(smem_raw);

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int splits = gridDim.y;
  const int split = blockIdx.y;
  const int total_steps = (a.k + kKStep - 1) / kKStep;
  const int step_begin = static_cast<int>(static_cast<int64_t>(split) * total_steps / splits);
  const int step_end = static_cast<int>(static_cast<int64_t>(split + 1) * total_steps / splits);
  const int nsteps = step_end - step_begin;

  // Copies step `step` (relative to step_begin) into stage `slot`.
  auto load_step = [&](int step, int slot) {
    uint16_t* sw = smem + slot * C::kStageElems;
    uint16_t* sx = sw + kRows * kRowElems;
    const int kbase = (step_begin + step) * kKStep;
#pragma unroll
    for (int i = 0; i < kRows * 8 / kThreads; ++i) {
      const int id = tid + i * kThreads;
      const int r = id >> 3;
      const int c = id & 7;
      const int64_t row = n0 + r;
      const int kk = kbase + c * 8;
      const bool ok = row < a.n && kk < a.k;
      const uint16_t* src = ok ? a.w + row * a.w_stride + kk : a.w;
      if constexpr (kL2Prefetch) {
        CpAsync16Prefetch256(sw + r * kRowElems + c * 8, src, ok);
      } else {
        CpAsync16(sw + r * kRowElems + c * 8, src, ok);
      }
    }
    for (int id = tid; id < kMT * 8; id += kThreads) {
      const int r = id >> 3;
      const int c = id & 7;
      const int kk = kbase + c * 8;
      const bool ok = r < a.m && kk < a.k;
      const uint16_t* src = ok ? a.x + r * a.x_stride + kk : a.x;
      CpAsync16(sx + r * kRowElems + c * 8, src, ok);
    }
  };

  float acc[kTilesN][4];
#pragma unroll
  for (int j = 0; j < kTilesN; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
  }

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nsteps) load_step(s, s);
    CpAsyncCommit();
  }

  // Per-lane ldmatrix row offsets (elements) inside a stage.
  const int a_off = (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kRowElems + (lane >> 4) * 8;
  const int b_off = kRows * kRowElems + (lane & 7) * kRowElems + (lane >> 3) * 8;

  for (int it = 0; it < nsteps; ++it) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();
    const int next = it + kStages - 1;
    if (next < nsteps) load_step(next, next % kStages);
    CpAsyncCommit();

    const uint16_t* stage = smem + (it % kStages) * C::kStageElems;
#pragma unroll
    for (int k32 = 0; k32 < kKStep / 32; ++k32) {
      uint32_t a0[4], a1[4];
      LdMatrixX4(a0, stage + a_off + k32 * 32);
      LdMatrixX4(a1, stage + a_off + k32 * 32 + 16);
#pragma unroll
      for (int j = 0; j < kTilesN; ++j) {
        uint32_t b[4];
        LdMatrixX4(b, stage + b_off + j * 8 * kRowElems + k32 * 32);
        Mma(acc[j], a0, b[0], b[1]);
        Mma(acc[j], a1, b[2], b[3]);
      }
    }
  }

  // Partial tile [kMT][kRows] fp32 in shared memory (the pipeline's buffers, now idle).
  CpAsyncWait<0>();
  __syncthreads();
  float* red = reinterpret_cast<float*>(smem);
  {
    const int g = lane >> 2;
    const int t = lane & 3;
    const int r = warp * 16 + g;
#pragma unroll
    for (int j = 0; j < kTilesN; ++j) {
      const int col = 8 * j + 2 * t;
      red[col * C::kRedStride + r] = acc[j][0];
      red[(col + 1) * C::kRedStride + r] = acc[j][1];
      red[col * C::kRedStride + r + 8] = acc[j][2];
      red[(col + 1) * C::kRedStride + r + 8] = acc[j][3];
    }
  }
  cg::cluster_group cluster = cg::this_cluster();
  if (splits > 1) {
    cluster.sync();
  } else {
    __syncthreads();
  }

  // This CTA's share of the tile's m·kRows outputs: the sum over splits 0..S-1 in order.
  const int rank = splits > 1 ? static_cast<int>(cluster.block_rank()) : 0;
  const int total = a.m * kRows;
  const int lo = static_cast<int>(static_cast<int64_t>(rank) * total / splits);
  const int hi = static_cast<int>(static_cast<int64_t>(rank + 1) * total / splits);
  for (int e = lo + tid; e < hi; e += kThreads) {
    const int mi = e / kRows;
    const int r = e - mi * kRows;
    const int64_t col = n0 + r;
    if (col >= a.n) continue;
    const int idx = mi * C::kRedStride + r;
    float v = 0.0f;
    if (splits > 1) {
      for (int s = 0; s < splits; ++s) v += cluster.map_shared_rank(red, s)[idx];
    } else {
      v = red[idx];
    }
    if (a.bias != nullptr) v += a.bias[col];
    a.y[mi * a.y_stride + col] = v;
  }
  // Keep this CTA's shared memory alive until every rank has read it.
  if (splits > 1) cluster.sync();
}

struct VariantInfo {
  const char* name;
  int warps;
  int stages;
};
constexpr VariantInfo kVariants[] = {
    {"rows64_stages4", 4, 4},       {"rows64_stages6", 4, 6},  {"rows64_stages8", 4, 8},
    {"rows128_stages4", 8, 4},      {"rows128_stages6", 8, 6}, {"rows64_stages6_l2pf", 4, 6},
    {"rows128_stages6_l2pf", 8, 6},
};
constexpr int kNumVariants = static_cast<int>(sizeof(kVariants) / sizeof(kVariants[0]));

// Resident CTAs per SM of one instantiation (0 if it cannot launch); sets its shared memory
// limit once.
template <int kMT, int kWarps, int kStages, bool kL2Prefetch>
int Occupancy() {
  static const int occupancy = [] {
    using C = Config<kMT, kWarps, kStages, kL2Prefetch>;
    auto* kernel = SkinnyGemmKernel<kMT, kWarps, kStages, kL2Prefetch>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(C::kSmemBytes)) != cudaSuccess) {
      return 0;
    }
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, C::kThreads,
                                                      C::kSmemBytes) != cudaSuccess) {
      return 0;
    }
    return blocks;
  }();
  return occupancy;
}

// Clusters of (1, splits, 1) CTAs (splits 2, 4, 8) resident at once on this device (0 if the
// query fails); cached per instantiation and split count.
template <int kMT, int kWarps, int kStages, bool kL2Prefetch>
int MaxClusters(int splits) {
  static std::atomic<int> cache[4];  // index log2(splits); value + 1, 0 = not yet known
  const int index = splits == 2 ? 1 : splits == 4 ? 2 : 3;
  const int cached = cache[index].load(std::memory_order_relaxed);
  if (cached > 0) return cached - 1;
  using C = Config<kMT, kWarps, kStages, kL2Prefetch>;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(1, static_cast<unsigned>(splits), 1);
  config.blockDim = dim3(C::kThreads, 1, 1);
  config.dynamicSmemBytes = C::kSmemBytes;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = 1;
  attribute[0].val.clusterDim.y = static_cast<unsigned>(splits);
  attribute[0].val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, SkinnyGemmKernel<kMT, kWarps, kStages, kL2Prefetch>,
                                     &config) != cudaSuccess) {
    cudaGetLastError();
    clusters = 0;
  }
  cache[index].store(clusters + 1, std::memory_order_relaxed);
  return clusters;
}

template <int kMT, int kWarps, int kStages, bool kL2Prefetch>
int Launch(const KernelArgs& args, int requested_splits, cudaStream_t stream) {
  using C = Config<kMT, kWarps, kStages, kL2Prefetch>;
  const int occupancy = Occupancy<kMT, kWarps, kStages, kL2Prefetch>();
  if (occupancy <= 0) {
    cudaGetLastError();  // clear a sticky-free error of the attribute calls
    return static_cast<int>(cudaErrorInvalidConfiguration);
  }
  const int64_t tiles = (static_cast<int64_t>(args.n) + C::kRows - 1) / C::kRows;
  if (tiles > 0x7fffffff) return static_cast<int>(cudaErrorInvalidValue);
  const int total_steps = (args.k + kKStep - 1) / kKStep;
  int splits = requested_splits;
  if (splits == 0) {
    // The most splits (8, 4, 2) whose clusters all fit at once and leave >= 4 steps per split;
    // else 1 (then the grid may take more than one wave).
    int device = 0;
    int sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return static_cast<int>(cudaGetLastError());
    }
    splits = 1;
    if (tiles < static_cast<int64_t>(sms) * occupancy) {
      for (int s = 8; s >= 2; s /= 2) {
        if (total_steps / s < 4) continue;
        const int clusters = MaxClusters<kMT, kWarps, kStages, kL2Prefetch>(s);
        if (clusters > 0 && tiles <= clusters) {
          splits = s;
          break;
        }
      }
    }
  }
  while (splits > 1 && total_steps < splits) splits /= 2;  // every split gets >= 1 step

  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits), 1);
  config.blockDim = dim3(C::kThreads, 1, 1);
  config.dynamicSmemBytes = C::kSmemBytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  if (splits > 1) {
    attribute[0].id = cudaLaunchAttributeClusterDimension;
    attribute[0].val.clusterDim.x = 1;
    attribute[0].val.clusterDim.y = static_cast<unsigned>(splits);
    attribute[0].val.clusterDim.z = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
  }
  return static_cast<int>(
      cudaLaunchKernelEx(&config, SkinnyGemmKernel<kMT, kWarps, kStages, kL2Prefetch>, args));
}

template <int kMT>
int LaunchVariant(int variant, const KernelArgs& args, int splits, cudaStream_t stream) {
  switch (variant) {
    case 1:
      return Launch<kMT, 4, 4, false>(args, splits, stream);
    case 2:
      return Launch<kMT, 4, 6, false>(args, splits, stream);
    case 3:
      return Launch<kMT, 4, 8, false>(args, splits, stream);
    case 4:
      return Launch<kMT, 8, 4, false>(args, splits, stream);
    case 5:
      return Launch<kMT, 8, 6, false>(args, splits, stream);
    case 6:
      return Launch<kMT, 4, 6, true>(args, splits, stream);
    case 7:
      return Launch<kMT, 8, 6, true>(args, splits, stream);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// True if [a, a + a_bytes) and [b, b + b_bytes) overlap.
bool Overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const uintptr_t pa = reinterpret_cast<uintptr_t>(a);
  const uintptr_t pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

}  // namespace

const char* SkinnyGemmVariantName(int variant) {
  if (variant < 1 || variant > kNumVariants) return nullptr;
  return kVariants[variant - 1].name;
}

int SkinnyGemmBf16(const SkinnyGemmParams& p, void* stream) {
  const int64_t x_stride = p.x_stride == 0 ? p.k : p.x_stride;
  const int64_t w_stride = p.w_stride == 0 ? p.k : p.w_stride;
  const int64_t y_stride = p.y_stride == 0 ? p.n : p.y_stride;
  if (p.m < 1 || p.m > 64 || p.n < 1 || p.k < 8 || p.k % 8 != 0 || x_stride < p.k ||
      x_stride % 8 != 0 || w_stride < p.k || w_stride % 8 != 0 || y_stride < p.n ||
      p.x == nullptr || p.w == nullptr || p.y == nullptr || !Aligned16(p.x) || !Aligned16(p.w) ||
      p.variant < 0 || p.variant > kNumVariants ||
      !(p.num_splits == 0 || p.num_splits == 1 || p.num_splits == 2 || p.num_splits == 4 ||
        p.num_splits == 8)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const size_t y_bytes = (static_cast<size_t>(p.m - 1) * y_stride + p.n) * sizeof(float);
  const size_t x_bytes = (static_cast<size_t>(p.m - 1) * x_stride + p.k) * sizeof(uint16_t);
  const size_t w_bytes = (static_cast<size_t>(p.n - 1) * w_stride + p.k) * sizeof(uint16_t);
  if (Overlap(p.y, y_bytes, p.x, x_bytes) || Overlap(p.y, y_bytes, p.w, w_bytes)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int variant = p.variant != 0 ? p.variant : (p.m > 32 ? 5 : 2);
  const KernelArgs args{p.m, p.n, p.k, p.x, x_stride, p.w, w_stride, p.bias, p.y, y_stride};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.m <= 8) return LaunchVariant<8>(variant, args, p.num_splits, s);
  if (p.m <= 16) return LaunchVariant<16>(variant, args, p.num_splits, s);
  if (p.m <= 32) return LaunchVariant<32>(variant, args, p.num_splits, s);
  return LaunchVariant<64>(variant, args, p.num_splits, s);
}

}  // namespace hyla::kernels
