#include "runtime/cuda/device_context.h"

#include "absl/strings/str_cat.h"
#include "runtime/cuda/cublas_api.h"

namespace hyla::cuda {

absl::StatusOr<void*> ScratchArena::Alloc(size_t bytes, absl::string_view what) {
  constexpr size_t kAlign = 256;
  const size_t begin = (used_ + kAlign - 1) / kAlign * kAlign;
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  if (begin + rounded > buffer_.bytes()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("CUDA step scratch exhausted: ", what, " needs ", bytes, " bytes, ",
                     buffer_.bytes() - std::min(begin, buffer_.bytes()), " of ", buffer_.bytes(),
                     " left (raise max_step_tokens / the scratch margin, or lower the token "
                     "budget per step)"));
  }
  used_ = begin + rounded;
  high_water_ = std::max(high_water_, used_);
  return static_cast<uint8_t*>(buffer_.get()) + begin;
}

absl::StatusOr<std::unique_ptr<DeviceContext>> DeviceContext::Create(int device,
                                                                     size_t scratch_bytes) {
  const int count = CudaDeviceCount();
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " is not available (", count, " devices visible)"));
  }
  HYLA_CUDA_RETURN_IF_ERROR(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")"));
  std::unique_ptr<DeviceContext> ctx(new DeviceContext());
  ctx->device_ = device;
  HYLA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&ctx->sm_count_, cudaDevAttrMultiProcessorCount, device),
      "cudaDeviceGetAttribute(SM count)");
  absl::StatusOr<CudaStream> stream = CudaStream::Create();
  if (!stream.ok()) return stream.status();
  ctx->stream_ = std::move(*stream);
  absl::StatusOr<CublasHandle> cublas = CublasHandle::Create(ctx->stream_.get());
  if (!cublas.ok()) return cublas.status();
  ctx->cublas_ = std::move(*cublas);
  // A fixed cuBLAS workspace: GEMMs captured into CUDA graphs must not allocate.
  constexpr size_t kCublasWorkspace = size_t{32} << 20;
  absl::StatusOr<DeviceBuffer> ws = DeviceBuffer::Allocate(kCublasWorkspace, "cuBLAS workspace");
  if (!ws.ok()) return ws.status();
  ctx->cublas_workspace_ = std::move(*ws);
  {
    absl::StatusOr<const CublasApi*> api = LoadCublas();
    if (!api.ok()) return api.status();
    absl::Status st = CublasStatus(
        (*api)->set_workspace(ctx->cublas_.get(), ctx->cublas_workspace_.get(), kCublasWorkspace),
        "cublasSetWorkspace");
    if (!st.ok()) return st;
  }
  // The GEMM tuner shares the workspace (same stream). Without cuBLASLt, Linear keeps cuBLAS.
  absl::StatusOr<std::unique_ptr<GemmTuner>> tuner =
      GemmTuner::Create(device, ctx->stream_.get(), ctx->cublas_.get(),
                        ctx->cublas_workspace_.get(), kCublasWorkspace);
  if (tuner.ok()) ctx->gemm_tuner_ = std::move(*tuner);
  absl::StatusOr<DeviceBuffer> scratch = DeviceBuffer::Allocate(scratch_bytes, "step scratch");
  if (!scratch.ok()) return scratch.status();
  ctx->scratch_ = ScratchArena(std::move(*scratch));
  return ctx;
}

absl::Status DeviceContext::CopyToDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()),
                    "host-to-device copy");
}

absl::Status DeviceContext::CopyToHost(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()),
                    "device-to-host copy");
}

absl::Status DeviceContext::CopyDeviceToDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()),
                    "device-to-device copy");
}

absl::Status DeviceContext::Memset(void* dst, int value, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemsetAsync(dst, value, bytes, stream()), "cudaMemsetAsync");
}

absl::Status DeviceContext::Synchronize() {
  return CudaStatus(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
}

}  // namespace hyla::cuda
