// config.json of fla's GatedDeltaNetForCausalLM (model_type "gated_deltanet"): the keys and
// defaults of fla/models/gated_deltanet/configuration_gated_deltanet.py, the head dimensions as
// fla/layers/gated_deltanet.py derives them, the MLP width as fla.modules.GatedMLP derives it,
// and the optional "attn" specification of fla/models/hybrid.py that turns the listed layers
// into plain fla Attention layers (fla/layers/attn.py).
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/base/status_macros.h"
#include "runtime/model/config.h"
#include "runtime/model/config_reader.h"

namespace hyla {
namespace {

// A positive integer that is not a JSON boolean (fla's _positive_int).
int PositiveInt(ConfigReader& r, const char* key, int64_t default_value) {
  const JsonValue* v = r.Get(key);
  if (v != nullptr && !v->is_integer()) {
    r.Fail(key, absl::StrCat("must be a positive integer, got ", JsonValue::TypeName(v->type())));
    return 0;
  }
  const int64_t x = r.Int(key, default_value);
  if (x <= 0 || x > INT32_MAX) {
    r.Fail(key, absl::StrCat("must be a positive integer, got ", x));
    return 0;
  }
  return static_cast<int>(x);
}

// One hybrid attention specification (fla HybridAttentionSpec, normalised as
// fla/models/hybrid.py::_normalize_spec does) applied to the layers it lists.
absl::Status ParseAttnSpec(const JsonValue& spec, const std::string& key_prefix,
                           absl::string_view path, int hidden_size, int num_layers,
                           std::map<int, std::string>* assigned, std::vector<LayerConfig>* layers) {
  ConfigReader r(spec, path, key_prefix);
  if (!r.Has("layers")) r.Fail("layers", "missing (required)");
  if (!r.Has("num_heads")) r.Fail("num_heads", "missing (required)");
  HYLA_RETURN_IF_ERROR(r.status());

  const JsonValue* layers_json = r.Get("layers");
  if (!layers_json->is_array()) {
    r.Fail("layers", "must be a list of integer layer indices");
    return r.status();
  }
  std::vector<int> attn_layers;
  for (const JsonValue& item : layers_json->array_items()) {
    if (!item.is_integer()) {
      r.Fail("layers", "must contain only integer layer indices");
      return r.status();
    }
    const int64_t idx = item.int_value();
    if (idx < 0 || idx >= num_layers) {
      r.Fail("layers", absl::StrCat("contains out-of-range layer ", idx,
                                    "; expected a value in [0, ", num_layers, ")"));
      return r.status();
    }
    const int layer = static_cast<int>(idx);
    auto it = assigned->find(layer);
    if (it != assigned->end()) {
      r.Fail("layers",
             it->second == key_prefix
                 ? absl::StrCat("contains duplicate layer ", layer)
                 : absl::StrCat("layer ", layer, " is already assigned by ",
                                it->second.empty() ? "another specification" : it->second));
      return r.status();
    }
    (*assigned)[layer] = key_prefix;
    attn_layers.push_back(layer);
  }

  AttentionLayerConfig a;
  a.num_heads = PositiveInt(r, "num_heads", 0);
  a.num_kv_heads = r.Has("num_kv_heads") ? PositiveInt(r, "num_kv_heads", 0) : a.num_heads;
  const JsonValue* bias = r.Get("qkv_bias");
  if (bias != nullptr && !bias->is_bool()) r.Fail("qkv_bias", "must be a Boolean");
  a.qkv_bias = r.Bool("qkv_bias", false);
  a.window_size = r.Has("window_size") ? PositiveInt(r, "window_size", 0) : 0;
  const JsonValue* theta = r.Get("rope_theta");
  if (theta != nullptr && !theta->is_number()) r.Fail("rope_theta", "must be positive and finite");
  const double rope_theta = r.Float("rope_theta", 10000.0);
  if (!(rope_theta > 0)) r.Fail("rope_theta", "must be positive and finite");
  HYLA_RETURN_IF_ERROR(r.status());
  a.rope_theta = static_cast<float>(rope_theta);
  // fla Attention: head_dim = hidden_size // num_heads, q_proj is hidden_size wide and is viewed
  // as [num_heads, head_dim]; no q/k norm in the GDN hybrid block (qk_norm is not passed); RoPE
  // (GPT-NeoX rotate-half) over the whole head; o_proj without bias.
  if (hidden_size % a.num_heads != 0) {
    r.Fail("num_heads", absl::StrCat("hidden_size (", hidden_size,
                                     ") must be a multiple of num_heads (", a.num_heads, ")"));
    return r.status();
  }
  if (a.num_heads % a.num_kv_heads != 0) {
    r.Fail("num_kv_heads",
           absl::StrCat("num_heads (", a.num_heads, ") must be a multiple of num_kv_heads (",
                        a.num_kv_heads, ")"));
    return r.status();
  }
  a.head_dim = hidden_size / a.num_heads;
  a.rotary_dim = a.head_dim;
  a.qk_norm = false;
  a.o_bias = false;
  for (int layer : attn_layers) {
    LayerConfig& lc = (*layers)[layer];
    lc.kind = LayerKind::kAttention;
    lc.attention = a;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseGdnConfig(const JsonValue& root, absl::string_view path) {
  ConfigReader r(root, path);
  ModelConfig c;
  c.family = Family::kGdn;
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

  // GatedDeltaNet layer (fla/layers/gated_deltanet.py).
  GdnLayerConfig g;
  g.num_heads = static_cast<int>(r.Int("num_heads", 6));
  const int64_t head_dim = r.Int("head_dim", 256);
  g.num_v_heads = r.Has("num_v_heads") ? static_cast<int>(r.Int("num_v_heads", 0)) : g.num_heads;
  const double expand_v = r.Float("expand_v", 2.0);
  g.use_gate = r.Bool("use_gate", true);
  g.use_short_conv = r.Bool("use_short_conv", true);
  g.allow_neg_eigval = r.Bool("allow_neg_eigval", false);
  g.conv_size = static_cast<int>(r.Int("conv_size", 4));
  g.norm_eps = c.norm_eps;
  HYLA_RETURN_IF_ERROR(r.status());
  if (head_dim <= 0 || head_dim > INT32_MAX) {
    r.Fail("head_dim", absl::StrCat("must be positive, got ", head_dim));
    return r.status();
  }
  g.head_k_dim = static_cast<int>(head_dim);
  // fla: head_v_dim = int(head_dim * expand_v), value_dim = int(num_v_heads * head_v_dim), and
  // both products must be (close to) integers.
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
  if (g.num_heads <= 0) {
    r.Fail("num_heads", absl::StrCat("must be positive, got ", g.num_heads));
    return r.status();
  }
  // fla raises for num_v_heads > num_heads not divisible; fewer value heads than q/k heads has
  // no GVA mapping in the kernels (i_h = i_hv // (HV // H)).
  if (g.num_v_heads <= 0 || g.num_v_heads % g.num_heads != 0) {
    r.Fail("num_v_heads", absl::StrCat("num_v_heads=", g.num_v_heads,
                                       " must be a positive multiple of num_heads=", g.num_heads));
    return r.status();
  }

  // fla GatedMLP: intermediate_size, or int(hidden_size * hidden_ratio * 2 / 3) rounded up to a
  // multiple of 256 (hidden_ratio null means 4). Only the SwiGLU activation ("swish") is served.
  const std::string hidden_act = r.String("hidden_act", "swish");
  if (hidden_act != "swish") {
    r.Fail("hidden_act", absl::StrCat("\"", hidden_act, "\" is not supported (only \"swish\")"));
  }
  if (r.Has("intermediate_size")) {
    c.intermediate_size = static_cast<int>(r.Int("intermediate_size", 0));
  } else {
    c.intermediate_size = r.FlaGatedMlpWidth(c.hidden_size);
  }

  // Features of fla's block that this server does not implement: refuse them by name.
  if (r.Has("attnres_block_size")) {
    r.Fail("attnres_block_size",
           "attention residuals (fused_attnres) are not supported; expected null");
  }
  HYLA_RETURN_IF_ERROR(r.status());
  if (c.num_layers <= 0) {
    r.Fail("num_hidden_layers", absl::StrCat("must be positive, got ", c.num_layers));
    return r.status();
  }

  LayerConfig gdn_layer;
  gdn_layer.kind = LayerKind::kGdn;
  gdn_layer.gdn = g;
  c.layers.assign(static_cast<size_t>(c.num_layers), gdn_layer);

  // Hybrid attention layers: null, one specification object, or a list of them.
  const JsonValue* attn = r.Get("attn");
  if (attn != nullptr) {
    std::map<int, std::string> assigned;
    if (attn->is_object()) {
      HYLA_RETURN_IF_ERROR(
          ParseAttnSpec(*attn, "attn.", path, c.hidden_size, c.num_layers, &assigned, &c.layers));
    } else if (attn->is_array()) {
      const std::vector<JsonValue>& specs = attn->array_items();
      for (size_t i = 0; i < specs.size(); ++i) {
        if (!specs[i].is_object()) {
          r.Fail("attn", absl::StrCat("specification at index ", i, " must be an object, got ",
                                      JsonValue::TypeName(specs[i].type())));
          return r.status();
        }
        HYLA_RETURN_IF_ERROR(ParseAttnSpec(specs[i], absl::StrCat("attn[", i, "]."), path,
                                           c.hidden_size, c.num_layers, &assigned, &c.layers));
      }
    } else {
      r.Fail("attn", absl::StrCat("must be null, an object or a list of objects, got ",
                                  JsonValue::TypeName(attn->type())));
      return r.status();
    }
  }
  return c;
}

}  // namespace hyla
