#include "runtime/cpu/cpu_layer.h"

namespace hyla::cpu {

absl::StatusOr<std::unique_ptr<CpuLayer>> CreateGdnLayer(const CpuLayerArgs& args) {
  return absl::UnimplementedError("gdn layer is not implemented yet");
}

}  // namespace hyla::cpu
