// The CUDA Gated DeltaNet layer (fla gated_deltanet; the GDN layers of Qwen3-Next-style
// hybrids). Reference: runtime/cpu/gdn_layer.cc, step for step:
//   proj = x·[W_q; W_k; W_v; W_g; W_a; W_b]ᵀ   (one GEMM)
//   qkv  = SiLU(short causal conv with the slot's carried tail)   ShortConvDecode /
//   ShortConvPrefill o    = gated delta rule per value head (GVA), state "S"       GdnDecode /
//   GdnPrefill o    = RMSNorm(o)·o_norm·g·sigmoid(g) per value head          GatedRmsNorm out  =
//   o·W_oᵀ
// (GdnBranch, gdn_common.h). A step whose sequences all have one new row takes the decode
// kernels; any other step (prefill, or decodes mixed with prefill chunks) runs the whole batch
// through the varlen prefill kernels, which treat a one-row sequence as a one-token piece.
// Step scratch is released when the layer's kernels are enqueued (stream order).
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/base/status_macros.h"
#include "runtime/cuda/cuda_layer.h"
#include "runtime/cuda/gdn_common.h"

namespace hyla::cuda {
namespace {

class CudaGdnLayer : public CudaLayer {
 public:
  CudaGdnLayer(int layer, std::unique_ptr<GdnBranch> branch, DeviceMatrix w_o)
      : layer_(layer), branch_(std::move(branch)), w_o_(w_o) {}

  // Decode: projections, ShortConvDecode, GdnDecode, gated norm, o_proj — all by slot from the
  // batch's device arrays.
  bool DecodeGraphSafe() const override { return true; }

  absl::Status Forward(const CudaContext& ctx, const float* x, float* out) override {
    if (ctx.dev == nullptr || ctx.batch == nullptr || ctx.slot_pool == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("CUDA gdn layer ", layer_, ": incomplete context"));
    }
    const int64_t rows = ctx.batch->total_rows;
    if (rows == 0) return absl::OkStatus();
    DeviceContext& dev = *ctx.dev;
    const size_t mark = dev.scratch().Mark();
    uint16_t* o_bf16 = nullptr;
    absl::StatusOr<float*> o =
        branch_->Forward(ctx, x, GdnRecurrenceOptions(), nullptr, nullptr, &o_bf16);
    absl::Status st = o.status();
    if (st.ok()) st = Linear(dev, *o, o_bf16, rows, w_o_, nullptr, out);
    dev.scratch().RewindTo(mark);
    return st;
  }

 private:
  const int layer_;
  std::unique_ptr<GdnBranch> branch_;
  const DeviceMatrix w_o_;  // [hidden, HV·dv]
};

}  // namespace

absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaGdnLayer(const CudaLayerArgs& args) {
  if (args.config == nullptr || args.checkpoint == nullptr || args.layout == nullptr ||
      args.dev == nullptr || args.weights == nullptr || args.layer < 0 ||
      args.layer >= static_cast<int>(args.config->layers.size())) {
    return absl::InvalidArgumentError("CreateCudaGdnLayer: bad arguments");
  }
  const LayerConfig& lc = args.config->layers[args.layer];
  if (lc.kind != LayerKind::kGdn) {
    return absl::InvalidArgumentError(absl::StrCat("CreateCudaGdnLayer: layer ", args.layer,
                                                   " is a ", LayerKindName(lc.kind), " layer"));
  }
  GdnBranchOptions options;
  options.config = lc.gdn;
  options.layer = args.layer;
  options.hidden = args.config->hidden_size;
  options.prefix = args.prefix;
  options.with_output_norm = true;
  HYLA_ASSIGN_OR_RETURN(
      std::unique_ptr<GdnBranch> branch,
      GdnBranch::Create(options, args.checkpoint, args.layout, args.dev, args.weights));
  HYLA_ASSIGN_OR_RETURN(F32Tensor w_o,
                        args.checkpoint->TakeF32(args.prefix + "o_proj.weight",
                                                 {args.config->hidden_size, branch->value_dim()}));
  HYLA_ASSIGN_OR_RETURN(DeviceMatrix w_o_dev,
                        args.weights->Matrix(w_o, args.prefix + "o_proj.weight"));
  return std::unique_ptr<CudaLayer>(
      std::make_unique<CudaGdnLayer>(args.layer, std::move(branch), w_o_dev));
}

}  // namespace hyla::cuda
