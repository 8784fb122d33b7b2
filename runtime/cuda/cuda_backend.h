// CudaBackend: the Backend of one GPU. Same contract as cpu::CpuBackend (the reference): the
// residual blocks (pre-norm → mixer → residual → norm → SwiGLU → residual) around per-kind
// CudaLayers, the embedding and the LM head, for a batch of sequences at different positions.
//
// Memory is planned at Create and never grows: weights (fp32 or bf16, Precision), the state-slot
// pool and the KV-block pool (sizes from CudaBackendOptions::store, which the server derives from
// its memory budget), and one scratch arena sized for `max_step_tokens` rows and
// `max_step_seqs` sequences. A step that needs more scratch fails with ResourceExhausted; the
// request path never calls cudaMalloc. Recurrent state is fp32 in both precisions.
//
// Thread-safety: one scheduler thread drives a CudaBackend (the device context is bound to it).
#ifndef HYLA_RUNTIME_CUDA_CUDA_BACKEND_H_
#define HYLA_RUNTIME_CUDA_CUDA_BACKEND_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/cuda/cuda_layer.h"
#include "runtime/cuda/cuda_util.h"
#include "runtime/cuda/device_context.h"
#include "runtime/cuda/device_sampler.h"
#include "runtime/cuda/gemm.h"
#include "runtime/cuda/step_uploads.h"
#include "runtime/engine/backend.h"
#include "runtime/model/checkpoint.h"
#include "runtime/state/state_store.h"

namespace hyla::cuda {

struct CudaBackendOptions {
  int device = 0;
  Precision precision = Precision::kBf16;
  StateStoreOptions store;         // slots, blocks, per-sequence cap and policy
  int64_t max_step_tokens = 8192;  // rows one step may carry (the scheduler's token budget)
  int max_step_seqs = 256;         // sequences one step may carry
  // Extra scratch bytes on top of the planned activations (0: the default margin).
  int64_t extra_scratch_bytes = 0;
  // Sample on the device the items that carry a SequenceWork::sampler (SamplesOnDevice()).
  bool device_sampling = true;
  // Decode steps (every sequence one token) replay CUDA graphs captured per batch size, for at
  // most `max_graph_batch_sizes` distinct batch sizes. The step is cut into pieces (the
  // embedding, each block's mixer, each block's MLP); every maximal run of graph-safe pieces is
  // one graph (all of them when every mixer's DecodeGraphSafe() holds, as for GDN, NHA and
  // attention layers; NAtS-L mixers run eagerly between runs).
  bool cuda_graphs = true;
  int max_graph_batch_sizes = 64;
  // The longest context (tokens) a sequence may reach in a decode step replayed from a graph:
  // attention layers keep per-row block tables of that width on the device (max_step_seqs rows;
  // longer sequences make their steps run eagerly). 0: the store's per-stream cap when set,
  // else 131072.
  int64_t max_context = 0;
  // bf16 GEMMs of at most 64 rows on the skinny tensor-core kernel instead of cuBLAS
  // (DeviceContext::skinny_gemm). Off: on the H100 it is slower than cuBLAS at every decode
  // shape measured (kernels_bench 2026-11-23: 40.0 vs 29.0 us at 64 x 12352 x 2048; a
  // qwen3next-1b decode step at batch 64 and 1K context 4.88 vs 4.00 ms).
  bool skinny_gemm = false;
  // bf16 GEMMs of at most 256 rows on the cuBLASLt algorithm found fastest for their shape by
  // timing at the shape's first eager call (runtime/cuda/gemm_tuner.h; DeviceContext::gemm_tune)
  // instead of cublasGemmEx's heuristic. The environment variable HYLA_GEMM_TUNE=0 turns it off.
  bool gemm_tune = true;
  // Programmatic dependent launch of the decode step's small kernels (kernels/ops.h
  // SetProgrammaticDependentLaunch; process-wide, set at Create): each overlaps its launch with
  // the end of the kernel before it. The environment variable HYLA_PDL=0 turns it off.
  bool programmatic_launch = true;
};

// Device memory a CudaBackend of `options` would hold besides the weights (for the server's
// memory plan): slot pool + KV pool + scratch.
int64_t CudaBackendStateBytes(const ModelConfig& config, const CudaBackendOptions& options);

class CudaBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(std::unique_ptr<Checkpoint> checkpoint,
                                                             const CudaBackendOptions& options);
  ~CudaBackend() override;

  const ModelConfig& config() const override { return config_; }
  const StateLayout& layout() const override { return layout_; }
  StateStore& store() override { return *store_; }
  void ResetSlot(int32_t slot) override;
  void CopySlot(int32_t src, int32_t dst) override;
  absl::Status Step(absl::Span<const SequenceWork> batch, StepOutput* out) override;
  bool SamplesOnDevice() const override { return options_.device_sampling; }

  DeviceContext& device() { return *dev_; }
  Precision precision() const { return options_.precision; }
  int64_t weight_bytes() const { return weights_->bytes(); }
  int64_t scratch_high_water() const;
  // Decode-step graphs captured so far (segments) and replays; for benchmarks and tests.
  int64_t graphs_captured() const { return graphs_captured_; }
  int64_t graph_replays() const { return graph_replays_; }

 private:
  struct Block {
    const float* mixer_norm = nullptr;  // [hidden]
    std::unique_ptr<CudaLayer> mixer;
    const float* mlp_norm = nullptr;  // [hidden]
    DeviceMatrix w_gate_up;           // [2·inter, hidden] (gate rows, then up rows)
    DeviceMatrix w_down;              // [hidden, inter]
  };

  CudaBackend(const ModelConfig& config, StateLayout layout, const CudaBackendOptions& options);
  absl::Status Load(std::unique_ptr<Checkpoint> checkpoint);
  // One prefill, one decode and one mixed step on throw-away sequences (module loading, cuBLAS
  // heuristics) so that the first request is not slow.
  absl::Status Warmup();

  ModelConfig config_;
  StateLayout layout_;
  CudaBackendOptions options_;
  std::unique_ptr<DeviceContext> dev_;
  std::unique_ptr<DeviceWeights> weights_;
  std::unique_ptr<StateStore> store_;
  DeviceBuffer slot_pool_;       // [num_slots, slot_bytes]
  DeviceBuffer block_pool_;      // [num_blocks, block_bytes]
  const void* embed_ = nullptr;  // [vocab, hidden] in the weights' precision
  const float* final_norm_ = nullptr;
  DeviceMatrix lm_head_;  // [vocab, hidden]
  std::unique_ptr<DeviceSampler> sampler_;

  // CUDA graphs of decode steps: per batch size, one segment per run of graph-safe pieces.
  struct GraphSegment {
    CudaGraphExec exec;
    bool seen = false;       // ran once eagerly (capture comes at the second sight)
    bool attempted = false;  // capture tried (failed when !exec.valid())
  };
  // Pieces of a step: 0 the embedding, 2i + 1 block i's mixer, 2i + 2 block i's MLP. A run is a
  // maximal range [first, last] of pieces that are all graph-safe, or one piece that is not.
  struct PieceRun {
    int first = 0;
    int last = 0;
    bool graph_safe = false;
  };
  // Runs `fn` eagerly, or replays / captures it as segment `index` of `graphs` (nullptr: eager).
  // A segment runs eagerly the first time it is seen (the GEMM tuner times its new shapes then:
  // no synchronization is possible inside a capture) and is captured the second time.
  // `mark` is the scratch position fn starts from (rewound before an eager retry).
  absl::Status RunSegment(std::vector<GraphSegment>* graphs, size_t index, bool capturable,
                          size_t mark, const std::function<absl::Status()>& fn);
  std::vector<PieceRun> runs_;
  std::map<int64_t, std::vector<GraphSegment>> graphs_;
  StepUploads uploads_;        // decode-graph table changes of the step being prepared
  std::vector<uint8_t> meta_;  // the step's batch arrays, packed for one upload
  int64_t graphs_captured_ = 0;
  int64_t graph_replays_ = 0;
  std::vector<Block> blocks_;
};

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_CUDA_BACKEND_H_
