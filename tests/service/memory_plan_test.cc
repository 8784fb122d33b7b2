#include "service/memory_plan.h"

#include "gtest/gtest.h"

namespace hyla::service {
namespace {

// The default model: slot 111232 bytes, 24576-byte blocks, 4 KV streams.
MemoryPlanInput DefaultModel(int64_t budget, int workers, int64_t max_context) {
  MemoryPlanInput in;
  in.budget_bytes = budget;
  in.workers = workers;
  in.slot_bytes = 111232;
  in.block_bytes = 24576;
  in.num_streams = 4;
  in.max_context = max_context;
  return in;
}

TEST(MemoryPlanTest, SlotsHoldAMaxContextSequenceEach) {
  // One sequence at 2048 tokens: 111232 + 4 * 32 * 24576 = 3256960 bytes.
  auto plan = PlanMemory(DefaultModel(int64_t{64} << 20, 1, 2048));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->slots_per_worker, 20);  // 67108864 / 3256960 = 20.6
  EXPECT_EQ(plan->blocks_per_worker, (67108864 - 20 * 111232) / 24576);
  EXPECT_LE(plan->total_bytes, int64_t{64} << 20);
  EXPECT_GE(plan->blocks_per_worker, 20 * 4 * 32);  // every slot can reach the maximum context
}

TEST(MemoryPlanTest, BudgetIsSplitOverWorkers) {
  auto plan = PlanMemory(DefaultModel(int64_t{64} << 20, 2, 2048));
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->slots_per_worker, 10);  // 33554432 / 3256960 = 10.3
  EXPECT_EQ(plan->total_bytes, 2 * plan->bytes_per_worker);
  EXPECT_LE(plan->total_bytes, int64_t{64} << 20);
}

TEST(MemoryPlanTest, ModelWithoutKvGetsSlotsOnly) {
  MemoryPlanInput in = DefaultModel(1 << 20, 1, 2048);
  in.num_streams = 0;
  in.block_bytes = 0;
  auto plan = PlanMemory(in);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->slots_per_worker, (1 << 20) / 111232);
  EXPECT_EQ(plan->blocks_per_worker, 0);
}

TEST(MemoryPlanTest, TooSmallBudgetNamesTheFlag) {
  auto plan = PlanMemory(DefaultModel(1 << 20, 1, 2048));
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("--memory-budget"), absl::string_view::npos);
  EXPECT_NE(plan.status().message().find("3256960"), absl::string_view::npos);
}

TEST(MemoryPlanTest, HumanBytes) {
  EXPECT_EQ(HumanBytes(512), "512 B");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(int64_t{3} << 30), "3.0 GiB");
}

}  // namespace
}  // namespace hyla::service
