// Scheduling and admission decisions of one worker, as pure functions of their inputs (no
// threads, clocks or devices), so that they are table-tested. The worker's scheduler thread
// gathers the inputs, calls PlanStep once per step and carries the plan out; Engine::Submit calls
// Admit before a request enters a queue.
//
// Memory policy ("guaranteed no eviction", as TensorRT-LLM's default): a request is admitted into
// the running batch only when its state slot and the worst case of every KV block it may still
// allocate over its lifetime (StateStore::WorstCaseNewBlocks for its remaining prompt plus
// max_new_tokens) are available beside the reservations of the requests already running. A
// running request therefore never runs out of memory and is never preempted; idle sessions are
// evicted (LRU) to make room when that lets the head of the queue in.
//
// Step policy (continuous batching with chunked prefill):
//   1. every running decode gets its one token (decodes are never starved);
//   2. running prefills get their next chunk, in admission order, while the token budget allows;
//   3. queued requests are admitted in FIFO order while the batch size, the token budget, the
//      free slots and the free blocks allow; the first one that does not fit stops admission (no
//      overtaking, so a large request is not starved by small ones);
//   4. queued requests whose deadline has passed are expired wherever they stand.
// Prefill chunks are `prefill_chunk` tokens (the last one shorter), never cut to fit the budget:
// the chunk boundaries of a request depend on the request alone, so its results do not depend on
// what else the server runs. A chunk that does not fit waits for a later step.
//
// Thread-safety: pure functions; safe from any thread.
#ifndef HYLA_RUNTIME_ENGINE_SCHEDULER_H_
#define HYLA_RUNTIME_ENGINE_SCHEDULER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace hyla {

// A request in the running batch.
struct RunningEntry {
  uint64_t id = 0;
  int64_t prefill_left = 0;  // > 0: prompt tokens still to fold; 0: decoding (1 token per step)
};

// A request in the worker's queue, FIFO order.
struct WaitingEntry {
  uint64_t id = 0;
  int64_t prefill_tokens = 0;  // tokens to fold before the first sample (0: nothing to compute)
  bool needs_slot = true;      // false when it continues a session that holds its slot
  int64_t blocks_needed = 0;   // worst-case KV blocks over its lifetime
  absl::Time deadline = absl::InfiniteFuture();
};

// An idle session that may be evicted to make room, in LRU order (least recently used first).
struct EvictableSession {
  uint64_t key = 0;
  int64_t blocks_freed = 0;  // blocks that return to the pool when it is released (refcount 1)
};

struct SchedulerInput {
  absl::Time now;
  std::vector<RunningEntry> running;        // admission order
  std::vector<WaitingEntry> waiting;        // FIFO
  std::vector<EvictableSession> evictable;  // LRU first
  int64_t token_budget = 512;               // tokens per step
  int64_t prefill_chunk = 256;              // prefill chunk size (<= token_budget)
  int max_batch = 32;                       // running requests at most
  int free_slots = 0;
  int64_t free_blocks = 0;  // free blocks minus the reservations of the running requests
};

struct ScheduledWork {
  uint64_t id = 0;
  int64_t tokens = 0;  // 1 for a decode; a chunk for a prefill
  bool decode = false;
};

enum class WaitReason {
  kNone,    // the queue was fully admitted (or empty)
  kBatch,   // max_batch running requests
  kBudget,  // the step's token budget is spent
  kMemory,  // not enough free slots or KV blocks, even after evicting idle sessions
};

struct StepPlan {
  // Work of the step: decodes first, then prefill chunks of running requests, then the first
  // chunk of each admitted request. Admitted requests with nothing to compute have no entry.
  std::vector<ScheduledWork> work;
  std::vector<uint64_t> admitted;             // waiting ids admitted this step, FIFO order
  std::vector<uint64_t> expired;              // waiting ids whose deadline passed (to reject)
  std::vector<uint64_t> evict;                // session keys to evict before admitting
  WaitReason head_waits = WaitReason::kNone;  // why the queue head (if any) was not admitted
};

StepPlan PlanStep(const SchedulerInput& in);

// Why a request was not accepted into a queue.
enum class RejectReason {
  kNone,
  kQueueFull,  // Unavailable: the queue bound is reached
  kMemory,     // Unavailable: the queue bound is reached and state memory is what holds it back
  kDraining,   // Unavailable: the engine is shutting down
  kTooLong,    // InvalidArgument: longer than the maximum context, or larger than the whole pool
};
const char* RejectReasonName(RejectReason r);  // "queue_full", "memory", "draining", "too_long"

struct AdmissionInput {
  int64_t context_tokens = 0;  // tokens already in the session (0 for a one-off request)
  int64_t prompt_tokens = 0;   // new tokens
  int64_t max_new_tokens = 0;  // resolved; 0: prefill only (sessions)
  int64_t max_context = 0;
  // Worst-case KV blocks of the whole request (from its state now) and the blocks its session
  // already holds; with a slot when needs_slot.
  int64_t blocks_needed = 0;
  int64_t blocks_held = 0;
  bool needs_slot = true;
  int pool_slots = 0;  // capacity of the worker's pool
  int64_t pool_blocks = 0;
  int64_t queued = 0;       // requests waiting now (all workers)
  int64_t queue_bound = 0;  // waiting requests at most
  bool fits_now = false;    // the worker's free memory (plus idle sessions) would hold it now
  bool draining = false;
};

struct AdmissionDecision {
  RejectReason reason = RejectReason::kNone;
  absl::Status status;  // OK, or the error for the caller
};

// Accept into the queue, or reject: too long (InvalidArgument, "prompt" named), draining,
// queue full, or memory (Unavailable, the message says which). A request that fits the pool but
// not the memory free now waits in the queue (up to the bound).
AdmissionDecision Admit(const AdmissionInput& in);

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_SCHEDULER_H_
