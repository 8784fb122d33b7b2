// KernelErrorString (kernels/ops.h): names the cudaError_t codes the launchers return.
#include <cuda_runtime.h>

#include "kernels/ops.h"

namespace hyla::kernels {

const char* KernelErrorString(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

}  // namespace hyla::kernels
