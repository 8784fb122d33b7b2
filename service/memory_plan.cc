#include "service/memory_plan.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/state/state_layout.h"

namespace hyla::service {

absl::StatusOr<MemoryPlan> PlanMemory(const MemoryPlanInput& in) {
  if (in.workers < 1) return absl::InvalidArgumentError("--workers must be >= 1");
  if (in.slot_bytes <= 0) return absl::InvalidArgumentError("memory plan: slot_bytes must be > 0");
  if (in.max_context < 1) return absl::InvalidArgumentError("--max-context must be >= 1");
  const int64_t share = in.budget_bytes / in.workers;
  const bool has_kv = in.num_streams > 0 && in.block_bytes > 0;
  const int64_t blocks_per_sequence = has_kv
                                          ? static_cast<int64_t>(in.num_streams) *
                                                ((in.max_context + kBlockTokens - 1) / kBlockTokens)
                                          : 0;
  const int64_t per_sequence = in.slot_bytes + blocks_per_sequence * (has_kv ? in.block_bytes : 0);
  if (share < per_sequence) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--memory-budget ", in.budget_bytes, " bytes gives each of ", in.workers, " worker(s) ",
        share, " bytes, less than one sequence at the maximum context of ", in.max_context,
        " tokens needs (", per_sequence, " bytes: a ", in.slot_bytes, "-byte state slot + ",
        blocks_per_sequence, " KV blocks); raise --memory-budget or lower", " --max-context"));
  }
  MemoryPlan plan;
  const int64_t slots = std::min<int64_t>(share / per_sequence, std::numeric_limits<int>::max());
  plan.slots_per_worker = static_cast<int>(slots);
  plan.blocks_per_worker = has_kv ? (share - slots * in.slot_bytes) / in.block_bytes : 0;
  plan.bytes_per_worker =
      slots * in.slot_bytes + plan.blocks_per_worker * (has_kv ? in.block_bytes : 0);
  plan.total_bytes = plan.bytes_per_worker * in.workers;
  return plan;
}

std::string HumanBytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  if (u == 0) return absl::StrCat(bytes, " B");
  return absl::StrFormat("%.1f %s", v, kUnits[u]);
}

std::string DescribeMemoryPlan(const MemoryPlanInput& in, const MemoryPlan& plan) {
  return absl::StrCat(in.workers, " worker(s) x (", plan.slots_per_worker, " slots x ",
                      HumanBytes(in.slot_bytes), " + ", plan.blocks_per_worker, " KV blocks x ",
                      HumanBytes(in.block_bytes), ") = ", HumanBytes(plan.total_bytes), " of ",
                      HumanBytes(in.budget_bytes), " budget");
}

}  // namespace hyla::service
