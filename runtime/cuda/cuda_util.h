// Move-only RAII owners of CUDA resources (device memory, pinned host memory, streams, events,
// cuBLAS handles, executable CUDA graphs) and the mapping of CUDA / cuBLAS / kernel launcher
// errors to absl::Status with a message naming the operation.
//
// Every CUDA resource the CUDA backend holds is one of these types, owned by one worker's
// DeviceContext or CudaBackend; nothing is freed by hand.
//
// Thread-safety: the owners are not synchronised; each is used by one worker thread.
#ifndef HYLA_RUNTIME_CUDA_CUDA_UTIL_H_
#define HYLA_RUNTIME_CUDA_CUDA_UTIL_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hyla::cuda {

// OK for cudaSuccess, else Internal (ResourceExhausted for cudaErrorMemoryAllocation) naming
// `what` and the CUDA error.
absl::Status CudaStatus(cudaError_t err, absl::string_view what);
absl::Status CublasStatus(cublasStatus_t err, absl::string_view what);
// The return value of a kernels/ops.h launcher (0 or a cudaError_t as int).
absl::Status KernelStatus(int err, absl::string_view what);

#define HYLA_CUDA_RETURN_IF_ERROR(expr, what)                                       \
  do {                                                                              \
    const ::absl::Status hyla_cuda_status = ::hyla::cuda::CudaStatus((expr), what); \
    if (!hyla_cuda_status.ok()) return hyla_cuda_status;                            \
  } while (0)
#define HYLA_KERNEL_RETURN_IF_ERROR(expr, what)                                       \
  do {                                                                                \
    const ::absl::Status hyla_cuda_status = ::hyla::cuda::KernelStatus((expr), what); \
    if (!hyla_cuda_status.ok()) return hyla_cuda_status;                              \
  } while (0)

// Device memory (cudaMalloc). Empty when default-constructed or moved from.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Allocates `bytes` (0 allowed: an empty buffer) and zero-fills it.
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes, absl::string_view what);
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  void Reset();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (cudaMallocHost), for asynchronous copies.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static absl::StatusOr<PinnedBuffer> Allocate(size_t bytes, absl::string_view what);
  ~PinnedBuffer() { Reset(); }
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  void Reset();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A non-blocking stream.
class CudaStream {
 public:
  CudaStream() = default;
  static absl::StatusOr<CudaStream> Create();
  ~CudaStream() { Reset(); }
  CudaStream(CudaStream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  CudaStream& operator=(CudaStream&& other) noexcept {
    if (this != &other) {
      Reset();
      stream_ = std::exchange(other.stream_, nullptr);
    }
    return *this;
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  cudaStream_t get() const { return stream_; }
  void Reset();

 private:
  cudaStream_t stream_ = nullptr;
};

// An event (timing enabled).
class CudaEvent {
 public:
  CudaEvent() = default;
  static absl::StatusOr<CudaEvent> Create();
  ~CudaEvent() { Reset(); }
  CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& other) noexcept {
    if (this != &other) {
      Reset();
      event_ = std::exchange(other.event_, nullptr);
    }
    return *this;
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  cudaEvent_t get() const { return event_; }
  void Reset();

 private:
  cudaEvent_t event_ = nullptr;
};

// A cuBLAS handle bound to a stream.
class CublasHandle {
 public:
  CublasHandle() = default;
  static absl::StatusOr<CublasHandle> Create(cudaStream_t stream);
  ~CublasHandle() { Reset(); }
  CublasHandle(CublasHandle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  CublasHandle& operator=(CublasHandle&& other) noexcept {
    if (this != &other) {
      Reset();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;

  cublasHandle_t get() const { return handle_; }
  void Reset();

 private:
  cublasHandle_t handle_ = nullptr;
};

// An instantiated CUDA graph (cudaGraphExec_t).
class CudaGraphExec {
 public:
  CudaGraphExec() = default;
  // Ends the capture running on `stream` and instantiates the captured graph.
  static absl::StatusOr<CudaGraphExec> EndCapture(cudaStream_t stream);
  ~CudaGraphExec() { Reset(); }
  CudaGraphExec(CudaGraphExec&& other) noexcept : exec_(std::exchange(other.exec_, nullptr)) {}
  CudaGraphExec& operator=(CudaGraphExec&& other) noexcept {
    if (this != &other) {
      Reset();
      exec_ = std::exchange(other.exec_, nullptr);
    }
    return *this;
  }
  CudaGraphExec(const CudaGraphExec&) = delete;
  CudaGraphExec& operator=(const CudaGraphExec&) = delete;

  bool valid() const { return exec_ != nullptr; }
  absl::Status Launch(cudaStream_t stream) const;
  void Reset();

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Number of CUDA devices usable by this process (0 when there is no driver or device).
int CudaDeviceCount();

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_CUDA_UTIL_H_
