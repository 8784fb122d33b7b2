#include "runtime/cpu/ops.h"

#include <algorithm>
#include <cmath>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include <vector>

namespace hyla::cpu {
namespace {

// R rows of x against one weight row, fixed 8-lane accumulation order per element.
template <int R>
inline void DotRows(const float* const* xr, const float* w, int64_t n, float* out) {
  float acc[R][8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int r = 0; r < R; ++r) {
      for (int l = 0; l < 8; ++l) acc[r][l] += xr[r][k + l] * w[k + l];
    }
  }
  for (int r = 0; r < R; ++r) {
    float tail = 0.0f;
    for (int64_t j = k; j < n; ++j) tail += xr[r][j] * w[j];
    out[r] = (((acc[r][0] + acc[r][4]) + (acc[r][1] + acc[r][5])) +
              ((acc[r][2] + acc[r][6]) + (acc[r][3] + acc[r][7]))) +
             tail;
  }
}

}  // namespace

#if defined(__AVX2__) && defined(__FMA__)
namespace {

// Horizontal sum of 8 lanes in a fixed order.
inline float HorizontalSum(__m256 v) {
  alignas(32) float a[8];
  _mm256_store_ps(a, v);
  return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

// R input rows × O weight rows. Every element is computed with the same operation sequence
// (8-lane FMA over k, fixed horizontal sum, scalar FMA tail) whatever R and O are, so a row's
// result does not depend on the rows around it.
template <int R, int O>
inline void LinearTile(const float* const* xr, const float* const* wr, int64_t n, float* y,
                       int64_t y_stride) {
  __m256 acc[R][O];
  for (int r = 0; r < R; ++r) {
    for (int o = 0; o < O; ++o) acc[r][o] = _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 wv[O];
    for (int o = 0; o < O; ++o) wv[o] = _mm256_loadu_ps(wr[o] + k);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(xr[r] + k);
      for (int o = 0; o < O; ++o) acc[r][o] = _mm256_fmadd_ps(xv, wv[o], acc[r][o]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int o = 0; o < O; ++o) {
      float tail = 0.0f;
      for (int64_t j = k; j < n; ++j) tail = std::fma(xr[r][j], wr[o][j], tail);
      y[r * y_stride + o] = HorizontalSum(acc[r][o]) + tail;
    }
  }
}

template <int R>
inline void LinearRows(const float* const* xr, const float* w, int64_t in, int64_t o_begin,
                       int64_t o_end, const float* bias, float* y, int64_t y_stride) {
  int64_t o = o_begin;
  for (; o + 2 <= o_end; o += 2) {
    const float* wr[2] = {w + o * in, w + (o + 1) * in};
    LinearTile<R, 2>(xr, wr, in, y + o, y_stride);
  }
  for (; o < o_end; ++o) {
    const float* wr[1] = {w + o * in};
    LinearTile<R, 1>(xr, wr, in, y + o, y_stride);
  }
  if (bias != nullptr) {
    for (int r = 0; r < R; ++r) {
      for (int64_t q = o_begin; q < o_end; ++q) y[r * y_stride + q] += bias[q];
    }
  }
}

}  // namespace

void LinearStrided(ThreadPool* pool, const float* x, int64_t x_stride, int64_t rows, int64_t in,
                   const float* w, int64_t out, const float* bias, float* y, int64_t y_stride) {
  if (rows <= 0 || out <= 0) return;
  // Parallel over output features; each task streams its weight rows once per 4 input rows.
  const int64_t grain = std::max<int64_t>(2, 16384 / std::max<int64_t>(in, 1));
  pool->ParallelFor(out, grain, [&](int64_t o_begin, int64_t o_end) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      const float* xr[4] = {x + r * x_stride, x + (r + 1) * x_stride, x + (r + 2) * x_stride,
                            x + (r + 3) * x_stride};
      LinearRows<4>(xr, w, in, o_begin, o_end, bias, y + r * y_stride, y_stride);
    }
    for (; r < rows; ++r) {
      const float* xr[1] = {x + r * x_stride};
      LinearRows<1>(xr, w, in, o_begin, o_end, bias, y + r * y_stride, y_stride);
    }
  });
}

float Dot(const float* a, const float* b, int64_t n) {
  float out;
  const float* xr[1] = {a};
  const float* wr[1] = {b};
  LinearTile<1, 1>(xr, wr, n, &out, 1);
  return out;
}
#else
void LinearStrided(ThreadPool* pool, const float* x, int64_t x_stride, int64_t rows, int64_t in,
                   const float* w, int64_t out, const float* bias, float* y, int64_t y_stride) {
  if (rows <= 0 || out <= 0) return;
  // Parallel over output features; each task streams its weight rows once per 4 input rows.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(in, 1));
  pool->ParallelFor(out, grain, [&](int64_t o_begin, int64_t o_end) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      const float* xr[4] = {x + r * x_stride, x + (r + 1) * x_stride, x + (r + 2) * x_stride,
                            x + (r + 3) * x_stride};
      for (int64_t o = o_begin; o < o_end; ++o) {
        float v[4];
        DotRows<4>(xr, w + o * in, in, v);
        const float b = bias ? bias[o] : 0.0f;
        for (int q = 0; q < 4; ++q) y[(r + q) * y_stride + o] = bias ? v[q] + b : v[q];
      }
    }
    for (; r < rows; ++r) {
      const float* xr[1] = {x + r * x_stride};
      for (int64_t o = o_begin; o < o_end; ++o) {
        float v;
        DotRows<1>(xr, w + o * in, in, &v);
        y[r * y_stride + o] = bias ? v + bias[o] : v;
      }
    }
  });
}

float Dot(const float* a, const float* b, int64_t n) {
  float out;
  const float* rows[1] = {a};
  DotRows<1>(rows, b, n, &out);
  return out;
}
#endif  // AVX2 && FMA

void Linear(ThreadPool* pool, const float* x, int64_t rows, int64_t in, const float* w, int64_t out,
            const float* bias, float* y) {
  LinearStrided(pool, x, in, rows, in, w, out, bias, y, out);
}

void RmsNorm(const float* x, const float* w, float eps, int64_t n, float* out, bool gemma) {
  float acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += x[k + l] * x[k + l];
  }
  float ss = (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])));
  for (; k < n; ++k) ss += x[k] * x[k];
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) {
    const float wi = w == nullptr ? 1.0f : (gemma ? 1.0f + w[i] : w[i]);
    out[i] = x[i] * inv * wi;
  }
}

void RmsNormRows(ThreadPool* pool, const float* x, const float* w, float eps, int64_t rows,
                 int64_t n, float* out, bool gemma) {
  pool->ParallelFor(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)),
                    [&](int64_t b, int64_t e) {
                      for (int64_t r = b; r < e; ++r)
                        RmsNorm(x + r * n, w, eps, n, out + r * n, gemma);
                    });
}

void L2Norm(const float* x, float eps, int64_t n, float* out) {
  float acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += x[k + l] * x[k + l];
  }
  float ss = (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])));
  for (; k < n; ++k) ss += x[k] * x[k];
  const float inv = 1.0f / std::sqrt(ss + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv;
}

void Softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  const float inv = 1.0f / s;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void SwiGluMlp(ThreadPool* pool, const float* x, int64_t rows, int64_t d, int64_t inter,
               const float* w_gate, const float* w_up, const float* w_down, float* scratch,
               float* y) {
  float* gate = scratch;
  float* up = scratch + rows * inter;
  Linear(pool, x, rows, d, w_gate, inter, nullptr, gate);
  Linear(pool, x, rows, d, w_up, inter, nullptr, up);
  const int64_t n = rows * inter;
  for (int64_t i = 0; i < n; ++i) gate[i] = Silu(gate[i]) * up[i];
  Linear(pool, gate, rows, inter, w_down, d, nullptr, y);
}

void RopeInvFreq(float theta, int64_t rotary_dim, float* inv_freq) {
  // As transformers: 1 / theta^(arange(0, dim, 2) / dim), computed in float32.
  for (int64_t i = 0; i < rotary_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(rotary_dim);
    inv_freq[i] = 1.0f / std::pow(theta, exponent);
  }
}

void ApplyRope(float* x, int64_t rotary_dim, int64_t pos, const float* inv_freq) {
  const int64_t half = rotary_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float angle = static_cast<float>(pos) * inv_freq[i];
    const float c = std::cos(angle);
    const float s = std::sin(angle);
    const float a = x[i];
    const float b = x[i + half];
    x[i] = a * c - b * s;
    x[i + half] = b * c + a * s;
  }
}

}  // namespace hyla::cpu
