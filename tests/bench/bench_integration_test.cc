// hyla-bench against a real hyla-server on 127.0.0.1 serving the generated natsl "tiny" model
// (tests/service harness): closed and open loop runs, checked through the --json report.
#include <unistd.h>

#include <cstdio>
#include <fstream>
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
using testing::ServerProcess;

double Num(const JsonValue& obj, const char* key) {
  const JsonValue* v = obj.Find(key);
  EXPECT_NE(v, nullptr) << key;
  return v != nullptr && v->is_number() ? v->number_value() : -1;
}

// Runs hyla-bench with `args` plus --server and --json, returns the parsed report.
JsonValue RunBench(const ServerProcess& server, std::vector<std::string> args) {
  char tmpl[] = "/tmp/hyla_bench_test_XXXXXX";
  const int fd = mkstemp(tmpl);
  EXPECT_GE(fd, 0);
  close(fd);
  const std::string path = tmpl;
  std::vector<std::string> argv = {HYLA_BENCH_BIN, "--server", server.grpc_address(), "--json",
                                   path};
  argv.insert(argv.end(), args.begin(), args.end());
  const ProgramResult r = RunProgram(argv);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("TTFT"), std::string::npos) << r.out;
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::remove(path.c_str());
  absl::StatusOr<JsonValue> json = ParseJson(ss.str());
  EXPECT_TRUE(json.ok()) << json.status() << "\n" << ss.str();
  return json.ok() ? *json : JsonValue();
}

void CheckReport(const JsonValue& rep, int requests, int output_len) {
  ASSERT_TRUE(rep.is_object());
  EXPECT_EQ(Num(rep, "requested"), requests);
  EXPECT_EQ(Num(rep, "completed"), requests);
  ASSERT_NE(rep.Find("failed"), nullptr);
  EXPECT_TRUE(rep.Find("failed")->object_members().empty());
  EXPECT_EQ(Num(rep, "total_output_tokens"), requests * output_len);
  EXPECT_GT(Num(rep, "request_throughput"), 0);
  EXPECT_GT(Num(rep, "output_throughput"), 0);
  EXPECT_GT(Num(rep, "total_token_throughput"), Num(rep, "output_throughput"));
  for (const char* metric : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    const JsonValue* s = rep.Find(metric);
    ASSERT_NE(s, nullptr) << metric;
    EXPECT_GT(Num(*s, "count"), 0) << metric;
    EXPECT_LE(Num(*s, "p50"), Num(*s, "p90")) << metric;
    EXPECT_LE(Num(*s, "p90"), Num(*s, "p99")) << metric;
    EXPECT_GE(Num(*s, "p50"), 0) << metric;
  }
  const JsonValue* reqs = rep.Find("requests");
  ASSERT_NE(reqs, nullptr);
  ASSERT_EQ(reqs->array_items().size(), static_cast<size_t>(requests));
  for (const JsonValue& r : reqs->array_items()) {
    ASSERT_NE(r.Find("status"), nullptr);
    EXPECT_EQ(r.Find("status")->string_value(), "OK");
    EXPECT_EQ(Num(r, "output_len"), output_len);
    EXPECT_EQ(Num(r, "requested_output_len"), output_len);
    EXPECT_EQ(Num(r, "input_len"), 16);
    EXPECT_GT(Num(r, "ttft_ms"), 0);
    EXPECT_LE(Num(r, "ttft_ms"), Num(r, "e2e_ms"));
  }
}

TEST(BenchIntegration, ClosedAndOpenLoop) {
  auto server = ServerProcess::Start({});
  ASSERT_TRUE(server.ok()) << server.status();

  const JsonValue closed =
      RunBench(**server, {"--concurrency", "4", "--num-requests", "8", "--input-len", "16",
                          "--output-len", "8", "--seed", "1", "--slo-ttft-ms", "60000"});
  CheckReport(closed, 8, 8);
  EXPECT_EQ(closed.Find("mode")->string_value(), "closed");
  // Every request meets a one-minute TTFT SLO: goodput equals the request throughput.
  EXPECT_DOUBLE_EQ(Num(closed, "goodput"), Num(closed, "request_throughput"));

  const JsonValue open = RunBench(**server, {"--request-rate", "20", "--num-requests", "8",
                                             "--input-len", "16", "--output-len", "8"});
  CheckReport(open, 8, 8);
  EXPECT_EQ(open.Find("mode")->string_value(), "open");
}

}  // namespace
}  // namespace hyla
