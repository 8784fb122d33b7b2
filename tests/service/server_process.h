// Test harness for the service integration tests: a real hyla-server process on 127.0.0.1 (any
// free port: the server binds port 0 and its start-up log says which), its stderr, its exit code,
// its /metrics (scraped over HTTP and parsed), and small gRPC helpers.
//
// Waiting: start-up and exit are observed through the server's stderr and waitpid (condition
// variables, no polling); conditions that only the server knows (a gauge reaching a value) are
// polled with a deadline by WaitFor.
//
// Thread-safety: ServerProcess is thread-safe. The helpers are reentrant.
#ifndef HYLA_TESTS_SERVICE_SERVER_PROCESS_H_
#define HYLA_TESTS_SERVICE_SERVER_PROCESS_H_

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "hyla/v1/hyla.grpc.pb.h"

namespace hyla::testing {

// Paths baked in by tests/service/CMakeLists.txt.
std::string ServerBinary();
std::string CliBinary();
// The backend the servers of this run use: "cuda" when HYLA_TEST_SERVER_ARGS has --device=cuda,
// else "cpu".
std::string ExpectedDevice();
std::string SourceDir();        // the source tree ($HYLA_TEST_SOURCE_DIR overrides)
std::string DefaultModelDir();  // <source>/models/default (the embedded default model)
// The model the tests serve unless they say otherwise: the natsl "tiny" preset with seed 0
// (vocab 256, hidden 64, 4 layers: GDN, NAtS-L, GDN, NAtS-L; 269,712 parameters), generated once
// per test program into a temporary directory (removed at exit), so that the tests do not depend
// on what the embedded default model is.
std::string TestModelDir();

class ServerProcess {
 public:
  // Starts hyla-server with `args` plus --listen/--metrics-listen on 127.0.0.1:0 (unless given)
  // and --model (TestModelDir() unless given; "--model=" alone means no --model flag: the
  // embedded default); waits until it listens or exits.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      std::vector<std::string> args, absl::Duration timeout = absl::Seconds(60));
  ~ServerProcess();  // SIGKILL if still running

  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  // The plaintext health listener (--health-listen); empty without one.
  const std::string& health_address() const { return health_address_; }
  pid_t pid() const { return pid_; }

  std::shared_ptr<grpc::Channel> NewChannel(const grpc::ChannelArguments& args = {}) const;
  std::unique_ptr<v1::Hyla::Stub> NewStub() const;

  void Signal(int sig) const;
  // The exit code (128 + signal when killed by one), or nullopt when still running at `timeout`.
  std::optional<int> WaitExit(absl::Duration timeout);
  std::string Stderr() const;
  // Waits until stderr contains `text`.
  bool WaitForStderr(const std::string& text, absl::Duration timeout);

  // GET /metrics.
  absl::StatusOr<std::string> ScrapeMetrics() const;

 private:
  ServerProcess() = default;
  void ReadStderr(int fd);
  void Reap();

  pid_t pid_ = -1;
  std::string grpc_address_;
  std::string metrics_address_;
  std::string health_address_;
  std::thread reader_;
  std::thread reaper_;
  mutable absl::Mutex mu_;
  std::string stderr_ ABSL_GUARDED_BY(mu_);
  bool stderr_closed_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<int> exit_code_ ABSL_GUARDED_BY(mu_);
};

// Runs a program to completion: exit code, stdout and stderr.
struct ProgramResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
ProgramResult RunProgram(const std::vector<std::string>& argv,
                         const std::vector<std::string>& extra_env = {},
                         const std::string& stdin_text = "");

// ---- Prometheus exposition ----
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
std::vector<Sample> ParseExposition(const std::string& text);
// The value of the series `name` whose labels include `labels`; nullopt when absent (or when
// more than one series matches).
std::optional<double> FindSample(const std::vector<Sample>& samples, const std::string& name,
                                 const std::map<std::string, std::string>& labels = {});
// Scrapes and returns one value (NaN when the scrape fails or the series is missing).
double Metric(const ServerProcess& server, const std::string& name,
              const std::map<std::string, std::string>& labels = {});

// Polls `condition` until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout);

// ---- gRPC helpers ----
struct GenerateResult {
  grpc::Status status;
  std::vector<int32_t> token_ids;
  std::string text;
  std::optional<v1::Finished> finished;
  int messages = 0;
  std::multimap<std::string, std::string> trailing;
};

// Runs one Generate call to its end. `timeout` sets the call's deadline; `token` adds a bearer
// token.
GenerateResult RunGenerate(v1::Hyla::Stub& stub, const v1::GenerateRequest& request,
                           std::optional<absl::Duration> timeout = std::nullopt,
                           const std::string& token = "");

// A request for `max_new_tokens` tokens after `text`, sampled with `seed` (temperature 0.8,
// top_p 0.95), EOS ignored so that the length is exact.
v1::GenerateRequest SampledRequest(const std::string& text, int max_new_tokens, uint64_t seed);

}  // namespace hyla::testing

#endif  // HYLA_TESTS_SERVICE_SERVER_PROCESS_H_
