#include "runtime/engine/engine.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/base/check.h"
#include "runtime/base/status_macros.h"
#include "runtime/engine/scheduler.h"
#include "runtime/engine/worker.h"

namespace hyla {
namespace {

class NullObserver : public EngineObserver {};

absl::Status ValidateOptions(const EngineOptions& o) {
  auto bad = [](const std::string& msg) { return absl::InvalidArgumentError("engine: " + msg); };
  if (o.num_workers < 1) return bad(absl::StrCat("num_workers must be >= 1, got ", o.num_workers));
  if (o.max_queued < 1) return bad(absl::StrCat("max_queued must be >= 1, got ", o.max_queued));
  if (o.max_batch < 1) return bad(absl::StrCat("max_batch must be >= 1, got ", o.max_batch));
  if (o.prefill_chunk_tokens < 1) {
    return bad(absl::StrCat("prefill_chunk_tokens must be >= 1, got ", o.prefill_chunk_tokens));
  }
  if (o.token_budget < o.max_batch - 1 + o.prefill_chunk_tokens) {
    return bad(absl::StrCat("token_budget (", o.token_budget,
                            ") must be at least max_batch - 1 + prefill_chunk_tokens (",
                            o.max_batch - 1 + o.prefill_chunk_tokens, ")"));
  }
  if (o.max_context < 0) return bad("max_context must be >= 0");
  if (o.default_max_new_tokens < 1) return bad("default_max_new_tokens must be >= 1");
  if (o.max_sessions < 0) return bad("max_sessions must be >= 0");
  if (o.stall_timeout <= absl::ZeroDuration()) return bad("stall_timeout must be positive");
  if (o.max_pending_events < 1) return bad("max_pending_events must be >= 1");
  if (o.notify_threads < 1 || o.notify_threads > 64) {
    return bad("notify_threads must be in [1, 64]");
  }
  return absl::OkStatus();
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kDeadline:
      return "deadline";
    case FinishReason::kSlowConsumer:
      return "slow_consumer";
    case FinishReason::kShutdown:
      return "shutdown";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

const char* StepPhaseName(StepPhase p) {
  switch (p) {
    case StepPhase::kPrefill:
      return "prefill";
    case StepPhase::kDecode:
      return "decode";
    case StepPhase::kMixed:
      return "mixed";
  }
  return "unknown";
}

const char* EvictReasonName(EvictReason r) {
  switch (r) {
    case EvictReason::kTtl:
      return "ttl";
    case EvictReason::kLru:
      return "lru";
    case EvictReason::kCapacity:
      return "capacity";
  }
  return "unknown";
}

Engine::Engine(const EngineOptions& options) : options_(options) {}

Engine::~Engine() {
  Shutdown();
  for (auto& w : workers_) w->Stop();
  workers_.clear();
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                                       const BackendFactory& factory) {
  HYLA_RETURN_IF_ERROR(ValidateOptions(options));
  if (!factory) return absl::InvalidArgumentError("engine: no backend factory");
  EngineOptions o = options;
  if (o.clock == nullptr) o.clock = std::make_shared<RealClock>();
  if (o.observer == nullptr) o.observer = std::make_shared<NullObserver>();
  uint64_t seed = o.session_id_seed;
  if (seed == 0) {
    std::random_device rd;
    seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }

  std::vector<std::unique_ptr<Backend>> backends;
  for (int i = 0; i < o.num_workers; ++i) {
    HYLA_ASSIGN_OR_RETURN(std::unique_ptr<Backend> b, factory(i));
    if (b == nullptr) return absl::InternalError(absl::StrCat("engine: backend ", i, " is null"));
    if (i > 0) {
      const ModelConfig& c0 = backends[0]->config();
      const ModelConfig& ci = b->config();
      if (ci.vocab_size != c0.vocab_size || ci.num_layers != c0.num_layers ||
          b->layout().slot_bytes() != backends[0]->layout().slot_bytes() ||
          b->store().num_slots() != backends[0]->store().num_slots() ||
          b->store().num_blocks() != backends[0]->store().num_blocks()) {
        return absl::InvalidArgumentError(
            absl::StrCat("engine: backend ", i, " differs from backend 0 (model or pool size)"));
      }
    }
    backends.push_back(std::move(b));
  }
  const ModelConfig& config = backends[0]->config();
  if (o.max_context == 0) {
    o.max_context = config.max_position_embeddings > 0 ? config.max_position_embeddings : 8192;
  }
  if (o.tokenizer != nullptr && o.tokenizer->vocab_size() > config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine: tokenizer vocabulary (", o.tokenizer->vocab_size(),
                     ") is larger than the model's (", config.vocab_size, ")"));
  }

  std::unique_ptr<Engine> engine(new Engine(o));
  engine->shared_ = std::make_unique<EngineShared>(o, seed);
  EngineShared& shared = *engine->shared_;
  shared.clock = o.clock.get();
  shared.tokenizer = o.tokenizer.get();
  shared.observer = o.observer.get();
  shared.vocab_size = config.vocab_size;
  shared.eos_id = config.eos_token_id;
  if (o.tokenizer != nullptr && o.tokenizer->eos_id() >= 0) shared.eos_id = o.tokenizer->eos_id();

  EngineInfo& info = engine->info_;
  info.config = &backends[0]->config();
  info.layout = &backends[0]->layout();
  info.num_workers = o.num_workers;
  info.max_context = o.max_context;
  info.default_max_new_tokens = o.default_max_new_tokens;
  info.slots_per_worker = backends[0]->store().num_slots();
  info.blocks_per_worker = backends[0]->store().num_blocks();
  info.slot_bytes = backends[0]->layout().slot_bytes();
  info.block_bytes = backends[0]->layout().block_bytes();
  info.memory_budget_bytes = o.num_workers * (info.slots_per_worker * info.slot_bytes +
                                              info.blocks_per_worker * info.block_bytes);

  for (int i = 0; i < o.num_workers; ++i) {
    engine->workers_.push_back(std::make_unique<Worker>(i, std::move(backends[i]), &shared));
  }
  for (auto& w : engine->workers_) w->Start();
  return engine;
}

int Engine::PickWorker() const {
  int best = 0;
  int64_t best_load = 0;
  int64_t best_blocks = 0;
  for (size_t i = 0; i < workers_.size(); ++i) {
    const WorkerLoad& l = workers_[i]->load();
    const int64_t load = l.running.load(std::memory_order_relaxed) +
                         l.waiting.load(std::memory_order_relaxed) +
                         l.inbox_requests.load(std::memory_order_relaxed);
    const int64_t blocks = workers_[i]->AvailableBlocks();
    if (i == 0 || load < best_load || (load == best_load && blocks > best_blocks)) {
      best = static_cast<int>(i);
      best_load = load;
      best_blocks = blocks;
    }
  }
  return best;
}

absl::Status Engine::ValidateRequest(const Request& r) const {
  const int vocab = shared_->vocab_size;
  if (r.prompt.empty() && r.session_id.empty()) {
    return absl::InvalidArgumentError("prompt must not be empty");
  }
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("prompt[", i, "]: token id ", r.prompt[i],
                                                     " is outside the vocabulary [0, ", vocab,
                                                     ")"));
    }
  }
  if (!r.session_id.empty()) {
    HYLA_RETURN_IF_ERROR(SessionManager::ValidateId(r.session_id, "session_id"));
  }
  HYLA_RETURN_IF_ERROR(ValidateSamplingParams(r.sampling));
  if (r.sampling.top_k > vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be in [0, ", vocab, "] (the vocabulary), got ", r.sampling.top_k));
  }
  HYLA_RETURN_IF_ERROR(ValidateStopParams(r.stopping, vocab, shared_->tokenizer != nullptr));
  if (r.stopping.max_new_tokens > options_.max_context) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens (", r.stopping.max_new_tokens,
                                                   ") exceeds the maximum context of ",
                                                   options_.max_context, " tokens"));
  }
  if (r.top_logprobs < 0 || r.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs must be in [0, ", kMaxTopLogprobs, "], got ", r.top_logprobs));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RequestHandle>> Engine::Submit(Request request,
                                                              std::function<void()> on_ready) {
  auto reject = [this](RejectReason reason, absl::Status st) {
    shared_->rejected_by_reason[static_cast<int>(reason)].fetch_add(1, std::memory_order_relaxed);
    shared_->observer->OnRejected(reason);
    return st;
  };
  if (draining()) {
    return reject(RejectReason::kDraining,
                  absl::UnavailableError("server is draining: no new requests are accepted"));
  }
  HYLA_RETURN_IF_ERROR(ValidateRequest(request));

  const Worker* worker = nullptr;
  int worker_index = 0;
  int64_t context = 0;
  const bool session = !request.session_id.empty();
  if (session) {
    // Pin first: a busy or unknown session is the caller's error, not overload.
    HYLA_ASSIGN_OR_RETURN(worker_index, shared_->sessions.Pin(request.session_id));
    auto info = shared_->sessions.Get(request.session_id);
    if (info.ok()) context = info->state.context_tokens;
    if (context == 0 && request.prompt.empty()) {
      shared_->sessions.Unpin(request.session_id, info.ok() ? info->state : StateMemory(),
                              info.ok() ? info->last_use : clock().Now());
      return absl::InvalidArgumentError("prompt: empty, and the session has no context yet");
    }
  } else {
    worker_index = PickWorker();
  }
  worker = workers_[worker_index].get();

  const int requested = request.stopping.max_new_tokens > 0 ? request.stopping.max_new_tokens
                                                            : options_.default_max_new_tokens;
  AdmissionInput in;
  in.context_tokens = context;
  in.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  in.max_new_tokens = requested;
  in.max_context = options_.max_context;
  const int64_t lifetime =
      std::min<int64_t>(in.prompt_tokens + requested - 1, options_.max_context - context);
  // A one-off request from an empty state; a session's own blocks are checked by its worker.
  in.blocks_needed = session ? 0
                             : static_cast<int64_t>(info_.layout->num_streams()) *
                                   CeilDiv(std::max<int64_t>(lifetime, 0), kBlockTokens);
  in.needs_slot = !session;
  in.pool_slots = info_.slots_per_worker;
  in.pool_blocks = info_.blocks_per_worker;
  in.queue_bound = options_.max_queued;
  in.fits_now =
      (session || worker->AvailableSlots() > 0) && worker->AvailableBlocks() >= in.blocks_needed;
  in.draining = false;
  AdmissionDecision decision;
  {
    absl::MutexLock lock(&admit_mu_);
    in.queued = shared_->queued.load(std::memory_order_relaxed);
    decision = Admit(in);
    if (decision.reason == RejectReason::kNone) {
      shared_->queued.fetch_add(1, std::memory_order_relaxed);
      shared_->in_flight.fetch_add(1, std::memory_order_relaxed);
    }
  }
  if (decision.reason != RejectReason::kNone) {
    if (session) {
      auto info = shared_->sessions.Get(request.session_id);
      if (info.ok()) shared_->sessions.Unpin(request.session_id, info->state, info->last_use);
    }
    return reject(decision.reason, decision.status);
  }
  shared_->requests_accepted.fetch_add(1, std::memory_order_relaxed);

  auto r = std::make_unique<ActiveRequest>();
  r->id = next_request_id_.fetch_add(1, std::memory_order_relaxed);
  r->accepted = clock().Now();
  r->requested_max_new = requested;
  if (request.top_logprobs > 0) request.logprobs = true;
  r->request = std::move(request);
  Worker* w = workers_[worker_index].get();
  r->stream = std::make_shared<RequestStream>(
      r->id, options_.max_pending_events, std::move(on_ready), w->Waker(),
      options_.notify_on_worker_thread ? nullptr : w->notifier(r->id));
  auto handle = std::make_unique<RequestHandle>(r->stream);
  w->EnqueueRequest(std::move(r));
  return handle;
}

absl::Status Engine::CreateSession(std::string session_id, std::vector<int32_t> prefix,
                                   absl::Time deadline, SessionCallback done) {
  if (draining()) {
    shared_->rejected_by_reason[static_cast<int>(RejectReason::kDraining)].fetch_add(1);
    shared_->observer->OnRejected(RejectReason::kDraining);
    return absl::UnavailableError("server is draining: no new sessions are accepted");
  }
  if (!session_id.empty()) {
    HYLA_RETURN_IF_ERROR(SessionManager::ValidateId(session_id, "session_id"));
  }
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (prefix[i] < 0 || prefix[i] >= shared_->vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prefix[", i, "]: token id ", prefix[i],
                                                     " is outside the vocabulary [0, ",
                                                     shared_->vocab_size, ")"));
    }
  }
  const int worker_index = PickWorker();
  const Worker* worker = workers_[worker_index].get();
  AdmissionInput in;
  in.prompt_tokens = static_cast<int64_t>(prefix.size());
  in.max_new_tokens = 0;
  in.max_context = options_.max_context;
  in.blocks_needed = static_cast<int64_t>(info_.layout->num_streams()) *
                     CeilDiv(std::max<int64_t>(in.prompt_tokens - 1, 0), kBlockTokens);
  in.needs_slot = true;
  in.pool_slots = info_.slots_per_worker;
  in.pool_blocks = info_.blocks_per_worker;
  in.queue_bound = options_.max_queued;
  in.fits_now = worker->AvailableSlots() > 0 && worker->AvailableBlocks() >= in.blocks_needed;
  AdmissionDecision decision;
  {
    absl::MutexLock lock(&admit_mu_);
    in.queued = shared_->queued.load(std::memory_order_relaxed);
    decision = Admit(in);
    if (decision.reason == RejectReason::kNone) {
      shared_->queued.fetch_add(1, std::memory_order_relaxed);
      shared_->in_flight.fetch_add(1, std::memory_order_relaxed);
    }
  }
  if (decision.reason != RejectReason::kNone) {
    shared_->rejected_by_reason[static_cast<int>(decision.reason)].fetch_add(1);
    shared_->observer->OnRejected(decision.reason);
    if (decision.reason == RejectReason::kTooLong) {
      // Name the CreateSession field.
      return absl::InvalidArgumentError(
          absl::StrCat("prefix", decision.status.message().substr(6)));
    }
    return decision.status;
  }
  std::optional<EvictedSession> evicted;
  absl::Status st = shared_->sessions.Reserve(&session_id, worker_index, clock().Now(), &evicted);
  if (!st.ok()) {
    shared_->queued.fetch_sub(1, std::memory_order_relaxed);
    shared_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    return st;
  }
  if (evicted.has_value()) {
    workers_[evicted->worker]->EnqueueRelease(evicted->id, EvictReason::kCapacity);
  }
  shared_->requests_accepted.fetch_add(1, std::memory_order_relaxed);
  auto r = std::make_unique<ActiveRequest>();
  r->id = next_request_id_.fetch_add(1, std::memory_order_relaxed);
  r->accepted = clock().Now();
  r->create_session = true;
  r->on_session = std::move(done);
  r->request.session_id = session_id;
  r->request.prompt = std::move(prefix);
  r->request.deadline = deadline;
  workers_[worker_index]->EnqueueRequest(std::move(r));
  return absl::OkStatus();
}

absl::Status Engine::ForkSession(const std::string& parent, std::string new_session_id,
                                 SessionCallback done) {
  if (draining()) {
    return absl::UnavailableError("server is draining: no new sessions are accepted");
  }
  HYLA_RETURN_IF_ERROR(SessionManager::ValidateId(parent, "session_id"));
  if (!new_session_id.empty()) {
    HYLA_RETURN_IF_ERROR(SessionManager::ValidateId(new_session_id, "new_session_id"));
  }
  HYLA_ASSIGN_OR_RETURN(const int worker_index, shared_->sessions.Pin(parent));
  std::optional<EvictedSession> evicted;
  absl::Status st =
      shared_->sessions.Reserve(&new_session_id, worker_index, clock().Now(), &evicted);
  if (!st.ok()) {
    auto info = shared_->sessions.Get(parent);
    if (info.ok()) shared_->sessions.Unpin(parent, info->state, info->last_use);
    if (absl::IsAlreadyExists(st)) {
      return absl::AlreadyExistsError(
          absl::StrCat("new_session_id \"", new_session_id, "\" already exists"));
    }
    return st;
  }
  if (evicted.has_value()) {
    workers_[evicted->worker]->EnqueueRelease(evicted->id, EvictReason::kCapacity);
  }
  workers_[worker_index]->EnqueueFork(parent, new_session_id, std::move(done));
  return absl::OkStatus();
}

absl::Status Engine::DeleteSession(const std::string& session_id) {
  HYLA_RETURN_IF_ERROR(SessionManager::ValidateId(session_id, "session_id"));
  HYLA_ASSIGN_OR_RETURN(const int worker_index, shared_->sessions.Remove(session_id));
  workers_[worker_index]->EnqueueRelease(session_id, std::nullopt);
  return absl::OkStatus();
}

absl::StatusOr<SessionInfo> Engine::GetSession(const std::string& session_id) const {
  HYLA_RETURN_IF_ERROR(SessionManager::ValidateId(session_id, "session_id"));
  return shared_->sessions.Get(session_id);
}

std::vector<SessionInfo> Engine::ListSessions() const { return shared_->sessions.List(); }

void Engine::StartDrain() { draining_.store(true, std::memory_order_release); }

void Engine::Shutdown() {
  StartDrain();
  for (auto& w : workers_) w->RequestStop();
}

int64_t Engine::InFlight() const { return shared_->in_flight.load(std::memory_order_acquire); }

EngineStats Engine::Stats() const {
  EngineStats s;
  for (const auto& w : workers_) {
    const WorkerLoad& l = w->load();
    s.running += l.running.load(std::memory_order_relaxed);
    s.sessions += l.sessions.load(std::memory_order_relaxed);
    s.slots_used += info_.slots_per_worker - l.free_slots.load(std::memory_order_relaxed);
    s.kv_blocks_used += info_.blocks_per_worker - l.free_blocks.load(std::memory_order_relaxed);
    s.kv_blocks_reserved += l.reserved_blocks.load(std::memory_order_relaxed);
    s.slot_bytes_used += l.slot_bytes_used.load(std::memory_order_relaxed);
    s.kv_bytes_used += l.kv_bytes_used.load(std::memory_order_relaxed);
    s.softmax_equivalent_bytes += l.softmax_equivalent_bytes.load(std::memory_order_acquire);
  }
  s.waiting = shared_->queued.load(std::memory_order_relaxed);
  s.slots_capacity = static_cast<int64_t>(info_.slots_per_worker) * info_.num_workers;
  s.kv_blocks_capacity = info_.blocks_per_worker * info_.num_workers;
  s.slot_bytes_capacity = s.slots_capacity * info_.slot_bytes;
  s.kv_bytes_capacity = s.kv_blocks_capacity * info_.block_bytes;
  s.requests_accepted = shared_->requests_accepted.load();
  s.requests_finished = shared_->requests_finished.load();
  for (int i = 0; i < 7; ++i) s.finished_by_reason[i] = shared_->finished_by_reason[i].load();
  for (int i = 0; i < 5; ++i) s.rejected_by_reason[i] = shared_->rejected_by_reason[i].load();
  for (int i = 0; i < 3; ++i) s.evictions_by_reason[i] = shared_->evictions_by_reason[i].load();
  s.prompt_tokens = shared_->prompt_tokens.load();
  s.generated_tokens = shared_->generated_tokens.load();
  s.reused_tokens = shared_->reused_tokens.load();
  s.routed_to_softmax = shared_->routed_to_softmax.load();
  s.routed_to_gdn = shared_->routed_to_gdn.load();
  s.steps = shared_->steps.load();
  s.sessions_created = shared_->sessions_created.load();
  s.sessions_released = shared_->sessions_released.load();
  s.merged_events = shared_->merged_events.load();
  return s;
}

}  // namespace hyla
