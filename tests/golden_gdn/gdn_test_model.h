// Test helpers for GDN-family checkpoints beyond the golden fixture: a random fla-style
// checkpoint writer (config.json with the keys of fla's GatedDeltaNetConfig, optional hybrid
// "attn" layers, tensors with fla's names and shapes) and an independent float64 reference
// forward of a pure-GDN model, written from the equations of fla's GatedDeltaNet layer
// (reference/models.md §0 and §3) rather than from the code under test.
#ifndef HYLA_TESTS_GOLDEN_GDN_GDN_TEST_MODEL_H_
#define HYLA_TESTS_GOLDEN_GDN_GDN_TEST_MODEL_H_

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/model/safetensors.h"

namespace hyla::testing {

// A fresh directory under /tmp, removed with its contents on destruction.
class GdnTempDir {
 public:
  GdnTempDir() {
    std::string templ = "/tmp/hyla_gdn_test_XXXXXX";
    char* made = ::mkdtemp(templ.data());
    EXPECT_NE(made, nullptr) << "mkdtemp failed";
    if (made != nullptr) path_ = made;
  }
  ~GdnTempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  GdnTempDir(const GdnTempDir&) = delete;
  GdnTempDir& operator=(const GdnTempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// One hybrid attention layer group (fla HybridAttentionSpec).
struct TestAttnSpec {
  std::vector<int> layers;
  int num_heads = 2;
  int num_kv_heads = 0;  // 0: omitted (fla default: num_heads)
  bool qkv_bias = false;
  int window_size = 0;  // 0: omitted (full attention)
};

struct TestGdnShape {
  int vocab = 64;
  int hidden = 48;
  int layers = 2;
  int inter = 80;
  int num_heads = 2;
  int num_v_heads = 0;  // 0: null
  int head_dim = 8;
  double expand_v = 2.0;
  bool use_gate = true;
  bool use_short_conv = true;
  bool allow_neg_eigval = false;
  int conv_size = 4;
  double norm_eps = 1e-6;
  std::vector<TestAttnSpec> attn;
  int HV() const { return num_v_heads > 0 ? num_v_heads : num_heads; }
  int dv() const { return static_cast<int>(head_dim * expand_v); }
};

// The float values of every tensor, by name (also what the reference forward reads).
using TestWeights = std::map<std::string, std::vector<float>>;

inline std::string GdnConfigJson(const TestGdnShape& s) {
  std::string attn = "null";
  if (!s.attn.empty()) {
    attn = "[";
    for (size_t i = 0; i < s.attn.size(); ++i) {
      const TestAttnSpec& a = s.attn[i];
      std::string layers;
      for (size_t j = 0; j < a.layers.size(); ++j) {
        absl::StrAppend(&layers, j ? ", " : "", a.layers[j]);
      }
      absl::StrAppend(&attn, i ? ", " : "", "{\"layers\": [", layers,
                      "], \"num_heads\": ", a.num_heads);
      if (a.num_kv_heads > 0) absl::StrAppend(&attn, ", \"num_kv_heads\": ", a.num_kv_heads);
      if (a.qkv_bias) absl::StrAppend(&attn, ", \"qkv_bias\": true");
      if (a.window_size > 0) absl::StrAppend(&attn, ", \"window_size\": ", a.window_size);
      absl::StrAppend(&attn, "}");
    }
    attn += "]";
  }
  return absl::StrCat(
      "{\n  \"model_type\": \"gated_deltanet\",\n  \"architectures\": "
      "[\"GatedDeltaNetForCausalLM\"],\n",
      "  \"vocab_size\": ", s.vocab, ",\n  \"hidden_size\": ", s.hidden,
      ",\n  \"num_hidden_layers\": ", s.layers, ",\n  \"intermediate_size\": ", s.inter,
      ",\n  \"hidden_ratio\": 4,\n  \"num_heads\": ", s.num_heads, ",\n  \"num_v_heads\": ",
      s.num_v_heads > 0 ? absl::StrCat(s.num_v_heads) : std::string("null"),
      ",\n  \"head_dim\": ", s.head_dim, ",\n  \"expand_v\": ", s.expand_v,
      ",\n  \"use_gate\": ", s.use_gate ? "true" : "false",
      ",\n  \"use_short_conv\": ", s.use_short_conv ? "true" : "false",
      ",\n  \"allow_neg_eigval\": ", s.allow_neg_eigval ? "true" : "false",
      ",\n  \"conv_size\": ", s.conv_size, ",\n  \"norm_eps\": ", s.norm_eps,
      ",\n  \"attn\": ", attn,
      ",\n  \"attn_mode\": \"chunk\",\n  \"hidden_act\": \"swish\",\n  \"fuse_norm\": true,\n"
      "  \"tie_word_embeddings\": false,\n  \"dtype\": \"float32\",\n  \"bos_token_id\": 1,\n"
      "  \"eos_token_id\": 2,\n  \"max_position_embeddings\": 2048\n}\n");
}

// Writes dir/config.json and dir/model.safetensors with random weights (fla names and shapes);
// returns the weights.
inline TestWeights WriteRandomGdnCheckpoint(const TestGdnShape& s, const std::string& dir,
                                            uint32_t seed) {
  TestWeights w;
  std::mt19937 rng(seed);
  auto normal = [&](const std::string& name, int64_t n, float std) {
    std::normal_distribution<float> dist(0.0f, std);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = dist(rng);
    w[name] = v;
  };
  auto around_one = [&](const std::string& name, int64_t n) {
    std::uniform_real_distribution<float> dist(0.5f, 1.5f);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = dist(rng);
    w[name] = v;
  };
  std::vector<TensorToWrite> tensors;
  std::map<std::string, std::vector<int64_t>> shapes;
  const int64_t d = s.hidden, kd = int64_t{s.num_heads} * s.head_dim, HV = s.HV(), vd = HV * s.dv();
  auto shape = [&](const std::string& name, std::vector<int64_t> dims) { shapes[name] = dims; };
  normal("model.embeddings.weight", s.vocab * d, 1.0f);
  shape("model.embeddings.weight", {s.vocab, d});
  around_one("model.norm.weight", d);
  shape("model.norm.weight", {d});
  normal("lm_head.weight", s.vocab * d, 0.2f);
  shape("lm_head.weight", {s.vocab, d});
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    around_one(p + "attn_norm.weight", d);
    shape(p + "attn_norm.weight", {d});
    around_one(p + "mlp_norm.weight", d);
    shape(p + "mlp_norm.weight", {d});
    normal(p + "mlp.gate_proj.weight", s.inter * d, 0.15f);
    shape(p + "mlp.gate_proj.weight", {s.inter, d});
    normal(p + "mlp.up_proj.weight", s.inter * d, 0.15f);
    shape(p + "mlp.up_proj.weight", {s.inter, d});
    normal(p + "mlp.down_proj.weight", d * s.inter, 0.1f);
    shape(p + "mlp.down_proj.weight", {d, s.inter});
    const TestAttnSpec* spec = nullptr;
    for (const TestAttnSpec& a : s.attn) {
      for (int x : a.layers) {
        if (x == l) spec = &a;
      }
    }
    const std::string m = p + "attn.";
    if (spec != nullptr) {
      const int64_t hd = d / spec->num_heads;
      const int64_t kvd = hd * (spec->num_kv_heads > 0 ? spec->num_kv_heads : spec->num_heads);
      normal(m + "q_proj.weight", d * d, 0.2f);
      shape(m + "q_proj.weight", {d, d});
      normal(m + "k_proj.weight", kvd * d, 0.2f);
      shape(m + "k_proj.weight", {kvd, d});
      normal(m + "v_proj.weight", kvd * d, 0.2f);
      shape(m + "v_proj.weight", {kvd, d});
      normal(m + "o_proj.weight", d * d, 0.1f);
      shape(m + "o_proj.weight", {d, d});
      if (spec->qkv_bias) {
        normal(m + "q_proj.bias", d, 0.1f);
        shape(m + "q_proj.bias", {d});
        normal(m + "k_proj.bias", kvd, 0.1f);
        shape(m + "k_proj.bias", {kvd});
        normal(m + "v_proj.bias", kvd, 0.1f);
        shape(m + "v_proj.bias", {kvd});
      }
      continue;
    }
    normal(m + "q_proj.weight", kd * d, 0.2f);
    shape(m + "q_proj.weight", {kd, d});
    normal(m + "k_proj.weight", kd * d, 0.2f);
    shape(m + "k_proj.weight", {kd, d});
    normal(m + "v_proj.weight", vd * d, 0.2f);
    shape(m + "v_proj.weight", {vd, d});
    normal(m + "a_proj.weight", HV * d, 0.2f);
    shape(m + "a_proj.weight", {HV, d});
    normal(m + "b_proj.weight", HV * d, 0.3f);
    shape(m + "b_proj.weight", {HV, d});
    // fla's initialisation: A = U(0, 16) (here U(1, 16)), dt = logU(1e-3, 0.1) as inverse softplus.
    std::uniform_real_distribution<double> u01(0.0, 1.0);
    std::vector<float> a_log(HV), dt_bias(HV);
    for (int h = 0; h < HV; ++h) {
      a_log[h] = static_cast<float>(std::log(1.0 + 15.0 * u01(rng)));
      const double dt = std::exp(std::log(1e-3) + u01(rng) * (std::log(0.1) - std::log(1e-3)));
      dt_bias[h] = static_cast<float>(dt + std::log(-std::expm1(-dt)));
    }
    w[m + "A_log"] = a_log;
    shape(m + "A_log", {HV});
    w[m + "dt_bias"] = dt_bias;
    shape(m + "dt_bias", {HV});
    if (s.use_short_conv) {
      normal(m + "q_conv1d.weight", kd * s.conv_size, 0.4f);
      shape(m + "q_conv1d.weight", {kd, 1, s.conv_size});
      normal(m + "k_conv1d.weight", kd * s.conv_size, 0.4f);
      shape(m + "k_conv1d.weight", {kd, 1, s.conv_size});
      normal(m + "v_conv1d.weight", vd * s.conv_size, 0.4f);
      shape(m + "v_conv1d.weight", {vd, 1, s.conv_size});
    }
    if (s.use_gate) {
      normal(m + "g_proj.weight", vd * d, 0.2f);
      shape(m + "g_proj.weight", {vd, d});
    }
    around_one(m + "o_norm.weight", s.dv());
    shape(m + "o_norm.weight", {s.dv()});
    normal(m + "o_proj.weight", d * vd, 0.1f);
    shape(m + "o_proj.weight", {d, vd});
  }
  for (const auto& [name, values] : w) {
    TensorToWrite t;
    t.name = name;
    t.dtype = DType::kF32;
    t.shape = shapes.at(name);
    t.bytes.resize(values.size() * sizeof(float));
    std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
    tensors.push_back(std::move(t));
  }
  std::ofstream(dir + "/config.json") << GdnConfigJson(s);
  const absl::Status st = WriteSafetensors(dir + "/model.safetensors", tensors);
  EXPECT_TRUE(st.ok()) << st;
  return w;
}

// Float64 forward of the model over `ids`: logits [T, vocab]. Hybrid attention layers follow
// fla's Attention (fla/layers/attn.py): head_dim = hidden / num_heads, optional q/k/v biases,
// RoPE rotate-half over the whole head (theta 10000, angle pos·inv_freq formed in fp32 as fla's
// rotary cache does), causal softmax with scale head_dim^-1/2 over keys j in [t − W + 1, t]
// with a window W (flash-attn window (W − 1, 0)), GQA query head h reading KV head
// h / (num_heads / num_kv_heads), o_proj without bias.
inline std::vector<double> ReferenceGdnLogits(const TestGdnShape& s, const TestWeights& w,
                                              const std::vector<int32_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size()), d = s.hidden;
  const int H = s.num_heads, HV = s.HV(), dk = s.head_dim, dv = s.dv();
  const int64_t kd = int64_t{H} * dk, vd = int64_t{HV} * dv;
  const double eps = s.norm_eps;
  auto W = [&](const std::string& name) -> const std::vector<float>& { return w.at(name); };
  auto linear = [](const std::vector<double>& x, int64_t rows, int64_t in,
                   const std::vector<float>& wt, int64_t out) {
    std::vector<double> y(static_cast<size_t>(rows * out), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t o = 0; o < out; ++o) {
        double acc = 0;
        for (int64_t k = 0; k < in; ++k) acc += x[r * in + k] * wt[o * in + k];
        y[r * out + o] = acc;
      }
    }
    return y;
  };
  auto rmsnorm = [](const double* x, const float* wt, double e, int64_t n, double* out) {
    double ms = 0;
    for (int64_t i = 0; i < n; ++i) ms += x[i] * x[i];
    const double inv = 1.0 / std::sqrt(ms / n + e);
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * wt[i];
  };
  auto sigmoid = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  auto silu = [&](double x) { return x * sigmoid(x); };

  std::vector<double> h(static_cast<size_t>(T * d));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < d; ++i) h[t * d + i] = W("model.embeddings.weight")[ids[t] * d + i];
  }
  std::vector<double> xn(h.size());
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    const std::string m = p + "attn.";
    for (int64_t t = 0; t < T; ++t) {
      rmsnorm(&h[t * d], W(p + "attn_norm.weight").data(), eps, d, &xn[t * d]);
    }
    const TestAttnSpec* spec = nullptr;
    for (const TestAttnSpec& as : s.attn) {
      for (int x : as.layers) {
        if (x == l) spec = &as;
      }
    }
    if (spec != nullptr) {
      const int nh = spec->num_heads, nkv = spec->num_kv_heads > 0 ? spec->num_kv_heads : nh;
      const int64_t hd = d / nh;
      std::vector<double> aq = linear(xn, T, d, W(m + "q_proj.weight"), nh * hd);
      std::vector<double> ak = linear(xn, T, d, W(m + "k_proj.weight"), nkv * hd);
      std::vector<double> av = linear(xn, T, d, W(m + "v_proj.weight"), nkv * hd);
      if (spec->qkv_bias) {
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t i = 0; i < nh * hd; ++i) aq[t * nh * hd + i] += W(m + "q_proj.bias")[i];
          for (int64_t i = 0; i < nkv * hd; ++i) {
            ak[t * nkv * hd + i] += W(m + "k_proj.bias")[i];
            av[t * nkv * hd + i] += W(m + "v_proj.bias")[i];
          }
        }
      }
      auto rope = [&](double* x, int64_t pos) {
        const int64_t half = hd / 2;
        for (int64_t i = 0; i < half; ++i) {
          const float inv_freq = 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / hd);
          const double angle = static_cast<float>(pos) * inv_freq;
          const double a0 = x[i], a1 = x[i + half];
          x[i] = a0 * std::cos(angle) - a1 * std::sin(angle);
          x[i + half] = a1 * std::cos(angle) + a0 * std::sin(angle);
        }
      };
      for (int64_t t = 0; t < T; ++t) {
        for (int hh = 0; hh < nh; ++hh) rope(&aq[(t * nh + hh) * hd], t);
        for (int hh = 0; hh < nkv; ++hh) rope(&ak[(t * nkv + hh) * hd], t);
      }
      std::vector<double> ao(static_cast<size_t>(T * nh * hd), 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t first =
            spec->window_size > 0 ? std::max<int64_t>(0, t - spec->window_size + 1) : 0;
        for (int hh = 0; hh < nh; ++hh) {
          const int kvh = hh / (nh / nkv);
          std::vector<double> logit;
          double mx = -1e300;
          for (int64_t j = first; j <= t; ++j) {
            double dot = 0;
            for (int64_t i = 0; i < hd; ++i)
              dot += aq[(t * nh + hh) * hd + i] * ak[(j * nkv + kvh) * hd + i];
            logit.push_back(dot / std::sqrt(double(hd)));
            mx = std::max(mx, logit.back());
          }
          double z = 0;
          for (double& x : logit) z += (x = std::exp(x - mx));
          for (int64_t j = first; j <= t; ++j) {
            for (int64_t i = 0; i < hd; ++i) {
              ao[(t * nh + hh) * hd + i] += logit[j - first] / z * av[(j * nkv + kvh) * hd + i];
            }
          }
        }
      }
      const std::vector<double> mix = linear(ao, T, nh * hd, W(m + "o_proj.weight"), d);
      for (size_t i = 0; i < h.size(); ++i) h[i] += mix[i];
    } else {
      std::vector<double> q = linear(xn, T, d, W(m + "q_proj.weight"), kd);
      std::vector<double> k = linear(xn, T, d, W(m + "k_proj.weight"), kd);
      std::vector<double> v = linear(xn, T, d, W(m + "v_proj.weight"), vd);
      const std::vector<double> a = linear(xn, T, d, W(m + "a_proj.weight"), HV);
      const std::vector<double> b = linear(xn, T, d, W(m + "b_proj.weight"), HV);
      // Causal depthwise conv (zero history) + SiLU, or SiLU alone.
      auto conv = [&](std::vector<double>* x, int64_t ch, const std::string& name) {
        std::vector<double> y(x->size());
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t c = 0; c < ch; ++c) {
            double acc;
            if (s.use_short_conv) {
              acc = 0;
              for (int j = 0; j < s.conv_size; ++j) {
                const int64_t src = t - (s.conv_size - 1) + j;
                if (src >= 0) acc += (*x)[src * ch + c] * W(name)[c * s.conv_size + j];
              }
            } else {
              acc = (*x)[t * ch + c];
            }
            y[t * ch + c] = silu(acc);
          }
        }
        *x = y;
      };
      conv(&q, kd, m + "q_conv1d.weight");
      conv(&k, kd, m + "k_conv1d.weight");
      conv(&v, vd, m + "v_conv1d.weight");
      std::vector<double> gate;
      if (s.use_gate) gate = linear(xn, T, d, W(m + "g_proj.weight"), vd);
      std::vector<double> o(static_cast<size_t>(T * vd));
      for (int hv = 0; hv < HV; ++hv) {
        const int hq = hv / (HV / H);  // GVA: value head hv reads q/k head hv / (HV/H)
        std::vector<double> S(static_cast<size_t>(dk * dv), 0.0);
        const double neg_a = -std::exp(double(W(m + "A_log")[hv]));
        for (int64_t t = 0; t < T; ++t) {
          std::vector<double> qn(dk), kn(dk);
          double qs = 0, ks = 0;
          for (int i = 0; i < dk; ++i) {
            qn[i] = q[t * kd + hq * dk + i];
            kn[i] = k[t * kd + hq * dk + i];
            qs += qn[i] * qn[i];
            ks += kn[i] * kn[i];
          }
          for (int i = 0; i < dk; ++i) {
            qn[i] = qn[i] / std::sqrt(qs + 1e-6) / std::sqrt(double(dk));
            kn[i] = kn[i] / std::sqrt(ks + 1e-6);
          }
          const double x = a[t * HV + hv] + W(m + "dt_bias")[hv];
          const double g = neg_a * (x > 20 ? x : std::log1p(std::exp(x)));
          const double beta = sigmoid(b[t * HV + hv]) * (s.allow_neg_eigval ? 2.0 : 1.0);
          const double alpha = std::exp(g);
          // S ← α(I − βkkᵀ)S + βkvᵀ, written as decay, residual, rank-1 update.
          std::vector<double> kS(dv, 0.0);
          for (int i = 0; i < dk; ++i) {
            for (int j = 0; j < dv; ++j) kS[j] += kn[i] * alpha * S[i * dv + j];
          }
          for (int i = 0; i < dk; ++i) {
            for (int j = 0; j < dv; ++j) {
              S[i * dv + j] = alpha * S[i * dv + j] - beta * kn[i] * kS[j] +
                              beta * kn[i] * v[t * vd + hv * dv + j];
            }
          }
          double* oh = &o[t * vd + hv * dv];
          for (int j = 0; j < dv; ++j) {
            double acc = 0;
            for (int i = 0; i < dk; ++i) acc += S[i * dv + j] * qn[i];
            oh[j] = acc;
          }
          rmsnorm(oh, W(m + "o_norm.weight").data(), eps, dv, oh);
          if (s.use_gate) {
            for (int j = 0; j < dv; ++j) oh[j] *= silu(gate[t * vd + hv * dv + j]);
          }
        }
      }
      const std::vector<double> mix = linear(o, T, vd, W(m + "o_proj.weight"), d);
      for (size_t i = 0; i < h.size(); ++i) h[i] += mix[i];
    }
    for (int64_t t = 0; t < T; ++t) {
      rmsnorm(&h[t * d], W(p + "mlp_norm.weight").data(), eps, d, &xn[t * d]);
    }
    std::vector<double> g1 = linear(xn, T, d, W(p + "mlp.gate_proj.weight"), s.inter);
    const std::vector<double> u1 = linear(xn, T, d, W(p + "mlp.up_proj.weight"), s.inter);
    for (size_t i = 0; i < g1.size(); ++i) g1[i] = silu(g1[i]) * u1[i];
    const std::vector<double> mlp = linear(g1, T, s.inter, W(p + "mlp.down_proj.weight"), d);
    for (size_t i = 0; i < h.size(); ++i) h[i] += mlp[i];
  }
  for (int64_t t = 0; t < T; ++t)
    rmsnorm(&h[t * d], W("model.norm.weight").data(), eps, d, &xn[t * d]);
  return linear(xn, T, d, W("lm_head.weight"), s.vocab);
}

}  // namespace hyla::testing

#endif  // HYLA_TESTS_GOLDEN_GDN_GDN_TEST_MODEL_H_
