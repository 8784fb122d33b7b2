// ParseNhaConfig: config.json of the JusenD/NHA from-scratch model (model_type "nha"), with the
// keys and defaults of nha_fla/models/nha/configuration_nha.py (NHAConfig) and the way
// nha_fla/models/nha/modeling_nha.py (NHABlock) and nha_fla/layers/nha.py
// (NativeHybridAttention) consume them.
//
// What the reference does with each key (and so what we do):
// - NHABlock is always pre-norm (attn_norm → mixer → residual → mlp_norm → GatedMLP →
//   residual); `norm_first` is stored but never read, `fuse_norm` only picks an equivalent
//   RMSNorm implementation.
// - The layer's output norm is `rms_norm_linear(silu(o), g_norm.weight, ...)` called without
//   eps, so its eps is rms_norm_linear's default 1e-5, not `norm_eps`. It is always applied:
//   `use_norm` and `use_output_gate` are stored by the layer but never read (no gate exists).
// - g_norm is RMSNorm(hidden_size) applied to the value_dim-wide output, so value_dim must
//   equal hidden_size.
// - NHAConfig's constructor arguments are misspelt `exapnd_k` / `exapnd_v`; it stores
//   `expand_k` / `expand_v`, which save_pretrained writes and which win when reloaded.
// - `attn` turns the listed layers into plain fla Attention (head_dim = hidden / num_heads,
//   window W means W keys including the query, no qk norm, o_proj without bias).
// - `transformer_idx`, `rand_window`, `gsa_aux_loss_*` are unused at inference.
#include <cmath>
#include <cstdint>
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

// rms_norm_linear's default eps (fla/modules/layernorm.py), used by the layer's output norm.
constexpr float kOutputNormEps = 1e-5f;

// True when `key` is present in `obj` with an explicit JSON null.
bool IsExplicitNull(const JsonValue& obj, absl::string_view key) {
  const JsonValue* v = obj.Find(key);
  return v != nullptr && v->is_null();
}

// The RoPE base the layer uses: config.rope_theta. transformers 5 also writes
// rope_parameters.rope_theta; when both are present they must agree.
absl::StatusOr<double> ParseRopeTheta(ConfigReader& r, absl::string_view path) {
  const bool has_top = r.Has("rope_theta");
  const double top = r.Float("rope_theta", 10000.0);
  HYLA_RETURN_IF_ERROR(r.status());
  const JsonValue* params = r.Get("rope_parameters");
  if (params == nullptr) return top;
  if (!params->is_object()) {
    r.Fail("rope_parameters", "expected an object");
    return r.status();
  }
  ConfigReader pr(*params, path, "rope_parameters.");
  if (!pr.Has("rope_theta")) return top;
  const double nested = pr.Float("rope_theta", top);
  HYLA_RETURN_IF_ERROR(pr.status());
  if (has_top && nested != top) {
    r.Fail("rope_theta", absl::StrCat("is ", top, " but rope_parameters.rope_theta is ", nested,
                                      "; the two must agree"));
    return r.status();
  }
  return nested;
}

// Softmax attention layers from the `attn` dictionary (NHAConfig fills its defaults; note that
// attn.rope_theta defaults to 10000, not to the model's rope_theta).
absl::Status ParseAttnLayers(const JsonValue& attn, int num_layers, int hidden,
                             absl::string_view path, std::vector<LayerConfig>* layers) {
  if (!attn.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": key \"attn\": expected an object (or null)"));
  }
  ConfigReader a(attn, path, "attn.");
  if (!a.Has("layers")) a.Fail("layers", "missing (required when attn is given)");
  if (!a.Has("num_heads")) a.Fail("num_heads", "missing (required when attn is given)");
  HYLA_RETURN_IF_ERROR(a.status());
  const std::optional<std::vector<int64_t>> indices = a.IntList("layers");
  const int64_t num_heads = a.Int("num_heads", 0);
  const int64_t num_kv_heads = a.Int("num_kv_heads", num_heads);
  const bool qkv_bias = a.Bool("qkv_bias", false);
  const int64_t window = a.Int("window_size", 0);  // null: full attention
  const double theta = a.Float("rope_theta", 10000.0);
  HYLA_RETURN_IF_ERROR(a.status());
  if (!indices.has_value()) a.Fail("layers", "expected a list of layer indices");
  if (num_heads <= 0 || hidden % num_heads != 0) {
    a.Fail("num_heads",
           absl::StrCat(num_heads, " must be positive and divide hidden_size ", hidden));
  }
  if (window < 0) a.Fail("window_size", "must not be negative");
  if (theta <= 0) a.Fail("rope_theta", "must be positive");
  HYLA_RETURN_IF_ERROR(a.status());
  for (int64_t idx : *indices) {
    if (idx < 0 || idx >= num_layers) {
      a.Fail("layers", absl::StrCat("index ", idx, " is outside [0, ", num_layers, ")"));
      return a.status();
    }
    LayerConfig& l = (*layers)[static_cast<size_t>(idx)];
    l.kind = LayerKind::kAttention;
    AttentionLayerConfig& c = l.attention;
    c.num_heads = static_cast<int>(num_heads);
    c.num_kv_heads = static_cast<int>(num_kv_heads);
    c.head_dim = static_cast<int>(hidden / num_heads);
    c.rotary_dim = c.head_dim;
    c.rope_theta = static_cast<float>(theta);
    c.window_size = static_cast<int>(window);
    c.qk_norm = false;
    c.qkv_bias = qkv_bias;
    c.o_bias = false;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseNhaConfig(const JsonValue& root, absl::string_view path) {
  ConfigReader r(root, path);
  ModelConfig c;
  c.family = Family::kNha;
  c.vocab_size = static_cast<int>(r.Int("vocab_size", 32000));
  c.hidden_size = static_cast<int>(r.Int("hidden_size", 2048));
  c.num_layers = static_cast<int>(r.Int("num_hidden_layers", 24));
  c.norm_eps = static_cast<float>(r.Float("norm_eps", 1e-6));
  c.norm_kind = NormKind::kPlain;
  c.tie_word_embeddings = r.Bool("tie_word_embeddings", false);
  c.bos_token_id = r.TokenId("bos_token_id", 1);
  c.eos_token_id = r.TokenId("eos_token_id", 2);
  c.max_position_embeddings = static_cast<int>(r.Int("max_position_embeddings", 4096));
  c.dtype = r.TorchDType();

  // MLP: fla GatedMLP derives its width from hidden_ratio when intermediate_size is null.
  const std::string hidden_act = r.String("hidden_act", "swish");
  if (hidden_act != "swish") {
    r.Fail("hidden_act", absl::StrCat("unsupported activation \"", hidden_act,
                                      "\" (only \"swish\", i.e. SwiGLU, is supported)"));
  }
  if (r.Has("intermediate_size")) {
    c.intermediate_size = static_cast<int>(r.Int("intermediate_size", 0));
  } else {
    c.intermediate_size = r.FlaGatedMlpWidth(c.hidden_size);
  }
  (void)r.Bool("norm_first", true);  // stored, never read: the block is always pre-norm
  (void)r.Bool("fuse_norm", true);
  (void)r.Bool("fuse_swiglu", true);

  // NHA layer shape.
  const int64_t num_heads = r.Int("num_heads", 4);
  const int64_t num_kv_heads = r.Int("num_kv_heads", num_heads);
  const double expand_k = r.Float("expand_k", r.Float("exapnd_k", 1.0));
  const double expand_v = r.Float("expand_v", r.Float("exapnd_v", 1.0));
  HYLA_RETURN_IF_ERROR(r.status());
  if (num_heads <= 0) r.Fail("num_heads", "must be positive");
  if (num_kv_heads <= 0) r.Fail("num_kv_heads", "must be positive");
  HYLA_RETURN_IF_ERROR(r.status());
  const int64_t key_dim = static_cast<int64_t>(c.hidden_size * expand_k);
  const int64_t value_dim = static_cast<int64_t>(c.hidden_size * expand_v);
  if (num_heads % num_kv_heads != 0) {
    r.Fail("num_kv_heads", absl::StrCat(num_kv_heads, " does not divide num_heads ", num_heads));
  }
  if (key_dim <= 0 || key_dim % num_heads != 0) {
    r.Fail("expand_k", absl::StrCat("key_dim = hidden_size * expand_k = ", key_dim,
                                    " must be a positive multiple of num_heads ", num_heads));
  }
  if (value_dim != c.hidden_size) {
    r.Fail("expand_v", absl::StrCat("value_dim = hidden_size * expand_v = ", value_dim,
                                    " must equal hidden_size ", c.hidden_size,
                                    " (the reference's output norm g_norm has hidden_size "
                                    "weights)"));
  }
  if (value_dim % num_heads != 0) {
    r.Fail("num_heads", absl::StrCat(num_heads, " does not divide value_dim ", value_dim));
  }
  HYLA_RETURN_IF_ERROR(r.status());
  const int64_t head_k_dim = key_dim / num_heads;
  const int64_t head_v_dim = value_dim / num_heads;
  if (head_k_dim % 2 != 0) {
    r.Fail("expand_k", absl::StrCat("head_k_dim ", head_k_dim, " must be even (RoPE)"));
  }

  // num_slots: absent → NHAConfig's default 64; explicit null → the layer's default head_k_dim.
  int64_t num_slots = r.Int("num_slots", 64);
  if (IsExplicitNull(root, "num_slots")) num_slots = head_k_dim;
  if (num_slots <= 0) r.Fail("num_slots", "must be positive");

  if (IsExplicitNull(root, "window_size")) {
    r.Fail("window_size", "null is not supported (the reference passes it to flash-attn)");
  }
  const int64_t window = r.Int("window_size", 32);
  if (window < 0) {
    r.Fail("window_size", "must not be negative (an unbounded window is not supported)");
  }
  const int64_t kv_shift = r.Int("gsa_kv_shift", 0);
  if (kv_shift < 0) r.Fail("gsa_kv_shift", "must not be negative");

  if (IsExplicitNull(root, "gate_logit_normalizer")) {
    r.Fail("gate_logit_normalizer", "null is not supported (the reference divides by it)");
  }
  const double normalizer = r.Float("gate_logit_normalizer", 8.0);
  if (normalizer == 0.0) r.Fail("gate_logit_normalizer", "must not be zero");

  const std::string feature_map = r.String("feature_map", "swish");
  if (feature_map != "swish") {
    r.Fail("feature_map",
           absl::StrCat("unsupported feature map \"", feature_map, "\" (only \"swish\")"));
  }
  if (!r.Bool("elementwise_affine", true)) {
    r.Fail("elementwise_affine", "false (output norm without weights) is not supported");
  }
  const bool use_short_conv = r.Bool("use_short_conv", false);
  const int64_t conv_size = r.Int("conv_size", 4);
  if (use_short_conv && conv_size <= 0) r.Fail("conv_size", "must be positive");
  if (use_short_conv && r.Bool("conv_bias", false)) {
    r.Fail("conv_bias", "true is not supported (short convolutions without bias only)");
  }
  // Stored by the layer but never read: no gate projection exists and g_norm is always applied.
  (void)r.Bool("use_output_gate", false);
  (void)r.Bool("use_norm", true);
  HYLA_RETURN_IF_ERROR(r.status());
  HYLA_ASSIGN_OR_RETURN(const double rope_theta, ParseRopeTheta(r, path));
  if (rope_theta <= 0) r.Fail("rope_theta", "must be positive");
  HYLA_RETURN_IF_ERROR(r.status());

  NhaLayerConfig nha;
  nha.num_heads = static_cast<int>(num_heads);
  nha.num_kv_heads = static_cast<int>(num_kv_heads);
  nha.head_k_dim = static_cast<int>(head_k_dim);
  nha.head_v_dim = static_cast<int>(head_v_dim);
  nha.num_slots = static_cast<int>(num_slots);
  nha.window_size = static_cast<int>(window);
  nha.kv_shift = static_cast<int>(kv_shift);
  nha.gate_logit_normalizer = static_cast<float>(normalizer);
  nha.scale = 1.0f;  // NativeHybridAttention(scale=1.) and NHABlock passes no scale
  nha.rope_theta = static_cast<float>(rope_theta);
  nha.feature_map_swish = true;
  nha.use_output_gate = false;
  nha.use_norm = true;
  nha.output_norm_eps = kOutputNormEps;
  nha.use_short_conv = use_short_conv;
  nha.conv_size = static_cast<int>(conv_size);

  if (c.num_layers < 0) r.Fail("num_hidden_layers", "must not be negative");
  HYLA_RETURN_IF_ERROR(r.status());
  c.layers.resize(static_cast<size_t>(c.num_layers));
  for (LayerConfig& l : c.layers) {
    l.kind = LayerKind::kNha;
    l.nha = nha;
  }
  if (const JsonValue* attn = r.Get("attn")) {
    HYLA_RETURN_IF_ERROR(ParseAttnLayers(*attn, c.num_layers, c.hidden_size, path, &c.layers));
  }
  return c;
}

}  // namespace hyla
