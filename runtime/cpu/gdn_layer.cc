// The CPU reference of fla's GatedDeltaNet layer (fla/layers/gated_deltanet.py), for prefill and
// decode alike: projections, short causal convs + SiLU with carried tails, L2-normalised q/k,
// gates, the exact recurrent gated delta rule for every token, the gated RMSNorm per value head
// and o_proj. Because every token goes through the same recurrent step whatever the chunking,
// a sequence's outputs are bitwise identical however its tokens are split into steps, and
// whatever else is in the batch.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/base/status_macros.h"
#include "runtime/cpu/cpu_layer.h"
#include "runtime/cpu/gdn_core.h"
#include "runtime/cpu/ops.h"

namespace hyla::cpu {
namespace {

class GdnLayer : public CpuLayer {
 public:
  GdnLayer(const GdnLayerConfig& cfg, int layer, int hidden)
      : cfg_(cfg), layer_(layer), d_(hidden) {
    kd_ = cfg_.key_dim();
    vd_ = cfg_.value_dim();
    conv_ch_ = 2 * kd_ + vd_;
    // Column layout of one projected row: q | k | v | g (use_gate) | a | b.
    off_g_ = conv_ch_;
    off_a_ = off_g_ + (cfg_.use_gate ? vd_ : 0);
    off_b_ = off_a_ + cfg_.num_v_heads;
    proj_width_ = off_b_ + cfg_.num_v_heads;
    q_scale_ = static_cast<float>(std::pow(static_cast<double>(cfg_.head_k_dim), -0.5));
  }

  absl::Status Load(const CpuLayerArgs& args) {
    Checkpoint* ck = args.checkpoint;
    const std::string& p = args.prefix;
    const int64_t d = d_, hv = cfg_.num_v_heads;
    HYLA_ASSIGN_OR_RETURN(w_q_, ck->TakeF32(p + "q_proj.weight", {kd_, d}));
    HYLA_ASSIGN_OR_RETURN(w_k_, ck->TakeF32(p + "k_proj.weight", {kd_, d}));
    HYLA_ASSIGN_OR_RETURN(w_v_, ck->TakeF32(p + "v_proj.weight", {vd_, d}));
    HYLA_ASSIGN_OR_RETURN(w_a_, ck->TakeF32(p + "a_proj.weight", {hv, d}));
    HYLA_ASSIGN_OR_RETURN(w_b_, ck->TakeF32(p + "b_proj.weight", {hv, d}));
    HYLA_ASSIGN_OR_RETURN(F32Tensor a_log, ck->TakeF32(p + "A_log", {hv}));
    HYLA_ASSIGN_OR_RETURN(dt_bias_, ck->TakeF32(p + "dt_bias", {hv}));
    neg_exp_a_log_.resize(static_cast<size_t>(hv));
    for (int64_t h = 0; h < hv; ++h) neg_exp_a_log_[h] = GdnNegExpALog(a_log.data()[h]);
    if (cfg_.use_short_conv) {
      const int64_t K = cfg_.conv_size;
      // One [conv_ch, K] weight with the channels in the order q | k | v of the conv tail.
      conv_w_.resize(static_cast<size_t>(conv_ch_ * K));
      const char* names[3] = {"q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"};
      const int64_t widths[3] = {kd_, kd_, vd_};
      int64_t at = 0;
      for (int i = 0; i < 3; ++i) {
        HYLA_ASSIGN_OR_RETURN(F32Tensor w, ck->TakeF32(p + names[i], {widths[i], 1, K}));
        std::memcpy(conv_w_.data() + at * K, w.data(), sizeof(float) * widths[i] * K);
        at += widths[i];
      }
    }
    if (cfg_.use_gate) {
      HYLA_ASSIGN_OR_RETURN(w_g_, ck->TakeF32(p + "g_proj.weight", {vd_, d}));
    }
    HYLA_ASSIGN_OR_RETURN(o_norm_, ck->TakeF32(p + "o_norm.weight", {cfg_.head_v_dim}));
    HYLA_ASSIGN_OR_RETURN(w_o_, ck->TakeF32(p + "o_proj.weight", {d, vd_}));
    return absl::OkStatus();
  }

  absl::Status Forward(const CpuContext& ctx, absl::Span<const CpuSeq> seqs, const float* x,
                       float* out) override {
    int64_t rows = 0;
    for (const CpuSeq& s : seqs) rows = std::max(rows, s.row_begin + s.num_rows);
    if (rows == 0) return absl::OkStatus();
    ThreadPool* pool = ctx.pool;
    const int64_t d = d_, P = proj_width_;
    proj_.resize(static_cast<size_t>(rows * P));
    qkv_.resize(static_cast<size_t>(rows * conv_ch_));
    o_.resize(static_cast<size_t>(rows * vd_));
    float* proj = proj_.data();
    float* qkv = qkv_.data();
    float* o = o_.data();

    // 1. Input projections of every row (Linear is row-order invariant: a row's values do not
    //    depend on the other rows of the call).
    LinearStrided(pool, x, d, rows, d, w_q_.data(), kd_, nullptr, proj, P);
    LinearStrided(pool, x, d, rows, d, w_k_.data(), kd_, nullptr, proj + kd_, P);
    LinearStrided(pool, x, d, rows, d, w_v_.data(), vd_, nullptr, proj + 2 * kd_, P);
    if (cfg_.use_gate)
      LinearStrided(pool, x, d, rows, d, w_g_.data(), vd_, nullptr, proj + off_g_, P);
    LinearStrided(pool, x, d, rows, d, w_a_.data(), cfg_.num_v_heads, nullptr, proj + off_a_, P);
    LinearStrided(pool, x, d, rows, d, w_b_.data(), cfg_.num_v_heads, nullptr, proj + off_b_, P);

    // 2. Short causal convs + SiLU per sequence with its carried tail (q | k | v channels), or
    //    SiLU alone without short convs.
    if (cfg_.use_short_conv) {
      pool->ParallelFor(static_cast<int64_t>(seqs.size()), 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const CpuSeq& s = seqs[i];
          float* tail = cfg_.conv_size > 1 ? SlotF32(ctx, s, layer_, "conv") : nullptr;
          ShortConv(proj + s.row_begin * P, P, s.num_rows, conv_ch_, conv_w_.data(), cfg_.conv_size,
                    tail, /*silu=*/true, qkv + s.row_begin * conv_ch_, conv_ch_);
        }
      });
    } else {
      pool->ParallelFor(rows, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          for (int64_t c = 0; c < conv_ch_; ++c) qkv[r * conv_ch_ + c] = Silu(proj[r * P + c]);
        }
      });
    }

    // 3. L2-normalise q and k per q/k head (q also scaled by dk^-1/2), once per row.
    const int H = cfg_.num_heads, dk = cfg_.head_k_dim;
    pool->ParallelFor(rows, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        float* row = qkv + r * conv_ch_;
        for (int h = 0; h < H; ++h) {
          GdnNormalizeQk(row + int64_t{h} * dk, dk, q_scale_);
          GdnNormalizeQk(row + kd_ + int64_t{h} * dk, dk, 1.0f);
        }
      }
    });

    // 4. Recurrent gated delta rule, token by token, per (sequence, value head); then the
    //    (gated) RMSNorm of the head's output.
    const int HV = cfg_.num_v_heads, dv = cfg_.head_v_dim;
    const int group = HV / H;  // value heads per q/k head (GVA)
    const int64_t n_tasks = static_cast<int64_t>(seqs.size()) * HV;
    pool->ParallelFor(n_tasks, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const CpuSeq& s = seqs[t / HV];
        const int hv = static_cast<int>(t % HV);
        const int h = hv / group;
        float* S = SlotF32(ctx, s, layer_, "S") + int64_t{hv} * dk * dv;
        for (int64_t r = s.row_begin; r < s.row_begin + s.num_rows; ++r) {
          const float* row = qkv + r * conv_ch_;
          const float* pr = proj + r * P;
          const float g = GdnDecayGate(pr[off_a_ + hv], dt_bias_.data()[hv], neg_exp_a_log_[hv]);
          const float beta = GdnBeta(pr[off_b_ + hv], cfg_.allow_neg_eigval);
          float* oh = o + r * vd_ + int64_t{hv} * dv;
          GatedDeltaStep(S, row + int64_t{h} * dk, row + kd_ + int64_t{h} * dk,
                         row + 2 * kd_ + int64_t{hv} * dv, g, beta, dk, dv, oh);
          if (cfg_.use_gate) {
            GatedRmsNorm(oh, pr + off_g_ + int64_t{hv} * dv, o_norm_.data(), cfg_.norm_eps, dv, oh);
          } else {
            RmsNorm(oh, o_norm_.data(), cfg_.norm_eps, dv, oh);
          }
        }
      }
    });

    // 5. Output projection.
    Linear(pool, o, rows, vd_, w_o_.data(), d, nullptr, out);
    return absl::OkStatus();
  }

 private:
  const GdnLayerConfig cfg_;
  const int layer_;
  const int64_t d_;
  int64_t kd_ = 0, vd_ = 0, conv_ch_ = 0;
  int64_t off_g_ = 0, off_a_ = 0, off_b_ = 0, proj_width_ = 0;
  float q_scale_ = 1.0f;

  F32Tensor w_q_, w_k_;               // [key_dim, hidden]
  F32Tensor w_v_;                     // [value_dim, hidden]
  F32Tensor w_g_;                     // [value_dim, hidden] (use_gate)
  F32Tensor w_a_, w_b_;               // [HV, hidden]
  F32Tensor dt_bias_;                 // [HV]
  std::vector<float> neg_exp_a_log_;  // [HV] −exp(A_log)
  std::vector<float> conv_w_;         // [2·key_dim + value_dim, conv_size] q | k | v
  F32Tensor o_norm_;                  // [head_v_dim]
  F32Tensor w_o_;                     // [hidden, value_dim]

  // Step scratch (the layer is driven by one thread).
  std::vector<float> proj_;  // [rows, proj_width] q | k | v | g | a | b
  std::vector<float> qkv_;   // [rows, 2·key_dim + value_dim] after conv + SiLU (+ L2 norm)
  std::vector<float> o_;     // [rows, value_dim] normed head outputs
};

}  // namespace

absl::StatusOr<std::unique_ptr<CpuLayer>> CreateGdnLayer(const CpuLayerArgs& args) {
  if (args.config == nullptr || args.checkpoint == nullptr || args.layer < 0 ||
      args.layer >= static_cast<int>(args.config->layers.size())) {
    return absl::InvalidArgumentError("CreateGdnLayer: bad arguments");
  }
  const LayerConfig& lc = args.config->layers[args.layer];
  if (lc.kind != LayerKind::kGdn) {
    return absl::InvalidArgumentError(absl::StrCat("CreateGdnLayer: layer ", args.layer, " is a ",
                                                   LayerKindName(lc.kind), " layer"));
  }
  if (args.layout != nullptr) {
    // The slot must hold this layer's state as the layer reads it.
    const GdnLayerConfig& g = lc.gdn;
    const StateComponent* S = args.layout->FindComponent(args.layer, "S");
    const StateComponent* conv = args.layout->FindComponent(args.layer, "conv");
    const int64_t s_bytes = int64_t{g.num_v_heads} * g.head_k_dim * g.head_v_dim * 4;
    const int64_t conv_bytes =
        g.use_short_conv ? int64_t{g.conv_size - 1} * (2LL * g.key_dim() + g.value_dim()) * 4 : 0;
    if (S == nullptr || S->bytes != s_bytes ||
        (conv_bytes > 0 && (conv == nullptr || conv->bytes != conv_bytes))) {
      return absl::InternalError(
          absl::StrCat("CreateGdnLayer: state layout of layer ", args.layer, " does not match"));
    }
  }
  auto layer = std::make_unique<GdnLayer>(lc.gdn, args.layer, args.config->hidden_size);
  HYLA_RETURN_IF_ERROR(layer->Load(args));
  return std::unique_ptr<CpuLayer>(std::move(layer));
}

}  // namespace hyla::cpu
