// cuBLAS loaded at run time (dlopen) instead of linked.
//
// Why: libcublasLt carries a large static TLS block. A library linked into the executable puts
// its TLS into every thread's stack, so threads created with small stacks fail (EINVAL) — which
// broke the Prometheus exposer (civetweb starts its workers with ~100 KiB stacks) in every
// hyla-server linked with cuBLAS, GPU or not. A dlopen'ed library's TLS is allocated per thread
// on demand instead, and a CPU-only server never loads cuBLAS at all.
//
// Thread-safety: LoadCublas may be called from any thread; the table is immutable once loaded.
#ifndef HYLA_RUNTIME_CUDA_CUBLAS_API_H_
#define HYLA_RUNTIME_CUDA_CUBLAS_API_H_

#include <cublas_v2.h>

#include "absl/status/statusor.h"

namespace hyla::cuda {

// The cuBLAS entry points the backend uses.
struct CublasApi {
  cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
  cublasStatus_t (*destroy)(cublasHandle_t) = nullptr;
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
  cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t) = nullptr;
  cublasStatus_t (*set_workspace)(cublasHandle_t, void*, size_t) = nullptr;
  const char* (*get_status_string)(cublasStatus_t) = nullptr;
  cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                          const float*, const float*, int, const float*, int, const float*, float*,
                          int) = nullptr;
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t) = nullptr;
};

// Loads libcublas.so.13 (or libcublas.so) once; FailedPrecondition naming the library and the
// dlerror when it cannot be loaded.
absl::StatusOr<const CublasApi*> LoadCublas();

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_CUBLAS_API_H_
