#include "runtime/cpu/gdn_core.h"

#include <cmath>
#include <vector>

#include "runtime/cpu/ops.h"

namespace hyla::cpu {

void ShortConv(const float* in, int64_t in_stride, int64_t rows, int64_t channels,
               const float* weight, int kernel, float* tail, bool silu, float* out,
               int64_t out_stride) {
  const int taps = kernel - 1;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = in + r * in_stride;
    float* y = out + r * out_stride;
    for (int64_t c = 0; c < channels; ++c) {
      const float* w = weight + c * kernel;
      float acc = 0.0f;
      for (int j = 0; j < taps; ++j) acc += tail[j * channels + c] * w[j];
      acc += x[c] * w[taps];
      y[c] = silu ? Silu(acc) : acc;
    }
    // Shift the tail: drop the oldest input, append this one.
    if (taps > 0) {
      for (int j = 0; j + 1 < taps; ++j) {
        float* dst = tail + j * channels;
        const float* src = tail + (j + 1) * channels;
        for (int64_t c = 0; c < channels; ++c) dst[c] = src[c];
      }
      float* last = tail + (taps - 1) * channels;
      for (int64_t c = 0; c < channels; ++c) last[c] = x[c];
    }
  }
}

void DecayState(float* S, float g, int dk, int dv) {
  const float a = std::exp(g);
  const int64_t n = int64_t{dk} * dv;
  for (int64_t i = 0; i < n; ++i) S[i] *= a;
}

void GatedDeltaStep(float* S, const float* q, const float* k, const float* v, float g, float beta,
                    int dk, int dv, float* o) {
  const float a = std::exp(g);
  std::vector<float> u(static_cast<size_t>(dv), 0.0f);  // Sᵀk after decay
  for (int i = 0; i < dk; ++i) {
    float* row = S + int64_t{i} * dv;
    const float ki = k[i];
    for (int j = 0; j < dv; ++j) {
      row[j] *= a;
      u[j] += row[j] * ki;
    }
  }
  for (int j = 0; j < dv; ++j) u[j] = beta * (v[j] - u[j]);
  for (int j = 0; j < dv; ++j) o[j] = 0.0f;
  for (int i = 0; i < dk; ++i) {
    float* row = S + int64_t{i} * dv;
    const float ki = k[i];
    const float qi = q[i];
    for (int j = 0; j < dv; ++j) {
      row[j] += ki * u[j];
      o[j] += row[j] * qi;
    }
  }
}

}  // namespace hyla::cpu
