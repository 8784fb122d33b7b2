// The CUDA NHA layer (JusenD/NHA from-scratch NativeHybridAttention). Reference:
// runtime/cpu/nha_layer.cc, step for step:
//   proj = x·[W_q; W_k; W_v; W_f]ᵀ                          (one fused GEMM, rows [q | k | v | f])
//   q, k, v ← SiLU(short causal conv with the slot's tails)   (use_short_conv only:
//                                                              ShortConvDecode / ShortConvPrefill)
//   o    = SiLU(NHA core)                                     kernels/nha.h Nha: slot update,
//                                                              window ring, joint softmax
//   out  = o_proj(RMSNorm_eps(o) · g_norm)                    RmsNormF32, Linear
// The same tensors as the CPU layer (names relative to the layer prefix): q_proj.weight
// [H·dk, d], k_proj.weight [Hkv·dk, d], v_proj.weight [Hkv·dv, d], f_proj.weight [Hkv·M, d],
// {q,k,v}_conv1d.weight [channels, 1, K] (use_short_conv), g_norm.weight [H·dv],
// o_proj.weight [d, H·dv]. Slot components (StateLayout kind kNha): "H_K", "H_V" fp32, "ring"
// in layout.kv_dtype() (fp32 or bf16), "conv" fp32 (use_short_conv).
//
// A step whose sequences all have one row runs without a plan upload (NhaDecodeWork); any other
// step plans its work items on the host (NhaMakePlan, chunks of kChunkRows rows) and uploads
// them into step scratch. Step scratch is released when the layer's kernels are enqueued.
//
// Thread-safety: as CudaLayer (one caller, the backend's worker thread).
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "runtime/base/status_macros.h"
#include "runtime/cpu/ops.h"
#include "runtime/cuda/cuda_layer.h"

namespace hyla::cuda {
namespace {

// Rows a slot-kernel work item walks in order (kernels/nha.h NhaWork::chunk_rows).
constexpr int kChunkRows = 64;

// Byte offset of a slot component of `layer` with exactly `bytes` bytes, aligned to `align`.
absl::StatusOr<int64_t> ComponentOffset(const StateLayout& layout, int layer,
                                        absl::string_view name, int64_t bytes, int64_t align) {
  const StateComponent* c = layout.FindComponent(layer, name);
  const int64_t have = c == nullptr ? 0 : c->bytes;
  if (have != bytes || (c != nullptr && c->offset % align != 0)) {
    return absl::InternalError(absl::StrCat(
        "CUDA nha layer ", layer, ": state component \"", name, "\" has ", have, " bytes",
        c == nullptr ? std::string() : absl::StrCat(" at offset ", c->offset), ", expected ", bytes,
        " (", align, "-byte aligned)"));
  }
  return c == nullptr ? int64_t{-1} : c->offset;
}

class CudaNhaLayer : public CudaLayer {
 public:
  CudaNhaLayer(const NhaLayerConfig& cfg, int layer, int64_t hidden)
      : c_(cfg), layer_(layer), d_(hidden) {}

  absl::Status Load(const CudaLayerArgs& args);
  absl::Status Forward(const CudaContext& ctx, const float* x, float* out) override;
  // Decode reads positions and slots from the batch's device arrays and uploads no plan
  // (NhaDecodeWork), so it can be replayed from a CUDA graph.
  bool DecodeGraphSafe() const override { return true; }

 private:
  int64_t q_width() const { return int64_t{c_.num_heads} * c_.head_k_dim; }
  int64_t k_width() const { return int64_t{c_.num_kv_heads} * c_.head_k_dim; }
  int64_t v_width() const { return int64_t{c_.num_kv_heads} * c_.head_v_dim; }
  int64_t f_width() const { return int64_t{c_.num_kv_heads} * c_.num_slots; }
  int64_t proj_width() const { return q_width() + k_width() + v_width() + f_width(); }
  int64_t conv_width() const { return q_width() + k_width() + v_width(); }
  int64_t value_dim() const { return int64_t{c_.num_heads} * c_.head_v_dim; }
  int ring_tokens() const { return std::max(c_.window_size, c_.kv_shift); }

  // SiLU(short conv) of the q | k | v columns of proj into qkv [rows, conv_width()].
  absl::Status ShortConvs(const CudaContext& ctx, const float* proj, float* qkv) const;

  const NhaLayerConfig c_;
  const int layer_;
  const int64_t d_;
  kernels::KernelDType ring_dtype_ = kernels::KernelDType::kF32;
  int64_t slot_bytes_ = 0;
  int64_t off_hk_ = 0, off_hv_ = 0, off_ring_ = -1, off_conv_ = -1;  // bytes within a slot
  DeviceMatrix w_proj_;                                              // [proj_width(), d]
  DeviceMatrix w_o_;                                                 // [d, H·dv]
  const float* conv_w_[3] = {nullptr, nullptr, nullptr};             // q, k, v: [channels, K]
  const float* g_norm_ = nullptr;                                    // [H·dv]
  const float* inv_freq_ = nullptr;                                  // [dk / 2]
  kernels::NhaPlan plan_;                                            // reused across steps
};

absl::Status CudaNhaLayer::Load(const CudaLayerArgs& args) {
  Checkpoint* ck = args.checkpoint;
  const std::string& p = args.prefix;
  const StateLayout& L = *args.layout;
  const int64_t kv_size = DTypeSize(L.kv_dtype());
  if (L.kv_dtype() == DType::kF32) {
    ring_dtype_ = kernels::KernelDType::kF32;
  } else if (L.kv_dtype() == DType::kBF16) {
    ring_dtype_ = kernels::KernelDType::kBf16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("CUDA nha layer ", layer_,
                                                   ": the window ring must be F32 or BF16, not ",
                                                   DTypeName(L.kv_dtype())));
  }
  slot_bytes_ = L.slot_bytes();
  if (slot_bytes_ % 4 != 0) {
    return absl::InternalError(absl::StrCat("CUDA nha layer ", layer_, ": slot size ", slot_bytes_,
                                            " is not a multiple of 4 bytes"));
  }
  const int64_t hkv = c_.num_kv_heads, M = c_.num_slots;
  HYLA_ASSIGN_OR_RETURN(off_hk_, ComponentOffset(L, layer_, "H_K", hkv * c_.head_k_dim * M * 4, 4));
  HYLA_ASSIGN_OR_RETURN(off_hv_, ComponentOffset(L, layer_, "H_V", hkv * M * c_.head_v_dim * 4, 4));
  HYLA_ASSIGN_OR_RETURN(off_ring_,
                        ComponentOffset(L, layer_, "ring",
                                        int64_t{ring_tokens()} * hkv *
                                            (int64_t{c_.head_k_dim} + c_.head_v_dim + M) * kv_size,
                                        kv_size));
  if (c_.use_short_conv) {
    HYLA_ASSIGN_OR_RETURN(
        off_conv_,
        ComponentOffset(L, layer_, "conv", int64_t{c_.conv_size - 1} * conv_width() * 4, 4));
  } else {
    HYLA_ASSIGN_OR_RETURN(off_conv_, ComponentOffset(L, layer_, "conv", 0, 4));
  }

  // Projections, fused into one [proj_width(), d] matrix in the column order of a row.
  std::vector<float> fused(static_cast<size_t>(proj_width() * d_));
  int64_t row = 0;
  auto take_rows = [&](const char* name, int64_t rows) -> absl::Status {
    HYLA_ASSIGN_OR_RETURN(F32Tensor t, ck->TakeF32(p + name, {rows, d_}));
    std::memcpy(fused.data() + row * d_, t.data(), sizeof(float) * rows * d_);
    row += rows;
    return absl::OkStatus();
  };
  HYLA_RETURN_IF_ERROR(take_rows("q_proj.weight", q_width()));
  HYLA_RETURN_IF_ERROR(take_rows("k_proj.weight", k_width()));
  HYLA_RETURN_IF_ERROR(take_rows("v_proj.weight", v_width()));
  HYLA_RETURN_IF_ERROR(take_rows("f_proj.weight", f_width()));
  {
    F32Tensor t = F32Tensor::Owned(std::move(fused), {proj_width(), d_});
    HYLA_ASSIGN_OR_RETURN(w_proj_, args.weights->Matrix(t, p + "{q,k,v,f}_proj.weight"));
  }
  if (c_.use_short_conv) {
    const char* names[3] = {"q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"};
    const int64_t widths[3] = {q_width(), k_width(), v_width()};
    for (int i = 0; i < 3; ++i) {
      HYLA_ASSIGN_OR_RETURN(F32Tensor w, ck->TakeF32(p + names[i], {widths[i], 1, c_.conv_size}));
      HYLA_ASSIGN_OR_RETURN(conv_w_[i], args.weights->F32(w, p + names[i]));
    }
  }
  HYLA_ASSIGN_OR_RETURN(F32Tensor g_norm, ck->TakeF32(p + "g_norm.weight", {value_dim()}));
  HYLA_ASSIGN_OR_RETURN(g_norm_, args.weights->F32(g_norm, p + "g_norm.weight"));
  HYLA_ASSIGN_OR_RETURN(F32Tensor w_o, ck->TakeF32(p + "o_proj.weight", {d_, value_dim()}));
  HYLA_ASSIGN_OR_RETURN(w_o_, args.weights->Matrix(w_o, p + "o_proj.weight"));
  // The CPU layer's inverse frequencies, bit for bit.
  std::vector<float> inv_freq(static_cast<size_t>(c_.head_k_dim / 2));
  cpu::RopeInvFreq(c_.rope_theta, c_.head_k_dim, inv_freq.data());
  HYLA_ASSIGN_OR_RETURN(inv_freq_, args.weights->F32(inv_freq, p + "(RoPE inv_freq)"));
  return absl::OkStatus();
}

absl::Status CudaNhaLayer::ShortConvs(const CudaContext& ctx, const float* proj, float* qkv) const {
  const CudaBatch& batch = *ctx.batch;
  const int64_t pw = proj_width();
  const int64_t cw = conv_width();
  const int64_t widths[3] = {q_width(), k_width(), v_width()};
  const bool decode = batch.all_decode && batch.total_rows == batch.num_seqs();
  float* tail = reinterpret_cast<float*>(ctx.slot_pool + off_conv_);
  int64_t col = 0;
  for (int i = 0; i < 3; ++i) {
    if (decode) {
      kernels::ShortConvDecodeParams cp;
      cp.num_seqs = batch.num_seqs();
      cp.channels = static_cast<int>(widths[i]);
      cp.kernel = c_.conv_size;
      cp.dtype = kernels::KernelDType::kF32;
      cp.x = proj + col;
      cp.x_stride = pw;
      cp.weight = conv_w_[i];
      cp.slots = batch.slots;
      cp.tail = tail;
      cp.tail_slot_stride = slot_bytes_ / 4;
      cp.silu = true;
      cp.out = qkv + col;
      cp.out_stride = cw;
      HYLA_KERNEL_RETURN_IF_ERROR(kernels::ShortConvDecode(cp, ctx.dev->kernel_stream()),
                                  absl::StrCat("ShortConvDecode (nha layer ", layer_, ")"));
    } else {
      kernels::ShortConvPrefillParams cp;
      cp.num_seqs = batch.num_seqs();
      cp.total_rows = batch.total_rows;
      cp.channels = static_cast<int>(widths[i]);
      cp.kernel = c_.conv_size;
      cp.dtype = kernels::KernelDType::kF32;
      cp.x = proj + col;
      cp.x_stride = pw;
      cp.weight = conv_w_[i];
      cp.cu_seqlens = batch.cu_seqlens;
      cp.slots = batch.slots;
      cp.tail = tail;
      cp.tail_slot_stride = slot_bytes_ / 4;
      cp.silu = true;
      cp.out = qkv + col;
      cp.out_stride = cw;
      HYLA_KERNEL_RETURN_IF_ERROR(kernels::ShortConvPrefill(cp, ctx.dev->kernel_stream()),
                                  absl::StrCat("ShortConvPrefill (nha layer ", layer_, ")"));
    }
    // The CPU layout of "conv": q tail [K−1, H·dk], then k tail, then v tail.
    tail += int64_t{c_.conv_size - 1} * widths[i];
    col += widths[i];
  }
  return absl::OkStatus();
}

absl::Status CudaNhaLayer::Forward(const CudaContext& ctx, const float* x, float* out) {
  if (ctx.dev == nullptr || ctx.batch == nullptr || ctx.slot_pool == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA nha layer ", layer_, ": incomplete context"));
  }
  const CudaBatch& batch = *ctx.batch;
  const int64_t rows = batch.total_rows;
  const int n = batch.num_seqs();
  if (rows == 0 || n == 0) return absl::OkStatus();
  if (static_cast<int>(batch.host_cu_seqlens.size()) != n + 1 || batch.cu_seqlens == nullptr ||
      batch.start_pos == nullptr || batch.slots == nullptr) {
    return absl::InternalError(absl::StrCat("CUDA nha layer ", layer_, ": the batch of ", n,
                                            " sequences has ", batch.host_cu_seqlens.size(),
                                            " host cu_seqlens or lacks device arrays"));
  }
  DeviceContext& dev = *ctx.dev;
  const size_t mark = dev.scratch().Mark();
  // Everything allocated below is dead once the kernels are enqueued (stream order).
  absl::Status st = [&]() -> absl::Status {
    const int64_t pw = proj_width();
    HYLA_ASSIGN_OR_RETURN(float* proj,
                          dev.scratch().AllocArray<float>(rows * pw, "NHA projections"));
    HYLA_ASSIGN_OR_RETURN(float* o,
                          dev.scratch().AllocArray<float>(rows * value_dim(), "NHA head outputs"));
    HYLA_RETURN_IF_ERROR(Linear(dev, x, ctx.x_bf16, rows, w_proj_, nullptr, proj));

    kernels::NhaParams p;
    p.num_seqs = n;
    p.total_rows = rows;
    p.num_heads = c_.num_heads;
    p.num_kv_heads = c_.num_kv_heads;
    p.dk = c_.head_k_dim;
    p.dv = c_.head_v_dim;
    p.num_slots = c_.num_slots;
    p.window = c_.window_size;
    p.kv_shift = c_.kv_shift;
    p.scale = c_.scale;
    p.gate_logit_normalizer = c_.gate_logit_normalizer;
    p.inv_freq = inv_freq_;
    if (c_.use_short_conv) {
      const int64_t cw = conv_width();
      HYLA_ASSIGN_OR_RETURN(float* qkv,
                            dev.scratch().AllocArray<float>(rows * cw, "NHA conv outputs"));
      HYLA_RETURN_IF_ERROR(ShortConvs(ctx, proj, qkv));
      p.q = qkv;
      p.k = qkv + q_width();
      p.v = qkv + q_width() + k_width();
      p.q_stride = p.k_stride = p.v_stride = cw;
    } else {
      p.q = proj;
      p.k = proj + q_width();
      p.v = proj + q_width() + k_width();
      p.q_stride = p.k_stride = p.v_stride = pw;
    }
    p.f = proj + conv_width();
    p.f_stride = pw;
    p.cu_seqlens = batch.cu_seqlens;
    p.start_pos = batch.start_pos;
    p.slots = batch.slots;
    p.hk = reinterpret_cast<float*>(ctx.slot_pool + off_hk_);
    p.hv = reinterpret_cast<float*>(ctx.slot_pool + off_hv_);
    p.state_slot_stride = slot_bytes_ / 4;
    const int64_t kv_size = ring_dtype_ == kernels::KernelDType::kF32 ? 4 : 2;
    p.ring = ring_tokens() > 0 ? static_cast<void*>(ctx.slot_pool + off_ring_) : nullptr;
    p.ring_dtype = ring_dtype_;
    p.ring_slot_stride = slot_bytes_ / kv_size;
    p.o = o;
    p.o_stride = value_dim();
    if (batch.all_decode && rows == n) {
      p.work = kernels::NhaDecodeWork(n);
      p.plan = nullptr;
    } else {
      HYLA_KERNEL_RETURN_IF_ERROR(
          kernels::NhaMakePlan(batch.host_cu_seqlens.data(), n, c_.num_heads, c_.num_kv_heads,
                               kChunkRows, &plan_),
          absl::StrCat("NhaMakePlan (nha layer ", layer_, ")"));
      p.work = plan_.work;
      HYLA_ASSIGN_OR_RETURN(
          p.plan,
          dev.Upload(plan_.data.data(), static_cast<int64_t>(plan_.data.size()), "NHA work items"));
    }
    p.workspace_bytes = kernels::NhaWorkspaceBytes(p);
    HYLA_ASSIGN_OR_RETURN(p.workspace, dev.scratch().Alloc(p.workspace_bytes, "NHA workspace"));
    HYLA_KERNEL_RETURN_IF_ERROR(
        kernels::Nha(p, dev.kernel_stream()),
        absl::StrCat("Nha (nha layer ", layer_, ", ", n, " sequences, ", rows, " rows)"));

    // out = o_proj(RMSNorm(o) · g_norm); o is already SiLU'd by the core.
    HYLA_KERNEL_RETURN_IF_ERROR(
        kernels::RmsNormF32(o, value_dim(), g_norm_, c_.output_norm_eps, rows, value_dim(),
                            /*gemma=*/false, o, value_dim(), dev.kernel_stream()),
        absl::StrCat("RmsNormF32 (nha layer ", layer_, ")"));
    return Linear(dev, o, rows, w_o_, nullptr, out);
  }();
  dev.scratch().RewindTo(mark);
  return st;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaNhaLayer(const CudaLayerArgs& args) {
  if (args.config == nullptr || args.checkpoint == nullptr || args.layout == nullptr ||
      args.dev == nullptr || args.weights == nullptr || args.layer < 0 ||
      args.layer >= static_cast<int>(args.config->layers.size())) {
    return absl::InvalidArgumentError("CreateCudaNhaLayer: bad arguments");
  }
  const LayerConfig& lc = args.config->layers[static_cast<size_t>(args.layer)];
  if (lc.kind != LayerKind::kNha) {
    return absl::InvalidArgumentError(absl::StrCat("CreateCudaNhaLayer: layer ", args.layer,
                                                   " is a ", LayerKindName(lc.kind), " layer"));
  }
  const NhaLayerConfig& c = lc.nha;
  // The CPU layer's conditions (runtime/cpu/nha_layer.cc), then the kernels' limits.
  if (!c.feature_map_swish || c.use_output_gate || !c.use_norm || c.head_k_dim % 2 != 0 ||
      c.num_kv_heads < 1 || c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nha layer ", args.layer,
        ": unsupported configuration (needs swish feature map, output norm without gate, even "
        "head_k_dim, num_heads a multiple of num_kv_heads)"));
  }
  if (c.head_k_dim < 2 || c.head_k_dim > kernels::kNhaMaxHeadDim || c.head_v_dim < 1 ||
      c.head_v_dim > kernels::kNhaMaxHeadDim || c.num_slots < 1 ||
      c.num_slots > kernels::kNhaMaxSlots || c.num_heads / c.num_kv_heads > kernels::kNhaMaxGroup ||
      c.window_size < 0 || c.kv_shift < 0 || (c.use_short_conv && c.conv_size < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA nha layer ", args.layer, ": unsupported shape (dk ", c.head_k_dim,
                     ", dv ", c.head_v_dim, ", M ", c.num_slots, ", H ", c.num_heads, ", Hkv ",
                     c.num_kv_heads, ", W ", c.window_size, ", kv_shift ", c.kv_shift, ", conv ",
                     c.conv_size, "); the CUDA kernels need head dims in 2..",
                     kernels::kNhaMaxHeadDim, ", 1..", kernels::kNhaMaxSlots, " slots and at most ",
                     kernels::kNhaMaxGroup, " query heads per KV head"));
  }
  auto layer = std::make_unique<CudaNhaLayer>(c, args.layer, args.config->hidden_size);
  HYLA_RETURN_IF_ERROR(layer->Load(args));
  return std::unique_ptr<CudaLayer>(std::move(layer));
}

}  // namespace hyla::cuda
