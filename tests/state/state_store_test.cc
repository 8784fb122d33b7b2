// Tests of StateStore: slots, ref-counted KV blocks, Fork with copy-on-write, DropBlock, the
// per-sequence cap policies, WorstCaseNewBlocks as an upper bound of what a step takes, and
// MemoryOf. Layout (by hand): layer 0 GDN (H=HV=1, dk=dv=4, no conv: S = 64 B slot), layers 1
// and 2 full attention with 1 KV head of dim 4 (32 B per token, 2048 B blocks), 2 streams.
#include "runtime/state/state_store.h"

#include <cstdint>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hyla {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

ModelConfig SmallHybrid() {
  ModelConfig c;
  c.vocab_size = 16;
  c.hidden_size = 8;
  c.intermediate_size = 16;
  LayerConfig gdn;
  gdn.kind = LayerKind::kGdn;
  gdn.gdn.num_heads = 1;
  gdn.gdn.num_v_heads = 1;
  gdn.gdn.head_k_dim = 4;
  gdn.gdn.head_v_dim = 4;
  gdn.gdn.use_short_conv = false;
  LayerConfig attn;
  attn.kind = LayerKind::kAttention;
  attn.attention.num_heads = 2;
  attn.attention.num_kv_heads = 1;
  attn.attention.head_dim = 4;
  attn.attention.rotary_dim = 4;
  c.layers = {gdn, attn, attn};
  c.num_layers = 3;
  return c;
}

StateLayout Layout() {
  auto layout = StateLayout::Create(SmallHybrid(), DType::kF32);
  EXPECT_TRUE(layout.ok()) << layout.status();
  return *layout;
}

std::unique_ptr<StateStore> MakeStore(int slots, int64_t blocks, int64_t cap = 0,
                                      KvCapPolicy policy = KvCapPolicy::kReject) {
  StateStoreOptions o;
  o.num_slots = slots;
  o.num_blocks = blocks;
  o.max_kv_tokens_per_stream = cap;
  o.cap_policy = policy;
  auto store = StateStore::Create(Layout(), o);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(store).value() : nullptr;
}

// Appends `n` tokens to every stream of `seq` the way a backend step does: PrepareAppend for
// each chunk the tokens touch. Returns the first error.
absl::Status Append(StateStore* store, SequenceState* seq, int64_t n,
                    std::vector<int32_t>* copies = nullptr) {
  if (n <= 0) return absl::OkStatus();
  const int64_t first = seq->num_tokens / kBlockTokens;
  const int64_t last = (seq->num_tokens + n - 1) / kBlockTokens;
  for (int s = 0; s < store->layout().num_streams(); ++s) {
    for (int64_t chunk = first; chunk <= last; ++chunk) {
      int32_t copy_from = -2;
      absl::StatusOr<int> idx = store->PrepareAppend(seq, s, chunk, &copy_from);
      if (!idx.ok()) return idx.status();
      if (copies != nullptr && copy_from >= 0) copies->push_back(copy_from);
    }
  }
  seq->num_tokens += n;
  return absl::OkStatus();
}

int64_t TotalRefs(const StateStore& store) {
  int64_t total = 0;
  for (int32_t b = 0; b < store.num_blocks(); ++b) total += store.refcount(b);
  return total;
}

TEST(StateStoreTest, LayoutIsWhatTheTestAssumes) {
  const StateLayout l = Layout();
  EXPECT_EQ(l.slot_bytes(), 64);
  EXPECT_EQ(l.num_streams(), 2);
  EXPECT_EQ(l.block_bytes(), 64 * 32);
}

TEST(StateStoreTest, CreateValidatesOptions) {
  StateStoreOptions o;
  o.num_slots = 0;
  auto s = StateStore::Create(Layout(), o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("num_slots"));
  o.num_slots = 1;
  o.num_blocks = -1;
  EXPECT_EQ(StateStore::Create(Layout(), o).status().code(), absl::StatusCode::kInvalidArgument);
  o.num_blocks = 1;
  o.max_kv_tokens_per_stream = -5;
  EXPECT_EQ(StateStore::Create(Layout(), o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StateStoreTest, SlotExhaustion) {
  auto store = MakeStore(2, 8);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->free_slots(), 2);
  auto a = store->NewSequence();
  auto b = store->NewSequence();
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  EXPECT_NE((*a)->slot, (*b)->slot);
  EXPECT_EQ((*a)->num_tokens, 0);
  EXPECT_EQ((*a)->streams.size(), 2u);
  EXPECT_EQ(store->free_slots(), 0);
  EXPECT_EQ(store->used_slot_bytes(), 2 * 64);
  auto c = store->NewSequence();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(c.status().message()), AllOf(HasSubstr("slot"), HasSubstr("2")));
  const int32_t freed = (*a)->slot;
  store->Release(std::move(a).value());
  EXPECT_EQ(store->free_slots(), 1);
  auto d = store->NewSequence();
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->slot, freed);
  // Fork needs a slot too.
  auto e = store->Fork(**d);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted);
}

// Every sequence gets a uid of its own, also one that reuses a released sequence's slot, and a
// fork's differs from its parent's.
TEST(StateStoreTest, UidsAreNeverReused) {
  auto store = MakeStore(2, 8);
  ASSERT_NE(store, nullptr);
  auto a = store->NewSequence();
  ASSERT_TRUE(a.ok());
  const uint64_t a_uid = (*a)->uid;
  const int32_t a_slot = (*a)->slot;
  EXPECT_NE(a_uid, 0u);
  auto child = store->Fork(**a);
  ASSERT_TRUE(child.ok());
  EXPECT_NE((*child)->uid, a_uid);
  EXPECT_NE((*child)->uid, 0u);
  const uint64_t child_uid = (*child)->uid;
  store->Release(std::move(a).value());
  auto b = store->NewSequence();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->slot, a_slot);
  EXPECT_NE((*b)->uid, a_uid);
  EXPECT_NE((*b)->uid, child_uid);
}

TEST(StateStoreTest, BlockAllocAndFree) {
  auto store = MakeStore(1, 4);
  ASSERT_NE(store, nullptr);
  auto seq = std::move(store->NewSequence()).value();
  int32_t copy_from = -2;
  auto i0 = store->PrepareAppend(seq.get(), 0, 0, &copy_from);
  ASSERT_TRUE(i0.ok());
  EXPECT_EQ(*i0, 0);
  EXPECT_EQ(copy_from, -1);
  EXPECT_EQ(store->free_blocks(), 3);
  const int32_t b0 = seq->streams[0][0].block;
  EXPECT_EQ(store->refcount(b0), 1);
  EXPECT_EQ(seq->streams[0][0].chunk, 0);
  // The same chunk again: the same, already private block.
  auto again = store->PrepareAppend(seq.get(), 0, 0, &copy_from);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 0);
  EXPECT_EQ(copy_from, -1);
  EXPECT_EQ(store->free_blocks(), 3);
  auto i1 = store->PrepareAppend(seq.get(), 0, 1, &copy_from);
  auto j0 = store->PrepareAppend(seq.get(), 1, 0, &copy_from);
  ASSERT_TRUE(i1.ok());
  ASSERT_TRUE(j0.ok());
  EXPECT_EQ(*i1, 1);
  EXPECT_EQ(*j0, 0);
  EXPECT_EQ(store->free_blocks(), 1);
  EXPECT_EQ(store->used_kv_bytes(), 3 * 2048);
  std::set<int32_t> distinct = {seq->streams[0][0].block, seq->streams[0][1].block,
                                seq->streams[1][0].block};
  EXPECT_EQ(distinct.size(), 3u);
  store->Release(std::move(seq));
  EXPECT_EQ(store->free_blocks(), 4);
  EXPECT_EQ(store->free_slots(), 1);
  for (int32_t b : distinct) EXPECT_EQ(store->refcount(b), 0);
}

TEST(StateStoreTest, PoolExhaustion) {
  auto store = MakeStore(1, 1);
  ASSERT_NE(store, nullptr);
  auto seq = std::move(store->NewSequence()).value();
  int32_t copy_from;
  ASSERT_TRUE(store->PrepareAppend(seq.get(), 0, 0, &copy_from).ok());
  auto r = store->PrepareAppend(seq.get(), 1, 0, &copy_from);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("pool exhausted"));
  EXPECT_TRUE(seq->streams[1].empty());  // a failed append leaves the table as it was
}

TEST(StateStoreTest, ForkSharesBlocksAndCopiesOnWrite) {
  auto store = MakeStore(2, 16);
  ASSERT_NE(store, nullptr);
  auto parent = std::move(store->NewSequence()).value();
  ASSERT_TRUE(Append(store.get(), parent.get(), 100).ok());  // chunks 0, 1 in both streams
  ASSERT_EQ(parent->streams[0].size(), 2u);
  EXPECT_EQ(store->free_blocks(), 12);
  const std::vector<BlockRef> parent_table = parent->streams[0];

  auto child_or = store->Fork(*parent);
  ASSERT_TRUE(child_or.ok()) << child_or.status();
  auto child = std::move(child_or).value();
  EXPECT_NE(child->slot, parent->slot);
  EXPECT_EQ(child->num_tokens, 100);
  ASSERT_EQ(child->streams[0].size(), 2u);
  for (int s = 0; s < 2; ++s) {
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(child->streams[s][i].block, parent->streams[s][i].block);
      EXPECT_EQ(store->refcount(parent->streams[s][i].block), 2);
    }
  }
  EXPECT_EQ(store->free_blocks(), 12);  // sharing takes no blocks

  // The child writes into chunk 1 (the shared, partially filled last block): copy-on-write.
  const int32_t shared_last = parent_table[1].block;
  int32_t copy_from = -2;
  auto idx = store->PrepareAppend(child.get(), 0, 1, &copy_from);
  ASSERT_TRUE(idx.ok());
  EXPECT_EQ(*idx, 1);
  EXPECT_EQ(copy_from, shared_last);
  EXPECT_NE(child->streams[0][1].block, shared_last);
  EXPECT_EQ(child->streams[0][1].chunk, 1);
  EXPECT_EQ(store->refcount(child->streams[0][1].block), 1);
  EXPECT_EQ(store->refcount(shared_last), 1);
  EXPECT_EQ(store->free_blocks(), 11);
  // The parent is intact: same table, and its block is now private again (no copy needed).
  EXPECT_EQ(parent->streams[0][0].block, parent_table[0].block);
  EXPECT_EQ(parent->streams[0][1].block, parent_table[1].block);
  auto pidx = store->PrepareAppend(parent.get(), 0, 1, &copy_from);
  ASSERT_TRUE(pidx.ok());
  EXPECT_EQ(copy_from, -1);
  EXPECT_EQ(parent->streams[0][1].block, shared_last);
  // The first block stays shared.
  EXPECT_EQ(store->refcount(parent_table[0].block), 2);

  // Releasing the child drops its references only.
  store->Release(std::move(child));
  EXPECT_EQ(store->refcount(parent_table[0].block), 1);
  EXPECT_EQ(store->refcount(shared_last), 1);
  for (const BlockRef& r : parent->streams[1]) EXPECT_EQ(store->refcount(r.block), 1);
  EXPECT_EQ(store->free_blocks(), 12);
  store->Release(std::move(parent));
  EXPECT_EQ(store->free_blocks(), 16);
  EXPECT_EQ(store->free_slots(), 2);
}

TEST(StateStoreTest, DropBlock) {
  auto store = MakeStore(2, 8);
  ASSERT_NE(store, nullptr);
  auto seq = std::move(store->NewSequence()).value();
  ASSERT_TRUE(Append(store.get(), seq.get(), 192).ok());  // chunks 0..2
  ASSERT_EQ(seq->streams[0].size(), 3u);
  EXPECT_EQ(store->free_blocks(), 2);
  const int32_t middle = seq->streams[0][1].block;
  store->DropBlock(seq.get(), 0, 1);
  ASSERT_EQ(seq->streams[0].size(), 2u);
  EXPECT_EQ(seq->streams[0][0].chunk, 0);
  EXPECT_EQ(seq->streams[0][1].chunk, 2);
  EXPECT_EQ(store->refcount(middle), 0);
  EXPECT_EQ(store->free_blocks(), 3);
  EXPECT_EQ(seq->streams[1].size(), 3u);  // other streams untouched

  // Dropping a block shared with a fork only drops this sequence's reference.
  auto child = std::move(store->Fork(*seq)).value();
  const int32_t first = seq->streams[1][0].block;
  EXPECT_EQ(store->refcount(first), 2);
  store->DropBlock(child.get(), 1, 0);
  EXPECT_EQ(store->refcount(first), 1);
  EXPECT_EQ(seq->streams[1][0].block, first);
  EXPECT_EQ(store->free_blocks(), 3);
  store->Release(std::move(child));
  store->Release(std::move(seq));
  EXPECT_EQ(store->free_blocks(), 8);
}

TEST(StateStoreTest, CapRejectNamesTheCap) {
  auto store = MakeStore(1, 16, /*cap=*/128, KvCapPolicy::kReject);  // 2 blocks per stream
  ASSERT_NE(store, nullptr);
  auto seq = std::move(store->NewSequence()).value();
  ASSERT_TRUE(Append(store.get(), seq.get(), 128).ok());
  int32_t copy_from;
  auto r = store->PrepareAppend(seq.get(), 1, 2, &copy_from);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(r.status().message()),
              AllOf(HasSubstr("cap"), HasSubstr("128 tokens"), HasSubstr("layer 2")));
  EXPECT_EQ(seq->streams[1].size(), 2u);
  EXPECT_EQ(seq->evicted_blocks, 0);
  EXPECT_EQ(store->free_blocks(), 12);
}

TEST(StateStoreTest, CapEvictOldest) {
  auto store = MakeStore(1, 16, /*cap=*/128, KvCapPolicy::kEvictOldest);
  ASSERT_NE(store, nullptr);
  auto seq = std::move(store->NewSequence()).value();
  ASSERT_TRUE(Append(store.get(), seq.get(), 128).ok());
  const int32_t oldest = seq->streams[0][0].block;
  int32_t copy_from;
  auto r = store->PrepareAppend(seq.get(), 0, 2, &copy_from);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(seq->streams[0].size(), 2u);
  EXPECT_EQ(seq->streams[0][0].chunk, 1);
  EXPECT_EQ(seq->streams[0][1].chunk, 2);
  EXPECT_EQ(*r, 1);
  EXPECT_EQ(seq->evicted_blocks, 1);
  EXPECT_EQ(store->free_blocks(), 12);  // one freed, one taken
  // The evicted block is no longer referenced by the table (it may be reused for chunk 2).
  EXPECT_EQ(store->refcount(oldest), seq->streams[0][1].block == oldest ? 1 : 0);
  EXPECT_EQ(TotalRefs(*store), 4);  // refcounts equal the block-table entries
  // Keep going: every new chunk evicts one more.
  ASSERT_TRUE(Append(store.get(), seq.get(), 64 * 3).ok());  // tokens 128..319: chunks 2..4
  EXPECT_EQ(seq->streams[0].size(), 2u);
  EXPECT_EQ(seq->streams[0][1].chunk, 4);
  EXPECT_EQ(seq->evicted_blocks, 1 + 2 + 3);  // stream 0: 1 + 2 more; stream 1: 3
}

TEST(StateStoreTest, WorstCaseNewBlocksByHand) {
  auto store = MakeStore(2, 64);
  ASSERT_NE(store, nullptr);
  auto seq = std::move(store->NewSequence()).value();
  EXPECT_EQ(store->WorstCaseNewBlocks(*seq, 0), 0);
  EXPECT_EQ(store->WorstCaseNewBlocks(*seq, 1), 2);    // chunk 0 in 2 streams
  EXPECT_EQ(store->WorstCaseNewBlocks(*seq, 130), 6);  // chunks 0..2
  ASSERT_TRUE(Append(store.get(), seq.get(), 130).ok());
  EXPECT_EQ(store->WorstCaseNewBlocks(*seq, 10), 0);  // 130..139 stay in chunk 2
  EXPECT_EQ(store->WorstCaseNewBlocks(*seq, 62), 0);  // up to 191
  EXPECT_EQ(store->WorstCaseNewBlocks(*seq, 63), 2);  // 192 starts chunk 3
  // A fork shares chunk 2: writing into it costs a copy per stream.
  auto child = std::move(store->Fork(*seq)).value();
  EXPECT_EQ(store->WorstCaseNewBlocks(*child, 10), 2);
  EXPECT_EQ(store->WorstCaseNewBlocks(*child, 63), 4);
}

TEST(StateStoreTest, WorstCaseNewBlocksBoundsWhatStepsTake) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 20; ++trial) {
    auto store = MakeStore(4, 4096);
    ASSERT_NE(store, nullptr);
    std::vector<std::unique_ptr<SequenceState>> seqs;
    seqs.push_back(std::move(store->NewSequence()).value());
    for (int step = 0; step < 40; ++step) {
      SequenceState* seq = seqs[rng() % seqs.size()].get();
      if (rng() % 8 == 0 && seqs.size() < 4) {  // sometimes fork, then step the child
        seqs.push_back(std::move(store->Fork(*seq)).value());
        seq = seqs.back().get();
      }
      const int64_t n = (rng() % 3 == 0) ? 1 + rng() % 200 : 1 + rng() % 8;
      const int64_t worst = store->WorstCaseNewBlocks(*seq, n);
      const int64_t free_before = store->free_blocks();
      std::vector<int32_t> copies;
      ASSERT_TRUE(Append(store.get(), seq, n, &copies).ok());
      const int64_t taken = free_before - store->free_blocks();
      ASSERT_LE(taken, worst) << "trial " << trial << " step " << step << " n " << n;
      // Without eviction the bound is exact: new chunks plus copies of shared last blocks.
      ASSERT_EQ(taken, worst) << "trial " << trial << " step " << step << " n " << n;
    }
    for (auto& s : seqs) store->Release(std::move(s));
    EXPECT_EQ(store->free_blocks(), 4096);
  }
}

TEST(StateStoreTest, WorstCaseNewBlocksBoundsStepsWithEviction) {
  std::mt19937 rng(99);
  auto store = MakeStore(2, 4096, /*cap=*/256, KvCapPolicy::kEvictOldest);
  ASSERT_NE(store, nullptr);
  auto seq = std::move(store->NewSequence()).value();
  auto child = std::move(store->Fork(*seq)).value();
  for (int step = 0; step < 200; ++step) {
    SequenceState* s = (step % 2 == 0) ? seq.get() : child.get();
    const int64_t n = 1 + rng() % 150;
    const int64_t worst = store->WorstCaseNewBlocks(*s, n);
    const int64_t free_before = store->free_blocks();
    ASSERT_TRUE(Append(store.get(), s, n).ok());
    ASSERT_LE(free_before - store->free_blocks(), worst) << "step " << step;
    for (const auto& table : s->streams) ASSERT_LE(table.size(), 4u);  // 256 tokens = 4 blocks
  }
  int64_t entries = 0;
  for (const SequenceState* s : {seq.get(), child.get()}) {
    for (const auto& table : s->streams) entries += static_cast<int64_t>(table.size());
  }
  EXPECT_EQ(TotalRefs(*store), entries);
}

TEST(StateStoreTest, MemoryOf) {
  auto store = MakeStore(2, 64);
  ASSERT_NE(store, nullptr);
  auto seq = std::move(store->NewSequence()).value();
  SequenceMemory m = store->MemoryOf(*seq);
  EXPECT_EQ(m.slot_bytes, 64);
  EXPECT_EQ(m.kv_blocks, 0);
  EXPECT_EQ(m.kv_bytes, 0);
  EXPECT_EQ(m.softmax_equivalent_bytes, 0);
  ASSERT_TRUE(Append(store.get(), seq.get(), 130).ok());
  m = store->MemoryOf(*seq);
  // 3 blocks in each of 2 streams of 2048 B; softmax-equivalent per token: GDN (4 + 4) * 4 +
  // two attention layers 1 * (4 + 4) * 4 each = 96 B -> 130 * 96.
  EXPECT_EQ(m.kv_blocks, 6);
  EXPECT_EQ(m.kv_bytes, 6 * 2048);
  EXPECT_EQ(m.softmax_equivalent_bytes, 130 * 96);
  EXPECT_EQ(store->used_kv_bytes(), 6 * 2048);
  EXPECT_EQ(store->used_slot_bytes(), 64);
}

}  // namespace
}  // namespace hyla
