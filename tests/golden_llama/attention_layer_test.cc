// The attention CpuLayer on its own, with the fla-Attention options the Llama fixture cannot
// express (q/k RMSNorm, q/k/v biases without an o_proj bias, partial rotary, GQA, windows),
// against the double-precision reference layer of llama_reference.h, for random inputs, several
// sequences per call and random splits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/base/thread_pool.h"
#include "runtime/cpu/cpu_layer.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/safetensors.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"
#include "tests/golden_llama/llama_reference.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

using ::hyla::testing::MaxAbsDiff;
using ::hyla::testing::RandomSplit;
using ::hyla::testing::RefAttention;
using ::hyla::testing::RefMask;

constexpr int kHidden = 64, kHeads = 4, kKvHeads = 2, kHeadDim = 16, kRotary = 8;

std::vector<float> RandomVector(size_t n, float stddev, std::mt19937* rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(*rng);
  return v;
}

TensorToWrite Tensor(const std::string& name, std::vector<int64_t> shape,
                     const std::vector<float>& v) {
  TensorToWrite t;
  t.name = name;
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  t.bytes.resize(v.size() * 4);
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

std::vector<double> Widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// One attention layer over a hand-made checkpoint, with its own state store and block memory.
class LayerHarness {
 public:
  // window: 0 or the sliding window.
  void SetUp(int window) {
    std::mt19937 rng(1234);
    const int64_t qw = kHeads * kHeadDim, kw = kKvHeads * kHeadDim;
    const std::string p = "model.layers.0.self_attn.";
    std::vector<float> wq = RandomVector(qw * kHidden, 0.15f, &rng);
    std::vector<float> wk = RandomVector(kw * kHidden, 0.15f, &rng);
    std::vector<float> wv = RandomVector(kw * kHidden, 0.15f, &rng);
    std::vector<float> wo = RandomVector(kHidden * qw, 0.15f, &rng);
    std::vector<float> bq = RandomVector(qw, 0.3f, &rng);
    std::vector<float> bk = RandomVector(kw, 0.3f, &rng);
    std::vector<float> bv = RandomVector(kw, 0.3f, &rng);
    std::vector<float> qn = RandomVector(kHeadDim, 0.5f, &rng);
    std::vector<float> kn = RandomVector(kHeadDim, 0.5f, &rng);
    for (float& x : qn) x += 1.0f;
    for (float& x : kn) x += 1.0f;

    namespace fs = std::filesystem;
    const fs::path dir = fs::path(::testing::TempDir()) / absl::StrCat("hyla_attn_layer_", window);
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream(dir / "config.json") << absl::StrCat(
        R"({"model_type": "llama", "vocab_size": 16, "hidden_size": )", kHidden,
        R"(, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": )", kHeads,
        R"(, "num_key_value_heads": )", kKvHeads, "}");
    ASSERT_TRUE(
        WriteSafetensors(
            (dir / "model.safetensors").string(),
            {Tensor(p + "q_proj.weight", {qw, kHidden}, wq),
             Tensor(p + "k_proj.weight", {kw, kHidden}, wk),
             Tensor(p + "v_proj.weight", {kw, kHidden}, wv),
             Tensor(p + "o_proj.weight", {kHidden, qw}, wo), Tensor(p + "q_proj.bias", {qw}, bq),
             Tensor(p + "k_proj.bias", {kw}, bk), Tensor(p + "v_proj.bias", {kw}, bv),
             Tensor(p + "q_norm.weight", {kHeadDim}, qn),
             Tensor(p + "k_norm.weight", {kHeadDim}, kn)})
            .ok());
    auto ck = Checkpoint::Open(dir.string());
    ASSERT_TRUE(ck.ok()) << ck.status();
    checkpoint_ = std::move(ck).value();

    // fla Attention flavour: q/k norm (eps 1e-5), q/k/v bias, no o_proj bias; partial rotary.
    config_ = checkpoint_->config();
    AttentionLayerConfig& a = config_.layers[0].attention;
    ASSERT_EQ(a.head_dim, kHeadDim);
    a.qk_norm = true;
    a.qk_norm_eps = 1e-5f;
    a.qkv_bias = true;
    a.o_bias = false;
    a.rotary_dim = kRotary;
    a.rope_theta = 10000.0f;
    a.window_size = window;
    auto layout = StateLayout::Create(config_, DType::kF32);
    ASSERT_TRUE(layout.ok()) << layout.status();
    layout_.emplace(std::move(layout).value());
    StateStoreOptions so;
    so.num_slots = 4;
    so.num_blocks = 64;
    auto store = StateStore::Create(*layout_, so);
    ASSERT_TRUE(store.ok());
    store_ = std::move(store).value();
    blocks_.assign(static_cast<size_t>(so.num_blocks * layout_->block_bytes()), 0);

    cpu::CpuLayerArgs args;
    args.config = &config_;
    args.layer = 0;
    args.prefix = p;
    args.checkpoint = checkpoint_.get();
    args.layout = &*layout_;
    auto layer = cpu::CreateAttentionLayer(args);
    ASSERT_TRUE(layer.ok()) << layer.status();
    layer_ = std::move(layer).value();
    ASSERT_TRUE(checkpoint_->CheckAllTaken().ok());

    ref_.hidden = kHidden;
    ref_.heads = kHeads;
    ref_.kv_heads = kKvHeads;
    ref_.head_dim = kHeadDim;
    ref_.rotary_dim = kRotary;
    ref_.theta = 10000.0;
    ref_.qk_norm_eps = 1e-5;
    ref_.wq = Widen(wq);
    ref_.wk = Widen(wk);
    ref_.wv = Widen(wv);
    ref_.wo = Widen(wo);
    ref_.bq = Widen(bq);
    ref_.bk = Widen(bk);
    ref_.bv = Widen(bv);
    ref_.q_norm = Widen(qn);
    ref_.k_norm = Widen(kn);
  }

  // Runs the sequences together, step by step: at every step each unfinished sequence feeds its
  // next chunk. xs[i]: [T_i, hidden]. Returns each sequence's outputs [T_i, hidden].
  std::vector<std::vector<float>> Run(const std::vector<std::vector<float>>& xs,
                                      const std::vector<std::vector<int64_t>>& chunks) {
    const size_t n = xs.size();
    std::vector<std::unique_ptr<SequenceState>> seqs(n);
    for (auto& s : seqs) {
      auto seq = store_->NewSequence();
      EXPECT_TRUE(seq.ok());
      s = std::move(seq).value();
    }
    std::vector<std::vector<float>> outs(n);
    std::vector<size_t> next(n, 0);
    cpu::CpuContext ctx;
    ctx.pool = &pool_;
    ctx.store = store_.get();
    ctx.layout = &*layout_;
    ctx.block_memory = blocks_.data();
    for (;;) {
      std::vector<cpu::CpuSeq> batch;
      std::vector<float> x;
      std::vector<size_t> who;
      for (size_t i = 0; i < n; ++i) {
        if (next[i] >= chunks[i].size()) continue;
        cpu::CpuSeq s;
        s.seq = seqs[i].get();
        s.start_pos = seqs[i]->num_tokens;
        s.row_begin = static_cast<int64_t>(x.size()) / kHidden;
        s.num_rows = chunks[i][next[i]];
        x.insert(x.end(), xs[i].begin() + s.start_pos * kHidden,
                 xs[i].begin() + (s.start_pos + s.num_rows) * kHidden);
        batch.push_back(s);
        who.push_back(i);
      }
      if (batch.empty()) break;
      std::vector<float> out(x.size());
      const absl::Status st = layer_->Forward(ctx, batch, x.data(), out.data());
      EXPECT_TRUE(st.ok()) << st;
      if (!st.ok()) break;
      for (size_t b = 0; b < batch.size(); ++b) {
        const size_t i = who[b];
        outs[i].insert(outs[i].end(), out.begin() + batch[b].row_begin * kHidden,
                       out.begin() + (batch[b].row_begin + batch[b].num_rows) * kHidden);
        seqs[i]->num_tokens += batch[b].num_rows;
        ++next[i];
        // Blocks held: what StateLayout's accounting says for this length.
        EXPECT_EQ(static_cast<int64_t>(seqs[i]->streams[0].size()),
                  StateLayout::StreamBlocksAt(layout_->streams()[0], seqs[i]->num_tokens, 1.0));
      }
    }
    for (auto& s : seqs) store_->Release(std::move(s));
    EXPECT_EQ(store_->free_blocks(), store_->num_blocks());
    return outs;
  }

  std::vector<float> Reference(const std::vector<float>& x, int window) const {
    RefMask mask;
    mask.window = window;
    const int64_t T = static_cast<int64_t>(x.size()) / kHidden;
    const std::vector<double> y = ref_.Forward(Widen(x), T, mask);
    return {y.begin(), y.end()};
  }

 private:
  std::unique_ptr<Checkpoint> checkpoint_;
  ModelConfig config_;
  std::optional<StateLayout> layout_;
  std::unique_ptr<StateStore> store_;
  std::vector<uint8_t> blocks_;
  ThreadPool pool_{2};
  std::unique_ptr<cpu::CpuLayer> layer_;
  RefAttention ref_;
};

class AttentionLayerTest : public ::testing::TestWithParam<int> {};

TEST_P(AttentionLayerTest, FlaOptionsMatchReferenceAcrossSplitsAndBatches) {
  const int window = GetParam();
  LayerHarness h;
  h.SetUp(window);
  if (::testing::Test::HasFatalFailure()) return;
  std::mt19937 rng(99);
  const std::vector<int64_t> lengths = {190, 75, 130};
  std::vector<std::vector<float>> xs;
  for (int64_t T : lengths)
    xs.push_back(RandomVector(static_cast<size_t>(T * kHidden), 1.0f, &rng));

  // Each alone in one call, against the reference.
  float ref_diff = 0;
  std::vector<std::vector<float>> alone;
  for (size_t i = 0; i < xs.size(); ++i) {
    alone.push_back(h.Run({xs[i]}, {{lengths[i]}})[0]);
    ref_diff = std::max(ref_diff, MaxAbsDiff(alone.back(), h.Reference(xs[i], window)));
  }
  std::printf("[attention layer] window %d: max |diff| vs double reference %.3g\n", window,
              ref_diff);
  EXPECT_LE(ref_diff, 2e-5f);

  // Together, in random splits and token by token: bitwise the same.
  const std::vector<std::vector<float>> together =
      h.Run(xs, {RandomSplit(lengths[0], 80, 1), std::vector<int64_t>(lengths[1], 1),
                 RandomSplit(lengths[2], 80, 2)});
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_EQ(together[i], alone[i])
        << "sequence " << i << " max |diff| " << MaxAbsDiff(together[i], alone[i]);
  }
}

INSTANTIATE_TEST_SUITE_P(Windows, AttentionLayerTest, ::testing::Values(0, 1, 40, 64, 100));

}  // namespace
}  // namespace hyla
