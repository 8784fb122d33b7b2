#include "runtime/cpu/gdn_core.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/cpu/ops.h"

namespace hyla::cpu {

void ShortConv(const float* in, int64_t in_stride, int64_t rows, int64_t channels,
               const float* weight, int kernel, float* tail, bool silu, float* out,
               int64_t out_stride) {
  const int taps = kernel - 1;
  // Input of time step p relative to this call: the carried tail for p < 0, else row p.
  auto history = [&](int64_t p) -> const float* {
    return p < 0 ? tail + (p + taps) * channels : in + p * in_stride;
  };
  for (int64_t r = 0; r < rows; ++r) {
    float* y = out + r * out_stride;
    for (int64_t c = 0; c < channels; ++c) {
      const float* w = weight + c * kernel;
      // Fixed order: oldest tap first, the current input last.
      float acc = 0.0f;
      for (int j = 0; j <= taps; ++j) acc += history(r - taps + j)[c] * w[j];
      y[c] = silu ? Silu(acc) : acc;
    }
  }
  // The new tail is the last `taps` inputs (oldest first). When rows < taps part of it comes
  // from the old tail, read ahead of where it is written.
  for (int j = 0; j < taps; ++j) {
    const float* src = history(rows - taps + j);
    float* dst = tail + int64_t{j} * channels;
    if (src != dst) std::memmove(dst, src, sizeof(float) * channels);
  }
}

void DecayState(float* S, float g, int dk, int dv) {
  const float a = std::exp(g);
  const int64_t n = int64_t{dk} * dv;
  for (int64_t i = 0; i < n; ++i) S[i] *= a;
}

namespace {

// The step with a caller-provided [dv] buffer for Sᵀk.
void GatedDeltaStepImpl(float* S, const float* q, const float* k, const float* v, float g,
                        float beta, int dk, int dv, float* o, float* u) {
  const float a = std::exp(g);
  for (int j = 0; j < dv; ++j) u[j] = 0.0f;
  // Pass 1: decay, and u = Sᵀk of the decayed state (sum over i in order, per column j).
  for (int i = 0; i < dk; ++i) {
    float* row = S + int64_t{i} * dv;
    const float ki = k[i];
    for (int j = 0; j < dv; ++j) {
      row[j] *= a;
      u[j] += row[j] * ki;
    }
  }
  // Delta-rule residual.
  for (int j = 0; j < dv; ++j) u[j] = beta * (v[j] - u[j]);
  // Pass 2: rank-1 write S += k uᵀ and read-out o = Sᵀq of the new state.
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

}  // namespace

void GatedDeltaStep(float* S, const float* q, const float* k, const float* v, float g, float beta,
                    int dk, int dv, float* o) {
  constexpr int kStackDv = 1024;
  if (dv <= kStackDv) {
    float u[kStackDv];
    GatedDeltaStepImpl(S, q, k, v, g, beta, dk, dv, o, u);
  } else {
    std::vector<float> u(static_cast<size_t>(dv));
    GatedDeltaStepImpl(S, q, k, v, g, beta, dk, dv, o, u.data());
  }
}

void GdnNormalizeQk(float* x, int n, float scale) {
  L2Norm(x, kGdnL2NormEps, n, x);
  if (scale != 1.0f) {
    for (int i = 0; i < n; ++i) x[i] *= scale;
  }
}

void GatedRmsNorm(const float* x, const float* gate, const float* w, float eps, int64_t n,
                  float* out) {
  RmsNorm(x, w, eps, n, out);
  for (int64_t i = 0; i < n; ++i) out[i] = (out[i] * gate[i]) * Sigmoid(gate[i]);
}

}  // namespace hyla::cpu
