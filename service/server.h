// HylaServer: everything hyla-server runs, assembled from its flags — the model and its memory
// plan, the Engine with one CPU backend per worker, the Prometheus exposer, and the gRPC server
// (hyla.v1.Hyla, grpc.health.v1 with "", "hyla.v1.Hyla", "readiness" and "liveness", server
// reflection, keepalive / connection-age arguments, optional TLS), and with --health-listen a
// second, plaintext gRPC server that serves only grpc.health.v1 with the same statuses.
//
// Lifecycle: Create binds both listeners and starts serving (health SERVING). Drain is the
// SIGTERM path: health NOT_SERVING (all names but "liveness"), new calls UNAVAILABLE "draining",
// in-flight calls get until the drain deadline to finish, then the server shuts down (calls still
// running are cancelled, cause "shutdown") and the engine stops.
//
// Thread-safety: Create and Drain are called from one thread (main). The accessors are
// thread-safe.
#ifndef HYLA_SERVICE_SERVER_H_
#define HYLA_SERVICE_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "service/server_flags.h"

namespace grpc {
class CallbackGenericService;
class Server;
}  // namespace grpc
namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace hyla {
class Engine;
class Tokenizer;
}  // namespace hyla

namespace hyla::service {

class HylaService;
class Metrics;

struct DrainResult {
  bool drained = false;   // every call finished before the deadline
  int64_t cut_calls = 0;  // calls still running at the deadline (cancelled)
  absl::Duration elapsed;
};

class HylaServer {
 public:
  // Errors name the flag at fault (--model, --memory-budget, --listen, --metrics-listen,
  // --tls-cert, ...).
  static absl::StatusOr<std::unique_ptr<HylaServer>> Create(const ServerFlags& flags);
  ~HylaServer();
  HylaServer(const HylaServer&) = delete;
  HylaServer& operator=(const HylaServer&) = delete;

  // Start-up log lines (model, memory plan, addresses), one per line.
  const std::string& startup_log() const { return startup_log_; }
  // "HOST:PORT" actually bound (port resolved when the flag said 0).
  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  // Empty without --health-listen.
  const std::string& health_address() const { return health_address_; }

  // The SIGTERM path (see the header comment). Returns when the server has stopped.
  DrainResult Drain(absl::Duration deadline);

 private:
  HylaServer() = default;

  ServerFlags flags_;
  std::string startup_log_;
  std::string grpc_address_;
  std::string metrics_address_;
  std::string health_address_;
  // Destruction order matters: the gRPC server first, then the service, the engine, the exposer
  // and the metrics.
  std::shared_ptr<Metrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<HylaService> service_;
  std::unique_ptr<grpc::Server> server_;
  // --health-listen: plaintext, grpc.health.v1 only, statuses set together with server_'s.
  // Answers every other method UNIMPLEMENTED there (and gives that server the callback methods
  // gRPC needs to run its health service without a completion queue of ours).
  std::unique_ptr<grpc::CallbackGenericService> health_unimplemented_;
  std::unique_ptr<grpc::Server> health_server_;
  bool stopped_ = false;
};

}  // namespace hyla::service

#endif  // HYLA_SERVICE_SERVER_H_
