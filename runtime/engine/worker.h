// Worker: one scheduler thread driving one Backend (engine-internal; the public API is Engine).
//
// Other threads talk to a worker only through its inbox (commands: a new request, a fork, the
// release of a deleted or evicted session) and through each request's RequestStream (events out,
// cancellation in). The streams' consumers are woken by the worker's EventNotifier thread(s),
// not by the scheduler thread: a step's events are queued during its token loop and handed over
// with one wake-up at its end, so that the consumers' work (protobuf, gRPC writes) overlaps the
// next step. Each step reports where the scheduler thread's time went (StepObservation:
// host_before, backend, host_after) for the serving-overhead metrics. Everything else — the waiting
// queue, the running batch, the sessions' states, the Backend and its StateStore — belongs to the
// scheduler thread. After each change the worker publishes its load and memory counters as atomics
// (WorkerLoad) for routing, admission and metrics.
//
// Thread-safety: Enqueue, load() and Stop are thread-safe; the rest runs on the worker's thread.
// Invariants (on the scheduler thread): a request is in exactly one of inbox, waiting_, running_
// or finished; a running request holds its state (own or its session's) and a reservation of the
// worst-case blocks it may still allocate; Σ reservations ≤ free blocks of the store after each
// admission.
#ifndef HYLA_RUNTIME_ENGINE_WORKER_H_
#define HYLA_RUNTIME_ENGINE_WORKER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/engine/backend.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/engine_stats.h"
#include "runtime/engine/event_stream.h"
#include "runtime/engine/request.h"
#include "runtime/engine/sampling.h"
#include "runtime/engine/scheduler.h"
#include "runtime/engine/session_manager.h"
#include "runtime/engine/stop_criteria.h"

namespace hyla {

// Engine-wide state shared by the workers (owned by the Engine, outlives the workers).
struct EngineShared {
  EngineShared(const EngineOptions& o, uint64_t session_seed)
      : options(o), sessions(o.max_sessions, session_seed) {}

  EngineOptions options;  // resolved (clock set, max_context resolved)
  Clock* clock = nullptr;
  const Tokenizer* tokenizer = nullptr;
  EngineObserver* observer = nullptr;  // never null
  SessionManager sessions;
  int vocab_size = 0;
  int32_t eos_id = -1;

  std::atomic<int64_t> queued{0};     // accepted, not yet admitted or ended (all workers)
  std::atomic<int64_t> in_flight{0};  // accepted, not yet finished
  // Counters for EngineStats.
  std::atomic<int64_t> requests_accepted{0};
  std::atomic<int64_t> requests_finished{0};
  std::atomic<int64_t> finished_by_reason[7] = {};
  std::atomic<int64_t> rejected_by_reason[5] = {};
  std::atomic<int64_t> evictions_by_reason[3] = {};
  std::atomic<int64_t> prompt_tokens{0};
  std::atomic<int64_t> generated_tokens{0};
  std::atomic<int64_t> reused_tokens{0};
  std::atomic<int64_t> routed_to_softmax{0};
  std::atomic<int64_t> routed_to_gdn{0};
  std::atomic<int64_t> steps{0};
  std::atomic<int64_t> sessions_created{0};
  std::atomic<int64_t> sessions_released{0};
  std::atomic<int64_t> merged_events{0};

  void CountEviction(EvictReason r) {
    evictions_by_reason[static_cast<int>(r)].fetch_add(1, std::memory_order_relaxed);
    observer->OnSessionEvicted(r);
  }
};

// A request from acceptance to its final event. Built by the Engine, owned by a worker after
// Enqueue.
struct ActiveRequest {
  // ---- set by the Engine ----
  uint64_t id = 0;
  Request request;
  std::shared_ptr<RequestStream> stream;  // null for a session creation
  bool create_session = false;            // CreateSession: prefill request.prompt, keep the state
  SessionCallback on_session;             // CreateSession's completion
  int requested_max_new = 0;              // default applied; 0 for a session creation
  absl::Time accepted;

  // ---- set by the worker ----
  struct WorkerSession* session = nullptr;  // the session it continues or creates
  std::unique_ptr<SequenceState> own_seq;   // one-off request's state while running
  SequenceState* seq = nullptr;             // own_seq or the session's
  std::vector<int32_t> input;  // tokens to fold: session tail + prompt, then sampled tokens
  int64_t folded = 0;          // of input
  int64_t old_pending = 0;     // session tokens in input before the prompt
  int64_t reused = 0;          // session tokens folded before the request
  int max_new = 0;             // resolved and clamped to the context
  int64_t blocks_needed = 0;   // lifetime worst case when waiting
  int64_t reserved = 0;        // worst-case blocks still to allocate, while running
  std::optional<Sampler> sampler;
  std::optional<StopChecker> stop;
  std::vector<int32_t> generated;
  absl::Time admitted;
  absl::Time first_token;
  absl::Time last_token;
  bool has_first_token = false;
  // Slow-consumer tracking: taken() count last seen and since when nothing was taken.
  uint64_t stall_taken = 0;
  absl::Time stall_since;
};

// A session's state on its worker.
struct WorkerSession {
  std::string id;
  uint64_t key = 0;  // for the planner's evictable list
  std::unique_ptr<SequenceState> seq;
  // Every token of the session; seq->num_tokens of them are folded into the state, the rest
  // (at most the last sampled token, or the last prefix token) are folded by the next request.
  std::vector<int32_t> history;
  absl::Time last_use;
  bool busy = false;  // a request of this worker uses it
};

// Published by the worker after every change, read by other threads.
struct WorkerLoad {
  std::atomic<int64_t> running{0};
  std::atomic<int64_t> waiting{0};  // in waiting_ (the inbox not included)
  std::atomic<int64_t> inbox_requests{0};
  std::atomic<int64_t> sessions{0};
  std::atomic<int64_t> free_slots{0};
  std::atomic<int64_t> free_blocks{0};
  std::atomic<int64_t> reserved_blocks{0};
  std::atomic<int64_t> idle_sessions{0};
  std::atomic<int64_t> idle_session_blocks{0};  // blocks that evicting every idle session frees
  std::atomic<int64_t> slot_bytes_used{0};
  std::atomic<int64_t> kv_bytes_used{0};
  std::atomic<int64_t> softmax_equivalent_bytes{0};
};

class Worker {
 public:
  Worker(int index, std::unique_ptr<Backend> backend, EngineShared* shared);
  ~Worker();  // Stop()

  Backend& backend() { return *backend_; }  // only before Start / from the worker thread
  void Start();
  // Asks the thread to end every queued and running request (kShutdown) and release the
  // sessions after its current step; returns at once.
  void RequestStop();
  // RequestStop, then joins the thread.
  void Stop();

  // Thread-safe.
  void EnqueueRequest(std::unique_ptr<ActiveRequest> request);
  void EnqueueFork(std::string parent, std::string child, SessionCallback done);
  void EnqueueRelease(std::string session_id, std::optional<EvictReason> evicted);
  void Wake();
  // A wake-up callable that stays valid after the worker is gone (for request streams).
  std::function<void()> Waker() const;
  // Runs the on_ready callbacks of request `id`'s stream (off the scheduler thread; one of
  // EngineOptions::notify_threads); lives as long as the worker.
  EventNotifier* notifier(uint64_t id) {
    return notifiers_[static_cast<size_t>(id % notifiers_.size())].get();
  }
  const WorkerLoad& load() const { return load_; }
  int index() const { return index_; }
  // Slots / blocks a new one-off request could use now (free, minus reservations, plus what
  // evicting idle sessions would free). Thread-safe (published values).
  int64_t AvailableSlots() const;
  int64_t AvailableBlocks() const;

 private:
  struct Command {
    enum class Kind { kRequest, kFork, kRelease } kind = Kind::kRequest;
    std::unique_ptr<ActiveRequest> request;
    std::string session_id;              // fork: parent; release: the session
    std::string child_id;                // fork
    SessionCallback done;                // fork
    std::optional<EvictReason> evicted;  // release: why (none: deleted by the client)
  };
  struct Inbox {
    absl::Mutex mu;
    absl::CondVar cv;
    std::deque<Command> commands ABSL_GUARDED_BY(mu);
    bool kicked ABSL_GUARDED_BY(mu) = false;
    bool stop ABSL_GUARDED_BY(mu) = false;
    bool closed ABSL_GUARDED_BY(mu) = false;  // the thread has ended: Push refuses commands
  };

  void Loop();
  void Push(Command c);
  void HandleCommand(Command c);
  // Ends a command that arrived after shutdown (any thread; touches only thread-safe state).
  void RefuseAtShutdown(Command c);
  void Arrive(std::unique_ptr<ActiveRequest> r);
  void Fork(const std::string& parent, const std::string& child, const SessionCallback& done);
  void ReleaseSession(const std::string& id, std::optional<EvictReason> evicted);
  // Frees a session's state (its registry entry is already gone).
  void DestroySession(const std::string& id);
  void ReapEnded(absl::Time now);
  void ExpireSessions(absl::Time now);
  // Plans and runs one step; false when there was nothing to compute.
  bool Step(absl::Time now);
  bool Admit(std::unique_ptr<ActiveRequest> r, absl::Time now);
  void RunBatch(const std::vector<ScheduledWork>& work, absl::Time now);
  void Sample(ActiveRequest* r, absl::Span<const float> logits, absl::Time now);
  // Records a sampled token (from Sample or from the backend): stop criteria, stream, metrics.
  void Accept(ActiveRequest* r, const SampledToken& tok, absl::Time now);
  void UpdateReservation(ActiveRequest* r);
  // Removes a request from running_ (null when absent).
  std::unique_ptr<ActiveRequest> TakeRunning(uint64_t id);
  // Ends a request already removed from waiting_ / running_: frees or keeps its state, counts
  // it and pushes its final event (`event` may carry the last token).
  void End(std::unique_ptr<ActiveRequest> r, FinishReason reason, absl::Status status,
           StreamEvent event, absl::Time now, const std::string& matched_stop = "",
           int32_t matched_stop_token = -1);
  // Idle sessions in LRU order, without those in `skip`.
  std::vector<EvictableSession> Evictable(const std::set<uint64_t>& skip) const;
  bool TryEvictForSlot(const std::string& keep);
  absl::Time NextWakeup(absl::Time now) const;
  void Publish();
  int64_t LifetimeTokens(const ActiveRequest& r) const;
  StateMemory MemoryOf(const SequenceState& seq, int64_t context_tokens) const;

  const int index_;
  std::unique_ptr<Backend> backend_;
  EngineShared* const shared_;
  std::shared_ptr<Inbox> inbox_;
  std::vector<std::unique_ptr<EventNotifier>> notifiers_;  // [notify_threads]
  std::thread thread_;
  bool started_ = false;
  WorkerLoad load_;

  // ---- scheduler thread only ----
  std::deque<std::unique_ptr<ActiveRequest>> waiting_;
  std::vector<std::unique_ptr<ActiveRequest>> running_;
  // running_ by id, rebuilt by Step before RunBatch (valid until the step's results are
  // processed): the batch is assembled in O(batch), not O(batch²).
  std::unordered_map<uint64_t, ActiveRequest*> running_by_id_;
  std::map<std::string, std::unique_ptr<WorkerSession>> sessions_;
  uint64_t next_session_key_ = 1;
  SequenceState empty_seq_;     // a fresh sequence's shape, for WorstCaseNewBlocks
  std::vector<float> scratch_;  // [vocab] logits with suppressed ids
  // Idle-session totals for Publish, recounted when idle_dirty_ (see Publish).
  bool idle_dirty_ = true;
  int64_t idle_sessions_ = 0;
  int64_t idle_session_blocks_ = 0;
  int64_t idle_softmax_eq_ = 0;
  // ExpireSessions: the earliest TTL expiry of an idle session, valid unless expiry_dirty_.
  bool expiry_dirty_ = true;
  absl::Time next_expiry_ = absl::InfiniteFuture();
  // Host-time accounting of the step cycle (StepObservation::host_before ...).
  std::chrono::steady_clock::time_point cycle_start_;     // end of the last step, or wake-up
  std::chrono::steady_clock::time_point schedule_start_;  // Step() entry
  std::chrono::steady_clock::duration emit_time_{};       // RequestStream::Push in this step
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_WORKER_H_
