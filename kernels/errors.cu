// KernelErrorString (kernels/ops.h): names the cudaError_t codes the launchers return; and the
// process-wide switch of programmatic dependent launch (kernels/common.cuh LaunchPdl).
#include <cuda_runtime.h>

#include <atomic>

#include "kernels/ops.h"

namespace hyla::kernels {

const char* KernelErrorString(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

namespace {
std::atomic<bool> g_programmatic_launch{true};
}  // namespace

void SetProgrammaticDependentLaunch(bool enabled) { g_programmatic_launch.store(enabled); }
bool ProgrammaticDependentLaunch() { return g_programmatic_launch.load(std::memory_order_relaxed); }

}  // namespace hyla::kernels
