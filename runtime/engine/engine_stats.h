// What the engine tells the outside world about itself, for Prometheus (service/metrics.*, see
// docs/metrics.md) and logs, without depending on any metrics library:
//   - EngineStats: a snapshot of gauges and monotonic counters (Engine::Stats), read at scrape
//     time;
//   - EngineObserver: callbacks for the per-event observations that become histograms (step
//     time by phase, Backend::Step alone and the scheduler thread's host time around it, batch
//     size, queue time, TTFT, inter-token latency, end-to-end latency, tokens
//     per request, session state bytes by context) and for counters by reason.
//
// Thread-safety: EngineStats is a value. EngineObserver methods are called concurrently from the
// workers' scheduler threads (and from Submit's caller for rejections); an implementation must be
// thread-safe and must not block (no I/O, no waiting on the engine).
#ifndef HYLA_RUNTIME_ENGINE_ENGINE_STATS_H_
#define HYLA_RUNTIME_ENGINE_ENGINE_STATS_H_

#include <cstdint>

#include "absl/time/time.h"
#include "runtime/engine/request.h"
#include "runtime/engine/scheduler.h"

namespace hyla {

enum class StepPhase {
  kPrefill,  // prefill chunks only
  kDecode,   // decodes only
  kMixed,    // both
};
const char* StepPhaseName(StepPhase p);  // "prefill", "decode", "mixed"

enum class EvictReason {
  kTtl,       // idle longer than the session TTL
  kLru,       // idle and least recently used, evicted to make memory for a queued request
  kCapacity,  // idle and least recently used, evicted because max_sessions was reached
};
const char* EvictReasonName(EvictReason r);  // "ttl", "lru", "capacity"

struct StepObservation {
  int worker = 0;
  StepPhase phase = StepPhase::kDecode;
  absl::Duration duration;  // Backend::Step plus sampling of the step
  int batch_size = 0;       // sequences in the step
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  int64_t routed_to_softmax = 0;  // NAtS-L decisions (chunk x head) made in the step
  int64_t routed_to_gdn = 0;
  // Where the scheduler thread's time around this step went (steady-clock wall time, whatever
  // the engine's clock; the serving overhead of docs/performance.md). One cycle of the worker is
  // host_before + backend + host_after:
  //   host_before: from the end of the previous step (or from waking up) to the Backend::Step
  //                call: inbox commands, reaping, session expiry, publishing the load, planning,
  //                admissions and batch assembly;
  //   schedule:    the planning, admission and batch-assembly part of host_before;
  //   backend:     Backend::Step alone;
  //   host_after:  from Backend::Step's return to the end of the step: host sampling, stop
  //                checks, detokenisation, building and queueing the stream events;
  //   emit:        the part of host_after spent handing events to the streams (their locks and
  //                the consumers' wake-ups).
  absl::Duration host_before;
  absl::Duration schedule;
  absl::Duration backend;
  absl::Duration host_after;
  absl::Duration emit;
};

// A finished Generate (or session prefill) request.
struct RequestObservation {
  int worker = 0;
  FinishReason reason = FinishReason::kStop;
  bool session = false;  // continued or created a session
  Usage usage;
};

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(const StepObservation& step) {}
  // A request was admitted into a running batch after `queue_time`.
  virtual void OnAdmitted(absl::Duration queue_time) {}
  // A request's first token, `ttft` after it was accepted.
  virtual void OnFirstToken(absl::Duration ttft) {}
  // A token after the first, `latency` after the previous token of the same request.
  virtual void OnInterToken(absl::Duration latency) {}
  virtual void OnRequestFinished(const RequestObservation& request) {}
  virtual void OnRejected(RejectReason reason) {}
  virtual void OnSessionEvicted(EvictReason reason) {}
};

struct EngineStats {
  // ---- gauges ----
  int64_t running = 0;   // requests in running batches
  int64_t waiting = 0;   // requests queued
  int64_t sessions = 0;  // resident sessions
  int64_t slots_used = 0;
  int64_t slots_capacity = 0;
  int64_t slot_bytes_used = 0;
  int64_t slot_bytes_capacity = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_capacity = 0;
  int64_t kv_bytes_used = 0;
  int64_t kv_bytes_capacity = 0;
  int64_t kv_blocks_reserved = 0;  // worst-case blocks promised to running requests
  // KV bytes a full-attention model of the same shapes would hold for the resident sequences
  // (running requests and sessions).
  int64_t softmax_equivalent_bytes = 0;

  // ---- counters (monotonic since Create) ----
  int64_t requests_accepted = 0;
  int64_t requests_finished = 0;
  int64_t finished_by_reason[7] = {};   // indexed by FinishReason
  int64_t rejected_by_reason[5] = {};   // indexed by RejectReason (kNone unused)
  int64_t evictions_by_reason[3] = {};  // indexed by EvictReason
  int64_t prompt_tokens = 0;            // new input tokens processed
  int64_t generated_tokens = 0;
  int64_t reused_tokens = 0;  // session tokens not recomputed
  int64_t routed_to_softmax = 0;
  int64_t routed_to_gdn = 0;
  int64_t steps = 0;
  int64_t sessions_created = 0;
  int64_t sessions_released = 0;  // deleted, evicted or lost
  int64_t merged_events = 0;      // events merged for slow consumers
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_ENGINE_STATS_H_
