#include "tests/service/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tools/model_generator.h"

namespace hyla::testing {
namespace {

// argv/envp for execve; the strings must outlive the call.
std::vector<char*> CStrings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (std::string& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::vector<std::string> ChildEnvironment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv(*e);
    // The tests decide about authentication and servers explicitly.
    if (absl::StartsWith(kv, "HYLA_AUTH_TOKEN=") || absl::StartsWith(kv, "HYLA_SERVER=")) continue;
    env.push_back(kv);
  }
  for (const std::string& kv : extra) env.push_back(kv);
  return env;
}

std::string ReadAll(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return out;
    }
  }
}

std::optional<std::string> FieldAfter(const std::string& text, const std::string& key) {
  const size_t at = text.find(key);
  if (at == std::string::npos) return std::nullopt;
  const size_t start = at + key.size();
  const size_t end = text.find_first_of(" \n", start);
  return text.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

}  // namespace

// The built-in paths can be overridden from the environment, so that a bundle of the test
// programs runs on another machine (scripts/device_bundle.sh): HYLA_TEST_SERVER_BIN,
// HYLA_TEST_CLI_BIN, HYLA_TEST_SOURCE_DIR.
std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}
std::string ServerBinary() { return EnvOr("HYLA_TEST_SERVER_BIN", HYLA_SERVER_BIN); }
std::string CliBinary() { return EnvOr("HYLA_TEST_CLI_BIN", HYLA_CLI_BIN); }
std::string SourceDir() { return EnvOr("HYLA_TEST_SOURCE_DIR", HYLA_SOURCE_DIR); }
std::string DefaultModelDir() { return SourceDir() + "/models/default"; }
std::string ExpectedDevice() {
  return absl::StrContains(EnvOr("HYLA_TEST_SERVER_ARGS", ""), "--device=cuda") ? "cuda" : "cpu";
}

std::string TestModelDir() {
  static const std::string* const dir = [] {
    char tmpl[] = "/tmp/hyla_service_test_model_XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return new std::string();
    auto* d = new std::string(tmpl);
    absl::StatusOr<tools::ModelShape> shape = tools::PresetShape(Family::kNatsl, "tiny");
    tools::GeneratorOptions options;
    if (shape.ok()) options.shape = *shape;
    options.seed = 0;
    options.preset = "tiny";
    const absl::Status st = shape.ok() ? tools::GenerateModel(options, *d) : shape.status();
    if (!st.ok()) {
      std::fprintf(stderr, "cannot generate the test model: %s\n",
                   std::string(st.message()).c_str());
      d->clear();
      return d;
    }
    std::atexit([] {
      const std::string m = TestModelDir();
      std::remove((m + "/config.json").c_str());
      std::remove((m + "/model.safetensors").c_str());
      rmdir(m.c_str());
    });
    return d;
  }();
  return *dir;
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(std::vector<std::string> args,
                                                                    absl::Duration timeout) {
  auto has = [&args](const std::string& flag) {
    for (const std::string& a : args) {
      if (a == flag || absl::StartsWith(a, flag + "=")) return true;
    }
    return false;
  };
  if (!has("--listen")) args.push_back("--listen=127.0.0.1:0");
  if (!has("--metrics-listen")) args.push_back("--metrics-listen=127.0.0.1:0");
  if (!has("--model")) args.push_back("--model=" + TestModelDir());
  // HYLA_TEST_SERVER_ARGS: extra flags for every server (e.g. "--device=cuda" to run the suite on
  // the CUDA backend), unless the test sets the same flag itself.
  for (const absl::string_view extra :
       absl::StrSplit(EnvOr("HYLA_TEST_SERVER_ARGS", ""), ' ', absl::SkipEmpty())) {
    const std::string flag(extra.substr(0, extra.find('=')));
    if (!has(flag)) args.push_back(std::string(extra));
  }
  args.erase(std::remove(args.begin(), args.end(), std::string("--model=")), args.end());
  std::vector<std::string> argv = {ServerBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<std::string> env = ChildEnvironment({});

  int err_pipe[2];
  if (pipe2(err_pipe, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  std::vector<char*> cargv = CStrings(argv);
  std::vector<char*> cenv = CStrings(env);
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
    const int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, STDIN_FILENO);
    dup2(devnull, STDOUT_FILENO);
    dup2(err_pipe[1], STDERR_FILENO);
    execve(cargv[0], cargv.data(), cenv.data());
    _exit(127);
  }
  close(err_pipe[1]);
  std::unique_ptr<ServerProcess> p(new ServerProcess());
  p->pid_ = pid;
  const int fd = err_pipe[0];
  ServerProcess* raw = p.get();
  p->reader_ = std::thread([raw, fd] { raw->ReadStderr(fd); });
  p->reaper_ = std::thread([raw] { raw->Reap(); });

  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&p->mu_);
  auto ready = [raw]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(raw->mu_) {
    return raw->exit_code_.has_value() || raw->stderr_closed_ ||
           absl::StrContains(raw->stderr_, "hyla-server: listening grpc=");
  };
  p->mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  const std::string log = p->stderr_;
  if (!absl::StrContains(log, "hyla-server: listening grpc=")) {
    return absl::UnavailableError(absl::StrCat("hyla-server did not start: ", log));
  }
  p->grpc_address_ = FieldAfter(log, "listening grpc=").value_or("");
  p->metrics_address_ = FieldAfter(log, " metrics=").value_or("");
  p->health_address_ = FieldAfter(log, " health=").value_or("");
  return p;
}

ServerProcess::~ServerProcess() {
  {
    absl::MutexLock lock(&mu_);
    if (!exit_code_.has_value()) kill(pid_, SIGKILL);
  }
  if (reaper_.joinable()) reaper_.join();
  if (reader_.joinable()) reader_.join();
}

void ServerProcess::ReadStderr(int fd) {
  char buf[4096];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    absl::MutexLock lock(&mu_);
    if (n <= 0) {
      stderr_closed_ = true;
      break;
    }
    stderr_.append(buf, static_cast<size_t>(n));
  }
  close(fd);
}

void ServerProcess::Reap() {
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  absl::MutexLock lock(&mu_);
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void ServerProcess::Signal(int sig) const { kill(pid_, sig); }

std::optional<int> ServerProcess::WaitExit(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto exited = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return exit_code_.has_value(); };
  mu_.AwaitWithDeadline(absl::Condition(&exited), absl::Now() + timeout);
  return exit_code_;
}

std::string ServerProcess::Stderr() const {
  absl::MutexLock lock(&mu_);
  return stderr_;
}

bool ServerProcess::WaitForStderr(const std::string& text, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto found = [this, &text]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stderr_closed_ || absl::StrContains(stderr_, text);
  };
  mu_.AwaitWithDeadline(absl::Condition(&found), absl::Now() + timeout);
  return absl::StrContains(stderr_, text);
}

std::shared_ptr<grpc::Channel> ServerProcess::NewChannel(const grpc::ChannelArguments& args) const {
  return grpc::CreateCustomChannel(grpc_address_, grpc::InsecureChannelCredentials(), args);
}

std::unique_ptr<v1::Hyla::Stub> ServerProcess::NewStub() const {
  return v1::Hyla::NewStub(NewChannel());
}

absl::StatusOr<std::string> ServerProcess::ScrapeMetrics() const {
  const size_t colon = metrics_address_.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(metrics_address_.substr(colon + 1), &port)) {
    return absl::InternalError("no metrics address");
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return absl::UnavailableError("cannot connect to the metrics listener");
  }
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("cannot send the metrics request");
  }
  const std::string response = ReadAll(fd);
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.") || !absl::StrContains(response.substr(0, 16), "200") ||
      body == std::string::npos) {
    return absl::UnavailableError(absl::StrCat("bad metrics response: ", response.substr(0, 200)));
  }
  return response.substr(body + 4);
}

ProgramResult RunProgram(const std::vector<std::string>& argv_in,
                         const std::vector<std::string>& extra_env, const std::string& stdin_text) {
  std::vector<std::string> argv = argv_in;
  std::vector<std::string> env = ChildEnvironment(extra_env);
  int out_pipe[2], err_pipe[2], in_pipe[2];
  ProgramResult r;
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0 ||
      pipe2(in_pipe, O_CLOEXEC) != 0) {
    return r;
  }
  std::vector<char*> cargv = CStrings(argv);
  std::vector<char*> cenv = CStrings(env);
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(in_pipe[0], STDIN_FILENO);
    dup2(out_pipe[1], STDOUT_FILENO);
    dup2(err_pipe[1], STDERR_FILENO);
    execve(cargv[0], cargv.data(), cenv.data());
    _exit(127);
  }
  close(in_pipe[0]);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (!stdin_text.empty()) {
    (void)!write(in_pipe[1], stdin_text.data(), stdin_text.size());
  }
  close(in_pipe[1]);
  std::thread err_reader([&r, fd = err_pipe[0]] { r.err = ReadAll(fd); });
  r.out = ReadAll(out_pipe[0]);
  err_reader.join();
  close(out_pipe[0]);
  close(err_pipe[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::vector<Sample> ParseExposition(const std::string& text) {
  std::vector<Sample> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t pos = 0;
    while (pos < line.size() && line[pos] != '{' && line[pos] != ' ') ++pos;
    s.name = std::string(line.substr(0, pos));
    if (pos < line.size() && line[pos] == '{') {
      ++pos;
      while (pos < line.size() && line[pos] != '}') {
        const size_t eq = line.find('=', pos);
        if (eq == absl::string_view::npos) break;
        const std::string key(line.substr(pos, eq - pos));
        size_t v = eq + 2;  // after ="
        std::string value;
        while (v < line.size() && line[v] != '"') {
          if (line[v] == '\\' && v + 1 < line.size()) ++v;
          value.push_back(line[v++]);
        }
        s.labels[key] = value;
        pos = v + 1;
        if (pos < line.size() && line[pos] == ',') ++pos;
      }
      ++pos;  // '}'
    }
    absl::string_view rest = absl::StripAsciiWhitespace(line.substr(std::min(pos, line.size())));
    const size_t sp = rest.find(' ');
    if (sp != absl::string_view::npos) rest = rest.substr(0, sp);  // a timestamp follows
    double v = 0;
    if (rest == "+Inf") {
      v = std::numeric_limits<double>::infinity();
    } else if (rest == "NaN") {
      v = std::nan("");
    } else if (!absl::SimpleAtod(rest, &v)) {
      continue;
    }
    s.value = v;
    out.push_back(std::move(s));
  }
  return out;
}

std::optional<double> FindSample(const std::vector<Sample>& samples, const std::string& name,
                                 const std::map<std::string, std::string>& labels) {
  std::optional<double> found;
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) {
        match = false;
        break;
      }
    }
    if (!match) continue;
    if (found.has_value()) return std::nullopt;  // ambiguous
    found = s.value;
  }
  return found;
}

double Metric(const ServerProcess& server, const std::string& name,
              const std::map<std::string, std::string>& labels) {
  absl::StatusOr<std::string> text = server.ScrapeMetrics();
  if (!text.ok()) return std::nan("");
  return FindSample(ParseExposition(*text), name, labels).value_or(std::nan(""));
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));  // polling interval of an observable condition
  }
  return true;
}

GenerateResult RunGenerate(v1::Hyla::Stub& stub, const v1::GenerateRequest& request,
                           std::optional<absl::Duration> timeout, const std::string& token) {
  GenerateResult r;
  grpc::ClientContext ctx;
  if (timeout.has_value()) ctx.set_deadline(absl::ToChronoTime(absl::Now() + *timeout));
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub.Generate(&ctx, request);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    ++r.messages;
    r.token_ids.insert(r.token_ids.end(), resp.token_ids().begin(), resp.token_ids().end());
    r.text += resp.text();
    if (resp.has_finished()) r.finished = resp.finished();
  }
  r.status = reader->Finish();
  for (const auto& [k, v] : ctx.GetServerTrailingMetadata()) {
    r.trailing.emplace(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
  }
  return r;
}

v1::GenerateRequest SampledRequest(const std::string& text, int max_new_tokens, uint64_t seed) {
  v1::GenerateRequest r;
  r.set_text(text);
  r.mutable_sampling()->set_temperature(0.8f);
  r.mutable_sampling()->set_top_p(0.95f);
  r.mutable_sampling()->set_seed(seed);
  r.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  r.mutable_stopping()->set_ignore_eos(true);
  return r;
}

}  // namespace hyla::testing
