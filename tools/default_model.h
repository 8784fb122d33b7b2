// Where the embedded default model lives at run time, for programs started without --model
// (`hyla-model generate`, and hyla-server may use the same rule).
//
// Search order (the first directory holding a config.json wins):
//   1. $HYLA_DEFAULT_MODEL, when set (an error if it does not hold a model: an explicit setting
//      is never silently ignored);
//   2. <directory of the running executable>/../share/hyla/models/default (an installed tree);
//   3. <source tree>/models/default, the path baked in at compile time (a build tree).
//
// Thread-safety: reads the environment and the file system; safe to call from any thread.
#ifndef HYLA_TOOLS_DEFAULT_MODEL_H_
#define HYLA_TOOLS_DEFAULT_MODEL_H_

#include <string>

#include "absl/status/statusor.h"

namespace hyla::tools {

// The default model directory, or NotFound listing every place searched.
absl::StatusOr<std::string> FindDefaultModelDir();

}  // namespace hyla::tools

#endif  // HYLA_TOOLS_DEFAULT_MODEL_H_
