// Host-only API of kernels/nha.cu: part of kernels/ops.h (include that, never this).
//
// The NHA token mixer core (Native Hybrid Attention; reference/models.md §2.2; CPU reference:
// NhaLayer::RunHead of runtime/cpu/nha_layer.cc, whose per-token recurrence is the spec) for a
// batch of sequences packed row by row. For every row at position p and KV head h (the state of
// h is shared by its query group, G = H / Hkv heads):
//   v ← SiLU(v);  f ← logsigmoid(f) / gate_logit_normalizer                       [M]
//   the slots consume token u = p − kv_shift (no-op while u < 0), before the read-out:
//     H_K ← H_K · diag(α_u) + SiLU(k_u) s_uᵀ      H_V ← diag(α_u) · H_V + s_u v_uᵀ
//     α = exp(kNhaDecayLogScale · f) (= 2^f, see nha_layer.cc), s = 1 − exp(f)
//   logits: slot m: scale · SiLU(q)ᵀ H_K[:, m];  window keys i ∈ [max(0, p − W), p]:
//     scale · RoPE(q, p)ᵀ RoPE(k_i, i)   (rotate-half, inv_freq given, angle = float(p)·inv_freq)
//   one softmax over [slots ; window];  o = SiLU(Σ_m π_m H_V[m] + Σ_i π_i v_i)
// The caller applies the output RMSNorm (g_norm) and o_proj (the CPU layer's last lines).
//
// State per slot (the CPU StateLayout kind kNha): H_K [Hkv, dk, M] and H_V [Hkv, M, dv] fp32 at
// hk / hv + slot · state_slot_stride, and the ring [R = max(W, kv_shift)][Hkv][dk + dv + M] of
// the last R tokens (pre-RoPE k, post-SiLU v, log-gate f; entry = position mod R) in ring_dtype
// at ring + slot · ring_slot_stride. Rows of a sequence see the state its earlier rows left, as
// the per-token recurrence does: the slot kernels walk the rows of a sequence in order (a long
// sequence is cut into chunks of chunk_rows rows, whose start states a scan kernel stores in the
// workspace, so that chunks run in parallel), and the window of a row reads earlier rows of the
// same step from the step's own inputs. The ring is written last.
//
// Numerics: fp32 throughout; the state update and the elementwise maps use the CPU's operation
// order without fused multiply-add; the dot products and softmax sums run in another order
// (results agree with the CPU to rounding). With a bf16 ring a token read back by a later row
// (from the ring, or from this step's inputs) is rounded to bf16 exactly as if stored, and a row
// uses its own token unrounded, so results do not depend on how a sequence is split into steps.
//
// Launch sequence (one stream): prepare (per row: the ring entry of its token, the slot update
// it applies, SiLU(q)), scan (only for sequences of more than chunk_rows rows), slot logits,
// window + joint softmax, slot values + output, ring write.
#ifndef HYLA_KERNELS_NHA_H_
#define HYLA_KERNELS_NHA_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hyla::kernels {

// ---- nha.cu --------------------------------------------------------------------------------
// The slot decay α = exp(kNhaDecayLogScale · f) = 2^f (runtime/cpu/nha_layer.cc kDecayLogScale).
constexpr float kNhaDecayLogScale = 0.69314718055994530942f;
// Limits of the kernels.
constexpr int kNhaMaxHeadDim = 256;  // dk (even) and dv
constexpr int kNhaMaxSlots = 128;    // M
constexpr int kNhaMaxGroup = 16;     // H / Hkv

// How the rows of a step are cut into work items (host side, from NhaMakePlan or
// NhaDecodeWork).
struct NhaWork {
  int chunk_rows = 64;    // C: rows one slot-kernel item walks in order
  int tile_rows = 1;      // T: rows one window-kernel item serves (T · G <= 16)
  int num_chunks = 0;     // slot-kernel items
  int num_tiles = 0;      // window-kernel items
  int num_scans = 0;      // sequences with more than C rows
  int num_snapshots = 0;  // chunk start states stored in the workspace
};

// A plan: the work and its item lists, to be copied to the device as one int32 array
// (NhaParams::plan):
//   chunks [num_chunks][3]: (sequence, first row in the sequence, snapshot index or −1)
//   tiles  [num_tiles][2]:  (sequence, first row in the sequence)
//   scans  [num_scans][2]:  (sequence, snapshot index of its first chunk)
struct NhaPlan {
  NhaWork work;
  std::vector<int32_t> data;
};

// Fills *plan for the batch with host cu_seqlens [num_seqs + 1] (non-decreasing, [0] = 0).
// chunk_rows >= 1 (64 is the default trade-off of parallelism and snapshot memory); the tile
// rows follow from the group size. Returns 0, or cudaErrorInvalidValue (1) on invalid input.
int NhaMakePlan(const int32_t* host_cu_seqlens, int num_seqs, int num_heads, int num_kv_heads,
                int chunk_rows, NhaPlan* plan);

// The work of a batch whose sequences have at most one row each (decode), which needs no plan
// array (NhaParams::plan = nullptr): item i is sequence i.
NhaWork NhaDecodeWork(int num_seqs);

struct NhaParams {
  int num_seqs = 0;        // may be 0 (nothing is launched)
  int64_t total_rows = 0;  // cu_seqlens[num_seqs] (the host copy); 0: nothing launched
  int num_heads = 0;       // H
  int num_kv_heads = 0;    // Hkv, divides H, H / Hkv <= kNhaMaxGroup
  int dk = 0;              // head_k_dim, even, 2..256
  int dv = 0;              // head_v_dim, 1..256
  int num_slots = 0;       // M, 1..128
  int window = 0;          // W >= 0: a row sees itself and W earlier tokens
  int kv_shift = 0;        // >= 0: the slots consume token p − kv_shift
  float scale = 1.0f;      // logit scale
  float gate_logit_normalizer = 8.0f;
  const float* inv_freq = nullptr;  // [dk / 2] device, RoPE inverse frequencies
  // Inputs, fp32 device, rows `*_stride` elements apart; read only.
  const float* q = nullptr;  // [total_rows, H·dk]
  int64_t q_stride = 0;
  const float* k = nullptr;  // [total_rows, Hkv·dk]
  int64_t k_stride = 0;
  const float* v = nullptr;  // [total_rows, Hkv·dv] (before SiLU)
  int64_t v_stride = 0;
  const float* f = nullptr;  // [total_rows, Hkv·M] raw gate logits
  int64_t f_stride = 0;
  // Batch (device): sequence s owns rows [cu_seqlens[s], cu_seqlens[s+1]) at positions
  // start_pos[s] + 0, 1, ...; slots[s] < 0 marks padding (its o rows are zeroed, no state is
  // touched). Distinct sequences name distinct slots.
  const int32_t* cu_seqlens = nullptr;  // [num_seqs + 1]
  const int64_t* start_pos = nullptr;   // [num_seqs]
  const int32_t* slots = nullptr;       // [num_seqs]
  // Slot pool views (device): element offsets of the components within the pool.
  float* hk = nullptr;            // H_K of slot 0: [Hkv, dk, M] fp32
  float* hv = nullptr;            // H_V of slot 0: [Hkv, M, dv] fp32
  int64_t state_slot_stride = 0;  // floats between slots
  void* ring = nullptr;           // ring of slot 0 (unused when max(W, kv_shift) == 0)
  KernelDType ring_dtype = KernelDType::kF32;
  int64_t ring_slot_stride = 0;  // ring elements between slots
  // Output: o [total_rows, H·dv] fp32, rows o_stride apart: SiLU of the mixed heads.
  float* o = nullptr;
  int64_t o_stride = 0;
  // Work items: NhaMakePlan's work and its data on the device, or NhaDecodeWork(num_seqs) with
  // plan = nullptr when no sequence has more than one row.
  NhaWork work;
  const int32_t* plan = nullptr;
  // Device scratch of NhaWorkspaceBytes(params) bytes, 256-byte aligned.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Enqueues the NHA core on `stream`. Returns 0 or a cudaError_t (cudaErrorInvalidValue for
// rejected arguments, naming nothing: check the limits above).
int Nha(const NhaParams& params, void* stream);
// Workspace bytes for these sizes and this work (per row: SiLU(q), the row's ring entry and
// slot update, the slot logits; plus the chunk start states).
size_t NhaWorkspaceBytes(const NhaParams& params);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_NHA_H_
