#include "service/cpu_quota.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace hyla::service {
namespace {

std::optional<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(ss.str()));
}

std::optional<CpuQuota> Quota(int64_t quota, int64_t period, std::string source) {
  if (quota <= 0 || period <= 0) return std::nullopt;
  return CpuQuota{static_cast<double>(quota) / static_cast<double>(period), std::move(source)};
}

}  // namespace

std::optional<CpuQuota> ReadCgroupCpuQuota(const std::string& cgroup_root) {
  // cgroup v2: "max 100000" (no quota) or "250000 100000".
  const std::string v2 = cgroup_root + "/cpu.max";
  if (std::optional<std::string> text = ReadSmallFile(v2)) {
    std::vector<std::string> parts = absl::StrSplit(*text, ' ', absl::SkipEmpty());
    int64_t quota = 0, period = 0;
    if (parts.size() == 2 && parts[0] != "max" && absl::SimpleAtoi(parts[0], &quota) &&
        absl::SimpleAtoi(parts[1], &period)) {
      return Quota(quota, period, absl::StrCat("cgroup v2 ", v2));
    }
    return std::nullopt;
  }
  // cgroup v1: the cpu controller's own mount.
  for (const char* dir : {"/cpu", "/cpu,cpuacct", "/cpuacct,cpu", ""}) {
    const std::string q = cgroup_root + dir + "/cpu.cfs_quota_us";
    const std::string p = cgroup_root + dir + "/cpu.cfs_period_us";
    std::optional<std::string> qt = ReadSmallFile(q);
    std::optional<std::string> pt = ReadSmallFile(p);
    if (!qt.has_value() || !pt.has_value()) continue;
    int64_t quota = 0, period = 0;
    if (!absl::SimpleAtoi(*qt, &quota) || !absl::SimpleAtoi(*pt, &period)) return std::nullopt;
    return Quota(quota, period, absl::StrCat("cgroup v1 ", q));  // quota -1: none
  }
  return std::nullopt;
}

CpuCount DetectCpuCount(int hardware_threads, const std::string& cgroup_root) {
  const int hw = std::max(1, hardware_threads);
  if (std::optional<CpuQuota> q = ReadCgroupCpuQuota(cgroup_root)) {
    const double rounded = std::ceil(q->cpus - 1e-9);
    const int cpus = static_cast<int>(std::clamp<double>(rounded, 1.0, hw));
    return {cpus, absl::StrCat(q->source, " quota ", q->cpus, " CPUs",
                               rounded > hw ? absl::StrCat(", capped at ", hw, " hardware threads")
                                            : std::string())};
  }
  return {hw, absl::StrCat(hw, " hardware threads (no cgroup CPU quota)")};
}

}  // namespace hyla::service
