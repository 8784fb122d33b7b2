#include "absl/status/status.h"
#include "runtime/model/config.h"

namespace hyla {

absl::StatusOr<ModelConfig> ParseNatslConfig(const JsonValue& root, absl::string_view path) {
  return absl::UnimplementedError("natsl config parsing is not implemented yet");
}

}  // namespace hyla
