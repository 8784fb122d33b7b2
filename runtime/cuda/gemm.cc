#include "runtime/cuda/gemm.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "runtime/base/float16.h"
#include "runtime/base/status_macros.h"
#include "runtime/cuda/cublas_api.h"
#include "runtime/cuda/gemm_tuner.h"

namespace hyla::cuda {

absl::string_view PrecisionName(Precision p) { return p == Precision::kF32 ? "fp32" : "bf16"; }

absl::StatusOr<DeviceMatrix> DeviceWeights::Matrix(const F32Tensor& t, absl::string_view name) {
  if (t.shape().size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected a matrix, got rank ", t.shape().size()));
  }
  return MatrixRows(t, 0, t.shape()[0], name);
}

absl::StatusOr<DeviceMatrix> DeviceWeights::MatrixRows(const F32Tensor& t, int64_t row_begin,
                                                       int64_t rows, absl::string_view name) {
  if (t.shape().size() != 2 || row_begin < 0 || rows < 0 || row_begin + rows > t.shape()[0]) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": rows [", row_begin, ", ", row_begin + rows, ") out of range"));
  }
  const int64_t cols = t.shape()[1];
  const int64_t count = rows * cols;
  const float* src = t.data() + row_begin * cols;
  DeviceMatrix m;
  m.rows = rows;
  m.cols = cols;
  if (precision_ == Precision::kF32) {
    HYLA_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::Allocate(sizeof(float) * count,
                                                                   absl::StrCat("weight ", name)));
    HYLA_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(buf.get(), src, sizeof(float) * count, cudaMemcpyHostToDevice),
        absl::StrCat("upload of ", name));
    m.dtype = DType::kF32;
    m.data = buf.get();
    bytes_ += static_cast<int64_t>(buf.bytes());
    buffers_.push_back(std::move(buf));
  } else {
    std::vector<uint16_t> host(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) host[i] = FloatToBf16(src[i]);
    HYLA_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::Allocate(sizeof(uint16_t) * count,
                                                                   absl::StrCat("weight ", name)));
    HYLA_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(buf.get(), host.data(), sizeof(uint16_t) * count, cudaMemcpyHostToDevice),
        absl::StrCat("upload of ", name));
    m.dtype = DType::kBF16;
    m.data = buf.get();
    bytes_ += static_cast<int64_t>(buf.bytes());
    buffers_.push_back(std::move(buf));
  }
  return m;
}

absl::StatusOr<const float*> DeviceWeights::F32(const F32Tensor& t, absl::string_view name) {
  const int64_t count = t.numel();
  HYLA_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::Allocate(sizeof(float) * count,
                                                                 absl::StrCat("weight ", name)));
  if (count > 0) {
    HYLA_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(buf.get(), t.data(), sizeof(float) * count, cudaMemcpyHostToDevice),
        absl::StrCat("upload of ", name));
  }
  const float* p = buf.as<float>();
  bytes_ += static_cast<int64_t>(buf.bytes());
  buffers_.push_back(std::move(buf));
  return p;
}

absl::StatusOr<const float*> DeviceWeights::F32(const std::vector<float>& v,
                                                absl::string_view name) {
  return F32(F32Tensor::View(v.data(), {static_cast<int64_t>(v.size())}), name);
}

absl::Status Linear(DeviceContext& ctx, const float* x, int64_t n, const DeviceMatrix& w,
                    const float* bias, float* y, int64_t x_stride, int64_t y_stride) {
  return Linear(ctx, x, nullptr, n, w, bias, y, x_stride, y_stride);
}

absl::Status Linear(DeviceContext& ctx, const float* x, const uint16_t* x_bf16, int64_t n,
                    const DeviceMatrix& w, const float* bias, float* y, int64_t x_stride,
                    int64_t y_stride) {
  if (n == 0) return absl::OkStatus();
  if (x_stride == 0) x_stride = w.cols;
  if (y_stride == 0) y_stride = w.rows;
  const bool reads_bf16 = x_bf16 != nullptr && w.dtype != DType::kF32;
  if (n < 0 || w.data == nullptr || (x == nullptr && !reads_bf16) || y == nullptr ||
      x_stride < w.cols || y_stride < w.rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("Linear: bad arguments (n=", n, ", ", w.rows, "x", w.cols, " weight)"));
  }
  HYLA_ASSIGN_OR_RETURN(const CublasApi* cublas, LoadCublas());
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const int m = static_cast<int>(w.rows);
  const int k = static_cast<int>(w.cols);
  const int nn = static_cast<int>(n);
  if (w.dtype == DType::kF32) {
    HYLA_RETURN_IF_ERROR(CublasStatus(
        cublas->sgemm(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, m, nn, k, &alpha,
                      static_cast<const float*>(w.data), k, x, static_cast<int>(x_stride), &beta, y,
                      static_cast<int>(y_stride)),
        absl::StrCat("cublasSgemm ", w.rows, "x", w.cols, " by ", n, " rows")));
  } else {
    // Round the activations to bf16 in scratch (dense) unless the producer did, then
    // bf16 × bf16 → fp32.
    const size_t mark = ctx.scratch().Mark();
    const uint16_t* xb = x_bf16;
    if (xb == nullptr) {
      HYLA_ASSIGN_OR_RETURN(uint16_t * converted,
                            ctx.scratch().AllocArray<uint16_t>(n * w.cols, "bf16 GEMM input"));
      xb = converted;
      if (x_stride == w.cols) {
        HYLA_KERNEL_RETURN_IF_ERROR(
            kernels::ConvertF32ToBf16(x, n * w.cols, converted, ctx.kernel_stream()),
            "ConvertF32ToBf16");
      } else {
        for (int64_t r = 0; r < n; ++r) {
          HYLA_KERNEL_RETURN_IF_ERROR(
              kernels::ConvertF32ToBf16(x + r * x_stride, w.cols, converted + r * w.cols,
                                        ctx.kernel_stream()),
              "ConvertF32ToBf16");
        }
      }
    }
    if (ctx.skinny_gemm() && n <= 64) {
      // Decode-size batches: the skinny tensor-core GEMM streams the weights with fewer fixed
      // costs than cuBLAS and adds the bias itself; shapes it does not take fall back.
      kernels::SkinnyGemmParams sp;
      sp.m = static_cast<int>(n);
      sp.n = m;
      sp.k = k;
      sp.x = xb;
      sp.x_stride = w.cols;
      sp.w = static_cast<const uint16_t*>(w.data);
      sp.w_stride = w.cols;
      sp.bias = bias;
      sp.y = y;
      sp.y_stride = y_stride;
      const int rc = kernels::SkinnyGemmBf16(sp, ctx.kernel_stream());
      if (rc == 0) {
        ctx.scratch().RewindTo(mark);
        return absl::OkStatus();
      }
      if (rc != static_cast<int>(cudaErrorInvalidValue)) {
        ctx.scratch().RewindTo(mark);
        return KernelStatus(
            rc, absl::StrCat("SkinnyGemmBf16 ", w.rows, "x", w.cols, " by ", n, " rows"));
      }
      (void)cudaGetLastError();  // not taken: cuBLAS below
    }
    absl::Status st;
    if (GemmTuner* tuner = ctx.gemm_tuner(); tuner != nullptr) {
      // The shape's cuBLASLt plan (tuned by timing at its first eager call).
      Bf16GemmArgs g;
      g.out = w.rows;
      g.rows = n;
      g.in = w.cols;
      g.w = w.data;
      g.x = xb;
      g.y = y;
      g.y_stride = y_stride;
      st = tuner->Run(g);
    } else {
      st = CublasStatus(
          cublas->gemm_ex(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, m, nn, k, &alpha, w.data,
                          CUDA_R_16BF, k, xb, CUDA_R_16BF, k, &beta, y, CUDA_R_32F,
                          static_cast<int>(y_stride), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          absl::StrCat("cublasGemmEx bf16 ", w.rows, "x", w.cols, " by ", n, " rows"));
    }
    // The conversion buffer is dead once the GEMM is enqueued (stream order protects reuse).
    ctx.scratch().RewindTo(mark);
    HYLA_RETURN_IF_ERROR(st);
  }
  if (bias != nullptr) {
    HYLA_KERNEL_RETURN_IF_ERROR(
        kernels::AddBiasF32(y, y_stride, bias, n, w.rows, ctx.kernel_stream()), "AddBiasF32");
  }
  return absl::OkStatus();
}

}  // namespace hyla::cuda
