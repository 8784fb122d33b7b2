// ParseLlamaConfig: transformers LlamaConfig (model_type "llama") with its keys and defaults.
//
// RoPE is read in both layouts transformers understands:
//   * transformers 5: "rope_parameters": {"rope_type", "rope_theta", ...scaling keys};
//   * older: top-level "rope_theta" plus an optional "rope_scaling" object (whose type key may be
//     spelled "rope_type" or, older still, "type").
// Supported rope types: "default" and "llama3" (Llama 3.x frequency scaling). Anything else is an
// error naming the key.
//
// "sliding_window" (Mistral-style, present and non-null) becomes the attention window: query t
// sees keys j with t - sliding_window < j <= t. Note that transformers' own LlamaForCausalLM
// ignores this key; hyla honours it so Mistral-style checkpoints served as "llama" stay bounded.
#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/base/status_macros.h"
#include "runtime/model/config.h"
#include "runtime/model/config_reader.h"

namespace hyla {
namespace {

// Positive finite number under `key` (required when `required`).
double PositiveFloat(ConfigReader& r, absl::string_view key, double default_value, bool required) {
  if (required && !r.Has(key)) {
    r.Fail(key, "missing (required)");
    return default_value;
  }
  const double x = r.Float(key, default_value);
  if (!(x > 0)) r.Fail(key, absl::StrCat("must be a positive number, got ", x));
  return x;
}

// Reads the rope type and its parameters from `rope` (rope_parameters or rope_scaling object,
// keys prefixed by `prefix` in messages) into `a`.
absl::Status ReadRopeScaling(const JsonValue& rope, absl::string_view path,
                             const std::string& prefix, AttentionLayerConfig* a) {
  ConfigReader r(rope, path, prefix);
  const char* type_key = r.Has("rope_type") || !r.Has("type") ? "rope_type" : "type";
  const std::string type = r.String(type_key, "default");
  HYLA_RETURN_IF_ERROR(r.status());
  if (type == "default") {
    a->rope_type = RopeType::kDefault;
    return absl::OkStatus();
  }
  if (type != "llama3") {
    r.Fail(type_key, absl::StrCat("unsupported rope type \"", type,
                                  "\" (supported: \"default\", \"llama3\")"));
    return r.status();
  }
  a->rope_type = RopeType::kLlama3;
  a->rope_factor = PositiveFloat(r, "factor", 1.0, /*required=*/true);
  a->rope_low_freq_factor = PositiveFloat(r, "low_freq_factor", 1.0, /*required=*/true);
  a->rope_high_freq_factor = PositiveFloat(r, "high_freq_factor", 4.0, /*required=*/true);
  if (!r.Has("original_max_position_embeddings")) {
    r.Fail("original_max_position_embeddings", "missing (required)");
  }
  a->rope_original_max_position_embeddings = r.Int("original_max_position_embeddings", 8192);
  HYLA_RETURN_IF_ERROR(r.status());
  if (a->rope_original_max_position_embeddings <= 0) {
    r.Fail("original_max_position_embeddings",
           absl::StrCat("must be positive, got ", a->rope_original_max_position_embeddings));
  }
  if (!(a->rope_high_freq_factor > a->rope_low_freq_factor)) {
    r.Fail("high_freq_factor",
           absl::StrCat("must be greater than low_freq_factor (", a->rope_low_freq_factor,
                        "), got ", a->rope_high_freq_factor));
  }
  return r.status();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseLlamaConfig(const JsonValue& root, absl::string_view path) {
  ConfigReader r(root, path);
  ModelConfig c;
  c.family = Family::kLlama;
  // Defaults of transformers LlamaConfig.
  c.vocab_size = static_cast<int>(r.Int("vocab_size", 32000));
  c.hidden_size = static_cast<int>(r.Int("hidden_size", 4096));
  c.intermediate_size = static_cast<int>(r.Int("intermediate_size", 11008));
  c.num_layers = static_cast<int>(r.Int("num_hidden_layers", 32));
  c.norm_eps = static_cast<float>(r.Float("rms_norm_eps", 1e-6));
  c.norm_kind = NormKind::kPlain;
  c.tie_word_embeddings = r.Bool("tie_word_embeddings", false);
  c.max_position_embeddings = static_cast<int>(r.Int("max_position_embeddings", 2048));
  c.bos_token_id = r.TokenId("bos_token_id", 1);
  c.eos_token_id = r.TokenId("eos_token_id", 2);
  c.dtype = r.TorchDType();

  AttentionLayerConfig a;
  a.num_heads = static_cast<int>(r.Int("num_attention_heads", 32));
  a.num_kv_heads = static_cast<int>(r.Int("num_key_value_heads", a.num_heads));
  HYLA_RETURN_IF_ERROR(r.status());
  if (a.num_heads <= 0) {
    r.Fail("num_attention_heads", absl::StrCat("must be positive, got ", a.num_heads));
    return r.status();
  }
  a.head_dim = static_cast<int>(r.Int("head_dim", c.hidden_size / a.num_heads));

  const std::string act = r.String("hidden_act", "silu");
  if (r.status().ok() && act != "silu") {
    r.Fail("hidden_act", absl::StrCat("unsupported activation \"", act, "\" (only \"silu\")"));
  }
  const bool attention_bias = r.Bool("attention_bias", false);
  a.qkv_bias = attention_bias;
  a.o_bias = attention_bias;
  if (r.Bool("mlp_bias", false)) r.Fail("mlp_bias", "true is not supported (MLP without biases)");
  const int64_t window = r.Int("sliding_window", 0);
  if (window < 0 || window > INT32_MAX) {
    r.Fail("sliding_window", absl::StrCat("must be a positive integer or null, got ", window));
  }
  a.window_size = static_cast<int>(window);
  HYLA_RETURN_IF_ERROR(r.status());

  // RoPE: transformers-5 rope_parameters, else rope_theta + rope_scaling.
  double theta = 10000.0;
  double partial_rotary_factor = r.Float("partial_rotary_factor", 1.0);
  if (r.Has("rope_parameters")) {
    const JsonValue& rope = *r.Get("rope_parameters");
    if (!rope.is_object()) {
      r.Fail("rope_parameters",
             absl::StrCat("expected an object, got ", JsonValue::TypeName(rope.type())));
      return r.status();
    }
    ConfigReader rr(rope, path, "rope_parameters.");
    theta = PositiveFloat(rr, "rope_theta", r.Float("rope_theta", 10000.0), /*required=*/false);
    partial_rotary_factor = rr.Float("partial_rotary_factor", partial_rotary_factor);
    HYLA_RETURN_IF_ERROR(rr.status());
    HYLA_RETURN_IF_ERROR(ReadRopeScaling(rope, path, "rope_parameters.", &a));
  } else {
    theta = PositiveFloat(r, "rope_theta", 10000.0, /*required=*/false);
    HYLA_RETURN_IF_ERROR(r.status());
    if (r.Has("rope_scaling")) {
      const JsonValue& scaling = *r.Get("rope_scaling");
      if (!scaling.is_object()) {
        r.Fail("rope_scaling", absl::StrCat("expected an object or null, got ",
                                            JsonValue::TypeName(scaling.type())));
        return r.status();
      }
      HYLA_RETURN_IF_ERROR(ReadRopeScaling(scaling, path, "rope_scaling.", &a));
    }
  }
  HYLA_RETURN_IF_ERROR(r.status());
  if (!(partial_rotary_factor > 0 && partial_rotary_factor <= 1)) {
    r.Fail("partial_rotary_factor", absl::StrCat("must be in (0, 1], got ", partial_rotary_factor));
    return r.status();
  }
  a.rope_theta = static_cast<float>(theta);
  // transformers: dim = int(head_dim * partial_rotary_factor).
  a.rotary_dim = static_cast<int>(static_cast<double>(a.head_dim) * partial_rotary_factor);

  if (c.num_layers < 0) {
    r.Fail("num_hidden_layers", absl::StrCat("must be positive, got ", c.num_layers));
    return r.status();
  }
  LayerConfig layer;
  layer.kind = LayerKind::kAttention;
  layer.attention = a;
  c.layers.assign(static_cast<size_t>(c.num_layers), layer);
  return c;
}

}  // namespace hyla
