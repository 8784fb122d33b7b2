// The CPU reference of the NAtS-L layer; see natsl_layer.h for the semantics and the state.
//
// Exactness notes, from the reference (automl/NeuralAttentionSearchLinear @ 90b43159):
//  * q̃, k̃, ṽ = SiLU(conv(W x)); the GDN view is [H, dk], the softmax view [Ha, d_ak] (head a is
//    channels [a·d_ak, (a+1)·d_ak) of GDN head a / G). With attn_with_short_conv=false the
//    softmax view takes the raw projections instead (no conv, no SiLU).
//  * softmax q/k: RMSNorm over d_ak (q_norm / k_norm, eps = norm_eps) when attn_qk_norm; scale
//    d_ak^-1/2; no RoPE. The own chunk is attended causally whatever its type
//    (parallel_nats_attn_fwd_kernel, COMPUTE_INCOMPLETE_CHUNK_SCORES with ops 'all').
//  * GDN: q, k L2-normalised (eps 1e-6 inside the sqrt), q · dk^-1/2; every chunk's output is the
//    recurrence started from the committed state (chunk_fwd_kernel_o with
//    INCOMPLETE_BLOCK_WITH_START_HT subtracts w·h for non-GDN chunks too), and a softmax chunk
//    decays the committed state by exp(Σg) (chunk_cumsum_non_gated_chunks).
//  * mixing weights: softmax over ops of nats_out_weights_layer(q̃) viewed [Ha, 2]; column 0
//    weighs the GDN output, column 1 the softmax output (FusedMultiInputRMSNormGated(x1=o_gdn,
//    x2=o_attn)). o_gdn [H, dv] is viewed as [Ha, d_av].
//  * y = (rms(x1)·w1·m0 + rms(x2)·w2·m1) · z · sigmoid(z), z = g_proj(x) viewed [Ha, d_av].
//  * router: nats_layer(mean of x over the chunk) viewed [H, 2]; hard_softmax takes the first
//    maximum of the softmax (op 0 on ties).
#include "runtime/cpu/natsl_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/base/status_macros.h"
#include "runtime/cpu/cpu_layer.h"
#include "runtime/cpu/gdn_core.h"
#include "runtime/cpu/ops.h"

namespace hyla::cpu {
namespace {

class NatslLayer : public CpuLayer {
 public:
  NatslLayer(const NatslLayerConfig& cfg, int layer, int hidden, NatslDecisionLog* log)
      : cfg_(cfg), layer_(layer), d_(hidden), log_(log) {
    const GdnLayerConfig& g = cfg_.gdn;
    H_ = g.num_heads;
    dk_ = g.head_k_dim;
    dv_ = g.head_v_dim;
    kd_ = g.key_dim();
    vd_ = g.value_dim();
    Ha_ = cfg_.num_attn_heads;
    G_ = cfg_.groups();
    dak_ = cfg_.attn_head_k_dim;
    dav_ = cfg_.attn_head_v_dim;
    conv_ch_ = 2 * kd_ + vd_;
    // Column layout of one projected row: q | k | v | z | a | b.
    off_z_ = conv_ch_;
    off_a_ = off_z_ + vd_;
    off_b_ = off_a_ + H_;
    proj_width_ = off_b_ + H_;
    q_scale_ = static_cast<float>(std::pow(static_cast<double>(dk_), -0.5));
    attn_scale_ = static_cast<float>(std::pow(static_cast<double>(dak_), -0.5));
  }

  absl::Status Load(const CpuLayerArgs& args) {
    Checkpoint* ck = args.checkpoint;
    const std::string& p = args.prefix;
    const int64_t d = d_;
    HYLA_ASSIGN_OR_RETURN(w_q_, ck->TakeF32(p + "q_proj.weight", {kd_, d}));
    HYLA_ASSIGN_OR_RETURN(w_k_, ck->TakeF32(p + "k_proj.weight", {kd_, d}));
    HYLA_ASSIGN_OR_RETURN(w_v_, ck->TakeF32(p + "v_proj.weight", {vd_, d}));
    HYLA_ASSIGN_OR_RETURN(w_z_, ck->TakeF32(p + "g_proj.weight", {vd_, d}));
    HYLA_ASSIGN_OR_RETURN(w_a_, ck->TakeF32(p + "a_proj.weight", {H_, d}));
    HYLA_ASSIGN_OR_RETURN(w_b_, ck->TakeF32(p + "b_proj.weight", {H_, d}));
    HYLA_ASSIGN_OR_RETURN(F32Tensor a_log, ck->TakeF32(p + "A_log", {H_}));
    HYLA_ASSIGN_OR_RETURN(dt_bias_, ck->TakeF32(p + "dt_bias", {H_}));
    neg_exp_a_log_.resize(static_cast<size_t>(H_));
    for (int h = 0; h < H_; ++h) neg_exp_a_log_[h] = GdnNegExpALog(a_log.data()[h]);
    if (cfg_.gdn.use_short_conv) {
      const int64_t K = cfg_.gdn.conv_size;
      // One [conv_ch, K] weight, channels in the order q | k | v of the conv tail.
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
    if (cfg_.attn_qk_norm) {
      HYLA_ASSIGN_OR_RETURN(q_norm_, ck->TakeF32(p + "q_norm.weight", {dak_}));
      HYLA_ASSIGN_OR_RETURN(k_norm_, ck->TakeF32(p + "k_norm.weight", {dak_}));
    }
    HYLA_ASSIGN_OR_RETURN(w_router_, ck->TakeF32(p + "nats_layer.weight", {2 * H_, d}));
    HYLA_ASSIGN_OR_RETURN(w_mix_, ck->TakeF32(p + "nats_out_weights_layer.weight", {2 * Ha_, kd_}));
    HYLA_ASSIGN_OR_RETURN(o_norm1_, ck->TakeF32(p + "o_norm.weight1", {dav_}));
    HYLA_ASSIGN_OR_RETURN(o_norm2_, ck->TakeF32(p + "o_norm.weight2", {dav_}));
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
    qa_.resize(static_cast<size_t>(rows * kd_));
    ka_.resize(static_cast<size_t>(rows * kd_));
    mix_.resize(static_cast<size_t>(rows * 2 * Ha_));
    y_.resize(static_cast<size_t>(rows * vd_));
    float* proj = proj_.data();
    float* qkv = qkv_.data();

    // 1. Input projections of every row (a row's values do not depend on the other rows).
    LinearStrided(pool, x, d, rows, d, w_q_.data(), kd_, nullptr, proj, P);
    LinearStrided(pool, x, d, rows, d, w_k_.data(), kd_, nullptr, proj + kd_, P);
    LinearStrided(pool, x, d, rows, d, w_v_.data(), vd_, nullptr, proj + 2 * kd_, P);
    LinearStrided(pool, x, d, rows, d, w_z_.data(), vd_, nullptr, proj + off_z_, P);
    LinearStrided(pool, x, d, rows, d, w_a_.data(), H_, nullptr, proj + off_a_, P);
    LinearStrided(pool, x, d, rows, d, w_b_.data(), H_, nullptr, proj + off_b_, P);

    // 2. Short causal convs + SiLU per sequence with its carried tail (q | k | v channels), or
    //    SiLU alone without short convs.
    if (cfg_.gdn.use_short_conv) {
      pool->ParallelFor(static_cast<int64_t>(seqs.size()), 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const CpuSeq& s = seqs[i];
          float* tail = cfg_.gdn.conv_size > 1 ? SlotF32(ctx, s, layer_, "conv") : nullptr;
          ShortConv(proj + s.row_begin * P, P, s.num_rows, conv_ch_, conv_w_.data(),
                    cfg_.gdn.conv_size, tail, /*silu=*/true, qkv + s.row_begin * conv_ch_,
                    conv_ch_);
        }
      });
    } else {
      pool->ParallelFor(rows, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          for (int64_t c = 0; c < conv_ch_; ++c) qkv[r * conv_ch_ + c] = Silu(proj[r * P + c]);
        }
      });
    }

    // 3. Mixing weights from q̃ (after conv + SiLU, before any normalisation): softmax over the
    //    two ops of each softmax head.
    LinearStrided(pool, qkv, conv_ch_, rows, kd_, w_mix_.data(), 2 * Ha_, nullptr, mix_.data(),
                  2 * Ha_);
    for (int64_t i = 0; i < rows * Ha_; ++i) Softmax(mix_.data() + 2 * i, 2);

    // 4. The softmax view: q/k per softmax head (RMSNorm when attn_qk_norm), from q̃/k̃ or from
    //    the raw projections. Values are read in place at step 6.
    const float* attn_src = cfg_.attn_with_short_conv ? qkv : proj;
    const int64_t attn_stride = cfg_.attn_with_short_conv ? conv_ch_ : P;
    attn_v_ = attn_src + 2 * kd_;
    attn_stride_ = attn_stride;
    pool->ParallelFor(rows, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const float* src = attn_src + r * attn_stride;
        for (int a = 0; a < Ha_; ++a) {
          const int64_t off = int64_t{a} * dak_;
          float* qa = qa_.data() + r * kd_ + off;
          float* ka = ka_.data() + r * kd_ + off;
          if (cfg_.attn_qk_norm) {
            RmsNorm(src + off, q_norm_.data(), cfg_.gdn.norm_eps, dak_, qa);
            RmsNorm(src + kd_ + off, k_norm_.data(), cfg_.gdn.norm_eps, dak_, ka);
          } else {
            std::memcpy(qa, src + off, sizeof(float) * dak_);
            std::memcpy(ka, src + kd_ + off, sizeof(float) * dak_);
          }
        }
      }
    });

    // 5. The GDN view: L2-normalise q and k per head (q also scaled by dk^-1/2), in place. The
    //    softmax view of the raw projections (attn_with_short_conv=false) is in proj, untouched.
    pool->ParallelFor(rows, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        float* row = qkv + r * conv_ch_;
        for (int h = 0; h < H_; ++h) {
          GdnNormalizeQk(row + int64_t{h} * dk_, dk_, q_scale_);
          GdnNormalizeQk(row + kd_ + int64_t{h} * dk_, dk_, 1.0f);
        }
      }
    });

    // 6. Token by token, per sequence, one chunk segment at a time: block bookkeeping and
    //    routing on this thread, the heads in parallel.
    for (const CpuSeq& s : seqs) HYLA_RETURN_IF_ERROR(ForwardSequence(ctx, s, x));

    // 7. Output projection.
    Linear(pool, y_.data(), rows, vd_, w_o_.data(), d, nullptr, out);
    return absl::OkStatus();
  }

 private:
  // Rows [r0, r1) of sequence `s` that belong to chunk `chunk`, the first at offset j0 in it.
  struct Segment {
    int64_t r0 = 0, r1 = 0;
    int64_t chunk = 0;
    int64_t j0 = 0;
  };

  absl::Status ForwardSequence(const CpuContext& ctx, const CpuSeq& s, const float* x) {
    const int first_stream = ctx.layout->first_stream(layer_);
    float* x_sum = SlotF32(ctx, s, layer_, "x_sum");
    int64_t r = s.row_begin;
    const int64_t r_end = s.row_begin + s.num_rows;
    while (r < r_end) {
      const int64_t pos = s.start_pos + (r - s.row_begin);
      Segment seg;
      seg.chunk = pos / kBlockTokens;
      seg.j0 = pos % kBlockTokens;
      seg.r0 = r;
      seg.r1 = std::min(r_end, r + (kBlockTokens - seg.j0));

      // The current chunk's block of every decision head, writable (a new block at the chunk's
      // first token, a private copy when a fork shares it).
      blocks_.assign(static_cast<size_t>(H_), nullptr);
      kept_.assign(static_cast<size_t>(H_), {});
      for (int n = 0; n < H_; ++n) {
        const int stream = first_stream + n;
        const std::vector<BlockRef>& table = s.seq->streams[stream];
        if (seg.j0 > 0 && (table.empty() || table.back().chunk != seg.chunk)) {
          return absl::InternalError(absl::StrCat("natsl layer ", layer_,
                                                  ": the block of the current chunk ", seg.chunk,
                                                  " of stream ", stream, " is missing"));
        }
        HYLA_ASSIGN_OR_RETURN(blocks_[n], ctx.WritableBlock(s.seq, stream, seg.chunk));
        // Kept chunks: every entry before the current chunk's (the table may have changed).
        for (const BlockRef& ref : s.seq->streams[stream]) {
          if (ref.chunk < seg.chunk) kept_[n].push_back(ctx.BlockData(ref.block));
        }
      }

      // Σx over the chunk, in token order.
      for (int64_t rr = seg.r0; rr < seg.r1; ++rr) {
        const float* xr = x + rr * d_;
        for (int64_t i = 0; i < d_; ++i) x_sum[i] += xr[i];
      }

      // Per-head scratch, sized here so that the tasks do not allocate.
      scratch_.resize(static_cast<size_t>(H_));
      for (int n = 0; n < H_; ++n) {
        HeadScratch& hs = scratch_[n];
        hs.scores.resize((kept_[n].size() + 1) * kBlockTokens);
        hs.o_gdn.resize(static_cast<size_t>(dv_));
        hs.o_attn.resize(static_cast<size_t>(dav_));
        hs.n1.resize(static_cast<size_t>(dav_));
        hs.n2.resize(static_cast<size_t>(dav_));
      }
      ctx.pool->ParallelFor(H_, 1, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) RunHead(ctx, s, seg, static_cast<int>(n), first_stream);
      });

      if (seg.j0 + (seg.r1 - seg.r0) == kBlockTokens) {
        HYLA_RETURN_IF_ERROR(Decide(ctx, s, seg.chunk, first_stream, x_sum));
      }
      r = seg.r1;
    }
    return absl::OkStatus();
  }

  // The tokens of one segment for decision head n and its G softmax heads: KV writes, softmax
  // attention, the GDN step, and the mixed, normalised, gated output into y_.
  void RunHead(const CpuContext& ctx, const CpuSeq& s, const Segment& seg, int n,
               int first_stream) {
    const KvStream& stream = ctx.layout->streams()[first_stream + n];
    float* block = blocks_[n];
    const std::vector<float*>& kept = kept_[n];
    float* S = SlotF32(ctx, s, layer_, "S") + int64_t{n} * dk_ * dv_;
    float* g_sum = SlotF32(ctx, s, layer_, "g_sum") + n;
    HeadScratch& hs = scratch_[n];
    float* scores = hs.scores.data();
    float* o_gdn = hs.o_gdn.data();
    float* o_attn = hs.o_attn.data();
    float* n1 = hs.n1.data();
    float* n2 = hs.n2.data();

    for (int64_t r = seg.r0; r < seg.r1; ++r) {
      const int64_t j = seg.j0 + (r - seg.r0);
      const float* pr = proj_.data() + r * proj_width_;
      const float* row = qkv_.data() + r * conv_ch_;

      // K/V of this token into the current block (keys after k_norm, values as they are).
      for (int g = 0; g < G_; ++g) {
        const int a = n * G_ + g;
        std::memcpy(BlockKey(block, stream, j, g), ka_.data() + r * kd_ + int64_t{a} * dak_,
                    sizeof(float) * dak_);
        std::memcpy(BlockValue(block, stream, j, g), attn_v_ + r * attn_stride_ + int64_t{a} * dav_,
                    sizeof(float) * dav_);
      }

      // Gated delta rule on the running state.
      const float gate = GdnDecayGate(pr[off_a_ + n], dt_bias_.data()[n], neg_exp_a_log_[n]);
      const float beta = GdnBeta(pr[off_b_ + n], cfg_.gdn.allow_neg_eigval);
      GatedDeltaStep(S, row + int64_t{n} * dk_, row + kd_ + int64_t{n} * dk_,
                     row + 2 * kd_ + int64_t{n} * dv_, gate, beta, dk_, dv_, o_gdn);
      *g_sum += gate;

      for (int g = 0; g < G_; ++g) {
        const int a = n * G_ + g;
        // Softmax attention over the kept chunks (whole) and this chunk's tokens 0..j.
        const float* q = qa_.data() + r * kd_ + int64_t{a} * dak_;
        int64_t m = 0;
        for (float* kb : kept) {
          for (int64_t t = 0; t < kBlockTokens; ++t) {
            scores[m++] = Dot(q, BlockKey(kb, stream, t, g), dak_) * attn_scale_;
          }
        }
        for (int64_t t = 0; t <= j; ++t) {
          scores[m++] = Dot(q, BlockKey(block, stream, t, g), dak_) * attn_scale_;
        }
        Softmax(scores, m);
        std::fill(o_attn, o_attn + dav_, 0.0f);
        m = 0;
        auto accumulate = [&](const float* v) {
          const float p = scores[m++];
          for (int64_t i = 0; i < dav_; ++i) o_attn[i] += p * v[i];
        };
        for (float* kb : kept) {
          for (int64_t t = 0; t < kBlockTokens; ++t) {
            accumulate(BlockValue(kb, stream, t, g));
          }
        }
        for (int64_t t = 0; t <= j; ++t) accumulate(BlockValue(block, stream, t, g));

        // Dual RMSNorm, weighted by the mixing weights, gated by SiLU(z).
        const float* x1 = o_gdn + int64_t{g} * dav_;  // o_gdn [dv] viewed [G, d_av]
        RmsNorm(x1, o_norm1_.data(), cfg_.gdn.norm_eps, dav_, n1);
        RmsNorm(o_attn, o_norm2_.data(), cfg_.gdn.norm_eps, dav_, n2);
        const float m0 = mix_[r * 2 * Ha_ + 2 * a];      // weight of the GDN output
        const float m1 = mix_[r * 2 * Ha_ + 2 * a + 1];  // weight of the softmax output
        const float* z = pr + off_z_ + int64_t{a} * dav_;
        float* y = y_.data() + r * vd_ + int64_t{a} * dav_;
        for (int64_t i = 0; i < dav_; ++i) {
          y[i] = ((n1[i] * m0 + n2[i] * m1) * z[i]) * Sigmoid(z[i]);
        }
      }
    }
  }

  // The 64th token of `chunk` has been folded in: score the chunk and route it per head.
  absl::Status Decide(const CpuContext& ctx, const CpuSeq& s, int64_t chunk, int first_stream,
                      float* x_sum) {
    mean_.resize(static_cast<size_t>(d_));
    for (int64_t i = 0; i < d_; ++i) mean_[i] = x_sum[i] / static_cast<float>(kBlockTokens);
    float* S_all = SlotF32(ctx, s, layer_, "S");
    float* S_committed_all = SlotF32(ctx, s, layer_, "S_committed");
    float* g_sum = SlotF32(ctx, s, layer_, "g_sum");
    const int64_t state = int64_t{dk_} * dv_;
    for (int n = 0; n < H_; ++n) {
      float logits[2] = {Dot(mean_.data(), w_router_.data() + (2 * n) * d_, d_),
                         Dot(mean_.data(), w_router_.data() + (2 * n + 1) * d_, d_)};
      float probs[2] = {logits[0], logits[1]};
      Softmax(probs, 2);
      const int op = probs[1] > probs[0] ? 1 : 0;  // first maximum wins
      float* S = S_all + n * state;
      float* S_committed = S_committed_all + n * state;
      const int stream = first_stream + n;
      std::vector<BlockRef>& table = s.seq->streams[stream];
      if (table.empty() || table.back().chunk != chunk) {
        return absl::InternalError(absl::StrCat("natsl layer ", layer_, ": chunk ", chunk,
                                                " has no block in stream ", stream));
      }
      if (op == 0) {
        // Softmax: keep the block; the chunk reaches the state only through the decay.
        if (cfg_.decay_for_non_gdn_blocks) DecayState(S_committed, g_sum[n], dk_, dv_);
        std::memcpy(S, S_committed, sizeof(float) * state);
        if (ctx.routing != nullptr) ++ctx.routing->to_softmax;
      } else {
        // GDN: commit the running state; the chunk's keys are no longer needed.
        std::memcpy(S_committed, S, sizeof(float) * state);
        ctx.store->DropBlock(s.seq, stream, static_cast<int>(table.size()) - 1);
        if (ctx.routing != nullptr) ++ctx.routing->to_gdn;
      }
      if (log_ != nullptr) {
        log_->decisions.push_back(
            NatslDecision{s.seq->slot, layer_, chunk, n, logits[0], logits[1], op});
      }
      g_sum[n] = 0.0f;
    }
    std::memset(x_sum, 0, sizeof(float) * d_);
    return absl::OkStatus();
  }

  const NatslLayerConfig cfg_;
  const int layer_;
  const int64_t d_;
  NatslDecisionLog* const log_;
  int H_ = 0, dk_ = 0, dv_ = 0, Ha_ = 0, G_ = 0, dak_ = 0, dav_ = 0;
  int64_t kd_ = 0, vd_ = 0, conv_ch_ = 0;
  int64_t off_z_ = 0, off_a_ = 0, off_b_ = 0, proj_width_ = 0;
  float q_scale_ = 1.0f;     // dk^-1/2
  float attn_scale_ = 1.0f;  // d_ak^-1/2

  F32Tensor w_q_, w_k_;               // [key_dim, hidden]
  F32Tensor w_v_;                     // [value_dim, hidden]
  F32Tensor w_z_;                     // [value_dim, hidden] g_proj (output gate)
  F32Tensor w_a_, w_b_;               // [H, hidden]
  F32Tensor dt_bias_;                 // [H]
  std::vector<float> neg_exp_a_log_;  // [H] −exp(A_log)
  std::vector<float> conv_w_;         // [2·key_dim + value_dim, conv_size] q | k | v
  F32Tensor q_norm_, k_norm_;         // [d_ak] (attn_qk_norm)
  F32Tensor w_router_;                // [2·H, hidden] nats_layer, row 2n + op
  F32Tensor w_mix_;                   // [2·Ha, key_dim] nats_out_weights_layer, row 2a + op
  F32Tensor o_norm1_, o_norm2_;       // [d_av] weights of the GDN / softmax output norms
  F32Tensor w_o_;                     // [hidden, value_dim]

  // Step scratch (the layer is driven by one thread; RunHead tasks write disjoint parts).
  std::vector<float> proj_;  // [rows, proj_width] q | k | v | z | a | b
  std::vector<float> qkv_;   // [rows, 2·key_dim + value_dim] after conv + SiLU (+ L2 norm of q, k)
  std::vector<float> qa_;    // [rows, Ha·d_ak] softmax queries (after q_norm)
  std::vector<float> ka_;    // [rows, Ha·d_ak] softmax keys (after k_norm)
  std::vector<float> mix_;   // [rows, Ha, 2] mixing weights (GDN, softmax)
  std::vector<float> y_;     // [rows, value_dim] gated outputs before o_proj
  std::vector<float> mean_;  // [hidden] router input
  const float* attn_v_ = nullptr;  // softmax values of row r at attn_v_ + r·attn_stride_
  int64_t attn_stride_ = 0;
  std::vector<float*> blocks_;             // [H] the current chunk's block per decision head
  std::vector<std::vector<float*>> kept_;  // [H] kept blocks before the current chunk
  struct HeadScratch {
    std::vector<float> scores;  // [(kept + 1) · 64] attention logits, then probabilities
    std::vector<float> o_gdn;   // [dv]
    std::vector<float> o_attn;  // [d_av]
    std::vector<float> n1, n2;  // [d_av] normalised GDN / softmax outputs
  };
  std::vector<HeadScratch> scratch_;  // [H]
};

absl::Status CheckLayout(const CpuLayerArgs& args, const NatslLayerConfig& n) {
  const StateLayout& L = *args.layout;
  const GdnLayerConfig& g = n.gdn;
  const int layer = args.layer;
  auto bad = [&](absl::string_view what) {
    return absl::InternalError(
        absl::StrCat("CreateNatslLayer: state layout of layer ", layer, " does not match: ", what));
  };
  if (L.kv_dtype() != DType::kF32) return bad("the CPU backend keeps KV blocks in fp32");
  const int64_t s_bytes = int64_t{g.num_heads} * g.head_k_dim * g.head_v_dim * 4;
  const struct {
    const char* name;
    int64_t bytes;
  } components[] = {
      {"S", s_bytes},
      {"S_committed", s_bytes},
      {"g_sum", int64_t{g.num_heads} * 4},
      {"x_sum", int64_t{args.config->hidden_size} * 4},
      {"conv", g.use_short_conv && g.conv_size > 1
                   ? int64_t{g.conv_size - 1} * (2LL * g.key_dim() + g.value_dim()) * 4
                   : 0},
  };
  for (const auto& c : components) {
    const StateComponent* found = L.FindComponent(layer, c.name);
    if (c.bytes == 0 ? found != nullptr : (found == nullptr || found->bytes != c.bytes)) {
      return bad(absl::StrCat("component \"", c.name, "\""));
    }
  }
  const int first = L.first_stream(layer);
  if (first < 0 || first + g.num_heads > L.num_streams()) return bad("KV streams");
  for (int h = 0; h < g.num_heads; ++h) {
    const KvStream& s = L.streams()[first + h];
    if (s.layer != layer || s.index_in_layer != h || s.heads != n.groups() ||
        s.key_dim != n.attn_head_k_dim || s.value_dim != n.attn_head_v_dim || !s.routed) {
      return bad(absl::StrCat("KV stream of decision head ", h));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuLayer>> CreateNatslLayerWithLog(const CpuLayerArgs& args,
                                                                  NatslDecisionLog* log) {
  if (args.config == nullptr || args.checkpoint == nullptr || args.layout == nullptr ||
      args.layer < 0 || args.layer >= static_cast<int>(args.config->layers.size())) {
    return absl::InvalidArgumentError("CreateNatslLayer: bad arguments");
  }
  const LayerConfig& lc = args.config->layers[args.layer];
  if (lc.kind != LayerKind::kNatsl) {
    return absl::InvalidArgumentError(absl::StrCat("CreateNatslLayer: layer ", args.layer, " is a ",
                                                   LayerKindName(lc.kind), " layer"));
  }
  const NatslLayerConfig& n = lc.natsl;
  if (n.chunk_size != kBlockTokens || n.attn_apply_pos_encoding || !n.gdn.use_gate ||
      !n.outputs_are_weighted || n.gdn.num_v_heads != n.gdn.num_heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateNatslLayer: layer ", args.layer,
        " uses a NAtS-L variant the CPU backend does not implement (chunk size, positional "
        "encoding, ungated or unweighted output, or GVA)"));
  }
  HYLA_RETURN_IF_ERROR(CheckLayout(args, n));
  auto layer = std::make_unique<NatslLayer>(n, args.layer, args.config->hidden_size, log);
  HYLA_RETURN_IF_ERROR(layer->Load(args));
  return std::unique_ptr<CpuLayer>(std::move(layer));
}

absl::StatusOr<std::unique_ptr<CpuLayer>> CreateNatslLayer(const CpuLayerArgs& args) {
  return CreateNatslLayerWithLog(args, nullptr);
}

}  // namespace hyla::cpu
