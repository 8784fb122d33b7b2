#include "runtime/cuda/cublas_api.h"

#include <dlfcn.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace hyla::cuda {
namespace {

template <typename F>
bool Bind(void* lib, const char* name, F* fn, std::string* missing) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  if (*fn == nullptr) absl::StrAppend(missing, missing->empty() ? "" : ", ", name);
  return *fn != nullptr;
}

absl::StatusOr<CublasApi> Load() {
  void* lib = nullptr;
  std::string errors;
  for (const char* name : {"libcublas.so.13", "libcublas.so"}) {
    lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib != nullptr) break;
    const char* e = dlerror();
    absl::StrAppend(&errors, errors.empty() ? "" : "; ", e != nullptr ? e : name);
  }
  if (lib == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load cuBLAS (", errors,
                     "): install the CUDA 13 cuBLAS library or add it to LD_LIBRARY_PATH"));
  }
  CublasApi api;
  std::string missing;
  Bind(lib, "cublasCreate_v2", &api.create, &missing);
  Bind(lib, "cublasDestroy_v2", &api.destroy, &missing);
  Bind(lib, "cublasSetStream_v2", &api.set_stream, &missing);
  Bind(lib, "cublasSetMathMode", &api.set_math_mode, &missing);
  Bind(lib, "cublasSetWorkspace_v2", &api.set_workspace, &missing);
  Bind(lib, "cublasGetStatusString", &api.get_status_string, &missing);
  Bind(lib, "cublasSgemm_v2", &api.sgemm, &missing);
  Bind(lib, "cublasGemmEx", &api.gemm_ex, &missing);
  if (!missing.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the loaded cuBLAS lacks ", missing, " (CUDA 13 cuBLAS expected)"));
  }
  return api;  // the library stays loaded for the process's lifetime
}

absl::StatusOr<CublasLtApi> LoadLt() {
  void* lib = nullptr;
  std::string errors;
  for (const char* name : {"libcublasLt.so.13", "libcublasLt.so"}) {
    lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib != nullptr) break;
    const char* e = dlerror();
    absl::StrAppend(&errors, errors.empty() ? "" : "; ", e != nullptr ? e : name);
  }
  if (lib == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("cannot load cuBLASLt (", errors, ")"));
  }
  CublasLtApi api;
  std::string missing;
  Bind(lib, "cublasLtCreate", &api.create, &missing);
  Bind(lib, "cublasLtDestroy", &api.destroy, &missing);
  Bind(lib, "cublasLtMatmulDescCreate", &api.matmul_desc_create, &missing);
  Bind(lib, "cublasLtMatmulDescDestroy", &api.matmul_desc_destroy, &missing);
  Bind(lib, "cublasLtMatmulDescSetAttribute", &api.matmul_desc_set_attribute, &missing);
  Bind(lib, "cublasLtMatrixLayoutCreate", &api.matrix_layout_create, &missing);
  Bind(lib, "cublasLtMatrixLayoutDestroy", &api.matrix_layout_destroy, &missing);
  Bind(lib, "cublasLtMatmulPreferenceCreate", &api.preference_create, &missing);
  Bind(lib, "cublasLtMatmulPreferenceDestroy", &api.preference_destroy, &missing);
  Bind(lib, "cublasLtMatmulPreferenceSetAttribute", &api.preference_set_attribute, &missing);
  Bind(lib, "cublasLtMatmulAlgoGetHeuristic", &api.algo_get_heuristic, &missing);
  Bind(lib, "cublasLtMatmulAlgoCheck", &api.algo_check, &missing);
  Bind(lib, "cublasLtMatmulAlgoConfigSetAttribute", &api.algo_config_set_attribute, &missing);
  Bind(lib, "cublasLtMatmulAlgoConfigGetAttribute", &api.algo_config_get_attribute, &missing);
  Bind(lib, "cublasLtMatmul", &api.matmul, &missing);
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("the loaded cuBLASLt lacks ", missing));
  }
  return api;  // the library stays loaded for the process's lifetime
}

}  // namespace

absl::StatusOr<const CublasLtApi*> LoadCublasLt() {
  static const absl::StatusOr<CublasLtApi>* const api = new absl::StatusOr<CublasLtApi>(LoadLt());
  if (!api->ok()) return api->status();
  return &api->value();
}

absl::StatusOr<const CublasApi*> LoadCublas() {
  static const absl::StatusOr<CublasApi>* const api = new absl::StatusOr<CublasApi>(Load());
  if (!api->ok()) return api->status();
  return &api->value();
}

}  // namespace hyla::cuda
