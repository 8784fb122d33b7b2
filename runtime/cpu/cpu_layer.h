// CpuLayer: the CPU reference of one token mixer (GDN, NAtS-L, NHA, softmax attention). The
// CpuBackend runs the residual block around it (norms, SwiGLU MLP) and calls Forward once per
// step with all sequences of the batch packed row by row.
//
// Thread-safety: owned by one CpuBackend, called from its worker thread only; a layer may keep
// mutable scratch buffers. Forward may use ctx.pool for parallel loops.
#ifndef HYLA_RUNTIME_CPU_CPU_LAYER_H_
#define HYLA_RUNTIME_CPU_CPU_LAYER_H_

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "runtime/base/thread_pool.h"
#include "runtime/engine/backend.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/config.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"

namespace hyla::cpu {

// One sequence's share of a step.
struct CpuSeq {
  SequenceState* seq = nullptr;
  int64_t start_pos = 0;    // tokens already in the state before this step
  int64_t row_begin = 0;    // first row of this sequence in the packed activations
  int64_t num_rows = 0;     // new tokens in this step
  uint8_t* slot = nullptr;  // this sequence's slot memory (layout().slot_bytes() bytes)
};

// What a layer may touch during Forward.
struct CpuContext {
  ThreadPool* pool = nullptr;
  StateStore* store = nullptr;
  const StateLayout* layout = nullptr;
  uint8_t* block_memory = nullptr;  // block b lives at block_memory + b * layout->block_bytes()
  RoutingCounts* routing = nullptr;

  float* BlockData(int32_t block) const {
    return reinterpret_cast<float*>(block_memory +
                                    static_cast<int64_t>(block) * layout->block_bytes());
  }
  // Makes the block of `chunk` in `stream` writable (allocating it or copying a shared one, see
  // StateStore::PrepareAppend) and returns its data.
  absl::StatusOr<float*> WritableBlock(SequenceState* seq, int stream, int64_t chunk) const {
    int32_t copy_from = -1;
    absl::StatusOr<int> index = store->PrepareAppend(seq, stream, chunk, &copy_from);
    if (!index.ok()) return index.status();
    float* data = BlockData(seq->streams[stream][*index].block);
    if (copy_from >= 0) std::memcpy(data, BlockData(copy_from), layout->block_bytes());
    return data;
  }
};

// KV block layout (fp32 on the CPU backend): keys [kBlockTokens, heads, key_dim] followed by
// values [kBlockTokens, heads, value_dim].
inline float* BlockKey(float* block, const KvStream& s, int64_t token_in_block, int head) {
  return block + (token_in_block * s.heads + head) * s.key_dim;
}
inline float* BlockValue(float* block, const KvStream& s, int64_t token_in_block, int head) {
  return block + int64_t{kBlockTokens} * s.heads * s.key_dim +
         (token_in_block * s.heads + head) * s.value_dim;
}

// Slot component of `layer` for a sequence, as fp32.
inline float* SlotF32(const CpuContext& ctx, const CpuSeq& s, int layer, absl::string_view name) {
  return reinterpret_cast<float*>(s.slot + ctx.layout->Component(layer, name).offset);
}

class CpuLayer {
 public:
  virtual ~CpuLayer() = default;
  // x: [total_rows, hidden] the normalised block input; out: [total_rows, hidden] the mixer
  // output (before the residual add). Advances nothing in SequenceState except block tables;
  // CpuBackend advances num_tokens after all layers ran.
  virtual absl::Status Forward(const CpuContext& ctx, absl::Span<const CpuSeq> seqs, const float* x,
                               float* out) = 0;
};

struct CpuLayerArgs {
  const ModelConfig* config = nullptr;
  int layer = 0;
  std::string prefix;  // e.g. "model.layers.3.attn." (fla) or "model.layers.3.self_attn." (llama)
  Checkpoint* checkpoint = nullptr;
  const StateLayout* layout = nullptr;
};

absl::StatusOr<std::unique_ptr<CpuLayer>> CreateGdnLayer(const CpuLayerArgs& args);
absl::StatusOr<std::unique_ptr<CpuLayer>> CreateNatslLayer(const CpuLayerArgs& args);
absl::StatusOr<std::unique_ptr<CpuLayer>> CreateNhaLayer(const CpuLayerArgs& args);
absl::StatusOr<std::unique_ptr<CpuLayer>> CreateAttentionLayer(const CpuLayerArgs& args);

// RoPE inverse frequencies of an attention layer, [rotary_dim / 2] fp32, exactly as transformers
// computes them for its rope_type (default, llama3). Defined in attention_layer.cc.
std::vector<float> AttentionRopeInvFreq(const AttentionLayerConfig& config);

}  // namespace hyla::cpu

#endif  // HYLA_RUNTIME_CPU_CPU_LAYER_H_
