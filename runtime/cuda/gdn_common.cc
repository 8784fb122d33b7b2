#include "runtime/cuda/gdn_common.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "runtime/base/status_macros.h"

namespace hyla::cuda {
namespace {

constexpr int kMaxHeadKDim = 256;  // GdnDecode / GdnPrefill limit on dk
constexpr int kMaxHeadVDim = 512;  // GdnPrefill limit on dv (GdnDecode has none)

// Byte offset of a slot component of `layer` with exactly `bytes` bytes; -1 when absent and
// !required. InternalError naming the component when it is missing (required) or has another
// size.
absl::StatusOr<int64_t> ComponentOffset(const StateLayout& layout, int layer,
                                        absl::string_view name, int64_t bytes, bool required) {
  const StateComponent* c = layout.FindComponent(layer, name);
  if (c == nullptr) {
    if (!required) return int64_t{-1};
    return absl::InternalError(absl::StrCat("GdnBranch: the state layout has no component \"", name,
                                            "\" for layer ", layer));
  }
  if (c->bytes != bytes || c->offset % 4 != 0) {
    return absl::InternalError(absl::StrCat("GdnBranch: component \"", name, "\" of layer ", layer,
                                            " has ", c->bytes, " bytes at offset ", c->offset,
                                            ", expected ", bytes, " (4-byte aligned)"));
  }
  return c->offset;
}

}  // namespace

absl::Status PlanGdnPieces(const CudaContext& ctx, GdnPieces* pieces) {
  if (ctx.batch == nullptr || ctx.dev == nullptr || pieces == nullptr) {
    return absl::InvalidArgumentError("PlanGdnPieces: no batch, device or output");
  }
  const CudaBatch& batch = *ctx.batch;
  const int n = batch.num_seqs();
  if (static_cast<int>(batch.host_cu_seqlens.size()) != n + 1 ||
      static_cast<int>(batch.host_start_pos.size()) != n) {
    return absl::InternalError(absl::StrCat("PlanGdnPieces: the batch has ", n, " sequences but ",
                                            batch.host_cu_seqlens.size(), " cu_seqlens and ",
                                            batch.host_start_pos.size(), " start positions"));
  }
  pieces->host_piece_offsets.resize(static_cast<size_t>(n) + 1);
  const int num = kernels::GdnPrefillPlan(batch.host_cu_seqlens.data(), batch.host_start_pos.data(),
                                          n, pieces->host_piece_offsets.data());
  if (num < 0) {
    return absl::InternalError("PlanGdnPieces: invalid cu_seqlens or start positions");
  }
  pieces->num_pieces = num;
  HYLA_ASSIGN_OR_RETURN(pieces->piece_offsets, ctx.dev->Upload(pieces->host_piece_offsets.data(),
                                                               n + 1, "GDN prefill piece offsets"));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<GdnBranch>> GdnBranch::Create(const GdnBranchOptions& options,
                                                             Checkpoint* checkpoint,
                                                             const StateLayout* layout,
                                                             DeviceContext* dev,
                                                             DeviceWeights* weights) {
  const GdnLayerConfig& g = options.config;
  const std::string where = absl::StrCat("GdnBranch (layer ", options.layer, ")");
  if (checkpoint == nullptr || layout == nullptr || dev == nullptr || weights == nullptr ||
      options.hidden < 1) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": bad arguments"));
  }
  if (g.num_heads < 1 || g.num_v_heads < 1 || g.num_v_heads % g.num_heads != 0 ||
      g.head_k_dim < 1 || g.head_k_dim > kMaxHeadKDim || g.head_v_dim < 1 ||
      g.head_v_dim > kMaxHeadVDim || (g.use_short_conv && g.conv_size < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unsupported shape (H ", g.num_heads, ", HV ", g.num_v_heads, ", dk ",
                     g.head_k_dim, ", dv ", g.head_v_dim, ", conv ", g.conv_size,
                     "); the CUDA kernels need HV % H == 0, dk in 1..", kMaxHeadKDim,
                     " and dv in 1..", kMaxHeadVDim));
  }
  if (layout->slot_bytes() % 4 != 0) {
    return absl::InternalError(
        absl::StrCat(where, ": slot size ", layout->slot_bytes(), " is not a multiple of 4 bytes"));
  }

  std::unique_ptr<GdnBranch> b(new GdnBranch());
  b->cfg_ = g;
  b->layer_ = options.layer;
  b->hidden_ = options.hidden;
  b->with_output_norm_ = options.with_output_norm;
  b->kd_ = g.key_dim();
  b->vd_ = g.value_dim();
  b->conv_ch_ = 2 * b->kd_ + b->vd_;
  b->off_g_ = b->conv_ch_;
  b->off_a_ = b->off_g_ + (g.use_gate ? b->vd_ : 0);
  b->off_b_ = b->off_a_ + g.num_v_heads;
  b->proj_width_ = b->off_b_ + g.num_v_heads;
  b->conv_kernel_ = g.use_short_conv ? g.conv_size : 1;
  b->q_scale_ = static_cast<float>(std::pow(static_cast<double>(g.head_k_dim), -0.5));
  b->slot_floats_ = layout->slot_bytes() / 4;

  // Slot components.
  const int64_t state_bytes = int64_t{g.num_v_heads} * g.head_k_dim * g.head_v_dim * 4;
  HYLA_ASSIGN_OR_RETURN(b->off_state_,
                        ComponentOffset(*layout, options.layer, "S", state_bytes, true));
  if (b->conv_kernel_ > 1) {
    HYLA_ASSIGN_OR_RETURN(b->off_conv_,
                          ComponentOffset(*layout, options.layer, "conv",
                                          int64_t{b->conv_kernel_ - 1} * b->conv_ch_ * 4, true));
  }
  HYLA_ASSIGN_OR_RETURN(b->off_committed_,
                        ComponentOffset(*layout, options.layer, "S_committed", state_bytes, false));
  HYLA_ASSIGN_OR_RETURN(b->off_g_sum_, ComponentOffset(*layout, options.layer, "g_sum",
                                                       int64_t{g.num_v_heads} * 4, false));

  // Projections, fused into one [P, hidden] matrix in the column order of a projected row.
  const std::string& p = options.prefix;
  const int64_t d = options.hidden, hv = g.num_v_heads;
  std::vector<float> fused(static_cast<size_t>(b->proj_width_ * d));
  int64_t row = 0;
  auto take_rows = [&](const char* name, int64_t rows) -> absl::Status {
    HYLA_ASSIGN_OR_RETURN(F32Tensor t, checkpoint->TakeF32(p + name, {rows, d}));
    std::memcpy(fused.data() + row * d, t.data(), sizeof(float) * rows * d);
    row += rows;
    return absl::OkStatus();
  };
  HYLA_RETURN_IF_ERROR(take_rows("q_proj.weight", b->kd_));
  HYLA_RETURN_IF_ERROR(take_rows("k_proj.weight", b->kd_));
  HYLA_RETURN_IF_ERROR(take_rows("v_proj.weight", b->vd_));
  if (g.use_gate) HYLA_RETURN_IF_ERROR(take_rows("g_proj.weight", b->vd_));
  HYLA_RETURN_IF_ERROR(take_rows("a_proj.weight", hv));
  HYLA_RETURN_IF_ERROR(take_rows("b_proj.weight", hv));
  {
    F32Tensor t = F32Tensor::Owned(std::move(fused), {b->proj_width_, d});
    HYLA_ASSIGN_OR_RETURN(b->w_proj_, weights->Matrix(t, p + "{q,k,v,g,a,b}_proj.weight"));
  }

  HYLA_ASSIGN_OR_RETURN(F32Tensor a_log, checkpoint->TakeF32(p + "A_log", {hv}));
  HYLA_ASSIGN_OR_RETURN(b->a_log_, weights->F32(a_log, p + "A_log"));
  HYLA_ASSIGN_OR_RETURN(F32Tensor dt_bias, checkpoint->TakeF32(p + "dt_bias", {hv}));
  HYLA_ASSIGN_OR_RETURN(b->dt_bias_, weights->F32(dt_bias, p + "dt_bias"));

  // Conv weights [conv_ch, K], channels q | k | v (the order of the conv tail); without short
  // convs a K = 1 conv with unit weights, which is the identity (x·1 is exact): SiLU alone.
  const int64_t K = b->conv_kernel_;
  std::vector<float> conv_w(static_cast<size_t>(b->conv_ch_ * K), 1.0f);
  if (g.use_short_conv) {
    const char* names[3] = {"q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"};
    const int64_t widths[3] = {b->kd_, b->kd_, b->vd_};
    int64_t at = 0;
    for (int i = 0; i < 3; ++i) {
      HYLA_ASSIGN_OR_RETURN(F32Tensor w, checkpoint->TakeF32(p + names[i], {widths[i], 1, K}));
      std::memcpy(conv_w.data() + at * K, w.data(), sizeof(float) * widths[i] * K);
      at += widths[i];
    }
  }
  HYLA_ASSIGN_OR_RETURN(b->conv_w_, weights->F32(conv_w, p + "{q,k,v}_conv1d.weight"));

  if (options.with_output_norm) {
    HYLA_ASSIGN_OR_RETURN(F32Tensor o_norm,
                          checkpoint->TakeF32(p + "o_norm.weight", {g.head_v_dim}));
    HYLA_ASSIGN_OR_RETURN(b->o_norm_, weights->F32(o_norm, p + "o_norm.weight"));
  }
  return b;
}

absl::Status GdnBranch::Project(DeviceContext& dev, const float* x, const uint16_t* x_bf16,
                                int64_t rows, float* proj, int64_t x_stride,
                                int64_t proj_stride) const {
  if (x_stride != 0 && x_stride != w_proj_.cols) x_bf16 = nullptr;  // x_bf16 is dense
  return Linear(dev, x, x_bf16, rows, w_proj_, nullptr, proj, x_stride, proj_stride);
}

absl::Status GdnBranch::ConvSilu(const CudaContext& ctx, const float* proj, float* qkv,
                                 int64_t proj_stride) const {
  if (ctx.batch == nullptr || ctx.dev == nullptr || ctx.slot_pool == nullptr) {
    return absl::InvalidArgumentError("GdnBranch::ConvSilu: incomplete context");
  }
  const CudaBatch& batch = *ctx.batch;
  if (batch.total_rows == 0 || batch.num_seqs() == 0) return absl::OkStatus();
  if (proj_stride == 0) proj_stride = proj_width_;
  float* tail = conv_kernel_ > 1 ? reinterpret_cast<float*>(ctx.slot_pool + off_conv_) : nullptr;
  if (batch.all_decode && batch.total_rows == batch.num_seqs()) {
    kernels::ShortConvDecodeParams p;
    p.num_seqs = batch.num_seqs();
    p.channels = static_cast<int>(conv_ch_);
    p.kernel = conv_kernel_;
    p.dtype = kernels::KernelDType::kF32;
    p.x = proj;
    p.x_stride = proj_stride;
    p.weight = conv_w_;
    p.slots = batch.slots;
    p.tail = tail;
    p.tail_slot_stride = slot_floats_;
    p.silu = true;
    p.out = qkv;
    p.out_stride = conv_ch_;
    HYLA_KERNEL_RETURN_IF_ERROR(kernels::ShortConvDecode(p, ctx.dev->kernel_stream()),
                                absl::StrCat("ShortConvDecode (GDN layer ", layer_, ")"));
    return absl::OkStatus();
  }
  kernels::ShortConvPrefillParams p;
  p.num_seqs = batch.num_seqs();
  p.total_rows = batch.total_rows;
  p.channels = static_cast<int>(conv_ch_);
  p.kernel = conv_kernel_;
  p.dtype = kernels::KernelDType::kF32;
  p.x = proj;
  p.x_stride = proj_stride;
  p.weight = conv_w_;
  p.cu_seqlens = batch.cu_seqlens;
  p.slots = batch.slots;
  p.tail = tail;
  p.tail_slot_stride = slot_floats_;
  p.silu = true;
  p.out = qkv;
  p.out_stride = conv_ch_;
  HYLA_KERNEL_RETURN_IF_ERROR(kernels::ShortConvPrefill(p, ctx.dev->kernel_stream()),
                              absl::StrCat("ShortConvPrefill (GDN layer ", layer_, ")"));
  return absl::OkStatus();
}

absl::Status GdnBranch::Recurrence(const CudaContext& ctx, const float* qkv, const float* proj,
                                   float* o, const GdnRecurrenceOptions& options,
                                   int64_t proj_stride, int64_t o_stride) const {
  if (ctx.batch == nullptr || ctx.dev == nullptr || ctx.slot_pool == nullptr) {
    return absl::InvalidArgumentError("GdnBranch::Recurrence: incomplete context");
  }
  const CudaBatch& batch = *ctx.batch;
  if (batch.total_rows == 0 || batch.num_seqs() == 0) return absl::OkStatus();
  if (proj_stride == 0) proj_stride = proj_width_;
  if (o_stride == 0) o_stride = vd_;
  float* state = reinterpret_cast<float*>(ctx.slot_pool + off_state_);
  DeviceContext& dev = *ctx.dev;

  const bool decode = options.commit == nullptr && !options.force_prefill && batch.all_decode &&
                      batch.total_rows == batch.num_seqs();
  if (decode) {
    kernels::GdnDecodeParams p;
    p.num_seqs = batch.num_seqs();
    p.num_heads = cfg_.num_heads;
    p.num_v_heads = cfg_.num_v_heads;
    p.dk = cfg_.head_k_dim;
    p.dv = cfg_.head_v_dim;
    p.dtype = kernels::KernelDType::kF32;
    p.q = qkv + off_q();
    p.q_stride = conv_ch_;
    p.k = qkv + off_k();
    p.k_stride = conv_ch_;
    p.v = qkv + off_v();
    p.v_stride = conv_ch_;
    p.a = proj + off_a_;
    p.a_stride = proj_stride;
    p.b = proj + off_b_;
    p.b_stride = proj_stride;
    p.a_log = a_log_;
    p.dt_bias = dt_bias_;
    p.allow_neg_eigval = cfg_.allow_neg_eigval;
    p.q_scale = q_scale_;
    p.slots = batch.slots;
    p.state = state;
    p.state_slot_stride = slot_floats_;
    p.o = o;
    p.o_stride = o_stride;
    HYLA_KERNEL_RETURN_IF_ERROR(kernels::GdnDecode(p, dev.kernel_stream()),
                                absl::StrCat("GdnDecode (GDN layer ", layer_, ")"));
    return absl::OkStatus();
  }

  if (options.commit != nullptr) {
    if (options.pieces == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("GdnBranch::Recurrence (layer ", layer_,
                       "): a commit mask needs the pieces it is indexed by"));
    }
    if (off_committed_ < 0 || off_g_sum_ < 0) {
      return absl::InternalError(
          absl::StrCat("GdnBranch::Recurrence (layer ", layer_,
                       "): a commit mask needs the slot components \"S_committed\" and \"g_sum\""));
    }
  }
  // Everything allocated from here on is dead once the kernels are enqueued (later users of the
  // memory are ordered after them on the stream).
  const size_t mark = dev.scratch().Mark();
  const GdnPieces* pieces = options.pieces;
  if (pieces == nullptr) {
    HYLA_RETURN_IF_ERROR(PlanGdnPieces(ctx, &own_pieces_));
    pieces = &own_pieces_;
  }
  if (static_cast<int>(pieces->host_piece_offsets.size()) != batch.num_seqs() + 1 ||
      pieces->piece_offsets == nullptr) {
    dev.scratch().RewindTo(mark);
    return absl::InvalidArgumentError(absl::StrCat("GdnBranch::Recurrence (layer ", layer_,
                                                   "): the pieces are not a plan of this batch"));
  }
  kernels::GdnPrefillParams p;
  p.num_seqs = batch.num_seqs();
  p.num_heads = cfg_.num_heads;
  p.num_v_heads = cfg_.num_v_heads;
  p.dk = cfg_.head_k_dim;
  p.dv = cfg_.head_v_dim;
  p.dtype = kernels::KernelDType::kF32;
  p.q = qkv + off_q();
  p.q_stride = conv_ch_;
  p.k = qkv + off_k();
  p.k_stride = conv_ch_;
  p.v = qkv + off_v();
  p.v_stride = conv_ch_;
  p.a = proj + off_a_;
  p.a_stride = proj_stride;
  p.b = proj + off_b_;
  p.b_stride = proj_stride;
  p.a_log = a_log_;
  p.dt_bias = dt_bias_;
  p.allow_neg_eigval = cfg_.allow_neg_eigval;
  p.q_scale = q_scale_;
  p.cu_seqlens = batch.cu_seqlens;
  p.start_pos = batch.start_pos;
  p.piece_offsets = pieces->piece_offsets;
  p.num_pieces = pieces->num_pieces;
  p.slots = batch.slots;
  p.state = state;
  p.state_slot_stride = slot_floats_;
  if (options.commit != nullptr) {
    p.commit = options.commit;
    p.committed = reinterpret_cast<float*>(ctx.slot_pool + off_committed_);
    p.committed_slot_stride = slot_floats_;
    p.g_sum = reinterpret_cast<float*>(ctx.slot_pool + off_g_sum_);
    p.g_sum_slot_stride = slot_floats_;
    p.decay_uncommitted = options.decay_uncommitted;
  }
  p.o = o;
  p.o_stride = o_stride;
  const int64_t rows = batch.total_rows;
  void* stream = dev.kernel_stream();
  // bf16 weights (the bf16 serving precision) and plain GDN of a tensor-core shape: the prefill
  // runs on tensor cores (kernels/gdn_prefill_mma.cu; bf16 q, k, v, a, b and o, fp32 state, like
  // fla's chunk_gated_delta_rule) instead of the fp32 kernel, ~12x faster at long prompts
  // (H100, 32K tokens, HV 32, d 128: 1.85 ms against 22.0 ms per layer). The activations are
  // rounded to bf16 around it (copies in step scratch, which fit in what the fp32 kernel's
  // larger workspace would have taken; if they do not, the fp32 kernel runs).
  // HYLA_GDN_PREFILL_FP32=1 keeps the fp32 kernel.
  kernels::GdnPrefillParams p16 = p;
  p16.dtype = kernels::KernelDType::kBf16;
  const char* force_fp32 = std::getenv("HYLA_GDN_PREFILL_FP32");
  bool tensor_cores = w_proj_.dtype == DType::kBF16 && options.commit == nullptr &&
                      !(force_fp32 != nullptr && std::strcmp(force_fp32, "1") == 0) &&
                      kernels::GdnPrefillUsesTensorCores(p16) && pieces->num_pieces > 0;
  int err = 0;
  if (tensor_cores) {
    // q | k | v: dense rows of conv_ch_; a, b: the proj columns [ab0, ab1) as dense rows; o:
    // [rows, HV·dv], converted back to fp32 into `o` afterwards.
    const int64_t ab0 = std::min(off_a_, off_b_);
    const int64_t ab1 = std::max(off_a_, off_b_) + cfg_.num_v_heads;
    absl::StatusOr<void*> ws =
        dev.scratch().Alloc(kernels::GdnPrefillWorkspaceBytesFor(p16), "GDN prefill workspace");
    absl::StatusOr<void*> qkv16 =
        ws.ok() ? dev.scratch().Alloc(2 * rows * conv_ch_, "GDN prefill bf16 qkv") : ws.status();
    absl::StatusOr<void*> ab16 =
        qkv16.ok() ? dev.scratch().Alloc(2 * rows * (ab1 - ab0), "GDN bf16 gates") : qkv16.status();
    absl::StatusOr<void*> o16 =
        ab16.ok() ? dev.scratch().Alloc(2 * rows * vd_, "GDN prefill bf16 output") : ab16.status();
    if (o16.ok()) {
      uint16_t* q16 = static_cast<uint16_t*>(*qkv16);
      uint16_t* g16 = static_cast<uint16_t*>(*ab16);
      p16.workspace = *ws;
      p16.workspace_bytes = kernels::GdnPrefillWorkspaceBytesFor(p16);
      p16.q = q16 + off_q();
      p16.k = q16 + off_k();
      p16.v = q16 + off_v();
      p16.a = g16 + (off_a_ - ab0);
      p16.b = g16 + (off_b_ - ab0);
      p16.a_stride = p16.b_stride = ab1 - ab0;
      p16.o = *o16;
      p16.o_stride = vd_;
      err = kernels::ConvertF32ToBf16Rows(qkv, conv_ch_, rows, conv_ch_, q16, conv_ch_, stream);
      if (err == 0) {
        err = kernels::ConvertF32ToBf16Rows(proj + ab0, proj_stride, rows, ab1 - ab0, g16,
                                            ab1 - ab0, stream);
      }
      if (err == 0) err = kernels::GdnPrefill(p16, stream);
      if (err == 0) {
        err = kernels::ConvertBf16ToF32Rows(static_cast<const uint16_t*>(*o16), vd_, rows, vd_, o,
                                            o_stride, stream);
      }
    } else {
      tensor_cores = false;  // no room for the bf16 copies: the fp32 kernel
      dev.scratch().RewindTo(mark);
    }
  }
  if (!tensor_cores) {
    const size_t ws_bytes = kernels::GdnPrefillWorkspaceBytes(pieces->num_pieces, cfg_.num_v_heads,
                                                              cfg_.head_k_dim, cfg_.head_v_dim);
    if (pieces->num_pieces > 0) {
      absl::StatusOr<void*> ws = dev.scratch().Alloc(ws_bytes, "GDN prefill workspace");
      if (!ws.ok()) {
        dev.scratch().RewindTo(mark);
        return ws.status();
      }
      p.workspace = *ws;
    }
    p.workspace_bytes = ws_bytes;
    err = kernels::GdnPrefill(p, stream);
  }
  dev.scratch().RewindTo(mark);
  HYLA_KERNEL_RETURN_IF_ERROR(
      err, absl::StrCat("GdnPrefill (GDN layer ", layer_, ", ", pieces->num_pieces, " pieces)"));
  return absl::OkStatus();
}

absl::Status GdnBranch::OutputNorm(DeviceContext& dev, int64_t rows, const float* o,
                                   const float* proj, float* out, int64_t proj_stride,
                                   int64_t o_stride, int64_t out_stride, uint16_t* out_bf16) const {
  if (!with_output_norm_) {
    return absl::FailedPreconditionError(absl::StrCat("GdnBranch::OutputNorm (layer ", layer_,
                                                      "): created without the output norm"));
  }
  if (rows == 0) return absl::OkStatus();
  kernels::GatedRmsNormParams p;
  p.rows = rows;
  p.heads = cfg_.num_v_heads;
  p.n = cfg_.head_v_dim;
  p.x = o;
  p.x_stride = o_stride == 0 ? vd_ : o_stride;
  p.gate = cfg_.use_gate ? proj + off_g_ : nullptr;
  p.gate_stride = proj_stride == 0 ? proj_width_ : proj_stride;
  p.weight = o_norm_;
  p.eps = cfg_.norm_eps;
  p.out = out;
  p.out_stride = out_stride == 0 ? vd_ : out_stride;
  p.out_bf16 = out_bf16;
  HYLA_KERNEL_RETURN_IF_ERROR(kernels::GatedRmsNorm(p, dev.kernel_stream()),
                              absl::StrCat("GatedRmsNorm (GDN layer ", layer_, ")"));
  return absl::OkStatus();
}

absl::StatusOr<float*> GdnBranch::Forward(const CudaContext& ctx, const float* x,
                                          const GdnRecurrenceOptions& options, float** proj_out,
                                          float** qkv_out, uint16_t** o_bf16_out) const {
  if (ctx.batch == nullptr || ctx.dev == nullptr) {
    return absl::InvalidArgumentError("GdnBranch::Forward: incomplete context");
  }
  DeviceContext& dev = *ctx.dev;
  const int64_t rows = ctx.batch->total_rows;
  HYLA_ASSIGN_OR_RETURN(float* proj,
                        dev.scratch().AllocArray<float>(rows * proj_width_, "GDN projections"));
  HYLA_ASSIGN_OR_RETURN(float* qkv,
                        dev.scratch().AllocArray<float>(rows * conv_ch_, "GDN conv outputs"));
  HYLA_ASSIGN_OR_RETURN(float* o, dev.scratch().AllocArray<float>(rows * vd_, "GDN head outputs"));
  HYLA_RETURN_IF_ERROR(Project(dev, x, ctx.x_bf16, rows, proj));
  HYLA_RETURN_IF_ERROR(ConvSilu(ctx, proj, qkv));
  HYLA_RETURN_IF_ERROR(Recurrence(ctx, qkv, proj, o, options));
  uint16_t* o_bf16 = nullptr;
  if (with_output_norm_ && o_bf16_out != nullptr && ctx.x_bf16 != nullptr) {
    HYLA_ASSIGN_OR_RETURN(o_bf16,
                          dev.scratch().AllocArray<uint16_t>(rows * vd_, "GDN head outputs bf16"));
  }
  if (with_output_norm_) {
    HYLA_RETURN_IF_ERROR(OutputNorm(dev, rows, o, proj, o, 0, 0, 0, o_bf16));
  }
  if (o_bf16_out != nullptr) *o_bf16_out = o_bf16;
  if (proj_out != nullptr) *proj_out = proj;
  if (qkv_out != nullptr) *qkv_out = qkv;
  return o;
}

}  // namespace hyla::cuda
