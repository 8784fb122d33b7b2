// RMSNorm over the last dimension (plain and Gemma-style weights), fp32 or bf16 storage, fp32
// accumulation. API and semantics: kernels/ops.h. CPU reference: hyla::cpu::RmsNorm.
//
// Two shapes of launch:
//  - n <= kWarpMaxN: one warp per row, kRowsPerBlock rows per block (head-dim norms such as
//    q/k norms over 64..256 channels, where a block per row would leave most threads idle);
//  - larger n: one block per row (hidden-size norms). RmsNormBlockRegs: thread t holds the packs
//    t, t + T, ... of the row (kPacks of them, T = packs / kPacks rounded up to a warp, kPacks in
//    {1, 2, 4, 8} the smallest giving T <= 512) and w in registers: one read of the row, every
//    load issued before the reduction (shuffles + one shared-memory round). Rows wider than
//    8 · 512 packs: RmsNormBlockPerRow (kBlockThreads threads, the row read twice).
// The warp shape reads the row twice (sum of squares, then scale); the second read hits L1/L2.
// When n, the strides and the pointers allow it, rows move in 16-byte packs.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kWarpMaxN = 1024;
constexpr int kRowsPerBlock = 8;
constexpr int kBlockThreads = 256;

// Scales one row by inv (and the weights) once its sum of squares is known.
// Threads `first`, `first + step`, ... each handle kVec consecutive elements.
template <typename T, int kVec>
__device__ __forceinline__ void ScaleRow(const T* x, const float* w, bool gemma, float inv, int n,
                                         int first, int step, T* out) {
  for (int i = first * kVec; i < n; i += step * kVec) {
    const Pack<T, kVec> in = LoadPack<T, kVec>(x + i);
    float wv[kVec];
    if (w != nullptr) {
      const Pack<float, kVec> wp = LoadPack<float, kVec>(w + i);
#pragma unroll
      for (int j = 0; j < kVec; ++j) wv[j] = gemma ? 1.0f + wp.v[j] : wp.v[j];
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) wv[j] = 1.0f;
    }
    Pack<T, kVec> res;
#pragma unroll
    for (int j = 0; j < kVec; ++j) res.v[j] = FromFloat<T>(ToFloat(in.v[j]) * inv * wv[j]);
    StorePack<T, kVec>(out + i, res);
  }
}

template <typename T, int kVec>
__device__ __forceinline__ float RowSumSquares(const T* x, int n, int first, int step) {
  float ss = 0.0f;
  for (int i = first * kVec; i < n; i += step * kVec) {
    const Pack<T, kVec> in = LoadPack<T, kVec>(x + i);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float v = ToFloat(in.v[j]);
      ss += v * v;
    }
  }
  return ss;
}

// grid: ceil(rows / kRowsPerBlock), block: 32 · kRowsPerBlock.
template <typename T, int kVec>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    RmsNormWarpPerRow(const T* __restrict__ x, int64_t x_stride, const float* __restrict__ w,
                      float eps, int64_t rows, int n, bool gemma, T* out, int64_t out_stride) {
  GridDependencyWait();
  TriggerDependents();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  const T* xr = x + row * x_stride;
  const float ss = WarpSum(RowSumSquares<T, kVec>(xr, n, lane, 32));
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  ScaleRow<T, kVec>(xr, w, gemma, inv, n, lane, 32, out + row * out_stride);
}

// grid: rows, block: kBlockThreads.
template <typename T, int kVec>
__global__ void __launch_bounds__(kBlockThreads)
    RmsNormBlockPerRow(const T* __restrict__ x, int64_t x_stride, const float* __restrict__ w,
                       float eps, int n, bool gemma, T* out, int64_t out_stride) {
  GridDependencyWait();
  TriggerDependents();
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  const float ss =
      BlockSum<kBlockThreads>(RowSumSquares<T, kVec>(xr, n, threadIdx.x, kBlockThreads));
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  ScaleRow<T, kVec>(xr, w, gemma, inv, n, threadIdx.x, kBlockThreads, out + row * out_stride);
}

// grid: rows, block: a multiple of 32 with blockDim.x · kPacks · kVec >= n.
template <typename T, int kVec, int kPacks>
__global__ void __launch_bounds__(512)
    RmsNormBlockRegs(const T* __restrict__ x, int64_t x_stride, const float* __restrict__ w,
                     float eps, int n, bool gemma, T* out, int64_t out_stride) {
  GridDependencyWait();
  TriggerDependents();
  __shared__ float partial[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  const int packs = n / kVec;
  const int step = static_cast<int>(blockDim.x);
  const int first = static_cast<int>(threadIdx.x);
  float v[kPacks][kVec], wv[kPacks][kVec];
#pragma unroll
  for (int k = 0; k < kPacks; ++k) {
    const int q = first + k * step;
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[k][j] = wv[k][j] = 1.0f;
    if (q < packs) {
      const Pack<T, kVec> in = LoadPack<T, kVec>(xr + q * kVec);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[k][j] = ToFloat(in.v[j]);
      if (w != nullptr) {
        const Pack<float, kVec> wp = LoadPack<float, kVec>(w + q * kVec);
#pragma unroll
        for (int j = 0; j < kVec; ++j) wv[k][j] = gemma ? 1.0f + wp.v[j] : wp.v[j];
      }
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[k][j] = 0.0f;
    }
  }
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kPacks; ++k) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) ss += v[k][j] * v[k][j];
  }
  ss = WarpSum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < step / 32; ++i) total += partial[i];
  const float inv = 1.0f / sqrtf(total / static_cast<float>(n) + eps);
  T* orow = out + row * out_stride;
#pragma unroll
  for (int k = 0; k < kPacks; ++k) {
    const int q = first + k * step;
    if (q < packs) {
      Pack<T, kVec> res;
#pragma unroll
      for (int j = 0; j < kVec; ++j) res.v[j] = FromFloat<T>(v[k][j] * inv * wv[k][j]);
      StorePack<T, kVec>(orow + q * kVec, res);
    }
  }
}

// Launches RmsNormBlockRegs for rows of n; false in *launched when the row is too wide.
template <typename T, int kVec>
void LaunchBlockRegs(const T* x, int64_t x_stride, const float* w, float eps, int64_t rows, int n,
                     bool gemma, T* out, int64_t out_stride, cudaStream_t stream, bool* launched) {
  const int packs = n / kVec;
  int k = 1;
  while (k < 8 && (packs + k - 1) / k > 512) k *= 2;
  const int need = (packs + k - 1) / k;
  *launched = need <= 512;
  if (!*launched) return;
  const unsigned threads = static_cast<unsigned>((need + 31) / 32 * 32);
  const unsigned blocks = static_cast<unsigned>(rows);
  switch (k) {
    case 1:
      (void)LaunchPdl(RmsNormBlockRegs<T, kVec, 1>, dim3(blocks), dim3(threads), 0, stream, x,
                      x_stride, w, eps, n, gemma, out, out_stride);
      break;
    case 2:
      (void)LaunchPdl(RmsNormBlockRegs<T, kVec, 2>, dim3(blocks), dim3(threads), 0, stream, x,
                      x_stride, w, eps, n, gemma, out, out_stride);
      break;
    case 4:
      (void)LaunchPdl(RmsNormBlockRegs<T, kVec, 4>, dim3(blocks), dim3(threads), 0, stream, x,
                      x_stride, w, eps, n, gemma, out, out_stride);
      break;
    default:
      (void)LaunchPdl(RmsNormBlockRegs<T, kVec, 8>, dim3(blocks), dim3(threads), 0, stream, x,
                      x_stride, w, eps, n, gemma, out, out_stride);
      break;
  }
}

template <typename T, int kVec>
int LaunchRmsNorm(const T* x, int64_t x_stride, const float* w, float eps, int64_t rows, int n,
                  bool gemma, T* out, int64_t out_stride, cudaStream_t stream) {
  if (n <= kWarpMaxN) {
    const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    (void)LaunchPdl(RmsNormWarpPerRow<T, kVec>, dim3(static_cast<unsigned>(blocks)),
                    dim3(32 * kRowsPerBlock), 0, stream, x, x_stride, w, eps, rows, n, gemma, out,
                    out_stride);
  } else {
    bool launched = false;
    LaunchBlockRegs<T, kVec>(x, x_stride, w, eps, rows, n, gemma, out, out_stride, stream,
                             &launched);
    if (!launched) {
      (void)LaunchPdl(RmsNormBlockPerRow<T, kVec>, dim3(static_cast<unsigned>(rows)),
                      dim3(kBlockThreads), 0, stream, x, x_stride, w, eps, n, gemma, out,
                      out_stride);
    }
  }
  return LaunchResult();
}

template <typename T>
int RmsNorm(const T* x, int64_t x_stride, const float* w, float eps, int64_t rows, int64_t n,
            bool gemma, T* out, int64_t out_stride, void* stream) {
  if (rows < 0 || n < 1 || n > INT_MAX || x_stride < n || out_stride < n || rows > INT_MAX) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (rows == 0) return static_cast<int>(cudaSuccess);
  if (x == nullptr || out == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  constexpr int kVec = 16 / sizeof(T);
  const bool vectorised = n % kVec == 0 && x_stride % kVec == 0 && out_stride % kVec == 0 &&
                          IsAligned(x, 16) && IsAligned(out, 16) &&
                          (w == nullptr || IsAligned(w, kVec * sizeof(float)));
  if (vectorised) {
    return LaunchRmsNorm<T, kVec>(x, x_stride, w, eps, rows, static_cast<int>(n), gemma, out,
                                  out_stride, AsStream(stream));
  }
  return LaunchRmsNorm<T, 1>(x, x_stride, w, eps, rows, static_cast<int>(n), gemma, out, out_stride,
                             AsStream(stream));
}

}  // namespace

int RmsNormF32(const float* x, int64_t x_stride, const float* w, float eps, int64_t rows, int64_t n,
               bool gemma, float* out, int64_t out_stride, void* stream) {
  return RmsNorm<float>(x, x_stride, w, eps, rows, n, gemma, out, out_stride, stream);
}

int RmsNormBf16(const uint16_t* x, int64_t x_stride, const float* w, float eps, int64_t rows,
                int64_t n, bool gemma, uint16_t* out, int64_t out_stride, void* stream) {
  return RmsNorm<__nv_bfloat16>(reinterpret_cast<const __nv_bfloat16*>(x), x_stride, w, eps, rows,
                                n, gemma, reinterpret_cast<__nv_bfloat16*>(out), out_stride,
                                stream);
}

}  // namespace hyla::kernels
