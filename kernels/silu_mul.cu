// SwiGLU activation out = silu(gate) · up, fp32 or bf16 storage, fp32 arithmetic. API and
// semantics: kernels/ops.h. CPU reference: hyla::cpu::Silu (and SwiGluMlp's product).
//
// Element-wise over [rows, n] with row strides (so a fused gate|up projection output is read in
// place); a grid-stride loop over 16-byte packs when n, the strides and the pointers allow it.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;

// Threads walk the packs of the [rows, n / kVec] grid of packs, row-major.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    SiluMulKernel(const T* gate, int64_t gate_stride, const T* up, int64_t up_stride, int64_t rows,
                  int64_t packs_per_row, T* out, int64_t out_stride) {
  const int64_t total = rows * packs_per_row;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = p / packs_per_row;
    const int64_t c = (p - r * packs_per_row) * kVec;
    const Pack<T, kVec> g = LoadPack<T, kVec>(gate + r * gate_stride + c);
    const Pack<T, kVec> u = LoadPack<T, kVec>(up + r * up_stride + c);
    Pack<T, kVec> res;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float gv = ToFloat(g.v[j]);
      const float silu = gv / (1.0f + expf(-gv));
      res.v[j] = FromFloat<T>(silu * ToFloat(u.v[j]));
    }
    StorePack<T, kVec>(out + r * out_stride + c, res);
  }
}

template <typename T, int kVec>
int LaunchSiluMul(const T* gate, int64_t gate_stride, const T* up, int64_t up_stride, int64_t rows,
                  int64_t n, T* out, int64_t out_stride, cudaStream_t stream) {
  const int64_t packs_per_row = n / kVec;
  const int64_t blocks = std::min(kMaxBlocks, (rows * packs_per_row + kThreads - 1) / kThreads);
  SiluMulKernel<T, kVec><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      gate, gate_stride, up, up_stride, rows, packs_per_row, out, out_stride);
  return LaunchResult();
}

template <typename T>
int SiluMul(const T* gate, int64_t gate_stride, const T* up, int64_t up_stride, int64_t rows,
            int64_t n, T* out, int64_t out_stride, void* stream) {
  if (rows < 0 || n < 1 || gate_stride < n || up_stride < n || out_stride < n) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (rows == 0) return static_cast<int>(cudaSuccess);
  if (gate == nullptr || up == nullptr || out == nullptr) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  constexpr int kVec = 16 / sizeof(T);
  const bool vectorised = n % kVec == 0 && gate_stride % kVec == 0 && up_stride % kVec == 0 &&
                          out_stride % kVec == 0 && IsAligned(gate, 16) && IsAligned(up, 16) &&
                          IsAligned(out, 16);
  if (vectorised) {
    return LaunchSiluMul<T, kVec>(gate, gate_stride, up, up_stride, rows, n, out, out_stride,
                                  AsStream(stream));
  }
  return LaunchSiluMul<T, 1>(gate, gate_stride, up, up_stride, rows, n, out, out_stride,
                             AsStream(stream));
}

}  // namespace

int SiluMulF32(const float* gate, int64_t gate_stride, const float* up, int64_t up_stride,
               int64_t rows, int64_t n, float* out, int64_t out_stride, void* stream) {
  return SiluMul<float>(gate, gate_stride, up, up_stride, rows, n, out, out_stride, stream);
}

int SiluMulBf16(const uint16_t* gate, int64_t gate_stride, const uint16_t* up, int64_t up_stride,
                int64_t rows, int64_t n, uint16_t* out, int64_t out_stride, void* stream) {
  using Bf16 = __nv_bfloat16;
  return SiluMul<Bf16>(reinterpret_cast<const Bf16*>(gate), gate_stride,
                       reinterpret_cast<const Bf16*>(up), up_stride, rows, n,
                       reinterpret_cast<Bf16*>(out), out_stride, stream);
}

}  // namespace hyla::kernels
