// ParseNhaConfig: the keys and defaults of NHAConfig (JusenD/NHA configuration_nha.py) as
// NHABlock / NativeHybridAttention consume them, and errors that name the offending key.
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/config.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

using ::testing::HasSubstr;

std::string FixtureConfigText() {
  std::ifstream in(testing::GoldenDir("nha") + "/config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The fixture config with each `from` replaced by its `to`.
std::string Edited(std::vector<std::pair<std::string, std::string>> edits) {
  std::string text = FixtureConfigText();
  for (const auto& [from, to] : edits) {
    EXPECT_NE(text.find(from), std::string::npos) << from;
    text = absl::StrReplaceAll(text, {{from, to}});
  }
  return text;
}
std::string Edited(const std::string& from, const std::string& to) { return Edited({{from, to}}); }

absl::StatusOr<ModelConfig> Parse(const std::string& text) {
  return ParseModelConfig(text, "nha/config.json");
}

void ExpectErrorNaming(const std::string& text, const std::string& key) {
  absl::StatusOr<ModelConfig> c = Parse(text);
  ASSERT_FALSE(c.ok()) << "expected an error about " << key;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(key));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("nha/config.json"));
}

TEST(NhaConfigTest, FixtureConfig) {
  const std::string text = FixtureConfigText();
  ASSERT_FALSE(text.empty()) << "missing fixture " << testing::GoldenDir("nha");
  absl::StatusOr<ModelConfig> c = Parse(text);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, Family::kNha);
  EXPECT_EQ(c->model_type, "nha");
  EXPECT_EQ(c->vocab_size, 256);
  EXPECT_EQ(c->hidden_size, 128);
  EXPECT_EQ(c->num_layers, 4);
  EXPECT_EQ(c->intermediate_size, 256);
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-6f);
  EXPECT_EQ(c->norm_kind, NormKind::kPlain);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->max_position_embeddings, 4096);
  EXPECT_EQ(c->dtype, DType::kF32);
  ASSERT_EQ(c->layers.size(), 4u);
  for (const LayerConfig& l : c->layers) {
    ASSERT_EQ(l.kind, LayerKind::kNha);
    const NhaLayerConfig& n = l.nha;
    EXPECT_EQ(n.num_heads, 2);
    EXPECT_EQ(n.num_kv_heads, 2);
    EXPECT_EQ(n.head_k_dim, 64);
    EXPECT_EQ(n.head_v_dim, 64);
    EXPECT_EQ(n.num_slots, 16);
    EXPECT_EQ(n.window_size, 32);
    EXPECT_EQ(n.kv_shift, 0);
    EXPECT_FLOAT_EQ(n.gate_logit_normalizer, 8.0f);
    EXPECT_FLOAT_EQ(n.scale, 1.0f);
    EXPECT_FLOAT_EQ(n.rope_theta, 10000.0f);
    EXPECT_TRUE(n.feature_map_swish);
    EXPECT_FALSE(n.use_output_gate);
    EXPECT_TRUE(n.use_norm);
    EXPECT_FLOAT_EQ(n.output_norm_eps, 1e-5f);  // rms_norm_linear's default, not norm_eps
    EXPECT_FALSE(n.use_short_conv);
  }
}

TEST(NhaConfigTest, DefaultsOfNhaConfig) {
  absl::StatusOr<ModelConfig> c = Parse(R"({"model_type": "nha"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 32000);
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->num_layers, 24);
  // fla GatedMLP: int(2048 * 4 * 2 / 3) = 5461, rounded up to a multiple of 256.
  EXPECT_EQ(c->intermediate_size, 5632);
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-6f);
  ASSERT_EQ(c->layers.size(), 24u);
  const NhaLayerConfig& n = c->layers[0].nha;
  EXPECT_EQ(n.num_heads, 4);
  EXPECT_EQ(n.num_kv_heads, 4);
  EXPECT_EQ(n.head_k_dim, 512);
  EXPECT_EQ(n.head_v_dim, 512);
  EXPECT_EQ(n.num_slots, 64);
  EXPECT_EQ(n.window_size, 32);
  EXPECT_EQ(n.kv_shift, 0);
  EXPECT_FLOAT_EQ(n.rope_theta, 10000.0f);
}

TEST(NhaConfigTest, GqaExpandKAndExplicitNullSlots) {
  // num_slots: null → the layer's default head_k_dim; the misspelt constructor argument
  // exapnd_k is honoured when expand_k is absent.
  absl::StatusOr<ModelConfig> c = Parse(R"({"model_type": "nha", "hidden_size": 256,
      "num_hidden_layers": 2, "num_heads": 4, "num_kv_heads": 2, "exapnd_k": 0.5,
      "num_slots": null, "gsa_kv_shift": 40, "window_size": 16, "use_short_conv": true,
      "conv_size": 3, "hidden_ratio": 2, "rope_theta": 500000.0})");
  ASSERT_TRUE(c.ok()) << c.status();
  const NhaLayerConfig& n = c->layers[1].nha;
  EXPECT_EQ(n.num_heads, 4);
  EXPECT_EQ(n.num_kv_heads, 2);
  EXPECT_EQ(n.head_k_dim, 32);
  EXPECT_EQ(n.head_v_dim, 64);
  EXPECT_EQ(n.num_slots, 32);
  EXPECT_EQ(n.kv_shift, 40);
  EXPECT_EQ(n.window_size, 16);
  EXPECT_TRUE(n.use_short_conv);
  EXPECT_EQ(n.conv_size, 3);
  EXPECT_FLOAT_EQ(n.rope_theta, 500000.0f);
  EXPECT_EQ(c->intermediate_size, 512);  // int(256 * 2 * 2 / 3) = 341 → 512
}

TEST(NhaConfigTest, AttnTurnsLayersIntoFlaAttention) {
  absl::StatusOr<ModelConfig> c = Parse(
      Edited(R"("attn": null)", R"("attn": {"layers": [1, 3], "num_heads": 4, "num_kv_heads": 2,
      "qkv_bias": true, "window_size": 64, "rope_theta": 20000.0})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->layers[0].kind, LayerKind::kNha);
  EXPECT_EQ(c->layers[2].kind, LayerKind::kNha);
  for (int i : {1, 3}) {
    const LayerConfig& l = c->layers[static_cast<size_t>(i)];
    ASSERT_EQ(l.kind, LayerKind::kAttention);
    EXPECT_EQ(l.attention.num_heads, 4);
    EXPECT_EQ(l.attention.num_kv_heads, 2);
    EXPECT_EQ(l.attention.head_dim, 32);
    EXPECT_EQ(l.attention.rotary_dim, 32);
    EXPECT_EQ(l.attention.window_size, 64);
    EXPECT_TRUE(l.attention.qkv_bias);
    EXPECT_FALSE(l.attention.o_bias);
    EXPECT_FALSE(l.attention.qk_norm);
    EXPECT_FLOAT_EQ(l.attention.rope_theta, 20000.0f);
  }
  // NHAConfig's attn defaults: kv heads = heads, no bias, full attention, theta 10000.
  c = Parse(Edited(R"("attn": null)", R"("attn": {"layers": [0], "num_heads": 2})"));
  ASSERT_TRUE(c.ok()) << c.status();
  const AttentionLayerConfig& a = c->layers[0].attention;
  EXPECT_EQ(a.num_kv_heads, 2);
  EXPECT_EQ(a.head_dim, 64);
  EXPECT_EQ(a.window_size, 0);
  EXPECT_FALSE(a.qkv_bias);
  EXPECT_FLOAT_EQ(a.rope_theta, 10000.0f);
}

TEST(NhaConfigTest, RejectsUnsupportedValuesNamingTheKey) {
  ExpectErrorNaming(Edited(R"("feature_map": "swish")", R"("feature_map": "relu")"), "feature_map");
  ExpectErrorNaming(Edited(R"("hidden_act": "swish")", R"("hidden_act": "powlu")"), "hidden_act");
  ExpectErrorNaming(Edited(R"("expand_v": 1)", R"("expand_v": 2)"), "expand_v");
  ExpectErrorNaming(Edited(R"("window_size": 32)", R"("window_size": null)"), "window_size");
  ExpectErrorNaming(Edited(R"("window_size": 32)", R"("window_size": -1)"), "window_size");
  ExpectErrorNaming(Edited(R"("gsa_kv_shift": 0)", R"("gsa_kv_shift": -2)"), "gsa_kv_shift");
  ExpectErrorNaming(Edited(R"("num_kv_heads": 2)", R"("num_kv_heads": 3)"), "num_kv_heads");
  ExpectErrorNaming(Edited(R"("elementwise_affine": true)", R"("elementwise_affine": false)"),
                    "elementwise_affine");
  ExpectErrorNaming(Edited(R"("dtype": "float32")", R"("dtype": "int8")"), "dtype");
  // rope_parameters.rope_theta disagreeing with the top-level rope_theta.
  ExpectErrorNaming(Edited("\"rope_theta\": 10000.0,\n    \"rope_type\"",
                           "\"rope_theta\": 5000.0,\n    \"rope_type\""),
                    "rope_theta");
  ExpectErrorNaming(Edited({{R"("use_short_conv": false)", R"("use_short_conv": true)"},
                            {R"("conv_bias": false)", R"("conv_bias": true)"}}),
                    "conv_bias");
  ExpectErrorNaming(Edited(R"("attn": null)", R"("attn": {"layers": [0]})"), "attn.num_heads");
  ExpectErrorNaming(Edited(R"("attn": null)", R"("attn": {"layers": [7], "num_heads": 2})"),
                    "attn.layers");
  ExpectErrorNaming(Edited(R"("num_slots": 16)", R"("num_slots": 0)"), "num_slots");
}

}  // namespace
}  // namespace hyla
