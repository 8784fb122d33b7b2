// cuBLAS loaded at run time (dlopen) instead of linked.
//
// Why: libcublasLt carries a large static TLS block. A library linked into the executable puts
// its TLS into every thread's stack, so threads created with small stacks fail (EINVAL) — which
// broke the Prometheus exposer (civetweb starts its workers with ~100 KiB stacks) in every
// hyla-server linked with cuBLAS, GPU or not. A dlopen'ed library's TLS is allocated per thread
// on demand instead, and a CPU-only server never loads cuBLAS at all.
//
// cuBLASLt (libcublasLt.so.13, the library cuBLAS itself sits on) is loaded the same way for the
// tuned bf16 GEMMs (runtime/cuda/gemm_tuner.h): LoadCublasLt binds the few cublasLt* entry points
// they use.
//
// Thread-safety: LoadCublas / LoadCublasLt may be called from any thread; the tables are
// immutable once loaded.
#ifndef HYLA_RUNTIME_CUDA_CUBLAS_API_H_
#define HYLA_RUNTIME_CUDA_CUBLAS_API_H_

#include <cublasLt.h>
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

// The cuBLASLt entry points of the GEMM tuner.
struct CublasLtApi {
  cublasStatus_t (*create)(cublasLtHandle_t*) = nullptr;
  cublasStatus_t (*destroy)(cublasLtHandle_t) = nullptr;
  cublasStatus_t (*matmul_desc_create)(cublasLtMatmulDesc_t*, cublasComputeType_t,
                                       cudaDataType_t) = nullptr;
  cublasStatus_t (*matmul_desc_destroy)(cublasLtMatmulDesc_t) = nullptr;
  cublasStatus_t (*matmul_desc_set_attribute)(cublasLtMatmulDesc_t, cublasLtMatmulDescAttributes_t,
                                              const void*, size_t) = nullptr;
  cublasStatus_t (*matrix_layout_create)(cublasLtMatrixLayout_t*, cudaDataType, uint64_t, uint64_t,
                                         int64_t) = nullptr;
  cublasStatus_t (*matrix_layout_destroy)(cublasLtMatrixLayout_t) = nullptr;
  cublasStatus_t (*preference_create)(cublasLtMatmulPreference_t*) = nullptr;
  cublasStatus_t (*preference_destroy)(cublasLtMatmulPreference_t) = nullptr;
  cublasStatus_t (*preference_set_attribute)(cublasLtMatmulPreference_t,
                                             cublasLtMatmulPreferenceAttributes_t, const void*,
                                             size_t) = nullptr;
  cublasStatus_t (*algo_get_heuristic)(cublasLtHandle_t, cublasLtMatmulDesc_t,
                                       cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                       cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                       cublasLtMatmulPreference_t, int,
                                       cublasLtMatmulHeuristicResult_t[], int*) = nullptr;
  cublasStatus_t (*algo_check)(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                               cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                               cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t*,
                               cublasLtMatmulHeuristicResult_t*) = nullptr;
  cublasStatus_t (*algo_config_set_attribute)(cublasLtMatmulAlgo_t*,
                                              cublasLtMatmulAlgoConfigAttributes_t, const void*,
                                              size_t) = nullptr;
  cublasStatus_t (*algo_config_get_attribute)(const cublasLtMatmulAlgo_t*,
                                              cublasLtMatmulAlgoConfigAttributes_t, void*, size_t,
                                              size_t*) = nullptr;
  cublasStatus_t (*matmul)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void*, const void*,
                           cublasLtMatrixLayout_t, const void*, cublasLtMatrixLayout_t, const void*,
                           const void*, cublasLtMatrixLayout_t, void*, cublasLtMatrixLayout_t,
                           const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t) = nullptr;
};

// Loads libcublasLt.so.13 (or libcublasLt.so) once; FailedPrecondition when it cannot be loaded
// or lacks an entry point (the caller then keeps to cuBLAS).
absl::StatusOr<const CublasLtApi*> LoadCublasLt();

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_CUBLAS_API_H_
