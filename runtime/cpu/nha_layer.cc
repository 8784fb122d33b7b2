#include "runtime/cpu/cpu_layer.h"

namespace hyla::cpu {

absl::StatusOr<std::unique_ptr<CpuLayer>> CreateNhaLayer(const CpuLayerArgs& args) {
  return absl::UnimplementedError("nha layer is not implemented yet");
}

}  // namespace hyla::cpu
