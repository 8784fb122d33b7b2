// The NAtS-L layer variants the golden fixture does not exercise (decay_for_non_gdn_blocks=false,
// attn_qk_norm=false, attn_with_short_conv=false, use_short_conv=false, other conv sizes,
// allow_neg_eigval) against an independent whole-sequence oracle written here the way the
// reference's chunk-mode forward is organised: the routing of every complete chunk decided up
// front from the chunk means, the softmax branch as a dense mask over all tokens, and the gated
// delta net restarted at each chunk from the committed state of the previous chunks. The CPU
// backend computes the same function incrementally (block tables, running/committed states), in
// one prefill and in random splits.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/engine/sequence_runner.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/safetensors.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

using testing::MaxAbsDiff;
using testing::RandomSplit;

struct Variant {
  std::string name;
  bool decay = true;
  bool qk_norm = true;
  bool attn_short_conv = true;
  bool short_conv = true;
  int conv_size = 4;
  bool neg_eigval = false;
};

// Model shape: NAtS-L layers only, H = 2 decision heads, dk = 16, dv = 32, Ha = 4 (G = 2,
// d_ak = 8, d_av = 16).
constexpr int kVocab = 64, kHidden = 32, kLayers = 2, kInter = 64;
constexpr int kH = 2, kDk = 16, kDv = 32, kHa = 4;
constexpr int kKd = kH * kDk, kVd = kH * kDv, kG = kHa / kH, kDak = kKd / kHa, kDav = kVd / kHa;
constexpr float kEps = 1e-6f;

// A deterministic generator of N(0, 1)-ish values (sum of uniforms), independent of <random>.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  float Uniform() {
    s_ ^= s_ << 13;
    s_ ^= s_ >> 7;
    s_ ^= s_ << 17;
    return static_cast<float>((s_ >> 40) & 0xFFFFFF) / 16777216.0f;
  }
  float Normal() {
    float s = 0;
    for (int i = 0; i < 12; ++i) s += Uniform();
    return s - 6.0f;
  }

 private:
  uint64_t s_;
};

using Weights = std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>;

Weights MakeWeights(const Variant& v, uint64_t seed) {
  Rng rng(seed);
  Weights w;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float std, float mean = 0) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    std::vector<float> values(static_cast<size_t>(n));
    for (float& x : values) x = mean + std * rng.Normal();
    w[name] = {shape, values};
  };
  add("model.embeddings.weight", {kVocab, kHidden}, 1.0f);
  add("model.norm.weight", {kHidden}, 0.1f, 1.0f);
  add("lm_head.weight", {kVocab, kHidden}, 0.2f);
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "attn_norm.weight", {kHidden}, 0.1f, 1.0f);
    add(p + "mlp_norm.weight", {kHidden}, 0.1f, 1.0f);
    add(p + "mlp.gate_proj.weight", {kInter, kHidden}, 0.2f);
    add(p + "mlp.up_proj.weight", {kInter, kHidden}, 0.2f);
    add(p + "mlp.down_proj.weight", {kHidden, kInter}, 0.2f);
    const std::string a = p + "attn.";
    add(a + "q_proj.weight", {kKd, kHidden}, 0.3f);
    add(a + "k_proj.weight", {kKd, kHidden}, 0.3f);
    add(a + "v_proj.weight", {kVd, kHidden}, 0.3f);
    add(a + "g_proj.weight", {kVd, kHidden}, 0.3f);
    add(a + "a_proj.weight", {kH, kHidden}, 0.3f);
    add(a + "b_proj.weight", {kH, kHidden}, 0.3f);
    add(a + "A_log", {kH}, 0.3f, 0.5f);
    add(a + "dt_bias", {kH}, 0.3f, -1.0f);
    if (v.short_conv) {
      add(a + "q_conv1d.weight", {kKd, 1, v.conv_size}, 0.5f);
      add(a + "k_conv1d.weight", {kKd, 1, v.conv_size}, 0.5f);
      add(a + "v_conv1d.weight", {kVd, 1, v.conv_size}, 0.5f);
    }
    if (v.qk_norm) {
      add(a + "q_norm.weight", {kDak}, 0.2f, 1.0f);
      add(a + "k_norm.weight", {kDak}, 0.2f, 1.0f);
    }
    // A strong router, so that chunks go both ways and margins are far above rounding.
    add(a + "nats_layer.weight", {2 * kH, kHidden}, 3.0f);
    add(a + "nats_out_weights_layer.weight", {2 * kHa, kKd}, 0.5f);
    add(a + "o_norm.weight1", {kDav}, 0.2f, 1.0f);
    add(a + "o_norm.weight2", {kDav}, 0.2f, 1.0f);
    add(a + "o_proj.weight", {kHidden, kVd}, 0.3f);
  }
  return w;
}

std::string ConfigJson(const Variant& v) {
  auto b = [](bool x) { return x ? "true" : "false"; };
  return absl::StrCat(
      R"({"model_type": "neural_attention_search_linear_attn_gdn", "vocab_size": )", kVocab,
      R"(, "hidden_size": )", kHidden, R"(, "num_hidden_layers": )", kLayers,
      R"(, "intermediate_size": )", kInter, R"(, "num_heads": )", kH, R"(, "head_dim": )", kDk,
      R"(, "expand_v": 2, "num_attn_heads": )", kHa,
      R"(, "gdn_layers": [], "nats_block_size": 64, "ops_for_incomplete_chunks": "all",
          "attn_apply_pos_encoding": false, "norm_eps": 1e-6, "tie_word_embeddings": false,
          "decay_for_non_gdn_blocks": )",
      b(v.decay), R"(, "attn_qk_norm": )", b(v.qk_norm), R"(, "attn_with_short_conv": )",
      b(v.attn_short_conv), R"(, "use_short_conv": )", b(v.short_conv), R"(, "conv_size": )",
      v.conv_size, R"(, "allow_neg_eigval": )", b(v.neg_eigval), "}");
}

std::string WriteModel(const Variant& v, const Weights& w) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/natsl_variant_", v.name, "_", ::getpid());
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << ConfigJson(v);
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, t] : w) {
    TensorToWrite tw;
    tw.name = name;
    tw.shape = t.first;
    tw.bytes.resize(t.second.size() * sizeof(float));
    std::memcpy(tw.bytes.data(), t.second.data(), tw.bytes.size());
    tensors.push_back(std::move(tw));
  }
  const absl::Status st = WriteSafetensors(dir + "/model.safetensors", tensors);
  EXPECT_TRUE(st.ok()) << st;
  return dir;
}

// ---- The oracle: plain loops over whole sequences. ----

using Mat = std::vector<float>;  // row-major

Mat MatMul(const Mat& x, int64_t rows, int64_t in, const Mat& w, int64_t out) {
  Mat y(static_cast<size_t>(rows * out), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      float acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += x[r * in + k] * w[o * in + k];
      y[r * out + o] = acc;
    }
  }
  return y;
}

void RmsNormVec(const float* x, const float* w, int64_t n, float* out) {
  float ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / n + kEps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * (w ? w[i] : 1.0f);
}

float SiluF(float x) { return x / (1.0f + std::exp(-x)); }
float SigmoidF(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// One NAtS-L layer over the whole sequence x [T, hidden] → [T, hidden]. `ops[c * kH + n]`
// receives the routing of every complete chunk.
Mat OracleLayer(const Variant& v, const Weights& w, const std::string& a, const Mat& x, int64_t T,
                std::vector<int>* ops) {
  auto W = [&](const std::string& name) -> const Mat& { return w.at(a + name).second; };
  const Mat q_raw = MatMul(x, T, kHidden, W("q_proj.weight"), kKd);
  const Mat k_raw = MatMul(x, T, kHidden, W("k_proj.weight"), kKd);
  const Mat v_raw = MatMul(x, T, kHidden, W("v_proj.weight"), kVd);
  const Mat z = MatMul(x, T, kHidden, W("g_proj.weight"), kVd);
  const Mat a_in = MatMul(x, T, kHidden, W("a_proj.weight"), kH);
  const Mat b_in = MatMul(x, T, kHidden, W("b_proj.weight"), kH);

  // Causal depthwise conv from zero history, then SiLU (or SiLU alone).
  auto conv = [&](const Mat& in, int64_t ch, const std::string& name) {
    Mat out(in.size());
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < ch; ++c) {
        float acc = 0;
        if (v.short_conv) {
          const Mat& k = W(name);
          for (int j = 0; j < v.conv_size; ++j) {
            const int64_t src = t - (v.conv_size - 1) + j;
            if (src >= 0) acc += in[src * ch + c] * k[c * v.conv_size + j];
          }
        } else {
          acc = in[t * ch + c];
        }
        out[t * ch + c] = SiluF(acc);
      }
    }
    return out;
  };
  const Mat q = conv(q_raw, kKd, "q_conv1d.weight");
  const Mat k = conv(k_raw, kKd, "k_conv1d.weight");
  const Mat val = conv(v_raw, kVd, "v_conv1d.weight");
  const Mat& qa_src = v.attn_short_conv ? q : q_raw;
  const Mat& ka_src = v.attn_short_conv ? k : k_raw;
  const Mat& va_src = v.attn_short_conv ? val : v_raw;

  // Routing of every complete chunk, from the chunk means (up front, as the reference).
  const int64_t full_chunks = T / 64;
  ops->assign(static_cast<size_t>(full_chunks * kH), 0);
  for (int64_t c = 0; c < full_chunks; ++c) {
    std::vector<float> mean(kHidden, 0.0f);
    for (int64_t t = c * 64; t < c * 64 + 64; ++t) {
      for (int i = 0; i < kHidden; ++i) mean[i] += x[t * kHidden + i];
    }
    for (float& m : mean) m /= 64.0f;
    const Mat logits = MatMul(mean, 1, kHidden, W("nats_layer.weight"), 2 * kH);
    for (int n = 0; n < kH; ++n) {
      (*ops)[c * kH + n] = logits[2 * n + 1] > logits[2 * n] ? 1 : 0;
    }
  }

  // Softmax branch with a dense mask.
  Mat o_attn(static_cast<size_t>(T * kVd), 0.0f);
  for (int ha = 0; ha < kHa; ++ha) {
    const int n = ha / kG;
    std::vector<Mat> qn(T, Mat(kDak)), kn(T, Mat(kDak));
    for (int64_t t = 0; t < T; ++t) {
      const float* qw = v.qk_norm ? W("q_norm.weight").data() : nullptr;
      const float* kw = v.qk_norm ? W("k_norm.weight").data() : nullptr;
      if (v.qk_norm) {
        RmsNormVec(&qa_src[t * kKd + ha * kDak], qw, kDak, qn[t].data());
        RmsNormVec(&ka_src[t * kKd + ha * kDak], kw, kDak, kn[t].data());
      } else {
        std::memcpy(qn[t].data(), &qa_src[t * kKd + ha * kDak], sizeof(float) * kDak);
        std::memcpy(kn[t].data(), &ka_src[t * kKd + ha * kDak], sizeof(float) * kDak);
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      std::vector<float> s;
      std::vector<int64_t> keys;
      for (int64_t j = 0; j <= t; ++j) {
        const int64_t cj = j / 64, ct = t / 64;
        const bool visible = cj == ct || (*ops)[cj * kH + n] == 0;
        if (!visible) continue;
        float dot = 0;
        for (int i = 0; i < kDak; ++i) dot += qn[t][i] * kn[j][i];
        s.push_back(dot / std::sqrt(static_cast<float>(kDak)));
        keys.push_back(j);
      }
      float m = s[0];
      for (float e : s) m = std::max(m, e);
      float sum = 0;
      for (float& e : s) sum += (e = std::exp(e - m));
      for (size_t i = 0; i < s.size(); ++i) {
        for (int d = 0; d < kDav; ++d) {
          o_attn[t * kVd + ha * kDav + d] += s[i] / sum * va_src[keys[i] * kVd + ha * kDav + d];
        }
      }
    }
  }

  // Gated delta net: per chunk, the recurrence from the committed state S_c.
  Mat o_gdn(static_cast<size_t>(T * kVd), 0.0f);
  const Mat& A_log = W("A_log");
  const Mat& dt_bias = W("dt_bias");
  for (int n = 0; n < kH; ++n) {
    Mat S_c(kDk * kDv, 0.0f);
    for (int64_t c0 = 0; c0 < T; c0 += 64) {
      Mat S = S_c;
      float g_sum = 0;
      for (int64_t t = c0; t < std::min<int64_t>(T, c0 + 64); ++t) {
        float qv[kDk], kv[kDk];
        float qs = 0, ks = 0;
        for (int i = 0; i < kDk; ++i) {
          qs += q[t * kKd + n * kDk + i] * q[t * kKd + n * kDk + i];
          ks += k[t * kKd + n * kDk + i] * k[t * kKd + n * kDk + i];
        }
        for (int i = 0; i < kDk; ++i) {
          qv[i] =
              q[t * kKd + n * kDk + i] / std::sqrt(qs + 1e-6f) / std::sqrt(static_cast<float>(kDk));
          kv[i] = k[t * kKd + n * kDk + i] / std::sqrt(ks + 1e-6f);
        }
        const float sp = a_in[t * kH + n] + dt_bias[n];
        const float g = -std::exp(A_log[n]) * (sp > 20 ? sp : std::log1p(std::exp(sp)));
        const float beta = SigmoidF(b_in[t * kH + n]) * (v.neg_eigval ? 2.0f : 1.0f);
        g_sum += g;
        for (float& e : S) e *= std::exp(g);
        for (int j = 0; j < kDv; ++j) {
          float sk = 0;
          for (int i = 0; i < kDk; ++i) sk += S[i * kDv + j] * kv[i];
          const float u = beta * (val[t * kVd + n * kDv + j] - sk);
          for (int i = 0; i < kDk; ++i) S[i * kDv + j] += kv[i] * u;
          float o = 0;
          for (int i = 0; i < kDk; ++i) o += S[i * kDv + j] * qv[i];
          o_gdn[t * kVd + n * kDv + j] = o;
        }
      }
      const int64_t c = c0 / 64;
      if (c < full_chunks) {
        if ((*ops)[c * kH + n] == 1) {
          S_c = S;
        } else if (v.decay) {
          for (float& e : S_c) e *= std::exp(g_sum);
        }
      }
    }
  }

  // Mixing weights from q̃, dual RMSNorm, gate, o_proj.
  const Mat mix = MatMul(q, T, kKd, W("nats_out_weights_layer.weight"), 2 * kHa);
  Mat y(static_cast<size_t>(T * kVd));
  for (int64_t t = 0; t < T; ++t) {
    for (int ha = 0; ha < kHa; ++ha) {
      const float l0 = mix[t * 2 * kHa + 2 * ha], l1 = mix[t * 2 * kHa + 2 * ha + 1];
      const float mx = std::max(l0, l1);
      const float e0 = std::exp(l0 - mx), e1 = std::exp(l1 - mx);
      float n1[kDav], n2[kDav];
      RmsNormVec(&o_gdn[t * kVd + ha * kDav], W("o_norm.weight1").data(), kDav, n1);
      RmsNormVec(&o_attn[t * kVd + ha * kDav], W("o_norm.weight2").data(), kDav, n2);
      for (int d = 0; d < kDav; ++d) {
        const float zz = z[t * kVd + ha * kDav + d];
        y[t * kVd + ha * kDav + d] =
            (n1[d] * e0 / (e0 + e1) + n2[d] * e1 / (e0 + e1)) * zz * SigmoidF(zz);
      }
    }
  }
  return MatMul(y, T, kVd, W("o_proj.weight"), kHidden);
}

Mat OracleLogits(const Variant& v, const Weights& w, const std::vector<int32_t>& ids,
                 std::vector<std::vector<int>>* ops) {
  const int64_t T = static_cast<int64_t>(ids.size());
  const Mat& embed = w.at("model.embeddings.weight").second;
  Mat h(static_cast<size_t>(T * kHidden));
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(&h[t * kHidden], &embed[ids[t] * kHidden], sizeof(float) * kHidden);
  }
  ops->resize(kLayers);
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    Mat x(h.size());
    for (int64_t t = 0; t < T; ++t) {
      RmsNormVec(&h[t * kHidden], w.at(p + "attn_norm.weight").second.data(), kHidden,
                 &x[t * kHidden]);
    }
    const Mat o = OracleLayer(v, w, p + "attn.", x, T, &(*ops)[l]);
    for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
    for (int64_t t = 0; t < T; ++t) {
      RmsNormVec(&h[t * kHidden], w.at(p + "mlp_norm.weight").second.data(), kHidden,
                 &x[t * kHidden]);
    }
    Mat gate = MatMul(x, T, kHidden, w.at(p + "mlp.gate_proj.weight").second, kInter);
    const Mat up = MatMul(x, T, kHidden, w.at(p + "mlp.up_proj.weight").second, kInter);
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = SiluF(gate[i]) * up[i];
    const Mat down = MatMul(gate, T, kInter, w.at(p + "mlp.down_proj.weight").second, kHidden);
    for (size_t i = 0; i < h.size(); ++i) h[i] += down[i];
  }
  Mat hn(h.size());
  for (int64_t t = 0; t < T; ++t) {
    RmsNormVec(&h[t * kHidden], w.at("model.norm.weight").second.data(), kHidden, &hn[t * kHidden]);
  }
  return MatMul(hn, T, kHidden, w.at("lm_head.weight").second, kVocab);
}

class NatslVariantTest : public ::testing::TestWithParam<Variant> {};

TEST_P(NatslVariantTest, MatchesWholeSequenceOracle) {
  const Variant& v = GetParam();
  const Weights w = MakeWeights(v, 17);
  const std::string dir = WriteModel(v, w);
  auto backend = testing::LoadCpuBackend(dir, 4, 256);
  ASSERT_TRUE(backend.ok()) << backend.status();

  constexpr int64_t kT = 330;  // 5 complete chunks and a partial one
  // Each chunk draws its tokens from its own quarter of the vocabulary, so that the chunk means,
  // and with them the routing, differ from chunk to chunk.
  Rng rng(99);
  std::vector<int32_t> ids(kT);
  for (int64_t t = 0; t < kT; ++t) {
    const int32_t base = static_cast<int32_t>((t / 64 * 37) % 4) * (kVocab / 4);
    ids[t] = base + static_cast<int32_t>(rng.Uniform() * (kVocab / 4)) % (kVocab / 4);
  }

  std::vector<std::vector<int>> ops;
  const Mat oracle = OracleLogits(v, w, ids, &ops);
  // Both routings occur, and some head routes a chunk to softmax after committing a GDN chunk
  // (so that the committed state is not zero when decay_for_non_gdn_blocks applies).
  int kept = 0, total = 0;
  bool softmax_after_gdn = false;
  for (const auto& layer_ops : ops) {
    for (int n = 0; n < kH; ++n) {
      bool gdn_seen = false;
      for (size_t c = 0; c * kH + n < layer_ops.size(); ++c) {
        const int op = layer_ops[c * kH + n];
        softmax_after_gdn |= op == 0 && gdn_seen;
        gdn_seen |= op == 1;
        kept += op == 0;
        ++total;
      }
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, total);
  EXPECT_TRUE(softmax_after_gdn);

  auto whole = RunSequenceLogits(**backend, ids, {});
  ASSERT_TRUE(whole.ok()) << whole.status();
  const float diff = MaxAbsDiff(*whole, oracle);
  float scale = 0.0f;
  for (float l : oracle) scale = std::max(scale, std::fabs(l));
  std::printf("natsl variant %s: max |diff| vs oracle = %.3g, max |logit| %.3g (softmax %d/%d)\n",
              v.name.c_str(), diff, scale, kept, total);
  // fp32 rounding of two summation orders (amplified where an RMSNorm input nearly cancels, as
  // averages of signed raw values can); a wrong routing or flag shows as O(0.1) differences.
  EXPECT_LE(diff, 5e-5f * std::max(1.0f, scale));
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    auto split = RunSequenceLogits(**backend, ids, RandomSplit(kT, 80, seed));
    ASSERT_TRUE(split.ok()) << split.status();
    EXPECT_LE(MaxAbsDiff(*split, *whole), 1e-5f) << "seed " << seed;
  }
  std::filesystem::remove_all(dir);

  // The flag changes the function: the same weights under the released flags differ.
  if (v.name != "released" && v.short_conv && v.conv_size == 4 && v.qk_norm) {
    Variant released{"released_vs_" + v.name};
    const std::string dir2 = WriteModel(released, w);
    auto base = testing::LoadCpuBackend(dir2, 4, 256);
    ASSERT_TRUE(base.ok()) << base.status();
    auto base_logits = RunSequenceLogits(**base, ids, {});
    ASSERT_TRUE(base_logits.ok()) << base_logits.status();
    EXPECT_GT(MaxAbsDiff(*base_logits, *whole), 1e-2f);
    std::filesystem::remove_all(dir2);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Flags, NatslVariantTest,
    ::testing::Values(Variant{"released"}, Variant{"no_decay", /*decay=*/false},
                      Variant{"no_qk_norm", true, /*qk_norm=*/false},
                      Variant{"attn_raw_projections", true, true, /*attn_short_conv=*/false},
                      Variant{"no_short_conv", true, true, true, /*short_conv=*/false},
                      Variant{"no_short_conv_attn_raw", false, true, false, false},
                      Variant{"conv2_neg_eigval", true, true, true, true, 2, true}),
    [](const ::testing::TestParamInfo<Variant>& info) { return info.param.name; });

}  // namespace
}  // namespace hyla
