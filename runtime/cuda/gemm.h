// Weights on the device and the GEMMs of the CUDA backend (cuBLAS).
//
// DeviceMatrix: one weight matrix [out, in] (the PyTorch nn.Linear layout), fp32 or bf16.
// Linear computes y[n, out] = x[n, in] · Wᵀ (+ bias) with fp32 activations in and out:
//   fp32 W: cublasSgemm with fp32 math (no TF32) — the exactness path against fp32 checkpoints;
//   bf16 W: x is rounded to bf16 in scratch, then bf16 × bf16 with fp32 accumulation and fp32
//           output — the serving path (half the weight bytes): on the GEMM tuner's cuBLASLt plan
//           for the shape when DeviceContext::gemm_tune() is on (runtime/cuda/gemm_tuner.h: the
//           fastest algorithm by timing, cublasGemmEx among the candidates), else cublasGemmEx.
// DeviceWeights owns the device memory of a model's weights and uploads checkpoint tensors.
//
// Thread-safety: DeviceWeights is filled at load and read-only afterwards; Linear runs on the
// context's stream.
#ifndef HYLA_RUNTIME_CUDA_GEMM_H_
#define HYLA_RUNTIME_CUDA_GEMM_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/cuda/cuda_util.h"
#include "runtime/cuda/device_context.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/dtype.h"

namespace hyla::cuda {

// Numeric mode of a CUDA backend.
enum class Precision {
  kF32,   // fp32 weights, fp32 KV: exact against the CPU reference (tests, fp32 checkpoints)
  kBf16,  // bf16 weights and KV, fp32 activations, state and accumulation (serving)
};
absl::string_view PrecisionName(Precision p);

struct DeviceMatrix {
  DType dtype = DType::kF32;   // kF32 or kBF16
  const void* data = nullptr;  // [rows, cols] row-major
  int64_t rows = 0;            // out features
  int64_t cols = 0;            // in features
};

class DeviceWeights {
 public:
  DeviceWeights(DeviceContext* ctx, Precision precision) : ctx_(ctx), precision_(precision) {}

  Precision precision() const { return precision_; }
  // Uploads a [rows, cols] matrix in the backend's precision.
  absl::StatusOr<DeviceMatrix> Matrix(const F32Tensor& t, absl::string_view name);
  // Uploads the rows [row_begin, row_begin + rows) of a [*, cols] tensor as a matrix (to split a
  // fused projection).
  absl::StatusOr<DeviceMatrix> MatrixRows(const F32Tensor& t, int64_t row_begin, int64_t rows,
                                          absl::string_view name);
  // Uploads a tensor as fp32 (norm weights, biases, gates, conv weights): always fp32.
  absl::StatusOr<const float*> F32(const F32Tensor& t, absl::string_view name);
  absl::StatusOr<const float*> F32(const std::vector<float>& v, absl::string_view name);
  // Total device bytes held.
  int64_t bytes() const { return bytes_; }

 private:
  DeviceContext* ctx_;
  Precision precision_;
  std::vector<DeviceBuffer> buffers_;
  int64_t bytes_ = 0;
};

// y[n, w.rows] = x[n, w.cols] · wᵀ (+ bias[w.rows] when non-null); fp32 x and y on the device,
// rows x_stride / y_stride elements apart (0: dense). n may be 0. y must not alias x.
absl::Status Linear(DeviceContext& ctx, const float* x, int64_t n, const DeviceMatrix& w,
                    const float* bias, float* y, int64_t x_stride = 0, int64_t y_stride = 0);
// The same with the input also given rounded to bf16 (x_bf16: dense [n, w.cols], the values of x
// after FloatToBf16, written by the producer of x): a bf16 weight then multiplies x_bf16 instead
// of converting x first (one launch and one pass less). x_bf16 may be nullptr; fp32 weights
// always read x (x may be nullptr when x_bf16 is given and w is bf16).
absl::Status Linear(DeviceContext& ctx, const float* x, const uint16_t* x_bf16, int64_t n,
                    const DeviceMatrix& w, const float* bias, float* y, int64_t x_stride = 0,
                    int64_t y_stride = 0);

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_GEMM_H_
