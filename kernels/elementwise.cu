// Small fp32 ops around the residual stream (API: kernels/elementwise.h via kernels/ops.h).
// Grid-stride loops; memory-bound, no shared memory.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/common.cuh"
#include "kernels/ops.h"

namespace hyla::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;

unsigned GridFor(int64_t count) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min(kMaxBlocks, (count + kThreads - 1) / kThreads)));
}

template <typename T>
__global__ void EmbeddingGatherKernel(const T* table, int64_t vocab, int64_t n, const int32_t* ids,
                                      int64_t rows, float* out) {
  GridDependencyWait();
  TriggerDependents();
  const int64_t total = rows * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = i / n;
    const int64_t c = i - r * n;
    const int32_t id = ids[r];
    out[i] = (id >= 0 && id < vocab) ? ToFloat(table[static_cast<int64_t>(id) * n + c]) : 0.0f;
  }
}

__global__ void AddInPlaceKernel(float* y, const float* x, int64_t count) {
  GridDependencyWait();
  TriggerDependents();
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    y[i] += x[i];
  }
}

__global__ void AddBiasKernel(float* y, int64_t y_stride, const float* bias, int64_t rows,
                              int64_t n) {
  GridDependencyWait();
  TriggerDependents();
  const int64_t total = rows * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = i / n;
    const int64_t c = i - r * n;
    y[r * y_stride + c] += bias[c];
  }
}

__global__ void ConvertKernel(const float* x, int64_t count, __nv_bfloat16* out) {
  GridDependencyWait();
  TriggerDependents();
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    out[i] = __float2bfloat16_rn(x[i]);
  }
}

// out[r, c] = convert(x[r, c]) for a [rows, n] matrix, rows x_stride / out_stride apart.
template <typename From, typename To>
__global__ void ConvertRowsKernel(const From* x, int64_t x_stride, int64_t rows, int64_t n, To* out,
                                  int64_t out_stride) {
  const int64_t total = rows * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = i / n;
    const int64_t c = i - r * n;
    if constexpr (std::is_same_v<To, __nv_bfloat16>) {
      out[r * out_stride + c] = __float2bfloat16_rn(x[r * x_stride + c]);
    } else {
      out[r * out_stride + c] = __bfloat162float(x[r * x_stride + c]);
    }
  }
}

__global__ void GatherRowsKernel(const float* x, int64_t x_stride, const int32_t* rows_idx,
                                 int64_t rows, int64_t n, float* out) {
  GridDependencyWait();
  TriggerDependents();
  const int64_t total = rows * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = i / n;
    const int64_t c = i - r * n;
    out[i] = x[static_cast<int64_t>(rows_idx[r]) * x_stride + c];
  }
}

}  // namespace

int EmbeddingGather(const void* table, KernelDType table_dtype, int64_t vocab, int64_t n,
                    const int32_t* ids, int64_t rows, float* out, void* stream) {
  if (table == nullptr || ids == nullptr || out == nullptr || vocab < 1 || n < 1 || rows < 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (rows == 0) return 0;
  if (table_dtype == KernelDType::kF32) {
    (void)LaunchPdl(EmbeddingGatherKernel<float>, dim3(GridFor(rows * n)), dim3(kThreads), 0,
                    AsStream(stream), static_cast<const float*>(table), vocab, n, ids, rows, out);
  } else {
    (void)LaunchPdl(EmbeddingGatherKernel<__nv_bfloat16>, dim3(GridFor(rows * n)), dim3(kThreads),
                    0, AsStream(stream), static_cast<const __nv_bfloat16*>(table), vocab, n, ids,
                    rows, out);
  }
  return LaunchResult();
}

int AddInPlaceF32(float* y, const float* x, int64_t count, void* stream) {
  if (count < 0 || (count > 0 && (y == nullptr || x == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (count == 0) return 0;
  (void)LaunchPdl(AddInPlaceKernel, dim3(GridFor(count)), dim3(kThreads), 0, AsStream(stream), y, x,
                  count);
  return LaunchResult();
}

int AddBiasF32(float* y, int64_t y_stride, const float* bias, int64_t rows, int64_t n,
               void* stream) {
  if (rows < 0 || n < 1 || y_stride < n || (rows > 0 && (y == nullptr || bias == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (rows == 0) return 0;
  (void)LaunchPdl(AddBiasKernel, dim3(GridFor(rows * n)), dim3(kThreads), 0, AsStream(stream), y,
                  y_stride, bias, rows, n);
  return LaunchResult();
}

int ConvertF32ToBf16(const float* x, int64_t count, uint16_t* out, void* stream) {
  if (count < 0 || (count > 0 && (x == nullptr || out == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (count == 0) return 0;
  (void)LaunchPdl(ConvertKernel, dim3(GridFor(count)), dim3(kThreads), 0, AsStream(stream), x,
                  count, reinterpret_cast<__nv_bfloat16*>(out));
  return LaunchResult();
}

namespace {
// ConvertF32ToBf16Rows / ConvertBf16ToF32Rows. A plain launch (no programmatic dependency): the
// prefill calls these right after GdnPrefill, whose overlapped variants end by joining a side
// stream.
template <typename From, typename To>
int ConvertRows(const From* x, int64_t x_stride, int64_t rows, int64_t n, To* out,
                int64_t out_stride, void* stream) {
  if (rows < 0 || n < 0 || x_stride < n || out_stride < n ||
      (rows > 0 && n > 0 && (x == nullptr || out == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (rows == 0 || n == 0) return 0;
  ConvertRowsKernel<From, To>
      <<<GridFor(rows * n), kThreads, 0, AsStream(stream)>>>(x, x_stride, rows, n, out, out_stride);
  return LaunchResult();
}
}  // namespace

int ConvertF32ToBf16Rows(const float* x, int64_t x_stride, int64_t rows, int64_t n, uint16_t* out,
                         int64_t out_stride, void* stream) {
  return ConvertRows(x, x_stride, rows, n, reinterpret_cast<__nv_bfloat16*>(out), out_stride,
                     stream);
}

int ConvertBf16ToF32Rows(const uint16_t* x, int64_t x_stride, int64_t rows, int64_t n, float* out,
                         int64_t out_stride, void* stream) {
  return ConvertRows(reinterpret_cast<const __nv_bfloat16*>(x), x_stride, rows, n, out, out_stride,
                     stream);
}

int GatherRowsF32(const float* x, int64_t x_stride, const int32_t* rows_idx, int64_t rows,
                  int64_t n, float* out, void* stream) {
  if (rows < 0 || n < 1 || x_stride < n ||
      (rows > 0 && (x == nullptr || rows_idx == nullptr || out == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (rows == 0) return 0;
  (void)LaunchPdl(GatherRowsKernel, dim3(GridFor(rows * n)), dim3(kThreads), 0, AsStream(stream), x,
                  x_stride, rows_idx, rows, n, out);
  return LaunchResult();
}

namespace {
// One warp per run (runs are short: a table row or one value).
__global__ void ScatterInt32RunsKernel(const Int32Run* runs, int64_t num_runs,
                                       const int32_t* values) {
  const int64_t run = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (run >= num_runs) return;
  const Int32Run r = runs[run];
  for (int i = threadIdx.x % 32; i < r.count; i += 32) r.dst[i] = values[r.src + i];
}
}  // namespace

int ScatterInt32Runs(const Int32Run* runs, int64_t num_runs, const int32_t* values, void* stream) {
  if (num_runs < 0 || (num_runs > 0 && (runs == nullptr || values == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (num_runs == 0) return 0;
  const int64_t threads = num_runs * 32;
  ScatterInt32RunsKernel<<<static_cast<unsigned>((threads + kThreads - 1) / kThreads), kThreads, 0,
                           AsStream(stream)>>>(runs, num_runs, values);
  return LaunchResult();
}

namespace {
__global__ void ReadSweepKernel(const uint4* data, int64_t count, uint32_t* sink) {
  uint32_t acc = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const uint4 v = data[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}
}  // namespace

int ReadSweep(const void* data, int64_t count, uint32_t* sink, void* stream) {
  if (count < 0 || (count > 0 && (data == nullptr || sink == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (count == 0) return 0;
  ReadSweepKernel<<<GridFor(count), kThreads, 0, AsStream(stream)>>>(
      static_cast<const uint4*>(data), count, sink);
  return LaunchResult();
}

}  // namespace hyla::kernels
