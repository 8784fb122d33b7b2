// DeviceContext: what one worker needs to run kernels on one GPU — the device, a non-blocking
// stream, a cuBLAS handle on that stream (with a fixed 32 MiB workspace, shared with the
// cuBLASLt GEMM tuner), the GEMM tuner (runtime/cuda/gemm_tuner.h; used by Linear when
// gemm_tune() is on) and a scratch arena of device memory for the activations of one step.
// Everything is allocated at creation; the request path never calls cudaMalloc: a step takes its
// scratch from the arena (ScratchArena::Alloc) and the backend rewinds the arena when the step is
// done.
//
// Thread-safety: owned and used by one worker thread.
#ifndef HYLA_RUNTIME_CUDA_DEVICE_CONTEXT_H_
#define HYLA_RUNTIME_CUDA_DEVICE_CONTEXT_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/cuda/cuda_util.h"
#include "runtime/cuda/gemm_tuner.h"

namespace hyla::cuda {

// A bump allocator over one device buffer. Allocations are 256-byte aligned and live until the
// next Rewind(); exhausting the arena is ResourceExhausted naming the request, never a cudaMalloc.
class ScratchArena {
 public:
  ScratchArena() = default;
  explicit ScratchArena(DeviceBuffer buffer) : buffer_(std::move(buffer)) {}

  absl::StatusOr<void*> Alloc(size_t bytes, absl::string_view what);
  template <typename T>
  absl::StatusOr<T*> AllocArray(int64_t count, absl::string_view what) {
    absl::StatusOr<void*> p = Alloc(static_cast<size_t>(count) * sizeof(T), what);
    if (!p.ok()) return p.status();
    return static_cast<T*>(*p);
  }
  // Frees every allocation (the memory is reused by the next step).
  void Rewind() { used_ = 0; }
  // A mark to rewind to (allocations after it are freed by RewindTo).
  size_t Mark() const { return used_; }
  void RewindTo(size_t mark) { used_ = mark < used_ ? mark : used_; }

  size_t capacity() const { return buffer_.bytes(); }
  size_t used() const { return used_; }
  size_t high_water() const { return high_water_; }

 private:
  DeviceBuffer buffer_;
  size_t used_ = 0;
  size_t high_water_ = 0;
};

class DeviceContext {
 public:
  // Selects `device`, creates the stream and cuBLAS handle and allocates `scratch_bytes`.
  static absl::StatusOr<std::unique_ptr<DeviceContext>> Create(int device, size_t scratch_bytes);

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_.get(); }
  // kernels/ops.h launchers take the stream as void*.
  void* kernel_stream() const { return static_cast<void*>(stream_.get()); }
  cublasHandle_t cublas() const { return cublas_.get(); }
  ScratchArena& scratch() { return scratch_; }
  // Number of streaming multiprocessors (for launch heuristics).
  int sm_count() const { return sm_count_; }
  // Whether Linear may use the skinny tensor-core GEMM (kernels SkinnyGemmBf16) for bf16 weights
  // and at most 64 rows instead of cuBLAS (default false: CudaBackendOptions::skinny_gemm).
  bool skinny_gemm() const { return skinny_gemm_; }
  void set_skinny_gemm(bool on) { skinny_gemm_ = on; }
  // Whether Linear runs bf16 GEMMs through the GEMM tuner (cuBLASLt algorithm chosen per shape by
  // timing) instead of cublasGemmEx's heuristic. Default false here; CudaBackendOptions::gemm_tune
  // turns it on. gemm_tuner() is nullptr when off or when cuBLASLt cannot be loaded.
  bool gemm_tune() const { return gemm_tune_; }
  void set_gemm_tune(bool on) { gemm_tune_ = on; }
  GemmTuner* gemm_tuner() { return gemm_tune_ ? gemm_tuner_.get() : nullptr; }

  // Asynchronous copies on the stream. Host memory may be pageable: the source is staged before
  // the call returns, so it may be reused at once.
  absl::Status CopyToDevice(void* dst, const void* src, size_t bytes);
  absl::Status CopyToHost(void* dst, const void* src, size_t bytes);
  absl::Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes);
  absl::Status Memset(void* dst, int value, size_t bytes);
  // Waits for all work on the stream; surfaces asynchronous kernel errors.
  absl::Status Synchronize();

  // Copies a host vector into fresh scratch memory and returns the device pointer.
  template <typename T>
  absl::StatusOr<T*> Upload(const T* host, int64_t count, absl::string_view what) {
    absl::StatusOr<T*> dst = scratch_.AllocArray<T>(count, what);
    if (!dst.ok()) return dst.status();
    if (count > 0) {
      absl::Status st = CopyToDevice(*dst, host, static_cast<size_t>(count) * sizeof(T));
      if (!st.ok()) return st;
    }
    return *dst;
  }

 private:
  DeviceContext() = default;

  int device_ = 0;
  int sm_count_ = 0;
  bool skinny_gemm_ = false;
  CudaStream stream_;
  CublasHandle cublas_;
  bool gemm_tune_ = false;
  DeviceBuffer cublas_workspace_;  // cuBLAS's workspace (no allocation inside graph capture)
  std::unique_ptr<GemmTuner> gemm_tuner_;  // on cublas_workspace_; nullptr without cuBLASLt
  ScratchArena scratch_;
};

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_DEVICE_CONTEXT_H_
