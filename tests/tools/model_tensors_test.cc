#include "tools/model_tensors.h"

#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/json.h"
#include "runtime/model/safetensors.h"

namespace hyla::tools {
namespace {

std::string GoldenDir(const std::string& family) {
  return std::string(HYLA_GOLDEN_DIR) + "/" + family;
}

std::map<std::string, std::vector<int64_t>> AsMap(const std::vector<TensorSpec>& specs) {
  std::map<std::string, std::vector<int64_t>> m;
  for (const TensorSpec& t : specs) {
    EXPECT_TRUE(m.emplace(t.name, t.shape).second) << "duplicate tensor " << t.name;
  }
  return m;
}

// The tensor list of each golden config is exactly the golden checkpoint's header, and the
// parameter count is the reference's sum(p.numel()) recorded in golden.json.
class GoldenTensorsTest : public ::testing::TestWithParam<const char*> {};

TEST_P(GoldenTensorsTest, ListMatchesTheReferenceCheckpoint) {
  const std::string dir = GoldenDir(GetParam());
  absl::StatusOr<ModelConfig> config = Checkpoint::ReadConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  std::map<std::string, std::vector<int64_t>> golden;
  for (const TensorInfo& t : (*file)->tensors()) golden[t.name] = t.shape;

  const std::vector<TensorSpec> specs = ListModelTensors(*config);
  EXPECT_EQ(AsMap(specs), golden);

  std::ifstream in(dir + "/golden.json");
  ASSERT_TRUE(in) << dir << "/golden.json missing";
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<JsonValue> meta = ParseJson(ss.str());
  ASSERT_TRUE(meta.ok()) << meta.status();
  const JsonValue* n_params = meta->Find("n_params");
  ASSERT_NE(n_params, nullptr);
  ASSERT_TRUE(n_params->is_integer());
  EXPECT_EQ(CountParameters(*config), n_params->int_value());
}

INSTANTIATE_TEST_SUITE_P(Families, GoldenTensorsTest,
                         ::testing::Values("llama", "gdn", "natsl", "nha"));

// Hand-built configs for features the fixtures do not cover.

ModelConfig OneLayer(Family family, LayerConfig layer) {
  ModelConfig c;
  c.family = family;
  c.vocab_size = 100;
  c.hidden_size = 32;
  c.num_layers = 1;
  c.intermediate_size = 48;
  c.layers = {layer};
  return c;
}

TEST(ModelTensorsTest, GdnWithGroupedValueHeadsAndNoConvOrGate) {
  LayerConfig l;
  l.kind = LayerKind::kGdn;
  l.gdn.num_heads = 2;
  l.gdn.num_v_heads = 4;
  l.gdn.head_k_dim = 8;
  l.gdn.head_v_dim = 16;
  l.gdn.use_short_conv = false;
  l.gdn.use_gate = false;
  const auto m = AsMap(ListModelTensors(OneLayer(Family::kGdn, l)));
  using V = std::vector<int64_t>;
  EXPECT_EQ(m.at("model.layers.0.attn.q_proj.weight"), (V{16, 32}));
  EXPECT_EQ(m.at("model.layers.0.attn.v_proj.weight"), (V{64, 32}));
  EXPECT_EQ(m.at("model.layers.0.attn.a_proj.weight"), (V{4, 32}));
  EXPECT_EQ(m.at("model.layers.0.attn.A_log"), (V{4}));
  EXPECT_EQ(m.at("model.layers.0.attn.o_norm.weight"), (V{16}));
  EXPECT_EQ(m.at("model.layers.0.attn.o_proj.weight"), (V{32, 64}));
  EXPECT_EQ(m.count("model.layers.0.attn.g_proj.weight"), 0u);
  EXPECT_EQ(m.count("model.layers.0.attn.q_conv1d.weight"), 0u);
  EXPECT_EQ(m.at("model.embeddings.weight"), (V{100, 32}));
  EXPECT_EQ(m.at("lm_head.weight"), (V{100, 32}));
}

TEST(ModelTensorsTest, NhaWithGroupedKvHeadsAndShortConv) {
  LayerConfig l;
  l.kind = LayerKind::kNha;
  l.nha.num_heads = 4;
  l.nha.num_kv_heads = 2;
  l.nha.head_k_dim = 8;
  l.nha.head_v_dim = 8;
  l.nha.num_slots = 6;
  l.nha.window_size = 4;
  l.nha.use_short_conv = true;
  const auto m = AsMap(ListModelTensors(OneLayer(Family::kNha, l)));
  using V = std::vector<int64_t>;
  EXPECT_EQ(m.at("model.layers.0.attn.q_proj.weight"), (V{32, 32}));
  EXPECT_EQ(m.at("model.layers.0.attn.k_proj.weight"), (V{16, 32}));
  EXPECT_EQ(m.at("model.layers.0.attn.v_proj.weight"), (V{16, 32}));
  EXPECT_EQ(m.at("model.layers.0.attn.f_proj.weight"), (V{12, 32}));
  EXPECT_EQ(m.at("model.layers.0.attn.k_conv1d.weight"), (V{16, 1, 4}));
  EXPECT_EQ(m.at("model.layers.0.attn.g_norm.weight"), (V{32}));
  EXPECT_EQ(m.at("model.layers.0.attn.o_proj.weight"), (V{32, 32}));
}

TEST(ModelTensorsTest, AttentionBiasesQkNormAndTiedEmbeddings) {
  LayerConfig l;
  l.kind = LayerKind::kAttention;
  l.attention.num_heads = 4;
  l.attention.num_kv_heads = 1;
  l.attention.head_dim = 8;
  l.attention.qkv_bias = true;
  l.attention.o_bias = true;
  l.attention.qk_norm = true;
  ModelConfig c = OneLayer(Family::kLlama, l);
  c.tie_word_embeddings = true;
  const std::vector<TensorSpec> specs = ListModelTensors(c);
  const auto m = AsMap(specs);
  using V = std::vector<int64_t>;
  EXPECT_EQ(m.at("model.embed_tokens.weight"), (V{100, 32}));
  EXPECT_EQ(m.at("model.layers.0.input_layernorm.weight"), (V{32}));
  EXPECT_EQ(m.at("model.layers.0.self_attn.k_proj.weight"), (V{8, 32}));
  EXPECT_EQ(m.at("model.layers.0.self_attn.k_proj.bias"), (V{8}));
  EXPECT_EQ(m.at("model.layers.0.self_attn.q_proj.bias"), (V{32}));
  EXPECT_EQ(m.at("model.layers.0.self_attn.o_proj.bias"), (V{32}));
  EXPECT_EQ(m.at("model.layers.0.self_attn.q_norm.weight"), (V{8}));
  EXPECT_EQ(m.at("model.layers.0.post_attention_layernorm.weight"), (V{32}));
  EXPECT_EQ(m.count("lm_head.weight"), 0u);
  // 100·32 embedding + 2·32 norms + q(32·32+32) + k,v(8·32+8)·2 + o(32·32+32) + 2·8 qk norms
  // + MLP 3·48·32 + final norm 32.
  EXPECT_EQ(CountParameters(c), 3200 + 64 + 1056 + 2 * 264 + 1056 + 16 + 4608 + 32);
  for (const TensorSpec& t : specs) {
    if (t.name.find("bias") != std::string::npos) {
      EXPECT_EQ(t.init, InitKind::kZeros) << t.name;
    }
  }
}

TEST(ModelTensorsTest, InitKindsFollowTheReference) {
  LayerConfig l;
  l.kind = LayerKind::kNatsl;
  l.natsl.gdn.num_heads = 2;
  l.natsl.gdn.num_v_heads = 2;
  l.natsl.gdn.head_k_dim = 8;
  l.natsl.gdn.head_v_dim = 16;
  l.natsl.num_attn_heads = 4;
  l.natsl.attn_head_k_dim = 4;
  l.natsl.attn_head_v_dim = 8;
  ModelConfig c = OneLayer(Family::kNatsl, l);
  std::map<std::string, TensorSpec> by_name;
  for (const TensorSpec& t : ListModelTensors(c)) by_name[t.name] = t;
  const std::string p = "model.layers.0.attn.";
  EXPECT_EQ(by_name.at(p + "A_log").init, InitKind::kALog);
  EXPECT_EQ(by_name.at(p + "dt_bias").init, InitKind::kDtBias);
  EXPECT_EQ(by_name.at(p + "o_norm.weight1").init, InitKind::kOnes);
  EXPECT_EQ(by_name.at(p + "o_norm.weight2").shape, (std::vector<int64_t>{8}));
  EXPECT_EQ(by_name.at(p + "q_norm.weight").shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(by_name.at(p + "nats_layer.weight").shape, (std::vector<int64_t>{4, 32}));
  EXPECT_EQ(by_name.at(p + "nats_layer.weight").std, kRouterStd);
  EXPECT_EQ(by_name.at(p + "nats_out_weights_layer.weight").shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(by_name.at(p + "q_proj.weight").init, InitKind::kNormal);
  EXPECT_EQ(by_name.at(p + "q_proj.weight").std, kInitStd);
  EXPECT_EQ(by_name.at(p + "q_conv1d.weight").shape, (std::vector<int64_t>{16, 1, 4}));
  EXPECT_EQ(by_name.at("model.norm.weight").init, InitKind::kOnes);

  c.norm_kind = NormKind::kGemma;  // x̂·(1+w): zero-initialised weights
  for (const TensorSpec& t : ListModelTensors(c)) {
    if (t.name == "model.norm.weight" || t.name == "model.layers.0.attn_norm.weight") {
      EXPECT_EQ(t.init, InitKind::kZeros) << t.name;
    }
  }
}

}  // namespace
}  // namespace hyla::tools
