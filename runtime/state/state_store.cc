#include "runtime/state/state_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/base/check.h"

namespace hyla {

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Create(const StateLayout& layout,
                                                               const StateStoreOptions& options) {
  if (options.num_slots <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("state store: num_slots must be positive, got ", options.num_slots));
  }
  if (options.num_blocks < 0) {
    return absl::InvalidArgumentError("state store: num_blocks must not be negative");
  }
  if (options.max_kv_tokens_per_stream < 0) {
    return absl::InvalidArgumentError("state store: max_kv_tokens_per_stream must not be negative");
  }
  return std::unique_ptr<StateStore>(new StateStore(layout, options));
}

StateStore::StateStore(const StateLayout& layout, const StateStoreOptions& options)
    : layout_(layout), options_(options) {
  for (int i = options.num_slots - 1; i >= 0; --i) free_slots_.push_back(i);
  for (int64_t i = options.num_blocks - 1; i >= 0; --i) {
    free_blocks_.push_back(static_cast<int32_t>(i));
  }
  refcount_.assign(static_cast<size_t>(options.num_blocks), 0);
}

absl::StatusOr<std::unique_ptr<SequenceState>> StateStore::NewSequence() {
  if (free_slots_.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no free state slot (all ", options_.num_slots, " in use)"));
  }
  auto seq = std::make_unique<SequenceState>();
  seq->uid = ++last_uid_;
  seq->slot = free_slots_.back();
  free_slots_.pop_back();
  seq->streams.resize(layout_.streams().size());
  return seq;
}

absl::StatusOr<std::unique_ptr<SequenceState>> StateStore::Fork(const SequenceState& parent) {
  auto child_or = NewSequence();
  if (!child_or.ok()) return child_or.status();
  std::unique_ptr<SequenceState> child = std::move(child_or).value();
  child->num_tokens = parent.num_tokens;
  child->streams = parent.streams;
  child->evicted_blocks = parent.evicted_blocks;
  for (const auto& table : child->streams) {
    for (const BlockRef& ref : table) ++refcount_[ref.block];
  }
  return child;
}

void StateStore::Unref(int32_t block) {
  HYLA_CHECK(block >= 0 && block < static_cast<int32_t>(refcount_.size()));
  HYLA_CHECK(refcount_[block] > 0);
  if (--refcount_[block] == 0) free_blocks_.push_back(block);
}

void StateStore::Release(std::unique_ptr<SequenceState> seq) {
  if (seq == nullptr) return;
  for (auto& table : seq->streams) {
    for (const BlockRef& ref : table) Unref(ref.block);
    table.clear();
  }
  if (seq->slot >= 0) free_slots_.push_back(seq->slot);
  seq->slot = -1;
}

absl::StatusOr<int> StateStore::PrepareAppend(SequenceState* seq, int stream, int64_t chunk,
                                              int32_t* copy_from) {
  *copy_from = -1;
  std::vector<BlockRef>& table = seq->streams[stream];
  if (!table.empty() && table.back().chunk == chunk) {
    const int32_t block = table.back().block;
    if (refcount_[block] == 1) return static_cast<int>(table.size()) - 1;
    // Shared with a fork: copy-on-write.
    if (free_blocks_.empty()) {
      return absl::ResourceExhaustedError(
          "KV block pool exhausted (copy-on-write of a shared block)");
    }
    const int32_t fresh = free_blocks_.back();
    free_blocks_.pop_back();
    refcount_[fresh] = 1;
    Unref(block);
    table.back().block = fresh;
    *copy_from = block;
    return static_cast<int>(table.size()) - 1;
  }
  HYLA_CHECK(table.empty() || table.back().chunk < chunk);
  const int64_t cap_blocks =
      options_.max_kv_tokens_per_stream > 0
          ? std::max<int64_t>(1, options_.max_kv_tokens_per_stream / kBlockTokens)
          : 0;
  if (cap_blocks > 0 && static_cast<int64_t>(table.size()) >= cap_blocks) {
    if (options_.cap_policy == KvCapPolicy::kReject) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "per-sequence softmax cache cap reached: ", options_.max_kv_tokens_per_stream,
          " tokens in layer ", layout_.streams()[stream].layer, " stream ",
          layout_.streams()[stream].index_in_layer));
    }
    Unref(table.front().block);
    table.erase(table.begin());
    ++seq->evicted_blocks;
  }
  if (free_blocks_.empty()) return absl::ResourceExhaustedError("KV block pool exhausted");
  const int32_t fresh = free_blocks_.back();
  free_blocks_.pop_back();
  refcount_[fresh] = 1;
  table.push_back(BlockRef{fresh, chunk});
  return static_cast<int>(table.size()) - 1;
}

void StateStore::DropBlock(SequenceState* seq, int stream, int index) {
  std::vector<BlockRef>& table = seq->streams[stream];
  HYLA_CHECK(index >= 0 && index < static_cast<int>(table.size()));
  Unref(table[index].block);
  table.erase(table.begin() + index);
}

int64_t StateStore::WorstCaseNewBlocks(const SequenceState& seq, int64_t new_tokens) const {
  if (new_tokens <= 0) return 0;
  const int64_t first_chunk = seq.num_tokens / kBlockTokens;
  const int64_t last_chunk = (seq.num_tokens + new_tokens - 1) / kBlockTokens;
  int64_t total = 0;
  for (size_t s = 0; s < seq.streams.size(); ++s) {
    const auto& table = seq.streams[s];
    const bool has_current = !table.empty() && table.back().chunk == first_chunk;
    int64_t blocks = last_chunk - first_chunk + (has_current ? 0 : 1);
    if (has_current && refcount_[table.back().block] > 1) ++blocks;  // copy-on-write
    total += blocks;
  }
  return total;
}

SequenceMemory StateStore::MemoryOf(const SequenceState& seq) const {
  SequenceMemory m;
  m.slot_bytes = layout_.slot_bytes();
  for (const auto& table : seq.streams) m.kv_blocks += static_cast<int64_t>(table.size());
  m.kv_bytes = m.kv_blocks * layout_.block_bytes();
  m.softmax_equivalent_bytes = layout_.SoftmaxEquivalentBytes(seq.num_tokens);
  return m;
}

}  // namespace hyla
