#include "runtime/cpu/cpu_layer.h"

namespace hyla::cpu {

absl::StatusOr<std::unique_ptr<CpuLayer>> CreateNatslLayer(const CpuLayerArgs& args) {
  return absl::UnimplementedError("natsl layer is not implemented yet");
}

}  // namespace hyla::cpu
