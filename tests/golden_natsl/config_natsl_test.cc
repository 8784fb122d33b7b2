// ParseNatslConfig: the keys and defaults of NeuralAttentionSearchLineraAttnGDNConfig, the layer
// shapes as the NAtS-L layer and fla's GatedDeltaNet derive them, the MLP width of fla's
// GatedMLP, and refusals that name the key of every flag whose value hyla does not implement.
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/config.h"
#include "runtime/state/state_layout.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<ModelConfig> Parse(const std::string& json) {
  return ParseModelConfig(json, "/x/config.json");
}

using Members = std::vector<std::pair<std::string, std::string>>;  // key, JSON value text

// A small valid NAtS-L config (the golden fixture's shape) with `overrides` replacing or
// extending its members.
std::string Small(const Members& overrides = {}) {
  Members members = {
      {"model_type", "\"neural_attention_search_linear_attn_gdn\""},
      {"hidden_size", "128"},
      {"num_hidden_layers", "4"},
      {"gdn_layers", "[0, 2]"},
      {"num_heads", "2"},
      {"head_dim", "64"},
      {"expand_v", "2"},
      {"num_attn_heads", "4"},
      {"attn_qk_norm", "true"},
      {"attn_with_short_conv", "true"},
      {"attn_apply_pos_encoding", "false"},
      {"decay_for_non_gdn_blocks", "true"},
      {"intermediate_size", "256"},
      {"vocab_size", "256"},
  };
  for (const auto& [key, value] : overrides) {
    bool replaced = false;
    for (auto& m : members) {
      if (m.first == key) {
        m.second = value;
        replaced = true;
      }
    }
    if (!replaced) members.emplace_back(key, value);
  }
  std::string json = "{";
  for (size_t i = 0; i < members.size(); ++i) {
    json += (i ? ", \"" : "\"") + members[i].first + "\": " + members[i].second;
  }
  return json + "}";
}

std::string Error(const std::string& json) {
  auto c = Parse(json);
  EXPECT_FALSE(c.ok()) << json;
  return c.ok() ? std::string() : std::string(c.status().message());
}

TEST(NatslConfigTest, FixtureConfig) {
  auto c = LoadModelConfig(testing::GoldenDir("natsl") + "/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, Family::kNatsl);
  EXPECT_EQ(c->model_type, "neural_attention_search_linear_attn_gdn");
  EXPECT_EQ(c->vocab_size, 256);
  EXPECT_EQ(c->hidden_size, 128);
  EXPECT_EQ(c->num_layers, 4);
  EXPECT_EQ(c->intermediate_size, 256);
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-6f);
  EXPECT_EQ(c->norm_kind, NormKind::kPlain);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_EQ(c->dtype, DType::kF32);
  ASSERT_EQ(c->layers.size(), 4u);
  for (int i : {0, 2}) {
    ASSERT_EQ(c->layers[i].kind, LayerKind::kGdn) << i;
    const GdnLayerConfig& g = c->layers[i].gdn;
    EXPECT_EQ(g.num_heads, 2);
    EXPECT_EQ(g.num_v_heads, 2);
    EXPECT_EQ(g.head_k_dim, 64);
    EXPECT_EQ(g.head_v_dim, 128);
    EXPECT_TRUE(g.use_short_conv);
    EXPECT_EQ(g.conv_size, 4);
    EXPECT_TRUE(g.use_gate);
    EXPECT_FALSE(g.allow_neg_eigval);
    EXPECT_FLOAT_EQ(g.norm_eps, 1e-6f);
  }
  for (int i : {1, 3}) {
    ASSERT_EQ(c->layers[i].kind, LayerKind::kNatsl) << i;
    const NatslLayerConfig& n = c->layers[i].natsl;
    EXPECT_EQ(n.gdn.num_heads, 2);
    EXPECT_EQ(n.gdn.num_v_heads, 2);
    EXPECT_EQ(n.gdn.head_k_dim, 64);
    EXPECT_EQ(n.gdn.head_v_dim, 128);
    EXPECT_EQ(n.gdn.key_dim(), 128);
    EXPECT_EQ(n.gdn.value_dim(), 256);
    EXPECT_TRUE(n.gdn.use_short_conv);
    EXPECT_EQ(n.gdn.conv_size, 4);
    EXPECT_TRUE(n.gdn.use_gate);
    EXPECT_FLOAT_EQ(n.gdn.norm_eps, 1e-6f);
    EXPECT_EQ(n.num_attn_heads, 4);
    EXPECT_EQ(n.attn_head_k_dim, 32);
    EXPECT_EQ(n.attn_head_v_dim, 64);
    EXPECT_EQ(n.groups(), 2);
    EXPECT_EQ(n.chunk_size, 64);
    EXPECT_TRUE(n.attn_qk_norm);
    EXPECT_TRUE(n.attn_with_short_conv);
    EXPECT_FALSE(n.attn_apply_pos_encoding);
    EXPECT_TRUE(n.decay_for_non_gdn_blocks);
    EXPECT_TRUE(n.outputs_are_weighted);
  }
}

TEST(NatslConfigTest, FixtureStateLayout) {
  auto c = LoadModelConfig(testing::GoldenDir("natsl") + "/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  auto layout = StateLayout::Create(*c, DType::kF32);
  ASSERT_TRUE(layout.ok()) << layout.status();
  // Per NAtS-L layer: conv tails 3 × (128 + 128 + 256), S and S_committed 2 × 64 × 128,
  // g_sum [2], x_sum [128]; two KV streams of 2 heads × (32 + 64).
  EXPECT_EQ(layout->Component(1, "conv").bytes, 3 * 512 * 4);
  EXPECT_EQ(layout->Component(1, "S").bytes, 2 * 64 * 128 * 4);
  EXPECT_EQ(layout->Component(1, "S_committed").bytes, 2 * 64 * 128 * 4);
  EXPECT_EQ(layout->Component(1, "g_sum").bytes, 2 * 4);
  EXPECT_EQ(layout->Component(1, "x_sum").bytes, 128 * 4);
  EXPECT_EQ(layout->num_streams(), 4);
  EXPECT_EQ(layout->first_stream(1), 0);
  EXPECT_EQ(layout->first_stream(3), 2);
  EXPECT_EQ(layout->first_stream(0), -1);
  EXPECT_EQ(layout->block_bytes(), 64 * 2 * (32 + 64) * 4);
}

TEST(NatslConfigTest, DefaultsOfTheConfigurationClass) {
  // attn_apply_pos_encoding defaults to true, which hyla refuses, so it is the one key given.
  auto c = Parse(R"({"model_type": "neural_attention_search_linear_attn_gdn",
                     "attn_apply_pos_encoding": false})");
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
  for (const LayerConfig& l : c->layers) ASSERT_EQ(l.kind, LayerKind::kNatsl);  // gdn_layers []
  const NatslLayerConfig& n = c->layers[0].natsl;
  EXPECT_EQ(n.gdn.num_heads, 6);
  EXPECT_EQ(n.gdn.num_v_heads, 6);
  EXPECT_EQ(n.gdn.head_k_dim, 256);
  EXPECT_EQ(n.gdn.head_v_dim, 512);
  EXPECT_TRUE(n.gdn.use_gate);
  EXPECT_TRUE(n.gdn.use_short_conv);
  EXPECT_EQ(n.gdn.conv_size, 4);
  EXPECT_FALSE(n.gdn.allow_neg_eigval);
  EXPECT_EQ(n.num_attn_heads, 12);
  EXPECT_EQ(n.attn_head_k_dim, 1536 / 12);
  EXPECT_EQ(n.attn_head_v_dim, 3072 / 12);
  EXPECT_EQ(n.chunk_size, 64);
  EXPECT_FALSE(n.attn_qk_norm);
  EXPECT_FALSE(n.attn_with_short_conv);
  EXPECT_FALSE(n.decay_for_non_gdn_blocks);
  EXPECT_TRUE(n.outputs_are_weighted);
}

TEST(NatslConfigTest, Released340MConfig) {
  // experiments/configs/natsl_340M.json of the reference repository, verbatim.
  auto c = Parse(R"({
    "name": "Neural Attention Search 340M", "attn_mode": "chunk", "bos_token_id": 1,
    "conv_size": 4, "eos_token_id": 2, "expand_v": 2, "fuse_cross_entropy": false,
    "head_dim": 128, "hidden_act": "swish", "hidden_ratio": 4, "hidden_size": 1024,
    "initializer_range": 0.02, "intermediate_size": null,
    "model_type": "neural_attention_search_linear_attn_gdn", "norm_eps": 1e-06,
    "num_heads": 6, "num_attn_heads": 12, "num_hidden_layers": 21, "n_ops": 2,
    "nats_block_size": 64, "compute_dnats_for_invalid_blocks_linear_att": false,
    "compute_dnats_for_invalid_blocks_att": false, "ops_for_incomplete_chunks": "all",
    "tie_word_embeddings": false, "attn_qk_norm": true, "attn_with_short_conv": true,
    "use_cache": true, "use_gate": true, "use_short_conv": true,
    "gdn_layers": [0,1,2, 4,5,6, 8,9,10, 12,13,14, 16,17,18],
    "attn_apply_pos_encoding": false, "decay_for_non_gdn_blocks": true})");
  ASSERT_TRUE(c.ok()) << c.status();
  // int(1024 * 4 * 2 / 3) = 2730 → 2816.
  EXPECT_EQ(c->intermediate_size, 2816);
  std::vector<int> natsl;
  for (int i = 0; i < c->num_layers; ++i) {
    if (c->layers[i].kind == LayerKind::kNatsl) natsl.push_back(i);
  }
  EXPECT_EQ(natsl, (std::vector<int>{3, 7, 11, 15, 19, 20}));
  const NatslLayerConfig& n = c->layers[3].natsl;
  EXPECT_EQ(n.gdn.head_k_dim, 128);
  EXPECT_EQ(n.gdn.head_v_dim, 256);
  EXPECT_EQ(n.attn_head_k_dim, 64);
  EXPECT_EQ(n.attn_head_v_dim, 128);
  EXPECT_EQ(n.groups(), 2);
  EXPECT_EQ(c->layers[0].gdn.head_v_dim, 256);
}

TEST(NatslConfigTest, FlagsWithoutEffectAreAccepted) {
  // "outputs_are_wighted" reaches the layer under a name it does not know: always weighted.
  auto c = Parse(Small({{"outputs_are_wighted", "false"},
                        {"num_nats_head", "2"},
                        {"compute_dnats_for_invalid_blocks_attn", "true"},
                        {"attn_rope_theta", "5e5"},
                        {"fuse_norm", "false"},
                        {"attn_mode", "\"fused_recurrent\""},
                        {"attn", R"({"layers": [1], "num_heads": 2})"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->layers[1].natsl.outputs_are_weighted);
  EXPECT_EQ(c->layers[1].kind, LayerKind::kNatsl);  // "attn" builds no attention layer here
  // decay_for_non_gdn_blocks=false, attn_qk_norm=false and attn_with_short_conv=false are
  // implemented.
  auto variant = Parse(Small({{"decay_for_non_gdn_blocks", "false"},
                              {"attn_qk_norm", "false"},
                              {"attn_with_short_conv", "false"},
                              {"allow_neg_eigval", "true"}}));
  ASSERT_TRUE(variant.ok()) << variant.status();
  EXPECT_FALSE(variant->layers[1].natsl.decay_for_non_gdn_blocks);
  EXPECT_FALSE(variant->layers[1].natsl.attn_qk_norm);
  EXPECT_FALSE(variant->layers[1].natsl.attn_with_short_conv);
  EXPECT_TRUE(variant->layers[1].natsl.gdn.allow_neg_eigval);
  EXPECT_TRUE(variant->layers[0].gdn.allow_neg_eigval);
}

TEST(NatslConfigTest, GdnLayerSelection) {
  // Indices outside [0, num_hidden_layers) select nothing (the block tests `i in gdn_layers`).
  auto c = Parse(R"({"model_type": "neural_attention_search_linear_attn_gdn",
                     "attn_apply_pos_encoding": false, "num_hidden_layers": 3,
                     "gdn_layers": [1, 7, -1]})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->layers[0].kind, LayerKind::kNatsl);
  EXPECT_EQ(c->layers[1].kind, LayerKind::kGdn);
  EXPECT_EQ(c->layers[2].kind, LayerKind::kNatsl);
  // A model of GDN layers only builds no NAtS-L layer, so NAtS-L-only flags do not matter.
  auto all_gdn = Parse(R"({"model_type": "neural_attention_search_linear_attn_gdn",
                           "num_hidden_layers": 2, "gdn_layers": [0, 1],
                           "ops_for_incomplete_chunks": "attn"})");
  ASSERT_TRUE(all_gdn.ok()) << all_gdn.status();
  EXPECT_EQ(all_gdn->layers[0].kind, LayerKind::kGdn);
  EXPECT_EQ(all_gdn->layers[1].kind, LayerKind::kGdn);
  EXPECT_THAT(Error(Small({{"gdn_layers", R"([0, "2"])"}})), HasSubstr("\"gdn_layers\""));
}

TEST(NatslConfigTest, TokenIds) {
  auto c = Parse(Small({{"bos_token_id", "null"}, {"eos_token_id", "[7, 8]"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->eos_token_id, 7);
}

TEST(NatslConfigTest, MlpWidth) {
  auto ratio = Parse(Small({{"intermediate_size", "null"}, {"hidden_ratio", "3"}}));
  ASSERT_TRUE(ratio.ok()) << ratio.status();
  EXPECT_EQ(ratio->intermediate_size, 256);  // int(128 * 3 * 2 / 3) = 256
  auto null_ratio = Parse(Small({{"intermediate_size", "null"}, {"hidden_ratio", "null"}}));
  ASSERT_TRUE(null_ratio.ok()) << null_ratio.status();
  EXPECT_EQ(null_ratio->intermediate_size, 512);  // int(128 * 4 * 2 / 3) = 341 → 512
  EXPECT_THAT(Error(Small({{"hidden_act", "\"gelu\""}})), HasSubstr("\"hidden_act\""));
}

TEST(NatslConfigTest, UnsupportedFlagsAreRefusedByName) {
  const Members cases = {
      {"attn_apply_pos_encoding", "true"},
      {"ops_for_incomplete_chunks", "\"attn\""},
      {"ops_for_incomplete_chunks", "\"gated_delta_net\""},
      {"nats_sample_strategy", "\"gumble\""},
      {"nats_block_agg_type", "\"max\""},
      {"num_nats_head", "1"},
      {"n_ops", "3"},
      {"incomplete_block_start_with_ht", "false"},
      {"conv_bias", "true"},
      {"use_gate", "false"},
      {"num_v_heads", "4"},
      {"nats_block_size", "128"},
      {"num_attn_heads", "3"},
      {"num_attn_heads", "5"},
      {"expand_v", "0.3"},
      {"attn_mode", "\"parallel\""},
      {"attn", "[1]"},
      {"attn", "{\"num_heads\": 2}"},
      {"dtype", "\"int8\""},
  };
  for (const auto& [key, value] : cases) {
    const std::string json = Small({{key, value}});
    const std::string error = Error(json);
    EXPECT_THAT(error, HasSubstr("/x/config.json")) << key << "=" << value;
    EXPECT_THAT(error, HasSubstr("\"" + key + "\"")) << key << "=" << value;
  }
  // The configuration class's default for attn_apply_pos_encoding is true.
  EXPECT_THAT(Error(R"({"model_type": "neural_attention_search_linear_attn_gdn"})"),
              HasSubstr("\"attn_apply_pos_encoding\""));
}

}  // namespace
}  // namespace hyla
