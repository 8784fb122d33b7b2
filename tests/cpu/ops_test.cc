// runtime/cpu/ops.h against direct formulas on odd sizes, and its determinism contract: a row's
// result does not depend on the other rows of the call or on the number of threads.
#include "runtime/cpu/ops.h"

#include <cmath>
#include <complex>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/base/thread_pool.h"

namespace hyla::cpu {
namespace {

std::vector<float> RandomVector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<double> NaiveLinear(const std::vector<float>& x, int64_t rows, int64_t in,
                                const std::vector<float>& w, int64_t out, const float* bias) {
  std::vector<double> y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = bias ? bias[o] : 0.0;
      for (int64_t k = 0; k < in; ++k) acc += double(x[r * in + k]) * w[o * in + k];
      y[r * out + o] = acc;
    }
  }
  return y;
}

TEST(LinearTest, MatchesNaiveTripleLoopOnOddSizes) {
  ThreadPool pool(2);
  for (const auto& [rows, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {7, 37, 19}, {1, 3, 5}, {9, 8, 1}, {5, 129, 67}}) {
    const std::vector<float> x = RandomVector(rows * in, 1 + in);
    const std::vector<float> w = RandomVector(out * in, 2 + out);
    const std::vector<float> b = RandomVector(out, 3);
    for (const float* bias : {static_cast<const float*>(nullptr), b.data()}) {
      std::vector<float> y(rows * out);
      Linear(&pool, x.data(), rows, in, w.data(), out, bias, y.data());
      const std::vector<double> ref = NaiveLinear(x, rows, in, w, out, bias);
      for (size_t i = 0; i < y.size(); ++i) {
        EXPECT_NEAR(y[i], ref[i], 1e-5 * (1 + std::sqrt(double(in))))
            << rows << "x" << in << "x" << out;
      }
    }
  }
}

TEST(LinearTest, RowAloneEqualsRowInBatchOfSevenBitwise) {
  const int64_t rows = 7, in = 45, out = 23;
  const std::vector<float> x = RandomVector(rows * in, 11);
  const std::vector<float> w = RandomVector(out * in, 12);
  const std::vector<float> b = RandomVector(out, 13);
  ThreadPool pool2(2), pool1(1), pool3(3);
  std::vector<float> batch(rows * out);
  Linear(&pool2, x.data(), rows, in, w.data(), out, b.data(), batch.data());
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> alone(out);
    Linear(&pool1, x.data() + r * in, 1, in, w.data(), out, b.data(), alone.data());
    for (int64_t o = 0; o < out; ++o) EXPECT_EQ(alone[o], batch[r * out + o]) << r << "," << o;
  }
  // Any thread count, and sub-batches of other sizes, give the same bits.
  std::vector<float> batch3(rows * out);
  Linear(&pool3, x.data(), rows, in, w.data(), out, b.data(), batch3.data());
  EXPECT_EQ(batch3, batch);
  std::vector<float> split(rows * out);
  Linear(&pool2, x.data(), 2, in, w.data(), out, b.data(), split.data());
  Linear(&pool2, x.data() + 2 * in, 5, in, w.data(), out, b.data(), split.data() + 2 * out);
  EXPECT_EQ(split, batch);
}

TEST(LinearTest, StridedRowsAndDot) {
  ThreadPool pool(2);
  const int64_t rows = 5, in = 17, out = 9, xs = 20, ys = 13;
  const std::vector<float> xd = RandomVector(rows * in, 21);
  const std::vector<float> w = RandomVector(out * in, 22);
  std::vector<float> x(rows * xs, 5.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < in; ++k) x[r * xs + k] = xd[r * in + k];
  }
  std::vector<float> y(rows * ys, -1.0f), dense(rows * out);
  LinearStrided(&pool, x.data(), xs, rows, in, w.data(), out, nullptr, y.data(), ys);
  Linear(&pool, xd.data(), rows, in, w.data(), out, nullptr, dense.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) EXPECT_EQ(y[r * ys + o], dense[r * out + o]);
    for (int64_t o = out; o < ys; ++o) EXPECT_EQ(y[r * ys + o], -1.0f);
    for (int64_t o = 0; o < out; ++o) {
      EXPECT_EQ(Dot(xd.data() + r * in, w.data() + o * in, in), dense[r * out + o]);
    }
  }
}

TEST(RmsNormTest, MatchesFormula) {
  const int64_t n = 37;
  const std::vector<float> x = RandomVector(n, 31), w = RandomVector(n, 32);
  const float eps = 1e-6f;
  double ms = 0;
  for (float v : x) ms += double(v) * v;
  ms /= n;
  const double inv = 1.0 / std::sqrt(ms + eps);
  std::vector<float> y(n), g(n), plain(n);
  RmsNorm(x.data(), w.data(), eps, n, y.data());
  RmsNorm(x.data(), w.data(), eps, n, g.data(), /*gemma=*/true);
  RmsNorm(x.data(), nullptr, eps, n, plain.data());
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(y[i], x[i] * inv * w[i], 1e-5 * (1 + std::fabs(x[i] * inv * w[i])));
    EXPECT_NEAR(g[i], x[i] * inv * (1 + w[i]), 1e-5 * (1 + std::fabs(x[i] * inv * (1 + w[i]))));
    EXPECT_NEAR(plain[i], x[i] * inv, 1e-5);
  }
  // Rows version: same bits as one row at a time.
  ThreadPool pool(2);
  const int64_t rows = 5;
  const std::vector<float> xr = RandomVector(rows * n, 33);
  std::vector<float> yr(rows * n);
  RmsNormRows(&pool, xr.data(), w.data(), eps, rows, n, yr.data());
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> one(n);
    RmsNorm(xr.data() + r * n, w.data(), eps, n, one.data());
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(one[i], yr[r * n + i]);
  }
  // The eps matters for a zero vector: finite output 0.
  std::vector<float> zero(n, 0.0f), z(n);
  RmsNorm(zero.data(), w.data(), eps, n, z.data());
  for (float v : z) EXPECT_EQ(v, 0.0f);
}

TEST(L2NormTest, EpsInsideTheSqrt) {
  const std::vector<float> x = RandomVector(13, 41);
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  std::vector<float> y(13);
  L2Norm(x.data(), 1e-6f, 13, y.data());
  for (int i = 0; i < 13; ++i) EXPECT_NEAR(y[i], x[i] / std::sqrt(ss + 1e-6), 1e-6);
}

TEST(SoftmaxTest, MatchesFormulaAndIsStable) {
  std::vector<float> x = {1.0f, -2.0f, 0.5f, 3.0f, 3.0f, -10.0f, 0.0f};
  const std::vector<float> before = x;
  double z = 0;
  for (float v : before) z += std::exp(double(v));
  Softmax(x.data(), static_cast<int64_t>(x.size()));
  double sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(x[i], std::exp(double(before[i])) / z, 1e-6);
    sum += x[i];
  }
  EXPECT_NEAR(sum, 1.0, 1e-6);
  // Large logits do not overflow.
  std::vector<float> big = {1000.0f, 999.0f, -1000.0f};
  Softmax(big.data(), 3);
  EXPECT_NEAR(big[0], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(big[1], std::exp(-1.0) / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_EQ(big[2], 0.0f);
}

TEST(ActivationTest, MatchDefinitions) {
  for (float x : {-30.0f, -2.5f, 0.0f, 0.3f, 19.9f, 20.5f, 40.0f}) {
    const double d = x;
    EXPECT_NEAR(Sigmoid(x), 1.0 / (1.0 + std::exp(-d)), 1e-7);
    EXPECT_NEAR(Silu(x), d / (1.0 + std::exp(-d)), 1e-6 * (1 + std::fabs(d)));
    EXPECT_NEAR(Softplus(x), d > 20 ? d : std::log1p(std::exp(d)), 1e-6 * (1 + std::fabs(d)));
    EXPECT_NEAR(LogSigmoid(x), -std::log1p(std::exp(-d)), 1e-6 * (1 + std::fabs(d)));
  }
}

TEST(SwiGluMlpTest, MatchesNaive) {
  ThreadPool pool(2);
  const int64_t rows = 3, d = 11, inter = 19;
  const std::vector<float> x = RandomVector(rows * d, 51), wg = RandomVector(inter * d, 52),
                           wu = RandomVector(inter * d, 53), wd = RandomVector(d * inter, 54);
  std::vector<float> scratch(rows * 2 * inter), y(rows * d);
  SwiGluMlp(&pool, x.data(), rows, d, inter, wg.data(), wu.data(), wd.data(), scratch.data(),
            y.data());
  const std::vector<double> g = NaiveLinear(x, rows, d, wg, inter, nullptr);
  const std::vector<double> u = NaiveLinear(x, rows, d, wu, inter, nullptr);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < d; ++o) {
      double acc = 0;
      for (int64_t k = 0; k < inter; ++k) {
        const double gk = g[r * inter + k];
        acc += gk / (1 + std::exp(-gk)) * u[r * inter + k] * wd[o * inter + k];
      }
      EXPECT_NEAR(y[r * d + o], acc, 1e-4 * (1 + std::fabs(acc)));
    }
  }
}

TEST(RopeTest, MatchesComplexRotation) {
  const int64_t head_dim = 10;
  for (int64_t rotary_dim : {int64_t{10}, int64_t{6}}) {
    const float theta = 10000.0f;
    std::vector<float> inv_freq(rotary_dim / 2);
    RopeInvFreq(theta, rotary_dim, inv_freq.data());
    for (int64_t i = 0; i < rotary_dim / 2; ++i) {
      EXPECT_NEAR(inv_freq[i], std::pow(double(theta), -2.0 * i / rotary_dim), 1e-7 * 1.0);
    }
    for (int64_t pos : {int64_t{0}, int64_t{1}, int64_t{17}, int64_t{1000}}) {
      const std::vector<float> x = RandomVector(head_dim, 61 + pos);
      std::vector<float> y = x;
      ApplyRope(y.data(), rotary_dim, pos, inv_freq.data());
      const int64_t half = rotary_dim / 2;
      for (int64_t i = 0; i < half; ++i) {
        // Pair (i, i + half) as the complex number x_i + i·x_{i+half}, rotated by pos·θ_i.
        const std::complex<double> z(x[i], x[i + half]);
        // The angle is formed in fp32, as transformers and fla do (pos · inv_freq in float32).
        const float angle = static_cast<float>(pos) * inv_freq[i];
        const std::complex<double> r = z * std::polar(1.0, double(angle));
        const double tol = 1e-5 * (1 + std::abs(z));
        EXPECT_NEAR(y[i], r.real(), tol) << "pos " << pos << " i " << i;
        EXPECT_NEAR(y[i + half], r.imag(), tol) << "pos " << pos << " i " << i;
      }
      for (int64_t i = rotary_dim; i < head_dim; ++i) EXPECT_EQ(y[i], x[i]);
    }
  }
}

}  // namespace
}  // namespace hyla::cpu
