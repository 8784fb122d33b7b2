// Lifecycle of streams against a real hyla-server: cancellation and deadlines free the state at
// once, overload past the queue bound and past the memory budget is refused with UNAVAILABLE and
// a retry hint while every admitted stream completes, a client that stops reading is ended after
// the stall timeout, and SIGTERM drains (health NOT_SERVING, new calls UNAVAILABLE, running
// streams complete, exit 0 before the drain deadline).
#include <signal.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "service/raw_clients.h"
#include "tests/service/server_process.h"

namespace hyla::testing {
namespace {

using service::CheckHealth;
using service::ServingStatus;

struct Gauges {
  double running = 0;
  double waiting = 0;
  double slot_bytes = 0;
  double kv_bytes = 0;
  bool operator==(const Gauges& o) const {
    return running == o.running && waiting == o.waiting && slot_bytes == o.slot_bytes &&
           kv_bytes == o.kv_bytes;
  }
};

std::ostream& operator<<(std::ostream& os, const Gauges& g) {
  return os << "{running " << g.running << ", waiting " << g.waiting << ", slot bytes "
            << g.slot_bytes << ", kv bytes " << g.kv_bytes << "}";
}

Gauges ReadGauges(const ServerProcess& server) {
  Gauges g;
  auto text = server.ScrapeMetrics();
  if (!text.ok()) return g;
  const auto samples = ParseExposition(*text);
  g.running = FindSample(samples, "hyla_requests_running").value_or(-1);
  g.waiting = FindSample(samples, "hyla_requests_waiting").value_or(-1);
  g.slot_bytes =
      FindSample(samples, "hyla_state_memory_used_bytes", {{"pool", "slots"}}).value_or(-1);
  g.kv_bytes =
      FindSample(samples, "hyla_state_memory_used_bytes", {{"pool", "kv_blocks"}}).value_or(-1);
  return g;
}

// A stream opened and read message by message from the test thread.
class OpenStream {
 public:
  OpenStream(v1::Hyla::Stub& stub, const v1::GenerateRequest& request,
             std::optional<absl::Duration> timeout = std::nullopt) {
    if (timeout.has_value()) ctx_.set_deadline(absl::ToChronoTime(absl::Now() + *timeout));
    reader_ = stub.Generate(&ctx_, request);
  }
  // Reads one message; false at the end of the stream.
  bool ReadOne() {
    v1::GenerateResponse r;
    if (!reader_->Read(&r)) return false;
    tokens_ += r.token_ids_size();
    return true;
  }
  // Reads to the end and returns the status.
  grpc::Status Finish() {
    while (ReadOne()) {
    }
    return reader_->Finish();
  }
  void Cancel() { ctx_.TryCancel(); }
  int tokens() const { return tokens_; }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader_;
  int tokens_ = 0;
};

std::unique_ptr<ServerProcess> Start(std::vector<std::string> args) {
  auto s = ServerProcess::Start(std::move(args));
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

std::string TrailingValue(const GenerateResult& r, const std::string& key) {
  auto it = r.trailing.find(key);
  return it == r.trailing.end() ? "" : it->second;
}

// Long generations (8000 tokens at a maximum context of 8192: seconds of work for the tiny test
// model) so that the events under test happen mid-stream on any machine.
constexpr int kLong = 8000;
constexpr char kLongContext[] = "--max-context=8192";

TEST(LifecycleTest, CancelMidStreamFreesTheStateAtOnce) {
  auto server = Start({"--memory-budget=64M", kLongContext});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  {  // A resident session, so that the baseline is not simply zero.
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_session_id("resident");
    req.set_text("held in state while the other request comes and goes");
    v1::SessionInfo info;
    ASSERT_TRUE(stub->CreateSession(&ctx, req, &info).ok());
  }
  const Gauges before = ReadGauges(*server);
  EXPECT_EQ(before.running, 0);
  EXPECT_GT(before.slot_bytes, 0);

  OpenStream stream(*stub, SampledRequest("a long answer", kLong, 3));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(stream.ReadOne());
  const Gauges during = ReadGauges(*server);
  EXPECT_EQ(during.running, 1);
  EXPECT_GT(during.slot_bytes, before.slot_bytes);
  stream.Cancel();
  const grpc::Status st = stream.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << st.error_message();
  EXPECT_LT(stream.tokens(), kLong);

  Gauges after;
  EXPECT_TRUE(WaitFor(
      [&] {
        after = ReadGauges(*server);
        return after == before;
      },
      absl::Seconds(10)))
      << "before " << before << ", after " << after;
  EXPECT_EQ(Metric(*server, "hyla_cancellations_total", {{"cause", "client"}}), 1);
  EXPECT_EQ(Metric(*server, "hyla_requests_total", {{"method", "Generate"}, {"code", "CANCELLED"}}),
            1);
  // The server carries on.
  const GenerateResult next = RunGenerate(*stub, SampledRequest("next", 8, 1));
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
}

TEST(LifecycleTest, DeadlineExpiryFreesTheStateAtOnce) {
  auto server = Start({"--memory-budget=64M", kLongContext});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  const Gauges before = ReadGauges(*server);
  OpenStream stream(*stub, SampledRequest("an answer longer than the deadline", kLong, 4),
                    absl::Milliseconds(100));
  ASSERT_TRUE(stream.ReadOne());  // mid-stream when the deadline passes
  const grpc::Status st = stream.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_LT(stream.tokens(), kLong);
  Gauges after;
  EXPECT_TRUE(WaitFor(
      [&] {
        after = ReadGauges(*server);
        return after == before;
      },
      absl::Seconds(10)))
      << "before " << before << ", after " << after;
  EXPECT_TRUE(WaitFor(
      [&] {
        return Metric(*server, "hyla_cancellations_total", {{"cause", "deadline"}}) == 1;
      },
      absl::Seconds(10)));
  EXPECT_EQ(Metric(*server, "hyla_cancellations_total", {{"cause", "client"}}), 0);
}

TEST(LifecycleTest, OverloadPastTheMemoryBudgetIsUnavailableWithARetryHint) {
  // One 8192-token sequence needs 111232 + 4 * 128 * 24576 = 12694144 bytes: 26M holds 2 slots.
  auto server = Start({"--memory-budget=26M", "--queue-bound=2", kLongContext});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  constexpr int kTokens = kLong / 2;
  std::vector<std::unique_ptr<OpenStream>> admitted;
  for (int i = 0; i < 2; ++i) {  // running: every slot is taken
    admitted.push_back(
        std::make_unique<OpenStream>(*stub, SampledRequest(absl::StrCat("run ", i), kTokens, i)));
    ASSERT_TRUE(admitted.back()->ReadOne());
  }
  for (int i = 0; i < 2; ++i) {  // queued: waiting for memory
    admitted.push_back(std::make_unique<OpenStream>(
        *stub, SampledRequest(absl::StrCat("queued ", i), kTokens, 10 + i)));
  }
  ASSERT_TRUE(
      WaitFor([&] { return Metric(*server, "hyla_requests_waiting") == 2; }, absl::Seconds(30)));
  for (int i = 0; i < 3; ++i) {  // the excess
    const GenerateResult r = RunGenerate(*stub, SampledRequest("excess", 10, 20 + i));
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
    EXPECT_NE(r.status.error_message().find("memory"), std::string::npos)
        << r.status.error_message();
    EXPECT_EQ(TrailingValue(r, "retry-after-ms"), "2000");
    EXPECT_EQ(TrailingValue(r, "grpc-retry-pushback-ms"), "2000");
    EXPECT_EQ(r.messages, 0);  // refused before any token
  }
  for (auto& s : admitted) {
    const grpc::Status st = s->Finish();
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(s->tokens(), kTokens);
  }
  EXPECT_EQ(Metric(*server, "hyla_rejections_total", {{"reason", "memory"}}), 3);
  auto health = CheckHealth(server->NewChannel(), "", absl::Seconds(10));
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(*health, ServingStatus::kServing);
  EXPECT_TRUE(RunGenerate(*stub, SampledRequest("after", 5, 1)).status.ok());
}

TEST(LifecycleTest, OverloadPastTheQueueBoundIsUnavailableWithARetryHint) {
  // 42 slots at 1024 tokens (1684096 bytes each); a worker runs 32 at once (--max-batch), so
  // requests 33 and 34 queue although memory would hold them, and the next ones find the queue
  // full.
  auto server =
      Start({"--max-context=1024", "--memory-budget=68M", "--queue-bound=2", "--max-batch=32"});
  ASSERT_NE(server, nullptr);
  auto channel = server->NewChannel();
  auto stub = v1::Hyla::NewStub(channel);
  constexpr int kTokens = 1000;
  std::vector<std::unique_ptr<OpenStream>> admitted;
  for (int i = 0; i < 32; ++i) {
    // One at a time: a burst would itself overflow a queue bound of 2 before the scheduler
    // admits it (which is the point of the bound).
    admitted.push_back(
        std::make_unique<OpenStream>(*stub, SampledRequest(absl::StrCat("r", i), kTokens, i)));
    ASSERT_TRUE(admitted.back()->ReadOne()) << i;
  }
  for (int i = 0; i < 2; ++i) {
    admitted.push_back(
        std::make_unique<OpenStream>(*stub, SampledRequest(absl::StrCat("q", i), kTokens, 50 + i)));
  }
  ASSERT_TRUE(
      WaitFor([&] { return Metric(*server, "hyla_requests_waiting") == 2; }, absl::Seconds(30)));
  for (int i = 0; i < 3; ++i) {
    const GenerateResult r = RunGenerate(*stub, SampledRequest("excess", 10, 90 + i));
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
    EXPECT_NE(r.status.error_message().find("queue full"), std::string::npos)
        << r.status.error_message();
    EXPECT_EQ(TrailingValue(r, "retry-after-ms"), "500");
    EXPECT_EQ(r.messages, 0);
  }
  for (auto& s : admitted) {
    const grpc::Status st = s->Finish();
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(s->tokens(), kTokens);
  }
  EXPECT_EQ(Metric(*server, "hyla_rejections_total", {{"reason", "queue_full"}}), 3);
  EXPECT_EQ(Metric(*server, "hyla_requests_total", {{"method", "Generate"}, {"code", "OK"}}), 34);
  EXPECT_EQ(
      Metric(*server, "hyla_requests_total", {{"method", "Generate"}, {"code", "UNAVAILABLE"}}), 3);
  auto health = CheckHealth(server->NewChannel(), "", absl::Seconds(10));
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(*health, ServingStatus::kServing);
}

TEST(LifecycleTest, ClientThatStopsReadingIsEndedAfterTheStallTimeout) {
  auto server = Start({"--memory-budget=64M", "--stall-timeout=1s"});
  ASSERT_NE(server, nullptr);
  const Gauges before = ReadGauges(*server);
  // A client with a small HTTP/2 window (no BDP growth): once it stops reading, the server's
  // writes are held by flow control after about 1 KiB.
  grpc::ChannelArguments small_window;
  small_window.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  small_window.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  auto slow_stub = v1::Hyla::NewStub(server->NewChannel(small_window));
  OpenStream slow(*slow_stub, SampledRequest("nobody reads this", 2000, 8));
  ASSERT_TRUE(slow.ReadOne());
  // ...and stops reading. Meanwhile another client is served normally.
  auto stub = server->NewStub();
  const GenerateResult other = RunGenerate(*stub, SampledRequest("a reader", 200, 9));
  EXPECT_TRUE(other.status.ok()) << other.status.error_message();
  EXPECT_EQ(other.token_ids.size(), 200u);

  ASSERT_TRUE(WaitFor(
      [&] {
        return Metric(*server, "hyla_cancellations_total", {{"cause", "slow_consumer"}}) == 1;
      },
      absl::Seconds(30)));
  Gauges after;
  EXPECT_TRUE(WaitFor(
      [&] {
        after = ReadGauges(*server);
        return after == before;
      },
      absl::Seconds(10)))
      << "before " << before << ", after " << after;
  // When the client reads again it finds the stream ended.
  const grpc::Status st = slow.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << st.error_message();
  EXPECT_LT(slow.tokens(), 2000);
  // Still serving.
  EXPECT_TRUE(RunGenerate(*stub, SampledRequest("after", 5, 1)).status.ok());
}

TEST(LifecycleTest, SigtermDrainsSixteenRunningStreams) {
  auto server = Start({"--memory-budget=128M", "--drain-deadline=60s"});
  ASSERT_NE(server, nullptr);
  constexpr int kStreams = 16;
  constexpr int kTokens = 1000;
  auto channel = server->NewChannel();
  absl::Mutex mu;
  int started = 0;
  std::vector<grpc::Status> statuses(kStreams);
  std::vector<int> tokens(kStreams, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::Hyla::NewStub(channel);
      OpenStream s(*stub, SampledRequest(absl::StrCat("drain ", i), kTokens, 100 + i));
      if (s.ReadOne()) {
        absl::MutexLock lock(&mu);
        ++started;
      }
      statuses[i] = s.Finish();
      tokens[i] = s.tokens();
    });
  }
  {
    absl::MutexLock lock(&mu);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return started == kStreams; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(60)));
  }
  EXPECT_EQ(Metric(*server, "hyla_requests_running"), kStreams);
  const absl::Time signalled = absl::Now();
  server->Signal(SIGTERM);

  // Health turns NOT_SERVING; from then on new calls are refused with UNAVAILABLE "draining".
  auto health_channel = server->NewChannel();
  ASSERT_TRUE(WaitFor(
      [&] {
        auto h = CheckHealth(health_channel, "", absl::Seconds(5));
        return h.ok() && *h == ServingStatus::kNotServing;
      },
      absl::Seconds(10)));
  for (const char* name : {"hyla.v1.Hyla", "readiness"}) {
    auto h = CheckHealth(health_channel, name, absl::Seconds(5));
    ASSERT_TRUE(h.ok()) << name;
    EXPECT_EQ(*h, ServingStatus::kNotServing) << name;
  }
  auto late_stub = server->NewStub();
  const GenerateResult late = RunGenerate(*late_stub, SampledRequest("too late", 5, 1));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(late.status.error_message().find("draining"), std::string::npos)
      << late.status.error_message();
  EXPECT_EQ(TrailingValue(late, "retry-after-ms"), "0");
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_EQ(late_stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).error_code(),
              grpc::StatusCode::UNAVAILABLE);
  }

  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    EXPECT_EQ(tokens[i], kTokens) << i;
  }
  const std::optional<int> code = server->WaitExit(absl::Seconds(60));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << server->Stderr();
  EXPECT_LT(absl::Now() - signalled, absl::Seconds(60));
  const std::string log = server->Stderr();
  EXPECT_NE(log.find("SIGTERM received: draining"), std::string::npos) << log;
  EXPECT_NE(log.find("every call finished; exit 0"), std::string::npos) << log;
}

TEST(LifecycleTest, StreamsLongerThanTheDrainDeadlineAreCut) {
  auto server = Start({"--memory-budget=64M", "--drain-deadline=300ms"});
  ASSERT_NE(server, nullptr);
  auto stub = server->NewStub();
  // Far longer than the drain deadline: the client reads slowly enough to keep them alive.
  grpc::ChannelArguments small_window;
  small_window.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  small_window.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  auto slow_stub = v1::Hyla::NewStub(server->NewChannel(small_window));
  OpenStream held(*slow_stub, SampledRequest("held open", 2000, 1));
  ASSERT_TRUE(held.ReadOne());
  const absl::Time signalled = absl::Now();
  server->Signal(SIGINT);
  const std::optional<int> code = server->WaitExit(absl::Seconds(30));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0);
  EXPECT_LT(absl::Now() - signalled, absl::Seconds(10));
  const grpc::Status st = held.Finish();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(server->Stderr().find("1 call(s) cut at the drain deadline"), std::string::npos)
      << server->Stderr();
}

}  // namespace
}  // namespace hyla::testing
