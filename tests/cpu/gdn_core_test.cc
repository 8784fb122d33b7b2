// gdn_core against independent formulas: the short conv against a direct convolution over the
// full history (whatever the chunking), the gated delta step against the closed form
// S_t = α(I − βkkᵀ)S + βkvᵀ, o = S_tᵀq, and the gate / norm helpers against their definitions.
#include "runtime/cpu/gdn_core.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace hyla::cpu {
namespace {

std::vector<float> RandomVector(size_t n, std::mt19937* rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(*rng);
  return v;
}

double SiluRef(double x) { return x / (1.0 + std::exp(-x)); }

// y[t][c] = Σ_{j<K} x[t − (K−1) + j][c] · w[c][j], x[<0] = 0, optionally SiLU.
std::vector<double> DirectConv(const std::vector<float>& x, int64_t T, int64_t C,
                               const std::vector<float>& w, int K, bool silu) {
  std::vector<double> y(static_cast<size_t>(T * C));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < C; ++c) {
      double acc = 0;
      for (int j = 0; j < K; ++j) {
        const int64_t src = t - (K - 1) + j;
        if (src >= 0) acc += static_cast<double>(x[src * C + c]) * w[c * K + j];
      }
      y[t * C + c] = silu ? SiluRef(acc) : acc;
    }
  }
  return y;
}

struct ConvCase {
  int kernel;
  bool silu;
};

class ShortConvTest : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ShortConvTest, MatchesDirectConvolutionWhateverTheChunking) {
  const int K = GetParam().kernel;
  const bool silu = GetParam().silu;
  const int64_t T = 29, C = 13;
  std::mt19937 rng(17 + K);
  const std::vector<float> x = RandomVector(T * C, &rng);
  const std::vector<float> w = RandomVector(C * K, &rng, 0.5f);
  const std::vector<double> ref = DirectConv(x, T, C, w, K, silu);

  // Chunkings: one call, token by token, and uneven chunks smaller and larger than K-1.
  const std::vector<std::vector<int64_t>> splits = {
      {T}, std::vector<int64_t>(T, 1), {1, 2, 1, 5, 3, 7, 2, 8}};
  std::vector<float> first;
  for (const auto& split : splits) {
    // Strided input and output rows (the layer reads conv inputs out of a wider row).
    const int64_t in_stride = C + 3, out_stride = C + 5;
    std::vector<float> in(static_cast<size_t>(T * in_stride), 99.0f);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < C; ++c) in[t * in_stride + c] = x[t * C + c];
    }
    std::vector<float> out(static_cast<size_t>(T * out_stride), -7.0f);
    std::vector<float> tail(static_cast<size_t>((K - 1) * C), 0.0f);
    int64_t t0 = 0;
    for (int64_t n : split) {
      ShortConv(in.data() + t0 * in_stride, in_stride, n, C, w.data(), K,
                K > 1 ? tail.data() : nullptr, silu, out.data() + t0 * out_stride, out_stride);
      t0 += n;
    }
    ASSERT_EQ(t0, T);
    std::vector<float> dense(static_cast<size_t>(T * C));
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        EXPECT_NEAR(out[t * out_stride + c], ref[t * C + c], 1e-5) << "t " << t << " c " << c;
        dense[t * C + c] = out[t * out_stride + c];
      }
      for (int64_t c = C; c < out_stride; ++c) EXPECT_EQ(out[t * out_stride + c], -7.0f);
    }
    // The carried tail holds the last K-1 inputs, oldest first.
    for (int j = 0; j < K - 1; ++j) {
      for (int64_t c = 0; c < C; ++c) EXPECT_EQ(tail[j * C + c], x[(T - (K - 1) + j) * C + c]);
    }
    // Bitwise identical whatever the chunking.
    if (first.empty()) {
      first = dense;
    } else {
      EXPECT_EQ(dense, first);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, ShortConvTest,
                         ::testing::Values(ConvCase{4, true}, ConvCase{4, false}, ConvCase{2, true},
                                           ConvCase{1, true}, ConvCase{6, false}));

// Closed form in double: S' = α(I − βkkᵀ)S + βkvᵀ, o = S'ᵀq.
void ClosedFormStep(std::vector<double>* S, const std::vector<float>& q,
                    const std::vector<float>& k, const std::vector<float>& v, double alpha,
                    double beta, int dk, int dv, std::vector<double>* o) {
  std::vector<double> M(static_cast<size_t>(dk * dk));  // α(I − βkkᵀ)
  for (int i = 0; i < dk; ++i) {
    for (int j = 0; j < dk; ++j) {
      M[i * dk + j] = alpha * ((i == j ? 1.0 : 0.0) - beta * double(k[i]) * double(k[j]));
    }
  }
  std::vector<double> next(static_cast<size_t>(dk * dv), 0.0);
  for (int i = 0; i < dk; ++i) {
    for (int j = 0; j < dv; ++j) {
      double acc = 0;
      for (int l = 0; l < dk; ++l) acc += M[i * dk + l] * (*S)[l * dv + j];
      next[i * dv + j] = acc + beta * double(k[i]) * double(v[j]);
    }
  }
  *S = next;
  o->assign(static_cast<size_t>(dv), 0.0);
  for (int j = 0; j < dv; ++j) {
    for (int i = 0; i < dk; ++i) (*o)[j] += (*S)[i * dv + j] * double(q[i]);
  }
}

TEST(GatedDeltaStepTest, MatchesClosedFormOverManySteps) {
  for (const auto& [dk, dv] : std::vector<std::pair<int, int>>{{7, 5}, {16, 33}, {64, 128}}) {
    std::mt19937 rng(dk * 1000 + dv);
    std::vector<float> S = RandomVector(static_cast<size_t>(dk * dv), &rng, 0.3f);
    std::vector<double> S_ref(S.begin(), S.end());
    std::uniform_real_distribution<float> unit(0.0f, 1.0f);
    for (int step = 0; step < 12; ++step) {
      std::vector<float> q = RandomVector(dk, &rng), k = RandomVector(dk, &rng),
                         v = RandomVector(dv, &rng);
      // The layer feeds L2-normalised k (the closed form holds for any k).
      double norm = 0;
      for (float x : k) norm += double(x) * x;
      for (float& x : k) x = static_cast<float>(x / std::sqrt(norm));
      const float g = -2.0f * unit(rng);
      const float beta = unit(rng);
      std::vector<float> o(dv, 123.0f);
      GatedDeltaStep(S.data(), q.data(), k.data(), v.data(), g, beta, dk, dv, o.data());
      std::vector<double> o_ref;
      ClosedFormStep(&S_ref, q, k, v, std::exp(double(g)), beta, dk, dv, &o_ref);
      for (int j = 0; j < dv; ++j) {
        ASSERT_NEAR(o[j], o_ref[j], 2e-5 * (1 + std::fabs(o_ref[j])))
            << dk << "x" << dv << " step " << step << " j " << j;
      }
      for (int i = 0; i < dk * dv; ++i) {
        ASSERT_NEAR(S[i], S_ref[i], 2e-5 * (1 + std::fabs(S_ref[i]))) << "state " << i;
      }
    }
  }
}

TEST(GatedDeltaStepTest, ZeroStateWritesBetaKVt) {
  const int dk = 3, dv = 2;
  std::vector<float> S(dk * dv, 0.0f);
  const std::vector<float> q = {1.0f, 0.0f, 0.0f}, k = {1.0f, 0.0f, 0.0f}, v = {2.0f, -4.0f};
  std::vector<float> o(dv);
  GatedDeltaStep(S.data(), q.data(), k.data(), v.data(), -0.5f, 0.25f, dk, dv, o.data());
  // S = β k vᵀ; o = Sᵀ q = β v.
  EXPECT_FLOAT_EQ(S[0], 0.5f);
  EXPECT_FLOAT_EQ(S[1], -1.0f);
  for (int i = 2; i < dk * dv; ++i) EXPECT_EQ(S[i], 0.0f);
  EXPECT_FLOAT_EQ(o[0], 0.5f);
  EXPECT_FLOAT_EQ(o[1], -1.0f);
}

TEST(DecayStateTest, MultipliesByExpG) {
  std::vector<float> S = {1.0f, -2.0f, 3.0f, 0.5f, 0.0f, 8.0f};
  const std::vector<float> before = S;
  DecayState(S.data(), -0.7f, 2, 3);
  for (size_t i = 0; i < S.size(); ++i) EXPECT_FLOAT_EQ(S[i], before[i] * std::exp(-0.7f));
}

TEST(GdnGatesTest, MatchDefinitions) {
  for (float a : {-30.0f, -3.0f, 0.0f, 0.7f, 19.0f, 25.0f}) {
    for (float dt : {-1.0f, 0.5f}) {
      const float a_log = 1.3f;
      const double x = double(a) + dt;
      const double softplus = x > 20 ? x : std::log1p(std::exp(x));
      const double ref = -std::exp(double(a_log)) * softplus;
      EXPECT_NEAR(GdnDecayGate(a, dt, GdnNegExpALog(a_log)), ref, 1e-6 * (1 + std::fabs(ref)));
    }
  }
  for (float b : {-5.0f, 0.0f, 2.0f}) {
    const double sig = 1.0 / (1.0 + std::exp(-double(b)));
    EXPECT_NEAR(GdnBeta(b, false), sig, 1e-7);
    EXPECT_NEAR(GdnBeta(b, true), 2 * sig, 2e-7);
  }
}

TEST(GdnNormalizeQkTest, L2NormWithEpsInsideTheSqrtThenScale) {
  std::vector<float> x = {3.0f, -4.0f, 0.0f, 1.0f};
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const std::vector<float> before = x;
  GdnNormalizeQk(x.data(), 4, 0.5f);
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(x[i], before[i] / std::sqrt(ss + 1e-6) * 0.5, 1e-7);
  }
  // Tiny vectors: the eps keeps the result finite and small.
  std::vector<float> tiny = {1e-5f, 0.0f};
  GdnNormalizeQk(tiny.data(), 2, 1.0f);
  EXPECT_NEAR(tiny[0], 1e-5 / std::sqrt(1e-10 + 1e-6), 1e-7);
}

TEST(GatedRmsNormTest, NormBeforeSwishGate) {
  const int64_t n = 11;
  std::mt19937 rng(5);
  const std::vector<float> x = RandomVector(n, &rng), gate = RandomVector(n, &rng),
                           w = RandomVector(n, &rng);
  const float eps = 1e-6f;
  double ms = 0;
  for (float v : x) ms += double(v) * v;
  ms /= n;
  std::vector<float> out(n);
  GatedRmsNorm(x.data(), gate.data(), w.data(), eps, n, out.data());
  for (int64_t i = 0; i < n; ++i) {
    const double ref = x[i] / std::sqrt(ms + eps) * w[i] * SiluRef(gate[i]);
    EXPECT_NEAR(out[i], ref, 1e-5 * (1 + std::fabs(ref))) << i;
  }
  // In place gives the same bits.
  std::vector<float> inplace = x;
  GatedRmsNorm(inplace.data(), gate.data(), w.data(), eps, n, inplace.data());
  EXPECT_EQ(inplace, out);
}

}  // namespace
}  // namespace hyla::cpu
