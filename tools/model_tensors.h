// The complete list of weight tensors a ModelConfig implies — every name and shape the loaders
// take, in the authors' naming (fla for natsl/nha/gdn, Hugging Face transformers for llama) —
// with how the reference initialises each one. This is the single source of truth for the
// random-checkpoint generator (which writes exactly these tensors) and for the parameter count
// of `hyla-model info`; tests check it against the golden checkpoints' headers.
//
// Thread-safety: pure functions.
#ifndef HYLA_TOOLS_MODEL_TENSORS_H_
#define HYLA_TOOLS_MODEL_TENSORS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/model/config.h"

namespace hyla::tools {

// How the reference initialises a tensor (NAtS-L / fla `_init_weights`, HF Llama `_init_weights`).
enum class InitKind {
  kNormal,  // N(0, std²): projections, embeddings, LM head, conv kernels
  kOnes,    // RMSNorm weights (plain x̂·w norms)
  kZeros,   // Gemma-style x̂·(1+w) norm weights, biases
  kALog,    // A_log = log(A), A ~ U(1, 16)
  kDtBias,  // dt_bias = softplus⁻¹(dt), dt ~ logU(1e-3, 0.1) clamped at ≥ 1e-4
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  InitKind init = InitKind::kNormal;
  float std = 0.0f;  // kNormal only
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Standard deviation of projections, embeddings and conv kernels (config "initializer_range").
inline constexpr float kInitStd = 0.02f;
// Standard deviation of the NAtS-L chunk router (`nats_layer`). Larger than kInitStd on purpose:
// with 0.02 the per-chunk routing logits differ by ~1e-2, so CPU and GPU rounding could flip a
// decision; at 0.5 the margins are ~1, and routing still mixes softmax and GDN chunks.
inline constexpr float kRouterStd = 0.5f;

// Every tensor of a checkpoint for `config`, in model order: embedding, then per layer the
// mixer norm, the token mixer, the MLP norm and the MLP, then the final norm and (unless the
// embeddings are tied) the LM head.
std::vector<TensorSpec> ListModelTensors(const ModelConfig& config);

// Σ numel over ListModelTensors (what PyTorch's sum(p.numel() for p in model.parameters())
// reports; a tied LM head counts once).
int64_t CountParameters(const ModelConfig& config);

}  // namespace hyla::tools

#endif  // HYLA_TOOLS_MODEL_TENSORS_H_
