#include "tools/default_model.h"

#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#ifndef HYLA_SOURCE_DIR
#error "HYLA_SOURCE_DIR must be defined (tools/CMakeLists.txt)"
#endif

namespace hyla::tools {
namespace {

namespace fs = std::filesystem;

bool HoldsModel(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / "config.json", ec);
}

}  // namespace

absl::StatusOr<std::string> FindDefaultModelDir() {
  if (const char* env = std::getenv("HYLA_DEFAULT_MODEL"); env != nullptr && *env != '\0') {
    if (HoldsModel(env)) return std::string(env);
    return absl::NotFoundError(absl::StrCat("HYLA_DEFAULT_MODEL=", env,
                                            " does not name a model directory (no config.json)"));
  }
  std::vector<std::string> tried;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path installed = exe.parent_path() / ".." / "share" / "hyla" / "models" / "default";
    if (HoldsModel(installed)) return fs::weakly_canonical(installed, ec).string();
    tried.push_back(installed.string());
  }
  const fs::path source = fs::path(HYLA_SOURCE_DIR) / "models" / "default";
  if (HoldsModel(source)) return source.string();
  tried.push_back(source.string());
  return absl::NotFoundError(
      absl::StrCat("no default model: HYLA_DEFAULT_MODEL is not set and none of ",
                   absl::StrJoin(tried, ", "), " holds a config.json"));
}

}  // namespace hyla::tools
