// GdnBranch: the Gated DeltaNet branch shared by the CUDA GDN layer (gdn_layer.cc) and the GDN
// branch of the CUDA NAtS-L layer (natsl_layer.cc), split into the steps of the CPU layers
// (runtime/cpu/gdn_layer.cc, runtime/cpu/natsl_layer.cc), each usable on its own:
//
//   1. Project:    proj[r] = x[r] · [W_q; W_k; W_v; W_g; W_a; W_b]ᵀ   (one fused GEMM)
//   2. ConvSilu:   qkv[r] = SiLU(causal depthwise conv of proj[r, q|k|v] with the carried tail)
//                  (SiLU alone without short convs); the tails in the slot are advanced
//   3. Recurrence: o[r] = gated delta rule per value head (GdnDecode or GdnPrefill: gates, L2
//                  norms of q/k, q·dk^-1/2, the fp32 state "S" in the slot), optionally with the
//                  NAtS-L commit/decay of GdnPrefill ("S_committed", "g_sum")
//   4. OutputNorm: o[r, hv] = RMSNorm(o[r, hv])·o_norm · g·sigmoid(g)   (gated; plain RMSNorm
//                  without the gate) — the GDN layer's norm; NAtS-L has its own mixed norm.
//
// Column layout of one projected row (P = proj_width()), the CPU layers' layout:
//   [ q: H·dk | k: H·dk | v: HV·dv | g: HV·dv (use_gate) | a: HV | b: HV ]
// qkv rows are [ q | k | v ] (conv_channels() = 2·H·dk + HV·dv) after conv + SiLU and BEFORE the
// L2 norms of q and k (the recurrence kernels normalise internally), so NAtS-L can read q̃ / k̃ / ṽ.
// The weights (names relative to the layer prefix, the CPU layers' names and shapes):
//   q_proj.weight, k_proj.weight [H·dk, hidden]; v_proj.weight [HV·dv, hidden];
//   g_proj.weight [HV·dv, hidden] (use_gate); a_proj.weight, b_proj.weight [HV, hidden];
//   A_log, dt_bias [HV]; q_conv1d.weight, k_conv1d.weight [H·dk, 1, K], v_conv1d.weight
//   [HV·dv, 1, K] (use_short_conv); o_norm.weight [dv] (with_output_norm).
// Slot components of `layer` (StateLayout): "S" [HV, dk, dv] fp32, "conv" [(K-1), 2·H·dk + HV·dv]
// fp32 (use_short_conv and K > 1); for the commit mask also "S_committed" [HV, dk, dv] and "g_sum"
// [HV] fp32.
//
// All activations are fp32 on the device; the rows of a step are ctx.batch's packed rows.
//
// Thread-safety: immutable after Create; the steps run on ctx.dev's stream and are called from
// the owning layer's (worker) thread.
#ifndef HYLA_RUNTIME_CUDA_GDN_COMMON_H_
#define HYLA_RUNTIME_CUDA_GDN_COMMON_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/cuda/cuda_layer.h"
#include "runtime/cuda/device_context.h"
#include "runtime/cuda/gemm.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/config.h"
#include "runtime/state/state_layout.h"

namespace hyla::cuda {

// The GdnPrefill pieces of a step's batch: every sequence's new rows cut at absolute positions
// that are multiples of 64 (kernels/ops.h GdnPrefillPlan). A NAtS-L commit mask is indexed
// [piece, head] in this numbering: sequence s owns pieces [host_piece_offsets[s],
// host_piece_offsets[s + 1]), in row order.
struct GdnPieces {
  int num_pieces = 0;
  std::vector<int32_t> host_piece_offsets;  // [num_seqs + 1]
  const int32_t* piece_offsets = nullptr;   // [num_seqs + 1] device (step scratch)
};

// Plans the pieces of ctx.batch (host copies of cu_seqlens and start_pos) and uploads the
// offsets into step scratch. `pieces` may be reused across steps (its vector keeps capacity).
absl::Status PlanGdnPieces(const CudaContext& ctx, GdnPieces* pieces);

// How step 3 runs.
struct GdnRecurrenceOptions {
  // Use GdnPrefill even when every sequence of the batch has one row (GdnDecode otherwise).
  bool force_prefill = false;
  // A plan of this step's batch (nullptr: planned inside when GdnPrefill runs).
  const GdnPieces* pieces = nullptr;
  // NAtS-L: the decision per (piece, head) applied when a piece completes its 64-token chunk
  // (1 = GDN: commit, 0 = softmax: decay the committed state and restore it), see
  // kernels/ops.h GdnPrefillParams. [num_pieces, HV] uint8 device, or nullptr (plain GDN).
  // Non-null forces GdnPrefill (which also keeps "g_sum" up to date on every row) and needs
  // `pieces` (the numbering the mask uses) and the slot components "S_committed" and "g_sum".
  const uint8_t* commit = nullptr;
  bool decay_uncommitted = true;  // NatslLayerConfig::decay_for_non_gdn_blocks
};

struct GdnBranchOptions {
  GdnLayerConfig config;  // H = num_heads, HV = num_v_heads (GVA when HV > H), dk, dv, ...
  int layer = 0;          // the layer index of the slot components
  int64_t hidden = 0;     // input width of the projections
  std::string prefix;     // tensor name prefix, e.g. "model.layers.3.attn."
  // Load o_norm.weight [dv] and allow OutputNorm / the norm of Forward (the GDN layer); the
  // NAtS-L layer loads its own norm weights (o_norm.weight1/2) and leaves this false.
  bool with_output_norm = true;
};

class GdnBranch {
 public:
  // Takes the branch's tensors from `checkpoint` (shapes checked), uploads them through
  // `weights` (the projections in its precision, the rest fp32) and resolves the slot
  // components of options.layer in `layout` (sizes checked; InternalError naming the component
  // on a mismatch). `dev` is the device of the upload.
  static absl::StatusOr<std::unique_ptr<GdnBranch>> Create(const GdnBranchOptions& options,
                                                           Checkpoint* checkpoint,
                                                           const StateLayout* layout,
                                                           DeviceContext* dev,
                                                           DeviceWeights* weights);

  const GdnLayerConfig& config() const { return cfg_; }
  int64_t key_dim() const { return kd_; }             // H·dk
  int64_t value_dim() const { return vd_; }           // HV·dv
  int64_t conv_channels() const { return conv_ch_; }  // 2·H·dk + HV·dv
  int64_t proj_width() const { return proj_width_; }  // P
  // Column offsets inside a projected row.
  int64_t off_q() const { return 0; }
  int64_t off_k() const { return kd_; }
  int64_t off_v() const { return 2 * kd_; }
  int64_t off_g() const { return off_g_; }  // only meaningful with use_gate
  int64_t off_a() const { return off_a_; }
  int64_t off_b() const { return off_b_; }
  // Device copies of the branch's fp32 parameters (valid as long as the DeviceWeights).
  const float* a_log() const { return a_log_; }         // [HV] A_log (not −exp(A_log))
  const float* dt_bias() const { return dt_bias_; }     // [HV]
  const float* conv_weight() const { return conv_w_; }  // [conv_channels, conv_kernel]
  int conv_kernel() const { return conv_kernel_; }      // K (1 without short convs)
  float q_scale() const { return q_scale_; }            // dk^-1/2

  // Step 1. x: [rows, hidden] fp32 device (row stride x_stride, 0 = hidden); x_bf16: the same
  // rounded to bf16, dense (CudaContext::x_bf16), or nullptr; proj: [rows, P] fp32 device (row
  // stride proj_stride, 0 = P). proj must not alias x.
  absl::Status Project(DeviceContext& dev, const float* x, const uint16_t* x_bf16, int64_t rows,
                       float* proj, int64_t x_stride = 0, int64_t proj_stride = 0) const;

  // Step 2, over ctx.batch (total_rows rows, one sequence after the other). proj: [rows, P]
  // (row stride proj_stride, 0 = P), columns q | k | v read; qkv: [rows, conv_channels()] dense,
  // must not alias proj. Advances every sequence's "conv" tail.
  absl::Status ConvSilu(const CudaContext& ctx, const float* proj, float* qkv,
                        int64_t proj_stride = 0) const;

  // Step 3, over ctx.batch. qkv: [rows, conv_channels()] from ConvSilu; proj: [rows, P] (a and b
  // read; row stride proj_stride, 0 = P); o: [rows, HV·dv] fp32 device (row stride o_stride,
  // 0 = dense). Advances every sequence's "S" (and with a commit mask "S_committed", "g_sum").
  absl::Status Recurrence(const CudaContext& ctx, const float* qkv, const float* proj, float* o,
                          const GdnRecurrenceOptions& options = GdnRecurrenceOptions(),
                          int64_t proj_stride = 0, int64_t o_stride = 0) const;

  // Step 4 (with_output_norm only), in place allowed: out[r, hv] = RMSNorm_eps(o[r, hv])·o_norm
  // ·g[r, hv]·sigmoid(g[r, hv]) with g the g columns of proj (use_gate), else without the gate
  // factor. o, out: [rows, HV·dv] (row strides o_stride / out_stride, 0 = dense).
  // out_bf16 (optional): the same values rounded to bf16, dense, for the o_proj GEMM.
  absl::Status OutputNorm(DeviceContext& dev, int64_t rows, const float* o, const float* proj,
                          float* out, int64_t proj_stride = 0, int64_t o_stride = 0,
                          int64_t out_stride = 0, uint16_t* out_bf16 = nullptr) const;

  // Steps 1–4 (1–3 when !with_output_norm) on ctx.batch with buffers from step scratch:
  // returns the normed per-head output [total_rows, HV·dv] (dense, step scratch); *proj_out and
  // *qkv_out (optional) receive the intermediate buffers (also step scratch). *o_bf16_out
  // (optional): with the output norm and bf16 weights (ctx.x_bf16 set), the output rounded to
  // bf16 as well (step scratch), else nullptr.
  absl::StatusOr<float*> Forward(const CudaContext& ctx, const float* x,
                                 const GdnRecurrenceOptions& options = GdnRecurrenceOptions(),
                                 float** proj_out = nullptr, float** qkv_out = nullptr,
                                 uint16_t** o_bf16_out = nullptr) const;

 private:
  GdnBranch() = default;

  GdnLayerConfig cfg_;
  int layer_ = 0;
  int64_t hidden_ = 0;
  bool with_output_norm_ = false;
  int64_t kd_ = 0, vd_ = 0, conv_ch_ = 0;
  int64_t off_g_ = 0, off_a_ = 0, off_b_ = 0, proj_width_ = 0;
  int conv_kernel_ = 1;  // K (1 without short convs: identity weights, SiLU only)
  float q_scale_ = 1.0f;

  DeviceMatrix w_proj_;             // [P, hidden] q | k | v | g | a | b
  const float* a_log_ = nullptr;    // [HV]
  const float* dt_bias_ = nullptr;  // [HV]
  const float* conv_w_ = nullptr;   // [conv_ch, K] q | k | v (ones with K = 1 without convs)
  const float* o_norm_ = nullptr;   // [dv] (with_output_norm)

  // Byte offsets of the slot components (-1: absent) and the slot stride in floats.
  int64_t off_state_ = -1, off_conv_ = -1, off_committed_ = -1, off_g_sum_ = -1;
  int64_t slot_floats_ = 0;

  // Host staging of the plan when Recurrence plans itself (reused, no per-step allocation).
  mutable GdnPieces own_pieces_;
};

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_GDN_COMMON_H_
