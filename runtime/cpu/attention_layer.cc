#include "runtime/cpu/cpu_layer.h"

namespace hyla::cpu {

absl::StatusOr<std::unique_ptr<CpuLayer>> CreateAttentionLayer(const CpuLayerArgs& args) {
  return absl::UnimplementedError("attention layer is not implemented yet");
}

}  // namespace hyla::cpu
