#include "runtime/engine/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace hyla {

StepPlan PlanStep(const SchedulerInput& in) {
  StepPlan plan;
  int64_t budget = in.token_budget;
  const int64_t chunk_size = std::max<int64_t>(1, in.prefill_chunk);

  // 1. Decodes, all of them.
  for (const RunningEntry& r : in.running) {
    if (r.prefill_left == 0) {
      plan.work.push_back(ScheduledWork{r.id, 1, true});
      --budget;
    }
  }
  // 2. Next chunks of running prefills, in admission order, while whole chunks fit.
  for (const RunningEntry& r : in.running) {
    if (r.prefill_left == 0) continue;
    const int64_t chunk = std::min(r.prefill_left, chunk_size);
    if (chunk <= budget) {
      plan.work.push_back(ScheduledWork{r.id, chunk, false});
      budget -= chunk;
    }
  }
  // 3. Admissions in FIFO order; 4. expiry of queued requests wherever they stand.
  int batch = static_cast<int>(in.running.size());
  int free_slots = in.free_slots;
  int64_t free_blocks = in.free_blocks;
  size_t next_evictable = 0;
  bool blocked = false;
  for (const WaitingEntry& w : in.waiting) {
    if (in.now >= w.deadline) {
      plan.expired.push_back(w.id);
      continue;
    }
    if (blocked) continue;
    const bool computes = w.prefill_tokens > 0;
    const int64_t first_chunk = std::min(w.prefill_tokens, chunk_size);
    if (batch >= in.max_batch) {
      plan.head_waits = WaitReason::kBatch;
      blocked = true;
      continue;
    }
    if (computes && first_chunk > budget) {
      plan.head_waits = WaitReason::kBudget;
      blocked = true;
      continue;
    }
    // Memory: evict idle sessions (LRU first) only when that makes this request fit.
    const int slots_short = (w.needs_slot ? 1 : 0) - free_slots;
    const int64_t blocks_short = w.blocks_needed - free_blocks;
    if (slots_short > 0 || blocks_short > 0) {
      int slots_gain = 0;
      int64_t blocks_gain = 0;
      size_t take = next_evictable;
      while (take < in.evictable.size() &&
             (slots_gain < slots_short || blocks_gain < blocks_short)) {
        ++slots_gain;
        blocks_gain += in.evictable[take].blocks_freed;
        ++take;
      }
      if (slots_gain < slots_short || blocks_gain < blocks_short) {
        plan.head_waits = WaitReason::kMemory;
        blocked = true;
        continue;
      }
      for (size_t i = next_evictable; i < take; ++i) plan.evict.push_back(in.evictable[i].key);
      next_evictable = take;
      free_slots += slots_gain;
      free_blocks += blocks_gain;
    }
    free_slots -= w.needs_slot ? 1 : 0;
    free_blocks -= w.blocks_needed;
    ++batch;
    plan.admitted.push_back(w.id);
    if (computes) {
      plan.work.push_back(ScheduledWork{w.id, first_chunk, false});
      budget -= first_chunk;
    }
  }
  return plan;
}

const char* RejectReasonName(RejectReason r) {
  switch (r) {
    case RejectReason::kNone:
      return "none";
    case RejectReason::kQueueFull:
      return "queue_full";
    case RejectReason::kMemory:
      return "memory";
    case RejectReason::kDraining:
      return "draining";
    case RejectReason::kTooLong:
      return "too_long";
  }
  return "unknown";
}

AdmissionDecision Admit(const AdmissionInput& in) {
  AdmissionDecision d;
  if (in.draining) {
    d.reason = RejectReason::kDraining;
    d.status = absl::UnavailableError("server is draining: no new requests are accepted");
    return d;
  }
  const int64_t total = in.context_tokens + in.prompt_tokens;
  // A request that generates needs room for at least one token after its input.
  const int64_t limit = in.max_new_tokens > 0 ? in.max_context - 1 : in.max_context;
  if (total > limit) {
    d.reason = RejectReason::kTooLong;
    d.status = absl::InvalidArgumentError(absl::StrCat(
        "prompt: ", in.prompt_tokens, " tokens",
        in.context_tokens > 0 ? absl::StrCat(" after ", in.context_tokens, " session tokens") : "",
        in.max_new_tokens > 0 ? " leave no room to generate under" : " exceed",
        " the maximum context of ", in.max_context, " tokens"));
    return d;
  }
  if ((in.needs_slot && in.pool_slots <= 0) || in.blocks_needed + in.blocks_held > in.pool_blocks) {
    d.reason = RejectReason::kTooLong;
    d.status = absl::InvalidArgumentError(
        absl::StrCat("prompt: the request needs up to ", in.blocks_needed + in.blocks_held,
                     " KV blocks (prompt ", in.prompt_tokens, " + max_new_tokens ",
                     in.max_new_tokens, " tokens), more than the whole pool of ", in.pool_blocks,
                     " blocks; send fewer tokens or lower max_new_tokens"));
    return d;
  }
  if (in.queued >= in.queue_bound) {
    if (!in.fits_now) {
      d.reason = RejectReason::kMemory;
      d.status = absl::UnavailableError(
          absl::StrCat("overloaded: state memory budget full (", in.queued,
                       " requests already wait for memory); retry later or on another server"));
    } else {
      d.reason = RejectReason::kQueueFull;
      d.status = absl::UnavailableError(
          absl::StrCat("overloaded: request queue full (", in.queued, " of ", in.queue_bound,
                       " waiting); retry later or on another server"));
    }
    return d;
  }
  return d;
}

}  // namespace hyla
