// STUB: replaced by the CUDA gdn layer (owner: helper). Until then the CUDA backend rejects
// models with this layer kind by name.
#include "runtime/cuda/cuda_layer.h"

namespace hyla::cuda {

absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaGdnLayer(const CudaLayerArgs& args) {
  (void)args;
  return absl::UnimplementedError("CUDA backend: the gdn layer is not implemented yet");
}

}  // namespace hyla::cuda
