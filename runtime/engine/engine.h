// Engine: the serving runtime behind the gRPC service. It owns a pool of workers, each with its
// own Backend (and so its own StateStore) and one scheduler thread that runs continuous batching:
// every step it plans (PlanStep: decodes first, then prefill chunks under the token budget, then
// FIFO admissions under the memory budget), runs Backend::Step, samples, applies the stop
// criteria, detokenizes and pushes events to the requests' streams.
//
// Requests: Submit validates (InvalidArgument naming the field), decides admission (Admit:
// Unavailable when the queue is full, saying whether memory is what holds it back; InvalidArgument
// when it can never fit), routes the request (a session's request to the worker holding the
// session, others to the least loaded worker) and returns a RequestHandle at once: RPC threads
// never wait for model work. The scheduler never waits for a consumer (see event_stream.h).
// A request ends with its final event: reason, status and usage. Cancellation (RequestHandle::
// Cancel or destroying the handle), its deadline and a stalled consumer end it within one step
// and free its state at once.
//
// Sessions: CreateSession (optionally prefilling a prefix), GetSession, ForkSession (slot copied,
// KV blocks shared copy-on-write), DeleteSession, ListSessions. A Request naming a session
// continues it (only the new tokens are processed; the state is kept after). Sessions are pinned
// to their worker; idle ones expire after the TTL and are evicted LRU first when memory or the
// session limit requires (never while busy).
//
// Errors (absl::Status, mapped to gRPC codes by the service): InvalidArgument naming the field;
// Unavailable for overload (queue or memory; the message says which) and while draining;
// NotFound for an unknown session; FailedPrecondition for a busy session; AlreadyExists for a
// taken session id; DeadlineExceeded and Cancelled as final statuses of a stream.
//
// Thread-safety: all public methods are thread-safe. Callbacks (session operations, stream
// on_ready, the observer) run on worker threads and must not block.
#ifndef HYLA_RUNTIME_ENGINE_ENGINE_H_
#define HYLA_RUNTIME_ENGINE_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/engine/backend.h"
#include "runtime/engine/clock.h"
#include "runtime/engine/engine_stats.h"
#include "runtime/engine/event_stream.h"
#include "runtime/engine/request.h"
#include "runtime/engine/session_manager.h"
#include "runtime/model/tokenizer.h"

namespace hyla {

class Worker;
struct EngineShared;

struct EngineOptions {
  // Workers, one scheduler thread and one Backend each (one per GPU, or CPU workers).
  int num_workers = 1;
  // Requests waiting for admission, over all workers; one more is Unavailable ("queue full", or
  // "memory" when state memory is what holds the queue back). At least 1.
  int max_queued = 64;
  // Tokens per step per worker (decodes + prefill chunks). Larger: better prefill throughput,
  // longer steps (inter-token latency of the running decodes). Must be at least
  // max_batch - 1 + prefill_chunk_tokens so that a prefill always progresses.
  int64_t token_budget = 512;
  // Prefill chunk size; chunk boundaries depend on the request alone (reproducible results).
  int64_t prefill_chunk_tokens = 256;
  // Running requests per worker at most.
  int max_batch = 32;
  // Longest sequence (session context + prompt + output); 0: the model's
  // max_position_embeddings, or 8192 when the config has none.
  int64_t max_context = 0;
  // max_new_tokens of a request that leaves it 0.
  int default_max_new_tokens = 256;
  // Sessions: idle time-to-live (zero or infinite: none) and the limit over all workers.
  absl::Duration session_ttl = absl::Minutes(30);
  int max_sessions = 1024;
  // A request whose consumer takes no event for this long while events wait is ended
  // (FinishReason::kSlowConsumer) and its state freed.
  absl::Duration stall_timeout = absl::Seconds(30);
  // Events pending per stream before new tokens are merged into the last one.
  int max_pending_events = 16;
  // Time source (null: the real clock). Tests inject a ManualClock.
  std::shared_ptr<Clock> clock;
  // Detokenizes the streamed text (null: no text; stop strings are then rejected).
  std::shared_ptr<const Tokenizer> tokenizer;
  // Receives per-step and per-request observations (null: none).
  std::shared_ptr<EngineObserver> observer;
  // Seed of generated session ids (0: from std::random_device).
  uint64_t session_id_seed = 0;
  // Threads per worker that run the streams' on_ready callbacks (protobuf and gRPC writes), off
  // the scheduler thread; a stream always uses the same one (request id modulo). At least 1.
  int notify_threads = 1;
  // Run the streams' on_ready callbacks on the scheduler thread instead of the worker's
  // EventNotifier thread (the path before issue 5's serving-overhead work; for A/B measurements
  // in hyla-serving-overhead, not for serving).
  bool notify_on_worker_thread = false;
};

// Creates the backend of worker `index` (each worker owns its backend).
using BackendFactory = std::function<absl::StatusOr<std::unique_ptr<Backend>>(int index)>;

// Static facts for GetModelInfo and the start-up log.
struct EngineInfo {
  const ModelConfig* config = nullptr;  // of worker 0 (all workers serve the same model)
  const StateLayout* layout = nullptr;
  int num_workers = 0;
  int64_t max_context = 0;
  int default_max_new_tokens = 0;
  int slots_per_worker = 0;
  int64_t blocks_per_worker = 0;
  int64_t slot_bytes = 0;           // one state slot
  int64_t block_bytes = 0;          // one KV block
  int64_t memory_budget_bytes = 0;  // all slots and blocks of all workers
};

using SessionCallback = std::function<void(absl::StatusOr<SessionInfo>)>;

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                        const BackendFactory& factory);
  // Shuts down: requests still queued or running end with FinishReason::kShutdown.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Starts a request. `on_ready` (optional) is called on a worker thread when events become
  // available (see RequestStream). Errors: InvalidArgument naming the field, Unavailable
  // (queue, memory, draining), NotFound / FailedPrecondition for the session.
  absl::StatusOr<std::unique_ptr<RequestHandle>> Submit(Request request,
                                                        std::function<void()> on_ready = nullptr);

  // Creates a session, prefilled with `prefix` (may be empty); `done` receives its info or the
  // error (deadline, shutdown, memory). Returns an error at once (and does not call `done`) for
  // an invalid id or prefix, a taken id, the session limit with every session busy, or overload.
  absl::Status CreateSession(std::string session_id, std::vector<int32_t> prefix,
                             absl::Time deadline, SessionCallback done);
  // A copy of `parent` on the same worker: the slot is copied, KV blocks are shared
  // copy-on-write. Errors at once: NotFound, FailedPrecondition (busy), InvalidArgument /
  // AlreadyExists for the new id; later through `done`: Unavailable when no slot can be freed.
  absl::Status ForkSession(const std::string& parent, std::string new_session_id,
                           SessionCallback done);
  // NotFound, FailedPrecondition when busy. The state is freed by its worker right after.
  absl::Status DeleteSession(const std::string& session_id);
  absl::StatusOr<SessionInfo> GetSession(const std::string& session_id) const;
  std::vector<SessionInfo> ListSessions() const;

  // Stops accepting new requests and sessions (Unavailable "draining"); running ones go on.
  void StartDrain();
  // Drains and ends every queued and running request after the current step
  // (FinishReason::kShutdown, Unavailable) and drops the sessions; returns without waiting (the
  // destructor joins the workers). For a drain deadline that has passed.
  void Shutdown();
  bool draining() const { return draining_.load(std::memory_order_acquire); }
  // Requests accepted and not finished yet (queued, running, or session prefills).
  int64_t InFlight() const;

  EngineStats Stats() const;
  const EngineInfo& info() const { return info_; }
  const Tokenizer* tokenizer() const { return options_.tokenizer.get(); }
  Clock& clock() const { return *options_.clock; }

 private:
  Engine(const EngineOptions& options);
  int PickWorker() const;
  absl::Status ValidateRequest(const Request& r) const;

  EngineOptions options_;
  EngineInfo info_;
  std::unique_ptr<EngineShared> shared_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> next_request_id_{1};
  // Serialises admission decisions so that the queue bound holds under concurrent Submits.
  absl::Mutex admit_mu_;
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_ENGINE_H_
