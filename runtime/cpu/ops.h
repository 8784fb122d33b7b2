// CPU kernels shared by the layer implementations: the reference for the CUDA kernels.
//
// Determinism contract: every output element is computed with a fixed operation order that
// does not depend on how many rows are in the call or how work is split across threads, so a
// token's results are bitwise identical whether it is prefilled in one call, in pieces, or
// decoded alone or in a batch.
//
// Thread-safety: stateless functions; the ThreadPool argument is used for the call's duration.
#ifndef HYLA_RUNTIME_CPU_OPS_H_
#define HYLA_RUNTIME_CPU_OPS_H_

#include <cmath>
#include <cstdint>

#include "runtime/base/thread_pool.h"

namespace hyla::cpu {

// y[r, o] = Σ_k x[r, k] · w[o, k] (+ bias[o]).   x: [rows, in], w: [out, in] (PyTorch Linear
// layout), y: [rows, out]; x and y rows are `x_stride` / `y_stride` floats apart.
void Linear(ThreadPool* pool, const float* x, int64_t rows, int64_t in, const float* w, int64_t out,
            const float* bias, float* y);
void LinearStrided(ThreadPool* pool, const float* x, int64_t x_stride, int64_t rows, int64_t in,
                   const float* w, int64_t out, const float* bias, float* y, int64_t y_stride);

// Dot product with the fixed 8-lane order used by Linear.
float Dot(const float* a, const float* b, int64_t n);

// out[i] = x[i] / sqrt(mean(x²) + eps) · w[i]      (w may be null: no affine)
// gemma: · (1 + w[i]) instead.  n elements; in-place allowed.
void RmsNorm(const float* x, const float* w, float eps, int64_t n, float* out, bool gemma = false);
// Applies RmsNorm to every row of x: [rows, n].
void RmsNormRows(ThreadPool* pool, const float* x, const float* w, float eps, int64_t rows,
                 int64_t n, float* out, bool gemma = false);

// out = x / sqrt(Σx² + eps)   (fla l2norm: eps inside the sqrt)
void L2Norm(const float* x, float eps, int64_t n, float* out);

inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }
// PyTorch softplus with beta 1, threshold 20.
inline float Softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }
// log(sigmoid(x)), stable.
inline float LogSigmoid(float x) {
  return x < 0 ? x - std::log1p(std::exp(x)) : -std::log1p(std::exp(-x));
}

// In-place softmax over n values.
void Softmax(float* x, int64_t n);

// SwiGLU MLP on rows: y = down(silu(gate(x)) * up(x)).  gate/up: [inter, d], down: [d, inter].
// scratch: rows × 2·inter floats.
void SwiGluMlp(ThreadPool* pool, const float* x, int64_t rows, int64_t d, int64_t inter,
               const float* w_gate, const float* w_up, const float* w_down, float* scratch,
               float* y);

// Rotary embedding (rotate-half convention of Llama / fla) on one head vector of `head_dim`,
// rotating the first `rotary_dim` dims at position `pos`: pairs (i, i + rotary_dim/2).
// inv_freq[i] = theta^(-2i/rotary_dim), i < rotary_dim/2.
void ApplyRope(float* x, int64_t rotary_dim, int64_t pos, const float* inv_freq);
void RopeInvFreq(float theta, int64_t rotary_dim, float* inv_freq);

}  // namespace hyla::cpu

#endif  // HYLA_RUNTIME_CPU_OPS_H_
