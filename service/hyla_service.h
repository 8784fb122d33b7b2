// HylaService: the hyla.v1.Hyla gRPC service on the callback API. It authenticates, validates and
// converts each call (convert.h), hands the work to the Engine and turns the engine's results
// back into protobuf messages and gRPC statuses (status_mapping.h), recording metrics at the edge
// (metrics.h).
//
// Generate is a ServerWriteReactor driven by the engine's request stream: the worker's event
// notifier thread (not the scheduler thread: the writes overlap the next step) calls on_ready
// when events wait, the reactor takes every pending event merged into one message and starts one
// write; OnWriteDone takes the next (so tokens that arrive during a write are coalesced into the
// next message). Reactions never block.
// At most one write is outstanding; every call is finished exactly once (the last event carries
// `finished` and goes out with StartWriteAndFinish; an error, cancellation or deadline ends the
// call with its status). A write that has not completed within the stall timeout (a client that
// stopped reading: HTTP/2 flow control holds the write) ends the call (CANCELLED) and the engine
// frees its state at once; the engine ends such a request on its own as well when its event
// queue stalls.
//
// Draining (StartDrain): every new hyla.v1 call gets UNAVAILABLE "server is draining" with a
// retry hint of 0 ms; calls already running go on. WaitIdle lets the server wait for them.
//
// Thread-safety: thread-safe; gRPC calls the handlers concurrently. The Engine and Metrics must
// outlive the service, and the service must outlive the grpc::Server that runs it.
#ifndef HYLA_SERVICE_HYLA_SERVICE_H_
#define HYLA_SERVICE_HYLA_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "hyla/v1/hyla.grpc.pb.h"
#include "runtime/engine/engine.h"
#include "service/metrics.h"

namespace hyla::service {

struct HylaServiceOptions {
  // Non-empty: every hyla.v1 call needs metadata "authorization: Bearer <auth_token>".
  std::string auth_token;
  // A write that does not complete for this long ends the call (client stopped reading).
  absl::Duration stall_timeout = absl::Seconds(30);
  // GetModelInfo: the device of each worker ("cpu,cpu") and the parameter count.
  std::string device = "cpu";
  int64_t parameters = 0;
};

class HylaService final : public v1::Hyla::CallbackService {
 public:
  HylaService(Engine* engine, std::shared_ptr<Metrics> metrics, HylaServiceOptions options);
  ~HylaService() override;

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const v1::CreateSessionRequest* request,
                                          v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const v1::GetSessionRequest* request,
                                       v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* ForkSession(grpc::CallbackServerContext* context,
                                        const v1::ForkSessionRequest* request,
                                        v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* context,
                                          const v1::DeleteSessionRequest* request,
                                          v1::DeleteSessionResponse* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const v1::ListSessionsRequest* request,
                                         v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

  // New calls get UNAVAILABLE "draining" from now on.
  void StartDrain();
  bool draining() const { return draining_.load(std::memory_order_acquire); }
  // Calls still running after this are being cut by the server's shutdown (their cancellation
  // counts as cause "shutdown").
  void MarkForcedShutdown() { forced_shutdown_.store(true, std::memory_order_release); }
  bool forced_shutdown() const { return forced_shutdown_.load(std::memory_order_acquire); }
  // Waits until no call is in flight or `deadline` passes; true when none is left.
  bool WaitIdle(absl::Time deadline) ABSL_LOCKS_EXCLUDED(calls_mu_);
  int64_t active_calls() const ABSL_LOCKS_EXCLUDED(calls_mu_);

  // ---- for the calls' implementation (generate_reactor / unary helpers in hyla_service.cc) ----
  Engine& engine() { return *engine_; }
  Metrics& metrics() { return *metrics_; }
  const HylaServiceOptions& options() const { return options_; }
  // Authentication and draining, in that order: UNAUTHENTICATED or UNAVAILABLE (counted).
  absl::Status CheckAdmission(const grpc::CallbackServerContext* context);
  void CallStarted() ABSL_LOCKS_EXCLUDED(calls_mu_);
  void CallEnded() ABSL_LOCKS_EXCLUDED(calls_mu_);
  // A seed for a request that sets none.
  uint64_t NextSeed() ABSL_LOCKS_EXCLUDED(seed_mu_);

 private:
  Engine* const engine_;
  const std::shared_ptr<Metrics> metrics_;
  const HylaServiceOptions options_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> forced_shutdown_{false};

  mutable absl::Mutex calls_mu_;
  int64_t active_calls_ ABSL_GUARDED_BY(calls_mu_) = 0;

  absl::Mutex seed_mu_;
  std::mt19937_64 seed_rng_ ABSL_GUARDED_BY(seed_mu_);
};

}  // namespace hyla::service

#endif  // HYLA_SERVICE_HYLA_SERVICE_H_
