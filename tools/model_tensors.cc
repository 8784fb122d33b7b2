#include "tools/model_tensors.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace hyla::tools {
namespace {

class Lister {
 public:
  explicit Lister(std::vector<TensorSpec>* out) : out_(out) {}

  void Normal(std::string name, std::vector<int64_t> shape, float std = kInitStd) {
    Add(std::move(name), std::move(shape), InitKind::kNormal, std);
  }
  void Norm(std::string name, int64_t n, NormKind kind) {
    Add(std::move(name), {n}, kind == NormKind::kGemma ? InitKind::kZeros : InitKind::kOnes, 0);
  }
  void Add(std::string name, std::vector<int64_t> shape, InitKind init, float std = 0) {
    TensorSpec t;
    t.name = std::move(name);
    t.shape = std::move(shape);
    t.init = init;
    t.std = std;
    out_->push_back(std::move(t));
  }

 private:
  std::vector<TensorSpec>* out_;
};

// Depthwise causal conv (fla ShortConvolution = nn.Conv1d(groups=channels), no bias).
void Conv(Lister& l, const std::string& name, int64_t channels, int conv_size) {
  l.Normal(name + ".weight", {channels, 1, conv_size});
}

// fla layers/gated_deltanet.py::GatedDeltaNet.
void GdnMixer(Lister& l, const std::string& p, int64_t d, const GdnLayerConfig& g) {
  const int64_t key_dim = g.key_dim();
  const int64_t value_dim = g.value_dim();
  l.Normal(p + "q_proj.weight", {key_dim, d});
  l.Normal(p + "k_proj.weight", {key_dim, d});
  l.Normal(p + "v_proj.weight", {value_dim, d});
  l.Normal(p + "a_proj.weight", {g.num_v_heads, d});
  l.Normal(p + "b_proj.weight", {g.num_v_heads, d});
  l.Add(p + "A_log", {g.num_v_heads}, InitKind::kALog);
  l.Add(p + "dt_bias", {g.num_v_heads}, InitKind::kDtBias);
  if (g.use_short_conv) {
    Conv(l, p + "q_conv1d", key_dim, g.conv_size);
    Conv(l, p + "k_conv1d", key_dim, g.conv_size);
    Conv(l, p + "v_conv1d", value_dim, g.conv_size);
  }
  if (g.use_gate) l.Normal(p + "g_proj.weight", {value_dim, d});
  // FusedRMSNormGated (use_gate) or RMSNorm over one value head: a plain x̂·w norm either way.
  l.Norm(p + "o_norm.weight", g.head_v_dim, NormKind::kPlain);
  l.Normal(p + "o_proj.weight", {d, value_dim});
}

// NAtS-L src/nats/layers/natsl_attn_gdn.py::NeuralAttentionSearchLinearAttnGDN.
void NatslMixer(Lister& l, const std::string& p, int64_t d, const NatslLayerConfig& n) {
  const GdnLayerConfig& g = n.gdn;
  const int64_t key_dim = g.key_dim();
  const int64_t value_dim = g.value_dim();
  if (n.attn_qk_norm) {
    l.Norm(p + "q_norm.weight", n.attn_head_k_dim, NormKind::kPlain);
    l.Norm(p + "k_norm.weight", n.attn_head_k_dim, NormKind::kPlain);
  }
  l.Normal(p + "q_proj.weight", {key_dim, d});
  l.Normal(p + "k_proj.weight", {key_dim, d});
  l.Normal(p + "v_proj.weight", {value_dim, d});
  l.Normal(p + "a_proj.weight", {g.num_v_heads, d});
  l.Normal(p + "b_proj.weight", {g.num_v_heads, d});
  // Router: n_ops (2) logits per decision head from the chunk mean of x.
  l.Normal(p + "nats_layer.weight", {2 * int64_t{g.num_heads}, d}, kRouterStd);
  l.Add(p + "A_log", {g.num_v_heads}, InitKind::kALog);
  l.Add(p + "dt_bias", {g.num_v_heads}, InitKind::kDtBias);
  if (n.outputs_are_weighted) {
    // Per-token mixing weights from the post-conv q: 2 per softmax head.
    l.Normal(p + "nats_out_weights_layer.weight", {2 * int64_t{n.num_attn_heads}, key_dim});
  }
  if (g.use_short_conv) {
    Conv(l, p + "q_conv1d", key_dim, g.conv_size);
    Conv(l, p + "k_conv1d", key_dim, g.conv_size);
    Conv(l, p + "v_conv1d", value_dim, g.conv_size);
  }
  if (g.use_gate) {
    l.Normal(p + "g_proj.weight", {value_dim, d});
    // FusedMultiInputRMSNormGated: γ1 for the GDN output, γ2 for the softmax output.
    l.Norm(p + "o_norm.weight1", n.attn_head_v_dim, NormKind::kPlain);
    l.Norm(p + "o_norm.weight2", n.attn_head_v_dim, NormKind::kPlain);
  } else {
    l.Norm(p + "o_norm.0.weight", g.head_v_dim, NormKind::kPlain);
    l.Norm(p + "o_norm.1.weight", n.attn_head_v_dim, NormKind::kPlain);
  }
  l.Normal(p + "o_proj.weight", {d, value_dim});
}

// JusenD/NHA nha_fla/layers/nha.py::NativeHybridAttention (from-scratch model).
void NhaMixer(Lister& l, const std::string& p, int64_t d, const NhaLayerConfig& n) {
  const int64_t q_dim = int64_t{n.num_heads} * n.head_k_dim;
  const int64_t k_dim = int64_t{n.num_kv_heads} * n.head_k_dim;
  const int64_t v_dim = int64_t{n.num_kv_heads} * n.head_v_dim;
  l.Normal(p + "q_proj.weight", {q_dim, d});
  l.Normal(p + "k_proj.weight", {k_dim, d});
  l.Normal(p + "v_proj.weight", {v_dim, d});
  l.Normal(p + "f_proj.weight", {int64_t{n.num_kv_heads} * n.num_slots, d});
  if (n.use_short_conv) {
    Conv(l, p + "q_conv1d", q_dim, n.conv_size);
    Conv(l, p + "k_conv1d", k_dim, n.conv_size);
    Conv(l, p + "v_conv1d", v_dim, n.conv_size);
  }
  // The reference builds g_norm over hidden_size (it normalises the value_dim-wide output, so
  // it only runs with value_dim == hidden_size).
  if (n.use_norm) l.Norm(p + "g_norm.weight", d, NormKind::kPlain);
  l.Normal(p + "o_proj.weight", {d, int64_t{n.num_heads} * n.head_v_dim});
}

// Softmax attention: HF LlamaAttention (self_attn.*) or fla layers/attn.py::Attention (attn.*).
void AttentionMixer(Lister& l, const std::string& p, int64_t d, const AttentionLayerConfig& a) {
  const int64_t q_dim = int64_t{a.num_heads} * a.head_dim;
  const int64_t kv_dim = int64_t{a.num_kv_heads} * a.head_dim;
  l.Normal(p + "q_proj.weight", {q_dim, d});
  if (a.qkv_bias) l.Add(p + "q_proj.bias", {q_dim}, InitKind::kZeros);
  l.Normal(p + "k_proj.weight", {kv_dim, d});
  if (a.qkv_bias) l.Add(p + "k_proj.bias", {kv_dim}, InitKind::kZeros);
  l.Normal(p + "v_proj.weight", {kv_dim, d});
  if (a.qkv_bias) l.Add(p + "v_proj.bias", {kv_dim}, InitKind::kZeros);
  l.Normal(p + "o_proj.weight", {d, q_dim});
  if (a.o_bias) l.Add(p + "o_proj.bias", {d}, InitKind::kZeros);
  if (a.qk_norm) {
    l.Norm(p + "q_norm.weight", a.head_dim, NormKind::kPlain);
    l.Norm(p + "k_norm.weight", a.head_dim, NormKind::kPlain);
  }
}

}  // namespace

std::vector<TensorSpec> ListModelTensors(const ModelConfig& config) {
  std::vector<TensorSpec> out;
  Lister l(&out);
  const int64_t d = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  const bool llama = config.family == Family::kLlama;
  const char* embed = llama ? "model.embed_tokens.weight" : "model.embeddings.weight";
  const char* mixer_norm = llama ? "input_layernorm" : "attn_norm";
  const char* mixer = llama ? "self_attn" : "attn";
  const char* mlp_norm = llama ? "post_attention_layernorm" : "mlp_norm";

  l.Normal(embed, {config.vocab_size, d});
  for (size_t i = 0; i < config.layers.size(); ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    const std::string m = absl::StrCat(p, mixer, ".");
    const LayerConfig& lc = config.layers[i];
    l.Norm(absl::StrCat(p, mixer_norm, ".weight"), d, config.norm_kind);
    switch (lc.kind) {
      case LayerKind::kGdn:
        GdnMixer(l, m, d, lc.gdn);
        break;
      case LayerKind::kNatsl:
        NatslMixer(l, m, d, lc.natsl);
        break;
      case LayerKind::kNha:
        NhaMixer(l, m, d, lc.nha);
        break;
      case LayerKind::kAttention:
        AttentionMixer(l, m, d, lc.attention);
        break;
    }
    l.Norm(absl::StrCat(p, mlp_norm, ".weight"), d, config.norm_kind);
    l.Normal(p + "mlp.gate_proj.weight", {inter, d});
    l.Normal(p + "mlp.up_proj.weight", {inter, d});
    l.Normal(p + "mlp.down_proj.weight", {d, inter});
  }
  l.Norm("model.norm.weight", d, config.norm_kind);
  if (!config.tie_word_embeddings) l.Normal("lm_head.weight", {config.vocab_size, d});
  return out;
}

int64_t CountParameters(const ModelConfig& config) {
  int64_t n = 0;
  for (const TensorSpec& t : ListModelTensors(config)) n += t.numel();
  return n;
}

}  // namespace hyla::tools
