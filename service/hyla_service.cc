#include "service/hyla_service.h"

#include <chrono>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/alarm.h"
#include "runtime/base/check.h"
#include "service/convert.h"
#include "service/status_mapping.h"

namespace hyla::service {
namespace {

constexpr std::chrono::system_clock::time_point kNoDeadline =
    std::chrono::system_clock::time_point::max();

// Constant-time comparison (a token must not leak through timing).
bool SecretEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

// The engine-clock deadline of a call (the engine runs on the real clock).
absl::Time CallDeadline(const grpc::CallbackServerContext* context) {
  const auto d = context->deadline();
  if (d >= kNoDeadline - std::chrono::hours(24 * 365)) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

bool DeadlinePassed(const grpc::CallbackServerContext* context) {
  const auto d = context->deadline();
  if (d >= kNoDeadline - std::chrono::hours(24 * 365)) return false;
  return std::chrono::system_clock::now() + std::chrono::milliseconds(5) >= d;
}

// Adds the retry hint of an UNAVAILABLE status to the call's trailing metadata.
void AddRetryHint(grpc::CallbackServerContext* context, const absl::Status& status) {
  const std::optional<int64_t> ms = RetryAfterMs(status);
  if (!ms.has_value()) return;
  context->AddTrailingMetadata(kRetryAfterMsKey, absl::StrCat(*ms));
  context->AddTrailingMetadata(kGrpcRetryPushbackMsKey, absl::StrCat(*ms));
}

// Logs a call that ended with a server-side error (not a client mistake, a cancellation or an
// overload refusal, which the metrics count): one line on stderr.
void LogIfServerError(Method method, const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::UNAVAILABLE:
      return;
    default:
      break;
  }
  const std::string line =
      absl::StrCat("hyla-server: error: ", absl::FormatTime(absl::Now()), " ", MethodName(method),
                   ": ", GrpcCodeName(status.error_code()), ": ", status.error_message(), "\n");
  std::fputs(line.c_str(), stderr);
}

// An INVALID_ARGUMENT the engine counts itself as "too_long" (see Admit in scheduler.cc).
bool IsTooLong(const absl::Status& status) {
  return absl::IsInvalidArgument(status) &&
         (absl::StrContains(status.message(), "the maximum context of") ||
          absl::StrContains(status.message(), "whole pool"));
}

// ---------------------------------------------------------------------------------------------
// Unary calls: one object per call, finished exactly once (at once or from an engine callback).

class UnaryCall {
 public:
  UnaryCall(HylaService* service, grpc::CallbackServerContext* context, Method method)
      : service_(service),
        context_(context),
        reactor_(context->DefaultReactor()),
        method_(method),
        start_(absl::Now()) {
    service_->CallStarted();
  }

  grpc::ServerUnaryReactor* reactor() const { return reactor_; }

  // Finishes the call with `status` (mapped, retry hint added, counted) and deletes itself.
  grpc::ServerUnaryReactor* Finish(const absl::Status& status) {
    grpc::ServerUnaryReactor* reactor = reactor_;
    if (absl::IsInvalidArgument(status) && !IsTooLong(status)) {
      service_->metrics().OnServiceReject(ServiceReject::kInvalid);
    }
    AddRetryHint(context_, status);
    const grpc::Status g = ToGrpcStatus(status);
    service_->metrics().OnRpcFinished(method_, g.error_code(), absl::Now() - start_);
    LogIfServerError(method_, g);
    HylaService* service = service_;
    delete this;
    reactor->Finish(g);
    service->CallEnded();
    return reactor;
  }

 private:
  HylaService* const service_;
  grpc::CallbackServerContext* const context_;
  grpc::ServerUnaryReactor* const reactor_;
  const Method method_;
  const absl::Time start_;
};

// ---------------------------------------------------------------------------------------------
// Generate.

class GenerateReactor;

// Lets threads other than gRPC's (the engine's on_ready, stall alarms) reach a reactor safely:
// the reactor is deleted only when OnDone has run and no such callback is inside it.
struct ReactorLink {
  absl::Mutex mu;
  GenerateReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
  int active ABSL_GUARDED_BY(mu) = 0;
  GenerateReactor* pending_delete ABSL_GUARDED_BY(mu) = nullptr;

  GenerateReactor* Enter() {
    absl::MutexLock lock(&mu);
    if (reactor == nullptr) return nullptr;
    ++active;
    return reactor;
  }
  void Leave();
};

class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(HylaService* service, grpc::CallbackServerContext* context,
                  const v1::GenerateRequest* request)
      : service_(service),
        context_(context),
        start_(absl::Now()),
        link_(std::make_shared<ReactorLink>()) {
    service_->CallStarted();
    {
      absl::MutexLock lock(&link_->mu);
      link_->reactor = this;
    }
    Start(*request);
  }

  void OnWriteDone(bool ok) override {
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = false;
      if (pending_finish_.has_value()) {
        finish = std::move(pending_finish_);
        pending_finish_.reset();
      } else if (!ok && !finished_) {
        // The stream broke (the client went away): OnCancel follows and ends the call; make sure
        // the engine lets go at once.
        if (handle_ != nullptr) handle_->Cancel();
        return;
      }
    }
    if (finish.has_value()) {
      Finish(*finish);
      return;
    }
    Pump();
  }

  void OnCancel() override {
    CancelCause cause = CancelCause::kClient;
    bool finish_now = false;
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (handle_ != nullptr) handle_->Cancel();  // the engine frees the state within a step
      if (finished_) return;                      // already finishing on its own
      finished_ = true;
      if (stalled_) {
        cause = CancelCause::kSlowConsumer;
        status = grpc::Status(grpc::StatusCode::CANCELLED,
                              absl::StrCat("stream stalled: the client read nothing for ",
                                           absl::FormatDuration(service_->options().stall_timeout),
                                           "; its state was freed"));
      } else if (service_->forced_shutdown()) {
        cause = CancelCause::kShutdown;
        status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "server shut down before the request finished");
      } else if (DeadlinePassed(context_)) {
        cause = CancelCause::kDeadline;
        status = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded");
      } else {
        status = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
      }
      if (write_in_flight_) {
        pending_finish_ = status;  // OnWriteDone(false) finishes
      } else {
        finish_now = true;
      }
    }
    Record(status, cause, /*cancelled=*/true);
    if (finish_now) Finish(status);
  }

  void OnDone() override {
    service_->CallEnded();
    std::unique_ptr<RequestHandle> handle;
    {
      absl::MutexLock lock(&mu_);
      handle = std::move(handle_);  // destroying it cancels the request if it still runs
      alarms_.clear();              // pending alarms are cancelled; their callbacks find no reactor
    }
    handle.reset();
    bool delete_now = false;
    {
      absl::MutexLock lock(&link_->mu);
      link_->reactor = nullptr;
      if (link_->active == 0) {
        delete_now = true;
      } else {
        link_->pending_delete = this;
      }
    }
    if (delete_now) delete this;
  }

  // Takes the next event and writes it, unless a write is outstanding or the call is finished.
  void Pump() {
    enum class Action { kNone, kWrite, kWriteAndFinish, kFinish } action = Action::kNone;
    grpc::Status status;
    std::optional<Usage> usage;
    CancelCause cause = CancelCause::kClient;
    bool cancelled = false;
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || write_in_flight_ || handle_ == nullptr) return;
      // Everything pending goes out in one message (a write that lagged behind a step or more).
      std::optional<StreamEvent> event = handle_->TryNextMerged();
      if (!event.has_value()) return;
      StreamEventToProto(*event, &response_);
      if (!event->finish.has_value()) {
        action = Action::kWrite;
      } else {
        finished_ = true;
        const hyla::Finish& f = *event->finish;
        usage = f.usage;
        if (f.status.ok()) {
          status = grpc::Status::OK;
          action = Action::kWriteAndFinish;
        } else {
          status = ToGrpcStatus(f.status);
          switch (f.reason) {
            case FinishReason::kDeadline:
              status = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                    std::string(f.status.message()));
              cause = CancelCause::kDeadline;
              cancelled = true;
              break;
            case FinishReason::kSlowConsumer:
              cause = CancelCause::kSlowConsumer;
              cancelled = true;
              break;
            case FinishReason::kShutdown:
              cause = CancelCause::kShutdown;
              cancelled = true;
              break;
            case FinishReason::kCancelled:
              cause = CancelCause::kClient;
              cancelled = true;
              break;
            default:
              break;
          }
          if (response_.token_ids_size() > 0 || !response_.text().empty()) {
            pending_finish_ = status;  // deliver the last tokens, then the status
            action = Action::kWrite;
          } else {
            action = Action::kFinish;
          }
        }
      }
      if (action == Action::kWrite || action == Action::kWriteAndFinish) {
        write_in_flight_ = action == Action::kWrite;
        write_started_ = absl::Now();
        if (action == Action::kWrite) ArmStallAlarmLocked();
      }
    }
    if (usage.has_value() || cancelled || action == Action::kFinish) {
      Record(status, cause, cancelled, usage);
    }
    switch (action) {
      case Action::kWrite:
        StartWrite(&response_);
        break;
      case Action::kWriteAndFinish:
        StartWriteAndFinish(&response_, grpc::WriteOptions(), status);
        break;
      case Action::kFinish:
        Finish(status);
        break;
      case Action::kNone:
        break;
    }
  }

  void OnStallAlarm() {
    bool cancel = false;
    {
      absl::MutexLock lock(&mu_);
      alarm_armed_ = false;
      if (finished_ || !write_in_flight_) return;
      const absl::Duration stall = service_->options().stall_timeout;
      if (absl::Now() - write_started_ >= stall) {
        stalled_ = true;
        cancel = true;
        if (handle_ != nullptr) handle_->Cancel();
      } else {
        ArmStallAlarmLocked();
      }
    }
    if (cancel) context_->TryCancel();  // breaks the held write; OnCancel finishes the call
  }

 private:
  // Validates and submits; finishes the call at once on any error.
  void Start(const v1::GenerateRequest& request) {
    absl::Status st = service_->CheckAdmission(context_);
    const InputField input = InputFieldOf(request);
    std::optional<Request> engine_request;
    if (st.ok()) {
      const EngineInfo& info = service_->engine().info();
      RequestLimits limits;
      limits.vocab_size = info.config->vocab_size;
      limits.max_context = info.max_context;
      limits.has_tokenizer = service_->engine().tokenizer() != nullptr;
      absl::StatusOr<Request> r =
          ToEngineRequest(request, service_->engine().tokenizer(), limits, service_->NextSeed());
      if (r.ok()) {
        engine_request = std::move(*r);
        engine_request->deadline = CallDeadline(context_);
      } else {
        st = r.status();
      }
    }
    if (st.ok()) {
      std::shared_ptr<ReactorLink> link = link_;
      auto handle = service_->engine().Submit(std::move(*engine_request), [link] {
        if (GenerateReactor* r = link->Enter()) {
          r->Pump();
          link->Leave();
        }
      });
      if (handle.ok()) {
        {
          absl::MutexLock lock(&mu_);
          handle_ = std::move(*handle);
        }
        Pump();
        return;
      }
      st = ProtoFieldStatus(handle.status(), input);
    }
    // Refused before any token.
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
    }
    if (absl::IsInvalidArgument(st) && !IsTooLong(st)) {
      service_->metrics().OnServiceReject(ServiceReject::kInvalid);
    }
    AddRetryHint(context_, st);
    const grpc::Status g = ToGrpcStatus(st);
    Record(g, CancelCause::kClient, /*cancelled=*/false);
    Finish(g);
  }

  // Counts the call once: its code and duration, its cancellation cause (when `cancelled`), and
  // the Generate histograms when the engine reported usage.
  void Record(const grpc::Status& status, CancelCause cause, bool cancelled,
              std::optional<Usage> usage = std::nullopt) {
    if (recorded_.exchange(true)) return;
    const grpc::StatusCode code = status.error_code();
    LogIfServerError(Method::kGenerate, status);
    Metrics& m = service_->metrics();
    const absl::Duration elapsed = absl::Now() - start_;
    m.OnRpcFinished(Method::kGenerate, code, elapsed);
    if (cancelled) m.OnCancelled(cause);
    if (usage.has_value()) {
      m.OnGenerateFinished(usage->prompt_tokens, usage->generated_tokens, usage->total_time);
    }
  }

  void ArmStallAlarmLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (alarm_armed_) return;
    alarm_armed_ = true;
    const absl::Time at = write_started_ + service_->options().stall_timeout;
    auto alarm = std::make_unique<grpc::Alarm>();
    std::shared_ptr<ReactorLink> link = link_;
    alarm->Set(absl::ToChronoTime(at), [link](bool ok) {
      if (!ok) return;  // cancelled: the call is over
      if (GenerateReactor* r = link->Enter()) {
        r->OnStallAlarm();
        link->Leave();
      }
    });
    // Fired alarms are kept until OnDone: an alarm must not be destroyed inside its callback.
    alarms_.push_back(std::move(alarm));
  }

  HylaService* const service_;
  grpc::CallbackServerContext* const context_;
  const absl::Time start_;
  const std::shared_ptr<ReactorLink> link_;
  std::atomic<bool> recorded_{false};

  absl::Mutex mu_;
  std::unique_ptr<RequestHandle> handle_ ABSL_GUARDED_BY(mu_);
  v1::GenerateResponse response_;  // owned by the write in flight while write_in_flight_
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish (or the final write) is decided
  std::optional<grpc::Status> pending_finish_ ABSL_GUARDED_BY(mu_);
  absl::Time write_started_ ABSL_GUARDED_BY(mu_);
  bool alarm_armed_ ABSL_GUARDED_BY(mu_) = false;
  bool stalled_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::unique_ptr<grpc::Alarm>> alarms_ ABSL_GUARDED_BY(mu_);
};

void ReactorLink::Leave() {
  GenerateReactor* to_delete = nullptr;
  {
    absl::MutexLock lock(&mu);
    --active;
    if (active == 0 && pending_delete != nullptr) {
      to_delete = pending_delete;
      pending_delete = nullptr;
    }
  }
  delete to_delete;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

HylaService::HylaService(Engine* engine, std::shared_ptr<Metrics> metrics,
                         HylaServiceOptions options)
    : engine_(engine), metrics_(std::move(metrics)), options_(std::move(options)) {
  std::random_device rd;
  seed_rng_.seed((static_cast<uint64_t>(rd()) << 32) ^ rd());
}

HylaService::~HylaService() = default;

absl::Status HylaService::CheckAdmission(const grpc::CallbackServerContext* context) {
  if (!options_.auth_token.empty()) {
    const auto& md = context->client_metadata();
    auto it = md.find("authorization");
    const std::string expected = absl::StrCat("Bearer ", options_.auth_token);
    if (it == md.end() ||
        !SecretEquals(absl::string_view(it->second.data(), it->second.size()), expected)) {
      metrics_->OnServiceReject(ServiceReject::kUnauthenticated);
      return absl::UnauthenticatedError(it == md.end()
                                            ? "missing metadata \"authorization: Bearer <token>\""
                                            : "invalid bearer token");
    }
  }
  if (draining()) {
    metrics_->OnServiceReject(ServiceReject::kDraining);
    return absl::UnavailableError("server is draining: no new requests are accepted");
  }
  return absl::OkStatus();
}

void HylaService::CallStarted() {
  absl::MutexLock lock(&calls_mu_);
  ++active_calls_;
}

void HylaService::CallEnded() {
  absl::MutexLock lock(&calls_mu_);
  --active_calls_;
}

int64_t HylaService::active_calls() const {
  absl::MutexLock lock(&calls_mu_);
  return active_calls_;
}

bool HylaService::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&calls_mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(calls_mu_) { return active_calls_ == 0; };
  calls_mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
  return active_calls_ == 0;
}

void HylaService::StartDrain() {
  draining_.store(true, std::memory_order_release);
  engine_->StartDrain();
}

uint64_t HylaService::NextSeed() {
  absl::MutexLock lock(&seed_mu_);
  return seed_rng_();
}

grpc::ServerWriteReactor<v1::GenerateResponse>* HylaService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new GenerateReactor(this, context, request);
}

grpc::ServerUnaryReactor* HylaService::CreateSession(grpc::CallbackServerContext* context,
                                                     const v1::CreateSessionRequest* request,
                                                     v1::SessionInfo* response) {
  auto* call = new UnaryCall(this, context, Method::kCreateSession);
  grpc::ServerUnaryReactor* reactor = call->reactor();
  if (absl::Status st = CheckAdmission(context); !st.ok()) return call->Finish(st);
  const InputField input = InputFieldOf(*request);
  absl::StatusOr<std::vector<int32_t>> prefix =
      InputTokens(input, request->text(), request->token_ids(), engine_->tokenizer(),
                  engine_->info().config->vocab_size);
  if (!prefix.ok()) return call->Finish(prefix.status());
  Engine* engine = engine_;
  absl::Status st =
      engine_->CreateSession(request->session_id(), std::move(*prefix), CallDeadline(context),
                             [call, response, engine](absl::StatusOr<SessionInfo> info) {
                               if (info.ok())
                                 SessionInfoToProto(*info, engine->clock().Now(), response);
                               call->Finish(info.status());
                             });
  if (!st.ok()) return call->Finish(ProtoFieldStatus(st, input));
  return reactor;
}

grpc::ServerUnaryReactor* HylaService::GetSession(grpc::CallbackServerContext* context,
                                                  const v1::GetSessionRequest* request,
                                                  v1::SessionInfo* response) {
  auto* call = new UnaryCall(this, context, Method::kGetSession);
  if (absl::Status st = CheckAdmission(context); !st.ok()) return call->Finish(st);
  absl::StatusOr<SessionInfo> info = engine_->GetSession(request->session_id());
  if (info.ok()) SessionInfoToProto(*info, engine_->clock().Now(), response);
  return call->Finish(info.status());
}

grpc::ServerUnaryReactor* HylaService::ForkSession(grpc::CallbackServerContext* context,
                                                   const v1::ForkSessionRequest* request,
                                                   v1::SessionInfo* response) {
  auto* call = new UnaryCall(this, context, Method::kForkSession);
  grpc::ServerUnaryReactor* reactor = call->reactor();
  if (absl::Status st = CheckAdmission(context); !st.ok()) return call->Finish(st);
  Engine* engine = engine_;
  absl::Status st =
      engine_->ForkSession(request->session_id(), request->new_session_id(),
                           [call, response, engine](absl::StatusOr<SessionInfo> info) {
                             if (info.ok())
                               SessionInfoToProto(*info, engine->clock().Now(), response);
                             call->Finish(info.status());
                           });
  if (!st.ok()) return call->Finish(st);
  return reactor;
}

grpc::ServerUnaryReactor* HylaService::DeleteSession(grpc::CallbackServerContext* context,
                                                     const v1::DeleteSessionRequest* request,
                                                     v1::DeleteSessionResponse* response) {
  auto* call = new UnaryCall(this, context, Method::kDeleteSession);
  if (absl::Status st = CheckAdmission(context); !st.ok()) return call->Finish(st);
  return call->Finish(engine_->DeleteSession(request->session_id()));
}

grpc::ServerUnaryReactor* HylaService::ListSessions(grpc::CallbackServerContext* context,
                                                    const v1::ListSessionsRequest* request,
                                                    v1::ListSessionsResponse* response) {
  auto* call = new UnaryCall(this, context, Method::kListSessions);
  if (absl::Status st = CheckAdmission(context); !st.ok()) return call->Finish(st);
  const absl::Time now = engine_->clock().Now();
  for (const SessionInfo& s : engine_->ListSessions()) {
    SessionInfoToProto(s, now, response->add_sessions());
  }
  return call->Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* HylaService::Tokenize(grpc::CallbackServerContext* context,
                                                const v1::TokenizeRequest* request,
                                                v1::TokenizeResponse* response) {
  auto* call = new UnaryCall(this, context, Method::kTokenize);
  if (absl::Status st = CheckAdmission(context); !st.ok()) return call->Finish(st);
  const Tokenizer* tokenizer = engine_->tokenizer();
  if (tokenizer == nullptr) {
    return call->Finish(absl::FailedPreconditionError("this model has no tokenizer on the server"));
  }
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(request->text());
  if (!ids.ok()) {
    return call->Finish(absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message())));
  }
  response->mutable_ids()->Assign(ids->begin(), ids->end());
  return call->Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* HylaService::Detokenize(grpc::CallbackServerContext* context,
                                                  const v1::DetokenizeRequest* request,
                                                  v1::DetokenizeResponse* response) {
  auto* call = new UnaryCall(this, context, Method::kDetokenize);
  if (absl::Status st = CheckAdmission(context); !st.ok()) return call->Finish(st);
  const Tokenizer* tokenizer = engine_->tokenizer();
  if (tokenizer == nullptr) {
    return call->Finish(absl::FailedPreconditionError("this model has no tokenizer on the server"));
  }
  const int vocab = engine_->info().config->vocab_size;
  for (int i = 0; i < request->ids_size(); ++i) {
    if (request->ids(i) < 0 || request->ids(i) >= vocab) {
      return call->Finish(
          absl::InvalidArgumentError(absl::StrCat("ids[", i, "]: token id ", request->ids(i),
                                                  " is outside the vocabulary [0, ", vocab, ")")));
    }
  }
  response->set_text(
      tokenizer->Decode(absl::Span<const int32_t>(request->ids().data(), request->ids_size())));
  return call->Finish(absl::OkStatus());
}

grpc::ServerUnaryReactor* HylaService::GetModelInfo(grpc::CallbackServerContext* context,
                                                    const v1::GetModelInfoRequest* request,
                                                    v1::ModelInfo* response) {
  auto* call = new UnaryCall(this, context, Method::kGetModelInfo);
  if (absl::Status st = CheckAdmission(context); !st.ok()) return call->Finish(st);
  ModelInfoToProto(engine_->info(), engine_->tokenizer(), options_.device, options_.parameters,
                   response);
  return call->Finish(absl::OkStatus());
}

}  // namespace hyla::service
