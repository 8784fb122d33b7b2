// hyla-serving-overhead (bench/hyla_bench_overhead.cc): a short run over its fixed-step backend,
// checked through the --json report against what the setup fixes (the step time the backend
// sleeps, the number of requests and tokens) and against the report's own structure (the
// scheduler thread's cycle split), for the new path and for the old one (--notify inline
// --deadlock-detection on); usage errors exit 2.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/model/json.h"
#include "tests/service/server_process.h"

namespace hyla {
namespace {

using testing::ProgramResult;
using testing::RunProgram;

double Field(const JsonValue& obj, const char* key, const char* sub = nullptr) {
  const JsonValue* v = obj.Find(key);
  EXPECT_NE(v, nullptr) << key;
  if (v != nullptr && sub != nullptr) {
    v = v->Find(sub);
    EXPECT_NE(v, nullptr) << key << "." << sub;
  }
  return v != nullptr && v->is_number() ? v->number_value() : -1;
}

JsonValue RunOverhead(std::vector<std::string> args) {
  char tmpl[] = "/tmp/hyla_serving_overhead_test_XXXXXX";
  const int fd = mkstemp(tmpl);
  EXPECT_GE(fd, 0);
  close(fd);
  const std::string path = tmpl;
  std::vector<std::string> argv = {HYLA_SERVING_OVERHEAD_BIN, "--json", path};
  argv.insert(argv.end(), args.begin(), args.end());
  const ProgramResult r = RunProgram(argv);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("client ITL"), std::string::npos) << r.out;
  std::cout << r.out;  // the observed figures, for the log
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::remove(path.c_str());
  absl::StatusOr<JsonValue> json = ParseJson(ss.str());
  EXPECT_TRUE(json.ok()) << json.status() << "\n" << ss.str();
  return json.ok() ? *json : JsonValue();
}

void Check(const JsonValue& rep) {
  ASSERT_TRUE(rep.is_object());
  EXPECT_EQ(Field(rep, "completed"), 16);
  // The backend sleeps 3 ms per step: no step is shorter, and a stream gets at most one token
  // per step (8 streams decode in lock-step, so merged messages are not expected).
  EXPECT_GE(Field(rep, "backend_step_ms", "p50"), 3.0);
  EXPECT_GE(Field(rep, "itl_ms", "p50"), 0.9 * 3.0);
  for (const char* part : {"itl_ms", "backend_step_ms", "step_gap_ms", "host_before_ms",
                           "schedule_ms", "host_after_ms", "emit_ms"}) {
    EXPECT_GE(Field(rep, part, "p50"), 0) << part;
    EXPECT_LE(Field(rep, part, "p50"), Field(rep, part, "p99")) << part;
  }
  EXPECT_LE(Field(rep, "schedule_ms", "mean"), Field(rep, "host_before_ms", "mean"));
  EXPECT_LE(Field(rep, "emit_ms", "mean"), Field(rep, "host_after_ms", "mean"));
  EXPECT_GT(Field(rep, "overhead"), -0.5);
}

const std::vector<std::string> kSmall = {"--step-ms",      "3",  "--concurrency", "8",
                                         "--num-requests", "16", "--input-len",   "8",
                                         "--output-len",   "16"};

TEST(ServingOverheadTest, ReportsTheCycleSplit) { Check(RunOverhead(kSmall)); }

TEST(ServingOverheadTest, OldPathForComparison) {
  std::vector<std::string> args = kSmall;
  for (const char* a : {"--notify", "inline", "--deadlock-detection", "on"}) args.push_back(a);
  const JsonValue rep = RunOverhead(args);
  Check(rep);
  ASSERT_NE(rep.Find("notify"), nullptr);
  EXPECT_EQ(rep.Find("notify")->string_value(), "inline");
}

TEST(ServingOverheadTest, UsageErrorsExitTwo) {
  for (const std::vector<std::string>& bad : {std::vector<std::string>{"--step-ms", "-1"},
                                              {"--notify", "sideways"},
                                              {"--bogus", "1"},
                                              {"--concurrency"}}) {
    std::vector<std::string> argv = {HYLA_SERVING_OVERHEAD_BIN};
    argv.insert(argv.end(), bad.begin(), bad.end());
    const ProgramResult r = RunProgram(argv);
    EXPECT_EQ(r.exit_code, 2) << bad[0] << "\n" << r.err;
  }
}

}  // namespace
}  // namespace hyla
