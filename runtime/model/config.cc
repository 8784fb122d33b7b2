#include "runtime/model/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "runtime/base/status_macros.h"
#include "runtime/model/config_reader.h"

namespace hyla {

absl::string_view FamilyName(Family f) {
  switch (f) {
    case Family::kNatsl:
      return "natsl";
    case Family::kNha:
      return "nha";
    case Family::kGdn:
      return "gdn";
    case Family::kLlama:
      return "llama";
  }
  return "?";
}

ResidualBlockNames ResidualBlockNamesFor(Family family) {
  if (family == Family::kLlama) {
    return {"model.embed_tokens.weight", "input_layernorm", "self_attn",
            "post_attention_layernorm"};
  }
  return {"model.embeddings.weight", "attn_norm", "attn", "mlp_norm"};
}

absl::string_view LayerKindName(LayerKind k) {
  switch (k) {
    case LayerKind::kGdn:
      return "gdn";
    case LayerKind::kNatsl:
      return "natsl";
    case LayerKind::kNha:
      return "nha";
    case LayerKind::kAttention:
      return "attention";
  }
  return "?";
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view path) {
  absl::StatusOr<JsonValue> root = ParseJson(json_text);
  if (!root.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", root.status().message()));
  }
  if (!root->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON object"));
  }
  ConfigReader r(*root, path);
  const std::string model_type = r.String("model_type", "");
  HYLA_RETURN_IF_ERROR(r.status());
  absl::StatusOr<ModelConfig> config;
  if (model_type == "neural_attention_search_linear_attn_gdn") {
    config = ParseNatslConfig(*root, path);
  } else if (model_type == "nha") {
    config = ParseNhaConfig(*root, path);
  } else if (model_type == "gated_deltanet") {
    config = ParseGdnConfig(*root, path);
  } else if (model_type == "llama") {
    config = ParseLlamaConfig(*root, path);
  } else if (model_type.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": key \"model_type\": missing"));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": key \"model_type\": unknown model type \"", model_type,
        "\" (supported: neural_attention_search_linear_attn_gdn, nha, gated_deltanet, llama)"));
  }
  if (!config.ok()) return config.status();
  config->model_type = model_type;
  HYLA_RETURN_IF_ERROR(ValidateModelConfig(*config, path));
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& config_json_path) {
  std::ifstream in(config_json_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(config_json_path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str(), config_json_path);
}

namespace {

absl::Status Bad(absl::string_view path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::Status CheckPositive(absl::string_view path, absl::string_view what, int64_t v) {
  if (v <= 0) return Bad(path, absl::StrCat(what, " must be positive, got ", v));
  return absl::OkStatus();
}

absl::Status CheckGdn(absl::string_view path, const std::string& where, const GdnLayerConfig& g) {
  HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " num_heads", g.num_heads));
  HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " num_v_heads", g.num_v_heads));
  HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " head_k_dim", g.head_k_dim));
  HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " head_v_dim", g.head_v_dim));
  if (g.num_v_heads % g.num_heads != 0) {
    return Bad(path, absl::StrCat(where, " num_v_heads (", g.num_v_heads,
                                  ") must be a multiple of num_heads (", g.num_heads, ")"));
  }
  if (g.use_short_conv)
    HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " conv_size", g.conv_size));
  if (!std::isfinite(g.norm_eps) || g.norm_eps <= 0) {
    return Bad(path, absl::StrCat(where, " norm_eps must be a positive finite number"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelConfig(const ModelConfig& c, absl::string_view path) {
  HYLA_RETURN_IF_ERROR(CheckPositive(path, "vocab_size", c.vocab_size));
  HYLA_RETURN_IF_ERROR(CheckPositive(path, "hidden_size", c.hidden_size));
  HYLA_RETURN_IF_ERROR(CheckPositive(path, "num_hidden_layers", c.num_layers));
  HYLA_RETURN_IF_ERROR(CheckPositive(path, "intermediate_size", c.intermediate_size));
  if (!std::isfinite(c.norm_eps) || c.norm_eps <= 0) {
    return Bad(path, "norm_eps must be a positive finite number");
  }
  if (static_cast<int>(c.layers.size()) != c.num_layers) {
    return Bad(path, absl::StrCat("expected ", c.num_layers, " layer descriptions, got ",
                                  c.layers.size()));
  }
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const LayerConfig& l = c.layers[i];
    const std::string where = absl::StrCat("layer ", i, " (", LayerKindName(l.kind), ")");
    switch (l.kind) {
      case LayerKind::kGdn:
        HYLA_RETURN_IF_ERROR(CheckGdn(path, where, l.gdn));
        break;
      case LayerKind::kNatsl: {
        const NatslLayerConfig& n = l.natsl;
        HYLA_RETURN_IF_ERROR(CheckGdn(path, where, n.gdn));
        HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " num_attn_heads", n.num_attn_heads));
        if (n.num_attn_heads % n.gdn.num_heads != 0) {
          return Bad(path,
                     absl::StrCat(where, " num_attn_heads (", n.num_attn_heads,
                                  ") must be a multiple of num_heads (", n.gdn.num_heads, ")"));
        }
        if (n.gdn.key_dim() % n.num_attn_heads != 0 || n.gdn.value_dim() % n.num_attn_heads != 0) {
          return Bad(path, absl::StrCat(where, " key_dim (", n.gdn.key_dim(), ") and value_dim (",
                                        n.gdn.value_dim(), ") must divide by num_attn_heads (",
                                        n.num_attn_heads, ")"));
        }
        if (n.chunk_size != 64) {
          return Bad(path, absl::StrCat(where, " nats_block_size must be 64, got ", n.chunk_size));
        }
        if (n.attn_apply_pos_encoding) {
          return Bad(path, absl::StrCat(where, " attn_apply_pos_encoding=true is not supported"));
        }
        break;
      }
      case LayerKind::kNha: {
        const NhaLayerConfig& n = l.nha;
        HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " num_heads", n.num_heads));
        HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " num_kv_heads", n.num_kv_heads));
        HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " head_k_dim", n.head_k_dim));
        HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " head_v_dim", n.head_v_dim));
        HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " num_slots", n.num_slots));
        if (n.window_size < 0 || n.kv_shift < 0) {
          return Bad(path,
                     absl::StrCat(where, " window_size and gsa_kv_shift must not be negative"));
        }
        if (n.num_heads % n.num_kv_heads != 0) {
          return Bad(path,
                     absl::StrCat(where, " num_heads (", n.num_heads,
                                  ") must be a multiple of num_kv_heads (", n.num_kv_heads, ")"));
        }
        break;
      }
      case LayerKind::kAttention: {
        const AttentionLayerConfig& a = l.attention;
        HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " num_heads", a.num_heads));
        HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " num_kv_heads", a.num_kv_heads));
        HYLA_RETURN_IF_ERROR(CheckPositive(path, where + " head_dim", a.head_dim));
        if (a.num_heads % a.num_kv_heads != 0) {
          return Bad(path, absl::StrCat(where, " num_attention_heads (", a.num_heads,
                                        ") must be a multiple of num_key_value_heads (",
                                        a.num_kv_heads, ")"));
        }
        if (a.rotary_dim < 0 || a.rotary_dim > a.head_dim || a.rotary_dim % 2 != 0) {
          return Bad(path, absl::StrCat(where, " rotary dims (", a.rotary_dim,
                                        ") must be even and at most head_dim (", a.head_dim, ")"));
        }
        if (a.window_size < 0) return Bad(path, where + " window_size must not be negative");
        if (!std::isfinite(a.rope_theta) || a.rope_theta <= 0) {
          return Bad(path, where + " rope_theta must be a positive finite number");
        }
        break;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace hyla
