#include "absl/status/status.h"
#include "runtime/model/config.h"

namespace hyla {

absl::StatusOr<ModelConfig> ParseGdnConfig(const JsonValue& root, absl::string_view path) {
  return absl::UnimplementedError("gdn config parsing is not implemented yet");
}

}  // namespace hyla
