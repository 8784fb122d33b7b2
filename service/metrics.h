// Prometheus metrics of hyla-server, exactly the contract of docs/metrics.md: every family is
// built at start-up with all its known series (value 0), and references are cached so that the
// hot path never looks a series up.
//
// Sources:
//   - the service edge (hyla_service.cc): RPCs by method and code and their duration, rejections
//     decided by the service (invalid, unauthenticated, draining before the engine), cancellations
//     by cause (client, deadline, slow_consumer, shutdown: decided once per Generate call), and
//     per-Generate histograms (end-to-end latency, prompt and generated tokens);
//   - the engine's observer callbacks (this class is an EngineObserver): step time by phase,
//     Backend::Step alone by phase and the scheduler thread's host time around it (the serving
//     overhead: schedule before the step, tokens after it), batch size, queue time, time to first
//     token, inter-token latency, session state bytes by context bucket, engine rejections and
//     evictions by reason;
//   - the engine's stats snapshot, read at scrape time (Collect): gauges (running, waiting,
//     sessions, state memory used/capacity by pool, utilisation, softmax-equivalent bytes) and the
//     monotonic token / routing / session counters, which advance by the snapshot's deltas.
//
// Buckets (seconds unless said): TTFT and queue/e2e follow vLLM with exact boundaries at the SLO
// thresholds (TTFT 0.5 s and 1 s, ITL 0.1 s):
//   TTFT  0.001 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.25 0.5 0.75 1 2.5 5 7.5 10 20 40 80 160 640
//         2560
//   ITL   0.01 0.025 0.05 0.075 0.1 0.15 0.2 0.3 0.4 0.5 0.75 1 2.5 5 7.5 10 20 40 80
//   e2e, queue time
//         0.3 0.5 0.8 1 1.5 2 2.5 5 10 15 20 30 40 50 60 120 240 480 960 1920 7680
//   RPC duration 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30 60 120 300
//         600 1800
//   step  0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10
//   backend step 0.0005 0.001 0.002 0.003 0.004 0.005 0.006 0.008 0.01 0.015 0.02 0.03 0.05 0.1
//         0.25 0.5 1 2.5 5 10
//   step host time 0.00001 0.000025 0.00005 0.0001 0.00025 0.0005 0.001 0.0025 0.005 0.01 0.025
//         0.05 0.1
//   batch size 1 2 4 8 16 32 64 128 256 512
//   tokens per request: 1 2 5 10 20 50 ... (1-2-5 steps) up to the maximum context
//   session bytes: 64 KiB × 4^k up to 64 GiB
//
// Thread-safety: all methods are thread-safe and non-blocking (prometheus-cpp metrics are
// atomic; the scrape-time refresh takes one mutex that only scrapes contend for).
#ifndef HYLA_SERVICE_METRICS_H_
#define HYLA_SERVICE_METRICS_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/support/status.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "runtime/engine/engine_stats.h"

namespace hyla::service {

// RPC methods of hyla.v1.Hyla (label `method`).
enum class Method {
  kGenerate,
  kCreateSession,
  kGetSession,
  kForkSession,
  kDeleteSession,
  kListSessions,
  kTokenize,
  kDetokenize,
  kGetModelInfo,
};
inline constexpr int kNumMethods = 9;
const char* MethodName(Method m);

// Rejections decided by the service itself (the engine's own come through OnRejected).
enum class ServiceReject {
  kInvalid,          // INVALID_ARGUMENT from validation
  kUnauthenticated,  // missing or wrong bearer token
  kDraining,         // the server is draining (refused before reaching the engine)
  kQuota,            // a per-client quota (reserved: no quotas yet)
};

// Why a Generate call ended early (label `cause`).
enum class CancelCause { kClient, kDeadline, kSlowConsumer, kShutdown };

struct BuildInfo {
  std::string version;
  std::string model_type;
  std::string family;
  std::string device;
};

class Metrics : public EngineObserver, public prometheus::Collectable {
 public:
  // `max_context` sets the top of the tokens-per-request buckets.
  static absl::StatusOr<std::shared_ptr<Metrics>> Create(const BuildInfo& build,
                                                         int64_t max_context);

  // The engine whose Stats() the scrape reads (set once the engine exists; may stay unset).
  void SetStatsSource(std::function<EngineStats()> stats) ABSL_LOCKS_EXCLUDED(mu_);

  // prometheus::Collectable: refreshes the stats-fed metrics, then returns every family.
  std::vector<prometheus::MetricFamily> Collect() const override ABSL_LOCKS_EXCLUDED(mu_);

  // ---- service edge ----
  void OnRpcFinished(Method method, grpc::StatusCode code, absl::Duration duration);
  void OnServiceReject(ServiceReject reason);
  void OnCancelled(CancelCause cause);
  // A Generate call that finished (OK or not) with the engine's usage.
  void OnGenerateFinished(int64_t prompt_tokens, int64_t generated_tokens, absl::Duration e2e);

  // ---- EngineObserver ----
  void OnStep(const StepObservation& step) override;
  void OnAdmitted(absl::Duration queue_time) override;
  void OnFirstToken(absl::Duration ttft) override;
  void OnInterToken(absl::Duration latency) override;
  void OnRequestFinished(const RequestObservation& request) override;
  void OnRejected(RejectReason reason) override;
  void OnSessionEvicted(EvictReason reason) override;

  // The `context_bucket` label of a sequence of `context_tokens` tokens ("le_1k" ... "gt_128k").
  static const char* ContextBucket(int64_t context_tokens);

 private:
  Metrics() = default;
  void Build(const BuildInfo& build, int64_t max_context);
  void Refresh() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::shared_ptr<prometheus::Registry> registry_;

  // Edge.
  std::array<std::array<prometheus::Counter*, 17>, kNumMethods> requests_{};
  std::array<prometheus::Histogram*, kNumMethods> request_duration_{};
  prometheus::Histogram* e2e_ = nullptr;
  prometheus::Histogram* prompt_tokens_per_request_ = nullptr;
  prometheus::Histogram* generated_tokens_per_request_ = nullptr;
  std::array<prometheus::Counter*, 4> cancellations_{};  // by CancelCause
  // rejections by label: queue_full, memory, draining, invalid, too_long, quota, unauthenticated
  prometheus::Counter* reject_queue_full_ = nullptr;
  prometheus::Counter* reject_memory_ = nullptr;
  prometheus::Counter* reject_draining_ = nullptr;
  prometheus::Counter* reject_invalid_ = nullptr;
  prometheus::Counter* reject_too_long_ = nullptr;
  prometheus::Counter* reject_quota_ = nullptr;
  prometheus::Counter* reject_unauthenticated_ = nullptr;

  // Observer.
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* itl_ = nullptr;
  prometheus::Histogram* queue_time_ = nullptr;
  std::array<prometheus::Histogram*, 3> step_duration_{};  // by StepPhase
  std::array<prometheus::Histogram*, 3> step_backend_{};   // by StepPhase
  prometheus::Histogram* step_host_schedule_ = nullptr;
  prometheus::Histogram* step_host_tokens_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  std::array<prometheus::Counter*, 3> evictions_{};        // by EvictReason
  std::array<prometheus::Histogram*, 7> session_bytes_{};  // by context bucket
  std::array<prometheus::Histogram*, 7> session_softmax_bytes_{};

  // Stats-fed (scrape time).
  prometheus::Counter* prompt_tokens_total_ = nullptr;
  prometheus::Counter* generated_tokens_total_ = nullptr;
  prometheus::Counter* reused_tokens_total_ = nullptr;
  prometheus::Counter* sessions_created_total_ = nullptr;
  prometheus::Counter* sessions_released_total_ = nullptr;
  prometheus::Counter* routed_softmax_total_ = nullptr;
  prometheus::Counter* routed_gdn_total_ = nullptr;
  prometheus::Gauge* running_ = nullptr;
  prometheus::Gauge* waiting_ = nullptr;
  prometheus::Gauge* sessions_resident_ = nullptr;
  prometheus::Gauge* used_slots_ = nullptr;
  prometheus::Gauge* used_kv_ = nullptr;
  prometheus::Gauge* capacity_slots_ = nullptr;
  prometheus::Gauge* capacity_kv_ = nullptr;
  prometheus::Gauge* utilization_ = nullptr;
  prometheus::Gauge* softmax_equivalent_ = nullptr;

  mutable absl::Mutex mu_;
  std::function<EngineStats()> stats_ ABSL_GUARDED_BY(mu_);
  mutable EngineStats last_ ABSL_GUARDED_BY(mu_);  // counters already exported
};

}  // namespace hyla::service

#endif  // HYLA_SERVICE_METRICS_H_
