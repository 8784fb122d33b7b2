// A naive double-precision Llama forward for the tests, written from the equations of
// transformers' LlamaForCausalLM (and fla's Attention options) and nothing else of hyla: it reads
// the weights straight from model.safetensors and takes every dimension from the caller. It is
// slow (plain loops) and exact enough (double) to serve as the brute-force reference for sliding
// windows, evicted chunks, biases and q/k norms, which the golden fixture does not cover.
#ifndef HYLA_TESTS_GOLDEN_LLAMA_LLAMA_REFERENCE_H_
#define HYLA_TESTS_GOLDEN_LLAMA_LLAMA_REFERENCE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "runtime/model/safetensors.h"

namespace hyla::testing {

// Which keys a query sees.
struct RefMask {
  int window = 0;      // > 0: keys j with t - window < j <= t
  int cap_blocks = 0;  // > 0: only keys of the last cap_blocks 64-token chunks up to t's chunk
  bool Visible(int64_t t, int64_t j) const {
    if (j > t) return false;
    if (window > 0 && j <= t - window) return false;
    if (cap_blocks > 0 && j / 64 <= t / 64 - cap_blocks) return false;
    return true;
  }
};

// One softmax attention layer (weights widened to double; empty vectors: absent).
struct RefAttention {
  int hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, rotary_dim = 0;
  double theta = 10000.0;
  double qk_norm_eps = 1e-5;
  std::vector<double> wq, wk, wv, wo;  // [H*hd, d], [Hkv*hd, d], [Hkv*hd, d], [d, H*hd]
  std::vector<double> bq, bk, bv, bo;  // biases (optional)
  std::vector<double> q_norm, k_norm;  // [hd] (optional: q/k RMSNorm)

  // x: [T, hidden] (positions 0..T-1) → [T, hidden].
  std::vector<double> Forward(const std::vector<double>& x, int64_t T, const RefMask& mask) const {
    const int64_t qw = int64_t{heads} * head_dim, kw = int64_t{kv_heads} * head_dim;
    std::vector<double> q = Project(x, T, hidden, wq, bq, qw);
    std::vector<double> k = Project(x, T, hidden, wk, bk, kw);
    std::vector<double> v = Project(x, T, hidden, wv, bv, kw);
    for (int64_t t = 0; t < T; ++t) {
      for (int h = 0; h < heads; ++h) Prepare(&q[t * qw + h * head_dim], q_norm, t);
      for (int h = 0; h < kv_heads; ++h) Prepare(&k[t * kw + h * head_dim], k_norm, t);
    }
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    std::vector<double> o(static_cast<size_t>(T * qw), 0.0), s(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      for (int h = 0; h < heads; ++h) {
        const int g = h / (heads / kv_heads);
        double m = -INFINITY;
        for (int64_t j = 0; j < T; ++j) {
          if (!mask.Visible(t, j)) continue;
          double dot = 0;
          for (int e = 0; e < head_dim; ++e) {
            dot += q[t * qw + h * head_dim + e] * k[j * kw + g * head_dim + e];
          }
          s[j] = dot * scale;
          m = std::max(m, s[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < T; ++j) {
          if (mask.Visible(t, j)) z += std::exp(s[j] - m);
        }
        for (int64_t j = 0; j < T; ++j) {
          if (!mask.Visible(t, j)) continue;
          const double p = std::exp(s[j] - m) / z;
          for (int e = 0; e < head_dim; ++e) {
            o[t * qw + h * head_dim + e] += p * v[j * kw + g * head_dim + e];
          }
        }
      }
    }
    return Project(o, T, qw, wo, bo, hidden);
  }

  static std::vector<double> Project(const std::vector<double>& x, int64_t T, int64_t in,
                                     const std::vector<double>& w, const std::vector<double>& b,
                                     int64_t out) {
    std::vector<double> y(static_cast<size_t>(T * out));
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t o = 0; o < out; ++o) {
        double acc = b.empty() ? 0.0 : b[o];
        for (int64_t i = 0; i < in; ++i) acc += x[t * in + i] * w[o * in + i];
        y[t * out + o] = acc;
      }
    }
    return y;
  }

 private:
  // Optional RMSNorm, then rotate-half RoPE on the first rotary_dim dims at position t.
  void Prepare(double* x, const std::vector<double>& norm, int64_t t) const {
    if (!norm.empty()) {
      double ss = 0;
      for (int e = 0; e < head_dim; ++e) ss += x[e] * x[e];
      const double inv = 1.0 / std::sqrt(ss / head_dim + qk_norm_eps);
      for (int e = 0; e < head_dim; ++e) x[e] = x[e] * inv * norm[e];
    }
    const int half = rotary_dim / 2;
    for (int i = 0; i < half; ++i) {
      const double freq = std::pow(theta, -2.0 * i / rotary_dim);
      const double c = std::cos(t * freq), s = std::sin(t * freq);
      const double a = x[i], b = x[i + half];
      x[i] = a * c - b * s;
      x[i + half] = b * c + a * s;
    }
  }
};

inline void RefRmsNorm(const double* x, const std::vector<double>& w, double eps, int64_t n,
                       double* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const double inv = 1.0 / std::sqrt(ss / n + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
}

// Dimensions of a Llama checkpoint, given by the test (not parsed by hyla).
struct RefLlamaDims {
  int vocab = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, inter = 0;
  double eps = 1e-6, theta = 10000.0;
};

class RefLlama {
 public:
  // Reads `dir`/model.safetensors (F32). Biases are taken when present.
  static absl::StatusOr<RefLlama> Load(const std::string& dir, const RefLlamaDims& dims) {
    auto file_or = SafetensorsFile::Open(dir + "/model.safetensors");
    if (!file_or.ok()) return file_or.status();
    const SafetensorsFile& f = **file_or;
    RefLlama m;
    m.dims_ = dims;
    absl::Status st;
    auto take = [&](const std::string& name, bool optional = false) {
      std::vector<double> out;
      const TensorInfo* t = f.Find(name);
      if (t == nullptr) {
        if (!optional && st.ok()) st = absl::NotFoundError(name);
        return out;
      }
      if (t->dtype != DType::kF32 && st.ok()) st = absl::InvalidArgumentError(name + " not F32");
      out.resize(static_cast<size_t>(t->numel()));
      for (int64_t i = 0; i < t->numel(); ++i) {
        float v;
        std::memcpy(&v, t->data + 4 * i, 4);
        out[i] = v;
      }
      return out;
    };
    m.embed_ = take("model.embed_tokens.weight");
    m.final_norm_ = take("model.norm.weight");
    m.lm_head_ = take("lm_head.weight");
    for (int l = 0; l < dims.layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      Layer L;
      L.in_norm = take(p + "input_layernorm.weight");
      L.post_norm = take(p + "post_attention_layernorm.weight");
      RefAttention& a = L.attn;
      a.hidden = dims.hidden;
      a.heads = dims.heads;
      a.kv_heads = dims.kv_heads;
      a.head_dim = dims.head_dim;
      a.rotary_dim = dims.head_dim;
      a.theta = dims.theta;
      a.wq = take(p + "self_attn.q_proj.weight");
      a.wk = take(p + "self_attn.k_proj.weight");
      a.wv = take(p + "self_attn.v_proj.weight");
      a.wo = take(p + "self_attn.o_proj.weight");
      a.bq = take(p + "self_attn.q_proj.bias", true);
      a.bk = take(p + "self_attn.k_proj.bias", true);
      a.bv = take(p + "self_attn.v_proj.bias", true);
      a.bo = take(p + "self_attn.o_proj.bias", true);
      L.gate = take(p + "mlp.gate_proj.weight");
      L.up = take(p + "mlp.up_proj.weight");
      L.down = take(p + "mlp.down_proj.weight");
      m.layers_.push_back(std::move(L));
    }
    if (!st.ok()) return st;
    return m;
  }

  // Logits [T, vocab] (float) of one full forward over `ids`.
  std::vector<float> Logits(const std::vector<int32_t>& ids, const RefMask& mask) const {
    const int64_t T = static_cast<int64_t>(ids.size()), d = dims_.hidden;
    std::vector<double> h(static_cast<size_t>(T * d)), xn(h.size());
    for (int64_t t = 0; t < T; ++t) {
      std::copy_n(&embed_[ids[t] * d], d, &h[t * d]);
    }
    for (const Layer& L : layers_) {
      for (int64_t t = 0; t < T; ++t) RefRmsNorm(&h[t * d], L.in_norm, dims_.eps, d, &xn[t * d]);
      const std::vector<double> a = L.attn.Forward(xn, T, mask);
      for (size_t i = 0; i < h.size(); ++i) h[i] += a[i];
      for (int64_t t = 0; t < T; ++t) RefRmsNorm(&h[t * d], L.post_norm, dims_.eps, d, &xn[t * d]);
      std::vector<double> g = RefAttention::Project(xn, T, d, L.gate, {}, dims_.inter);
      const std::vector<double> u = RefAttention::Project(xn, T, d, L.up, {}, dims_.inter);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const std::vector<double> y = RefAttention::Project(g, T, dims_.inter, L.down, {}, d);
      for (size_t i = 0; i < h.size(); ++i) h[i] += y[i];
    }
    for (int64_t t = 0; t < T; ++t) RefRmsNorm(&h[t * d], final_norm_, dims_.eps, d, &xn[t * d]);
    const std::vector<double> logits = RefAttention::Project(xn, T, d, lm_head_, {}, dims_.vocab);
    return std::vector<float>(logits.begin(), logits.end());
  }

 private:
  struct Layer {
    std::vector<double> in_norm, post_norm, gate, up, down;
    RefAttention attn;
  };
  RefLlamaDims dims_;
  std::vector<double> embed_, final_norm_, lm_head_;
  std::vector<Layer> layers_;
};

}  // namespace hyla::testing

#endif  // HYLA_TESTS_GOLDEN_LLAMA_LLAMA_REFERENCE_H_
