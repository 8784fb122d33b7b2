// ParseGdnConfig: the keys and defaults of fla's GatedDeltaNetConfig, fla's derived head and MLP
// widths, the hybrid "attn" specification, and errors that name the file and the key.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/config.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<ModelConfig> Parse(const std::string& json) {
  return ParseModelConfig(json, "/x/config.json");
}

std::string Error(const std::string& json) {
  auto c = Parse(json);
  EXPECT_FALSE(c.ok()) << json;
  return c.ok() ? std::string() : std::string(c.status().message());
}

TEST(GdnConfigTest, FixtureConfig) {
  auto c = LoadModelConfig(testing::GoldenDir("gdn") + "/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, Family::kGdn);
  EXPECT_EQ(c->model_type, "gated_deltanet");
  EXPECT_EQ(c->vocab_size, 256);
  EXPECT_EQ(c->hidden_size, 128);
  EXPECT_EQ(c->num_layers, 3);
  EXPECT_EQ(c->intermediate_size, 256);
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-6f);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_EQ(c->dtype, DType::kF32);
  ASSERT_EQ(c->layers.size(), 3u);
  for (const LayerConfig& l : c->layers) {
    ASSERT_EQ(l.kind, LayerKind::kGdn);
    EXPECT_EQ(l.gdn.num_heads, 2);
    EXPECT_EQ(l.gdn.num_v_heads, 2);
    EXPECT_EQ(l.gdn.head_k_dim, 64);
    EXPECT_EQ(l.gdn.head_v_dim, 128);
    EXPECT_EQ(l.gdn.key_dim(), 128);
    EXPECT_EQ(l.gdn.value_dim(), 256);
    EXPECT_TRUE(l.gdn.use_short_conv);
    EXPECT_EQ(l.gdn.conv_size, 4);
    EXPECT_TRUE(l.gdn.use_gate);
    EXPECT_FALSE(l.gdn.allow_neg_eigval);
    EXPECT_FLOAT_EQ(l.gdn.norm_eps, 1e-6f);
  }
}

TEST(GdnConfigTest, DefaultsOfGatedDeltaNetConfig) {
  auto c = Parse(R"({"model_type": "gated_deltanet"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 32000);
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->num_layers, 21);
  // GatedMLP: int(2048 * 4 * 2 / 3) = 5461, rounded up to a multiple of 256.
  EXPECT_EQ(c->intermediate_size, 5632);
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-6f);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->dtype, DType::kF32);
  ASSERT_EQ(c->layers.size(), 21u);
  const GdnLayerConfig& g = c->layers[0].gdn;
  EXPECT_EQ(c->layers[0].kind, LayerKind::kGdn);
  EXPECT_EQ(g.num_heads, 6);
  EXPECT_EQ(g.num_v_heads, 6);
  EXPECT_EQ(g.head_k_dim, 256);
  EXPECT_EQ(g.head_v_dim, 512);
  EXPECT_TRUE(g.use_gate);
  EXPECT_TRUE(g.use_short_conv);
  EXPECT_EQ(g.conv_size, 4);
  EXPECT_FALSE(g.allow_neg_eigval);
}

TEST(GdnConfigTest, GvaExpandVAndFlags) {
  auto c = Parse(R"({"model_type": "gated_deltanet", "hidden_size": 96, "num_hidden_layers": 2,
      "num_heads": 2, "num_v_heads": 4, "head_dim": 16, "expand_v": 1.5, "use_gate": false,
      "use_short_conv": false, "allow_neg_eigval": true, "conv_size": 3, "norm_eps": 1e-5,
      "intermediate_size": 100, "vocab_size": 50, "bos_token_id": null, "eos_token_id": [7, 8],
      "tie_word_embeddings": true, "torch_dtype": "bfloat16"})");
  ASSERT_TRUE(c.ok()) << c.status();
  const GdnLayerConfig& g = c->layers[1].gdn;
  EXPECT_EQ(g.num_heads, 2);
  EXPECT_EQ(g.num_v_heads, 4);
  EXPECT_EQ(g.head_k_dim, 16);
  EXPECT_EQ(g.head_v_dim, 24);
  EXPECT_EQ(g.value_dim(), 96);
  EXPECT_FALSE(g.use_gate);
  EXPECT_FALSE(g.use_short_conv);
  EXPECT_TRUE(g.allow_neg_eigval);
  EXPECT_EQ(g.conv_size, 3);
  EXPECT_FLOAT_EQ(g.norm_eps, 1e-5f);
  EXPECT_EQ(c->intermediate_size, 100);
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->eos_token_id, 7);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->dtype, DType::kBF16);
}

TEST(GdnConfigTest, MlpWidthFromHiddenRatio) {
  // int(200 * 3 * 2 / 3) = 400 -> 512.
  auto c = Parse(R"({"model_type": "gated_deltanet", "hidden_size": 200, "hidden_ratio": 3,
      "num_heads": 2, "head_dim": 8, "num_hidden_layers": 1, "dtype": "float16"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->intermediate_size, 512);
  EXPECT_EQ(c->dtype, DType::kF16);
  // Float ratio: int(128 * 2.5 * 2 / 3) = 213 -> 256; null ratio means 4: int(1024*4*2/3) = 2730 ->
  // 2816.
  c = Parse(R"({"model_type": "gated_deltanet", "hidden_size": 128, "hidden_ratio": 2.5,
      "num_heads": 2, "head_dim": 8, "num_hidden_layers": 1})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->intermediate_size, 256);
  c = Parse(R"({"model_type": "gated_deltanet", "hidden_size": 1024, "hidden_ratio": null,
      "intermediate_size": null, "num_heads": 2, "head_dim": 8, "num_hidden_layers": 1})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->intermediate_size, 2816);
}

TEST(GdnConfigTest, HybridAttentionSingleSpec) {
  auto c = Parse(R"({"model_type": "gated_deltanet", "hidden_size": 128, "num_hidden_layers": 4,
      "num_heads": 2, "head_dim": 32, "intermediate_size": 256,
      "attn": {"layers": [1, 3], "num_heads": 4, "num_kv_heads": 2, "qkv_bias": true,
               "window_size": 16, "rope_theta": 500000.0}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->layers[0].kind, LayerKind::kGdn);
  EXPECT_EQ(c->layers[2].kind, LayerKind::kGdn);
  for (int i : {1, 3}) {
    ASSERT_EQ(c->layers[i].kind, LayerKind::kAttention) << i;
    const AttentionLayerConfig& a = c->layers[i].attention;
    EXPECT_EQ(a.num_heads, 4);
    EXPECT_EQ(a.num_kv_heads, 2);
    EXPECT_EQ(a.head_dim, 32);  // hidden_size // num_heads
    EXPECT_EQ(a.rotary_dim, 32);
    EXPECT_TRUE(a.qkv_bias);
    EXPECT_FALSE(a.qk_norm);
    EXPECT_FALSE(a.o_bias);
    EXPECT_EQ(a.window_size, 16);
    EXPECT_FLOAT_EQ(a.rope_theta, 500000.0f);
  }
}

TEST(GdnConfigTest, HybridAttentionListAndDefaults) {
  auto c = Parse(R"({"model_type": "gated_deltanet", "hidden_size": 64, "num_hidden_layers": 3,
      "num_heads": 2, "head_dim": 16, "intermediate_size": 128,
      "attn": [{"layers": [0], "num_heads": 2}, {"layers": [2], "num_heads": 4, "window_size": null}]})");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->layers[0].kind, LayerKind::kAttention);
  EXPECT_EQ(c->layers[0].attention.num_heads, 2);
  EXPECT_EQ(c->layers[0].attention.num_kv_heads, 2);
  EXPECT_EQ(c->layers[0].attention.head_dim, 32);
  EXPECT_FALSE(c->layers[0].attention.qkv_bias);
  EXPECT_EQ(c->layers[0].attention.window_size, 0);
  EXPECT_FLOAT_EQ(c->layers[0].attention.rope_theta, 10000.0f);
  EXPECT_EQ(c->layers[1].kind, LayerKind::kGdn);
  ASSERT_EQ(c->layers[2].kind, LayerKind::kAttention);
  EXPECT_EQ(c->layers[2].attention.head_dim, 16);
}

TEST(GdnConfigTest, ErrorsNameFileAndKey) {
  const std::string base = R"("model_type": "gated_deltanet", "hidden_size": 64,
      "num_hidden_layers": 3, "num_heads": 2, "head_dim": 16, "intermediate_size": 128)";
  std::string e = Error("{" + base + R"(, "expand_v": 1.03})");
  EXPECT_THAT(e, HasSubstr("/x/config.json"));
  EXPECT_THAT(e, HasSubstr("\"expand_v\""));
  e = Error("{" + base + R"(, "num_v_heads": 3})");
  EXPECT_THAT(e, HasSubstr("num_v_heads"));
  e = Error("{" + base + R"(, "dtype": "float64"})");
  EXPECT_THAT(e, HasSubstr("\"dtype\""));
  e = Error("{" + base + R"(, "hidden_act": "powlu"})");
  EXPECT_THAT(e, HasSubstr("\"hidden_act\""));
  e = Error("{" + base + R"(, "attnres_block_size": 2})");
  EXPECT_THAT(e, HasSubstr("\"attnres_block_size\""));
  e = Error("{" + base + R"(, "num_heads": "two"})");
  EXPECT_THAT(e, HasSubstr("\"num_heads\""));
  e = Error("{" + base + R"(, "attn": {"layers": [3], "num_heads": 2}})");
  EXPECT_THAT(e, HasSubstr("\"attn.layers\""));
  e = Error("{" + base + R"(, "attn": {"layers": [1]}})");
  EXPECT_THAT(e, HasSubstr("\"attn.num_heads\""));
  e = Error("{" + base + R"(, "attn": {"layers": [1, 1], "num_heads": 2}})");
  EXPECT_THAT(e, HasSubstr("duplicate"));
  e = Error("{" + base +
            R"(, "attn": [{"layers": [1], "num_heads": 2}, {"layers": [0, 1], "num_heads": 2}]})");
  EXPECT_THAT(e, HasSubstr("\"attn[1].layers\""));
  EXPECT_THAT(e, HasSubstr("attn[0]"));
  e = Error("{" + base + R"(, "attn": {"layers": [1], "num_heads": 3}})");
  EXPECT_THAT(e, HasSubstr("\"attn.num_heads\""));
  e = Error("{" + base + R"(, "attn": {"layers": [1], "num_heads": 2, "qkv_bias": 1}})");
  EXPECT_THAT(e, HasSubstr("\"attn.qkv_bias\""));
  e = Error("{" + base + R"(, "attn": {"layers": [1], "num_heads": 2, "window_size": 0}})");
  EXPECT_THAT(e, HasSubstr("\"attn.window_size\""));
  e = Error("{" + base + R"(, "attn": {"layers": [1], "num_heads": 2, "rope_theta": -1}})");
  EXPECT_THAT(e, HasSubstr("\"attn.rope_theta\""));
  e = Error("{" + base + R"(, "attn": {"layers": [1], "num_heads": 4, "num_kv_heads": 3}})");
  EXPECT_THAT(e, HasSubstr("\"attn.num_kv_heads\""));
  e = Error("{" + base + R"(, "attn": 5})");
  EXPECT_THAT(e, HasSubstr("\"attn\""));
}

}  // namespace
}  // namespace hyla
