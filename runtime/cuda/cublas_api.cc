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

}  // namespace

absl::StatusOr<const CublasApi*> LoadCublas() {
  static const absl::StatusOr<CublasApi>* const api = new absl::StatusOr<CublasApi>(Load());
  if (!api->ok()) return api->status();
  return &api->value();
}

}  // namespace hyla::cuda
