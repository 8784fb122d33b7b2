// Host-only API of kernels/elementwise.cu: part of kernels/ops.h (include that, never this).
// Small fp32 ops around the residual stream of the CUDA backend. CPU references: the embedding
// copy, the residual add and the row gather of cpu::CpuBackend::Step, and hyla::FloatToBf16 /
// Bf16ToFloat (runtime/base/float16.h) for the conversions.
#ifndef HYLA_KERNELS_ELEMENTWISE_H_
#define HYLA_KERNELS_ELEMENTWISE_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {

// out[r, :] = table[ids[r], :] for r < rows. table: [vocab, n] fp32 or bf16 (`table_dtype`);
// out [rows, n] fp32. ids on the device; an id outside [0, vocab) gives a zero row.
int EmbeddingGather(const void* table, KernelDType table_dtype, int64_t vocab, int64_t n,
                    const int32_t* ids, int64_t rows, float* out, void* stream);

// y[i] += x[i] for i < count (fp32; y == x allowed).
int AddInPlaceF32(float* y, const float* x, int64_t count, void* stream);

// y[r, c] += bias[c] for the [rows, n] matrix y with row stride y_stride.
int AddBiasF32(float* y, int64_t y_stride, const float* bias, int64_t rows, int64_t n,
               void* stream);

// out[i] = bf16(x[i]) (round to nearest even), fp32 → bf16 bits.
int ConvertF32ToBf16(const float* x, int64_t count, uint16_t* out, void* stream);
// The same over a [rows, n] matrix: out[r, c] = bf16(x[r, c]), rows x_stride and out_stride
// elements apart (>= n).
int ConvertF32ToBf16Rows(const float* x, int64_t x_stride, int64_t rows, int64_t n, uint16_t* out,
                         int64_t out_stride, void* stream);
// out[r, c] = float(x[r, c]) (exact) for a [rows, n] bf16 matrix; strides as above.
int ConvertBf16ToF32Rows(const uint16_t* x, int64_t x_stride, int64_t rows, int64_t n, float* out,
                         int64_t out_stride, void* stream);

// out[r, :] = x[rows_idx[r], :] for r < rows; x rows x_stride elements apart, out dense [rows, n].
int GatherRowsF32(const float* x, int64_t x_stride, const int32_t* rows_idx, int64_t rows,
                  int64_t n, float* out, void* stream);

// Reads `count` uint4 (16-byte) words of `data` and writes one word to *sink only if their XOR
// is a value no input gives in practice (so the reads cannot be dropped): a read-only sweep for
// benchmarks, which leaves the L2 holding clean lines of `data` (a memset would leave dirty
// lines that the next, timed, kernel writes back). CPU reference: none (no visible result).
int ReadSweep(const void* data, int64_t count, uint32_t* sink, void* stream);

// A run of int32 values to write to device memory: dst[i] = values[src + i] for i < count.
struct Int32Run {
  int32_t* dst = nullptr;  // device
  int32_t src = 0;         // first value in `values`
  int32_t count = 0;       // >= 0
};
// Applies `num_runs` runs (device array) from `values` (device). Runs must not overlap each
// other's destinations (the order between runs is not defined). CPU reference: the loop above.
int ScatterInt32Runs(const Int32Run* runs, int64_t num_runs, const int32_t* values, void* stream);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_ELEMENTWISE_H_
