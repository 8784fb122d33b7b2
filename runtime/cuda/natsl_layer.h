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
//      into its chunk's block of each decision head's KV stream (NatslKvWrite), and attention
//      over [kept chunks…, current chunk] per decision head n (its G softmax heads are the query
//      heads of its G-head KV stream): PagedAttentionPrefill with one "sequence" per chunk
//      segment (tiles of its rows, causal by position) or, in decode steps, PagedAttentionDecode
//      with one "sequence" per row (split-K for long contexts);
//   4. the dual-norm mix with the per-token weights and the SiLU gate (NatslMixOutput), o_proj.
// Block bookkeeping gives the CPU's tables: a chunk's block is made writable when the step
// reaches the chunk (StateStore::PrepareAppend: copy-on-write, cap policy), the kept chunks are
// the entries before it, and a completed chunk routed to GDN loses its block. Without a
// per-stream KV cap every block of the step is taken before any is dropped (one "wave": no
// block is handed out twice within a step, so all K/V writes can precede all attention; chunks
// dropped earlier in the step are left out of the kept lists). With a cap, eviction depends on
// the order of drops and allocations, so the step runs one wave per phase (phase k = the k-th
// chunk segment of every sequence), exactly in the CPU's order of StateStore operations; the
// device work of a wave is queued before the next wave writes into a block it may reuse.
//
// Cost notes: a step that completes a chunk synchronises the host with the stream once per layer
// for the decisions (overlapped with the projections and convs queued after the router); decode
// steps are not capturable in a CUDA graph as they are (host block bookkeeping per step). The
// attention reads every kept block once per (segment or decode row, decision head, KV head),
// with H launches per wave. Without a cap the peak block use of a step is the CPU's plus the
// blocks of the chunks it completes and routes to GDN (admission reserves that worst case).
//
// Thread-safety: as CudaLayer (one worker thread).
#ifndef HYLA_RUNTIME_CUDA_NATSL_LAYER_H_
#define HYLA_RUNTIME_CUDA_NATSL_LAYER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "runtime/cpu/natsl_layer.h"
#include "runtime/cuda/cuda_layer.h"

namespace hyla::cuda {

// CreateCudaNatslLayer with every routing decision appended to `log` (may be null): the CPU
// layer's records (same slots, chunks, heads, logits and ops); within a step the order may differ
// from the CPU's across sequences (phase by phase instead of sequence by sequence). `log` must
// outlive the layer.
absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaNatslLayerWithLog(const CudaLayerArgs& args,
                                                                       cpu::NatslDecisionLog* log);

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_NATSL_LAYER_H_
