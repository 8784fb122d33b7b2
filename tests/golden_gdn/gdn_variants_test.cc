// GDN checkpoints beyond the golden fixture's flags — GVA (num_v_heads > num_heads), no output
// gate (plain o_norm), allow_neg_eigval, other conv sizes, no short conv, fractional expand_v —
// against an independent float64 forward, plus chunking/batching invariance; and a GDN hybrid
// with fla Attention layers ("attn") against the same float64 forward, chunking-invariant.
#include <cmath>
#include <cstdint>
#include <fstream>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/engine/sequence_runner.h"
#include "tests/golden_gdn/gdn_test_model.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

using testing::GdnTempDir;
using testing::LoadCpuBackend;
using testing::MaxAbsDiff;
using testing::RandomSplit;
using testing::TestAttnSpec;
using testing::TestGdnShape;

std::vector<int32_t> Tokens(int n, int vocab, uint32_t seed) {
  std::vector<int32_t> ids;
  uint32_t x = seed;
  for (int i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    ids.push_back(static_cast<int32_t>((x >> 8) % static_cast<uint32_t>(vocab)));
  }
  return ids;
}

struct Variant {
  std::string name;
  TestGdnShape shape;
};
void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

std::vector<Variant> Variants() {
  std::vector<Variant> v;
  {
    TestGdnShape s;  // the fixture's flags, small
    v.push_back({"default", s});
  }
  {
    TestGdnShape s;
    s.num_v_heads = 4;  // GVA: 2 value heads per q/k head
    s.use_gate = false;
    s.allow_neg_eigval = true;
    s.conv_size = 3;
    v.push_back({"gva_nogate_negeig_conv3", s});
  }
  {
    TestGdnShape s;
    s.num_heads = 3;
    s.num_v_heads = 6;
    s.head_dim = 6;
    s.expand_v = 1.5;  // dv = 9
    s.use_short_conv = false;
    s.layers = 3;
    v.push_back({"noconv_expand1p5", s});
  }
  {
    TestGdnShape s;
    s.conv_size = 1;  // a conv without history: no carried tail
    s.head_dim = 12;
    v.push_back({"conv1", s});
  }
  return v;
}

class GdnVariantTest : public ::testing::TestWithParam<Variant> {};

TEST_P(GdnVariantTest, MatchesFloat64ReferenceAndIsInvariant) {
  const TestGdnShape& s = GetParam().shape;
  GdnTempDir dir;
  const testing::TestWeights w = testing::WriteRandomGdnCheckpoint(s, dir.path(), 1234);
  auto backend = LoadCpuBackend(dir.path());
  ASSERT_TRUE(backend.ok()) << backend.status();
  const int T = 150;  // crosses the 64-token block size twice
  const std::vector<int32_t> ids = Tokens(T, s.vocab, 99);

  auto one = RunSequenceLogits(**backend, ids, {});
  ASSERT_TRUE(one.ok()) << one.status();
  const std::vector<double> ref = testing::ReferenceGdnLogits(s, w, ids);
  ASSERT_EQ(ref.size(), one->size());
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(ref[i] - (*one)[i]));
    max_ref = std::max(max_ref, std::fabs(ref[i]));
  }
  EXPECT_GT(max_ref, 0.1);  // the model is not degenerate
  EXPECT_LE(max_diff, 1e-4 * std::max(1.0, max_ref)) << "max |logit| " << max_ref;

  for (uint32_t seed : {11u, 12u}) {
    auto chunked = RunSequenceLogits(**backend, ids, RandomSplit(T, 80, seed));
    ASSERT_TRUE(chunked.ok()) << chunked.status();
    EXPECT_EQ(*chunked, *one) << "seed " << seed;
  }
  auto decode = RunSequenceLogits(**backend, ids, std::vector<int64_t>(T, 1));
  ASSERT_TRUE(decode.ok()) << decode.status();
  EXPECT_EQ(*decode, *one);

  const std::vector<int32_t> other1 = Tokens(97, s.vocab, 5), other2 = Tokens(33, s.vocab, 6);
  auto batched = RunBatchedLogits(**backend, {other1, ids, other2},
                                  {RandomSplit(97, 30, 1), RandomSplit(T, 70, 2), {}});
  ASSERT_TRUE(batched.ok()) << batched.status();
  EXPECT_EQ((*batched)[1], *one);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GdnVariantTest, ::testing::ValuesIn(Variants()),
                         [](const ::testing::TestParamInfo<Variant>& p) { return p.param.name; });

TEST(GdnCheckpointTest, MissingOrMisshapenTensorsAreNamed) {
  TestGdnShape s;
  GdnTempDir dir;
  testing::WriteRandomGdnCheckpoint(s, dir.path(), 7);
  // Drop the output gate from the config: g_proj is then an unexpected tensor.
  s.use_gate = false;
  std::ofstream(dir.path() + "/config.json") << testing::GdnConfigJson(s);
  auto backend = LoadCpuBackend(dir.path());
  ASSERT_FALSE(backend.ok());
  EXPECT_NE(std::string(backend.status().message()).find("g_proj"), std::string::npos)
      << backend.status();
  // A different head_dim: q_proj has the wrong shape.
  s.use_gate = true;
  s.head_dim = 16;
  std::ofstream(dir.path() + "/config.json") << testing::GdnConfigJson(s);
  backend = LoadCpuBackend(dir.path());
  ASSERT_FALSE(backend.ok());
  EXPECT_NE(std::string(backend.status().message()).find("model.layers.0.attn.q_proj.weight"),
            std::string::npos)
      << backend.status();
}

// A GDN / softmax hybrid (fla "attn"): GDN layers 0 and 2, full attention (GQA, qkv bias) at
// layer 1 and sliding-window attention at layer 3. The attention layer is the "llama" CPU layer.
TEST(GdnHybridTest, LoadsAndIsChunkingInvariant) {
  TestGdnShape s;
  s.layers = 4;
  s.num_v_heads = 4;
  TestAttnSpec full;
  full.layers = {1};
  full.num_heads = 4;
  full.num_kv_heads = 2;
  full.qkv_bias = true;
  TestAttnSpec swa;
  swa.layers = {3};
  swa.num_heads = 2;
  swa.window_size = 20;
  s.attn = {full, swa};
  GdnTempDir dir;
  const testing::TestWeights w = testing::WriteRandomGdnCheckpoint(s, dir.path(), 4321);
  auto backend = LoadCpuBackend(dir.path());
  ASSERT_TRUE(backend.ok()) << backend.status();
  const ModelConfig& c = (*backend)->config();
  ASSERT_EQ(c.layers.size(), 4u);
  EXPECT_EQ(c.layers[0].kind, LayerKind::kGdn);
  EXPECT_EQ(c.layers[1].kind, LayerKind::kAttention);
  EXPECT_EQ(c.layers[2].kind, LayerKind::kGdn);
  EXPECT_EQ(c.layers[3].kind, LayerKind::kAttention);
  EXPECT_EQ(c.layers[1].attention.head_dim, 12);
  EXPECT_EQ(c.layers[3].attention.window_size, 20);
  // KV streams for the two softmax layers only.
  EXPECT_EQ((*backend)->layout().num_streams(), 2);

  const int T = 150;
  const std::vector<int32_t> ids = Tokens(T, s.vocab, 3);
  auto one = RunSequenceLogits(**backend, ids, {});
  ASSERT_TRUE(one.ok()) << one.status();
  // fla semantics of the whole hybrid (GDN and Attention layers) against float64.
  const std::vector<double> ref = testing::ReferenceGdnLogits(s, w, ids);
  ASSERT_EQ(ref.size(), one->size());
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(ref[i] - (*one)[i]));
    max_ref = std::max(max_ref, std::fabs(ref[i]));
  }
  EXPECT_GT(max_ref, 0.1);
  EXPECT_LE(max_diff, 1e-4 * std::max(1.0, max_ref)) << "max |logit| " << max_ref;
  for (uint32_t seed : {21u, 22u, 23u}) {
    auto chunked = RunSequenceLogits(**backend, ids, RandomSplit(T, 80, seed));
    ASSERT_TRUE(chunked.ok()) << chunked.status();
    EXPECT_LE(MaxAbsDiff(*chunked, *one), 1e-5f) << "seed " << seed;
  }
  auto decode = RunSequenceLogits(**backend, ids, std::vector<int64_t>(T, 1));
  ASSERT_TRUE(decode.ok()) << decode.status();
  EXPECT_LE(MaxAbsDiff(*decode, *one), 1e-5f);
  const std::vector<int32_t> other = Tokens(70, s.vocab, 8);
  auto batched =
      RunBatchedLogits(**backend, {ids, other}, {RandomSplit(T, 50, 3), RandomSplit(70, 9, 4)});
  ASSERT_TRUE(batched.ok()) << batched.status();
  EXPECT_LE(MaxAbsDiff((*batched)[0], *one), 1e-6f);
}

}  // namespace
}  // namespace hyla
