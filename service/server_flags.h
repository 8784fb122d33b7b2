// Command-line flags of hyla-server: parsing and validation (every error names its flag), the
// value parsers they use (sizes with K/M/G suffixes, durations, HOST:PORT) and the --help text.
//
// Thread-safety: pure functions.
#ifndef HYLA_SERVICE_SERVER_FLAGS_H_
#define HYLA_SERVICE_SERVER_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "runtime/state/state_store.h"

namespace hyla::service {

struct ServerFlags {
  std::string model;                            // empty: the embedded default model
  std::string listen = "0.0.0.0:50051";         // gRPC
  std::string metrics_listen = "0.0.0.0:9464";  // Prometheus /metrics
  std::string health_listen;                    // plaintext grpc.health.v1 only; empty: none
  std::string device = "auto";                  // cpu | cuda | auto (cuda when a GPU is usable)
  std::string precision = "bf16";               // cuda: bf16 (weights + KV) or fp32 (exact)
  int workers = 0;                              // 0: one per visible GPU with --device cuda, else 1
  int threads = 0;    // CPU backend threads per worker; 0: the CPU quota / workers (server.cc)
  int max_batch = 0;  // sequences per step per worker; 0: min(64, state slots per worker)
  int64_t token_budget = 512;   // tokens per step per worker (decodes + prefill chunks)
  int64_t prefill_chunk = 256;  // prefill chunk tokens
  int64_t memory_budget_bytes = int64_t{1} << 30;  // state slots + KV blocks, all workers
  int queue_bound = 64;
  int64_t max_context = 0;    // 0: the model's max_position_embeddings
  int64_t kv_cap_tokens = 0;  // per sequence and KV stream; 0: no cap beyond the pool
  KvCapPolicy kv_cap_policy = KvCapPolicy::kReject;
  absl::Duration session_ttl = absl::Minutes(30);  // zero: sessions never expire
  int max_sessions = 1024;
  absl::Duration keepalive_time = absl::Seconds(60);
  absl::Duration keepalive_timeout = absl::Seconds(20);
  absl::Duration keepalive_min_ping_interval = absl::Seconds(30);
  bool keepalive_permit_without_calls = true;
  absl::Duration max_connection_age = absl::ZeroDuration();        // zero: unlimited
  absl::Duration max_connection_age_grace = absl::ZeroDuration();  // zero: unlimited
  std::string tls_cert;                                            // PEM files; both or neither
  std::string tls_key;
  std::string auth_token;  // empty: no authentication (also read from $HYLA_AUTH_TOKEN)
  absl::Duration drain_deadline = absl::Seconds(30);
  absl::Duration stall_timeout = absl::Seconds(30);
  int max_pending_tokens = 16;
  int notify_threads = 1;  // EngineOptions::notify_threads
  bool help = false;
};

// Parses argv[1..] ("--flag=value" or "--flag value"; booleans also bare). `env_auth_token` is
// the value of $HYLA_AUTH_TOKEN (used when --auth-token is absent). InvalidArgument naming the
// flag for an unknown flag, a missing or malformed value, or a value out of range.
absl::StatusOr<ServerFlags> ParseServerFlags(const std::vector<std::string>& args,
                                             const std::string& env_auth_token = "");

std::string ServerUsage();

// "512", "64K", "1.5G", "256MiB" → bytes (binary units: K = 1024). InvalidArgument naming `flag`.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view flag, absl::string_view value);
// "30s", "5m", "1h30m", "250ms", "0" → duration (non-negative). InvalidArgument naming `flag`.
absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view flag, absl::string_view value);
// Checks "HOST:PORT" ("[::1]:50051" for IPv6; port 0 = any free port). InvalidArgument naming
// `flag`.
absl::Status ValidateHostPort(absl::string_view flag, absl::string_view value);

// The engine's step rule: --token-budget >= --max-batch - 1 + --prefill-chunk, so that a prefill
// chunk always fits beside a full batch of decodes. InvalidArgument naming --token-budget.
absl::Status ValidateStepBudget(int max_batch, int64_t token_budget, int64_t prefill_chunk);

}  // namespace hyla::service

#endif  // HYLA_SERVICE_SERVER_FLAGS_H_
