// The CPU reference of the NAtS-L layer (automl/NeuralAttentionSearchLinear
// src/nats/layers/natsl_attn_gdn.py, reference/models.md §1): one layer that runs a gated delta
// net and a block-sparse softmax attention over shared projections and routes every completed
// 64-token chunk, per decision head, to one of them.
//
// Serving semantics (the function the reference's chunk-mode forward computes, made
// incremental): for a token t of chunk c
//   * softmax head a (decision head n = a / G) attends to every token of the earlier chunks of
//     head n that were routed to softmax, plus the tokens of chunk c up to t;
//   * the gated delta net of head n runs token by token from the committed state S_c;
//   * the two outputs are RMS-normalised, mixed with per-token weights, gated and projected.
// When the 64th token of chunk c has been folded in, the chunk is scored with
// W_s · mean(x over c) and, per head, the argmax decides: op 0 (softmax) keeps the chunk's KV
// block and S_{c+1} = exp(Σg)·S_c (decay_for_non_gdn_blocks; S_c without it); op 1 (GDN) frees
// the block and S_{c+1} is the running state. A token's own chunk always uses both ops, so no
// decision affects an output already produced and any split of a sequence into steps gives
// bitwise identical results.
//
// Carried state (StateLayout components of a kNatsl layer, all fp32):
//   "conv"        [conv_size-1, 2·key_dim + value_dim]  raw q | k | v projections of the last
//                 conv_size-1 tokens, oldest first (use_short_conv)
//   "S"           [H, dk, dv]  running state (includes the current chunk's tokens)
//   "S_committed" [H, dk, dv]  state at the start of the current chunk
//   "g_sum"       [H]          Σg over the current chunk's tokens
//   "x_sum"       [hidden]     Σ of the normalised layer input over the current chunk's tokens
// and, per decision head n, KV stream layout.first_stream(layer) + n: one block per kept chunk
// and the current chunk's block, each [64 tokens, G heads, d_ak] keys then
// [64 tokens, G heads, d_av] values (keys after q/k RMSNorm, no positional encoding).
//
// Thread-safety: as CpuLayer (one driving thread; Forward parallelises over decision heads).
#ifndef HYLA_RUNTIME_CPU_NATSL_LAYER_H_
#define HYLA_RUNTIME_CPU_NATSL_LAYER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/cpu/cpu_layer.h"

namespace hyla::cpu {

// One routing decision: chunk `chunk` of the sequence in slot `slot`, decision head `head`.
struct NatslDecision {
  int32_t slot = -1;
  int layer = 0;
  int64_t chunk = 0;
  int head = 0;
  float logit_softmax = 0.0f;  // router logit of op 0 (softmax attention)
  float logit_gdn = 0.0f;      // router logit of op 1 (gated delta net)
  int op = 0;                  // the decision: 0 softmax (block kept), 1 GDN (block freed)
};

// Records the decisions of the layers created with it, in the order they are made (for tests
// and tools; a serving backend passes none). Not thread-safe: one driving thread.
struct NatslDecisionLog {
  std::vector<NatslDecision> decisions;
};

// CreateNatslLayer (cpu_layer.h) with every routing decision appended to `log` (may be null).
// `log` must outlive the layer.
absl::StatusOr<std::unique_ptr<CpuLayer>> CreateNatslLayerWithLog(const CpuLayerArgs& args,
                                                                  NatslDecisionLog* log);

}  // namespace hyla::cpu

#endif  // HYLA_RUNTIME_CPU_NATSL_LAYER_H_
