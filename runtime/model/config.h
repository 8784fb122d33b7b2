// ModelConfig: what hyla knows about a checkpoint from its config.json alone — the family, the
// common dimensions and, per layer, which kind of token mixer it has and that mixer's shape.
// Parsing is per family (config_<family>.cc) with exactly the keys and defaults of the authors'
// configuration classes; see docs/checkpoints.md.
//
// Thread-safety: a ModelConfig is a value; immutable after parsing.
#ifndef HYLA_RUNTIME_MODEL_CONFIG_H_
#define HYLA_RUNTIME_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/model/dtype.h"
#include "runtime/model/json.h"

namespace hyla {

enum class Family {
  kNatsl,  // model_type "neural_attention_search_linear_attn_gdn"
           // (automl/NeuralAttentionSearchLinear)
  kNha,    // model_type "nha" (JusenD/NHA from-scratch model)
  kGdn,    // model_type "gated_deltanet" (fla), optionally with softmax layers (config "attn")
  kLlama,  // model_type "llama" (Hugging Face transformers)
};
absl::string_view FamilyName(Family f);  // "natsl", "nha", "gdn", "llama"

// Checkpoint tensor names of the residual block around each layer's mixer, by family:
// "model.embed_tokens.weight" / "input_layernorm" / "self_attn" / "post_attention_layernorm"
// (transformers llama) or "model.embeddings.weight" / "attn_norm" / "attn" / "mlp_norm" (fla:
// gated_deltanet, NAtS-L, NHA). Used by every backend.
struct ResidualBlockNames {
  const char* embed;
  const char* mixer_norm;
  const char* mixer;
  const char* mlp_norm;
};
ResidualBlockNames ResidualBlockNamesFor(Family family);

enum class LayerKind {
  kGdn,        // Gated DeltaNet layer (fla GatedDeltaNet)
  kNatsl,      // NAtS-L layer: GDN + softmax routed per chunk and head
  kNha,        // NHA layer: slots + sliding window under one softmax
  kAttention,  // softmax attention: GQA, RoPE, optional sliding window
};
absl::string_view LayerKindName(LayerKind k);  // "gdn", "natsl", "nha", "attention"

// Normalisation flavour of the model's RMSNorms.
enum class NormKind {
  kPlain,  // x̂ · w
  kGemma,  // x̂ · (1 + w)   (Qwen3-Next / Gemma)
};

// Gated DeltaNet token mixer (fla layers/gated_deltanet.py). Also the GDN branch of NAtS-L.
struct GdnLayerConfig {
  int num_heads = 0;    // H: q/k heads
  int num_v_heads = 0;  // HV: value heads (GVA when > H; HV % H == 0)
  int head_k_dim = 0;   // dk
  int head_v_dim = 0;   // dv = dk * expand_v
  bool use_short_conv = true;
  int conv_size = 4;
  bool use_gate = true;           // output gate g_proj + gated RMSNorm
  bool allow_neg_eigval = false;  // beta * 2
  float norm_eps = 1e-6f;         // o_norm eps
  int key_dim() const { return num_heads * head_k_dim; }
  int value_dim() const { return num_v_heads * head_v_dim; }
};

// NAtS-L layer (src/nats/layers/natsl_attn_gdn.py).
struct NatslLayerConfig {
  GdnLayerConfig gdn;       // the GDN branch; gdn.num_heads = decision heads H
  int num_attn_heads = 0;   // Ha (multiple of H)
  int attn_head_k_dim = 0;  // d_ak = key_dim / Ha
  int attn_head_v_dim = 0;  // d_av = value_dim / Ha
  int chunk_size = 64;      // nats_block_size C
  bool attn_qk_norm = true;
  bool attn_with_short_conv = true;
  bool attn_apply_pos_encoding = false;  // only false (NoPE) is supported
  bool decay_for_non_gdn_blocks = true;
  bool outputs_are_weighted = true;  // "outputs_are_wighted" in the reference config
  int groups() const { return num_attn_heads / gdn.num_heads; }  // G
};

// NHA layer (nha_fla/layers/nha.py, from-scratch model).
struct NhaLayerConfig {
  int num_heads = 0;     // query heads
  int num_kv_heads = 0;  // KV heads (state is per KV head)
  int head_k_dim = 0;
  int head_v_dim = 0;
  int num_slots = 0;    // M
  int window_size = 0;  // W: each query sees itself and W past tokens
  int kv_shift = 0;     // gsa_kv_shift: slots consume token t - kv_shift
  float gate_logit_normalizer = 8.0f;
  float scale = 1.0f;  // logit scale (1.0 in the from-scratch layer)
  float rope_theta = 10000.0f;
  bool feature_map_swish = true;  // swish(q), swish(k) on the slot path
  bool use_output_gate = false;
  bool use_norm = true;  // output RMSNorm (g_norm)
  float output_norm_eps = 1e-5f;
  bool use_short_conv = false;
  int conv_size = 4;
};

// RoPE frequency schedule (transformers rope_parameters["rope_type"]).
enum class RopeType {
  kDefault,  // inv_freq[i] = theta^(-2i/rotary_dim)
  kLlama3,   // Llama 3.x: long wavelengths divided by rope_factor, a smooth band in between
};

// Softmax attention (Llama self_attn, fla Attention in hybrids).
struct AttentionLayerConfig {
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;  // dims that get RoPE (head_dim unless partial)
  float rope_theta = 10000.0f;
  int window_size = 0;  // 0: full causal attention; else keys j in [t - window_size + 1, t]
  bool qk_norm = false;
  bool qkv_bias = false;
  bool o_bias = false;
  float qk_norm_eps = 1e-5f;  // q_norm / k_norm RMSNorm eps (fla RMSNorm default)
  RopeType rope_type = RopeType::kDefault;
  // kLlama3 parameters, kept as the JSON doubles (transformers computes the band edges in
  // Python floats): factor, low_freq_factor, high_freq_factor, original_max_position_embeddings.
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t rope_original_max_position_embeddings = 8192;
};

struct LayerConfig {
  LayerKind kind = LayerKind::kAttention;
  GdnLayerConfig gdn;              // kind == kGdn
  NatslLayerConfig natsl;          // kind == kNatsl
  NhaLayerConfig nha;              // kind == kNha
  AttentionLayerConfig attention;  // kind == kAttention
};

struct ModelConfig {
  Family family = Family::kLlama;
  std::string model_type;
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int intermediate_size = 0;  // SwiGLU MLP hidden width
  float norm_eps = 1e-6f;
  NormKind norm_kind = NormKind::kPlain;
  bool tie_word_embeddings = false;
  int bos_token_id = -1;
  int eos_token_id = -1;
  int max_position_embeddings = 0;
  DType dtype = DType::kF32;  // the checkpoint's torch dtype ("dtype"/"torch_dtype")
  std::vector<LayerConfig> layers;
};

// Parses config.json text. `path` names the file in every error message.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view path);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& config_json_path);

// Per-family parsers (config_<family>.cc); `root` is the config.json object.
absl::StatusOr<ModelConfig> ParseNatslConfig(const JsonValue& root, absl::string_view path);
absl::StatusOr<ModelConfig> ParseNhaConfig(const JsonValue& root, absl::string_view path);
absl::StatusOr<ModelConfig> ParseGdnConfig(const JsonValue& root, absl::string_view path);
absl::StatusOr<ModelConfig> ParseLlamaConfig(const JsonValue& root, absl::string_view path);

// Checks cross-field consistency shared by all families (positive sizes, divisibility, finite
// values). Called by ParseModelConfig after the family parser.
absl::Status ValidateModelConfig(const ModelConfig& config, absl::string_view path);

}  // namespace hyla

#endif  // HYLA_RUNTIME_MODEL_CONFIG_H_
