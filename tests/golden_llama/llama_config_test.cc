// ParseLlamaConfig: transformers LlamaConfig keys and defaults, both RoPE layouts, llama3
// frequency scaling (checked against numbers worked out by hand), and the errors.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/cpu/cpu_layer.h"
#include "runtime/model/config.h"

namespace hyla {
namespace {

using ::testing::HasSubstr;

constexpr char kPath[] = "ckpt/config.json";

// A small Llama config; `extra` is spliced in as more top-level keys.
std::string Config(const std::string& extra) {
  return absl::StrCat(R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
      "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4)",
                      extra.empty() ? "" : ", ", extra, "}");
}

absl::StatusOr<ModelConfig> Parse(const std::string& extra) {
  return ParseModelConfig(Config(extra), kPath);
}

TEST(LlamaConfig, DefaultsOfLlamaConfig) {
  auto c = Parse("");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, Family::kLlama);
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->vocab_size, 64);
  EXPECT_EQ(c->hidden_size, 32);
  EXPECT_EQ(c->intermediate_size, 48);
  EXPECT_EQ(c->num_layers, 2);
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-6f);
  EXPECT_EQ(c->norm_kind, NormKind::kPlain);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_EQ(c->dtype, DType::kF32);
  ASSERT_EQ(c->layers.size(), 2u);
  for (const LayerConfig& l : c->layers) {
    EXPECT_EQ(l.kind, LayerKind::kAttention);
    const AttentionLayerConfig& a = l.attention;
    EXPECT_EQ(a.num_heads, 4);
    EXPECT_EQ(a.num_kv_heads, 4);  // num_key_value_heads defaults to the heads
    EXPECT_EQ(a.head_dim, 8);      // hidden / heads
    EXPECT_EQ(a.rotary_dim, 8);
    EXPECT_EQ(a.rope_theta, 10000.0f);
    EXPECT_EQ(a.rope_type, RopeType::kDefault);
    EXPECT_EQ(a.window_size, 0);
    EXPECT_FALSE(a.qkv_bias);
    EXPECT_FALSE(a.o_bias);
    EXPECT_FALSE(a.qk_norm);
  }
}

TEST(LlamaConfig, ExplicitKeys) {
  auto c = Parse(R"("num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
      "tie_word_embeddings": true, "bos_token_id": null, "eos_token_id": [7, 8, 9],
      "attention_bias": true, "mlp_bias": false, "hidden_act": "silu", "sliding_window": 40,
      "max_position_embeddings": 4096, "torch_dtype": "bfloat16")");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-5f);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->eos_token_id, 7);
  EXPECT_EQ(c->max_position_embeddings, 4096);
  EXPECT_EQ(c->dtype, DType::kBF16);
  const AttentionLayerConfig& a = c->layers[1].attention;
  EXPECT_EQ(a.num_kv_heads, 2);
  EXPECT_EQ(a.head_dim, 16);
  EXPECT_EQ(a.rotary_dim, 16);
  EXPECT_TRUE(a.qkv_bias);
  EXPECT_TRUE(a.o_bias);
  EXPECT_EQ(a.window_size, 40);
}

TEST(LlamaConfig, DtypeKeyWinsOverTorchDtype) {
  auto c = Parse(R"("dtype": "float16", "torch_dtype": "bfloat16", "sliding_window": null)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->dtype, DType::kF16);
  EXPECT_EQ(c->layers[0].attention.window_size, 0);
}

TEST(LlamaConfig, Transformers5RopeParameters) {
  auto c = Parse(R"("rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->layers[0].attention.rope_theta, 500000.0f);
  EXPECT_EQ(c->layers[0].attention.rope_type, RopeType::kDefault);
}

TEST(LlamaConfig, LegacyRopeThetaAndScaling) {
  auto c = Parse(R"("rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3",
      "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192})");
  ASSERT_TRUE(c.ok()) << c.status();
  const AttentionLayerConfig& a = c->layers[0].attention;
  EXPECT_EQ(a.rope_theta, 500000.0f);
  EXPECT_EQ(a.rope_type, RopeType::kLlama3);
  EXPECT_EQ(a.rope_factor, 32.0);
  EXPECT_EQ(a.rope_low_freq_factor, 1.0);
  EXPECT_EQ(a.rope_high_freq_factor, 4.0);
  EXPECT_EQ(a.rope_original_max_position_embeddings, 8192);

  // Older still: "type" instead of "rope_type"; a null rope_scaling is the default.
  auto old = Parse(R"("rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 2048})");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->layers[0].attention.rope_type, RopeType::kLlama3);
  EXPECT_EQ(old->layers[0].attention.rope_theta, 10000.0f);
  auto none = Parse(R"("rope_theta": 1000.0, "rope_scaling": null)");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->layers[0].attention.rope_type, RopeType::kDefault);
  EXPECT_EQ(none->layers[0].attention.rope_theta, 1000.0f);
}

TEST(LlamaConfig, PartialRotaryFactor) {
  auto c = Parse(R"("rope_parameters": {"rope_theta": 10000.0, "rope_type": "default",
      "partial_rotary_factor": 0.5})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->layers[0].attention.rotary_dim, 4);
}

TEST(LlamaConfig, Errors) {
  struct Case {
    std::string extra;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {R"("rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 2.0})",
       "key \"rope_parameters.rope_type\": unsupported rope type \"yarn\""},
      {R"("rope_scaling": {"type": "linear", "factor": 2.0})",
       "key \"rope_scaling.type\": unsupported rope type \"linear\""},
      {R"("rope_parameters": {"rope_type": "llama3", "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})",
       "key \"rope_parameters.factor\": missing"},
      {R"("rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0})",
       "key \"rope_parameters.original_max_position_embeddings\": missing"},
      {R"("rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})",
       "key \"rope_parameters.high_freq_factor\""},
      {R"("rope_parameters": 3)", "key \"rope_parameters\": expected an object"},
      {R"("rope_parameters": {"rope_theta": -1.0})", "key \"rope_parameters.rope_theta\""},
      {R"("mlp_bias": true)", "key \"mlp_bias\""},
      {R"("hidden_act": "gelu")", "key \"hidden_act\": unsupported activation \"gelu\""},
      {R"("num_key_value_heads": 3)", "num_key_value_heads"},
      {R"("sliding_window": -4)", "key \"sliding_window\""},
      {R"("eos_token_id": [2, "x"])", "key \"eos_token_id\""},
      {R"("dtype": "int8")", "key \"dtype\": unsupported dtype"},
      {R"("num_attention_heads": 0)", "key \"num_attention_heads\""},
  };
  for (const Case& c : cases) {
    auto parsed = Parse(c.extra);
    ASSERT_FALSE(parsed.ok()) << c.extra;
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(c.needle)) << c.extra;
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(kPath));
  }
}

// inv_freq for head_dim 8, theta 1e4 is [1, 0.1, 0.01, 0.001], wavelengths 2π/f =
// [6.28, 62.8, 628.3, 6283]. With factor 8, low 1, high 4 and original context 2048 the band
// edges are 2048 (low-frequency) and 512 (high-frequency):
//   f0, f1: wavelen < 512 → unchanged;  f3: wavelen > 2048 → 0.001 / 8 = 0.000125;
//   f2: medium, s = (2048 / 628.3185 − 1) / 3 = 0.7531644, f = (1 − s)·0.01/8 + s·0.01
//       = 0.0078401886.
TEST(LlamaRope, Llama3InvFreqByHand) {
  AttentionLayerConfig a;
  a.head_dim = 8;
  a.rotary_dim = 8;
  a.rope_theta = 10000.0f;
  a.rope_type = RopeType::kLlama3;
  a.rope_factor = 8.0;
  a.rope_low_freq_factor = 1.0;
  a.rope_high_freq_factor = 4.0;
  a.rope_original_max_position_embeddings = 2048;
  const std::vector<float> inv = cpu::AttentionRopeInvFreq(a);
  const double expected[] = {1.0, 0.1, 0.007840188600689215, 0.000125};
  ASSERT_EQ(inv.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(inv[i], expected[i], 1e-6 * expected[i]) << i;

  a.rope_type = RopeType::kDefault;
  const std::vector<float> plain = cpu::AttentionRopeInvFreq(a);
  const double plain_expected[] = {1.0, 0.1, 0.01, 0.001};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(plain[i], plain_expected[i], 1e-6 * plain_expected[i]);
}

// Llama 3.2 settings on head_dim 16, theta 5e5 (factor 32, low 1, high 4, context 8192: edges
// 8192 and 2048). inv_freq_i = 5e5^(-i/8); wavelengths 6.3, 32.4, 167, 862, 4443, 22911, ...
//   i = 0..3 unchanged; i = 4 (wavelen 4442.9) medium: s = (8192/4442.9 − 1)/3 = 0.281272,
//   f = 0.00141421·((1 − s)/32 + s) = 0.000429556797; i = 5..7 divided by 32.
TEST(LlamaRope, Llama32InvFreqByHand) {
  AttentionLayerConfig a;
  a.head_dim = 16;
  a.rotary_dim = 16;
  a.rope_theta = 500000.0f;
  a.rope_type = RopeType::kLlama3;
  a.rope_factor = 32.0;
  a.rope_low_freq_factor = 1.0;
  a.rope_high_freq_factor = 4.0;
  a.rope_original_max_position_embeddings = 8192;
  const std::vector<float> inv = cpu::AttentionRopeInvFreq(a);
  const double expected[] = {1.0,
                             0.19392274474868576,
                             0.03760603093086393,
                             0.007292664737217109,
                             0.00042955679655936815,
                             0.0002742481756762073 / 32,
                             5.318295896944988e-05 / 32,
                             1.031338537721246e-05 / 32};
  ASSERT_EQ(inv.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(inv[i], expected[i], 2e-6 * expected[i]) << i;
}

}  // namespace
}  // namespace hyla
