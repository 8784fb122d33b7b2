// Operations against a real hyla-server: /metrics passes `promtool check metrics` and agrees with
// the traffic sent, reflection lists the services, bearer-token authentication, TLS, start-up
// errors that name the flag, the `hyla` CLI and the Python client example.
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "service/raw_clients.h"
#include "tests/service/server_process.h"

namespace hyla::testing {
namespace {

std::string FindProgram(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path == nullptr ? "" : path, ':')) {
    const std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  for (const char* dir : {"/usr/bin", "/usr/local/bin"}) {
    const std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

std::unique_ptr<ServerProcess> Start(std::vector<std::string> args) {
  auto s = ServerProcess::Start(std::move(args));
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

TEST(OperationsTest, MetricsPassPromtoolAndAgreeWithTheTraffic) {
  auto server = Start({"--max-context=1024", "--memory-budget=64M"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  constexpr int kTokens = 17;
  const std::vector<std::string> prompts = {"one", "a somewhat longer prompt",
                                            std::string(150, 'c'), "four", std::string(70, 'e')};
  int64_t prompt_sum = 0;
  int64_t routed_expected = 0;  // NAtS-L decisions: completed 64-token chunks x 2 layers x 2 heads
  for (size_t i = 0; i < prompts.size(); ++i) {
    const GenerateResult r = RunGenerate(*stub, SampledRequest(prompts[i], kTokens, i));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    prompt_sum += static_cast<int64_t>(prompts[i].size());
    routed_expected += (static_cast<int64_t>(prompts[i].size()) + kTokens - 1) / 64 * 2 * 2;
  }
  for (int i = 0; i < 2; ++i) {  // invalid
    v1::GenerateRequest bad = SampledRequest("x", kTokens, 1);
    bad.mutable_sampling()->set_top_p(7);
    EXPECT_EQ(RunGenerate(*stub, bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    v1::TokenizeRequest req;
    req.set_text("abc");
    v1::TokenizeResponse out;
    ASSERT_TRUE(stub->Tokenize(&ctx, req, &out).ok());
  }
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  }
  const std::string prefix = "session prefix";
  int64_t session_prompt = 0;
  int64_t session_reused = 0;
  {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_session_id("m");
    req.set_text(prefix);
    v1::SessionInfo out;
    ASSERT_TRUE(stub->CreateSession(&ctx, req, &out).ok());
    v1::GenerateRequest g = SampledRequest("turn", kTokens, 9);
    g.set_session_id("m");
    const GenerateResult r = RunGenerate(*stub, g);
    ASSERT_TRUE(r.status.ok());
    session_prompt = r.finished->usage().prompt_tokens();
    session_reused = r.finished->usage().reused_tokens();
    grpc::ClientContext dctx;
    v1::DeleteSessionRequest del;
    del.set_session_id("m");
    v1::DeleteSessionResponse dout;
    ASSERT_TRUE(stub->DeleteSession(&dctx, del, &dout).ok());
  }
  EXPECT_TRUE(
      WaitFor([&] { return Metric(*server, "hyla_sessions_resident") == 0; }, absl::Seconds(10)));

  absl::StatusOr<std::string> text = server->ScrapeMetrics();
  ASSERT_TRUE(text.ok()) << text.status();
  const std::string promtool = FindProgram("promtool");
  ASSERT_FALSE(promtool.empty()) << "promtool (Debian package prometheus) is needed";
  const ProgramResult check = RunProgram({promtool, "check", "metrics"}, {}, *text);
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;

  const std::vector<Sample> m = ParseExposition(*text);
  auto v = [&](const std::string& name, const std::map<std::string, std::string>& labels = {}) {
    return FindSample(m, name, labels).value_or(std::nan(""));
  };
  const int generates = static_cast<int>(prompts.size()) + 1;
  EXPECT_EQ(v("hyla_requests_total", {{"method", "Generate"}, {"code", "OK"}}), generates);
  EXPECT_EQ(v("hyla_requests_total", {{"method", "Generate"}, {"code", "INVALID_ARGUMENT"}}), 2);
  EXPECT_EQ(v("hyla_requests_total", {{"method", "Tokenize"}, {"code", "OK"}}), 1);
  EXPECT_EQ(v("hyla_requests_total", {{"method", "GetModelInfo"}, {"code", "OK"}}), 1);
  EXPECT_EQ(v("hyla_requests_total", {{"method", "CreateSession"}, {"code", "OK"}}), 1);
  EXPECT_EQ(v("hyla_requests_total", {{"method", "DeleteSession"}, {"code", "OK"}}), 1);
  EXPECT_EQ(v("hyla_request_duration_seconds_count", {{"method", "Generate"}}), generates + 2);
  EXPECT_EQ(v("hyla_rejections_total", {{"reason", "invalid"}}), 2);
  EXPECT_EQ(v("hyla_generated_tokens_total"), generates * kTokens);
  EXPECT_EQ(v("hyla_request_generated_tokens_count"), generates);
  EXPECT_EQ(v("hyla_request_generated_tokens_sum"), generates * kTokens);
  EXPECT_EQ(v("hyla_request_prompt_tokens_count"), generates);
  EXPECT_EQ(v("hyla_request_prompt_tokens_sum"), prompt_sum + session_prompt);
  EXPECT_EQ(v("hyla_time_to_first_token_seconds_count"), generates);
  EXPECT_EQ(v("hyla_e2e_request_latency_seconds_count"), generates);
  EXPECT_EQ(v("hyla_inter_token_latency_seconds_count"), generates * (kTokens - 1));
  EXPECT_EQ(v("hyla_session_reused_tokens_total"), session_reused);
  EXPECT_EQ(v("hyla_sessions_created_total"), 1);
  EXPECT_EQ(v("hyla_sessions_released_total"), 1);
  EXPECT_EQ(v("hyla_natsl_chunks_routed_total", {{"op", "softmax"}}) +
                v("hyla_natsl_chunks_routed_total", {{"op", "gdn"}}),
            routed_expected);
  EXPECT_GT(v("hyla_step_duration_seconds_count", {{"phase", "decode"}}), 0);
  EXPECT_GT(v("hyla_batch_size_count"), 0);
  EXPECT_EQ(v("hyla_requests_running"), 0);
  EXPECT_EQ(v("hyla_requests_waiting"), 0);
  EXPECT_EQ(v("hyla_state_memory_used_bytes", {{"pool", "slots"}}), 0);
  EXPECT_EQ(v("hyla_state_memory_used_bytes", {{"pool", "kv_blocks"}}), 0);
  EXPECT_EQ(v("hyla_state_memory_capacity_bytes", {{"pool", "slots"}}),
            static_cast<double>(info.state_slots()) * info.slot_bytes());
  EXPECT_EQ(v("hyla_state_memory_capacity_bytes", {{"pool", "kv_blocks"}}),
            static_cast<double>(info.kv_blocks()) * info.kv_block_bytes());
  EXPECT_EQ(v("hyla_state_memory_utilization_ratio"), 0);
  EXPECT_EQ(v("hyla_build_info", {{"family", "natsl"},
                                  {"model_type", "neural_attention_search_linear_attn_gdn"},
                                  {"device", ExpectedDevice()}}),
            1);
  // Sequences of each request end in the le_1k context bucket.
  EXPECT_EQ(v("hyla_session_state_bytes_count", {{"context_bucket", "le_1k"}}), generates + 1);
  EXPECT_GT(v("hyla_session_softmax_equivalent_bytes_sum", {{"context_bucket", "le_1k"}}), 0);
  // Bounded: no request or session ids in any label, and a modest number of series.
  for (const Sample& s : m) {
    for (const auto& [k, value] : s.labels) {
      EXPECT_NE(value, "m") << s.name;
      EXPECT_FALSE(absl::StrContains(value, "session")) << s.name;
    }
  }
  EXPECT_LT(m.size(), 1000u);
}

TEST(OperationsTest, ReflectionListsTheServices) {
  auto server = Start({"--memory-budget=32M", "--max-context=512"});
  ASSERT_NE(server, nullptr);
  auto names = service::ListServices(server->NewChannel(), absl::Seconds(10));
  ASSERT_TRUE(names.ok()) << names.status();
  for (const char* expected :
       {"hyla.v1.Hyla", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}) {
    EXPECT_NE(std::find(names->begin(), names->end(), expected), names->end()) << expected;
  }
}

TEST(OperationsTest, BearerTokenGuardsTheApiButNotHealthOrReflection) {
  const std::string token = "s3cret-token-value";
  auto server = Start({"--memory-budget=32M", "--max-context=512", "--auth-token=" + token});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  const GenerateResult none = RunGenerate(*stub, SampledRequest("hi", 4, 1));
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  const GenerateResult wrong = RunGenerate(*stub, SampledRequest("hi", 4, 1), std::nullopt, "nope");
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  const GenerateResult right = RunGenerate(*stub, SampledRequest("hi", 4, 1), std::nullopt, token);
  EXPECT_TRUE(right.status.ok()) << right.status.error_message();
  EXPECT_EQ(right.token_ids.size(), 4u);
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_EQ(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  auto health = service::CheckHealth(server->NewChannel(), "", absl::Seconds(10));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, service::ServingStatus::kServing);
  EXPECT_TRUE(service::ListServices(server->NewChannel(), absl::Seconds(10)).ok());
  EXPECT_EQ(Metric(*server, "hyla_rejections_total", {{"reason", "unauthenticated"}}), 3);
  // The CLI passes the token.
  const ProgramResult cli = RunProgram(
      {CliBinary(), "--server", server->grpc_address(), "--token", token, "tokenize", "ab"});
  EXPECT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_EQ(cli.out, "97 98\n");
  const ProgramResult cli_no_token =
      RunProgram({CliBinary(), "--server", server->grpc_address(), "tokenize", "ab"});
  EXPECT_EQ(cli_no_token.exit_code, 1);
  EXPECT_NE(cli_no_token.err.find("UNAUTHENTICATED"), std::string::npos) << cli_no_token.err;
  // The token never appears in the server's log.
  EXPECT_EQ(server->Stderr().find(token), std::string::npos);
}

TEST(OperationsTest, ServesTls) {
  char dir_template[] = "/tmp/hyla_tls_XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const std::string cert = dir + "/cert.pem";
  const std::string key = dir + "/key.pem";
  const std::string openssl = FindProgram("openssl");
  ASSERT_FALSE(openssl.empty()) << "openssl is needed to make a test certificate";
  const ProgramResult gen =
      RunProgram({openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out",
                  cert, "-days", "1", "-subj", "/CN=localhost", "-addext",
                  "subjectAltName=DNS:localhost,IP:127.0.0.1"});
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  auto server =
      Start({"--memory-budget=32M", "--max-context=512", "--tls-cert=" + cert, "--tls-key=" + key});
  ASSERT_NE(server, nullptr);
  EXPECT_NE(server->Stderr().find("tls=on"), std::string::npos);

  std::ifstream in(cert);
  std::stringstream pem;
  pem << in.rdbuf();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = pem.str();
  auto channel = grpc::CreateChannel(server->grpc_address(), grpc::SslCredentials(ssl));
  auto stub = v1::Hyla::NewStub(channel);
  const GenerateResult r = RunGenerate(*stub, SampledRequest("over tls", 6, 2));
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.token_ids.size(), 6u);
  // A plaintext client cannot talk to it.
  auto plain = server->NewStub();
  const GenerateResult p = RunGenerate(*plain, SampledRequest("plain", 6, 2), absl::Seconds(5));
  EXPECT_FALSE(p.status.ok());
  // Nor the CLI without the CA; with it, it can.
  const ProgramResult cli =
      RunProgram({CliBinary(), "--server", server->grpc_address(), "--tls-ca", cert, "info"});
  EXPECT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_NE(cli.out.find("family=natsl"), std::string::npos);
  std::remove(cert.c_str());
  std::remove(key.c_str());
  rmdir(dir.c_str());
}

// A self-signed certificate for localhost / 127.0.0.1 in a fresh temporary folder.
struct TestCert {
  std::string dir, cert, key;
  TestCert() {
    char dir_template[] = "/tmp/hyla_tls_XXXXXX";
    if (mkdtemp(dir_template) == nullptr) return;
    dir = dir_template;
    cert = dir + "/cert.pem";
    key = dir + "/key.pem";
    const std::string openssl = FindProgram("openssl");
    EXPECT_FALSE(openssl.empty()) << "openssl is needed to make a test certificate";
    const ProgramResult gen =
        RunProgram({openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"});
    EXPECT_EQ(gen.exit_code, 0) << gen.err;
  }
  ~TestCert() {
    std::remove(cert.c_str());
    std::remove(key.c_str());
    rmdir(dir.c_str());
  }
  std::string Pem() const {
    std::ifstream in(cert);
    std::stringstream pem;
    pem << in.rdbuf();
    return pem.str();
  }
};

// --health-listen: Kubernetes' gRPC probes speak plaintext only; with TLS on --listen they probe
// a plaintext port that serves grpc.health.v1 alone, with the main server's statuses.
TEST(OperationsTest, PlaintextHealthListenerBesideTlsFollowsTheDrain) {
  TestCert tls;
  ASSERT_FALSE(tls.dir.empty());
  auto server = Start({"--memory-budget=128M", "--drain-deadline=60s", "--tls-cert=" + tls.cert,
                       "--tls-key=" + tls.key, "--health-listen=127.0.0.1:0"});
  ASSERT_NE(server, nullptr);
  ASSERT_FALSE(server->health_address().empty()) << server->Stderr();
  EXPECT_NE(server->health_address(), server->grpc_address());
  EXPECT_NE(server->Stderr().find(" tls=on auth=off health=" + server->health_address()),
            std::string::npos)
      << server->Stderr();
  auto health_channel =
      grpc::CreateChannel(server->health_address(), grpc::InsecureChannelCredentials());
  for (const char* name : {"", "hyla.v1.Hyla", "readiness", "liveness"}) {
    auto h = service::CheckHealth(health_channel, name, absl::Seconds(10));
    ASSERT_TRUE(h.ok()) << name << ": " << h.status();
    EXPECT_EQ(*h, service::ServingStatus::kServing) << name;
  }
  {  // Unknown names are unknown there too.
    auto h = service::CheckHealth(health_channel, "no.such.Service", absl::Seconds(10));
    EXPECT_TRUE(!h.ok() || *h == service::ServingStatus::kServiceUnknown);
  }
  // Health only: no reflection and no hyla.v1.Hyla on the plaintext port.
  EXPECT_FALSE(service::ListServices(health_channel, absl::Seconds(5)).ok());
  {
    auto plain_stub = v1::Hyla::NewStub(health_channel);
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_EQ(plain_stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }
  // The main port still needs TLS for its health service: a plaintext probe there fails.
  EXPECT_FALSE(service::CheckHealth(server->NewChannel(), "", absl::Seconds(3)).ok());
  // The CLI probes the plaintext port.
  const ProgramResult cli = RunProgram(
      {CliBinary(), "--server", server->health_address(), "health", "--service", "readiness"});
  EXPECT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_EQ(cli.out, "SERVING\n");

  // Streams in flight over TLS keep the drain going while the health port is checked.
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = tls.Pem();
  auto tls_channel = grpc::CreateChannel(server->grpc_address(), grpc::SslCredentials(ssl));
  constexpr int kStreams = 8;
  constexpr int kTokens = 1000;
  absl::Mutex mu;
  int started = 0;
  std::vector<grpc::Status> statuses(kStreams);
  std::vector<int> tokens(kStreams, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::Hyla::NewStub(tls_channel);
      grpc::ClientContext ctx;
      auto reader = stub->Generate(&ctx, SampledRequest(absl::StrCat("drain ", i), kTokens, i));
      v1::GenerateResponse r;
      bool first = true;
      while (reader->Read(&r)) {
        tokens[i] += r.token_ids_size();
        if (first) {
          absl::MutexLock lock(&mu);
          ++started;
          first = false;
        }
      }
      statuses[i] = reader->Finish();
    });
  }
  {
    absl::MutexLock lock(&mu);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return started == kStreams; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(60)));
  }
  server->Signal(SIGTERM);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto h = service::CheckHealth(health_channel, "readiness", absl::Seconds(5));
        return h.ok() && *h == service::ServingStatus::kNotServing;
      },
      absl::Seconds(10)))
      << server->Stderr();
  for (const char* name : {"", "hyla.v1.Hyla"}) {
    auto h = service::CheckHealth(health_channel, name, absl::Seconds(5));
    ASSERT_TRUE(h.ok()) << name << ": " << h.status();
    EXPECT_EQ(*h, service::ServingStatus::kNotServing) << name;
  }
  {  // The process is alive while it drains.
    auto h = service::CheckHealth(health_channel, "liveness", absl::Seconds(5));
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(*h, service::ServingStatus::kServing);
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    EXPECT_EQ(tokens[i], kTokens) << i;
  }
  const std::optional<int> code = server->WaitExit(absl::Seconds(60));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << server->Stderr();
  // After the exit nothing answers on the health port.
  EXPECT_FALSE(service::CheckHealth(health_channel, "liveness", absl::Seconds(2)).ok());
}

// The CPU backend's threads (the test pins --device=cpu: the CUDA backend has no CPU threads).
TEST(OperationsTest, ThreadsAndBatchAreLoggedAndChecked) {
  {
    auto server = Start({"--device=cpu", "--memory-budget=32M", "--max-context=512", "--threads=3",
                         "--max-batch=64", "--token-budget=400", "--prefill-chunk=128"});
    ASSERT_NE(server, nullptr);
    EXPECT_NE(server->Stderr().find("threads: 3 per worker (--threads); batch: 64 sequences, 400 "
                                    "tokens per step, prefill chunk 128"),
              std::string::npos)
        << server->Stderr();
  }
  int slots = 0;
  {  // Defaults: threads from the cgroup quota or the hardware; batch min(64, slots).
    auto server = Start({"--device=cpu", "--memory-budget=128M", "--max-context=512"});
    ASSERT_NE(server, nullptr);
    const std::string log = server->Stderr();
    EXPECT_TRUE(log.find("CPUs from cgroup v") != std::string::npos ||
                log.find("hardware threads (no cgroup CPU quota)") != std::string::npos)
        << log;
    auto stub = server->NewStub();
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    slots = static_cast<int>(info.state_slots());
    ASSERT_GE(slots, 64) << "the test expects a budget with room for 64 sequences";
    EXPECT_NE(log.find("batch: 64 sequences, 512 tokens per step, prefill chunk 256"),
              std::string::npos)
        << log;
  }
  {  // The automatic batch of 64 needs --token-budget >= 63 + --prefill-chunk.
    const ProgramResult r = RunProgram(
        {ServerBinary(), "--model=" + TestModelDir(), "--memory-budget=128M", "--max-context=512",
         "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0", "--token-budget=300"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("--token-budget: must be at least --max-batch - 1 + --prefill-chunk = "
                         "64 - 1 + 256 = 319"),
              std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find("--max-batch 0 means min(64, state slots per worker) = 64"),
              std::string::npos)
        << r.err;
  }
}

// 64 concurrent streams on one worker decode in one batch with the default --max-batch
// (min(64, slots)); with --max-batch=32 no step holds more than 32.
TEST(OperationsTest, SixtyFourStreamsShareOneBatch) {
  for (const int max_batch : {0, 32}) {
    std::vector<std::string> args = {"--workers=1", "--memory-budget=128M", "--max-context=512",
                                     "--queue-bound=128"};
    if (max_batch > 0) args.push_back(absl::StrCat("--max-batch=", max_batch));
    auto server = Start(args);
    ASSERT_NE(server, nullptr);
    constexpr int kStreams = 64;
    auto channel = server->NewChannel();
    std::vector<grpc::Status> statuses(kStreams);
    std::vector<std::thread> threads;
    for (int i = 0; i < kStreams; ++i) {
      threads.emplace_back([&, i] {
        auto stub = v1::Hyla::NewStub(channel);
        statuses[i] = RunGenerate(*stub, SampledRequest(absl::StrCat("s", i), 300, i)).status;
      });
    }
    for (std::thread& t : threads) t.join();
    for (int i = 0; i < kStreams; ++i) EXPECT_TRUE(statuses[i].ok()) << i;
    const double upto32 = Metric(*server, "hyla_batch_size_bucket", {{"le", "32"}});
    const double upto64 = Metric(*server, "hyla_batch_size_bucket", {{"le", "64"}});
    const double steps = Metric(*server, "hyla_batch_size_count");
    EXPECT_EQ(upto64, steps) << "no step holds more than 64";
    if (max_batch == 0) {
      EXPECT_GT(upto64 - upto32, 0) << "no step held more than 32 of the 64 streams";
    } else {
      EXPECT_EQ(upto32, steps) << "a step held more than --max-batch=32";
    }
  }
}

TEST(OperationsTest, StartupErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    int exit_code;
    std::string text;
  };
  const std::string model = "--model=" + TestModelDir();
  const std::vector<Case> cases = {
      {{"--workers=-1"}, 2, "--workers"},
      {{"--memory-budget=lots"}, 2, "--memory-budget"},
      {{"--kv-cap-policy=maybe"}, 2, "--kv-cap-policy"},
      {{"--listen=nowhere"}, 2, "--listen"},
      {{"--device=tpu"}, 2, "--device"},
      {{"--stall-timeout=0"}, 2, "--stall-timeout"},
      {{"--tls-cert=/x.pem"}, 2, "--tls-key"},
      {{"--unknown-flag=1"}, 2, "--unknown-flag"},
      {{"--health-listen=nowhere"}, 2, "--health-listen"},
      {{"--threads=-1"}, 2, "--threads"},
      {{"--max-batch=64", "--prefill-chunk=512"}, 2, "--token-budget"},
      {{model, "--memory-budget=1M", "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"},
       1,
       "--memory-budget"},
      {{"--model=/nonexistent/model", "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"},
       1,
       "--model"},
      {{model, "--tls-cert=/nonexistent.pem", "--tls-key=/nonexistent.key", "--listen=127.0.0.1:0",
        "--metrics-listen=127.0.0.1:0", "--memory-budget=32M"},
       1,
       "--tls-cert"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {ServerBinary()};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    const ProgramResult r = RunProgram(argv);
    EXPECT_EQ(r.exit_code, c.exit_code) << c.args.back() << ": " << r.err;
    EXPECT_NE(r.err.find(c.text), std::string::npos) << c.args.back() << ": " << r.err;
  }
  // A taken address.
  auto first = Start({"--memory-budget=32M", "--max-context=512"});
  ASSERT_NE(first, nullptr);
  const ProgramResult taken =
      RunProgram({ServerBinary(), model, "--memory-budget=32M", "--max-context=512",
                  "--listen=" + first->grpc_address(), "--metrics-listen=127.0.0.1:0"});
  EXPECT_EQ(taken.exit_code, 1) << taken.err;
  EXPECT_NE(taken.err.find("--listen"), std::string::npos) << taken.err;
  const ProgramResult taken_metrics =
      RunProgram({ServerBinary(), model, "--memory-budget=32M", "--max-context=512",
                  "--listen=127.0.0.1:0", "--metrics-listen=" + first->metrics_address()});
  EXPECT_EQ(taken_metrics.exit_code, 1) << taken_metrics.err;
  EXPECT_NE(taken_metrics.err.find("--metrics-listen"), std::string::npos) << taken_metrics.err;
  const ProgramResult taken_health = RunProgram(
      {ServerBinary(), model, "--memory-budget=32M", "--max-context=512", "--listen=127.0.0.1:0",
       "--metrics-listen=127.0.0.1:0", "--health-listen=" + first->metrics_address()});
  EXPECT_EQ(taken_health.exit_code, 1) << taken_health.err;
  EXPECT_NE(taken_health.err.find("--health-listen: cannot listen"), std::string::npos)
      << taken_health.err;
  const ProgramResult help = RunProgram({ServerBinary(), "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--memory-budget"), std::string::npos);
  for (const char* flag :
       {"--health-listen", "--threads", "--max-batch", "--token-budget", "--prefill-chunk"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
}

TEST(OperationsTest, StartupLogShowsModelMemoryPlanAndAddresses) {
  // No --model: the embedded default model.
  auto server = Start({"--model=", "--memory-budget=64M", "--max-context=512"});
  ASSERT_NE(server, nullptr);
  const std::string log = server->Stderr();
  EXPECT_NE(log.find("models/default (family natsl"), std::string::npos) << log;
  EXPECT_NE(log.find("max context 512"), std::string::npos) << log;
  v1::ModelInfo info;
  {
    auto stub = server->NewStub();
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  }
  // The plan in the log is the one the server runs with.
  EXPECT_NE(log.find(absl::StrCat("memory plan: 1 worker(s) x (", info.state_slots(), " slots x ")),
            std::string::npos)
      << log;
  EXPECT_NE(log.find(absl::StrCat(" + ", info.kv_blocks(), " KV blocks x ")), std::string::npos)
      << log;
  EXPECT_NE(log.find("of 64.0 MiB budget"), std::string::npos) << log;
  EXPECT_NE(log.find(absl::StrCat("slot ", info.slot_bytes(), " bytes, KV block ",
                                  info.kv_block_bytes(), " bytes")),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("listening grpc=" + server->grpc_address() +
                     " metrics=" + server->metrics_address() + " tls=off auth=off"),
            std::string::npos)
      << log;
}

TEST(OperationsTest, CommandLineClient) {
  auto server = Start({"--memory-budget=32M", "--max-context=512"});
  ASSERT_NE(server, nullptr);
  auto hyla = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {CliBinary(), "--server", server->grpc_address()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProgram(argv);
  };
  ProgramResult r = hyla({"health"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "SERVING\n");
  r = hyla({"health", "--service", "readiness"});
  EXPECT_EQ(r.exit_code, 0);
  r = hyla({"health", "--service", "no.such.Service"});
  EXPECT_EQ(r.exit_code, 1);

  // generate prints the same text as the API returns for the same request, usage on stderr.
  r = hyla({"generate", "--max-tokens", "12", "--temperature", "0.8", "--top-p", "0.95", "--seed",
            "3", "--ignore-eos", "Hello"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto stub = server->NewStub();
  const GenerateResult api = RunGenerate(*stub, SampledRequest("Hello", 12, 3));
  ASSERT_TRUE(api.status.ok());
  EXPECT_EQ(r.out, api.text + "\n");
  EXPECT_NE(r.err.find("finish=length"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("prompt_tokens=5"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("generated_tokens=12"), std::string::npos) << r.err;

  r = hyla({"session", "create", "--session", "cli", "a prefix"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("session_id=cli context_tokens=8"), std::string::npos) << r.out;
  r = hyla({"generate", "--session", "cli", "--max-tokens", "4", "--ignore-eos", " more"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("prompt_tokens=5"), std::string::npos) << r.err;
  r = hyla({"session", "get", "cli"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("session_id=cli"), std::string::npos);
  r = hyla({"session", "fork", "cli", "cli-2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("session_id=cli-2"), std::string::npos);
  r = hyla({"session", "list"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("session_id=cli "), std::string::npos);
  EXPECT_NE(r.out.find("session_id=cli-2 "), std::string::npos);
  EXPECT_EQ(hyla({"session", "delete", "cli"}).exit_code, 0);
  EXPECT_EQ(hyla({"session", "delete", "cli-2"}).exit_code, 0);
  r = hyla({"session", "get", "cli"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("NOT_FOUND"), std::string::npos) << r.err;

  r = hyla({"tokenize", "hi"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "104 105\n");
  r = hyla({"info"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("family=natsl\n"), std::string::npos);
  EXPECT_NE(r.out.find("max_context=512\n"), std::string::npos);
  r = hyla({"services"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("hyla.v1.Hyla\n"), std::string::npos);

  r = hyla({"generate", "--top-p", "3", "x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT: sampling.top_p"), std::string::npos) << r.err;
  EXPECT_EQ(hyla({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(hyla({"generate"}).exit_code, 2);
  EXPECT_EQ(hyla({"generate", "--max-tokens", "many", "x"}).exit_code, 2);
  EXPECT_EQ(RunProgram({CliBinary()}).exit_code, 2);
  EXPECT_EQ(RunProgram({CliBinary(), "--help"}).exit_code, 0);
  // An unreachable server: health fails.
  EXPECT_EQ(
      RunProgram({CliBinary(), "--server", "127.0.0.1:1", "--timeout", "2s", "health"}).exit_code,
      1);
}

TEST(OperationsTest, PythonClientExample) {
  auto server = Start({"--memory-budget=32M", "--max-context=512"});
  ASSERT_NE(server, nullptr);
  const std::string script = SourceDir() + "/examples/python/client.py";
  // Debian's interpreter, which has python3-grpcio and python3-protobuf.
  for (const std::string& stubs : {std::string(HYLA_PYTHON_STUBS_DIR), std::string()}) {
    std::vector<std::string> argv = {"/usr/bin/python3", script, "--server",
                                     server->grpc_address()};
    if (!stubs.empty()) {
      argv.push_back("--stubs");
      argv.push_back(stubs);
    }
    const ProgramResult r = RunProgram(argv);  // without --stubs it generates them with protoc
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("health: SERVING"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("model: family=natsl"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("generate: 24 tokens"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("turn 2 processed 17 new tokens"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("deleted both sessions"), std::string::npos) << r.out;
    EXPECT_TRUE(absl::EndsWith(r.out, "ok\n")) << r.out;
  }
  EXPECT_EQ(Metric(*server, "hyla_sessions_resident"), 0);
  EXPECT_EQ(Metric(*server, "hyla_requests_total", {{"method", "Generate"}, {"code", "OK"}}), 6);
}

}  // namespace
}  // namespace hyla::testing
