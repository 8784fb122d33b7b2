#include "tools/model_generator.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/base/float16.h"
#include "runtime/base/status_macros.h"
#include "runtime/model/safetensors.h"
#include "tools/model_tensors.h"

namespace hyla::tools {
namespace {

// ---------------------------------------------------------------------------------------------
// A minimal JSON object writer that prints like Python's json.dumps(sort_keys=True, indent=2),
// which is how transformers' save_pretrained writes config.json.

// Python's repr(float): the shortest digits that round-trip, fixed notation for exponents in
// [-4, 16), else scientific with at least two exponent digits; integral values get ".0".
std::string PyFloat(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e16) {
    return absl::StrFormat("%.1f", v);
  }
  std::string s;
  int digits = 0;
  for (; digits <= 17; ++digits) {
    s = absl::StrFormat("%.*e", digits, v);
    if (std::strtod(s.c_str(), nullptr) == v) break;
  }
  const int exponent = std::atoi(s.c_str() + s.find('e') + 1);
  if (exponent >= -4 && exponent < 16) {
    return absl::StrFormat("%.*f", std::max(0, digits - exponent), v);
  }
  return s;
}

class JsonObject {
 public:
  JsonObject& Int(const std::string& key, int64_t v) { return Raw(key, absl::StrCat(v)); }
  JsonObject& IntOrNull(const std::string& key, int64_t v, bool null) {
    return null ? Null(key) : Int(key, v);
  }
  JsonObject& Float(const std::string& key, double v) { return Raw(key, PyFloat(v)); }
  // A number written as an integer when it is one (e.g. "expand_v": 2), as Python keeps ints.
  JsonObject& Number(const std::string& key, double v) {
    if (v == std::floor(v) && std::fabs(v) < 1e15) return Int(key, static_cast<int64_t>(v));
    return Float(key, v);
  }
  JsonObject& Bool(const std::string& key, bool v) { return Raw(key, v ? "true" : "false"); }
  JsonObject& Null(const std::string& key) { return Raw(key, "null"); }
  JsonObject& Str(const std::string& key, const std::string& v) {
    return Raw(key, absl::StrCat("\"", v, "\""));  // our strings need no escaping
  }
  JsonObject& StrList(const std::string& key, const std::vector<std::string>& items) {
    Value& val = members_[key];
    val = Value();
    val.is_list = true;
    for (const std::string& s : items) val.list.push_back(absl::StrCat("\"", s, "\""));
    return *this;
  }
  JsonObject& IntList(const std::string& key, const std::vector<int>& items) {
    Value& val = members_[key];
    val = Value();
    val.is_list = true;
    for (int i : items) val.list.push_back(absl::StrCat(i));
    return *this;
  }
  JsonObject& Object(const std::string& key, JsonObject obj) {
    Value& val = members_[key];
    val = Value();
    val.object = std::make_shared<JsonObject>(std::move(obj));
    return *this;
  }

  std::string Dump(int level = 0) const {
    if (members_.empty()) return "{}";
    const std::string in(2 * (level + 1), ' ');
    std::string s = "{\n";
    size_t i = 0;
    for (const auto& [key, val] : members_) {  // std::map: sorted keys
      absl::StrAppend(&s, in, "\"", key, "\": ");
      if (val.object != nullptr) {
        s += val.object->Dump(level + 1);
      } else if (val.is_list) {
        if (val.list.empty()) {
          s += "[]";
        } else {
          const std::string in2(2 * (level + 2), ' ');
          s += "[\n";
          for (size_t j = 0; j < val.list.size(); ++j) {
            absl::StrAppend(&s, in2, val.list[j], j + 1 < val.list.size() ? ",\n" : "\n");
          }
          absl::StrAppend(&s, in, "]");
        }
      } else {
        s += val.scalar;
      }
      s += ++i < members_.size() ? ",\n" : "\n";
    }
    absl::StrAppend(&s, std::string(2 * level, ' '), "}");
    return s;
  }

 private:
  struct Value {
    std::string scalar;
    bool is_list = false;
    std::vector<std::string> list;
    std::shared_ptr<JsonObject> object;
  };
  JsonObject& Raw(const std::string& key, std::string raw) {
    Value& val = members_[key];
    val = Value();
    val.scalar = std::move(raw);
    return *this;
  }
  std::map<std::string, Value> members_;
};

const char* TorchDTypeName(DType t) {
  switch (t) {
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    default:
      return "float32";
  }
}

constexpr char kTransformersVersion[] = "5.17.0";

// Keys every family's PretrainedConfig writes.
void CommonKeys(const ModelShape& s, JsonObject& j) {
  j.Int("bos_token_id", s.bos_token_id)
      .Int("eos_token_id", s.eos_token_id)
      .Str("dtype", TorchDTypeName(s.dtype))
      .Int("hidden_size", s.hidden_size)
      .Float("initializer_range", 0.02)  // = kInitStd, as a double
      .IntOrNull("intermediate_size", s.intermediate_size, s.intermediate_size == 0)
      .Int("max_position_embeddings", s.max_position_embeddings)
      .Int("num_hidden_layers", s.num_layers)
      .Null("pad_token_id")
      .Bool("tie_word_embeddings", s.tie_word_embeddings)
      .Str("transformers_version", kTransformersVersion)
      .Bool("use_cache", true)
      .Int("vocab_size", s.vocab_size);
}

// fla-style model keys shared by the fla families (GatedDeltaNet, NAtS-L, NHA configs).
void FlaKeys(const ModelShape& s, JsonObject& j) {
  j.Bool("fuse_cross_entropy", false)
      .Bool("fuse_norm", true)
      .Bool("fuse_swiglu", true)
      .Str("hidden_act", "swish")
      .Int("hidden_ratio", s.hidden_ratio)
      .Float("norm_eps", s.norm_eps);
}

JsonObject RopeParameters(double theta) {
  JsonObject r;
  r.Float("rope_theta", theta).Str("rope_type", "default");
  return r;
}

// fla GatedDeltaNetConfig (shared/golden/gdn/config.json).
JsonObject GdnConfig(const ModelShape& s) {
  JsonObject j;
  CommonKeys(s, j);
  FlaKeys(s, j);
  j.Str("model_type", "gated_deltanet")
      .StrList("architectures", {"GatedDeltaNetForCausalLM"})
      .Bool("allow_neg_eigval", false)
      .Str("attn_mode", "chunk")
      .Null("attnres_block_size")
      .Int("conv_size", 4)
      .Number("expand_v", s.expand_v)
      .Bool("fuse_linear_cross_entropy", false)
      .Int("head_dim", s.head_dim)
      .Int("num_heads", s.num_heads)
      .IntOrNull("num_v_heads", s.num_v_heads, s.num_v_heads == 0)
      .Bool("use_gate", true)
      .Bool("use_l2warp", false)
      .Bool("use_short_conv", true);
  if (s.attn_layers.empty()) {
    j.Null("attn");
  } else {
    // fla models/hybrid.py HybridAttentionSpec, normalised (all optional keys present).
    JsonObject a;
    a.IntList("layers", s.attn_layers)
        .Int("num_heads", s.attn_num_heads)
        .Int("num_kv_heads", s.attn_num_kv_heads > 0 ? s.attn_num_kv_heads : s.attn_num_heads)
        .Bool("qkv_bias", false)
        .Float("rope_theta", s.rope_theta)
        .IntOrNull("window_size", s.attn_window_size, s.attn_window_size == 0);
    j.Object("attn", std::move(a));
  }
  return j;
}

// NAtS-L NeuralAttentionSearchLineraAttnGDNConfig (shared/golden/natsl/config.json).
JsonObject NatslConfig(const ModelShape& s) {
  JsonObject j;
  CommonKeys(s, j);
  FlaKeys(s, j);
  j.Str("model_type", "neural_attention_search_linear_attn_gdn")
      .StrList("architectures", {"NeuralAttentionSearchLinearAttnGDNForCausalLM"})
      .Bool("allow_neg_eigval", false)
      .Null("attn")
      .Bool("attn_apply_pos_encoding", false)
      .Null("attn_max_position_embeddings")
      .Str("attn_mode", "chunk")
      .Bool("attn_qk_norm", true)
      .Float("attn_rope_theta", s.rope_theta)
      .Bool("attn_with_short_conv", true)
      .Bool("compute_dnats_for_invalid_blocks_attn", false)
      .Bool("compute_dnats_for_invalid_blocks_linear_att", false)
      .Bool("conv_bias", false)
      .Int("conv_size", 4)
      .Bool("decay_for_non_gdn_blocks", true)
      .Number("expand_v", s.expand_v)
      .IntList("gdn_layers", s.gdn_layers)
      .Int("head_dim", s.head_dim)
      .Bool("incomplete_block_start_with_ht", true)
      .Int("n_ops", 2)
      .Str("nats_block_agg_type", "mean")
      .Int("nats_block_size", 64)
      .Str("nats_sample_strategy", "argmax")
      .Int("num_attn_heads", s.num_attn_heads)
      .Int("num_heads", s.num_heads)
      .Null("num_nats_head")
      .IntOrNull("num_v_heads", s.num_v_heads, s.num_v_heads == 0)
      .Str("ops_for_incomplete_chunks", "all")
      .Bool("outputs_are_wighted", true)  // sic: the reference's spelling
      .Bool("use_gate", true)
      .Bool("use_l2warp", false)
      .Bool("use_short_conv", true);
  return j;
}

// JusenD/NHA NHAConfig as saved (shared/golden/nha/config.json).
JsonObject NhaConfig(const ModelShape& s) {
  JsonObject j;
  CommonKeys(s, j);
  FlaKeys(s, j);
  const double expand = static_cast<double>(s.head_dim) * s.num_heads / s.hidden_size;
  const int kv_heads = s.num_kv_heads > 0 ? s.num_kv_heads : s.num_heads;
  j.Str("model_type", "nha")
      .StrList("architectures", {"NHAForCausalLM"})
      .Null("attn")
      .Bool("conv_bias", false)
      .Int("conv_size", 4)
      .Bool("elementwise_affine", true)
      .Number("expand_k", expand)
      .Number("expand_v", expand)
      .Str("feature_map", "swish")
      .Int("gate_logit_normalizer", 8)
      .Null("gsa_aux_loss_coeff")
      .Bool("gsa_aux_loss_enable", false)
      .Float("gsa_aux_loss_target_ratio", 1.0)
      .Int("gsa_kv_shift", s.kv_shift)
      .Bool("norm_first", true)
      .Int("num_attention_heads", s.num_heads)
      .Int("num_heads", s.num_heads)
      .Int("num_kv_heads", kv_heads)
      .Int("num_slots", s.num_slots)
      .Bool("rand_window", false)
      .Object("rope_parameters", RopeParameters(s.rope_theta))
      .Float("rope_theta", s.rope_theta)
      .Null("transformer_idx")
      .Bool("use_norm", true)
      .Bool("use_output_gate", false)
      .Bool("use_short_conv", false)
      .Int("window_size", s.window_size);
  return j;
}

// transformers LlamaConfig, transformers-5 layout (shared/golden/llama/config.json).
JsonObject LlamaConfig(const ModelShape& s) {
  JsonObject j;
  CommonKeys(s, j);
  j.Str("model_type", "llama")
      .StrList("architectures", {"LlamaForCausalLM"})
      .Bool("attention_bias", false)
      .Float("attention_dropout", 0.0)
      .Int("head_dim", s.head_dim)
      .Str("hidden_act", "silu")
      .Bool("mlp_bias", false)
      .Int("num_attention_heads", s.num_heads)
      .Int("num_key_value_heads", s.num_kv_heads > 0 ? s.num_kv_heads : s.num_heads)
      .Int("pretraining_tp", 1)
      .Float("rms_norm_eps", s.norm_eps)
      .Object("rope_parameters", RopeParameters(s.rope_theta));
  return j;
}

absl::Status Bad(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("model shape: ", field, " ", what));
}

absl::Status CheckLayerList(absl::string_view field, const std::vector<int>& layers, int n) {
  std::set<int> seen;
  for (int l : layers) {
    if (l < 0 || l >= n) return Bad(field, absl::StrCat("has layer ", l, " outside [0, ", n, ")"));
    if (!seen.insert(l).second) return Bad(field, absl::StrCat("repeats layer ", l));
  }
  return absl::OkStatus();
}

absl::Status CheckShape(const ModelShape& s) {
  if (s.vocab_size <= 0) return Bad("vocab_size", "must be positive");
  if (s.hidden_size <= 0) return Bad("hidden_size", "must be positive");
  if (s.num_layers <= 0) return Bad("num_layers", "must be positive");
  if (s.intermediate_size < 0) return Bad("intermediate_size", "must not be negative");
  if (s.intermediate_size == 0 && (s.family == Family::kLlama || s.hidden_ratio <= 0)) {
    return Bad("intermediate_size", "must be positive (no hidden_ratio rule for this family)");
  }
  if (s.num_heads <= 0) return Bad("num_heads", "must be positive");
  if (s.head_dim <= 0) return Bad("head_dim", "must be positive");
  if (s.num_kv_heads < 0 || s.num_v_heads < 0) return Bad("num_kv_heads", "must not be negative");
  if (s.dtype != DType::kF32 && s.dtype != DType::kBF16 && s.dtype != DType::kF16) {
    return Bad("dtype", "must be F32, BF16 or F16");
  }
  switch (s.family) {
    case Family::kNatsl: {
      if (s.num_attn_heads <= 0 || s.num_attn_heads % s.num_heads != 0) {
        return Bad("num_attn_heads", "must be a positive multiple of num_heads");
      }
      const double v = s.head_dim * s.expand_v;
      if (v != std::floor(v) || v <= 0) return Bad("expand_v", "must give an integer dv");
      const int64_t key_dim = int64_t{s.num_heads} * s.head_dim;
      const int64_t value_dim = int64_t{s.num_heads} * static_cast<int64_t>(v);
      if (key_dim % s.num_attn_heads != 0 || value_dim % s.num_attn_heads != 0) {
        return Bad("num_attn_heads", "must divide key_dim and value_dim");
      }
      return CheckLayerList("gdn_layers", s.gdn_layers, s.num_layers);
    }
    case Family::kGdn: {
      const double v = s.head_dim * s.expand_v;
      if (v != std::floor(v) || v <= 0) return Bad("expand_v", "must give an integer dv");
      if (s.num_v_heads > 0 && s.num_v_heads % s.num_heads != 0) {
        return Bad("num_v_heads", "must be a multiple of num_heads");
      }
      if (!s.attn_layers.empty()) {
        if (s.attn_num_heads <= 0 || s.hidden_size % s.attn_num_heads != 0) {
          return Bad("attn_num_heads", "must be positive and divide hidden_size");
        }
        if (s.attn_num_kv_heads < 0 ||
            (s.attn_num_kv_heads > 0 && s.attn_num_heads % s.attn_num_kv_heads != 0)) {
          return Bad("attn_num_kv_heads", "must divide attn_num_heads");
        }
        if (s.attn_window_size < 0) return Bad("attn_window_size", "must not be negative");
      }
      return CheckLayerList("attn_layers", s.attn_layers, s.num_layers);
    }
    case Family::kNha: {
      if (int64_t{s.head_dim} * s.num_heads != s.hidden_size) {
        // The reference's g_norm is hidden_size wide over a value_dim-wide output.
        return Bad("head_dim", "× num_heads must equal hidden_size (NHA's g_norm is hidden wide)");
      }
      if (s.num_kv_heads > 0 && s.num_heads % s.num_kv_heads != 0) {
        return Bad("num_kv_heads", "must divide num_heads");
      }
      if (s.num_slots <= 0) return Bad("num_slots", "must be positive");
      if (s.window_size < 0 || s.kv_shift < 0) return Bad("window_size", "must not be negative");
      return absl::OkStatus();
    }
    case Family::kLlama:
      if (s.num_kv_heads > 0 && s.num_heads % s.num_kv_heads != 0) {
        return Bad("num_kv_heads", "must divide num_heads");
      }
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Deterministic random values: splitmix64 streams, Box-Muller normals.

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a64(absl::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

class Stream {
 public:
  Stream(uint64_t seed, absl::string_view name) : state_(seed) {
    state_ ^= Fnv1a64(name);
    SplitMix64(&state_);
  }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(SplitMix64(&state_) >> 11) * 0x1.0p-53; }
  double Normal() {
    const double u1 = 1.0 - Uniform();  // (0, 1]
    const double u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  uint64_t state_;
};

std::vector<float> InitValues(const TensorSpec& t, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  Stream rng(seed, t.name);
  switch (t.init) {
    case InitKind::kNormal:
      for (float& x : v) x = static_cast<float>(rng.Normal() * t.std);
      break;
    case InitKind::kOnes:
      std::fill(v.begin(), v.end(), 1.0f);
      break;
    case InitKind::kZeros:
      std::fill(v.begin(), v.end(), 0.0f);
      break;
    case InitKind::kALog:
      for (float& x : v) x = static_cast<float>(std::log(1.0 + 15.0 * rng.Uniform()));
      break;
    case InitKind::kDtBias:
      for (float& x : v) {
        const double lo = std::log(1e-3), hi = std::log(0.1);
        const double dt = std::max(1e-4, std::exp(lo + (hi - lo) * rng.Uniform()));
        x = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus⁻¹(dt)
      }
      break;
  }
  return v;
}

std::vector<uint8_t> Encode(const std::vector<float>& v, DType dtype) {
  std::vector<uint8_t> bytes(v.size() * static_cast<size_t>(DTypeSize(dtype)));
  if (dtype == DType::kF32) {
    std::memcpy(bytes.data(), v.data(), bytes.size());
    return bytes;
  }
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = dtype == DType::kBF16 ? FloatToBf16(v[i]) : FloatToFp16(v[i]);
    bytes[2 * i] = static_cast<uint8_t>(h & 0xff);
    bytes[2 * i + 1] = static_cast<uint8_t>(h >> 8);
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// Presets.

std::vector<int> EveryNth(int num_layers, int n) {  // layers n-1, 2n-1, ...
  std::vector<int> out;
  for (int i = n - 1; i < num_layers; i += n) out.push_back(i);
  return out;
}

// The NAtS-L releases' pure-GDN layers (experiments/configs/natsl_{340M,760M}.json): all but
// 3, 7, 11, 15, 19, 20.
std::vector<int> NatslReleaseGdnLayers() {
  return {0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16, 17, 18};
}

}  // namespace

absl::StatusOr<Family> ParseFamilyName(absl::string_view name) {
  for (Family f : {Family::kNatsl, Family::kNha, Family::kGdn, Family::kLlama}) {
    if (FamilyName(f) == name) return f;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown family \"", name, "\" (expected natsl, nha, gdn or llama)"));
}

std::vector<std::string> PresetNames(Family family) {
  switch (family) {
    case Family::kNatsl:
      return {"tiny", "small", "natsl-340m", "natsl-760m"};
    case Family::kNha:
      return {"tiny", "small", "nha-llama3-8b"};
    case Family::kGdn:
      return {"tiny", "small", "tiny-hybrid", "qwen3next-1b", "qwen3next-1b-twin"};
    case Family::kLlama:
      return {"tiny", "small", "llama3-8b", "natsl-760m-twin"};
  }
  return {};
}

absl::StatusOr<ModelShape> PresetShape(Family family, absl::string_view preset) {
  ModelShape s;
  s.family = family;
  switch (family) {
    case Family::kNatsl:
      if (preset == "tiny") {  // also the embedded default model's shape
        s.hidden_size = 64;
        s.num_layers = 4;
        s.intermediate_size = 128;
        s.num_heads = 2;
        s.head_dim = 32;
        s.expand_v = 2;
        s.num_attn_heads = 4;
        s.gdn_layers = {0, 2};
        return s;
      }
      if (preset == "small") {  // the golden fixture's shape
        s.hidden_size = 128;
        s.num_layers = 4;
        s.intermediate_size = 256;
        s.num_heads = 2;
        s.head_dim = 64;
        s.expand_v = 2;
        s.num_attn_heads = 4;
        s.gdn_layers = {0, 2};
        return s;
      }
      if (preset == "natsl-340m" || preset == "natsl-760m") {
        const bool big = preset == "natsl-760m";
        s.vocab_size = 32000;
        s.hidden_size = big ? 1536 : 1024;
        s.num_layers = 21;
        s.intermediate_size = 0;  // null: fla GatedMLP rule from hidden_ratio 4
        s.num_heads = 6;
        s.head_dim = big ? 192 : 128;
        s.expand_v = 2;
        s.num_attn_heads = big ? 18 : 12;
        s.gdn_layers = NatslReleaseGdnLayers();
        s.dtype = DType::kBF16;
        return s;
      }
      break;
    case Family::kNha:
      s.num_layers = 4;
      s.kv_shift = 0;
      if (preset == "tiny") {  // GQA: 2 query heads share 1 KV head
        s.hidden_size = 64;
        s.intermediate_size = 128;
        s.num_heads = 2;
        s.num_kv_heads = 1;
        s.head_dim = 32;
        s.num_slots = 8;
        s.window_size = 16;
        s.max_position_embeddings = 4096;
        return s;
      }
      if (preset == "small") {  // the golden fixture's shape
        s.hidden_size = 128;
        s.intermediate_size = 256;
        s.num_heads = 2;
        s.num_kv_heads = 2;
        s.head_dim = 64;
        s.num_slots = 16;
        s.window_size = 32;
        s.max_position_embeddings = 4096;
        return s;
      }
      if (preset == "nha-llama3-8b") {
        // Llama3-8B's attention shapes with NHA layers (models.md §2.6): the hybridised-LLM
        // slots consume tokens leaving the window (gsa_kv_shift = W).
        s.vocab_size = 128256;
        s.hidden_size = 4096;
        s.num_layers = 32;
        s.intermediate_size = 14336;
        s.num_heads = 32;
        s.num_kv_heads = 8;
        s.head_dim = 128;
        s.num_slots = 64;
        s.window_size = 64;
        s.kv_shift = 64;
        s.rope_theta = 500000.0;
        s.norm_eps = 1e-5;
        s.max_position_embeddings = 8192;
        s.bos_token_id = 128000;
        s.eos_token_id = 128001;
        s.dtype = DType::kBF16;
        return s;
      }
      break;
    case Family::kGdn:
      s.expand_v = 2;
      if (preset == "tiny") {
        s.hidden_size = 64;
        s.num_layers = 3;
        s.intermediate_size = 128;
        s.num_heads = 2;
        s.head_dim = 32;
        return s;
      }
      if (preset == "small") {  // the golden fixture's shape
        s.hidden_size = 128;
        s.num_layers = 3;
        s.intermediate_size = 256;
        s.num_heads = 2;
        s.head_dim = 64;
        return s;
      }
      if (preset == "tiny-hybrid") {  // GVA (2 q/k heads, 4 value heads) + softmax at layer 3
        s.hidden_size = 64;
        s.num_layers = 4;
        s.intermediate_size = 128;
        s.num_heads = 2;
        s.num_v_heads = 4;
        s.head_dim = 32;
        s.expand_v = 1;
        s.attn_layers = EveryNth(4, 4);
        s.attn_num_heads = 4;
        s.attn_num_kv_heads = 2;
        return s;
      }
      if (preset == "qwen3next-1b" || preset == "qwen3next-1b-twin") {
        // Qwen3-Next's GDN layer (16 q/k heads × 128, 32 value heads × 128) and layout (full
        // attention every 4th layer) at ~1.2B parameters. fla's Attention has head_dim =
        // hidden / heads = 128 (Qwen3-Next uses 256 with its own attention block).
        s.vocab_size = 32000;
        s.hidden_size = 2048;
        s.num_layers = 24;
        s.intermediate_size = 0;  // null: fla rule, hidden_ratio 2 → 2816
        s.hidden_ratio = 2;
        s.num_heads = 16;
        s.num_v_heads = 32;
        s.head_dim = 128;
        s.expand_v = 1;
        // The twin (issue 5's all-softmax baseline): the same model with every layer softmax.
        s.attn_layers = EveryNth(24, preset == "qwen3next-1b-twin" ? 1 : 4);
        s.attn_num_heads = 16;
        s.attn_num_kv_heads = 2;
        s.max_position_embeddings = 262144;
        s.dtype = DType::kBF16;
        return s;
      }
      break;
    case Family::kLlama:
      s.max_position_embeddings = 1024;
      if (preset == "tiny") {
        s.hidden_size = 64;
        s.num_layers = 4;
        s.intermediate_size = 128;
        s.num_heads = 4;
        s.num_kv_heads = 2;
        s.head_dim = 16;
        return s;
      }
      if (preset == "small") {  // the golden fixture's shape
        s.hidden_size = 128;
        s.num_layers = 4;
        s.intermediate_size = 256;
        s.num_heads = 4;
        s.num_kv_heads = 2;
        s.head_dim = 32;
        return s;
      }
      if (preset == "llama3-8b") {
        s.vocab_size = 128256;
        s.hidden_size = 4096;
        s.num_layers = 32;
        s.intermediate_size = 14336;
        s.num_heads = 32;
        s.num_kv_heads = 8;
        s.head_dim = 128;
        s.rope_theta = 500000.0;
        s.norm_eps = 1e-5;
        s.max_position_embeddings = 8192;
        s.bos_token_id = 128000;
        s.eos_token_id = 128001;
        s.dtype = DType::kBF16;
        return s;
      }
      if (preset == "natsl-760m-twin") {
        // A transformer of natsl-760m's dimensions (issue 5's baseline): vocabulary, hidden size,
        // depth and SwiGLU width (fla rule: 2/3 · 4 · 1536 = 4096) of natsl-760m, with every
        // layer full softmax attention, 12 heads × 128 (MHA).
        s.vocab_size = 32000;
        s.hidden_size = 1536;
        s.num_layers = 21;
        s.intermediate_size = 4096;
        s.num_heads = 12;
        s.num_kv_heads = 12;
        s.head_dim = 128;
        s.max_position_embeddings = 262144;
        s.dtype = DType::kBF16;
        return s;
      }
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown preset \"", preset, "\" for family ",
                                                 FamilyName(family), " (expected one of ",
                                                 absl::StrJoin(PresetNames(family), ", "), ")"));
}

absl::StatusOr<std::string> ConfigJsonFor(const ModelShape& shape) {
  HYLA_RETURN_IF_ERROR(CheckShape(shape));
  JsonObject j;
  switch (shape.family) {
    case Family::kNatsl:
      j = NatslConfig(shape);
      break;
    case Family::kNha:
      j = NhaConfig(shape);
      break;
    case Family::kGdn:
      j = GdnConfig(shape);
      break;
    case Family::kLlama:
      j = LlamaConfig(shape);
      break;
  }
  return j.Dump() + "\n";
}

absl::Status GenerateModel(const GeneratorOptions& options, const std::string& out_dir) {
  HYLA_ASSIGN_OR_RETURN(const std::string config_json, ConfigJsonFor(options.shape));
  // Parse it back as any checkpoint is read: the tensors follow from the parsed config.
  const std::string config_path = (std::filesystem::path(out_dir) / "config.json").string();
  HYLA_ASSIGN_OR_RETURN(const ModelConfig config, ParseModelConfig(config_json, config_path));

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(out_dir, ": cannot create: ", ec.message()));
  {
    std::ofstream out(config_path, std::ios::binary | std::ios::trunc);
    out << config_json;
    out.close();
    if (!out) return absl::InternalError(absl::StrCat(config_path, ": write failed"));
  }
  if (options.config_only) return absl::OkStatus();

  const std::vector<TensorSpec> specs = ListModelTensors(config);
  std::vector<TensorToWrite> tensors(specs.size());
  auto draw = [&](size_t i) {
    TensorToWrite& t = tensors[i];
    t.name = specs[i].name;
    t.dtype = options.shape.dtype;
    t.shape = specs[i].shape;
    t.bytes = Encode(InitValues(specs[i], options.seed), t.dtype);
  };
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (threads <= 1 || specs.size() <= 1) {
    for (size_t i = 0; i < specs.size(); ++i) draw(i);
  } else {
    // Largest tensors first; each tensor has its own stream, so the bytes do not depend on the
    // thread count or the order.
    std::vector<size_t> order(specs.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return specs[a].numel() > specs[b].numel(); });
    std::atomic<size_t> next{0};
    std::vector<std::thread> workers;
    const size_t n = std::min(static_cast<size_t>(threads), specs.size());
    for (size_t w = 0; w < n; ++w) {
      workers.emplace_back([&] {
        for (size_t k = next++; k < order.size(); k = next++) draw(order[k]);
      });
    }
    for (std::thread& w : workers) w.join();
  }
  const std::vector<std::pair<std::string, std::string>> metadata = {
      {"format", "pt"},
      {"generator", "hyla-model generate-model"},
      {"family", std::string(FamilyName(options.shape.family))},
      {"preset", options.preset},
      {"seed", absl::StrCat(options.seed)},
  };
  return WriteSafetensors((std::filesystem::path(out_dir) / "model.safetensors").string(), tensors,
                          metadata);
}

}  // namespace hyla::tools
