// config.json of NAtS-L (automl/NeuralAttentionSearchLinear, model_type
// "neural_attention_search_linear_attn_gdn"): the keys and defaults of
// src/nats/models/natsl_attn_gdn/configuration_natsl_attn_gdn.py, the layer shapes as
// src/nats/layers/natsl_attn_gdn.py and fla's GatedDeltaNet (fla 0.4.0, the version the NAtS-L
// repository pins) derive them, and the MLP width as fla.modules.GatedMLP derives it.
//
// Layers listed in "gdn_layers" are stock fla GatedDeltaNet layers (LayerKind::kGdn); every
// other layer is a NAtS-L layer (LayerKind::kNatsl). The NAtS-L block passes the config to the
// layers as modeling_natsl_attn_gdn.py::NeuralAttentionSearchLinearAttnGDNBlock does, which has
// two consequences a reader of config.json would not expect:
//   * "outputs_are_wighted" (sic) reaches the layer as an unknown keyword argument and is
//     swallowed by **kwargs: the layer always uses its default outputs_are_weighted=True (the
//     learned per-token mixing weights). The key is read and type-checked but has no effect.
//   * the GDN layers do not receive "conv_bias" (fla's default, no bias, applies), the NAtS-L
//     layers do.
// Flags whose non-default values change semantics hyla does not implement are refused by name.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/base/status_macros.h"
#include "runtime/model/config.h"
#include "runtime/model/config_reader.h"

namespace hyla {
namespace {

// A positive int32 read with Int (Python ints; integer-valued floats are accepted by Int).
int PositiveInt(ConfigReader& r, const char* key, int64_t default_value) {
  const int64_t v = r.Int(key, default_value);
  if (!r.status().ok()) return 0;
  if (v <= 0 || v > INT32_MAX) {
    r.Fail(key, absl::StrCat("must be a positive integer, got ", v));
    return 0;
  }
  return static_cast<int>(v);
}

// A string flag that hyla implements for one value only.
void RequireString(ConfigReader& r, const char* key, const char* default_value,
                   const char* supported, const char* why) {
  const std::string v = r.String(key, default_value);
  if (r.status().ok() && v != supported) {
    r.Fail(key, absl::StrCat("\"", v, "\" is not supported (only \"", supported, "\"): ", why));
  }
}

// A Boolean flag that hyla implements for one value only.
void RequireBool(ConfigReader& r, const char* key, bool default_value, bool supported,
                 const char* why) {
  const bool v = r.Bool(key, default_value);
  if (r.status().ok() && v != supported) {
    r.Fail(key, absl::StrCat(v ? "true" : "false", " is not supported: ", why));
  }
}

// The NAtS-L layer flags hyla implements, and the softmax head dims (key_dim / Ha and
// value_dim / Ha, as the layer derives them). Fills n->attn_head_{k,v}_dim.
absl::Status CheckNatslLayer(ConfigReader& r, NatslLayerConfig* n) {
  const GdnLayerConfig& g = n->gdn;
  if (n->attn_apply_pos_encoding) {
    r.Fail("attn_apply_pos_encoding",
           "true (RoPE on the softmax branch, the configuration class's default) is not "
           "supported; set false (NoPE, as the released NAtS-L models)");
  }
  const int64_t n_ops = r.Int("n_ops", 2);
  if (r.status().ok() && n_ops != 2) {
    r.Fail("n_ops", absl::StrCat("must be 2 (softmax attention, gated delta net), got ", n_ops));
  }
  if (r.Has("num_nats_head")) {
    const int64_t heads = r.Int("num_nats_head", 0);
    if (r.status().ok() && heads != g.num_heads) {
      r.Fail("num_nats_head",
             absl::StrCat("must be null or equal to num_heads (", g.num_heads, "), got ", heads));
    }
  }
  RequireString(r, "nats_block_agg_type", "mean", "mean",
                "the reference implements mean pooling of the chunk only");
  RequireString(r, "nats_sample_strategy", "argmax", "argmax",
                "hyla routes each chunk by the argmax of its scores (no Gumbel sampling)");
  RequireString(r, "ops_for_incomplete_chunks", "all", "all",
                "the current chunk is served with both softmax attention and the gated delta net");
  RequireBool(r, "incomplete_block_start_with_ht", true, true,
              "the gated delta net of the current chunk always starts from the committed state");
  RequireBool(r, "conv_bias", false, false, "NAtS-L short convolutions have no bias in hyla");
  if (r.status().ok() && !g.use_gate) {
    r.Fail("use_gate", "false (ungated output norms) is not supported for NAtS-L layers");
  }
  if (r.status().ok() && g.num_v_heads != g.num_heads) {
    r.Fail("num_v_heads", absl::StrCat("must equal num_heads (", g.num_heads,
                                       ") in NAtS-L layers (no GVA), got ", g.num_v_heads));
  }
  if (r.status().ok() && n->chunk_size != 64) {
    r.Fail("nats_block_size", absl::StrCat("must be 64 (the KV block size), got ", n->chunk_size));
  }
  HYLA_RETURN_IF_ERROR(r.status());
  if (n->num_attn_heads % g.num_heads != 0) {
    r.Fail("num_attn_heads", absl::StrCat("must be a multiple of num_heads (", g.num_heads,
                                          "), got ", n->num_attn_heads));
    return r.status();
  }
  if (g.key_dim() % n->num_attn_heads != 0 || g.value_dim() % n->num_attn_heads != 0) {
    r.Fail("num_attn_heads",
           absl::StrCat("key_dim (", g.key_dim(), ") and value_dim (", g.value_dim(),
                        ") must be multiples of num_attn_heads (", n->num_attn_heads, ")"));
    return r.status();
  }
  n->attn_head_k_dim = g.key_dim() / n->num_attn_heads;
  n->attn_head_v_dim = g.value_dim() / n->num_attn_heads;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseNatslConfig(const JsonValue& root, absl::string_view path) {
  ConfigReader r(root, path);
  ModelConfig c;
  c.family = Family::kNatsl;
  c.vocab_size = static_cast<int>(r.Int("vocab_size", 32000));
  c.hidden_size = static_cast<int>(r.Int("hidden_size", 2048));
  c.num_layers = static_cast<int>(r.Int("num_hidden_layers", 21));
  c.norm_eps = static_cast<float>(r.Float("norm_eps", 1e-6));
  c.norm_kind = NormKind::kPlain;
  c.tie_word_embeddings = r.Bool("tie_word_embeddings", false);
  c.bos_token_id = r.TokenId("bos_token_id", 1);
  c.eos_token_id = r.TokenId("eos_token_id", 2);
  c.max_position_embeddings = static_cast<int>(r.Int("max_position_embeddings", 2048));
  c.dtype = r.TorchDType();
  HYLA_RETURN_IF_ERROR(r.status());
  if (c.num_layers <= 0) {
    r.Fail("num_hidden_layers", absl::StrCat("must be positive, got ", c.num_layers));
    return r.status();
  }

  // The Gated DeltaNet part, shared by the GDN layers and the GDN branch of the NAtS-L layers
  // (both derive head_v_dim = int(head_dim * expand_v), key_dim = num_heads * head_dim,
  // value_dim = num_v_heads * head_v_dim).
  GdnLayerConfig g;
  g.num_heads = PositiveInt(r, "num_heads", 6);
  const int head_dim = PositiveInt(r, "head_dim", 256);
  g.num_v_heads = r.Has("num_v_heads") ? PositiveInt(r, "num_v_heads", 0) : g.num_heads;
  const double expand_v = r.Float("expand_v", 2.0);
  g.use_gate = r.Bool("use_gate", true);
  g.use_short_conv = r.Bool("use_short_conv", true);
  g.allow_neg_eigval = r.Bool("allow_neg_eigval", false);
  g.conv_size = PositiveInt(r, "conv_size", 4);
  g.norm_eps = c.norm_eps;
  HYLA_RETURN_IF_ERROR(r.status());
  g.head_k_dim = head_dim;
  const double v_exact = static_cast<double>(head_dim) * expand_v;
  if (!(v_exact > 0) || v_exact > INT32_MAX) {
    r.Fail("expand_v", absl::StrCat("head_dim * expand_v = ", v_exact, " is not a valid width"));
    return r.status();
  }
  g.head_v_dim = static_cast<int>(std::trunc(v_exact));
  if (!PyIsClose(v_exact, g.head_v_dim) ||
      !PyIsClose(static_cast<double>(g.num_v_heads) * head_dim * expand_v,
                 static_cast<double>(g.num_v_heads) * g.head_v_dim)) {
    r.Fail("expand_v", absl::StrCat("expand_v=", expand_v,
                                    " does not give an integer value dim with head_dim=", head_dim,
                                    " (", v_exact, ")"));
    return r.status();
  }
  if (g.num_v_heads > g.num_heads && g.num_v_heads % g.num_heads != 0) {
    r.Fail("num_v_heads", absl::StrCat("num_v_heads=", g.num_v_heads,
                                       " must be divisible by num_heads=", g.num_heads));
    return r.status();
  }
  // fla GatedDeltaNet asserts mode in {chunk, fused_recurrent}; both compute the same function.
  const std::string attn_mode = r.String("attn_mode", "chunk");
  if (r.status().ok() && attn_mode != "chunk" && attn_mode != "fused_recurrent") {
    r.Fail("attn_mode", absl::StrCat("\"", attn_mode,
                                     "\" is not a GatedDeltaNet mode (chunk, fused_recurrent)"));
  }

  // gdn_layers: the block tests `layer_idx in config.gdn_layers`, so indices outside
  // [0, num_hidden_layers) select nothing.
  std::set<int64_t> gdn_layers;
  if (std::optional<std::vector<int64_t>> list = r.IntList("gdn_layers")) {
    gdn_layers.insert(list->begin(), list->end());
  }

  bool has_natsl = false;
  for (int i = 0; i < c.num_layers; ++i) has_natsl |= gdn_layers.count(i) == 0;

  // The NAtS-L layer (src/nats/layers/natsl_attn_gdn.py).
  NatslLayerConfig n;
  n.gdn = g;
  n.num_attn_heads = PositiveInt(r, "num_attn_heads", 12);
  n.chunk_size = PositiveInt(r, "nats_block_size", 64);
  n.attn_qk_norm = r.Bool("attn_qk_norm", false);
  n.attn_with_short_conv = r.Bool("attn_with_short_conv", false);
  n.attn_apply_pos_encoding = r.Bool("attn_apply_pos_encoding", true);
  n.decay_for_non_gdn_blocks = r.Bool("decay_for_non_gdn_blocks", false);
  // Read for its type only: the block passes it under a misspelled name the layer ignores.
  (void)r.Bool("outputs_are_wighted", true);
  n.outputs_are_weighted = true;
  // Training-only switches (gradient estimation for blocks of the other type): no effect on the
  // forward pass. attn_rope_theta / attn_max_position_embeddings only matter with positional
  // encoding, which is refused below.
  (void)r.Bool("compute_dnats_for_invalid_blocks_attn", false);
  (void)r.Bool("compute_dnats_for_invalid_blocks_linear_att", false);
  (void)r.Float("attn_rope_theta", 10000.0);
  HYLA_RETURN_IF_ERROR(r.status());

  // Semantics hyla does not implement are refused by name, where a NAtS-L layer uses them.
  if (has_natsl) HYLA_RETURN_IF_ERROR(CheckNatslLayer(r, &n));

  // fla GatedMLP (fla 0.4.0 modules/mlp.py): intermediate_size, or
  // int(hidden_size * hidden_ratio * 2 / 3) rounded up to a multiple of 256 (hidden_ratio null
  // means 4). It accepts only hidden_act "swish".
  const std::string hidden_act = r.String("hidden_act", "swish");
  if (r.status().ok() && hidden_act != "swish") {
    r.Fail("hidden_act", absl::StrCat("\"", hidden_act, "\" is not supported (only \"swish\")"));
  }
  if (r.Has("intermediate_size")) {
    c.intermediate_size = PositiveInt(r, "intermediate_size", 0);
  } else {
    c.intermediate_size = r.FlaGatedMlpWidth(c.hidden_size);
  }

  // "attn": validated by the configuration class (a dict with "layers" and "num_heads"), but
  // the NAtS-L model builds no attention layers from it.
  const JsonValue* attn = r.Get("attn");
  if (attn != nullptr) {
    if (!attn->is_object()) {
      r.Fail("attn", "must be a dictionary");
    } else if (attn->Find("layers") == nullptr) {
      r.Fail("attn", "layer indices (\"layers\") must be provided");
    } else if (attn->Find("num_heads") == nullptr) {
      r.Fail("attn", "\"num_heads\" must be provided");
    }
  }

  HYLA_RETURN_IF_ERROR(r.status());

  c.layers.resize(static_cast<size_t>(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    LayerConfig& lc = c.layers[static_cast<size_t>(i)];
    if (gdn_layers.count(i) > 0) {
      lc.kind = LayerKind::kGdn;
      lc.gdn = g;
    } else {
      lc.kind = LayerKind::kNatsl;
      lc.natsl = n;
    }
  }
  return c;
}

}  // namespace hyla
