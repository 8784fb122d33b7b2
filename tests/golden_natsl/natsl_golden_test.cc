// The natsl fixture (automl/NeuralAttentionSearchLinear, shared/golden/natsl) through
// Checkpoint::Open and the CPU backend: full-sequence logits, prefill + token-by-token decode
// (the reference has no working incremental path, so decode must reproduce `logits`), the
// routing decisions as block tables and counters, the router logits, invariance to how the
// tokens are split into steps and to batching, fork, and the KV cap policies.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "runtime/cpu/natsl_layer.h"
#include "runtime/cpu/ops.h"
#include "runtime/engine/sequence_runner.h"
#include "runtime/model/checkpoint.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

using testing::GoldenDir;
using testing::GoldenF32;
using testing::GoldenI32;
using testing::LoadCpuBackend;
using testing::MaxAbsDiff;
using testing::PrefillThenDecode;
using testing::RandomSplit;

constexpr float kLogitsTol = 1e-4f;      // golden.json "recommended_tolerance"
constexpr float kInvarianceTol = 1e-5f;  // split / batch invariance (the brief's bound)
constexpr int64_t kT = 200;              // golden.json "T"
constexpr int64_t kPrefill = 70;         // golden.json "P"
constexpr int kNatslLayers[2] = {1, 3};  // golden.json "natsl_layers"
constexpr int kHeads = 2;                // decision heads
constexpr int64_t kChunks = 4;           // ceil(T / 64)

class NatslGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ids = GoldenI32("natsl", "input_ids");
    ASSERT_TRUE(ids.ok()) << ids.status();
    ids_ = *ids;
    ASSERT_EQ(static_cast<int64_t>(ids_.size()), kT);
    auto golden = GoldenF32("natsl", "logits");
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = *golden;
    std::vector<int64_t> shape;
    auto routing = GoldenI32("natsl", "routing", &shape);
    ASSERT_TRUE(routing.ok()) << routing.status();
    ASSERT_EQ(shape, (std::vector<int64_t>{2, kChunks, kHeads}));
    routing_ = *routing;
    auto backend = LoadCpuBackend(GoldenDir("natsl"));
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(backend).value();
    vocab_ = backend_->config().vocab_size;
    ASSERT_EQ(vocab_, 256);
  }

  // routing[i, c, h] of golden.safetensors: 0 softmax, 1 GDN, -1 incomplete chunk.
  int Routing(int i, int64_t c, int h) const { return routing_[(i * kChunks + c) * kHeads + h]; }

  std::vector<float> Run(const std::vector<int64_t>& chunks) {
    auto logits = RunSequenceLogits(*backend_, ids_, chunks);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : std::vector<float>();
  }

  // Feeds ids_ to a new sequence in steps of `chunks` sizes; the sequence stays alive.
  std::unique_ptr<SequenceState> Feed(const std::vector<int64_t>& chunks, RoutingCounts* routing,
                                      std::vector<float>* logits = nullptr) {
    auto seq = backend_->store().NewSequence();
    EXPECT_TRUE(seq.ok()) << seq.status();
    if (!seq.ok()) return nullptr;
    backend_->ResetSlot((*seq)->slot);
    int64_t pos = 0;
    for (int64_t c : chunks) {
      SequenceWork w;
      w.seq = seq->get();
      w.tokens = absl::MakeConstSpan(ids_).subspan(pos, c);
      w.logits = LogitsMode::kAll;
      StepOutput out;
      const absl::Status st = backend_->Step({w}, &out);
      EXPECT_TRUE(st.ok()) << st;
      if (!st.ok()) break;
      routing->to_softmax += out.routing.to_softmax;
      routing->to_gdn += out.routing.to_gdn;
      if (logits != nullptr) logits->insert(logits->end(), out.logits.begin(), out.logits.end());
      pos += c;
    }
    return std::move(seq).value();
  }

  // The block tables of every NAtS-L stream after the 200 golden tokens hold exactly the kept
  // complete chunks {c : routing[i,c,h] == 0} followed by the current (incomplete) chunk 3; the
  // counters saw every decision once.
  void ExpectRoutingState(const SequenceState& seq, const RoutingCounts& counts) {
    const StateLayout& layout = backend_->layout();
    int64_t zeros = 0, ones = 0;
    for (int i = 0; i < 2; ++i) {
      for (int h = 0; h < kHeads; ++h) {
        std::vector<int64_t> expected;
        for (int64_t c = 0; c < kChunks - 1; ++c) {
          ASSERT_NE(Routing(i, c, h), -1);
          if (Routing(i, c, h) == 0) {
            expected.push_back(c);
            ++zeros;
          } else {
            ++ones;
          }
        }
        ASSERT_EQ(Routing(i, kChunks - 1, h), -1);
        expected.push_back(kChunks - 1);
        const int stream = layout.first_stream(kNatslLayers[i]) + h;
        std::vector<int64_t> actual;
        for (const BlockRef& ref : seq.streams[stream]) actual.push_back(ref.chunk);
        EXPECT_EQ(actual, expected) << "layer " << kNatslLayers[i] << " head " << h;
      }
    }
    EXPECT_EQ(counts.to_softmax, zeros);
    EXPECT_EQ(counts.to_gdn, ones);
  }

  std::vector<int32_t> ids_;
  std::vector<float> golden_;
  std::vector<int32_t> routing_;
  std::unique_ptr<cpu::CpuBackend> backend_;
  int64_t vocab_ = 0;
};

TEST_F(NatslGoldenTest, ConfigMatchesFixture) {
  const ModelConfig& c = backend_->config();
  EXPECT_EQ(c.family, Family::kNatsl);
  ASSERT_EQ(c.layers.size(), 4u);
  EXPECT_EQ(c.layers[0].kind, LayerKind::kGdn);
  EXPECT_EQ(c.layers[2].kind, LayerKind::kGdn);
  for (int layer : kNatslLayers) {
    ASSERT_EQ(c.layers[layer].kind, LayerKind::kNatsl);
    const NatslLayerConfig& n = c.layers[layer].natsl;
    EXPECT_EQ(n.gdn.num_heads, 2);
    EXPECT_EQ(n.gdn.head_k_dim, 64);
    EXPECT_EQ(n.gdn.head_v_dim, 128);
    EXPECT_EQ(n.num_attn_heads, 4);
    EXPECT_EQ(n.attn_head_k_dim, 32);
    EXPECT_EQ(n.attn_head_v_dim, 64);
    EXPECT_EQ(n.groups(), 2);
    EXPECT_TRUE(n.decay_for_non_gdn_blocks);
    // Two streams per NAtS-L layer, one per decision head, of G = 2 softmax heads.
    const StateLayout& layout = backend_->layout();
    for (int h = 0; h < kHeads; ++h) {
      const KvStream& s = layout.streams()[layout.first_stream(layer) + h];
      EXPECT_EQ(s.heads, 2);
      EXPECT_EQ(s.key_dim, 32);
      EXPECT_EQ(s.value_dim, 64);
      EXPECT_TRUE(s.routed);
    }
  }
}

TEST_F(NatslGoldenTest, FullSequenceLogits) {
  const std::vector<float> logits = Run({});
  ASSERT_EQ(logits.size(), golden_.size());
  const float diff = MaxAbsDiff(logits, golden_);
  std::printf("natsl logits (one prefill of %lld): max |diff| = %.3g (tolerance %.3g)\n",
              static_cast<long long>(kT), diff, kLogitsTol);
  EXPECT_LE(diff, kLogitsTol);
}

TEST_F(NatslGoldenTest, PrefillThenDecodeReproducesLogits) {
  const std::vector<float> logits = Run(PrefillThenDecode(kT, kPrefill));
  ASSERT_EQ(logits.size(), golden_.size());
  const float prefill_diff = MaxAbsDiff(logits, golden_, 0, kPrefill * vocab_);
  const float decode_diff = MaxAbsDiff(logits, golden_, kPrefill * vocab_);
  std::printf("natsl prefill %lld + decode: max |diff| prefill rows = %.3g, decode rows = %.3g\n",
              static_cast<long long>(kPrefill), prefill_diff, decode_diff);
  EXPECT_LE(prefill_diff, kLogitsTol);
  EXPECT_LE(decode_diff, kLogitsTol);
}

TEST_F(NatslGoldenTest, TokenByTokenReproducesLogits) {
  const std::vector<float> logits = Run(std::vector<int64_t>(kT, 1));
  ASSERT_EQ(logits.size(), golden_.size());
  const float diff = MaxAbsDiff(logits, golden_);
  std::printf("natsl token by token: max |diff| = %.3g\n", diff);
  EXPECT_LE(diff, kLogitsTol);
}

TEST_F(NatslGoldenTest, RoutingAfterPrefill) {
  RoutingCounts counts;
  std::unique_ptr<SequenceState> seq = Feed({kT}, &counts);
  ASSERT_NE(seq, nullptr);
  ExpectRoutingState(*seq, counts);
  const double decided = static_cast<double>(counts.to_softmax + counts.to_gdn);
  std::printf("natsl routing: %lld of %lld complete (chunk, head) decisions to softmax (%.3f)\n",
              static_cast<long long>(counts.to_softmax), static_cast<long long>(decided),
              counts.to_softmax / decided);
  for (int i = 0; i < 2; ++i) {
    int kept = 0;
    for (int64_t c = 0; c < kChunks - 1; ++c) {
      for (int h = 0; h < kHeads; ++h) kept += Routing(i, c, h) == 0;
    }
    std::printf("  layer %d: softmax fraction %.3f\n", kNatslLayers[i],
                kept / static_cast<double>((kChunks - 1) * kHeads));
  }
  // The slot and the kept blocks are what the sequence holds: 2 layers × 2 heads × (kept + 1).
  const SequenceMemory mem = backend_->store().MemoryOf(*seq);
  EXPECT_EQ(mem.kv_blocks, counts.to_softmax + 2 * kHeads);
  backend_->store().Release(std::move(seq));
  EXPECT_EQ(backend_->store().free_blocks(), backend_->store().num_blocks());
}

TEST_F(NatslGoldenTest, RoutingTokenByTokenMatchesPrefill) {
  RoutingCounts counts;
  std::unique_ptr<SequenceState> seq = Feed(std::vector<int64_t>(kT, 1), &counts);
  ASSERT_NE(seq, nullptr);
  ExpectRoutingState(*seq, counts);
  backend_->store().Release(std::move(seq));
}

TEST_F(NatslGoldenTest, RoutingWithChunkAlignedSteps) {
  // Steps that end exactly on chunk boundaries, and one that completes a chunk with one token.
  RoutingCounts counts;
  std::unique_ptr<SequenceState> seq = Feed({64, 63, 1, 64, 8}, &counts);
  ASSERT_NE(seq, nullptr);
  ExpectRoutingState(*seq, counts);
  backend_->store().Release(std::move(seq));
}

TEST_F(NatslGoldenTest, SplitInvariance) {
  const std::vector<float> whole = Run({});
  ASSERT_EQ(whole.size(), golden_.size());
  std::vector<std::vector<int64_t>> splits = {
      PrefillThenDecode(kT, kPrefill),
      std::vector<int64_t>(kT, 1),
      {64, 64, 64, 8},
      {63, 1, 1, 63, 72},
      {1, 62, 2, 62, 2, 62, 9},
      {65, 63, 64, 8},
      {128, 72},
      {130, 70},
  };
  for (uint32_t seed = 1; seed <= 6; ++seed) splits.push_back(RandomSplit(kT, 80, seed));
  for (const std::vector<int64_t>& split : splits) {
    const std::vector<float> logits = Run(split);
    ASSERT_EQ(logits.size(), whole.size());
    const float diff = MaxAbsDiff(logits, whole);
    std::string desc;
    for (int64_t c : split) absl::StrAppend(&desc, desc.empty() ? "" : ",", c);
    EXPECT_LE(diff, kInvarianceTol) << "split " << desc;
    if (diff != 0.0f)
      std::printf("natsl split {%s}: max |diff| vs one prefill = %.3g\n", desc.c_str(), diff);
  }
}

TEST_F(NatslGoldenTest, BatchedEqualsAlone) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(0, 255);
  std::vector<int32_t> other1(150), other2(90);
  for (int32_t& t : other1) t = token(rng);
  for (int32_t& t : other2) t = token(rng);
  const std::vector<std::vector<int32_t>> ids = {ids_, other1, other2};
  const std::vector<std::vector<int64_t>> plans = {
      RandomSplit(kT, 80, 11), {1, 70, 5, 64, 10}, std::vector<int64_t>(90, 1)};
  auto batched = RunBatchedLogits(*backend_, ids, plans);
  ASSERT_TRUE(batched.ok()) << batched.status();
  for (size_t i = 0; i < ids.size(); ++i) {
    auto alone = RunSequenceLogits(*backend_, ids[i], {});
    ASSERT_TRUE(alone.ok()) << alone.status();
    const float diff = MaxAbsDiff((*batched)[i], *alone);
    std::printf("natsl batched vs alone, sequence %zu: max |diff| = %.3g\n", i, diff);
    EXPECT_LE(diff, kInvarianceTol) << "sequence " << i;
  }
  EXPECT_LE(MaxAbsDiff((*batched)[0], golden_), kLogitsTol);
}

TEST_F(NatslGoldenTest, ForkContinuesLikeTheParent) {
  // Fork in the middle of a chunk (the current block is shared copy-on-write) and continue both.
  RoutingCounts counts;
  std::vector<float> prefix;
  std::unique_ptr<SequenceState> parent = Feed({100}, &counts, &prefix);
  ASSERT_NE(parent, nullptr);
  auto child = backend_->store().Fork(*parent);
  ASSERT_TRUE(child.ok()) << child.status();
  backend_->CopySlot(parent->slot, (*child)->slot);
  std::vector<float> rest[2];
  SequenceState* seqs[2] = {parent.get(), child->get()};
  for (int64_t pos = 100; pos < kT;) {
    const int64_t n = std::min<int64_t>(kT - pos, pos < 150 ? 7 : 1);
    for (int k = 0; k < 2; ++k) {
      SequenceWork w;
      w.seq = seqs[k];
      w.tokens = absl::MakeConstSpan(ids_).subspan(pos, n);
      w.logits = LogitsMode::kAll;
      StepOutput out;
      ASSERT_TRUE(backend_->Step({w}, &out).ok());
      rest[k].insert(rest[k].end(), out.logits.begin(), out.logits.end());
    }
    pos += n;
  }
  const std::vector<float> whole = Run({});
  const std::vector<float> tail(whole.begin() + 100 * vocab_, whole.end());
  EXPECT_LE(MaxAbsDiff(rest[0], tail), kInvarianceTol);
  EXPECT_LE(MaxAbsDiff(rest[1], tail), kInvarianceTol);
  backend_->store().Release(std::move(child).value());
  backend_->store().Release(std::move(parent));
  EXPECT_EQ(backend_->store().free_blocks(), backend_->store().num_blocks());
}

std::unique_ptr<cpu::CpuBackend> BackendWithCap(int64_t cap_tokens, KvCapPolicy policy) {
  auto ck = Checkpoint::Open(GoldenDir("natsl"));
  EXPECT_TRUE(ck.ok()) << ck.status();
  if (!ck.ok()) return nullptr;
  cpu::CpuBackendOptions o;
  o.num_threads = 2;
  o.store.num_slots = 2;
  o.store.num_blocks = 64;
  o.store.max_kv_tokens_per_stream = cap_tokens;
  o.store.cap_policy = policy;
  auto backend = cpu::CpuBackend::Create(std::move(ck).value(), o);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(backend).value() : nullptr;
}

TEST_F(NatslGoldenTest, CapRejectFailsTheStep) {
  // One block per stream: layer 1 head 0 keeps chunk 0 (routing 0), so chunk 1 needs a second.
  ASSERT_EQ(Routing(0, 0, 0), 0);
  std::unique_ptr<cpu::CpuBackend> backend = BackendWithCap(64, KvCapPolicy::kReject);
  ASSERT_NE(backend, nullptr);
  auto seq = backend->store().NewSequence();
  ASSERT_TRUE(seq.ok());
  backend->ResetSlot((*seq)->slot);
  SequenceWork w;
  w.seq = seq->get();
  w.tokens = absl::MakeConstSpan(ids_).subspan(0, 64);
  StepOutput out;
  ASSERT_TRUE(backend->Step({w}, &out).ok());  // chunk 0 fits
  w.tokens = absl::MakeConstSpan(ids_).subspan(64, 1);
  const absl::Status st = backend->Step({w}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("cap"), absl::string_view::npos) << st;
  backend->store().Release(std::move(seq).value());
}

TEST_F(NatslGoldenTest, CapEvictOldestKeepsServing) {
  std::unique_ptr<cpu::CpuBackend> backend = BackendWithCap(64, KvCapPolicy::kEvictOldest);
  ASSERT_NE(backend, nullptr);
  auto seq = backend->store().NewSequence();
  ASSERT_TRUE(seq.ok());
  backend->ResetSlot((*seq)->slot);
  std::vector<float> logits;
  for (int64_t pos = 0; pos < kT;) {
    const int64_t n = pos < kPrefill ? kPrefill : 1;
    SequenceWork w;
    w.seq = seq->get();
    w.tokens = absl::MakeConstSpan(ids_).subspan(pos, n);
    w.logits = LogitsMode::kAll;
    StepOutput out;
    const absl::Status st = backend->Step({w}, &out);
    ASSERT_TRUE(st.ok()) << st;
    logits.insert(logits.end(), out.logits.begin(), out.logits.end());
    pos += n;
  }
  EXPECT_GT((*seq)->evicted_blocks, 0);
  for (const auto& table : (*seq)->streams) EXPECT_LE(table.size(), 1u);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  // Chunk 0 is served before any eviction; later chunks lost the evicted keys.
  EXPECT_LE(MaxAbsDiff(logits, golden_, 0, 64 * vocab_), kLogitsTol);
  EXPECT_GT(MaxAbsDiff(logits, golden_, 64 * vocab_), kLogitsTol);
  std::printf("natsl evict-oldest (cap 64 tokens/stream): %lld blocks evicted\n",
              static_cast<long long>((*seq)->evicted_blocks));
  backend->store().Release(std::move(seq).value());
}

// The router logits: golden router_logits[i, c, h, op] (chunk 3 is the incomplete chunk, pooled
// over its 8 tokens as the reference's mean_pooling does). The backend API does not expose them,
// so this test drives the residual blocks itself, with the NAtS-L layers created with a
// decision log; the partial chunk's logits come from the slot's x_sum.
TEST_F(NatslGoldenTest, RouterLogits) {
  std::vector<int64_t> shape;
  auto router = GoldenF32("natsl", "router_logits", &shape);
  ASSERT_TRUE(router.ok()) << router.status();
  ASSERT_EQ(shape, (std::vector<int64_t>{2, kChunks, kHeads, 2}));
  auto golden_router = [&](int i, int64_t c, int h, int op) {
    return (*router)[((i * kChunks + c) * kHeads + h) * 2 + op];
  };

  auto ck_or = Checkpoint::Open(GoldenDir("natsl"));
  ASSERT_TRUE(ck_or.ok()) << ck_or.status();
  std::unique_ptr<Checkpoint> ck = std::move(ck_or).value();
  const ModelConfig cfg = ck->config();
  auto layout_or = StateLayout::Create(cfg, DType::kF32);
  ASSERT_TRUE(layout_or.ok());
  const StateLayout layout = *layout_or;
  StateStoreOptions so;
  so.num_slots = 1;
  so.num_blocks = 64;
  auto store_or = StateStore::Create(layout, so);
  ASSERT_TRUE(store_or.ok());
  std::unique_ptr<StateStore> store = std::move(store_or).value();
  ThreadPool pool(2);
  const int64_t d = cfg.hidden_size, inter = cfg.intermediate_size;

  struct Block {
    F32Tensor norm1, norm2, gate, up, down;
    std::unique_ptr<cpu::CpuLayer> mixer;
  };
  cpu::NatslDecisionLog log;
  auto take = [&](const std::string& name, std::vector<int64_t> dims) {
    auto t = ck->TakeF32(name, dims);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::move(t).value() : F32Tensor();
  };
  F32Tensor embed = take("model.embeddings.weight", {cfg.vocab_size, d});
  std::vector<Block> blocks(cfg.layers.size());
  for (size_t l = 0; l < cfg.layers.size(); ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    blocks[l].norm1 = take(p + "attn_norm.weight", {d});
    blocks[l].norm2 = take(p + "mlp_norm.weight", {d});
    blocks[l].gate = take(p + "mlp.gate_proj.weight", {inter, d});
    blocks[l].up = take(p + "mlp.up_proj.weight", {inter, d});
    blocks[l].down = take(p + "mlp.down_proj.weight", {d, inter});
    cpu::CpuLayerArgs args;
    args.config = &cfg;
    args.layer = static_cast<int>(l);
    args.prefix = p + "attn.";
    args.checkpoint = ck.get();
    args.layout = &layout;
    auto mixer = cfg.layers[l].kind == LayerKind::kNatsl ? cpu::CreateNatslLayerWithLog(args, &log)
                                                         : cpu::CreateGdnLayer(args);
    ASSERT_TRUE(mixer.ok()) << mixer.status();
    blocks[l].mixer = std::move(mixer).value();
  }

  auto seq_or = store->NewSequence();
  ASSERT_TRUE(seq_or.ok());
  std::unique_ptr<SequenceState> seq = std::move(seq_or).value();
  std::vector<uint8_t> slot(static_cast<size_t>(layout.slot_bytes()), 0);
  std::vector<uint8_t> block_memory(static_cast<size_t>(so.num_blocks * layout.block_bytes()), 0);
  RoutingCounts routing;
  cpu::CpuContext ctx;
  ctx.pool = &pool;
  ctx.store = store.get();
  ctx.layout = &layout;
  ctx.block_memory = block_memory.data();
  ctx.routing = &routing;
  cpu::CpuSeq cs;
  cs.seq = seq.get();
  cs.start_pos = 0;
  cs.row_begin = 0;
  cs.num_rows = kT;
  cs.slot = slot.data();

  std::vector<float> h(static_cast<size_t>(kT * d)), xn(h.size()), mix(h.size());
  std::vector<float> scratch(static_cast<size_t>(kT * 2 * inter));
  for (int64_t t = 0; t < kT; ++t) {
    std::memcpy(&h[t * d], embed.data() + ids_[t] * d, sizeof(float) * d);
  }
  for (Block& b : blocks) {
    cpu::RmsNormRows(&pool, h.data(), b.norm1.data(), cfg.norm_eps, kT, d, xn.data());
    ASSERT_TRUE(b.mixer->Forward(ctx, {cs}, xn.data(), mix.data()).ok());
    for (size_t k = 0; k < h.size(); ++k) h[k] += mix[k];
    cpu::RmsNormRows(&pool, h.data(), b.norm2.data(), cfg.norm_eps, kT, d, xn.data());
    cpu::SwiGluMlp(&pool, xn.data(), kT, d, inter, b.gate.data(), b.up.data(), b.down.data(),
                   scratch.data(), mix.data());
    for (size_t k = 0; k < h.size(); ++k) h[k] += mix[k];
  }

  // Complete chunks: one decision per (layer, chunk, head), in order, matching the golden.
  ASSERT_EQ(log.decisions.size(), 2u * (kChunks - 1) * kHeads);
  float max_diff = 0.0f;
  for (const cpu::NatslDecision& dec : log.decisions) {
    const int i = dec.layer == kNatslLayers[0] ? 0 : 1;
    ASSERT_EQ(dec.layer, kNatslLayers[i]);
    ASSERT_LT(dec.chunk, kChunks - 1);
    EXPECT_EQ(dec.op, Routing(i, dec.chunk, dec.head));
    max_diff =
        std::max({max_diff, std::fabs(dec.logit_softmax - golden_router(i, dec.chunk, dec.head, 0)),
                  std::fabs(dec.logit_gdn - golden_router(i, dec.chunk, dec.head, 1))});
  }
  // The incomplete chunk (tokens 192..199): router of the mean of the slot's Σx.
  for (int i = 0; i < 2; ++i) {
    const int layer = kNatslLayers[i];
    const float* x_sum =
        reinterpret_cast<const float*>(slot.data() + layout.Component(layer, "x_sum").offset);
    const int64_t n_last = kT - (kChunks - 1) * 64;
    std::vector<float> mean(static_cast<size_t>(d));
    for (int64_t k = 0; k < d; ++k) mean[k] = x_sum[k] / static_cast<float>(n_last);
    F32Tensor w = take(absl::StrCat("model.layers.", layer, ".attn.nats_layer.weight"), {4, d});
    for (int hh = 0; hh < kHeads; ++hh) {
      for (int op = 0; op < 2; ++op) {
        const float logit = cpu::Dot(mean.data(), w.data() + (2 * hh + op) * d, d);
        max_diff = std::max(max_diff, std::fabs(logit - golden_router(i, kChunks - 1, hh, op)));
      }
    }
  }
  std::printf("natsl router logits: max |diff| = %.3g\n", max_diff);
  EXPECT_LE(max_diff, kLogitsTol);
  store->Release(std::move(seq));
}

}  // namespace
}  // namespace hyla
