#include "runtime/cuda/cuda_util.h"

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "runtime/cuda/cublas_api.h"

namespace hyla::cuda {

absl::Status CudaStatus(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": CUDA error ", static_cast<int>(err), " (",
                                       cudaGetErrorName(err), ": ", cudaGetErrorString(err), ")");
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::Status CublasStatus(cublasStatus_t err, absl::string_view what) {
  if (err == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  absl::StatusOr<const CublasApi*> api = LoadCublas();
  const std::string msg =
      absl::StrCat(what, ": cuBLAS error ", static_cast<int>(err), " (",
                   api.ok() ? (*api)->get_status_string(err) : "cuBLAS not loaded", ")");
  if (err == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::Status KernelStatus(int err, absl::string_view what) {
  if (err == 0) return absl::OkStatus();
  if (err == static_cast<int>(cudaErrorInvalidValue)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": kernel launcher rejected its arguments (", kernels::KernelErrorString(err), ")"));
  }
  return CudaStatus(static_cast<cudaError_t>(err), what);
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes, absl::string_view what) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free allocation error
    return CudaStatus(err, absl::StrCat("cudaMalloc of ", bytes, " bytes for ", what));
  }
  b.ptr_ = p;
  b.bytes_ = bytes;
  HYLA_CUDA_RETURN_IF_ERROR(cudaMemset(p, 0, bytes), absl::StrCat("zero-fill of ", what));
  return b;
}

void DeviceBuffer::Reset() {
  if (ptr_ != nullptr) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

absl::StatusOr<PinnedBuffer> PinnedBuffer::Allocate(size_t bytes, absl::string_view what) {
  PinnedBuffer b;
  if (bytes == 0) return b;
  void* p = nullptr;
  const cudaError_t err = cudaMallocHost(&p, bytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return CudaStatus(err, absl::StrCat("cudaMallocHost of ", bytes, " bytes for ", what));
  }
  b.ptr_ = p;
  b.bytes_ = bytes;
  return b;
}

void PinnedBuffer::Reset() {
  if (ptr_ != nullptr) cudaFreeHost(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

absl::StatusOr<CudaStream> CudaStream::Create() {
  CudaStream s;
  HYLA_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s.stream_, cudaStreamNonBlocking),
                            "cudaStreamCreate");
  return s;
}

void CudaStream::Reset() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  stream_ = nullptr;
}

absl::StatusOr<CudaEvent> CudaEvent::Create() {
  CudaEvent e;
  HYLA_CUDA_RETURN_IF_ERROR(cudaEventCreate(&e.event_), "cudaEventCreate");
  return e;
}

void CudaEvent::Reset() {
  if (event_ != nullptr) cudaEventDestroy(event_);
  event_ = nullptr;
}

absl::StatusOr<CublasHandle> CublasHandle::Create(cudaStream_t stream) {
  absl::StatusOr<const CublasApi*> api = LoadCublas();
  if (!api.ok()) return api.status();
  CublasHandle h;
  absl::Status st = CublasStatus((*api)->create(&h.handle_), "cublasCreate");
  if (!st.ok()) return st;
  st = CublasStatus((*api)->set_stream(h.handle_, stream), "cublasSetStream");
  if (!st.ok()) return st;
  // Default math: fp32 GEMMs stay fp32 (TF32 only with CUBLAS_TF32_TENSOR_OP_MATH, which the
  // exactness path must not use); bf16 GEMMs use tensor cores with fp32 accumulation.
  st = CublasStatus((*api)->set_math_mode(h.handle_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  if (!st.ok()) return st;
  return h;
}

void CublasHandle::Reset() {
  if (handle_ != nullptr) {
    absl::StatusOr<const CublasApi*> api = LoadCublas();
    if (api.ok()) (*api)->destroy(handle_);
  }
  handle_ = nullptr;
}

absl::StatusOr<CudaGraphExec> CudaGraphExec::EndCapture(cudaStream_t stream) {
  cudaGraph_t graph = nullptr;
  HYLA_CUDA_RETURN_IF_ERROR(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  CudaGraphExec e;
  const cudaError_t err = cudaGraphInstantiate(&e.exec_, graph, 0);
  cudaGraphDestroy(graph);
  HYLA_CUDA_RETURN_IF_ERROR(err, "cudaGraphInstantiate");
  return e;
}

absl::Status CudaGraphExec::Launch(cudaStream_t stream) const {
  return CudaStatus(cudaGraphLaunch(exec_, stream), "cudaGraphLaunch");
}

void CudaGraphExec::Reset() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  exec_ = nullptr;
}

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace hyla::cuda
