// STUB: replaced by the CUDA attention layer (owner: helper). Until then the CUDA backend rejects
// models with this layer kind by name.
#include "runtime/cuda/cuda_layer.h"

namespace hyla::cuda {

absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaAttentionLayer(const CudaLayerArgs& args) {
  (void)args;
  return absl::UnimplementedError("CUDA backend: the attention layer is not implemented yet");
}

}  // namespace hyla::cuda
