// Fused residual-block ops (ResidualRmsNorm, SiluMulToBf16). API and semantics:
// kernels/residual.h. The decode shapes (64 rows of 2048 / 2816) are latency bound: a few µs of
// which one DRAM round trip is the floor, so the kernels issue all their loads at once.
//
// ResidualRmsNorm launch shapes (ResidualRmsNormVariant):
//  - kRegs (default): one CTA per row; thread t owns the packs t, t + T, ... of the row (16-byte
//    packs when n and the pointers allow it) and keeps h + add and w of them in registers: one
//    read of each input, all issued before the reduction (warp shuffles, one shared-memory round),
//    then h, out_f32 and out_bf16 are written from registers. T = the packs of the row / kPacks
//    rounded up to a warp, kPacks in {1, 2, 4, 8} the smallest giving T <= 512 (launch bounds
//    512: up to 128 registers, so 8 packs of h and w stay in registers).
//  - kRegs256: kRegs aiming at <= 256 threads (kPacks doubled at n = 2048).
//  - kCluster2 / kCluster4: the same with the row split over a cluster of 2 / 4 CTAs; each CTA
//    reduces its part, the parts' sums are read through distributed shared memory (every CTA adds
//    them in rank order, so all agree), a second cluster barrier keeps a CTA's shared memory
//    alive until the others have read it.
//  - kLoop: the first version (one CTA of 256 threads per row, h re-read in a second pass); also
//    the fallback for rows too wide for the register shapes (more than 8 · 512 packs per CTA).
// SiluMulToBf16: kRowGrid (default) runs a 2-D grid (pack blocks of a row × rows) of 128 threads,
// one 4-wide pack per thread; kRowGrid2 two packs per thread; kGridStride the first version (a
// 1-D grid-stride loop, also the scalar path when n % 4 != 0 or the pointers are unaligned).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;         // kLoop and SiluMul kGridStride
constexpr int kMaxRegsThreads = 512;  // register shapes: the most threads of a CTA
constexpr int kTargetThreads = 512;   // register shapes: the most threads kPacks aims for
constexpr int kSiluThreads = 128;     // SiluMul row-grid shapes

// grid: rows, block: kThreads; kVec-wide packs when n and the pointers allow it.
template <int kVec>
__global__ void __launch_bounds__(kThreads) ResidualRmsNormKernel(ResidualRmsNormParams p) {
  GridDependencyWait();
  TriggerDependents();
  const int64_t row = blockIdx.x;
  const int n = static_cast<int>(p.n);
  float* h = p.h + row * p.n;
  const float* add = p.add != nullptr ? p.add + row * p.n : nullptr;
  float ss = 0.0f;
  for (int i = threadIdx.x * kVec; i < n; i += kThreads * kVec) {
    Pack<float, kVec> v = LoadPack<float, kVec>(h + i);
    if (add != nullptr) {
      const Pack<float, kVec> a = LoadPack<float, kVec>(add + i);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v.v[j] += a.v[j];
      StorePack<float, kVec>(h + i, v);
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) ss += v.v[j] * v.v[j];
  }
  ss = BlockSum<kThreads>(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + p.eps);
  for (int i = threadIdx.x * kVec; i < n; i += kThreads * kVec) {
    // Each thread re-reads only what it wrote itself: no barrier needed before this pass.
    const Pack<float, kVec> v = LoadPack<float, kVec>(h + i);
    const Pack<float, kVec> w = LoadPack<float, kVec>(p.weight + i);
    Pack<float, kVec> y;
#pragma unroll
    for (int j = 0; j < kVec; ++j) y.v[j] = v.v[j] * inv * (p.gemma ? 1.0f + w.v[j] : w.v[j]);
    if (p.out_f32 != nullptr) StorePack<float, kVec>(p.out_f32 + row * p.n + i, y);
    if (p.out_bf16 != nullptr) {
      Pack<__nv_bfloat16, kVec> b;
#pragma unroll
      for (int j = 0; j < kVec; ++j) b.v[j] = __float2bfloat16_rn(y.v[j]);
      StorePack<__nv_bfloat16, kVec>(reinterpret_cast<__nv_bfloat16*>(p.out_bf16) + row * p.n + i,
                                     b);
    }
  }
}

// Sum over the CTA (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `partial`: 32 floats of shared memory. Called once per kernel (no trailing barrier).
__device__ __forceinline__ float CtaSum(float v, float* partial) {
  const int lane = threadIdx.x % 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
  v = WarpSum(v);
  if (lane == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < warps; ++i) total += partial[i];
  return total;
}

// grid: rows · kSplit (clusters of kSplit CTAs along x when kSplit > 1), block: a multiple of 32
// with blockDim.x · kSplit · kPacks >= n / kVec.
template <int kVec, int kPacks, int kSplit>
__global__ void __launch_bounds__(kMaxRegsThreads)
    ResidualRmsNormRegsKernel(ResidualRmsNormParams p) {
  GridDependencyWait();  // programmatic dependent launch (kernels/common.cuh LaunchPdl)
  TriggerDependents();
  __shared__ float partial[32];
  __shared__ float cta_total;
  const int64_t row = blockIdx.x / kSplit;
  int part = 0;
  if constexpr (kSplit > 1) part = static_cast<int>(cg::this_cluster().block_rank());
  const int packs = static_cast<int>(p.n) / kVec;
  const int step = static_cast<int>(blockDim.x) * kSplit;
  const int first = part * static_cast<int>(blockDim.x) + static_cast<int>(threadIdx.x);
  float* h = p.h + row * p.n;
  const float* add = p.add != nullptr ? p.add + row * p.n : nullptr;

  Pack<float, kVec> v[kPacks], w[kPacks];
  // All loads first (no store in between, so nothing orders them).
#pragma unroll
  for (int k = 0; k < kPacks; ++k) {
    const int q = first + k * step;
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[k].v[j] = w[k].v[j] = 0.0f;
    if (q < packs) {
      v[k] = LoadPack<float, kVec>(h + q * kVec);
      w[k] = LoadPack<float, kVec>(p.weight + q * kVec);
      if (add != nullptr) {
        const Pack<float, kVec> a = LoadPack<float, kVec>(add + q * kVec);
#pragma unroll
        for (int j = 0; j < kVec; ++j) v[k].v[j] += a.v[j];
      }
    }
  }
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kPacks; ++k) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) ss += v[k].v[j] * v[k].v[j];  // zero beyond the row
  }
  float total = CtaSum(ss, partial);
  if constexpr (kSplit > 1) {
    cg::cluster_group cluster = cg::this_cluster();
    if (threadIdx.x == 0) cta_total = total;
    cluster.sync();
    total = 0.0f;
#pragma unroll
    for (int r = 0; r < kSplit; ++r) total += *cluster.map_shared_rank(&cta_total, r);
  }
  const float inv = 1.0f / sqrtf(total / static_cast<float>(p.n) + p.eps);
  auto* out_bf16 = reinterpret_cast<__nv_bfloat16*>(p.out_bf16);
#pragma unroll
  for (int k = 0; k < kPacks; ++k) {
    const int q = first + k * step;
    if (q < packs) {
      const int64_t at = row * p.n + q * kVec;
      if (add != nullptr) StorePack<float, kVec>(p.h + at, v[k]);
      Pack<float, kVec> y;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        y.v[j] = v[k].v[j] * inv * (p.gemma ? 1.0f + w[k].v[j] : w[k].v[j]);
      }
      if (p.out_f32 != nullptr) StorePack<float, kVec>(p.out_f32 + at, y);
      if (out_bf16 != nullptr) {
        Pack<__nv_bfloat16, kVec> b;
#pragma unroll
        for (int j = 0; j < kVec; ++j) b.v[j] = __float2bfloat16_rn(y.v[j]);
        StorePack<__nv_bfloat16, kVec>(out_bf16 + at, b);
      }
    }
  }
  if constexpr (kSplit > 1) cg::this_cluster().sync();  // the others may still read cta_total
}

template <int kVec, int kPacks, int kSplit>
int LaunchRegs(const ResidualRmsNormParams& p, int threads, cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(p.rows * kSplit));
  cfg.blockDim = dim3(static_cast<unsigned>(threads));
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int num_attrs = 0;
  if (ProgrammaticDependentLaunch()) {  // the kernel waits first (kernels/common.cuh LaunchPdl)
    attr[num_attrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[num_attrs++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (kSplit > 1) {
    attr[num_attrs].id = cudaLaunchAttributeClusterDimension;
    attr[num_attrs].val.clusterDim.x = kSplit;
    attr[num_attrs].val.clusterDim.y = 1;
    attr[num_attrs++].val.clusterDim.z = 1;
  }
  cfg.attrs = attr;
  cfg.numAttrs = num_attrs;
  const cudaError_t err =
      cudaLaunchKernelEx(&cfg, ResidualRmsNormRegsKernel<kVec, kPacks, kSplit>, p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return static_cast<int>(err);
  }
  return LaunchResult();
}

// Picks kPacks and the CTA size for a register shape; false when the row is too wide.
template <int kVec, int kSplit>
int LaunchRegsShape(const ResidualRmsNormParams& p, cudaStream_t stream, bool* launched,
                    int target_threads = kTargetThreads) {
  const int64_t packs = p.n / kVec;
  const int64_t per_cta = (packs + kSplit - 1) / kSplit;
  int k = 1;
  while (k < 8 && (per_cta + k - 1) / k > target_threads) k *= 2;
  const int64_t need = (per_cta + k - 1) / k;
  if (need > kMaxRegsThreads) {
    *launched = false;
    return 0;
  }
  *launched = true;
  const int threads = static_cast<int>((need + 31) / 32 * 32);
  switch (k) {
    case 1:
      return LaunchRegs<kVec, 1, kSplit>(p, threads, stream);
    case 2:
      return LaunchRegs<kVec, 2, kSplit>(p, threads, stream);
    case 4:
      return LaunchRegs<kVec, 4, kSplit>(p, threads, stream);
    default:
      return LaunchRegs<kVec, 8, kSplit>(p, threads, stream);
  }
}

template <int kVec>
__global__ void __launch_bounds__(kThreads)
    SiluMulToBf16Kernel(const float* gu, int64_t rows, int64_t n, __nv_bfloat16* out) {
  GridDependencyWait();
  TriggerDependents();
  const int64_t packs_per_row = n / kVec;
  const int64_t total = rows * packs_per_row;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; q < total;
       q += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = q / packs_per_row;
    const int64_t c = (q - r * packs_per_row) * kVec;
    const Pack<float, kVec> g = LoadPack<float, kVec>(gu + r * 2 * n + c);
    const Pack<float, kVec> u = LoadPack<float, kVec>(gu + r * 2 * n + n + c);
    Pack<__nv_bfloat16, kVec> res;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float gv = g.v[j];
      res.v[j] = __float2bfloat16_rn(gv / (1.0f + expf(-gv)) * u.v[j]);
    }
    StorePack<__nv_bfloat16, kVec>(out + r * n + c, res);
  }
}

// grid: (ceil(n / 4 / (kSiluThreads · kPer)), rows), block: kSiluThreads; 4-wide packs.
template <int kPer>
__global__ void __launch_bounds__(kSiluThreads)
    SiluMulToBf16RowKernel(const float* gu, int64_t n, __nv_bfloat16* out) {
  GridDependencyWait();
  TriggerDependents();
  const int64_t r = blockIdx.y;
  const int packs = static_cast<int>(n / 4);
  const float* g = gu + r * 2 * n;
  const float* u = g + n;
  const int q0 = static_cast<int>(blockIdx.x) * kSiluThreads * kPer + static_cast<int>(threadIdx.x);
  Pack<float, 4> gv[kPer], uv[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int q = q0 + k * kSiluThreads;
    if (q < packs) {
      gv[k] = LoadPack<float, 4>(g + q * 4);
      uv[k] = LoadPack<float, 4>(u + q * 4);
    }
  }
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int q = q0 + k * kSiluThreads;
    if (q < packs) {
      Pack<__nv_bfloat16, 4> res;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float x = gv[k].v[j];
        res.v[j] = __float2bfloat16_rn(x / (1.0f + expf(-x)) * uv[k].v[j]);
      }
      StorePack<__nv_bfloat16, 4>(out + r * n + q * 4, res);
    }
  }
}

}  // namespace

int ResidualRmsNorm(const ResidualRmsNormParams& p, void* stream) {
  if (p.rows < 0 || p.n < 1 || p.n > INT_MAX || p.rows > INT_MAX ||
      (p.out_f32 == nullptr && p.out_bf16 == nullptr) ||
      (p.out_f32 != nullptr && p.add != nullptr && p.out_f32 == p.h) ||
      static_cast<int>(p.variant) < 0 ||
      static_cast<int>(p.variant) > static_cast<int>(ResidualRmsNormVariant::kRegs256)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (p.rows == 0) return 0;
  if (p.h == nullptr || p.weight == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const bool vec = p.n % 4 == 0 && IsAligned(p.h, 16) && IsAligned(p.weight, 16) &&
                   (p.add == nullptr || IsAligned(p.add, 16)) &&
                   (p.out_f32 == nullptr || IsAligned(p.out_f32, 16)) &&
                   (p.out_bf16 == nullptr || IsAligned(p.out_bf16, 8));
  const cudaStream_t s = AsStream(stream);
  ResidualRmsNormVariant v = p.variant;
  if (v == ResidualRmsNormVariant::kDefault) v = ResidualRmsNormVariant::kRegs;
  // Clusters: grid.x = rows · split must fit (2^31 - 1); only on the 16-byte path.
  if ((v == ResidualRmsNormVariant::kCluster2 || v == ResidualRmsNormVariant::kCluster4) &&
      (!vec || p.rows > (INT_MAX / 4))) {
    v = ResidualRmsNormVariant::kRegs;
  }
  if (v != ResidualRmsNormVariant::kLoop) {
    bool launched = false;
    int err = 0;
    if (v == ResidualRmsNormVariant::kCluster2) {
      err = LaunchRegsShape<4, 2>(p, s, &launched);
    } else if (v == ResidualRmsNormVariant::kCluster4) {
      err = LaunchRegsShape<4, 4>(p, s, &launched);
    } else if (v == ResidualRmsNormVariant::kRegs256) {
      err = vec ? LaunchRegsShape<4, 1>(p, s, &launched, 256)
                : LaunchRegsShape<1, 1>(p, s, &launched, 256);
    } else if (vec) {
      err = LaunchRegsShape<4, 1>(p, s, &launched);
    } else {
      err = LaunchRegsShape<1, 1>(p, s, &launched);
    }
    if (launched) return err;
  }
  if (vec) {
    (void)LaunchPdl(ResidualRmsNormKernel<4>, dim3(static_cast<unsigned>(p.rows)), dim3(kThreads),
                    0, s, p);
  } else {
    (void)LaunchPdl(ResidualRmsNormKernel<1>, dim3(static_cast<unsigned>(p.rows)), dim3(kThreads),
                    0, s, p);
  }
  return LaunchResult();
}

int SiluMulToBf16(const float* gate_up, int64_t rows, int64_t n, uint16_t* out, void* stream,
                  SiluMulVariant variant) {
  if (rows < 0 || n < 1 || (rows > 0 && (gate_up == nullptr || out == nullptr)) ||
      static_cast<int>(variant) < 0 ||
      static_cast<int>(variant) > static_cast<int>(SiluMulVariant::kRowGrid2)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (rows == 0) return 0;
  auto* o = reinterpret_cast<__nv_bfloat16*>(out);
  const cudaStream_t s = AsStream(stream);
  const bool vec = n % 4 == 0 && IsAligned(gate_up, 16) && IsAligned(out, 8);
  if (variant == SiluMulVariant::kDefault) variant = SiluMulVariant::kRowGrid;
  if (vec && variant != SiluMulVariant::kGridStride && rows <= 65535 && n / 4 <= INT_MAX / 2) {
    const int per = variant == SiluMulVariant::kRowGrid2 ? 2 : 1;
    const int64_t bx = (n / 4 + int64_t{kSiluThreads} * per - 1) / (int64_t{kSiluThreads} * per);
    const dim3 grid(static_cast<unsigned>(bx), static_cast<unsigned>(rows));
    if (per == 2) {
      (void)LaunchPdl(SiluMulToBf16RowKernel<2>, dim3(grid), dim3(kSiluThreads), 0, s, gate_up, n,
                      o);
    } else {
      (void)LaunchPdl(SiluMulToBf16RowKernel<1>, dim3(grid), dim3(kSiluThreads), 0, s, gate_up, n,
                      o);
    }
    return LaunchResult();
  }
  const int64_t total = rows * (vec ? n / 4 : n);
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
  if (vec) {
    (void)LaunchPdl(SiluMulToBf16Kernel<4>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0,
                    s, gate_up, rows, n, o);
  } else {
    (void)LaunchPdl(SiluMulToBf16Kernel<1>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0,
                    s, gate_up, rows, n, o);
  }
  return LaunchResult();
}

int SiluMulToBf16(const float* gate_up, int64_t rows, int64_t n, uint16_t* out, void* stream) {
  return SiluMulToBf16(gate_up, rows, n, out, stream, SiluMulVariant::kDefault);
}

}  // namespace hyla::kernels
