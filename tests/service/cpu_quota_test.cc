#include "service/cpu_quota.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace hyla::service {
namespace {

// A fake cgroup mount in a temporary folder.
class FakeCgroup {
 public:
  FakeCgroup() {
    char dir[] = "/tmp/hyla_cgroup_XXXXXX";
    root_ = mkdtemp(dir) != nullptr ? dir : "";
  }
  ~FakeCgroup() {
    for (auto it = files_.rbegin(); it != files_.rend(); ++it) std::remove(it->c_str());
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) rmdir(it->c_str());
    rmdir(root_.c_str());
  }
  void Write(const std::string& rel, const std::string& text) {
    const size_t slash = rel.rfind('/');
    if (slash != std::string::npos) {
      const std::string d = root_ + "/" + rel.substr(0, slash);
      if (mkdir(d.c_str(), 0700) == 0) dirs_.push_back(d);
    }
    std::ofstream(root_ + "/" + rel) << text;
    files_.push_back(root_ + "/" + rel);
  }
  const std::string& root() const { return root_; }

 private:
  std::string root_;
  std::vector<std::string> files_, dirs_;
};

TEST(CpuQuotaTest, CgroupV2Quota) {
  FakeCgroup cg;
  ASSERT_FALSE(cg.root().empty());
  cg.Write("cpu.max", "250000 100000\n");
  auto q = ReadCgroupCpuQuota(cg.root());
  ASSERT_TRUE(q.has_value());
  EXPECT_DOUBLE_EQ(q->cpus, 2.5);
  EXPECT_EQ(q->source, "cgroup v2 " + cg.root() + "/cpu.max");
  // 2.5 CPUs round up to 3 threads; capped by the hardware.
  EXPECT_EQ(DetectCpuCount(16, cg.root()).cpus, 3);
  EXPECT_EQ(DetectCpuCount(2, cg.root()).cpus, 2);
  EXPECT_NE(DetectCpuCount(2, cg.root()).source.find("capped at 2 hardware threads"),
            std::string::npos);
}

TEST(CpuQuotaTest, CgroupV2WholeAndSmallQuotas) {
  FakeCgroup cg;
  cg.Write("cpu.max", "800000 100000");
  EXPECT_EQ(DetectCpuCount(64, cg.root()).cpus, 8);  // exactly 8: not rounded up to 9
  FakeCgroup small;
  small.Write("cpu.max", "50000 100000");
  EXPECT_EQ(DetectCpuCount(64, small.root()).cpus, 1);  // half a CPU: one thread
}

TEST(CpuQuotaTest, CgroupV2NoQuotaMeansHardwareThreads) {
  FakeCgroup cg;
  cg.Write("cpu.max", "max 100000\n");
  EXPECT_FALSE(ReadCgroupCpuQuota(cg.root()).has_value());
  const CpuCount c = DetectCpuCount(12, cg.root());
  EXPECT_EQ(c.cpus, 12);
  EXPECT_EQ(c.source, "12 hardware threads (no cgroup CPU quota)");
}

TEST(CpuQuotaTest, CgroupV1Quota) {
  FakeCgroup cg;
  cg.Write("cpu,cpuacct/cpu.cfs_quota_us", "150000\n");
  cg.Write("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  auto q = ReadCgroupCpuQuota(cg.root());
  ASSERT_TRUE(q.has_value());
  EXPECT_DOUBLE_EQ(q->cpus, 1.5);
  EXPECT_EQ(DetectCpuCount(8, cg.root()).cpus, 2);

  FakeCgroup unlimited;
  unlimited.Write("cpu/cpu.cfs_quota_us", "-1\n");
  unlimited.Write("cpu/cpu.cfs_period_us", "100000\n");
  EXPECT_FALSE(ReadCgroupCpuQuota(unlimited.root()).has_value());
  EXPECT_EQ(DetectCpuCount(8, unlimited.root()).cpus, 8);
}

TEST(CpuQuotaTest, MissingOrMalformedFilesMeanNoQuota) {
  FakeCgroup empty;
  EXPECT_FALSE(ReadCgroupCpuQuota(empty.root()).has_value());
  EXPECT_EQ(DetectCpuCount(4, empty.root()).cpus, 4);
  EXPECT_EQ(DetectCpuCount(0, empty.root()).cpus, 1);  // unknown hardware: one thread
  FakeCgroup bad;
  bad.Write("cpu.max", "lots 100000");
  EXPECT_FALSE(ReadCgroupCpuQuota(bad.root()).has_value());
  EXPECT_FALSE(ReadCgroupCpuQuota("/nonexistent/cgroup").has_value());
}

}  // namespace
}  // namespace hyla::service
