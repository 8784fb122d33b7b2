#include "absl/status/status.h"
#include "runtime/model/config.h"

namespace hyla {

absl::StatusOr<ModelConfig> ParseNhaConfig(const JsonValue& root, absl::string_view path) {
  return absl::UnimplementedError("nha config parsing is not implemented yet");
}

}  // namespace hyla
