#include "service/server_flags.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace hyla::service {
namespace {

TEST(ServerFlagsTest, Defaults) {
  auto f = ParseServerFlags({});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->model, "");
  EXPECT_EQ(f->listen, "0.0.0.0:50051");
  EXPECT_EQ(f->device, "auto");
  EXPECT_EQ(f->precision, "bf16");
  EXPECT_EQ(f->workers, 0);  // auto: one per visible GPU (cuda) or 1 (cpu)
  EXPECT_EQ(f->memory_budget_bytes, int64_t{1} << 30);
  EXPECT_EQ(f->kv_cap_policy, KvCapPolicy::kReject);
  EXPECT_EQ(f->drain_deadline, absl::Seconds(30));
  EXPECT_EQ(f->auth_token, "");
  EXPECT_EQ(f->notify_threads, 1);
}

TEST(ServerFlagsTest, ParsesEveryFlag) {
  auto f = ParseServerFlags({"--model",
                             "/m",
                             "--listen=127.0.0.1:0",
                             "--metrics-listen",
                             "[::1]:9000",
                             "--device=cpu",
                             "--workers",
                             "3",
                             "--memory-budget=1.5G",
                             "--queue-bound",
                             "7",
                             "--max-context=4096",
                             "--kv-cap-tokens",
                             "512",
                             "--kv-cap-policy=evict-oldest",
                             "--session-ttl",
                             "10m",
                             "--max-sessions=9",
                             "--keepalive-time=2m",
                             "--keepalive-timeout",
                             "5s",
                             "--keepalive-min-ping-interval=10s",
                             "--keepalive-permit-without-calls=false",
                             "--max-connection-age=30m",
                             "--max-connection-age-grace=10m",
                             "--tls-cert",
                             "c.pem",
                             "--tls-key",
                             "k.pem",
                             "--auth-token=s3cret",
                             "--drain-deadline=45s",
                             "--stall-timeout",
                             "2s",
                             "--max-pending-tokens=4",
                             "--notify-threads=3"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->model, "/m");
  EXPECT_EQ(f->listen, "127.0.0.1:0");
  EXPECT_EQ(f->metrics_listen, "[::1]:9000");
  EXPECT_EQ(f->workers, 3);
  EXPECT_EQ(f->memory_budget_bytes, int64_t{3} << 29);
  EXPECT_EQ(f->queue_bound, 7);
  EXPECT_EQ(f->max_context, 4096);
  EXPECT_EQ(f->kv_cap_tokens, 512);
  EXPECT_EQ(f->kv_cap_policy, KvCapPolicy::kEvictOldest);
  EXPECT_EQ(f->session_ttl, absl::Minutes(10));
  EXPECT_EQ(f->max_sessions, 9);
  EXPECT_EQ(f->keepalive_time, absl::Minutes(2));
  EXPECT_EQ(f->keepalive_timeout, absl::Seconds(5));
  EXPECT_EQ(f->keepalive_min_ping_interval, absl::Seconds(10));
  EXPECT_FALSE(f->keepalive_permit_without_calls);
  EXPECT_EQ(f->max_connection_age, absl::Minutes(30));
  EXPECT_EQ(f->max_connection_age_grace, absl::Minutes(10));
  EXPECT_EQ(f->tls_cert, "c.pem");
  EXPECT_EQ(f->tls_key, "k.pem");
  EXPECT_EQ(f->auth_token, "s3cret");
  EXPECT_EQ(f->drain_deadline, absl::Seconds(45));
  EXPECT_EQ(f->stall_timeout, absl::Seconds(2));
  EXPECT_EQ(f->max_pending_tokens, 4);
  EXPECT_EQ(f->notify_threads, 3);
}

TEST(ServerFlagsTest, AuthTokenFromEnvironmentUnlessGiven) {
  EXPECT_EQ(ParseServerFlags({}, "env")->auth_token, "env");
  EXPECT_EQ(ParseServerFlags({"--auth-token=flag"}, "env")->auth_token, "flag");
}

TEST(ServerFlagsTest, BareBooleanFlag) {
  auto f = ParseServerFlags({"--keepalive-permit-without-calls", "--workers=2"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->keepalive_permit_without_calls);
  EXPECT_EQ(f->workers, 2);
}

// Every invalid value is refused with a message that starts with the flag's name.
TEST(ServerFlagsTest, ErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string flag;
  };
  const Case cases[] = {
      {{"--workers=-1"}, "--workers"},
      {{"--workers=abc"}, "--workers"},
      {{"--memory-budget=12Q"}, "--memory-budget"},
      {{"--memory-budget=-5M"}, "--memory-budget"},
      {{"--memory-budget="}, "--memory-budget"},
      {{"--queue-bound=0"}, "--queue-bound"},
      {{"--max-context=-1"}, "--max-context"},
      {{"--kv-cap-tokens=100"}, "--kv-cap-tokens"},
      {{"--kv-cap-policy=drop"}, "--kv-cap-policy"},
      {{"--session-ttl=soon"}, "--session-ttl"},
      {{"--session-ttl=-5s"}, "--session-ttl"},
      {{"--stall-timeout=0"}, "--stall-timeout"},
      {{"--drain-deadline=10"}, "--drain-deadline"},
      {{"--keepalive-time=0"}, "--keepalive-time"},
      {{"--keepalive-permit-without-calls=maybe"}, "--keepalive-permit-without-calls"},
      {{"--max-connection-age-grace=1m"}, "--max-connection-age-grace"},
      {{"--listen=localhost"}, "--listen"},
      {{"--listen=:50051"}, "--listen"},
      {{"--listen=host:99999"}, "--listen"},
      {{"--metrics-listen=::1:80"}, "--metrics-listen"},
      {{"--device=tpu"}, "--device"},
      {{"--precision=fp16"}, "--precision"},
      {{"--tls-cert=c.pem"}, "--tls-key"},
      {{"--tls-key=k.pem"}, "--tls-cert"},
      {{"--max-pending-tokens=0"}, "--max-pending-tokens"},
      {{"--notify-threads=0"}, "--notify-threads"},
      {{"--notify-threads=65"}, "--notify-threads"},
      {{"--max-sessions=-1"}, "--max-sessions"},
      {{"--auth-token="}, "--auth-token"},
      {{"--model"}, "--model"},
      {{"--bogus=1"}, "--bogus"},
  };
  for (const Case& c : cases) {
    auto f = ParseServerFlags(c.args);
    ASSERT_FALSE(f.ok()) << c.args[0];
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << c.args[0];
    EXPECT_EQ(f.status().message().substr(0, c.flag.size()), c.flag)
        << c.args[0] << " → " << f.status().message();
  }
  auto positional = ParseServerFlags({"model"});
  ASSERT_FALSE(positional.ok());
  EXPECT_NE(positional.status().message().find("unexpected argument"), absl::string_view::npos);
}

TEST(ServerFlagsTest, ByteSizes) {
  EXPECT_EQ(*ParseByteSize("f", "512"), 512);
  EXPECT_EQ(*ParseByteSize("f", "64K"), 65536);
  EXPECT_EQ(*ParseByteSize("f", "64k"), 65536);
  EXPECT_EQ(*ParseByteSize("f", "2M"), 2 << 20);
  EXPECT_EQ(*ParseByteSize("f", "2MiB"), 2 << 20);
  EXPECT_EQ(*ParseByteSize("f", "2MB"), 2 << 20);
  EXPECT_EQ(*ParseByteSize("f", "1.5G"), int64_t{3} << 29);
  EXPECT_EQ(*ParseByteSize("f", "1T"), int64_t{1} << 40);
  EXPECT_EQ(*ParseByteSize("f", "100B"), 100);
  EXPECT_FALSE(ParseByteSize("f", "0").ok());
  EXPECT_FALSE(ParseByteSize("f", "G").ok());
  EXPECT_FALSE(ParseByteSize("f", "1X").ok());
  EXPECT_FALSE(ParseByteSize("f", "1e30G").ok());
}

TEST(ServerFlagsTest, Durations) {
  EXPECT_EQ(*ParseDurationFlag("f", "0"), absl::ZeroDuration());
  EXPECT_EQ(*ParseDurationFlag("f", "250ms"), absl::Milliseconds(250));
  EXPECT_EQ(*ParseDurationFlag("f", "1h30m"), absl::Minutes(90));
  EXPECT_FALSE(ParseDurationFlag("f", "30").ok());
  EXPECT_FALSE(ParseDurationFlag("f", "inf").ok());
}

TEST(ServerFlagsTest, HostPort) {
  EXPECT_TRUE(ValidateHostPort("f", "0.0.0.0:50051").ok());
  EXPECT_TRUE(ValidateHostPort("f", "[::]:0").ok());
  EXPECT_TRUE(ValidateHostPort("f", "localhost:8080").ok());
  EXPECT_FALSE(ValidateHostPort("f", "[::1:80").ok());
  EXPECT_FALSE(ValidateHostPort("f", "host:-1").ok());
  EXPECT_FALSE(ValidateHostPort("f", "host:").ok());
}

TEST(ServerFlagsTest, HelpAndUsage) {
  EXPECT_TRUE(ParseServerFlags({"--help"})->help);
  const std::string usage = ServerUsage();
  for (const char* flag : {"--model",
                           "--listen",
                           "--metrics-listen",
                           "--device",
                           "--precision",
                           "--workers",
                           "--memory-budget",
                           "--queue-bound",
                           "--max-context",
                           "--kv-cap-tokens",
                           "--kv-cap-policy",
                           "--session-ttl",
                           "--max-sessions",
                           "--keepalive-time",
                           "--keepalive-timeout",
                           "--max-connection-age",
                           "--max-connection-age-grace",
                           "--tls-cert",
                           "--tls-key",
                           "--auth-token",
                           "--drain-deadline",
                           "--stall-timeout",
                           "--max-pending-tokens",
                           "--notify-threads"}) {
    EXPECT_NE(usage.find(flag), std::string::npos) << flag;
  }
}

}  // namespace
}  // namespace hyla::service

namespace hyla::service {
namespace {

TEST(ServerFlagsTest, HealthThreadsAndBatchFlags) {
  auto d = ParseServerFlags({});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->health_listen, "");
  EXPECT_EQ(d->threads, 0);
  EXPECT_EQ(d->max_batch, 0);
  EXPECT_EQ(d->token_budget, 512);
  EXPECT_EQ(d->prefill_chunk, 256);

  auto f = ParseServerFlags({"--health-listen=0.0.0.0:8081", "--threads", "6", "--max-batch=64",
                             "--token-budget=1024", "--prefill-chunk", "128"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->health_listen, "0.0.0.0:8081");
  EXPECT_EQ(f->threads, 6);
  EXPECT_EQ(f->max_batch, 64);
  EXPECT_EQ(f->token_budget, 1024);
  EXPECT_EQ(f->prefill_chunk, 128);

  // The boundary of the step rule: 64 - 1 + 256 = 319.
  EXPECT_TRUE(ParseServerFlags({"--max-batch=64", "--token-budget=319"}).ok());
  auto low = ParseServerFlags({"--max-batch=64", "--token-budget=318"});
  ASSERT_FALSE(low.ok());
  EXPECT_EQ(low.status().message(),
            "--token-budget: must be at least --max-batch - 1 + --prefill-chunk = 64 - 1 + 256 = "
            "319 (a prefill chunk must fit beside a full batch of decodes), got 318");
  // Without --max-batch the batch is resolved at start; a budget below one chunk fails here.
  auto chunk = ParseServerFlags({"--prefill-chunk=600"});
  ASSERT_FALSE(chunk.ok());
  EXPECT_NE(chunk.status().message().find("--token-budget: must be at least"), std::string::npos);

  struct Bad {
    std::vector<std::string> args;
    std::string flag;
  };
  for (const Bad& b : std::vector<Bad>{
           {{"--health-listen=nowhere"}, "--health-listen"},
           {{"--health-listen=0.0.0.0:50051"}, "--health-listen"},  // the gRPC port
           {{"--health-listen=0.0.0.0:9464"}, "--health-listen"},   // the metrics port
           {{"--threads=-1"}, "--threads"},
           {{"--threads=many"}, "--threads"},
           {{"--max-batch=-2"}, "--max-batch"},
           {{"--token-budget=0"}, "--token-budget"},
           {{"--prefill-chunk=0"}, "--prefill-chunk"},
       }) {
    auto r = ParseServerFlags(b.args);
    ASSERT_FALSE(r.ok()) << b.args.front();
    EXPECT_EQ(r.status().message().rfind(b.flag + ":", 0), 0u) << r.status().message();
  }
  // Port 0 on both: two free ports, no conflict.
  EXPECT_TRUE(ParseServerFlags({"--listen=127.0.0.1:0", "--health-listen=127.0.0.1:0"}).ok());
  EXPECT_NE(ServerUsage().find("--health-listen HOST:PORT"), std::string::npos);
}

}  // namespace
}  // namespace hyla::service
