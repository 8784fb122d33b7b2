// The memory plan of hyla-server: how a state-memory budget (--memory-budget) becomes state slots
// and KV blocks per worker.
//
// Policy: the budget is split evenly over the workers. Each worker gets as many slots as it can
// hold *with* the KV blocks of one sequence at the maximum context in the worst case (every KV
// stream keeps every 64-token block: the reservation the engine's admission makes for a request
// that long); the rest of its share becomes KV blocks. So a server always holds `slots`
// max-context sequences at once, and shorter sequences leave blocks to share. A model with no KV
// streams (pure GDN, NHA) gets slots only.
//
// Thread-safety: pure function.
#ifndef HYLA_SERVICE_MEMORY_PLAN_H_
#define HYLA_SERVICE_MEMORY_PLAN_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace hyla::service {

struct MemoryPlanInput {
  int64_t budget_bytes = 0;  // the whole server (all workers)
  int workers = 1;
  int64_t slot_bytes = 0;   // one state slot (StateLayout::slot_bytes)
  int64_t block_bytes = 0;  // one KV block (StateLayout::block_bytes; 0: no KV streams)
  int num_streams = 0;      // KV streams of the model (StateLayout::num_streams)
  int64_t max_context = 0;  // tokens
};

struct MemoryPlan {
  int slots_per_worker = 0;
  int64_t blocks_per_worker = 0;
  int64_t bytes_per_worker = 0;  // slots * slot_bytes + blocks * block_bytes (≤ the share)
  int64_t total_bytes = 0;       // over all workers
};

// InvalidArgument naming --memory-budget when the share of a worker cannot hold one max-context
// sequence (the message says how much it needs).
absl::StatusOr<MemoryPlan> PlanMemory(const MemoryPlanInput& in);

// "1 worker × (12 slots × 108.6 KiB + 1536 blocks × 24.0 KiB) = 37.3 MiB" for the start-up log.
std::string DescribeMemoryPlan(const MemoryPlanInput& in, const MemoryPlan& plan);

// 1536 → "1.5 KiB" (binary units, one decimal).
std::string HumanBytes(int64_t bytes);

}  // namespace hyla::service

#endif  // HYLA_SERVICE_MEMORY_PLAN_H_
