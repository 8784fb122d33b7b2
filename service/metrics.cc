#include "service/metrics.h"

#include <algorithm>
#include <utility>

#include "prometheus/family.h"
#include "prometheus/labels.h"
#include "service/status_mapping.h"

namespace hyla::service {
namespace {

using prometheus::Histogram;

const Histogram::BucketBoundaries kTtftBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
    1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
const Histogram::BucketBoundaries kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                                 0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                                 7.5,  10.0,  20.0, 40.0,  80.0};
const Histogram::BucketBoundaries kLatencyBuckets = {
    0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
const Histogram::BucketBoundaries kRpcBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01,  0.025, 0.05,
                                                 0.1,    0.25,  0.5,    1.0,   2.5,   5.0,   10.0,
                                                 30.0,   60.0,  120.0,  300.0, 600.0, 1800.0};
const Histogram::BucketBoundaries kStepBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                  0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};
const Histogram::BucketBoundaries kBatchBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
// Backend::Step alone: finer around a decode step's few milliseconds.
const Histogram::BucketBoundaries kBackendStepBuckets = {
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.015,
    0.02,   0.03,  0.05,  0.1,   0.25,  0.5,   1.0,   2.5,   5.0,  10.0};
// The scheduler thread's host time per step outside Backend::Step.
const Histogram::BucketBoundaries kHostBuckets = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025,
                                                  0.0005,  0.001,    0.0025,  0.005,  0.01,
                                                  0.025,   0.05,     0.1};

// 1, 2, 5, 10, 20, 50, ... while ≤ max (at least up to 1).
Histogram::BucketBoundaries TokenBuckets(int64_t max) {
  Histogram::BucketBoundaries b;
  static constexpr int kSteps[] = {1, 2, 5};
  for (int64_t scale = 1;; scale *= 10) {
    for (int s : kSteps) {
      const int64_t v = s * scale;
      if (v > std::max<int64_t>(max, 1)) return b;
      b.push_back(static_cast<double>(v));
    }
  }
}

Histogram::BucketBoundaries SessionByteBuckets() {
  Histogram::BucketBoundaries b;
  for (double v = 64.0 * 1024; v <= 64.0 * 1024 * 1024 * 1024; v *= 4) b.push_back(v);
  return b;
}

constexpr const char* kContextBuckets[] = {"le_1k",  "le_4k",   "le_16k", "le_32k",
                                           "le_64k", "le_128k", "gt_128k"};

int ContextBucketIndex(int64_t tokens) {
  static constexpr int64_t kLimits[] = {1024, 4096, 16384, 32768, 65536, 131072};
  for (int i = 0; i < 6; ++i) {
    if (tokens <= kLimits[i]) return i;
  }
  return 6;
}

void AddDelta(prometheus::Counter* c, int64_t now, int64_t* last) {
  if (now > *last) c->Increment(static_cast<double>(now - *last));
  *last = std::max(*last, now);
}

}  // namespace

const char* MethodName(Method m) {
  switch (m) {
    case Method::kGenerate:
      return "Generate";
    case Method::kCreateSession:
      return "CreateSession";
    case Method::kGetSession:
      return "GetSession";
    case Method::kForkSession:
      return "ForkSession";
    case Method::kDeleteSession:
      return "DeleteSession";
    case Method::kListSessions:
      return "ListSessions";
    case Method::kTokenize:
      return "Tokenize";
    case Method::kDetokenize:
      return "Detokenize";
    case Method::kGetModelInfo:
      return "GetModelInfo";
  }
  return "Unknown";
}

const char* Metrics::ContextBucket(int64_t context_tokens) {
  return kContextBuckets[ContextBucketIndex(context_tokens)];
}

absl::StatusOr<std::shared_ptr<Metrics>> Metrics::Create(const BuildInfo& build,
                                                         int64_t max_context) {
  std::shared_ptr<Metrics> m(new Metrics());
  m->Build(build, max_context);
  return m;
}

void Metrics::Build(const BuildInfo& build, int64_t max_context) {
  registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Registry& r = *registry_;

  prometheus::BuildGauge()
      .Name("hyla_build_info")
      .Help("Constant 1, labelled with the server's version, model and device.")
      .Register(r)
      .Add({{"version", build.version},
            {"model_type", build.model_type},
            {"family", build.family},
            {"device", build.device}})
      .Set(1);

  // ---- edge ----
  auto& requests = prometheus::BuildCounter()
                       .Name("hyla_requests_total")
                       .Help("Finished RPCs by method and gRPC status code.")
                       .Register(r);
  auto& duration = prometheus::BuildHistogram()
                       .Name("hyla_request_duration_seconds")
                       .Help("End-to-end RPC latency by method.")
                       .Register(r);
  for (int mi = 0; mi < kNumMethods; ++mi) {
    const char* method = MethodName(static_cast<Method>(mi));
    for (int code = 0; code <= 16; ++code) {
      requests_[mi][code] =
          &requests.Add({{"method", method},
                         {"code", std::string(GrpcCodeName(static_cast<grpc::StatusCode>(code)))}});
    }
    request_duration_[mi] = &duration.Add({{"method", method}}, kRpcBuckets);
  }
  e2e_ = &prometheus::BuildHistogram()
              .Name("hyla_e2e_request_latency_seconds")
              .Help("Generate: accepted to finished.")
              .Register(r)
              .Add({}, kLatencyBuckets);
  prompt_tokens_per_request_ = &prometheus::BuildHistogram()
                                    .Name("hyla_request_prompt_tokens")
                                    .Help("New prompt tokens per Generate request.")
                                    .Register(r)
                                    .Add({}, TokenBuckets(max_context));
  generated_tokens_per_request_ = &prometheus::BuildHistogram()
                                       .Name("hyla_request_generated_tokens")
                                       .Help("Generated tokens per Generate request.")
                                       .Register(r)
                                       .Add({}, TokenBuckets(max_context));
  auto& cancellations = prometheus::BuildCounter()
                            .Name("hyla_cancellations_total")
                            .Help("Generate requests ended early, by cause.")
                            .Register(r);
  cancellations_[static_cast<int>(CancelCause::kClient)] =
      &cancellations.Add({{"cause", "client"}});
  cancellations_[static_cast<int>(CancelCause::kDeadline)] =
      &cancellations.Add({{"cause", "deadline"}});
  cancellations_[static_cast<int>(CancelCause::kSlowConsumer)] =
      &cancellations.Add({{"cause", "slow_consumer"}});
  cancellations_[static_cast<int>(CancelCause::kShutdown)] =
      &cancellations.Add({{"cause", "shutdown"}});
  auto& rejections = prometheus::BuildCounter()
                         .Name("hyla_rejections_total")
                         .Help("Requests refused before admission, by reason.")
                         .Register(r);
  reject_queue_full_ = &rejections.Add({{"reason", "queue_full"}});
  reject_memory_ = &rejections.Add({{"reason", "memory"}});
  reject_draining_ = &rejections.Add({{"reason", "draining"}});
  reject_invalid_ = &rejections.Add({{"reason", "invalid"}});
  reject_too_long_ = &rejections.Add({{"reason", "too_long"}});
  reject_quota_ = &rejections.Add({{"reason", "quota"}});
  reject_unauthenticated_ = &rejections.Add({{"reason", "unauthenticated"}});

  // ---- observer ----
  ttft_ = &prometheus::BuildHistogram()
               .Name("hyla_time_to_first_token_seconds")
               .Help("Generate: accepted to first token.")
               .Register(r)
               .Add({}, kTtftBuckets);
  itl_ = &prometheus::BuildHistogram()
              .Name("hyla_inter_token_latency_seconds")
              .Help("Generate: time between consecutive tokens of a request.")
              .Register(r)
              .Add({}, kItlBuckets);
  queue_time_ = &prometheus::BuildHistogram()
                     .Name("hyla_request_queue_time_seconds")
                     .Help("Accepted to first scheduled.")
                     .Register(r)
                     .Add({}, kLatencyBuckets);
  auto& steps = prometheus::BuildHistogram()
                    .Name("hyla_step_duration_seconds")
                    .Help("One scheduler step (backend step and sampling), by phase.")
                    .Register(r);
  for (int p = 0; p < 3; ++p) {
    step_duration_[p] =
        &steps.Add({{"phase", StepPhaseName(static_cast<StepPhase>(p))}}, kStepBuckets);
  }
  auto& backend_steps = prometheus::BuildHistogram()
                            .Name("hyla_step_backend_seconds")
                            .Help("Backend::Step alone (the model step on the device), by phase.")
                            .Register(r);
  for (int p = 0; p < 3; ++p) {
    step_backend_[p] = &backend_steps.Add({{"phase", StepPhaseName(static_cast<StepPhase>(p))}},
                                          kBackendStepBuckets);
  }
  auto& host = prometheus::BuildHistogram()
                   .Name("hyla_step_host_seconds")
                   .Help(
                       "The scheduler thread's host time per step outside Backend::Step: "
                       "part=schedule (inbox, reaping, planning, admission, batch assembly, "
                       "before the step), part=tokens (sampling on the host, stop checks, "
                       "detokenisation, stream events, after it).")
                   .Register(r);
  step_host_schedule_ = &host.Add({{"part", "schedule"}}, kHostBuckets);
  step_host_tokens_ = &host.Add({{"part", "tokens"}}, kHostBuckets);
  batch_size_ = &prometheus::BuildHistogram()
                     .Name("hyla_batch_size")
                     .Help("Sequences per scheduler step.")
                     .Register(r)
                     .Add({}, kBatchBuckets);
  auto& evictions = prometheus::BuildCounter()
                        .Name("hyla_session_evictions_total")
                        .Help("Sessions dropped by the server, by reason.")
                        .Register(r);
  for (int e = 0; e < 3; ++e) {
    evictions_[e] = &evictions.Add({{"reason", EvictReasonName(static_cast<EvictReason>(e))}});
  }
  auto& session_bytes = prometheus::BuildHistogram()
                            .Name("hyla_session_state_bytes")
                            .Help(
                                "State bytes (slot + KV) of sequences at the end of each "
                                "request, by context length.")
                            .Register(r);
  auto& session_softmax = prometheus::BuildHistogram()
                              .Name("hyla_session_softmax_equivalent_bytes")
                              .Help(
                                  "KV bytes a full-attention model would hold for the same "
                                  "sequences, by context length.")
                              .Register(r);
  for (int b = 0; b < 7; ++b) {
    session_bytes_[b] =
        &session_bytes.Add({{"context_bucket", kContextBuckets[b]}}, SessionByteBuckets());
    session_softmax_bytes_[b] =
        &session_softmax.Add({{"context_bucket", kContextBuckets[b]}}, SessionByteBuckets());
  }

  // ---- stats-fed ----
  auto counter = [&r](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
  };
  auto gauge = [&r](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
  };
  prompt_tokens_total_ = counter("hyla_prompt_tokens_total", "Prompt tokens processed.");
  generated_tokens_total_ = counter("hyla_generated_tokens_total", "Tokens generated.");
  reused_tokens_total_ = counter("hyla_session_reused_tokens_total",
                                 "Tokens served from session state instead of recomputed.");
  sessions_created_total_ = counter("hyla_sessions_created_total", "Sessions created.");
  sessions_released_total_ =
      counter("hyla_sessions_released_total", "Sessions released (deleted, evicted or lost).");
  auto& routed = prometheus::BuildCounter()
                     .Name("hyla_natsl_chunks_routed_total")
                     .Help("NAtS-L routing decisions (chunk x head), by operator.")
                     .Register(r);
  routed_softmax_total_ = &routed.Add({{"op", "softmax"}});
  routed_gdn_total_ = &routed.Add({{"op", "gdn"}});
  running_ = gauge("hyla_requests_running", "Requests in the running batches.");
  waiting_ = gauge("hyla_requests_waiting", "Requests queued for admission.");
  sessions_resident_ = gauge("hyla_sessions_resident", "Sessions holding state.");
  auto& used = prometheus::BuildGauge()
                   .Name("hyla_state_memory_used_bytes")
                   .Help("State memory in use, by pool.")
                   .Register(r);
  used_slots_ = &used.Add({{"pool", "slots"}});
  used_kv_ = &used.Add({{"pool", "kv_blocks"}});
  auto& capacity = prometheus::BuildGauge()
                       .Name("hyla_state_memory_capacity_bytes")
                       .Help("State memory budget, by pool.")
                       .Register(r);
  capacity_slots_ = &capacity.Add({{"pool", "slots"}});
  capacity_kv_ = &capacity.Add({{"pool", "kv_blocks"}});
  utilization_ =
      gauge("hyla_state_memory_utilization_ratio", "State memory used / capacity over both pools.");
  softmax_equivalent_ = gauge("hyla_softmax_equivalent_bytes",
                              "KV bytes a full-attention model would hold for the resident "
                              "sequences.");
}

void Metrics::SetStatsSource(std::function<EngineStats()> stats) {
  absl::MutexLock lock(&mu_);
  stats_ = std::move(stats);
}

void Metrics::Refresh() const {
  if (!stats_) return;
  const EngineStats s = stats_();
  AddDelta(prompt_tokens_total_, s.prompt_tokens, &last_.prompt_tokens);
  AddDelta(generated_tokens_total_, s.generated_tokens, &last_.generated_tokens);
  AddDelta(reused_tokens_total_, s.reused_tokens, &last_.reused_tokens);
  AddDelta(sessions_created_total_, s.sessions_created, &last_.sessions_created);
  AddDelta(sessions_released_total_, s.sessions_released, &last_.sessions_released);
  AddDelta(routed_softmax_total_, s.routed_to_softmax, &last_.routed_to_softmax);
  AddDelta(routed_gdn_total_, s.routed_to_gdn, &last_.routed_to_gdn);
  running_->Set(static_cast<double>(s.running));
  waiting_->Set(static_cast<double>(s.waiting));
  sessions_resident_->Set(static_cast<double>(s.sessions));
  used_slots_->Set(static_cast<double>(s.slot_bytes_used));
  used_kv_->Set(static_cast<double>(s.kv_bytes_used));
  capacity_slots_->Set(static_cast<double>(s.slot_bytes_capacity));
  capacity_kv_->Set(static_cast<double>(s.kv_bytes_capacity));
  const double cap = static_cast<double>(s.slot_bytes_capacity + s.kv_bytes_capacity);
  utilization_->Set(cap > 0 ? static_cast<double>(s.slot_bytes_used + s.kv_bytes_used) / cap : 0);
  softmax_equivalent_->Set(static_cast<double>(s.softmax_equivalent_bytes));
}

std::vector<prometheus::MetricFamily> Metrics::Collect() const {
  absl::MutexLock lock(&mu_);
  Refresh();
  return registry_->Collect();
}

void Metrics::OnRpcFinished(Method method, grpc::StatusCode code, absl::Duration duration) {
  const int mi = static_cast<int>(method);
  int ci = static_cast<int>(code);
  if (ci < 0 || ci > 16) ci = static_cast<int>(grpc::StatusCode::UNKNOWN);
  requests_[mi][ci]->Increment();
  request_duration_[mi]->Observe(absl::ToDoubleSeconds(duration));
}

void Metrics::OnServiceReject(ServiceReject reason) {
  switch (reason) {
    case ServiceReject::kInvalid:
      reject_invalid_->Increment();
      break;
    case ServiceReject::kUnauthenticated:
      reject_unauthenticated_->Increment();
      break;
    case ServiceReject::kDraining:
      reject_draining_->Increment();
      break;
    case ServiceReject::kQuota:
      reject_quota_->Increment();
      break;
  }
}

void Metrics::OnCancelled(CancelCause cause) {
  cancellations_[static_cast<int>(cause)]->Increment();
}

void Metrics::OnGenerateFinished(int64_t prompt_tokens, int64_t generated_tokens,
                                 absl::Duration e2e) {
  prompt_tokens_per_request_->Observe(static_cast<double>(prompt_tokens));
  generated_tokens_per_request_->Observe(static_cast<double>(generated_tokens));
  e2e_->Observe(absl::ToDoubleSeconds(e2e));
}

void Metrics::OnStep(const StepObservation& step) {
  step_duration_[static_cast<int>(step.phase)]->Observe(absl::ToDoubleSeconds(step.duration));
  step_backend_[static_cast<int>(step.phase)]->Observe(absl::ToDoubleSeconds(step.backend));
  step_host_schedule_->Observe(absl::ToDoubleSeconds(step.host_before));
  step_host_tokens_->Observe(absl::ToDoubleSeconds(step.host_after));
  batch_size_->Observe(static_cast<double>(step.batch_size));
}

void Metrics::OnAdmitted(absl::Duration queue_time) {
  queue_time_->Observe(absl::ToDoubleSeconds(queue_time));
}

void Metrics::OnFirstToken(absl::Duration ttft) { ttft_->Observe(absl::ToDoubleSeconds(ttft)); }

void Metrics::OnInterToken(absl::Duration latency) {
  itl_->Observe(absl::ToDoubleSeconds(latency));
}

void Metrics::OnRequestFinished(const RequestObservation& request) {
  const StateMemory& s = request.usage.state;
  const int b = ContextBucketIndex(s.context_tokens);
  session_bytes_[b]->Observe(static_cast<double>(s.slot_bytes + s.kv_bytes));
  session_softmax_bytes_[b]->Observe(static_cast<double>(s.softmax_equivalent_bytes));
}

void Metrics::OnRejected(RejectReason reason) {
  switch (reason) {
    case RejectReason::kQueueFull:
      reject_queue_full_->Increment();
      break;
    case RejectReason::kMemory:
      reject_memory_->Increment();
      break;
    case RejectReason::kDraining:
      reject_draining_->Increment();
      break;
    case RejectReason::kTooLong:
      reject_too_long_->Increment();
      break;
    case RejectReason::kNone:
      break;
  }
}

void Metrics::OnSessionEvicted(EvictReason reason) {
  evictions_[static_cast<int>(reason)]->Increment();
}

}  // namespace hyla::service
