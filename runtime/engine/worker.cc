#include "runtime/engine/worker.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/base/check.h"
#include "runtime/engine/scheduler.h"

namespace hyla {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

using SteadyTime = std::chrono::steady_clock::time_point;
SteadyTime SteadyNow() { return std::chrono::steady_clock::now(); }
absl::Duration ToDuration(std::chrono::steady_clock::duration d) { return absl::FromChrono(d); }

// EventNotifier::Hold / Release of every notifier for a scope (Release may come early).
class NotifierHold {
 public:
  explicit NotifierHold(const std::vector<std::unique_ptr<EventNotifier>>* n) : n_(n) {
    for (const auto& x : *n_) x->Hold();
  }
  ~NotifierHold() { Release(); }
  void Release() {
    if (n_ != nullptr) {
      for (const auto& x : *n_) x->Release();
    }
    n_ = nullptr;
  }

 private:
  const std::vector<std::unique_ptr<EventNotifier>>* n_;
};

bool IsSessionRequest(const ActiveRequest& r) {
  return r.create_session || !r.request.session_id.empty();
}

}  // namespace

Worker::Worker(int index, std::unique_ptr<Backend> backend, EngineShared* shared)
    : index_(index),
      backend_(std::move(backend)),
      shared_(shared),
      inbox_(std::make_shared<Inbox>()) {
  for (int i = 0; i < std::max(1, shared_->options.notify_threads); ++i) {
    notifiers_.push_back(std::make_unique<EventNotifier>());
  }
  empty_seq_.streams.resize(backend_->layout().streams().size());
  scratch_.resize(static_cast<size_t>(backend_->config().vocab_size));
  Publish();
}

Worker::~Worker() { Stop(); }

void Worker::Start() {
  HYLA_CHECK(!started_);
  started_ = true;
  thread_ = std::thread([this] { Loop(); });
}

void Worker::RequestStop() {
  absl::MutexLock lock(&inbox_->mu);
  inbox_->stop = true;
  inbox_->cv.SignalAll();
}

void Worker::Stop() {
  RequestStop();
  if (thread_.joinable()) thread_.join();
  // Delivers the last notifications (the shutdown's final events).
  for (auto& n : notifiers_) n->Stop();
}

void Worker::Push(Command c) {
  {
    absl::MutexLock lock(&inbox_->mu);
    if (!inbox_->closed) {
      inbox_->commands.push_back(std::move(c));
      inbox_->kicked = true;
      inbox_->cv.SignalAll();
      return;
    }
  }
  RefuseAtShutdown(std::move(c));
}

void Worker::RefuseAtShutdown(Command c) {
  const absl::Status down = absl::UnavailableError("server shutting down");
  switch (c.kind) {
    case Command::Kind::kRequest: {
      load_.inbox_requests.fetch_sub(1, std::memory_order_relaxed);
      std::unique_ptr<ActiveRequest> r = std::move(c.request);
      shared_->queued.fetch_sub(1, std::memory_order_relaxed);
      shared_->in_flight.fetch_sub(1, std::memory_order_relaxed);
      shared_->requests_finished.fetch_add(1, std::memory_order_relaxed);
      shared_->finished_by_reason[static_cast<int>(FinishReason::kShutdown)].fetch_add(
          1, std::memory_order_relaxed);
      if (r->create_session) shared_->sessions.Drop(r->request.session_id);
      if (r->stream != nullptr) {
        StreamEvent e;
        hyla::Finish f;
        f.reason = FinishReason::kShutdown;
        f.status = down;
        f.usage.prompt_tokens = static_cast<int64_t>(r->request.prompt.size());
        e.finish = std::move(f);
        r->stream->Push(std::move(e));
      }
      if (r->on_session) r->on_session(down);
      break;
    }
    case Command::Kind::kFork:
      shared_->sessions.Drop(c.child_id);
      if (c.done) c.done(down);
      break;
    case Command::Kind::kRelease:
      break;  // every session was released at shutdown
  }
}

void Worker::Wake() {
  absl::MutexLock lock(&inbox_->mu);
  inbox_->kicked = true;
  inbox_->cv.SignalAll();
}

std::function<void()> Worker::Waker() const {
  std::shared_ptr<Inbox> inbox = inbox_;
  return [inbox] {
    absl::MutexLock lock(&inbox->mu);
    inbox->kicked = true;
    inbox->cv.SignalAll();
  };
}

void Worker::EnqueueRequest(std::unique_ptr<ActiveRequest> request) {
  load_.inbox_requests.fetch_add(1, std::memory_order_relaxed);
  Command c;
  c.kind = Command::Kind::kRequest;
  c.request = std::move(request);
  Push(std::move(c));
}

void Worker::EnqueueFork(std::string parent, std::string child, SessionCallback done) {
  Command c;
  c.kind = Command::Kind::kFork;
  c.session_id = std::move(parent);
  c.child_id = std::move(child);
  c.done = std::move(done);
  Push(std::move(c));
}

void Worker::EnqueueRelease(std::string session_id, std::optional<EvictReason> evicted) {
  Command c;
  c.kind = Command::Kind::kRelease;
  c.session_id = std::move(session_id);
  c.evicted = evicted;
  Push(std::move(c));
}

int64_t Worker::AvailableSlots() const {
  return load_.free_slots.load(std::memory_order_relaxed) +
         load_.idle_sessions.load(std::memory_order_relaxed);
}

int64_t Worker::AvailableBlocks() const {
  return load_.free_blocks.load(std::memory_order_relaxed) -
         load_.reserved_blocks.load(std::memory_order_relaxed) +
         load_.idle_session_blocks.load(std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------
// The loop

void Worker::Loop() {
  bool worked = false;
  for (;;) {
    if (!worked) cycle_start_ = SteadyNow();  // else: since the end of the last step
    std::deque<Command> commands;
    bool stop = false;
    {
      absl::MutexLock lock(&inbox_->mu);
      commands.swap(inbox_->commands);
      inbox_->kicked = false;
      stop = inbox_->stop;
    }
    for (Command& c : commands) HandleCommand(std::move(c));
    if (stop) break;
    const absl::Time now = shared_->clock->Now();
    ReapEnded(now);
    ExpireSessions(now);
    worked = Step(now);
    Publish();
    if (worked) continue;
    absl::MutexLock lock(&inbox_->mu);
    if (!inbox_->kicked && !inbox_->stop && inbox_->commands.empty()) {
      shared_->clock->WaitUntil(&inbox_->cv, &inbox_->mu, NextWakeup(now));
    }
  }
  // Shutdown: end everything still here, including commands that raced with the stop; later
  // ones are refused by Push.
  std::deque<Command> late;
  {
    absl::MutexLock lock(&inbox_->mu);
    late.swap(inbox_->commands);
    inbox_->closed = true;
  }
  for (Command& c : late) RefuseAtShutdown(std::move(c));
  const absl::Time now = shared_->clock->Now();
  const absl::Status down = absl::UnavailableError("server shutting down");
  while (!running_.empty()) {
    std::unique_ptr<ActiveRequest> r = std::move(running_.back());
    running_.pop_back();
    End(std::move(r), FinishReason::kShutdown, down, StreamEvent(), now);
  }
  while (!waiting_.empty()) {
    std::unique_ptr<ActiveRequest> r = std::move(waiting_.front());
    waiting_.pop_front();
    shared_->queued.fetch_sub(1, std::memory_order_relaxed);
    End(std::move(r), FinishReason::kShutdown, down, StreamEvent(), now);
  }
  std::vector<std::string> ids;
  for (const auto& [id, s] : sessions_) ids.push_back(id);
  for (const std::string& id : ids) DestroySession(id);
  Publish();
}

void Worker::HandleCommand(Command c) {
  switch (c.kind) {
    case Command::Kind::kRequest:
      load_.inbox_requests.fetch_sub(1, std::memory_order_relaxed);
      Arrive(std::move(c.request));
      break;
    case Command::Kind::kFork:
      Fork(c.session_id, c.child_id, c.done);
      break;
    case Command::Kind::kRelease:
      ReleaseSession(c.session_id, c.evicted);
      break;
  }
}

absl::Time Worker::NextWakeup(absl::Time now) const {
  absl::Time next = absl::InfiniteFuture();
  for (const auto& r : waiting_) next = std::min(next, r->request.deadline);
  for (const auto& r : running_) next = std::min(next, r->request.deadline);
  const absl::Duration ttl = shared_->options.session_ttl;
  if (ttl > absl::ZeroDuration() && ttl < absl::InfiniteDuration()) {
    for (const auto& [id, s] : sessions_) {
      if (!s->busy) next = std::min(next, s->last_use + ttl);
    }
  }
  return next;
}

// ---------------------------------------------------------------------------------------------
// Arrival: resolve the request against the session (if any) and queue it.

int64_t Worker::LifetimeTokens(const ActiveRequest& r) const {
  // Tokens this request may still fold: its unfolded input plus every token it may still sample
  // but the last (which stays unfolded).
  const int64_t unfolded = static_cast<int64_t>(r.input.size()) - r.folded;
  const int64_t future =
      std::max<int64_t>(0, r.max_new - static_cast<int64_t>(r.generated.size()) - 1);
  return unfolded + future;
}

void Worker::Arrive(std::unique_ptr<ActiveRequest> r) {
  const absl::Time now = shared_->clock->Now();
  auto reject = [&](absl::Status st) {
    shared_->queued.fetch_sub(1, std::memory_order_relaxed);
    End(std::move(r), FinishReason::kError, std::move(st), StreamEvent(), now);
  };
  const int64_t max_context = shared_->options.max_context;
  const std::vector<int32_t>& prompt = r->request.prompt;
  int64_t context = 0;
  if (r->create_session) {
    // The new session keeps the last prefix token unfolded, so that a request with an empty
    // prompt can continue it.
    if (!prompt.empty()) r->input.assign(prompt.begin(), prompt.end() - 1);
    r->max_new = 0;
  } else if (!r->request.session_id.empty()) {
    auto it = sessions_.find(r->request.session_id);
    if (it == sessions_.end()) {
      // Pinned sessions are not evicted, so this is a lost state (a failed step).
      reject(
          absl::NotFoundError(absl::StrCat("session \"", r->request.session_id, "\" not found")));
      return;
    }
    WorkerSession* s = it->second.get();
    s->busy = true;
    idle_dirty_ = true;
    expiry_dirty_ = true;
    r->session = s;
    r->seq = s->seq.get();
    r->reused = s->seq->num_tokens;
    context = static_cast<int64_t>(s->history.size());
    r->input.assign(s->history.begin() + s->seq->num_tokens, s->history.end());
    r->old_pending = static_cast<int64_t>(r->input.size());
    r->input.insert(r->input.end(), prompt.begin(), prompt.end());
    if (r->input.empty()) {
      reject(absl::InvalidArgumentError("prompt: empty, and the session has no context yet"));
      return;
    }
  } else {
    r->input = prompt;
  }
  if (!r->create_session) {
    const int64_t room = max_context - context - static_cast<int64_t>(prompt.size());
    r->max_new = static_cast<int>(std::min<int64_t>(r->requested_max_new, room));
    if (r->max_new < 1) {
      reject(absl::InvalidArgumentError(
          absl::StrCat("prompt: ", prompt.size(), " tokens after ", context,
                       " session tokens leave no room to generate under the maximum context of ",
                       max_context, " tokens")));
      return;
    }
  }
  // Lifetime worst case; a request that could not fit even in an empty pool never will.
  const SequenceState& base = r->seq != nullptr ? *r->seq : empty_seq_;
  r->blocks_needed = backend_->store().WorstCaseNewBlocks(base, LifetimeTokens(*r));
  const int64_t held = r->seq != nullptr ? backend_->store().MemoryOf(*r->seq).kv_blocks : 0;
  if (r->blocks_needed + held > backend_->store().num_blocks()) {
    shared_->rejected_by_reason[static_cast<int>(RejectReason::kTooLong)].fetch_add(
        1, std::memory_order_relaxed);
    shared_->observer->OnRejected(RejectReason::kTooLong);
    reject(absl::InvalidArgumentError(
        absl::StrCat("prompt: the request needs up to ", r->blocks_needed + held,
                     " KV blocks, more than the whole pool of ", backend_->store().num_blocks(),
                     " blocks; send fewer tokens or lower max_new_tokens")));
    return;
  }
  waiting_.push_back(std::move(r));
}

// ---------------------------------------------------------------------------------------------
// Sessions

std::vector<EvictableSession> Worker::Evictable(const std::set<uint64_t>& skip) const {
  std::vector<std::pair<absl::Time, const WorkerSession*>> idle;
  for (const auto& [id, s] : sessions_) {
    if (!s->busy && skip.count(s->key) == 0) idle.emplace_back(s->last_use, s.get());
  }
  std::sort(idle.begin(), idle.end(), [](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    return a.second->key < b.second->key;
  });
  std::vector<EvictableSession> out;
  const StateStore& store = backend_->store();
  for (const auto& [t, s] : idle) {
    EvictableSession e;
    e.key = s->key;
    for (const auto& table : s->seq->streams) {
      for (const BlockRef& ref : table) {
        if (store.refcount(ref.block) == 1) ++e.blocks_freed;
      }
    }
    out.push_back(e);
  }
  return out;
}

void Worker::DestroySession(const std::string& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  backend_->store().Release(std::move(it->second->seq));
  sessions_.erase(it);
  idle_dirty_ = true;
  expiry_dirty_ = true;
  shared_->sessions_released.fetch_add(1, std::memory_order_relaxed);
}

void Worker::ReleaseSession(const std::string& id, std::optional<EvictReason> evicted) {
  if (sessions_.count(id) == 0) return;
  DestroySession(id);
  if (evicted.has_value()) shared_->CountEviction(*evicted);
  Publish();
}

bool Worker::TryEvictForSlot(const std::string& keep) {
  for (const EvictableSession& e : Evictable({})) {
    for (const auto& [id, s] : sessions_) {
      if (s->key != e.key || id == keep) continue;
      if (shared_->sessions.TryEvict(id)) {
        const std::string victim = id;
        DestroySession(victim);
        shared_->CountEviction(EvictReason::kLru);
        return true;
      }
      break;
    }
  }
  return false;
}

void Worker::Fork(const std::string& parent_id, const std::string& child_id,
                  const SessionCallback& done) {
  const absl::Time now = shared_->clock->Now();
  auto it = sessions_.find(parent_id);
  if (it == sessions_.end()) {
    shared_->sessions.Drop(child_id);
    done(absl::NotFoundError(absl::StrCat("session \"", parent_id, "\" not found")));
    return;
  }
  WorkerSession* parent = it->second.get();
  StateStore& store = backend_->store();
  auto child_seq = store.Fork(*parent->seq);
  while (!child_seq.ok() && TryEvictForSlot(parent_id)) child_seq = store.Fork(*parent->seq);
  const StateMemory parent_memory =
      MemoryOf(*parent->seq, static_cast<int64_t>(parent->history.size()));
  if (!child_seq.ok()) {
    shared_->sessions.Drop(child_id);
    shared_->sessions.Unpin(parent_id, parent_memory, parent->last_use);
    done(absl::UnavailableError(
        absl::StrCat("overloaded: state memory budget full (no free state slot on worker ", index_,
                     " for the fork)")));
    return;
  }
  backend_->CopySlot(parent->seq->slot, (*child_seq)->slot);
  auto child = std::make_unique<WorkerSession>();
  child->id = child_id;
  child->key = next_session_key_++;
  child->seq = std::move(child_seq).value();
  child->history = parent->history;
  child->last_use = now;
  const StateMemory child_memory =
      MemoryOf(*child->seq, static_cast<int64_t>(child->history.size()));
  sessions_.emplace(child_id, std::move(child));
  idle_dirty_ = true;  // a new idle session; the parent's blocks are shared now
  expiry_dirty_ = true;
  shared_->sessions_created.fetch_add(1, std::memory_order_relaxed);
  shared_->sessions.Unpin(parent_id, parent_memory, parent->last_use);
  shared_->sessions.Unpin(child_id, child_memory, now);
  Publish();
  done(shared_->sessions.Get(child_id));
}

void Worker::ExpireSessions(absl::Time now) {
  const absl::Duration ttl = shared_->options.session_ttl;
  if (ttl <= absl::ZeroDuration() || ttl == absl::InfiniteDuration()) return;
  // Nothing expires before next_expiry_ unless a session changed since it was computed (every
  // change of busy / last_use / the set of sessions sets expiry_dirty_): no walk per step.
  if (!expiry_dirty_ && now < next_expiry_) return;
  expiry_dirty_ = false;
  next_expiry_ = absl::InfiniteFuture();
  std::vector<std::string> expired;
  for (const auto& [id, s] : sessions_) {
    if (s->busy) continue;
    const absl::Time at = s->last_use + ttl;
    if (now >= at) {
      expired.push_back(id);
    } else {
      next_expiry_ = std::min(next_expiry_, at);
    }
  }
  for (const std::string& id : expired) {
    if (shared_->sessions.TryEvict(id)) {
      DestroySession(id);
      shared_->CountEviction(EvictReason::kTtl);
    } else {
      expiry_dirty_ = true;  // pinned meanwhile (a request for it is on its way): look again
    }
  }
}

StateMemory Worker::MemoryOf(const SequenceState& seq, int64_t context_tokens) const {
  const SequenceMemory m = backend_->store().MemoryOf(seq);
  StateMemory s;
  s.slot_bytes = m.slot_bytes;
  s.kv_bytes = m.kv_bytes;
  s.kv_blocks = m.kv_blocks;
  s.softmax_equivalent_bytes = m.softmax_equivalent_bytes;
  s.context_tokens = context_tokens;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Ending requests

void Worker::ReapEnded(absl::Time now) {
  // Queued requests: cancellation (deadlines are the planner's).
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->stream != nullptr && (*it)->stream->cancelled()) {
      std::unique_ptr<ActiveRequest> r = std::move(*it);
      it = waiting_.erase(it);
      shared_->queued.fetch_sub(1, std::memory_order_relaxed);
      End(std::move(r), FinishReason::kCancelled,
          absl::CancelledError("request cancelled by the client"), StreamEvent(), now);
    } else {
      ++it;
    }
  }
  // Running requests: cancellation, deadline, slow consumer.
  for (size_t i = 0; i < running_.size();) {
    ActiveRequest* r = running_[i].get();
    std::optional<FinishReason> reason;
    absl::Status status;
    if (r->stream != nullptr && r->stream->cancelled()) {
      reason = FinishReason::kCancelled;
      status = absl::CancelledError("request cancelled by the client");
    } else if (now >= r->request.deadline) {
      reason = FinishReason::kDeadline;
      status = absl::DeadlineExceededError("request deadline exceeded");
    } else if (r->stream != nullptr) {
      const uint64_t taken = r->stream->taken();
      if (r->stream->pending() == 0 || taken != r->stall_taken) {
        r->stall_taken = taken;
        r->stall_since = now;
      } else if (now - r->stall_since >= shared_->options.stall_timeout) {
        reason = FinishReason::kSlowConsumer;
        status = absl::CancelledError(absl::StrCat(
            "stream stalled: the client read nothing for ",
            absl::FormatDuration(shared_->options.stall_timeout), "; its state was freed"));
      }
    }
    if (reason.has_value()) {
      std::unique_ptr<ActiveRequest> owned = std::move(running_[i]);
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      End(std::move(owned), *reason, status, StreamEvent(), now);
    } else {
      ++i;
    }
  }
}

std::unique_ptr<ActiveRequest> Worker::TakeRunning(uint64_t id) {
  for (size_t i = 0; i < running_.size(); ++i) {
    if (running_[i]->id == id) {
      std::unique_ptr<ActiveRequest> r = std::move(running_[i]);
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      return r;
    }
  }
  return nullptr;
}

void Worker::End(std::unique_ptr<ActiveRequest> r, FinishReason reason, absl::Status status,
                 StreamEvent event, absl::Time now, const std::string& matched_stop,
                 int32_t matched_stop_token) {
  StateStore& store = backend_->store();
  const bool ok_end = reason == FinishReason::kStop || reason == FinishReason::kLength;
  hyla::Finish finish;
  finish.reason = reason;
  finish.status = status;
  finish.matched_stop = matched_stop;
  finish.matched_stop_token = matched_stop_token;
  Usage& usage = finish.usage;
  usage.prompt_tokens = static_cast<int64_t>(r->request.prompt.size());
  usage.reused_tokens = r->reused;
  usage.generated_tokens = static_cast<int64_t>(r->generated.size());
  usage.queue_time = (r->admitted == absl::Time() ? now : r->admitted) - r->accepted;
  usage.time_to_first_token =
      r->has_first_token ? r->first_token - r->accepted : absl::ZeroDuration();
  usage.total_time = now - r->accepted;

  // Text still held back (a possible stop-string prefix, a partial character) goes out with an
  // early end too: it was generated.
  if (!ok_end && r->stop.has_value() && !r->stop->done()) event.text += r->stop->Flush();

  WorkerSession* s = r->session;
  absl::StatusOr<SessionInfo> session_result =
      status.ok() ? absl::InternalError("session creation ended without a session") : status;
  if (s != nullptr) {
    const std::string id = s->id;
    const bool destroy = reason == FinishReason::kError || (r->create_session && !ok_end);
    if (destroy) {
      if (r->seq != nullptr) usage.state = MemoryOf(*r->seq, r->seq->num_tokens);
      shared_->sessions.Drop(id);
      DestroySession(id);
    } else {
      if (r->create_session) {
        s->history = r->request.prompt;
      } else {
        const int64_t prompt_size = static_cast<int64_t>(r->request.prompt.size());
        const int64_t consumed = std::clamp<int64_t>(r->folded - r->old_pending, 0, prompt_size);
        s->history.insert(s->history.end(), r->request.prompt.begin(),
                          r->request.prompt.begin() + consumed);
        if (consumed == prompt_size) {
          s->history.insert(s->history.end(), r->generated.begin(), r->generated.end());
        }
      }
      HYLA_CHECK(s->seq->num_tokens <= static_cast<int64_t>(s->history.size()));
      s->busy = false;
      idle_dirty_ = true;
      expiry_dirty_ = true;
      s->last_use = now;
      usage.state = MemoryOf(*s->seq, static_cast<int64_t>(s->history.size()));
      shared_->sessions.Unpin(id, usage.state, now);
      if (r->create_session) session_result = shared_->sessions.Get(id);
    }
  } else if (r->create_session) {
    // Never admitted: the registry entry was reserved by the engine.
    shared_->sessions.Drop(r->request.session_id);
  } else if (r->own_seq != nullptr) {
    usage.state = MemoryOf(*r->own_seq, r->own_seq->num_tokens);
    store.Release(std::move(r->own_seq));
  }
  r->seq = nullptr;

  shared_->in_flight.fetch_sub(1, std::memory_order_relaxed);
  shared_->requests_finished.fetch_add(1, std::memory_order_relaxed);
  shared_->finished_by_reason[static_cast<int>(reason)].fetch_add(1, std::memory_order_relaxed);
  RequestObservation obs;
  obs.worker = index_;
  obs.reason = reason;
  obs.session = IsSessionRequest(*r);
  obs.usage = usage;
  // Memory is back before the caller can see the end.
  Publish();

  if (r->stream != nullptr) {
    shared_->merged_events.fetch_add(static_cast<int64_t>(r->stream->merged()),
                                     std::memory_order_relaxed);
    event.finish = std::move(finish);
    r->stream->Push(std::move(event));
  }
  if (r->on_session) r->on_session(std::move(session_result));
  shared_->observer->OnRequestFinished(obs);
}

// ---------------------------------------------------------------------------------------------
// Steps

bool Worker::Admit(std::unique_ptr<ActiveRequest> r, absl::Time now) {
  StateStore& store = backend_->store();
  if (r->create_session) {
    auto seq = store.NewSequence();
    if (!seq.ok()) {  // the planner counted the slot; a broken invariant
      HYLA_CHECK_MSG(false, "admitted a session creation without a free slot");
    }
    backend_->ResetSlot((*seq)->slot);
    auto s = std::make_unique<WorkerSession>();
    s->id = r->request.session_id;
    s->key = next_session_key_++;
    s->seq = std::move(seq).value();
    s->busy = true;
    s->last_use = now;
    idle_dirty_ = true;
    expiry_dirty_ = true;
    r->session = s.get();
    r->seq = s->seq.get();
    sessions_.emplace(s->id, std::move(s));
    shared_->sessions_created.fetch_add(1, std::memory_order_relaxed);
  } else if (r->session == nullptr) {
    auto seq = store.NewSequence();
    HYLA_CHECK_MSG(seq.ok(), "admitted a request without a free slot");
    backend_->ResetSlot((*seq)->slot);
    r->own_seq = std::move(seq).value();
    r->seq = r->own_seq.get();
  }
  r->admitted = now;
  shared_->reused_tokens.fetch_add(r->reused, std::memory_order_relaxed);
  shared_->observer->OnAdmitted(now - r->accepted);
  if (r->max_new > 0) {
    r->sampler.emplace(r->request.sampling, shared_->vocab_size);
    if (r->session != nullptr) r->sampler->AddPrompt(r->session->history);
    r->sampler->AddPrompt(r->request.prompt);
    StopParams sp = r->request.stopping;
    sp.max_new_tokens = r->max_new;
    r->stop.emplace(sp, shared_->eos_id, shared_->tokenizer);
  }
  r->stall_since = now;
  UpdateReservation(r.get());
  const bool nothing_to_do = r->input.empty();
  running_.push_back(std::move(r));
  if (nothing_to_do) {  // a session created without a prefix
    std::unique_ptr<ActiveRequest> done = std::move(running_.back());
    running_.pop_back();
    End(std::move(done), FinishReason::kLength, absl::OkStatus(), StreamEvent(), now);
    return false;
  }
  return true;
}

void Worker::UpdateReservation(ActiveRequest* r) {
  r->reserved =
      r->seq == nullptr ? 0 : backend_->store().WorstCaseNewBlocks(*r->seq, LifetimeTokens(*r));
}

bool Worker::Step(absl::Time now) {
  schedule_start_ = SteadyNow();
  StateStore& store = backend_->store();
  StepPlan plan;
  std::set<uint64_t> pinned;  // sessions found pinned since they were listed as evictable
  for (int attempt = 0;; ++attempt) {
    SchedulerInput in;
    in.now = now;
    in.token_budget = shared_->options.token_budget;
    in.prefill_chunk = shared_->options.prefill_chunk_tokens;
    in.max_batch = shared_->options.max_batch;
    int64_t reserved = 0;
    for (const auto& r : running_) {
      RunningEntry e;
      e.id = r->id;
      e.prefill_left = r->generated.empty() ? static_cast<int64_t>(r->input.size()) - r->folded : 0;
      in.running.push_back(e);
      reserved += r->reserved;
    }
    for (const auto& r : waiting_) {
      WaitingEntry e;
      e.id = r->id;
      e.prefill_tokens = static_cast<int64_t>(r->input.size());
      e.needs_slot = r->create_session || r->session == nullptr;
      e.blocks_needed = r->blocks_needed;
      e.deadline = r->request.deadline;
      in.waiting.push_back(e);
    }
    // Only admissions evict (PlanStep reads the list for waiting requests alone): the walk over
    // every idle session's blocks is skipped while nothing waits.
    if (!waiting_.empty()) in.evictable = Evictable(pinned);
    in.free_slots = store.free_slots();
    in.free_blocks = store.free_blocks() - reserved;
    plan = PlanStep(in);
    // Evictions: a session may have been pinned since it was listed (its request is in the
    // inbox); then plan again without it.
    bool all_evicted = true;
    for (uint64_t key : plan.evict) {
      std::string id;
      for (const auto& [sid, s] : sessions_) {
        if (s->key == key) id = sid;
      }
      if (!id.empty() && shared_->sessions.TryEvict(id)) {
        DestroySession(id);
        shared_->CountEviction(EvictReason::kLru);
      } else {
        all_evicted = false;
        pinned.insert(key);
      }
    }
    if (all_evicted) break;
    if (attempt >= 3) {
      plan.admitted.clear();
      plan.work.erase(std::remove_if(plan.work.begin(), plan.work.end(),
                                     [&](const ScheduledWork& w) {
                                       for (const auto& r : running_) {
                                         if (r->id == w.id) return false;
                                       }
                                       return true;
                                     }),
                      plan.work.end());
      break;
    }
  }
  // Queued requests past their deadline.
  for (uint64_t id : plan.expired) {
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
      if ((*it)->id != id) continue;
      std::unique_ptr<ActiveRequest> r = std::move(*it);
      waiting_.erase(it);
      shared_->queued.fetch_sub(1, std::memory_order_relaxed);
      End(std::move(r), FinishReason::kDeadline,
          absl::DeadlineExceededError("request deadline exceeded while queued"), StreamEvent(),
          now);
      break;
    }
  }
  // Admissions (FIFO: they are the front of the queue, in order).
  for (uint64_t id : plan.admitted) {
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
      if ((*it)->id != id) continue;
      std::unique_ptr<ActiveRequest> r = std::move(*it);
      waiting_.erase(it);
      shared_->queued.fetch_sub(1, std::memory_order_relaxed);
      Admit(std::move(r), now);
      break;
    }
  }
  if (!plan.admitted.empty()) Publish();  // admission decisions see the slots taken
  // A queue head that cannot get memory while nothing runs would wait forever: the memory is
  // held by sessions that wait behind it. Reject it.
  if (running_.empty() && plan.admitted.empty() && plan.head_waits == WaitReason::kMemory &&
      !waiting_.empty()) {
    bool inbox_empty;
    {
      absl::MutexLock lock(&inbox_->mu);
      inbox_empty = inbox_->commands.empty();
    }
    if (inbox_empty) {
      std::unique_ptr<ActiveRequest> r = std::move(waiting_.front());
      waiting_.pop_front();
      shared_->queued.fetch_sub(1, std::memory_order_relaxed);
      shared_->rejected_by_reason[static_cast<int>(RejectReason::kMemory)].fetch_add(
          1, std::memory_order_relaxed);
      shared_->observer->OnRejected(RejectReason::kMemory);
      End(std::move(r), FinishReason::kError,
          absl::UnavailableError("overloaded: state memory budget full (held by busy "
                                 "sessions); retry later or on another server"),
          StreamEvent(), now);
    }
  }
  // Work for requests still running (a finished admission has none).
  running_by_id_.clear();
  for (const auto& r : running_) running_by_id_.emplace(r->id, r.get());
  std::vector<ScheduledWork> work;
  work.reserve(plan.work.size());
  for (const ScheduledWork& w : plan.work) {
    if (running_by_id_.count(w.id) != 0) work.push_back(w);
  }
  if (work.empty()) return false;
  RunBatch(work, now);
  return true;
}

void Worker::RunBatch(const std::vector<ScheduledWork>& work, absl::Time now) {
  std::vector<SequenceWork> batch;
  std::vector<ActiveRequest*> who;
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  batch.reserve(work.size());
  who.reserve(work.size());
  for (const ScheduledWork& w : work) {
    const auto it = running_by_id_.find(w.id);
    HYLA_CHECK(it != running_by_id_.end());
    ActiveRequest* r = it->second;
    HYLA_CHECK(r->folded + w.tokens <= static_cast<int64_t>(r->input.size()));
    SequenceWork sw;
    sw.seq = r->seq;
    sw.tokens = absl::MakeConstSpan(r->input).subspan(static_cast<size_t>(r->folded),
                                                      static_cast<size_t>(w.tokens));
    const bool ends_input = r->folded + w.tokens == static_cast<int64_t>(r->input.size());
    sw.logits = ends_input && r->max_new > 0 ? LogitsMode::kLast : LogitsMode::kNone;
    if (sw.logits == LogitsMode::kLast && backend_->SamplesOnDevice()) {
      sw.sampler = &*r->sampler;
      sw.suppressed = r->stop->SuppressedIds();
      sw.num_top = r->request.top_logprobs;
    }
    batch.push_back(sw);
    who.push_back(r);
    // A session's sequence may share blocks with idle forks (copy-on-write changes their
    // refcounts): the idle-session totals are recounted.
    if (r->session != nullptr) idle_dirty_ = true;
    (w.decode ? decode_tokens : prefill_tokens) += w.tokens;
  }
  StepOutput out;
  const SteadyTime step_start = SteadyNow();
  const absl::Status st = backend_->Step(batch, &out);
  const SteadyTime step_end = SteadyNow();
  const absl::Time after = shared_->clock->Now();
  emit_time_ = SteadyTime::duration::zero();
  shared_->steps.fetch_add(1, std::memory_order_relaxed);
  StepObservation obs;
  obs.worker = index_;
  obs.phase = prefill_tokens > 0 ? (decode_tokens > 0 ? StepPhase::kMixed : StepPhase::kPrefill)
                                 : StepPhase::kDecode;
  obs.batch_size = static_cast<int>(batch.size());
  obs.prefill_tokens = prefill_tokens;
  obs.decode_tokens = decode_tokens;
  obs.host_before = ToDuration(step_start - cycle_start_);
  obs.schedule = ToDuration(step_start - schedule_start_);
  obs.backend = ToDuration(step_end - step_start);
  if (!st.ok()) {
    // The batch's states may be partially updated: end all of its requests.
    obs.duration = after - now;
    shared_->observer->OnStep(obs);
    for (ActiveRequest* r : who) {
      std::unique_ptr<ActiveRequest> owned = TakeRunning(r->id);
      End(std::move(owned), FinishReason::kError, st, StreamEvent(), after);
    }
    return;
  }
  obs.routed_to_softmax = out.routing.to_softmax;
  obs.routed_to_gdn = out.routing.to_gdn;
  shared_->routed_to_softmax.fetch_add(out.routing.to_softmax, std::memory_order_relaxed);
  shared_->routed_to_gdn.fetch_add(out.routing.to_gdn, std::memory_order_relaxed);
  shared_->prompt_tokens.fetch_add(prefill_tokens, std::memory_order_relaxed);
  const int64_t vocab = shared_->vocab_size;
  // The batch's streams are handed to the notifier with one wake-up, after the loop.
  NotifierHold hold(&notifiers_);
  for (size_t b = 0; b < who.size(); ++b) {
    ActiveRequest* r = who[b];
    r->folded += static_cast<int64_t>(batch[b].tokens.size());
    if (b < out.sampled.size() && out.sampled[b].valid) {
      Accept(r, out.sampled[b].token, after);  // sampled by the backend
    } else if (out.row_count[b] > 0) {
      const float* row = out.logits.data() + (out.row_offset[b] + out.row_count[b] - 1) * vocab;
      Sample(r, absl::MakeConstSpan(row, static_cast<size_t>(vocab)), after);
    } else if (r->max_new == 0 && r->folded == static_cast<int64_t>(r->input.size())) {
      std::unique_ptr<ActiveRequest> owned = TakeRunning(r->id);
      End(std::move(owned), FinishReason::kLength, absl::OkStatus(), StreamEvent(), after);
    } else {
      UpdateReservation(r);
    }
  }
  hold.Release();
  obs.duration = shared_->clock->Now() - now;
  cycle_start_ = SteadyNow();
  obs.host_after = ToDuration(cycle_start_ - step_end);
  obs.emit = ToDuration(emit_time_);
  shared_->observer->OnStep(obs);
}

void Worker::Sample(ActiveRequest* r, absl::Span<const float> logits, absl::Time now) {
  const std::vector<int32_t>& suppressed = r->stop->SuppressedIds();
  if (!suppressed.empty()) {
    std::copy(logits.begin(), logits.end(), scratch_.begin());
    for (int32_t id : suppressed) scratch_[id] = kNegInf;
    logits = absl::MakeConstSpan(scratch_);
  }
  Accept(r, r->sampler->Sample(logits), now);
}

void Worker::Accept(ActiveRequest* r, const SampledToken& tok, absl::Time now) {
  const StopUpdate u = r->stop->Add(tok.id);
  r->generated.push_back(tok.id);
  shared_->generated_tokens.fetch_add(1, std::memory_order_relaxed);
  if (!r->has_first_token) {
    r->has_first_token = true;
    r->first_token = now;
    shared_->observer->OnFirstToken(now - r->accepted);
  } else {
    shared_->observer->OnInterToken(now - r->last_token);
  }
  r->last_token = now;

  StreamEvent event;
  event.token_ids.push_back(tok.id);
  event.text = u.text;
  if (r->request.logprobs || r->request.top_logprobs > 0) {
    TokenLogprob lp;
    lp.id = tok.id;
    lp.logprob = tok.logprob;
    if (r->request.top_logprobs > 0) lp.top = r->sampler->TopAlternatives(r->request.top_logprobs);
    event.logprobs.push_back(std::move(lp));
  }
  if (u.stop != StopKind::kNone) {
    std::unique_ptr<ActiveRequest> owned = TakeRunning(r->id);
    const FinishReason reason =
        u.stop == StopKind::kLength ? FinishReason::kLength : FinishReason::kStop;
    const int32_t matched_token =
        (u.stop == StopKind::kEos || u.stop == StopKind::kStopToken) ? tok.id : -1;
    End(std::move(owned), reason, absl::OkStatus(), std::move(event), now, u.matched_stop,
        matched_token);
    return;
  }
  r->input.push_back(tok.id);
  UpdateReservation(r);
  if (r->stream != nullptr) {
    const bool was_empty = r->stream->pending() == 0;
    if (was_empty) {
      r->stall_taken = r->stream->taken();
      r->stall_since = now;
    }
    const SteadyTime t0 = SteadyNow();
    r->stream->Push(std::move(event));
    emit_time_ += SteadyNow() - t0;
  }
}

// ---------------------------------------------------------------------------------------------
// Published counters

void Worker::Publish() {
  const StateStore& store = backend_->store();
  const StateLayout& layout = backend_->layout();
  int64_t reserved = 0;
  int64_t softmax_eq = 0;
  for (const auto& r : running_) {
    reserved += r->reserved;
    if (r->own_seq != nullptr) softmax_eq += layout.SoftmaxEquivalentBytes(r->own_seq->num_tokens);
  }
  // Busy sessions are exactly those of the requests in waiting_ and running_ (one each); their
  // contexts move every step. The idle sessions' totals (a walk over all their blocks) are
  // recounted only after something could have changed them (idle_dirty_).
  auto busy_session = [&](const ActiveRequest& r) {
    if (r.session != nullptr && r.session->busy) {
      softmax_eq += layout.SoftmaxEquivalentBytes(r.session->seq->num_tokens);
    }
  };
  for (const auto& r : running_) busy_session(*r);
  for (const auto& r : waiting_) busy_session(*r);
  if (idle_dirty_) {
    idle_dirty_ = false;
    idle_sessions_ = 0;
    idle_session_blocks_ = 0;
    idle_softmax_eq_ = 0;
    for (const auto& [id, s] : sessions_) {
      if (s->busy) continue;
      ++idle_sessions_;
      idle_softmax_eq_ += layout.SoftmaxEquivalentBytes(s->seq->num_tokens);
      for (const auto& table : s->seq->streams) {
        for (const BlockRef& ref : table) {
          if (store.refcount(ref.block) == 1) ++idle_session_blocks_;
        }
      }
    }
  }
  softmax_eq += idle_softmax_eq_;
  const int64_t idle = idle_sessions_;
  const int64_t idle_blocks = idle_session_blocks_;
  load_.running.store(static_cast<int64_t>(running_.size()), std::memory_order_relaxed);
  load_.waiting.store(static_cast<int64_t>(waiting_.size()), std::memory_order_relaxed);
  load_.sessions.store(static_cast<int64_t>(sessions_.size()), std::memory_order_relaxed);
  load_.free_slots.store(store.free_slots(), std::memory_order_relaxed);
  load_.free_blocks.store(store.free_blocks(), std::memory_order_relaxed);
  load_.reserved_blocks.store(reserved, std::memory_order_relaxed);
  load_.idle_sessions.store(idle, std::memory_order_relaxed);
  load_.idle_session_blocks.store(idle_blocks, std::memory_order_relaxed);
  load_.slot_bytes_used.store(store.used_slot_bytes(), std::memory_order_relaxed);
  load_.kv_bytes_used.store(store.used_kv_bytes(), std::memory_order_relaxed);
  load_.softmax_equivalent_bytes.store(softmax_eq, std::memory_order_release);
}

}  // namespace hyla
