// Device helpers shared by the kernels of kernels/: fp32 <-> storage conversions, vector packs
// for 128-bit memory access, warp and block reductions, launch checks. Included only by .cu
// files of kernels/ (never by host code outside it).
#ifndef HYLA_KERNELS_COMMON_CUH_
#define HYLA_KERNELS_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "kernels/ops.h"

namespace hyla::kernels {

// Storage element <-> fp32 (bf16: round to nearest even).
__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// kVec consecutive elements moved as one access (16 bytes for the vectorised kernels).
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

template <typename T, int kVec>
__device__ __forceinline__ Pack<T, kVec> LoadPack(const T* p) {
  return *reinterpret_cast<const Pack<T, kVec>*>(p);
}
template <typename T, int kVec>
__device__ __forceinline__ void StorePack(T* p, const Pack<T, kVec>& pack) {
  *reinterpret_cast<Pack<T, kVec>*>(p) = pack;
}

// Sum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over a block of kThreads threads (a multiple of 32, at most 1024); every thread gets the
// result. Uses 32 floats of shared memory; ends with a barrier, so it may be called again.
template <int kThreads>
__device__ __forceinline__ float BlockSum(float v) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size");
  constexpr int kWarps = kThreads / 32;
  __shared__ float partial[kWarps];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  v = WarpSum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kWarps; ++i) total += partial[i];
  __syncthreads();
  return total;
}

// ---- Programmatic dependent launch over the decode step (kernels/ops.h) -------------------
// LaunchPdl launches `kernel` with cudaLaunchAttributeProgrammaticStreamSerialization (when
// ProgrammaticDependentLaunch()): its CTAs may be scheduled before the previous kernel of the
// stream has completed, as soon as every CTA of that kernel has executed
// griddepcontrol.launch_dependents (TriggerDependents) or exited. griddepcontrol.wait
// (GridDependencyWait) then blocks until the previous grid has completed and its memory
// operations are visible (PTX ISA, griddepcontrol; CUDA programming guide, "Programmatic
// Dependent Launch and Synchronization"). Captured into CUDA graphs as programmatic edges.
// The rule for every kernel launched by LaunchPdl: call GridDependencyWait() as its first
// statement, in every thread (before any read of another kernel's output and before exiting,
// which also keeps the chain transitive: a kernel after it can only pass its own wait once this
// one, and so everything before, has completed). TriggerDependents() right after lets the next
// kernel's CTAs be placed while this one runs (they hold their registers and shared memory while
// they wait): the small single-wave kernels do it; the GDN decode, which wants every SM for its
// bandwidth, does not (the implicit trigger is its exit). Kernels launched without the attribute
// (cuBLAS, everything else) are ordered as always.
__device__ __forceinline__ void GridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void TriggerDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

template <typename... Params, typename... Args>
cudaError_t LaunchPdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = ProgrammaticDependentLaunch() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// True when p is aligned to `bytes` (host side, for choosing vectorised paths).
inline bool IsAligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// The result of a launch: cudaGetLastError() right after it, as int.
inline int LaunchResult() { return static_cast<int>(cudaGetLastError()); }

inline cudaStream_t AsStream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_COMMON_CUH_
