#include "service/cli.h"

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "hyla/v1/hyla.grpc.pb.h"
#include "service/raw_clients.h"
#include "service/status_mapping.h"

namespace hyla::service {
namespace {

struct CliArgs {
  std::string server;
  std::string token;
  std::string tls_ca;
  std::optional<absl::Duration> timeout;
  std::map<std::string, std::vector<std::string>> flags;  // command flags, repeatable
  std::vector<std::string> positional;
};

// Flags that take no value.
bool IsBoolFlag(const std::string& name) { return name == "ignore-eos" || name == "help"; }

int UsageError(std::ostream& err, const std::string& message) {
  err << "hyla: " << message << "\n(see hyla --help)\n";
  return 2;
}

int RpcError(std::ostream& err, const grpc::Status& s) {
  err << "hyla: " << GrpcCodeName(s.error_code()) << ": " << s.error_message() << "\n";
  return 1;
}

std::string Flag(const CliArgs& a, const std::string& name, const std::string& def = "") {
  auto it = a.flags.find(name);
  return it == a.flags.end() || it->second.empty() ? def : it->second.back();
}

bool HasFlag(const CliArgs& a, const std::string& name) { return a.flags.count(name) > 0; }

std::shared_ptr<grpc::Channel> MakeChannel(const CliArgs& a, std::string* error) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (!a.tls_ca.empty()) {
    std::ifstream in(a.tls_ca, std::ios::binary);
    if (!in) {
      *error = absl::StrCat("--tls-ca: cannot read ", a.tls_ca);
      return nullptr;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ss.str();
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateChannel(a.server, creds);
}

// `session` is the session the call is about (empty: none): sent as the `session-id` metadata
// that Envoy hashes on (deploy/envoy/envoy.yaml), unless --affinity names another key (the root
// session of a fork family, whose replica holds the forks too).
void Prepare(const CliArgs& a, grpc::ClientContext* ctx, absl::Duration default_timeout,
             const std::string& session = "") {
  if (!a.token.empty()) ctx->AddMetadata("authorization", absl::StrCat("Bearer ", a.token));
  const std::string key = Flag(a, "affinity", session);
  if (!key.empty()) ctx->AddMetadata(std::string(kSessionIdMetadata), key);
  const absl::Duration t = a.timeout.value_or(default_timeout);
  if (t != absl::InfiniteDuration()) ctx->set_deadline(absl::ToChronoTime(absl::Now() + t));
}

std::string StateText(const v1::StateMemory& s) {
  return absl::StrCat("slot_bytes=", s.slot_bytes(), " kv_bytes=", s.kv_bytes(),
                      " kv_blocks=", s.kv_blocks(),
                      " softmax_equivalent_bytes=", s.softmax_equivalent_bytes(),
                      " context_tokens=", s.context_tokens());
}

std::string SessionText(const v1::SessionInfo& s) {
  return absl::StrCat("session_id=", s.session_id(), " context_tokens=", s.context_tokens(), " ",
                      StateText(s.state()), " idle_seconds=", s.idle_seconds(),
                      " busy=", s.busy() ? "true" : "false", " worker=", s.worker());
}

template <typename T>
bool ParseNumber(const CliArgs& a, const std::string& name, T* out, std::ostream& err) {
  if (!HasFlag(a, name)) return true;
  const std::string v = Flag(a, name);
  bool ok = false;
  if constexpr (std::is_floating_point_v<T>) {
    double d = 0;
    ok = absl::SimpleAtod(v, &d);
    *out = static_cast<T>(d);
  } else {
    ok = absl::SimpleAtoi(v, out);
  }
  if (!ok) err << "hyla: --" << name << ": expected a number, got \"" << v << "\"\n";
  return ok;
}

int Generate(const CliArgs& a, v1::Hyla::Stub& stub, std::ostream& out, std::ostream& err) {
  if (a.positional.size() != 2) return UsageError(err, "generate needs one PROMPT argument");
  v1::GenerateRequest req;
  req.set_text(a.positional[1]);
  req.set_session_id(Flag(a, "session"));
  int max_tokens = 0, top_k = 0;
  float temperature = 0, top_p = 0, min_p = 0;
  uint64_t seed = 0;
  if (!ParseNumber(a, "max-tokens", &max_tokens, err) || !ParseNumber(a, "top-k", &top_k, err) ||
      !ParseNumber(a, "temperature", &temperature, err) || !ParseNumber(a, "top-p", &top_p, err) ||
      !ParseNumber(a, "min-p", &min_p, err) || !ParseNumber(a, "seed", &seed, err)) {
    return 2;
  }
  req.mutable_stopping()->set_max_new_tokens(max_tokens);
  req.mutable_sampling()->set_top_k(top_k);
  if (HasFlag(a, "temperature")) req.mutable_sampling()->set_temperature(temperature);
  if (HasFlag(a, "top-p")) req.mutable_sampling()->set_top_p(top_p);
  if (HasFlag(a, "min-p")) req.mutable_sampling()->set_min_p(min_p);
  if (HasFlag(a, "seed")) req.mutable_sampling()->set_seed(seed);
  if (auto it = a.flags.find("stop"); it != a.flags.end()) {
    for (const std::string& s : it->second) req.mutable_stopping()->add_stop(s);
  }
  req.mutable_stopping()->set_ignore_eos(HasFlag(a, "ignore-eos"));

  grpc::ClientContext ctx;
  Prepare(a, &ctx, absl::InfiniteDuration(), Flag(a, "session"));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub.Generate(&ctx, req);
  v1::GenerateResponse resp;
  std::optional<v1::Finished> finished;
  while (reader->Read(&resp)) {
    out << resp.text() << std::flush;
    if (resp.has_finished()) finished = resp.finished();
  }
  grpc::Status st = reader->Finish();
  out << "\n" << std::flush;
  if (!st.ok()) return RpcError(err, st);
  if (finished.has_value()) {
    const v1::Usage& u = finished->usage();
    err << "finish=" << (finished->reason() == v1::FINISH_REASON_STOP ? "stop" : "length")
        << (finished->matched_stop().empty()
                ? ""
                : absl::StrCat(" matched_stop=", finished->matched_stop()))
        << " prompt_tokens=" << u.prompt_tokens() << " reused_tokens=" << u.reused_tokens()
        << " generated_tokens=" << u.generated_tokens() << " queue_seconds=" << u.queue_seconds()
        << " ttft_seconds=" << u.time_to_first_token_seconds()
        << " total_seconds=" << u.total_seconds() << " " << StateText(u.state()) << "\n";
  }
  return 0;
}

int Session(const CliArgs& a, v1::Hyla::Stub& stub, std::ostream& out, std::ostream& err) {
  if (a.positional.size() < 2) {
    return UsageError(err, "session needs a subcommand: create, get, fork, delete or list");
  }
  const std::string& sub = a.positional[1];
  const size_t nargs = a.positional.size() - 2;
  grpc::ClientContext ctx;
  // The session the call is about: create's --session, get/delete's ID, and for fork the
  // PARENT's ID, so that the child is created on the replica that holds the parent.
  std::string about = sub == "create" ? Flag(a, "session") : "";
  if ((sub == "get" || sub == "delete" || sub == "fork") && nargs >= 1) about = a.positional[2];
  Prepare(a, &ctx, absl::Seconds(30), sub == "list" ? "" : about);
  if (sub == "create") {
    if (nargs > 1) return UsageError(err, "session create takes at most one PREFIX");
    v1::CreateSessionRequest req;
    req.set_session_id(Flag(a, "session"));
    if (nargs == 1) req.set_text(a.positional[2]);
    v1::SessionInfo resp;
    grpc::Status st = stub.CreateSession(&ctx, req, &resp);
    if (!st.ok()) return RpcError(err, st);
    out << SessionText(resp) << "\n";
    return 0;
  }
  if (sub == "get" || sub == "delete") {
    if (nargs != 1) return UsageError(err, absl::StrCat("session ", sub, " needs one ID"));
    if (sub == "get") {
      v1::GetSessionRequest req;
      req.set_session_id(a.positional[2]);
      v1::SessionInfo resp;
      grpc::Status st = stub.GetSession(&ctx, req, &resp);
      if (!st.ok()) return RpcError(err, st);
      out << SessionText(resp) << "\n";
    } else {
      v1::DeleteSessionRequest req;
      req.set_session_id(a.positional[2]);
      v1::DeleteSessionResponse resp;
      grpc::Status st = stub.DeleteSession(&ctx, req, &resp);
      if (!st.ok()) return RpcError(err, st);
      out << "deleted " << a.positional[2] << "\n";
    }
    return 0;
  }
  if (sub == "fork") {
    if (nargs < 1 || nargs > 2) return UsageError(err, "session fork needs ID [NEW_ID]");
    v1::ForkSessionRequest req;
    req.set_session_id(a.positional[2]);
    if (nargs == 2) req.set_new_session_id(a.positional[3]);
    v1::SessionInfo resp;
    grpc::Status st = stub.ForkSession(&ctx, req, &resp);
    if (!st.ok()) return RpcError(err, st);
    out << SessionText(resp) << "\n";
    return 0;
  }
  if (sub == "list") {
    v1::ListSessionsResponse resp;
    grpc::Status st = stub.ListSessions(&ctx, v1::ListSessionsRequest(), &resp);
    if (!st.ok()) return RpcError(err, st);
    for (const v1::SessionInfo& s : resp.sessions()) out << SessionText(s) << "\n";
    return 0;
  }
  return UsageError(err, absl::StrCat("unknown session subcommand \"", sub, "\""));
}

int Info(const CliArgs& a, v1::Hyla::Stub& stub, std::ostream& out, std::ostream& err) {
  grpc::ClientContext ctx;
  Prepare(a, &ctx, absl::Seconds(30));
  v1::ModelInfo m;
  grpc::Status st = stub.GetModelInfo(&ctx, v1::GetModelInfoRequest(), &m);
  if (!st.ok()) return RpcError(err, st);
  out << "family=" << m.family() << "\nmodel_type=" << m.model_type()
      << "\nlayer_kinds=" << absl::StrJoin(m.layer_kinds(), ",")
      << "\nvocab_size=" << m.vocab_size() << "\nhidden_size=" << m.hidden_size()
      << "\nparameters=" << m.parameters() << "\nmax_context=" << m.max_context()
      << "\nmax_new_tokens_default=" << m.max_new_tokens_default()
      << "\nslot_bytes=" << m.slot_bytes() << "\nkv_block_bytes=" << m.kv_block_bytes()
      << "\nmemory_budget_bytes=" << m.memory_budget_bytes() << "\nstate_slots=" << m.state_slots()
      << "\nkv_blocks=" << m.kv_blocks() << "\ndevice=" << m.device() << "\nworkers=" << m.workers()
      << "\nbos_token_id=" << m.bos_token_id() << "\neos_token_id=" << m.eos_token_id() << "\n";
  return 0;
}

int Tokenize(const CliArgs& a, v1::Hyla::Stub& stub, std::ostream& out, std::ostream& err) {
  if (a.positional.size() != 2) return UsageError(err, "tokenize needs one TEXT argument");
  grpc::ClientContext ctx;
  Prepare(a, &ctx, absl::Seconds(30));
  v1::TokenizeRequest req;
  req.set_text(a.positional[1]);
  v1::TokenizeResponse resp;
  grpc::Status st = stub.Tokenize(&ctx, req, &resp);
  if (!st.ok()) return RpcError(err, st);
  out << absl::StrJoin(resp.ids(), " ") << "\n";
  return 0;
}

}  // namespace

std::string CliUsage() {
  return R"(Usage: hyla [--server HOST:PORT] [--token TOKEN] [--tls-ca FILE] [--timeout DURATION]
            COMMAND [flags] [args]

Commands:
  generate [--max-tokens N] [--session ID] [--temperature T] [--top-p P] [--top-k K]
           [--min-p P] [--seed S] [--stop STR]... [--ignore-eos] PROMPT
                          stream a continuation (text on stdout, usage on stderr)
  session create [--session ID] [PREFIX]
  session get ID | session fork ID [NEW_ID] | session delete ID | session list
                          generate and session calls send the metadata `session-id: ID` (the
                          session they are about; for fork the parent's ID), on which Envoy
                          routes a session to its replica; --affinity KEY sends KEY instead
                          (for a forked session: its family's first ID)
  info                    model, limits and memory plan of the server
  health [--service NAME] print the serving status; exit 0 only when SERVING
  tokenize TEXT           print the token ids of TEXT
  services                list the services (server reflection)

--server defaults to $HYLA_SERVER or localhost:50051; --token to $HYLA_AUTH_TOKEN.
)";
}

int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CliArgs a;
  const char* env_server = std::getenv("HYLA_SERVER");
  a.server = env_server != nullptr && *env_server != '\0' ? env_server : "localhost:50051";
  const char* env_token = std::getenv("HYLA_AUTH_TOKEN");
  if (env_token != nullptr) a.token = env_token;
  bool only_positional = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (only_positional || arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
      if (arg == "--") {
        only_positional = true;
        continue;
      }
      a.positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (!IsBoolFlag(name)) {
      if (i + 1 >= args.size()) return UsageError(err, absl::StrCat("--", name, " needs a value"));
      value = args[++i];
    }
    if (name == "server") {
      a.server = value;
    } else if (name == "token") {
      a.token = value;
    } else if (name == "tls-ca") {
      a.tls_ca = value;
    } else if (name == "timeout") {
      absl::Duration d;
      if (!absl::ParseDuration(value, &d) || d <= absl::ZeroDuration()) {
        return UsageError(
            err, absl::StrCat("--timeout: expected a duration such as 10s, got \"", value, "\""));
      }
      a.timeout = d;
    } else {
      static const char* kKnown[] = {"max-tokens", "session", "temperature", "top-p",
                                     "top-k",      "min-p",   "seed",        "stop",
                                     "ignore-eos", "service", "help",        "affinity"};
      bool known = false;
      for (const char* k : kKnown) known = known || name == k;
      if (!known) return UsageError(err, absl::StrCat("unknown flag --", name));
      a.flags[name].push_back(value);
    }
  }
  if (HasFlag(a, "help") || a.positional.empty()) {
    (a.positional.empty() && !HasFlag(a, "help") ? err : out) << CliUsage();
    return a.positional.empty() && !HasFlag(a, "help") ? 2 : 0;
  }
  std::string error;
  std::shared_ptr<grpc::Channel> channel = MakeChannel(a, &error);
  if (channel == nullptr) return UsageError(err, error);
  const std::string& command = a.positional[0];

  if (command == "health") {
    auto status = CheckHealth(channel, Flag(a, "service"), a.timeout.value_or(absl::Seconds(10)));
    if (!status.ok()) {
      err << "hyla: health: " << status.status().message() << "\n";
      out << "UNREACHABLE_OR_UNKNOWN\n";
      return 1;
    }
    out << ServingStatusName(*status) << "\n";
    return *status == ServingStatus::kServing ? 0 : 1;
  }
  if (command == "services") {
    auto names = ListServices(channel, a.timeout.value_or(absl::Seconds(10)));
    if (!names.ok()) {
      err << "hyla: services: " << names.status().message() << "\n";
      return 1;
    }
    for (const std::string& n : *names) out << n << "\n";
    return 0;
  }
  v1::Hyla::Stub stub(channel);
  if (command == "generate") return Generate(a, stub, out, err);
  if (command == "session") return Session(a, stub, out, err);
  if (command == "info") return Info(a, stub, out, err);
  if (command == "tokenize") return Tokenize(a, stub, out, err);
  return UsageError(err, absl::StrCat("unknown command \"", command, "\""));
}

}  // namespace hyla::service
