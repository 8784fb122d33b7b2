// CpuBackend: the reference implementation of every layer kind, fast enough to serve a small
// model on two cores. Weights are fp32 (bf16/fp16 checkpoints are converted at load); state is
// fp32. It runs the residual blocks (pre-norm → mixer → residual → norm → SwiGLU → residual)
// around the per-kind CpuLayers, the embedding and the LM head.
//
// Thread-safety: one scheduler thread drives a CpuBackend; Step parallelises internally over
// its ThreadPool.
#ifndef HYLA_RUNTIME_CPU_CPU_BACKEND_H_
#define HYLA_RUNTIME_CPU_CPU_BACKEND_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/base/thread_pool.h"
#include "runtime/cpu/cpu_layer.h"
#include "runtime/engine/backend.h"
#include "runtime/model/checkpoint.h"
#include "runtime/state/state_store.h"

namespace hyla::cpu {

struct CpuBackendOptions {
  int num_threads = 2;      // threads of the internal pool (the caller's thread included)
  StateStoreOptions store;  // slots, blocks, per-sequence cap and policy
};

class CpuBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(std::unique_ptr<Checkpoint> checkpoint,
                                                            const CpuBackendOptions& options);

  const ModelConfig& config() const override { return checkpoint_->config(); }
  const StateLayout& layout() const override { return layout_; }
  StateStore& store() override { return *store_; }
  void ResetSlot(int32_t slot) override;
  void CopySlot(int32_t src, int32_t dst) override;
  absl::Status Step(absl::Span<const SequenceWork> batch, StepOutput* out) override;

 private:
  struct Block {
    F32Tensor mixer_norm;  // [hidden]
    std::unique_ptr<CpuLayer> mixer;
    F32Tensor mlp_norm;              // [hidden]
    F32Tensor w_gate, w_up, w_down;  // [inter, hidden], [inter, hidden], [hidden, inter]
  };

  CpuBackend(std::unique_ptr<Checkpoint> checkpoint, StateLayout layout, int num_threads);
  absl::Status Load(const CpuBackendOptions& options);

  std::unique_ptr<Checkpoint> checkpoint_;  // keeps zero-copy weights mapped
  StateLayout layout_;
  std::unique_ptr<StateStore> store_;
  ThreadPool pool_;
  F32Tensor embed_;       // [vocab, hidden]
  F32Tensor final_norm_;  // [hidden]
  F32Tensor lm_head_;     // [vocab, hidden] (the embedding when tied)
  std::vector<Block> blocks_;
  std::vector<uint8_t> slot_memory_;   // [num_slots, slot_bytes]
  std::vector<uint8_t> block_memory_;  // [num_blocks, block_bytes]
  // Step scratch, reused across steps.
  std::vector<float> h_, xn_, mix_, mlp_scratch_, head_in_;
};

}  // namespace hyla::cpu

#endif  // HYLA_RUNTIME_CPU_CPU_BACKEND_H_
