#include "service/server_flags.h"

#include <cctype>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "runtime/base/status_macros.h"
#include "runtime/state/state_layout.h"

namespace hyla::service {
namespace {

absl::Status Bad(absl::string_view flag, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", why));
}

absl::StatusOr<int64_t> ParseInt(absl::string_view flag, absl::string_view value, int64_t lo,
                                 int64_t hi) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(value, &v)) {
    return Bad(flag, absl::StrCat("expected an integer, got \"", value, "\""));
  }
  if (v < lo || v > hi) {
    return Bad(flag, absl::StrCat("must be in [", lo, ", ", hi, "], got ", v));
  }
  return v;
}

absl::StatusOr<bool> ParseBool(absl::string_view flag, absl::string_view value) {
  const std::string v = absl::AsciiStrToLower(value);
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  return Bad(flag, absl::StrCat("expected true or false, got \"", value, "\""));
}

}  // namespace

absl::StatusOr<int64_t> ParseByteSize(absl::string_view flag, absl::string_view value) {
  std::string v(absl::StripAsciiWhitespace(value));
  if (v.empty()) return Bad(flag, "expected a size in bytes (e.g. 512M, 4G), got nothing");
  size_t n = 0;
  while (n < v.size() && (std::isdigit(static_cast<unsigned char>(v[n])) || v[n] == '.')) ++n;
  const std::string number = v.substr(0, n);
  std::string suffix = absl::AsciiStrToUpper(v.substr(n));
  if (absl::EndsWith(suffix, "IB"))
    suffix = suffix.substr(0, suffix.size() - 2);
  else if (suffix.size() > 1 && absl::EndsWith(suffix, "B"))
    suffix.pop_back();
  else if (suffix == "B")
    suffix.clear();
  double scale = 1;
  if (suffix == "K")
    scale = 1024.0;
  else if (suffix == "M")
    scale = 1024.0 * 1024;
  else if (suffix == "G")
    scale = 1024.0 * 1024 * 1024;
  else if (suffix == "T")
    scale = 1024.0 * 1024 * 1024 * 1024;
  else if (!suffix.empty()) {
    return Bad(flag, absl::StrCat("unknown size suffix in \"", value, "\" (use K, M, G or T)"));
  }
  double d = 0;
  if (number.empty() || !absl::SimpleAtod(number, &d) || !std::isfinite(d)) {
    return Bad(flag, absl::StrCat("expected a size in bytes (e.g. 512M, 4G), got \"", value, "\""));
  }
  const double bytes = d * scale;
  if (bytes < 1 || bytes > static_cast<double>(std::numeric_limits<int64_t>::max() / 2)) {
    return Bad(flag, absl::StrCat("size out of range: \"", value, "\""));
  }
  return static_cast<int64_t>(bytes);
}

absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view flag, absl::string_view value) {
  absl::Duration d;
  if (value == "0") return absl::ZeroDuration();
  if (!absl::ParseDuration(value, &d) || d == absl::InfiniteDuration()) {
    return Bad(flag, absl::StrCat("expected a duration such as 250ms, 30s, 5m or 1h, got \"", value,
                                  "\""));
  }
  if (d < absl::ZeroDuration()) {
    return Bad(flag, absl::StrCat("must not be negative, got ", value));
  }
  return d;
}

absl::Status ValidateHostPort(absl::string_view flag, absl::string_view value) {
  const size_t colon = value.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return Bad(flag, absl::StrCat("expected HOST:PORT, got \"", value, "\""));
  }
  absl::string_view host = value.substr(0, colon);
  if (absl::StartsWith(host, "[") != absl::EndsWith(host, "]") || host == "[]") {
    return Bad(flag, absl::StrCat("malformed IPv6 host in \"", value, "\" (use [::1]:PORT)"));
  }
  if (!absl::StartsWith(host, "[") && absl::StrContains(host, ':')) {
    return Bad(flag, absl::StrCat("IPv6 hosts need brackets: \"", value, "\" (use [::1]:PORT)"));
  }
  int port = 0;
  if (!absl::SimpleAtoi(value.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return Bad(flag, absl::StrCat("port must be a number in [0, 65535], in \"", value, "\""));
  }
  return absl::OkStatus();
}

absl::Status ValidateStepBudget(int max_batch, int64_t token_budget, int64_t prefill_chunk) {
  const int64_t need = int64_t{max_batch} - 1 + prefill_chunk;
  if (token_budget < need) {
    return Bad("token-budget",
               absl::StrCat("must be at least --max-batch - 1 + --prefill-chunk = ", max_batch,
                            " - 1 + ", prefill_chunk, " = ", need,
                            " (a prefill chunk must fit beside a full batch of decodes), got ",
                            token_budget));
  }
  return absl::OkStatus();
}

std::string ServerUsage() {
  return R"(Usage: hyla-server [flags]

Serves a hybrid linear/softmax attention language model over gRPC (hyla.v1.Hyla, grpc.health.v1,
server reflection) and Prometheus metrics over HTTP (/metrics).

Model and device:
  --model DIR                  model directory (config.json + *.safetensors); default: the
                               embedded default model ($HYLA_DEFAULT_MODEL, <bin>/../share/hyla/
                               models/default, or the source tree's models/default)
  --device auto|cuda|cpu       backend; auto: cuda when this build has the CUDA backend and a
                               GPU is visible, else cpu. With cuda, worker i runs on GPU
                               i mod (visible GPUs) [auto]
  --precision bf16|fp32        CUDA numerics: bf16 weights and KV cache (serving) or fp32
                               (exact against fp32 checkpoints); state is fp32 in both [bf16]
  --workers N                  workers, each with its own backend and scheduler thread; 0: one
                               per visible GPU with --device cuda, else 1 [0]
  --threads N                  CPU backend threads per worker; 0: the container's CPU quota
                               (cgroup cpu.max or cfs_quota/period, rounded up; else the
                               hardware threads) divided by --workers [0]
Batching (per worker):
  --max-batch N                sequences per step; 0: min(64, state slots per worker) [0]
  --token-budget N             tokens per step (decodes + prefill chunks); at least
                               --max-batch - 1 + --prefill-chunk [512]
  --prefill-chunk N            prefill chunk tokens [256]
Listeners:
  --listen HOST:PORT           gRPC address [0.0.0.0:50051] (port 0: any free port)
  --metrics-listen HOST:PORT   Prometheus address [0.0.0.0:9464] (port 0: any free port)
  --health-listen HOST:PORT    plaintext listener serving only grpc.health.v1 (the same
                               statuses as --listen), for Kubernetes gRPC probes when --listen
                               uses TLS; default: none
Memory and admission:
  --memory-budget SIZE         state memory (slots + KV blocks) of all workers, K/M/G suffixes [1G]
  --queue-bound N              requests waiting for admission at most; beyond: UNAVAILABLE [64]
  --max-context N              longest session context + prompt + output; 0: the model's [0]
  --kv-cap-tokens N            softmax-cache tokens per sequence and KV stream; 0: no cap [0]
  --kv-cap-policy P            at the cap: reject (OUT_OF_RANGE) | evict-oldest [reject]
Sessions:
  --session-ttl DURATION       idle sessions expire after this; 0: never [30m]
  --max-sessions N             sessions at most (idle ones are evicted LRU first) [1024]
Streams:
  --stall-timeout DURATION     end a stream whose client reads nothing for this long [30s]
  --max-pending-tokens N       messages queued per stream before tokens are merged [16]
  --notify-threads N           threads per worker that write the streams' tokens (gRPC) [1]
  --drain-deadline DURATION    on SIGTERM/SIGINT, time in-flight calls get to finish [30s]
Connections:
  --keepalive-time DURATION    server keepalive ping interval [60s]
  --keepalive-timeout DURATION ping acknowledgement timeout [20s]
  --keepalive-min-ping-interval DURATION
                               shortest client ping interval allowed [30s]
  --keepalive-permit-without-calls BOOL
                               allow client pings without calls [true]
  --max-connection-age DURATION
                               close connections after this (load balancing); 0: never [0]
  --max-connection-age-grace DURATION
                               time streams get after that; 0: unlimited [0]
Security:
  --tls-cert FILE --tls-key FILE
                               serve TLS with this PEM certificate chain and private key
  --auth-token TOKEN           require "authorization: Bearer TOKEN" on hyla.v1.Hyla calls
                               (health and reflection stay open); also $HYLA_AUTH_TOKEN
  --help                       this text
)";
}

absl::StatusOr<ServerFlags> ParseServerFlags(const std::vector<std::string>& args,
                                             const std::string& env_auth_token) {
  ServerFlags f;
  bool auth_set = false;
  using Setter = std::function<absl::Status(absl::string_view flag, absl::string_view value)>;
  auto duration = [](absl::Duration* out) -> Setter {
    return [out](absl::string_view flag, absl::string_view v) -> absl::Status {
      HYLA_ASSIGN_OR_RETURN(*out, ParseDurationFlag(flag, v));
      return absl::OkStatus();
    };
  };
  auto integer = [](int64_t* out, int64_t lo, int64_t hi) -> Setter {
    return [out, lo, hi](absl::string_view flag, absl::string_view v) -> absl::Status {
      HYLA_ASSIGN_OR_RETURN(*out, ParseInt(flag, v, lo, hi));
      return absl::OkStatus();
    };
  };
  auto int32 = [](int* out, int64_t lo, int64_t hi) -> Setter {
    return [out, lo, hi](absl::string_view flag, absl::string_view v) -> absl::Status {
      HYLA_ASSIGN_OR_RETURN(int64_t x, ParseInt(flag, v, lo, hi));
      *out = static_cast<int>(x);
      return absl::OkStatus();
    };
  };
  auto text = [](std::string* out) -> Setter {
    return [out](absl::string_view flag, absl::string_view v) -> absl::Status {
      if (v.empty()) return Bad(flag, "must not be empty");
      *out = std::string(v);
      return absl::OkStatus();
    };
  };
  auto host_port = [](std::string* out) -> Setter {
    return [out](absl::string_view flag, absl::string_view v) -> absl::Status {
      HYLA_RETURN_IF_ERROR(ValidateHostPort(flag, v));
      *out = std::string(v);
      return absl::OkStatus();
    };
  };
  const std::map<std::string, Setter> setters = {
      {"model", text(&f.model)},
      {"listen", host_port(&f.listen)},
      {"metrics-listen", host_port(&f.metrics_listen)},
      {"device",
       [&f](absl::string_view flag, absl::string_view v) -> absl::Status {
         if (v != "cpu" && v != "cuda" && v != "auto") {
           return Bad(flag,
                      absl::StrCat("unsupported device \"", v, "\" (expected cpu, cuda or auto)"));
         }
         f.device = std::string(v);
         return absl::OkStatus();
       }},
      {"precision",
       [&f](absl::string_view flag, absl::string_view v) -> absl::Status {
         if (v != "bf16" && v != "fp32") {
           return Bad(flag,
                      absl::StrCat("unsupported precision \"", v, "\" (expected bf16 or fp32)"));
         }
         f.precision = std::string(v);
         return absl::OkStatus();
       }},
      {"health-listen", host_port(&f.health_listen)},
      {"workers", int32(&f.workers, 0, 256)},
      {"threads", int32(&f.threads, 0, 1024)},
      {"max-batch", int32(&f.max_batch, 0, 4096)},
      {"token-budget", integer(&f.token_budget, 1, int64_t{1} << 20)},
      {"prefill-chunk", integer(&f.prefill_chunk, 1, int64_t{1} << 20)},
      {"memory-budget",
       [&f](absl::string_view flag, absl::string_view v) -> absl::Status {
         HYLA_ASSIGN_OR_RETURN(f.memory_budget_bytes, ParseByteSize(flag, v));
         return absl::OkStatus();
       }},
      {"queue-bound", int32(&f.queue_bound, 1, 1 << 20)},
      {"max-context", integer(&f.max_context, 0, int64_t{1} << 31)},
      {"kv-cap-tokens", integer(&f.kv_cap_tokens, 0, int64_t{1} << 40)},
      {"kv-cap-policy",
       [&f](absl::string_view flag, absl::string_view v) -> absl::Status {
         if (v == "reject") {
           f.kv_cap_policy = KvCapPolicy::kReject;
         } else if (v == "evict-oldest") {
           f.kv_cap_policy = KvCapPolicy::kEvictOldest;
         } else {
           return Bad(flag, absl::StrCat("expected reject or evict-oldest, got \"", v, "\""));
         }
         return absl::OkStatus();
       }},
      {"session-ttl", duration(&f.session_ttl)},
      {"max-sessions", int32(&f.max_sessions, 0, 1 << 24)},
      {"keepalive-time", duration(&f.keepalive_time)},
      {"keepalive-timeout", duration(&f.keepalive_timeout)},
      {"keepalive-min-ping-interval", duration(&f.keepalive_min_ping_interval)},
      {"keepalive-permit-without-calls",
       [&f](absl::string_view flag, absl::string_view v) -> absl::Status {
         HYLA_ASSIGN_OR_RETURN(f.keepalive_permit_without_calls, ParseBool(flag, v));
         return absl::OkStatus();
       }},
      {"max-connection-age", duration(&f.max_connection_age)},
      {"max-connection-age-grace", duration(&f.max_connection_age_grace)},
      {"tls-cert", text(&f.tls_cert)},
      {"tls-key", text(&f.tls_key)},
      {"auth-token",
       [&f, &auth_set](absl::string_view flag, absl::string_view v) -> absl::Status {
         if (v.empty()) return Bad(flag, "must not be empty");
         f.auth_token = std::string(v);
         auth_set = true;
         return absl::OkStatus();
       }},
      {"drain-deadline", duration(&f.drain_deadline)},
      {"stall-timeout", duration(&f.stall_timeout)},
      {"max-pending-tokens", int32(&f.max_pending_tokens, 1, 1 << 20)},
      {"notify-threads", int32(&f.notify_threads, 1, 64)},
  };
  const std::map<std::string, bool*> booleans = {
      {"keepalive-permit-without-calls", &f.keepalive_permit_without_calls}};

  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (arg == "--help" || arg == "-h") {
      f.help = true;
      continue;
    }
    if (!absl::ConsumePrefix(&arg, "--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument \"", args[i], "\" (flags start with --; see --help)"));
    }
    std::string name(arg);
    std::string value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); eq != absl::string_view::npos) {
      name = std::string(arg.substr(0, eq));
      value = std::string(arg.substr(eq + 1));
      has_value = true;
    }
    auto it = setters.find(name);
    if (it == setters.end()) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": unknown flag (see --help)"));
    }
    if (!has_value) {
      if (booleans.count(name) > 0 &&
          (i + 1 >= args.size() || absl::StartsWith(args[i + 1], "--"))) {
        *booleans.at(name) = true;
        continue;
      }
      if (i + 1 >= args.size()) return Bad(name, "needs a value");
      value = args[++i];
    }
    HYLA_RETURN_IF_ERROR(it->second(name, value));
  }

  // Cross-flag checks.
  if (f.tls_cert.empty() != f.tls_key.empty()) {
    return absl::InvalidArgumentError(f.tls_cert.empty() ? "--tls-cert: needed with --tls-key"
                                                         : "--tls-key: needed with --tls-cert");
  }
  if (f.stall_timeout <= absl::ZeroDuration()) {
    return Bad("stall-timeout", "must be positive");
  }
  if (f.keepalive_time <= absl::ZeroDuration()) return Bad("keepalive-time", "must be positive");
  if (f.keepalive_timeout <= absl::ZeroDuration()) {
    return Bad("keepalive-timeout", "must be positive");
  }
  if (f.max_connection_age_grace > absl::ZeroDuration() &&
      f.max_connection_age == absl::ZeroDuration()) {
    return Bad("max-connection-age-grace", "needs --max-connection-age");
  }
  if (f.kv_cap_tokens % kBlockTokens != 0) {
    return Bad("kv-cap-tokens", absl::StrCat("must be a multiple of the ", kBlockTokens,
                                             "-token KV block, got ", f.kv_cap_tokens));
  }
  if (f.max_batch > 0) {
    HYLA_RETURN_IF_ERROR(ValidateStepBudget(f.max_batch, f.token_budget, f.prefill_chunk));
  } else if (f.token_budget < f.prefill_chunk) {
    HYLA_RETURN_IF_ERROR(ValidateStepBudget(1, f.token_budget, f.prefill_chunk));
  }
  if (!f.health_listen.empty()) {
    const bool fixed_port = !absl::EndsWith(f.health_listen, ":0");
    if (fixed_port && (f.health_listen == f.listen || f.health_listen == f.metrics_listen)) {
      return Bad(
          "health-listen",
          absl::StrCat("must differ from --listen and --metrics-listen, got ", f.health_listen));
    }
  }
  if (!auth_set && !env_auth_token.empty()) f.auth_token = env_auth_token;
  return f;
}

}  // namespace hyla::service
