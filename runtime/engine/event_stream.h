// RequestStream: the channel that carries one request's events from its worker's scheduler
// thread (the producer) to the caller (the consumer), and the caller's cancellation back.
// RequestHandle: the caller's end.
//
// The producer never blocks: Push appends, and once `max_pending` events wait unread it merges
// new tokens into the last pending event (token ids, text and logprobs are concatenated, a finish
// is attached), so a slow reader costs a bounded number of messages and catches up in one. The
// worker ends a request whose consumer has taken nothing for the stall timeout while events were
// pending (FinishReason::kSlowConsumer), freeing its state.
//
// The consumer never blocks the producer either:
//   - callback style (the gRPC reactor): `on_ready` is called after a Push whenever the
//     consumer had found the stream empty (TryNext returned nothing) or had not read yet, so the
//     consumer calls TryNext (or TryNextMerged) until it returns nothing and then waits for the
//     next on_ready. With an EventNotifier (the engine's streams), on_ready runs on the
//     notifier's thread: the scheduler thread only queues the stream there, and the consumers'
//     work (protobuf, gRPC writes) overlaps the next step. Without one (tests), on_ready runs on
//     the pushing thread. Either way it runs outside the stream's lock, must not block (start a
//     write, signal a condition) and may call TryNext.
//   - blocking style (CLI, tests): Next waits on the stream's condition variable.
//
// EventNotifier: one thread that runs the on_ready callbacks of the streams posted to it, in
// posting order (so a stream's callbacks never overlap). Post queues the stream under one lock
// and wakes the thread only when it sleeps; between Hold and Release (the worker's token loop of
// one step) it does not wake it at all, so that the whole batch is handed over with one wake-up
// and the notifier neither contends for the streams' locks nor preempts the worker meanwhile.
// The thread takes the whole queue at a time.
//
// Thread-safety: all methods are thread-safe. One consumer at a time.
// Invariant: nothing is pushed after an event with `finish`; that event is delivered exactly once.
#ifndef HYLA_RUNTIME_ENGINE_EVENT_STREAM_H_
#define HYLA_RUNTIME_ENGINE_EVENT_STREAM_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "runtime/engine/request.h"

namespace hyla {

class RequestStream;

class EventNotifier {
 public:
  EventNotifier();   // starts the thread
  ~EventNotifier();  // Stop()
  EventNotifier(const EventNotifier&) = delete;
  EventNotifier& operator=(const EventNotifier&) = delete;

  // Queues `stream`'s on_ready; after Stop it runs at once on the caller's thread.
  void Post(std::shared_ptr<RequestStream> stream);
  // Posts wait for Release before the thread is woken (holds nest).
  void Hold();
  void Release();
  // Runs what is queued, then ends the thread. Idempotent.
  void Stop();

 private:
  void Loop();

  absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<std::shared_ptr<RequestStream>> queue_ ABSL_GUARDED_BY(mu_);
  bool sleeping_ ABSL_GUARDED_BY(mu_) = false;
  int holds_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;  // the thread has ended
  std::thread thread_;
};

class RequestStream : public std::enable_shared_from_this<RequestStream> {
 public:
  // `wake` is called (from any thread) after Cancel so that the worker notices at once.
  // `notifier` (optional; must outlive every Push): where on_ready runs (see above); the stream
  // must then be owned by a shared_ptr.
  RequestStream(uint64_t id, int max_pending, std::function<void()> on_ready,
                std::function<void()> wake, EventNotifier* notifier = nullptr);

  uint64_t id() const { return id_; }

  // ---- producer (the worker's scheduler thread) ----
  void Push(StreamEvent event);
  // Events waiting to be taken (lock-free: the producer asks for every stream at every step).
  size_t pending() const;
  // Events taken by the consumer so far.
  uint64_t taken() const { return taken_.load(std::memory_order_acquire); }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  // Events merged into an earlier pending one because the consumer lagged.
  uint64_t merged() const { return merged_.load(std::memory_order_relaxed); }

  // ---- consumer ----
  std::optional<StreamEvent> TryNext();
  // Every pending event at once, merged into one (MergeEvent; a lagging consumer writes one
  // message for all of them); nothing (and re-armed) when none is pending.
  std::optional<StreamEvent> TryNextMerged();
  // Blocks until an event is available. Must not be called after the finish event was taken.
  StreamEvent Next();
  // Asks the worker to end the request (FinishReason::kCancelled); idempotent. The finish event
  // still arrives (unless the request had already finished otherwise).
  void Cancel();
  // True once the event with `finish` has been taken.
  bool done() const;

 private:
  friend class EventNotifier;

  const uint64_t id_;
  const size_t max_pending_;
  const std::function<void()> on_ready_;
  const std::function<void()> wake_;
  EventNotifier* const notifier_;
  std::atomic<uint64_t> taken_{0};
  std::atomic<uint64_t> merged_{0};
  std::atomic<bool> cancelled_{false};
  std::atomic<size_t> pending_count_{0};  // pending_.size(), written under mu_

  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<StreamEvent> pending_ ABSL_GUARDED_BY(mu_);
  bool armed_ ABSL_GUARDED_BY(mu_) = true;  // call on_ready at the next Push
  bool finish_pushed_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_taken_ ABSL_GUARDED_BY(mu_) = false;
};

// The caller's end of a request. Destroying the handle before the request finished cancels it
// (the client went away). Move-only.
class RequestHandle {
 public:
  explicit RequestHandle(std::shared_ptr<RequestStream> stream) : stream_(std::move(stream)) {}
  ~RequestHandle();
  RequestHandle(const RequestHandle&) = delete;
  RequestHandle& operator=(const RequestHandle&) = delete;

  uint64_t id() const { return stream_->id(); }
  std::optional<StreamEvent> TryNext() { return stream_->TryNext(); }
  std::optional<StreamEvent> TryNextMerged() { return stream_->TryNextMerged(); }
  StreamEvent Next() { return stream_->Next(); }
  void Cancel() { stream_->Cancel(); }
  bool done() const { return stream_->done(); }

 private:
  std::shared_ptr<RequestStream> stream_;
};

// Appends `from` to `into` (tokens, text, logprobs; finish when set).
void MergeEvent(StreamEvent* into, StreamEvent&& from);

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_EVENT_STREAM_H_
