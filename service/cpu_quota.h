// The CPUs a container may use: the CFS quota of its cgroup (v2 `cpu.max`, v1
// `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up, capped by the hardware threads; the
// hardware threads when there is no quota. hyla-server sizes its CPU thread pools with it
// (--threads defaults to CpuCount / --workers).
//
// Thread-safety: pure functions of the files they read.
#ifndef HYLA_SERVICE_CPU_QUOTA_H_
#define HYLA_SERVICE_CPU_QUOTA_H_

#include <optional>
#include <string>

namespace hyla::service {

struct CpuQuota {
  double cpus = 0;     // quota / period, e.g. 2.5
  std::string source;  // the file(s) it came from, for the start-up log
};

// The quota under the cgroup mount `cgroup_root` (normally /sys/fs/cgroup): v2 `cpu.max`
// ("QUOTA PERIOD" or "max PERIOD"), then v1 `cpu/` or `cpu,cpuacct/` (or the root itself)
// `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us`. nullopt when there is no quota or the
// files are missing or malformed.
std::optional<CpuQuota> ReadCgroupCpuQuota(const std::string& cgroup_root = "/sys/fs/cgroup");

struct CpuCount {
  int cpus = 1;
  std::string source;  // "cgroup v2 /sys/fs/cgroup/cpu.max quota 2.5" or "hardware threads"
};

// ceil(quota) capped by `hardware_threads` when there is a quota, else `hardware_threads` (at
// least 1).
CpuCount DetectCpuCount(int hardware_threads, const std::string& cgroup_root = "/sys/fs/cgroup");

}  // namespace hyla::service

#endif  // HYLA_SERVICE_CPU_QUOTA_H_
