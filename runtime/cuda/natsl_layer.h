// The CUDA NAtS-L layer (CreateCudaNatslLayer of cuda_layer.h): the same function as the CPU
// reference runtime/cpu/natsl_layer.{h,cc} (see there and reference/models.md §1 for the
// semantics and the carried state), on the device. Per step:
//   1. router: Σx of the current chunks ("x_sum") and W_s·mean(x) of every chunk the step
//      completes (kernels NatslChunkSums, NatslRouterLogits, the CPU's summation order), copied
//      to the host; the decisions are made there with the CPU's own code (cpu::Softmax, first
//      maximum wins), so that they agree exactly with the CPU for equal inputs;
//   2. the GDN branch (GdnBranch of gdn_common.h): fused projection q|k|v|z|a|b, short convs +
//      SiLU, and the gated delta rule with the per-(chunk, head) commit/decay (GdnPrefill with
//      the decisions as commit mask; decode steps: GdnDecode + NatslDecodeCommit);
//   3. the softmax view: q/k RMSNorm per softmax head (GatedRmsNorm), K/V of every row written
//      into its chunk's block of each decision head's KV stream (NatslKvWrite), and attention of
//      every (row, decision head) over [kept chunks…, current chunk] (PagedAttentionDecode, one
//      "sequence" per (row, decision head) with its own block table and kv_len = the visible
//      tokens);
//   4. the dual-norm mix with the per-token weights and the SiLU gate (NatslMixOutput), o_proj.
// Block bookkeeping follows the CPU exactly: a chunk's block is made writable when the step
// reaches the chunk (copy-on-write / cap policy of StateStore::PrepareAppend), the kept chunks
// are the entries before it, and a completed chunk routed to GDN drops its block before the next
// chunk's block is taken. Because a dropped block can be handed out again in the same step,
// step 3 runs in phases: phase k holds the k-th chunk segment of every sequence, and phase k+1's
// KV writes are queued after phase k's attention.
//
// Cost notes: a step that completes a chunk synchronises the host with the stream once per layer
// (the decisions); the softmax branch reads every kept block once per query row (prefill is
// O(rows · kept tokens), no tiling over queries), with block tables of rows·H·(kept + 1) int32
// per phase (uploaded in pieces of at most 2M entries).
//
// Thread-safety: as CudaLayer (one worker thread).
#ifndef HYLA_RUNTIME_CUDA_NATSL_LAYER_H_
#define HYLA_RUNTIME_CUDA_NATSL_LAYER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "runtime/cpu/natsl_layer.h"
#include "runtime/cuda/cuda_layer.h"

namespace hyla::cuda {

// CreateCudaNatslLayer with every routing decision appended to `log` (may be null; the same
// records as the CPU layer's log, in the order the decisions are applied). `log` must outlive
// the layer.
absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaNatslLayerWithLog(const CudaLayerArgs& args,
                                                                       cpu::NatslDecisionLog* log);

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_NATSL_LAYER_H_
