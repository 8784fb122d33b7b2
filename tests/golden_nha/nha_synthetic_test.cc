// NHA shapes the fixture does not cover — GQA query groups, gsa_kv_shift below and above the
// window (slots fed by tokens leaving the window), SiLU short convolutions, a zero window, the
// misspelt `exapnd_k` — on small random checkpoints written here, against an independent
// double-precision model written from the reference equations in closed form (slot state as a
// decayed sum over the consumed tokens, not a recurrence).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/engine/sequence_runner.h"
#include "runtime/model/safetensors.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

using testing::MaxAbsDiff;
using testing::PrefillThenDecode;
using testing::RandomSplit;

struct Shape {
  int vocab = 61;
  int hidden = 48;
  int layers = 2;
  int heads = 4;
  int kv_heads = 2;
  double expand_k = 0.5;  // written as "exapnd_k": head_k_dim = 48 · 0.5 / 4 = 6
  int slots = 5;
  int window = 4;
  int kv_shift = 0;
  bool short_conv = false;
  int conv_size = 3;
  int inter = 64;
  double rope_theta = 10000.0;
  double normalizer = 8.0;
  // `attn`: this layer becomes a plain fla Attention (-1: none).
  int attn_layer = -1;
  int attn_heads = 4;
  int attn_kv_heads = 2;
  bool attn_bias = true;
  int attn_window = 0;  // 0: null (full attention)
  double attn_theta = 10000.0;

  int dk() const { return static_cast<int>(hidden * expand_k) / heads; }
  int dv() const { return hidden / heads; }
};

using Tensor = std::vector<double>;

struct Weights {
  Tensor embed, final_norm, lm_head;
  struct Layer {
    Tensor attn_norm, mlp_norm, gate, up, down;
    Tensor wq, wk, wv, wf, cq, ck, cv, g_norm, wo;
    Tensor bq, bk, bv;  // fla Attention layer with qkv_bias
  };
  std::vector<Layer> layers;
};

// Writes config.json + model.safetensors for `s` into `dir` and returns the weights.
Weights WriteCheckpoint(const Shape& s, const std::string& dir, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<TensorToWrite> out;
  auto make = [&](const std::string& name, std::vector<int64_t> shape, double std_dev,
                  double mean) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    Tensor t(static_cast<size_t>(n));
    TensorToWrite w;
    w.name = name;
    w.dtype = DType::kF32;
    w.shape = shape;
    w.bytes.resize(static_cast<size_t>(n) * 4);
    for (int64_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(mean + std_dev * normal(rng));
      t[static_cast<size_t>(i)] = v;
      std::memcpy(w.bytes.data() + 4 * i, &v, 4);
    }
    out.push_back(std::move(w));
    return t;
  };
  const int64_t d = s.hidden, qk = int64_t{s.heads} * s.dk(), kk = int64_t{s.kv_heads} * s.dk(),
                vv = int64_t{s.kv_heads} * s.dv(), ff = int64_t{s.kv_heads} * s.slots;
  Weights w;
  w.embed = make("model.embeddings.weight", {s.vocab, d}, 1.0, 0.0);
  w.final_norm = make("model.norm.weight", {d}, 0.1, 1.0);
  w.lm_head = make("lm_head.weight", {s.vocab, d}, 0.2, 0.0);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    Weights::Layer L;
    L.attn_norm = make(p + "attn_norm.weight", {d}, 0.1, 1.0);
    L.mlp_norm = make(p + "mlp_norm.weight", {d}, 0.1, 1.0);
    L.gate = make(p + "mlp.gate_proj.weight", {s.inter, d}, 0.15, 0.0);
    L.up = make(p + "mlp.up_proj.weight", {s.inter, d}, 0.15, 0.0);
    L.down = make(p + "mlp.down_proj.weight", {d, s.inter}, 0.15, 0.0);
    if (l == s.attn_layer) {
      const int64_t kv = d / s.attn_heads * s.attn_kv_heads;
      L.wq = make(p + "attn.q_proj.weight", {d, d}, 0.3, 0.0);
      L.wk = make(p + "attn.k_proj.weight", {kv, d}, 0.3, 0.0);
      L.wv = make(p + "attn.v_proj.weight", {kv, d}, 0.3, 0.0);
      if (s.attn_bias) {
        L.bq = make(p + "attn.q_proj.bias", {d}, 0.3, 0.0);
        L.bk = make(p + "attn.k_proj.bias", {kv}, 0.3, 0.0);
        L.bv = make(p + "attn.v_proj.bias", {kv}, 0.3, 0.0);
      }
      L.wo = make(p + "attn.o_proj.weight", {d, d}, 0.2, 0.0);
      w.layers.push_back(std::move(L));
      continue;
    }
    L.wq = make(p + "attn.q_proj.weight", {qk, d}, 0.3, 0.0);
    L.wk = make(p + "attn.k_proj.weight", {kk, d}, 0.3, 0.0);
    L.wv = make(p + "attn.v_proj.weight", {vv, d}, 0.3, 0.0);
    L.wf = make(p + "attn.f_proj.weight", {ff, d}, 0.5, 0.0);
    if (s.short_conv) {
      L.cq = make(p + "attn.q_conv1d.weight", {qk, 1, s.conv_size}, 0.5, 0.0);
      L.ck = make(p + "attn.k_conv1d.weight", {kk, 1, s.conv_size}, 0.5, 0.0);
      L.cv = make(p + "attn.v_conv1d.weight", {vv, 1, s.conv_size}, 0.5, 0.0);
    }
    L.g_norm = make(p + "attn.g_norm.weight", {d}, 0.1, 1.0);
    L.wo = make(p + "attn.o_proj.weight", {d, int64_t{s.heads} * s.dv()}, 0.2, 0.0);
    w.layers.push_back(std::move(L));
  }
  std::filesystem::create_directories(dir);
  EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", out).ok());
  std::ofstream cfg(dir + "/config.json");
  cfg << "{\"model_type\": \"nha\", \"vocab_size\": " << s.vocab
      << ", \"hidden_size\": " << s.hidden << ", \"num_hidden_layers\": " << s.layers
      << ", \"num_heads\": " << s.heads << ", \"num_kv_heads\": " << s.kv_heads
      << ", \"exapnd_k\": " << s.expand_k << ", \"num_slots\": " << s.slots
      << ", \"window_size\": " << s.window << ", \"gsa_kv_shift\": " << s.kv_shift
      << ", \"use_short_conv\": " << (s.short_conv ? "true" : "false")
      << ", \"conv_size\": " << s.conv_size << ", \"intermediate_size\": " << s.inter
      << ", \"rope_theta\": " << s.rope_theta << ", \"gate_logit_normalizer\": " << s.normalizer
      << ", \"norm_eps\": 1e-06, \"tie_word_embeddings\": false, \"attn\": ";
  if (s.attn_layer < 0) {
    cfg << "null}";
  } else {
    cfg << "{\"layers\": [" << s.attn_layer << "], \"num_heads\": " << s.attn_heads
        << ", \"num_kv_heads\": " << s.attn_kv_heads
        << ", \"qkv_bias\": " << (s.attn_bias ? "true" : "false") << ", \"window_size\": ";
    if (s.attn_window > 0) {
      cfg << s.attn_window;
    } else {
      cfg << "null";
    }
    cfg << ", \"rope_theta\": " << s.attn_theta << "}}";
  }
  return w;
}

// ---- The independent double-precision model ------------------------------------------------

Tensor Matmul(const Tensor& x, int64_t rows, int64_t in, const Tensor& w, int64_t out) {
  Tensor y(static_cast<size_t>(rows * out), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += x[r * in + k] * w[o * in + k];
      y[r * out + o] = acc;
    }
  }
  return y;
}

Tensor RmsNormRowsRef(const Tensor& x, int64_t rows, int64_t n, const Tensor& w, double eps) {
  Tensor y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += x[r * n + i] * x[r * n + i];
    const double inv = 1.0 / std::sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = x[r * n + i] * inv * w[i];
  }
  return y;
}

double SiluRef(double x) { return x / (1.0 + std::exp(-x)); }

// Causal depthwise conv (kernel K, zero history) then SiLU: fla ShortConvolution.
Tensor ConvRef(const Tensor& x, int64_t rows, int64_t ch, const Tensor& w, int K) {
  Tensor y(x.size());
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t c = 0; c < ch; ++c) {
      double acc = 0;
      for (int j = 0; j < K; ++j) {
        const int64_t src = t - (K - 1) + j;
        if (src >= 0) acc += w[c * K + j] * x[src * ch + c];
      }
      y[t * ch + c] = SiluRef(acc);
    }
  }
  return y;
}

// RoPE (rotate-half) of one head vector at position pos, fla RotaryEmbedding.
std::vector<double> RopeRef(const double* x, int dk, int64_t pos, double theta) {
  std::vector<double> y(static_cast<size_t>(dk));
  const int half = dk / 2;
  for (int i = 0; i < half; ++i) {
    const double inv = 1.0 / std::pow(theta, 2.0 * i / dk);
    const double a = pos * inv;
    y[i] = x[i] * std::cos(a) - x[i + half] * std::sin(a);
    y[i + half] = x[i + half] * std::cos(a) + x[i] * std::sin(a);
  }
  return y;
}

// NativeHybridAttention over a whole sequence: x [T, d] → [T, d].
Tensor NhaMixerRef(const Shape& s, const Weights::Layer& L, const Tensor& x, int64_t T) {
  const int dk = s.dk(), dv = s.dv(), M = s.slots, H = s.heads, Hkv = s.kv_heads;
  const int G = H / Hkv;
  const int64_t d = s.hidden;
  Tensor q = Matmul(x, T, d, L.wq, int64_t{H} * dk);
  Tensor k = Matmul(x, T, d, L.wk, int64_t{Hkv} * dk);
  Tensor v = Matmul(x, T, d, L.wv, int64_t{Hkv} * dv);
  Tensor f = Matmul(x, T, d, L.wf, int64_t{Hkv} * M);
  if (s.short_conv) {
    q = ConvRef(q, T, int64_t{H} * dk, L.cq, s.conv_size);
    k = ConvRef(k, T, int64_t{Hkv} * dk, L.ck, s.conv_size);
    v = ConvRef(v, T, int64_t{Hkv} * dv, L.cv, s.conv_size);
  }
  for (double& e : v) e = SiluRef(e);
  for (double& e : f)
    e = (e < 0 ? e - std::log1p(std::exp(e)) : -std::log1p(std::exp(-e))) / s.normalizer;
  Tensor o(static_cast<size_t>(T * H * dv), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const int kh = h / G;
      const double* qt = &q[(t * H + h) * dk];
      // Slots after consuming tokens j ≤ t − kv_shift, in closed form: each consumed token's
      // write s_j, decayed by 2^(Σ f_r) over the later consumed tokens r (fla's exp2 kernels).
      std::vector<double> logits;
      std::vector<std::vector<double>> values;
      const int64_t last = t - s.kv_shift;
      for (int m = 0; m < M; ++m) {
        std::vector<double> hk(static_cast<size_t>(dk), 0.0), hv(static_cast<size_t>(dv), 0.0);
        for (int64_t j = 0; j <= last; ++j) {
          double logdecay = 0;
          for (int64_t r = j + 1; r <= last; ++r) logdecay += f[(r * Hkv + kh) * M + m];
          const double fj = f[(j * Hkv + kh) * M + m];
          const double wgt = std::exp2(logdecay) * (1.0 - std::exp(fj));
          for (int i = 0; i < dk; ++i) hk[i] += wgt * SiluRef(k[(j * Hkv + kh) * dk + i]);
          for (int i = 0; i < dv; ++i) hv[i] += wgt * v[(j * Hkv + kh) * dv + i];
        }
        double l = 0;
        for (int i = 0; i < dk; ++i) l += SiluRef(qt[i]) * hk[i];
        logits.push_back(l);  // scale 1
        values.push_back(hv);
      }
      const std::vector<double> qr = RopeRef(qt, dk, t, s.rope_theta);
      for (int64_t i = std::max<int64_t>(0, t - s.window); i <= t; ++i) {
        const std::vector<double> kr = RopeRef(&k[(i * Hkv + kh) * dk], dk, i, s.rope_theta);
        double l = 0;
        for (int j = 0; j < dk; ++j) l += qr[j] * kr[j];
        logits.push_back(l);
        values.emplace_back(&v[(i * Hkv + kh) * dv], &v[(i * Hkv + kh) * dv] + dv);
      }
      double mx = -INFINITY, z = 0;
      for (double l : logits) mx = std::max(mx, l);
      for (double l : logits) z += std::exp(l - mx);
      for (size_t n = 0; n < logits.size(); ++n) {
        const double p = std::exp(logits[n] - mx) / z;
        for (int i = 0; i < dv; ++i) o[(t * H + h) * dv + i] += p * values[n][i];
      }
    }
  }
  for (double& e : o) e = SiluRef(e);
  o = RmsNormRowsRef(o, T, int64_t{H} * dv, L.g_norm, 1e-5);
  return Matmul(o, T, int64_t{H} * dv, L.wo, d);
}

// fla Attention: GQA, RoPE on the whole head, scale head_dim^-1/2, window W = W keys.
Tensor AttentionRef(const Shape& s, const Weights::Layer& L, const Tensor& x, int64_t T) {
  const int64_t d = s.hidden;
  const int H = s.attn_heads, Hkv = s.attn_kv_heads;
  const int hd = static_cast<int>(d / H), G = H / Hkv;
  Tensor q = Matmul(x, T, d, L.wq, d);
  Tensor k = Matmul(x, T, d, L.wk, int64_t{Hkv} * hd);
  Tensor v = Matmul(x, T, d, L.wv, int64_t{Hkv} * hd);
  if (s.attn_bias) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < d; ++i) q[t * d + i] += L.bq[i];
      for (int64_t i = 0; i < int64_t{Hkv} * hd; ++i) {
        k[t * Hkv * hd + i] += L.bk[i];
        v[t * Hkv * hd + i] += L.bv[i];
      }
    }
  }
  Tensor o(static_cast<size_t>(T * d), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const int kh = h / G;
      const std::vector<double> qr = RopeRef(&q[(t * H + h) * hd], hd, t, s.attn_theta);
      const int64_t first = s.attn_window > 0 ? std::max<int64_t>(0, t - s.attn_window + 1) : 0;
      std::vector<double> logits;
      for (int64_t j = first; j <= t; ++j) {
        const std::vector<double> kr = RopeRef(&k[(j * Hkv + kh) * hd], hd, j, s.attn_theta);
        double l = 0;
        for (int i = 0; i < hd; ++i) l += qr[i] * kr[i];
        logits.push_back(l / std::sqrt(static_cast<double>(hd)));
      }
      double mx = -INFINITY, z = 0;
      for (double l : logits) mx = std::max(mx, l);
      for (double l : logits) z += std::exp(l - mx);
      for (int64_t j = first; j <= t; ++j) {
        const double p = std::exp(logits[static_cast<size_t>(j - first)] - mx) / z;
        for (int i = 0; i < hd; ++i) o[(t * H + h) * hd + i] += p * v[(j * Hkv + kh) * hd + i];
      }
    }
  }
  return Matmul(o, T, d, L.wo, d);
}

std::vector<float> ModelRef(const Shape& s, const Weights& w, const std::vector<int32_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size()), d = s.hidden;
  Tensor h(static_cast<size_t>(T * d));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < d; ++i) h[t * d + i] = w.embed[ids[t] * d + i];
  }
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const Weights::Layer& L = w.layers[l];
    const Tensor xn = RmsNormRowsRef(h, T, d, L.attn_norm, 1e-6);
    const Tensor mix =
        static_cast<int>(l) == s.attn_layer ? AttentionRef(s, L, xn, T) : NhaMixerRef(s, L, xn, T);
    for (size_t i = 0; i < h.size(); ++i) h[i] += mix[i];
    const Tensor x = RmsNormRowsRef(h, T, d, L.mlp_norm, 1e-6);
    Tensor g = Matmul(x, T, d, L.gate, s.inter);
    const Tensor u = Matmul(x, T, d, L.up, s.inter);
    for (size_t i = 0; i < g.size(); ++i) g[i] = SiluRef(g[i]) * u[i];
    const Tensor y = Matmul(g, T, s.inter, L.down, d);
    for (size_t i = 0; i < h.size(); ++i) h[i] += y[i];
  }
  const Tensor logits =
      Matmul(RmsNormRowsRef(h, T, d, w.final_norm, 1e-6), T, d, w.lm_head, s.vocab);
  return std::vector<float>(logits.begin(), logits.end());
}

// ---- Tests ----------------------------------------------------------------------------------

constexpr float kTol = 1e-4f;  // fp32 server against the fp64 model

void CheckShape(const Shape& s, const std::string& name, uint32_t seed) {
  const std::string dir = ::testing::TempDir() + "/nha_synthetic_" + name;
  const Weights w = WriteCheckpoint(s, dir, seed);
  auto backend = testing::LoadCpuBackend(dir);
  ASSERT_TRUE(backend.ok()) << backend.status();
  const int nha_layer = s.attn_layer == 0 ? 1 : 0;
  const NhaLayerConfig& c = (*backend)->config().layers[nha_layer].nha;
  ASSERT_EQ(c.head_k_dim, s.dk());
  ASSERT_EQ(c.num_kv_heads, s.kv_heads);
  ASSERT_EQ(c.kv_shift, s.kv_shift);

  std::mt19937 rng(seed + 1);
  std::uniform_int_distribution<int32_t> tok(0, s.vocab - 1);
  std::vector<int32_t> ids(40);
  for (int32_t& t : ids) t = tok(rng);
  const std::vector<float> ref = ModelRef(s, w, ids);

  auto whole = RunSequenceLogits(**backend, ids, {});
  ASSERT_TRUE(whole.ok()) << whole.status();
  const float diff = MaxAbsDiff(*whole, ref);
  std::printf("nha synthetic %s: max |diff| vs fp64 model = %.3g\n", name.c_str(), diff);
  EXPECT_LE(diff, kTol);

  for (const std::vector<int64_t>& chunks :
       {PrefillThenDecode(40, 9), RandomSplit(40, 7, seed), std::vector<int64_t>(40, 1)}) {
    auto split = RunSequenceLogits(**backend, ids, chunks);
    ASSERT_TRUE(split.ok()) << split.status();
    EXPECT_EQ(MaxAbsDiff(*split, *whole), 0.0f) << name;
  }
}

TEST(NhaSyntheticTest, GqaNoShift) {
  Shape s;
  CheckShape(s, "gqa", 11);
}

TEST(NhaSyntheticTest, ShiftInsideWindow) {
  Shape s;
  s.window = 6;
  s.kv_shift = 3;
  CheckShape(s, "shift3_w6", 12);
}

TEST(NhaSyntheticTest, ShiftEqualsWindow) {
  Shape s;
  s.window = 5;
  s.kv_shift = 5;  // the hybridised-LLM setting: slots and window partition the past
  CheckShape(s, "shift5_w5", 13);
}

TEST(NhaSyntheticTest, ShiftBeyondWindow) {
  Shape s;
  s.window = 3;
  s.kv_shift = 8;
  CheckShape(s, "shift8_w3", 14);
}

TEST(NhaSyntheticTest, ShortConvolutions) {
  Shape s;
  s.short_conv = true;
  s.conv_size = 4;
  s.kv_shift = 2;
  CheckShape(s, "conv4", 15);
}

TEST(NhaSyntheticTest, ZeroWindow) {
  Shape s;
  s.window = 0;  // each query sees only itself besides the slots
  s.heads = 2;
  s.kv_heads = 1;
  s.expand_k = 0.25;
  s.rope_theta = 500.0;
  CheckShape(s, "w0", 16);
}

TEST(NhaSyntheticTest, HybridWithSlidingWindowAttentionLayer) {
  Shape s;
  s.layers = 3;
  s.attn_layer = 1;
  s.attn_window = 7;  // fla Attention: 7 keys including the query
  s.attn_theta = 30000.0;
  s.kv_shift = 4;
  CheckShape(s, "hybrid_swa", 17);
}

TEST(NhaSyntheticTest, HybridWithFullAttentionLayer) {
  Shape s;
  s.layers = 2;
  s.attn_layer = 0;
  s.attn_bias = false;
  s.attn_heads = 2;
  s.attn_kv_heads = 2;
  CheckShape(s, "hybrid_full", 18);
}

}  // namespace
}  // namespace hyla
