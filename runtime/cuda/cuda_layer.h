// CudaLayer: the CUDA implementation of one token mixer (GDN, NAtS-L, NHA, softmax attention).
// CudaBackend runs the residual block around it (norms, SwiGLU MLP, residual adds) and calls
// Forward once per step with all sequences of the batch packed row by row — the same contract
// as cpu::CpuLayer (runtime/cpu/cpu_layer.h), which is each layer's reference.
//
// Memory: activations are fp32 on the device. A sequence's slot (recurrent state, conv tails,
// NHA slots and rings, NAtS-L committed state) lives in the device slot pool at
// slot_pool + slot · layout.slot_bytes(), with the component offsets of StateLayout; recurrent
// state is fp32, rings and KV blocks use layout.kv_dtype() (fp32 or bf16). KV block b lives at
// block_pool + b · layout.block_bytes() with the CPU block layout (keys [64, heads, key_dim]
// then values [64, heads, value_dim], cpu_layer.h BlockKey/BlockValue).
//
// Block tables live on the host (StateStore); a layer allocates blocks through
// CudaContext::WritableBlock (copy-on-write on the device) and uploads the tables it needs into
// step scratch, or, for decode steps replayed from CUDA graphs, keeps device-resident copies that
// PrepareDecode updates through ctx.uploads (see CudaLayer::DecodeGraphSafe).
//
// Thread-safety: owned by one CudaBackend and called from its worker thread only.
#ifndef HYLA_RUNTIME_CUDA_CUDA_LAYER_H_
#define HYLA_RUNTIME_CUDA_CUDA_LAYER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/cuda/device_context.h"
#include "runtime/cuda/gemm.h"
#include "runtime/cuda/step_uploads.h"
#include "runtime/engine/backend.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/config.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"

namespace hyla::cuda {

// One sequence's share of a step (host side).
struct CudaSeq {
  SequenceState* seq = nullptr;
  int64_t start_pos = 0;  // tokens already in the state before this step
  int64_t row_begin = 0;  // first row of this sequence in the packed activations
  int64_t num_rows = 0;   // new tokens in this step
  int32_t slot = -1;      // state slot index
};

// Per-step batch description with device copies, built once per step by CudaBackend.
struct CudaBatch {
  std::vector<CudaSeq> seqs;  // host
  int64_t total_rows = 0;
  int64_t max_rows = 0;     // largest num_rows of a sequence
  bool all_decode = false;  // every sequence has exactly one new row
  // Device arrays (step scratch):
  const int32_t* slots = nullptr;       // [num_seqs] slot index
  const int32_t* cu_seqlens = nullptr;  // [num_seqs + 1] row offsets
  const int64_t* start_pos = nullptr;   // [num_seqs]
  const int32_t* row_seq = nullptr;     // [total_rows] sequence index of each row
  const int32_t* row_pos = nullptr;     // [total_rows] absolute position of each row
  const int32_t* kv_len = nullptr;      // [num_seqs] start_pos + num_rows (tokens after the step)
  // Host copies of the same (for kernel plans):
  std::vector<int32_t> host_cu_seqlens;  // [num_seqs + 1]
  std::vector<int64_t> host_start_pos;   // [num_seqs]
  std::vector<int32_t> host_row_pos;     // [total_rows]
  int num_seqs() const { return static_cast<int>(seqs.size()); }
};

// What a layer may touch during Forward.
struct CudaContext {
  DeviceContext* dev = nullptr;
  StateStore* store = nullptr;
  const StateLayout* layout = nullptr;
  uint8_t* slot_pool = nullptr;   // device, [num_slots, layout->slot_bytes()]
  uint8_t* block_pool = nullptr;  // device, [num_blocks, layout->block_bytes()]
  const CudaBatch* batch = nullptr;
  RoutingCounts* routing = nullptr;
  // Decode steps from CUDA graphs (see CudaLayer::PrepareDecode): `uploads` is set while layers
  // prepare; `graph_decode` is true for the whole step, and layers whose DecodeGraphSafe() holds
  // then read the tables they prepared.
  StepUploads* uploads = nullptr;
  bool graph_decode = false;
  // The mixer input x of this Forward already rounded to bf16 (dense [total_rows, hidden]) when
  // the weights are bf16 (the block's norm wrote both); else nullptr. For the input projection:
  // Linear(dev, x, ctx.x_bf16, ...).
  const uint16_t* x_bf16 = nullptr;

  // Device address of a slot component.
  uint8_t* SlotComponent(int32_t slot, int layer, absl::string_view name) const {
    return slot_pool + static_cast<int64_t>(slot) * layout->slot_bytes() +
           layout->Component(layer, name).offset;
  }
  uint8_t* BlockData(int32_t block) const {
    return block_pool + static_cast<int64_t>(block) * layout->block_bytes();
  }
  // Makes the block of `chunk` in `stream` writable (allocating it, or copying a shared one on
  // the device, see StateStore::PrepareAppend) and returns its block index.
  absl::StatusOr<int32_t> WritableBlock(SequenceState* seq, int stream, int64_t chunk) const;
};

class CudaLayer {
 public:
  virtual ~CudaLayer() = default;
  // x: [total_rows, hidden] fp32 device, the normalised block input; out: [total_rows, hidden]
  // fp32 device, the mixer output (before the residual add). Advances nothing in SequenceState
  // except block tables; CudaBackend advances num_tokens after all layers ran. Scratch comes from
  // ctx.dev->scratch() and is freed after the step.
  virtual absl::Status Forward(const CudaContext& ctx, const float* x, float* out) = 0;
  // Decode steps from CUDA graphs. DecodeGraphSafe(): for a batch of one-token rows, Forward
  // with ctx.graph_decode set only enqueues work whose launch parameters depend on nothing but
  // the batch size, fixed device addresses and the device arrays of CudaBatch (no host state
  // changes, no uploads, no synchronisation), so that CudaBackend may capture it into a CUDA
  // graph once per batch size and replay it. For such a step CudaBackend asks every graph-safe
  // layer CanPrepareDecode (no state change; false makes the whole step run eagerly), then calls
  // PrepareDecode (host work before the device work: block allocation, table changes staged in
  // ctx.uploads), applies the uploads, runs the graph, and calls FinishDecode (host bookkeeping
  // once the step's device work is enqueued, e.g. dropping blocks a window slid past).
  virtual bool DecodeGraphSafe() const { return false; }
  virtual bool CanPrepareDecode(const CudaContext& ctx) const { return DecodeGraphSafe(); }
  virtual absl::Status PrepareDecode(const CudaContext& ctx) { return absl::OkStatus(); }
  virtual void FinishDecode(const CudaContext& ctx) {}
};

struct CudaLayerArgs {
  const ModelConfig* config = nullptr;
  int layer = 0;
  std::string prefix;  // e.g. "model.layers.3.attn." (fla) or "model.layers.3.self_attn." (llama)
  Checkpoint* checkpoint = nullptr;
  const StateLayout* layout = nullptr;
  DeviceContext* dev = nullptr;
  DeviceWeights* weights = nullptr;  // uploads; owns the device copies
  // Decode-graph tables: the most sequences in a step, and the longest context (tokens) whose
  // tables such a step can hold (0: no decode graphs for layers with KV blocks).
  int max_step_seqs = 0;
  int64_t max_context = 0;
};

absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaGdnLayer(const CudaLayerArgs& args);
absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaNatslLayer(const CudaLayerArgs& args);
absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaNhaLayer(const CudaLayerArgs& args);
absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaAttentionLayer(const CudaLayerArgs& args);

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_CUDA_LAYER_H_
