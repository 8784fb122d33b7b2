// Table tests of the pure scheduling and admission functions.
#include "runtime/engine/scheduler.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hyla {

bool operator==(const ScheduledWork& a, const ScheduledWork& b) {
  return a.id == b.id && a.tokens == b.tokens && a.decode == b.decode;
}
void PrintTo(const ScheduledWork& w, std::ostream* os) {
  *os << "{" << w.id << (w.decode ? " decode " : " prefill ") << w.tokens << "}";
}

namespace {

const absl::Time kNow = absl::FromUnixSeconds(1000);

RunningEntry Decoding(uint64_t id) { return RunningEntry{id, 0}; }
RunningEntry Prefilling(uint64_t id, int64_t left) { return RunningEntry{id, left}; }
WaitingEntry Queued(uint64_t id, int64_t tokens, int64_t blocks = 1, bool needs_slot = true,
                    absl::Time deadline = absl::InfiniteFuture()) {
  return WaitingEntry{id, tokens, needs_slot, blocks, deadline};
}
ScheduledWork Decode(uint64_t id) { return ScheduledWork{id, 1, true}; }
ScheduledWork Prefill(uint64_t id, int64_t n) { return ScheduledWork{id, n, false}; }

struct PlanCase {
  std::string name;
  SchedulerInput in;
  std::vector<ScheduledWork> work;
  std::vector<uint64_t> admitted;
  std::vector<uint64_t> expired;
  std::vector<uint64_t> evict;
  WaitReason head_waits;
};

SchedulerInput Input(std::vector<RunningEntry> running, std::vector<WaitingEntry> waiting,
                     int64_t budget, int64_t chunk, int max_batch, int free_slots,
                     int64_t free_blocks, std::vector<EvictableSession> evictable = {}) {
  SchedulerInput in;
  in.now = kNow;
  in.running = std::move(running);
  in.waiting = std::move(waiting);
  in.token_budget = budget;
  in.prefill_chunk = chunk;
  in.max_batch = max_batch;
  in.free_slots = free_slots;
  in.free_blocks = free_blocks;
  in.evictable = std::move(evictable);
  return in;
}

class PlanStepTest : public ::testing::TestWithParam<PlanCase> {};

TEST_P(PlanStepTest, Plan) {
  const PlanCase& c = GetParam();
  const StepPlan plan = PlanStep(c.in);
  EXPECT_THAT(plan.work, ::testing::ElementsAreArray(c.work));
  EXPECT_THAT(plan.admitted, ::testing::ElementsAreArray(c.admitted));
  EXPECT_THAT(plan.expired, ::testing::ElementsAreArray(c.expired));
  EXPECT_THAT(plan.evict, ::testing::ElementsAreArray(c.evict));
  EXPECT_EQ(plan.head_waits, c.head_waits);
}

INSTANTIATE_TEST_SUITE_P(
    Table, PlanStepTest,
    ::testing::Values(
        PlanCase{"empty", Input({}, {}, 16, 8, 4, 4, 100), {}, {}, {}, {}, WaitReason::kNone},
        // Decodes first, then the running prefill in whole chunks, then an admission.
        PlanCase{"decodes_then_prefill_then_admission",
                 Input({Prefilling(1, 20), Decoding(2)}, {Queued(3, 5)}, 16, 8, 4, 4, 100),
                 {Decode(2), Prefill(1, 8), Prefill(3, 5)},
                 {3},
                 {},
                 {},
                 WaitReason::kNone},
        // Decodes are never starved: they run even when they exceed the budget, and the
        // prefill waits for a step with room for a whole chunk.
        PlanCase{
            "decodes_beyond_budget",
            Input({Decoding(1), Decoding(2), Decoding(3), Prefilling(4, 10)}, {}, 2, 2, 8, 4, 100),
            {Decode(1), Decode(2), Decode(3)},
            {},
            {},
            {},
            WaitReason::kNone},
        // A chunk is never cut to the remaining budget (results would depend on load).
        PlanCase{"whole_chunks_only",
                 Input({Decoding(1), Prefilling(2, 100)}, {}, 8, 8, 4, 4, 100),
                 {Decode(1)},
                 {},
                 {},
                 {},
                 WaitReason::kNone},
        // The last chunk of a prompt is shorter; a later running prefill may still fit.
        PlanCase{"short_last_chunk_fits",
                 Input({Prefilling(1, 30), Prefilling(2, 3)}, {}, 11, 8, 4, 4, 100),
                 {Prefill(1, 8), Prefill(2, 3)},
                 {},
                 {},
                 {},
                 WaitReason::kNone},
        // FIFO admission stops at the first request that does not fit the budget.
        PlanCase{"fifo_stops_at_budget",
                 Input({}, {Queued(1, 6), Queued(2, 6), Queued(3, 1)}, 10, 8, 8, 8, 100),
                 {Prefill(1, 6)},
                 {1},
                 {},
                 {},
                 WaitReason::kBudget},
        PlanCase{"batch_limit",
                 Input({Decoding(1), Decoding(2)}, {Queued(3, 1)}, 16, 8, 2, 4, 100),
                 {Decode(1), Decode(2)},
                 {},
                 {},
                 {},
                 WaitReason::kBatch},
        // No free slot: the head waits, and so does everything behind it (no overtaking).
        PlanCase{"no_slot_blocks_fifo",
                 Input({}, {Queued(1, 4), Queued(2, 4, 1, false)}, 16, 8, 4, 0, 100),
                 {},
                 {},
                 {},
                 {},
                 WaitReason::kMemory},
        // A session continuation needs no slot.
        PlanCase{"session_needs_no_slot",
                 Input({}, {Queued(1, 4, 1, false)}, 16, 8, 4, 0, 100),
                 {Prefill(1, 4)},
                 {1},
                 {},
                 {},
                 WaitReason::kNone},
        // Blocks: the second request's lifetime worst case does not fit what is left.
        PlanCase{"blocks_limit",
                 Input({}, {Queued(1, 2, 60), Queued(2, 2, 50)}, 16, 8, 4, 4, 100),
                 {Prefill(1, 2)},
                 {1},
                 {},
                 {},
                 WaitReason::kMemory},
        // Idle sessions are evicted LRU first, only as many as needed.
        PlanCase{"evict_lru_for_slot",
                 Input({}, {Queued(1, 4, 1)}, 16, 8, 4, 0, 100, {{70, 3}, {71, 5}}),
                 {Prefill(1, 4)},
                 {1},
                 {},
                 {70},
                 WaitReason::kNone},
        PlanCase{"evict_for_blocks",
                 Input({}, {Queued(1, 4, 10)}, 16, 8, 4, 2, 4, {{70, 3}, {71, 5}, {72, 9}}),
                 {Prefill(1, 4)},
                 {1},
                 {},
                 {70, 71},
                 WaitReason::kNone},
        // Eviction that would not be enough is not done at all.
        PlanCase{"no_useless_eviction",
                 Input({}, {Queued(1, 4, 50)}, 16, 8, 4, 2, 4, {{70, 3}, {71, 5}}),
                 {},
                 {},
                 {},
                 {},
                 WaitReason::kMemory},
        // Queued requests past their deadline are expired wherever they stand, even behind a
        // blocked head.
        PlanCase{"expire_queued",
                 Input({},
                       {Queued(1, 4, 1, true, kNow - absl::Seconds(1)), Queued(2, 4, 500),
                        Queued(3, 4, 1, true, kNow)},
                       16, 8, 4, 4, 100),
                 {},
                 {},
                 {1, 3},
                 {},
                 WaitReason::kMemory},
        // A request with nothing to compute (a session without prefix) needs no budget.
        PlanCase{"nothing_to_compute",
                 Input({Decoding(1)}, {Queued(2, 0)}, 1, 1, 4, 4, 100),
                 {Decode(1)},
                 {2},
                 {},
                 {},
                 WaitReason::kNone},
        // Several admissions share the budget in whole chunks.
        PlanCase{
            "admissions_share_budget",
            Input({Decoding(1)}, {Queued(2, 20), Queued(3, 4), Queued(4, 4)}, 16, 8, 8, 8, 100),
            {Decode(1), Prefill(2, 8), Prefill(3, 4)},
            {2, 3},
            {},
            {},
            WaitReason::kBudget}),
    [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------

struct AdmitCase {
  std::string name;
  AdmissionInput in;
  RejectReason reason;
  absl::StatusCode code;
  std::string message_has;
};

AdmissionInput Adm(int64_t context, int64_t prompt, int64_t max_new, int64_t max_context,
                   int64_t blocks, int64_t queued, int64_t bound, bool fits_now) {
  AdmissionInput in;
  in.context_tokens = context;
  in.prompt_tokens = prompt;
  in.max_new_tokens = max_new;
  in.max_context = max_context;
  in.blocks_needed = blocks;
  in.needs_slot = true;
  in.pool_slots = 4;
  in.pool_blocks = 100;
  in.queued = queued;
  in.queue_bound = bound;
  in.fits_now = fits_now;
  return in;
}

class AdmitTest : public ::testing::TestWithParam<AdmitCase> {};

TEST_P(AdmitTest, Decision) {
  const AdmitCase& c = GetParam();
  const AdmissionDecision d = Admit(c.in);
  EXPECT_EQ(d.reason, c.reason);
  EXPECT_EQ(d.status.code(), c.code) << d.status;
  EXPECT_THAT(std::string(d.status.message()), ::testing::HasSubstr(c.message_has));
}

AdmissionInput Draining() {
  AdmissionInput in = Adm(0, 10, 10, 100, 1, 0, 8, true);
  in.draining = true;
  return in;
}
AdmissionInput HeldBlocks() {
  AdmissionInput in = Adm(500, 10, 10, 4096, 30, 0, 8, true);
  in.blocks_held = 80;
  in.needs_slot = false;
  return in;
}

INSTANTIATE_TEST_SUITE_P(
    Table, AdmitTest,
    ::testing::Values(
        AdmitCase{"accept", Adm(0, 10, 10, 100, 5, 0, 8, true), RejectReason::kNone,
                  absl::StatusCode::kOk, ""},
        // The pool is full now: wait in the queue.
        AdmitCase{"accept_to_wait_for_memory", Adm(0, 10, 10, 100, 5, 3, 8, false),
                  RejectReason::kNone, absl::StatusCode::kOk, ""},
        AdmitCase{"queue_full", Adm(0, 10, 10, 100, 5, 8, 8, true), RejectReason::kQueueFull,
                  absl::StatusCode::kUnavailable, "queue full"},
        AdmitCase{"queue_full_because_of_memory", Adm(0, 10, 10, 100, 5, 8, 8, false),
                  RejectReason::kMemory, absl::StatusCode::kUnavailable, "memory"},
        // Longer than the context, also counting the session's tokens.
        AdmitCase{"prompt_too_long", Adm(0, 101, 10, 100, 1, 0, 8, true), RejectReason::kTooLong,
                  absl::StatusCode::kInvalidArgument, "prompt"},
        AdmitCase{"session_plus_prompt_too_long", Adm(60, 40, 10, 100, 1, 0, 8, true),
                  RejectReason::kTooLong, absl::StatusCode::kInvalidArgument, "session"},
        // A prefill-only request may fill the context exactly; a generating one needs a token.
        AdmitCase{"prefill_fills_context", Adm(0, 100, 0, 100, 1, 0, 8, true), RejectReason::kNone,
                  absl::StatusCode::kOk, ""},
        AdmitCase{"generate_needs_room", Adm(0, 100, 1, 100, 1, 0, 8, true), RejectReason::kTooLong,
                  absl::StatusCode::kInvalidArgument, "no room"},
        // More blocks than the whole pool can ever give: invalid, not overload.
        AdmitCase{"larger_than_pool", Adm(0, 10, 10, 100, 101, 0, 8, true), RejectReason::kTooLong,
                  absl::StatusCode::kInvalidArgument, "whole pool"},
        AdmitCase{"session_blocks_count", HeldBlocks(), RejectReason::kTooLong,
                  absl::StatusCode::kInvalidArgument, "whole pool"},
        AdmitCase{"draining", Draining(), RejectReason::kDraining, absl::StatusCode::kUnavailable,
                  "draining"},
        // Too long is reported before overload: retrying elsewhere would not help.
        AdmitCase{"too_long_before_queue_full", Adm(0, 200, 10, 100, 1, 8, 8, false),
                  RejectReason::kTooLong, absl::StatusCode::kInvalidArgument, "prompt"}),
    [](const auto& info) { return info.param.name; });

TEST(RejectReasonTest, Names) {
  EXPECT_STREQ(RejectReasonName(RejectReason::kQueueFull), "queue_full");
  EXPECT_STREQ(RejectReasonName(RejectReason::kMemory), "memory");
  EXPECT_STREQ(RejectReasonName(RejectReason::kDraining), "draining");
  EXPECT_STREQ(RejectReasonName(RejectReason::kTooLong), "too_long");
}

}  // namespace
}  // namespace hyla
