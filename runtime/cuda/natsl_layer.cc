// The CUDA NAtS-L layer; see natsl_layer.h for the plan of a step and runtime/cpu/natsl_layer.cc
// (the reference) for the semantics.
#include "runtime/cuda/natsl_layer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "runtime/base/status_macros.h"
#include "runtime/cpu/ops.h"
#include "runtime/cuda/cuda_layer.h"
#include "runtime/cuda/cuda_util.h"
#include "runtime/cuda/gdn_common.h"

namespace hyla::cuda {
namespace {

// Block-table entries (int32) one attention launch may carry: a wave with more is split into
// launches over consecutive segments (bounds the scratch of the tables to 2 × 8 MiB).
constexpr int64_t kMaxTableEntries = int64_t{2} << 20;

class CudaNatslLayer : public CudaLayer {
 public:
  CudaNatslLayer(const NatslLayerConfig& cfg, int layer, int64_t hidden, cpu::NatslDecisionLog* log)
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
    attn_scale_ = static_cast<float>(std::pow(static_cast<double>(dak_), -0.5));
  }

  absl::Status Load(const CudaLayerArgs& args);
  absl::Status Forward(const CudaContext& ctx, const float* x, float* out) override;

 private:
  // Rows [r0, r1) of sequence `seq` inside chunk `chunk`, the first at offset j0 in it (the
  // CPU's Segment; the GdnPrefill piece numbering).
  struct Segment {
    int seq = 0;
    int64_t r0 = 0, r1 = 0;
    int64_t chunk = 0;
    int64_t j0 = 0;
    int index_in_seq = 0;  // k: the phase the segment belongs to
    int completion = -1;   // >= 0: the segment ends its chunk (row of the router logits)
  };

  // The attention inputs of a step: queries (after q_norm) and the K/V sources, rows of the step.
  struct AttnInputs {
    const float* q = nullptr;
    int64_t q_stride = 0;
    const float* k = nullptr;
    int64_t k_stride = 0;
    const float* v = nullptr;
    int64_t v_stride = 0;
    float* out = nullptr;  // [rows, value_dim] softmax outputs
  };

  absl::Status RunWave(const CudaContext& ctx, int phase_begin, int phase_end, bool decode,
                       const AttnInputs& in);
  absl::Status Attend(const CudaContext& ctx, bool decode, const AttnInputs& in, int64_t max_blocks,
                      size_t i0, size_t i1);
  bool DroppedInStep(int seq, int64_t chunk, int head) const;
  absl::Status ApplyDecisions(const CudaContext& ctx, const Segment& seg);

  const NatslLayerConfig cfg_;
  const int layer_;
  const int64_t d_;
  cpu::NatslDecisionLog* const log_;
  int H_ = 0, dk_ = 0, dv_ = 0, Ha_ = 0, G_ = 0, dak_ = 0, dav_ = 0;
  int64_t kd_ = 0, vd_ = 0;
  float attn_scale_ = 1.0f;  // d_ak^-1/2

  std::unique_ptr<GdnBranch> branch_;  // projections, convs, gated delta rule
  const float* q_norm_ = nullptr;      // [d_ak] (attn_qk_norm)
  const float* k_norm_ = nullptr;      // [d_ak]
  const float* w_router_ = nullptr;    // [2·H, hidden] fp32 always (exact routing)
  DeviceMatrix w_mix_;  // [2·Ha, 2·key_dim + value_dim] nats_out_weights_layer, zero-padded
  const float* o_norm1_ = nullptr;  // [d_av] GDN output norm
  const float* o_norm2_ = nullptr;  // [d_av] softmax output norm
  DeviceMatrix w_o_;                // [hidden, value_dim]

  // Slot layout (bytes) and the stride of a slot in floats.
  int64_t off_x_sum_ = 0, off_S_ = 0, off_S_committed_ = 0, off_g_sum_ = 0;
  int64_t slot_floats_ = 0;
  int first_stream_ = 0;
  kernels::KernelDType kv_dtype_ = kernels::KernelDType::kF32;
  int64_t block_stride_ = 0;  // elements of kv_dtype between blocks

  // The router logits on their way to the host.
  PinnedBuffer logits_host_;
  CudaEvent logits_ready_;

  // Per-step host scratch (kept for its capacity).
  std::vector<Segment> segs_;
  std::vector<int> seq_seg_begin_;  // [num_seqs + 1] segments of sequence s
  std::vector<kernels::NatslSegment> ksegs_;
  std::vector<int> ops_;                          // [completions, H] 0 softmax, 1 GDN
  std::vector<std::vector<int32_t>> phase_segs_;  // [phase] segment indices, sequence order
  std::vector<uint8_t> commit_mask_;
  std::vector<int8_t> decode_decision_;
  GdnPieces pieces_;
  // The wave being run: its segments (phase order), per (segment, head) the current block and
  // the kept chunks, and the uploads built from them.
  std::vector<int32_t> wave_segs_;
  std::vector<int32_t> seg_cur_;                 // [wave segments, H]
  std::vector<std::vector<BlockRef>> seg_kept_;  // [wave segments, H]
  std::vector<int32_t> kv_rows_, kv_tokens_, kv_blocks_;
  std::vector<int32_t> table_, chunks_, num_blocks_, kv_len_, tiles_;
};

kernels::KernelDType KernelTypeOf(DType t) {
  return t == DType::kBF16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
}

absl::Status CudaNatslLayer::Load(const CudaLayerArgs& args) {
  const StateLayout& L = *args.layout;
  GdnBranchOptions bo;
  bo.config = cfg_.gdn;
  bo.layer = layer_;
  bo.hidden = d_;
  bo.prefix = args.prefix;
  bo.with_output_norm = false;
  HYLA_ASSIGN_OR_RETURN(
      branch_, GdnBranch::Create(bo, args.checkpoint, args.layout, args.dev, args.weights));
  if (branch_->key_dim() != kd_ || branch_->value_dim() != vd_ ||
      branch_->conv_channels() != 2 * kd_ + vd_) {
    return absl::InternalError(absl::StrCat("CreateCudaNatslLayer: layer ", layer_,
                                            ": the GDN branch has unexpected widths"));
  }

  Checkpoint* ck = args.checkpoint;
  DeviceWeights* w = args.weights;
  const std::string& p = args.prefix;
  if (cfg_.attn_qk_norm) {
    HYLA_ASSIGN_OR_RETURN(F32Tensor qn, ck->TakeF32(p + "q_norm.weight", {dak_}));
    HYLA_ASSIGN_OR_RETURN(F32Tensor kn, ck->TakeF32(p + "k_norm.weight", {dak_}));
    HYLA_ASSIGN_OR_RETURN(q_norm_, w->F32(qn, p + "q_norm.weight"));
    HYLA_ASSIGN_OR_RETURN(k_norm_, w->F32(kn, p + "k_norm.weight"));
  }
  HYLA_ASSIGN_OR_RETURN(F32Tensor router, ck->TakeF32(p + "nats_layer.weight", {2 * H_, d_}));
  HYLA_ASSIGN_OR_RETURN(w_router_, w->F32(router, p + "nats_layer.weight"));
  HYLA_ASSIGN_OR_RETURN(F32Tensor mix,
                        ck->TakeF32(p + "nats_out_weights_layer.weight", {2 * Ha_, kd_}));
  {
    // Zero-padded to the full qkv width, [2·Ha, 2·key_dim + value_dim] with the weights in the q
    // columns, so that the GEMM reads qkv rows densely (a strided input costs the bf16 GEMM one
    // conversion launch per row); the padding adds exact zeros.
    const int64_t conv_ch = branch_->conv_channels();
    std::vector<float> padded(static_cast<size_t>(2 * Ha_ * conv_ch), 0.0f);
    for (int64_t o = 0; o < 2 * Ha_; ++o) {
      std::copy(mix.data() + o * kd_, mix.data() + (o + 1) * kd_, padded.data() + o * conv_ch);
    }
    const F32Tensor padded_t = F32Tensor::Owned(std::move(padded), {2 * Ha_, conv_ch});
    HYLA_ASSIGN_OR_RETURN(w_mix_, w->Matrix(padded_t, p + "nats_out_weights_layer.weight"));
  }
  HYLA_ASSIGN_OR_RETURN(F32Tensor n1, ck->TakeF32(p + "o_norm.weight1", {dav_}));
  HYLA_ASSIGN_OR_RETURN(F32Tensor n2, ck->TakeF32(p + "o_norm.weight2", {dav_}));
  HYLA_ASSIGN_OR_RETURN(o_norm1_, w->F32(n1, p + "o_norm.weight1"));
  HYLA_ASSIGN_OR_RETURN(o_norm2_, w->F32(n2, p + "o_norm.weight2"));
  HYLA_ASSIGN_OR_RETURN(F32Tensor wo, ck->TakeF32(p + "o_proj.weight", {d_, vd_}));
  HYLA_ASSIGN_OR_RETURN(w_o_, w->Matrix(wo, p + "o_proj.weight"));
  // Slot components and KV streams (the CPU layer's CheckLayout; the KV dtype may be bf16).
  auto bad = [&](absl::string_view what) {
    return absl::InternalError(absl::StrCat("CreateCudaNatslLayer: state layout of layer ", layer_,
                                            " does not match: ", what));
  };
  if (L.kv_dtype() != DType::kF32 && L.kv_dtype() != DType::kBF16) {
    return bad("KV blocks must be fp32 or bf16");
  }
  if (L.slot_bytes() % 4 != 0) return bad("slot size is not a multiple of 4 bytes");
  slot_floats_ = L.slot_bytes() / 4;
  const int64_t s_bytes = int64_t{H_} * dk_ * dv_ * 4;
  const struct {
    const char* name;
    int64_t bytes;
    int64_t* offset;
  } components[] = {
      {"S", s_bytes, &off_S_},
      {"S_committed", s_bytes, &off_S_committed_},
      {"g_sum", int64_t{H_} * 4, &off_g_sum_},
      {"x_sum", d_ * 4, &off_x_sum_},
  };
  for (const auto& c : components) {
    const StateComponent* found = L.FindComponent(layer_, c.name);
    if (found == nullptr || found->bytes != c.bytes || found->offset % 4 != 0) {
      return bad(absl::StrCat("component \"", c.name, "\""));
    }
    *c.offset = found->offset;
  }
  first_stream_ = L.first_stream(layer_);
  if (first_stream_ < 0 || first_stream_ + H_ > L.num_streams()) return bad("KV streams");
  for (int h = 0; h < H_; ++h) {
    const KvStream& s = L.streams()[first_stream_ + h];
    if (s.layer != layer_ || s.index_in_layer != h || s.heads != G_ || s.key_dim != dak_ ||
        s.value_dim != dav_ || !s.routed) {
      return bad(absl::StrCat("KV stream of decision head ", h));
    }
  }
  kv_dtype_ = KernelTypeOf(L.kv_dtype());
  const int64_t elem = L.kv_dtype() == DType::kBF16 ? 2 : 4;
  if (L.block_bytes() % elem != 0 ||
      L.block_bytes() / elem < int64_t{kBlockTokens} * G_ * (dak_ + dav_)) {
    return bad("KV block size");
  }
  block_stride_ = L.block_bytes() / elem;

  HYLA_ASSIGN_OR_RETURN(
      logits_host_, PinnedBuffer::Allocate(sizeof(float) * 2 * H_ * 1024, "natsl router logits"));
  HYLA_ASSIGN_OR_RETURN(logits_ready_, CudaEvent::Create());
  return absl::OkStatus();
}

absl::Status CudaNatslLayer::Forward(const CudaContext& ctx, const float* x, float* out) {
  if (ctx.batch == nullptr || ctx.dev == nullptr || ctx.store == nullptr || ctx.layout == nullptr ||
      ctx.slot_pool == nullptr || ctx.block_pool == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("natsl layer ", layer_, ": incomplete CudaContext"));
  }
  const CudaBatch& batch = *ctx.batch;
  const int64_t rows = batch.total_rows;
  if (rows == 0) return absl::OkStatus();
  DeviceContext& dev = *ctx.dev;
  ScratchArena& scratch = dev.scratch();
  void* stream = dev.kernel_stream();
  const int num_seqs = batch.num_seqs();

  // ---- 0. The chunk segments of every sequence (host). ----------------------------------------
  segs_.clear();
  ksegs_.clear();
  seq_seg_begin_.assign(static_cast<size_t>(num_seqs) + 1, 0);
  int completions = 0;
  int num_phases = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const CudaSeq& cs = batch.seqs[s];
    if (cs.seq == nullptr || cs.num_rows < 0 || cs.row_begin < 0 ||
        cs.row_begin + cs.num_rows > rows || cs.slot < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("natsl layer ", layer_, ": bad sequence ", s, " in the batch"));
    }
    seq_seg_begin_[s] = static_cast<int>(segs_.size());
    int64_t r = cs.row_begin;
    const int64_t r_end = cs.row_begin + cs.num_rows;
    int k = 0;
    while (r < r_end) {
      const int64_t pos = cs.start_pos + (r - cs.row_begin);
      Segment seg;
      seg.seq = s;
      seg.chunk = pos / kBlockTokens;
      seg.j0 = pos % kBlockTokens;
      seg.r0 = r;
      seg.r1 = std::min(r_end, r + (kBlockTokens - seg.j0));
      seg.index_in_seq = k++;
      if (seg.j0 + (seg.r1 - seg.r0) == kBlockTokens) seg.completion = completions++;
      kernels::NatslSegment ks;
      ks.seq = s;
      ks.row_begin = static_cast<int32_t>(seg.r0);
      ks.row_end = static_cast<int32_t>(seg.r1);
      ks.completion = seg.completion;
      ks.flags = (seg.r0 == cs.row_begin ? kernels::kNatslSegmentFirst : 0) |
                 (seg.r1 == r_end ? kernels::kNatslSegmentLast : 0);
      segs_.push_back(seg);
      ksegs_.push_back(ks);
      r = seg.r1;
    }
    num_phases = std::max(num_phases, k);
  }
  seq_seg_begin_[num_seqs] = static_cast<int>(segs_.size());
  const int num_segments = static_cast<int>(segs_.size());

  // ---- 1. Router: Σx, means of the completed chunks, logits to the host. ---------------------
  {
    HYLA_ASSIGN_OR_RETURN(kernels::NatslSegment * d_segs,
                          dev.Upload(ksegs_.data(), num_segments, "natsl segments"));
    HYLA_ASSIGN_OR_RETURN(float* means, scratch.AllocArray<float>(std::max(completions, 1) * d_,
                                                                  "natsl chunk means"));
    HYLA_ASSIGN_OR_RETURN(float* new_x_sum,
                          scratch.AllocArray<float>(num_seqs * d_, "natsl new x_sum"));
    kernels::NatslChunkSumsParams cp;
    cp.num_segments = num_segments;
    cp.num_seqs = num_seqs;
    cp.num_completions = completions;
    cp.d = d_;
    cp.x = x;
    cp.x_stride = d_;
    cp.segments = d_segs;
    cp.slots = batch.slots;
    cp.x_sum = reinterpret_cast<float*>(ctx.slot_pool + off_x_sum_);
    cp.x_sum_slot_stride = slot_floats_;
    cp.means = means;
    cp.new_x_sum = new_x_sum;
    HYLA_KERNEL_RETURN_IF_ERROR(kernels::NatslChunkSums(cp, stream), "NatslChunkSums");
    if (completions > 0) {
      const int64_t count = int64_t{completions} * 2 * H_;
      HYLA_ASSIGN_OR_RETURN(float* logits, scratch.AllocArray<float>(count, "natsl logits"));
      HYLA_KERNEL_RETURN_IF_ERROR(
          kernels::NatslRouterLogits(means, completions, d_, w_router_, 2 * H_, logits, stream),
          "NatslRouterLogits");
      if (logits_host_.bytes() < sizeof(float) * static_cast<size_t>(count)) {
        // Rare (more completed chunks than planned): a bigger pinned buffer. The old one may
        // still be the target of no copy: every earlier copy was waited for.
        HYLA_ASSIGN_OR_RETURN(logits_host_,
                              PinnedBuffer::Allocate(sizeof(float) * static_cast<size_t>(count) * 2,
                                                     "natsl router logits"));
      }
      HYLA_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(logits_host_.get(), logits, sizeof(float) * static_cast<size_t>(count),
                          cudaMemcpyDeviceToHost, dev.stream()),
          "natsl router logits to the host");
      HYLA_CUDA_RETURN_IF_ERROR(cudaEventRecord(logits_ready_.get(), dev.stream()),
                                "natsl router event");
    }
  }

  // ---- 2. Projections, short convs, mixing logits (independent of the routing). ----------------
  const int64_t P = branch_->proj_width();
  const int64_t conv_ch = branch_->conv_channels();
  HYLA_ASSIGN_OR_RETURN(float* proj, scratch.AllocArray<float>(rows * P, "natsl projections"));
  HYLA_RETURN_IF_ERROR(branch_->Project(dev, x, ctx.x_bf16, rows, proj));
  HYLA_ASSIGN_OR_RETURN(float* qkv, scratch.AllocArray<float>(rows * conv_ch, "natsl qkv"));
  HYLA_RETURN_IF_ERROR(branch_->ConvSilu(ctx, proj, qkv));
  HYLA_ASSIGN_OR_RETURN(float* mix, scratch.AllocArray<float>(rows * 2 * Ha_, "natsl mix logits"));
  HYLA_RETURN_IF_ERROR(Linear(dev, qkv, rows, w_mix_, nullptr, mix));

  // ---- 3. The softmax view: q, k (RMSNorm per softmax head when attn_qk_norm), v. ----------
  // Phases: phase k holds the k-th segment of every sequence that has one (batch order).
  phase_segs_.resize(static_cast<size_t>(num_phases));
  for (auto& v : phase_segs_) v.clear();
  for (int g = 0; g < num_segments; ++g) phase_segs_[segs_[g].index_in_seq].push_back(g);
  const float* attn_src = cfg_.attn_with_short_conv ? qkv : proj;
  const int64_t attn_stride = cfg_.attn_with_short_conv ? conv_ch : P;
  AttnInputs in;
  in.q = attn_src;
  in.q_stride = attn_stride;
  in.k = attn_src + kd_;
  in.k_stride = attn_stride;
  in.v = attn_src + 2 * kd_;
  in.v_stride = attn_stride;
  if (cfg_.attn_qk_norm) {
    HYLA_ASSIGN_OR_RETURN(float* qn, scratch.AllocArray<float>(rows * kd_, "natsl q normed"));
    HYLA_ASSIGN_OR_RETURN(float* kn, scratch.AllocArray<float>(rows * kd_, "natsl k normed"));
    kernels::GatedRmsNormParams np;
    np.rows = rows;
    np.heads = Ha_;
    np.n = dak_;
    np.x = attn_src;
    np.x_stride = attn_stride;
    np.weight = q_norm_;
    np.eps = cfg_.gdn.norm_eps;
    np.out = qn;
    np.out_stride = kd_;
    HYLA_KERNEL_RETURN_IF_ERROR(kernels::GatedRmsNorm(np, stream), "GatedRmsNorm (q_norm)");
    np.x = attn_src + kd_;
    np.weight = k_norm_;
    np.out = kn;
    HYLA_KERNEL_RETURN_IF_ERROR(kernels::GatedRmsNorm(np, stream), "GatedRmsNorm (k_norm)");
    in.q = qn;
    in.q_stride = kd_;
    in.k = kn;
    in.k_stride = kd_;
  }

  // ---- 4. The routing decisions (host, with the CPU's code). ----------------------------------
  ops_.assign(static_cast<size_t>(completions) * H_, 0);
  if (completions > 0) {
    HYLA_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(logits_ready_.get()),
                              "natsl router logits (wait)");
    const float* logits = logits_host_.as<float>();
    for (int c = 0; c < completions; ++c) {
      for (int n = 0; n < H_; ++n) {
        float probs[2] = {logits[(c * H_ + n) * 2], logits[(c * H_ + n) * 2 + 1]};
        cpu::Softmax(probs, 2);
        ops_[c * H_ + n] = probs[1] > probs[0] ? 1 : 0;  // first maximum wins (op 0 on ties)
      }
    }
  }

  // ---- 5. The GDN branch with the commit/decay of the completed chunks. -----------------------
  HYLA_ASSIGN_OR_RETURN(float* o_gdn, scratch.AllocArray<float>(rows * vd_, "natsl GDN output"));
  bool decode_path = batch.all_decode && rows == num_seqs;
  for (int s = 0; decode_path && s < num_seqs; ++s) {
    decode_path = batch.seqs[s].row_begin == s && batch.seqs[s].num_rows == 1;
  }
  if (decode_path) {
    HYLA_RETURN_IF_ERROR(branch_->Recurrence(ctx, qkv, proj, o_gdn));
    decode_decision_.assign(static_cast<size_t>(num_seqs) * H_, -1);
    for (const Segment& seg : segs_) {
      if (seg.completion < 0) continue;
      for (int n = 0; n < H_; ++n) {
        decode_decision_[seg.seq * H_ + n] = static_cast<int8_t>(ops_[seg.completion * H_ + n]);
      }
    }
    HYLA_ASSIGN_OR_RETURN(int8_t * d_dec, dev.Upload(decode_decision_.data(), num_seqs * H_,
                                                     "natsl decode decisions"));
    kernels::NatslDecodeCommitParams dp;
    dp.num_seqs = num_seqs;
    dp.num_heads = H_;
    dp.dk = dk_;
    dp.dv = dv_;
    dp.a = proj + branch_->off_a();
    dp.a_stride = P;
    dp.a_log = branch_->a_log();
    dp.dt_bias = branch_->dt_bias();
    dp.slots = batch.slots;
    dp.decision = d_dec;
    dp.state = reinterpret_cast<float*>(ctx.slot_pool + off_S_);
    dp.state_slot_stride = slot_floats_;
    dp.committed = reinterpret_cast<float*>(ctx.slot_pool + off_S_committed_);
    dp.committed_slot_stride = slot_floats_;
    dp.g_sum = reinterpret_cast<float*>(ctx.slot_pool + off_g_sum_);
    dp.g_sum_slot_stride = slot_floats_;
    dp.decay_uncommitted = cfg_.decay_for_non_gdn_blocks;
    HYLA_KERNEL_RETURN_IF_ERROR(kernels::NatslDecodeCommit(dp, stream), "NatslDecodeCommit");
  } else {
    HYLA_RETURN_IF_ERROR(PlanGdnPieces(ctx, &pieces_));
    if (pieces_.num_pieces != num_segments ||
        static_cast<int>(pieces_.host_piece_offsets.size()) != num_seqs + 1) {
      return absl::InternalError(absl::StrCat("natsl layer ", layer_, ": ", pieces_.num_pieces,
                                              " GDN pieces for ", num_segments, " segments"));
    }
    commit_mask_.assign(static_cast<size_t>(num_segments) * H_, 0);
    for (const Segment& seg : segs_) {
      const int piece = pieces_.host_piece_offsets[seg.seq] + seg.index_in_seq;
      if (piece != seq_seg_begin_[seg.seq] + seg.index_in_seq) {
        return absl::InternalError(
            absl::StrCat("natsl layer ", layer_, ": GDN piece numbering differs"));
      }
      if (seg.completion < 0) continue;
      for (int n = 0; n < H_; ++n) {
        commit_mask_[piece * H_ + n] = static_cast<uint8_t>(ops_[seg.completion * H_ + n]);
      }
    }
    HYLA_ASSIGN_OR_RETURN(uint8_t * d_mask,
                          dev.Upload(commit_mask_.data(), num_segments * H_, "natsl commit mask"));
    GdnRecurrenceOptions ro;
    ro.force_prefill = true;
    ro.pieces = &pieces_;
    ro.commit = d_mask;
    ro.decay_uncommitted = cfg_.decay_for_non_gdn_blocks;
    HYLA_RETURN_IF_ERROR(branch_->Recurrence(ctx, qkv, proj, o_gdn, ro));
  }

  // ---- 6. Softmax attention, in waves, with the block bookkeeping. ---------------------------
  // Without a per-stream KV cap the whole step is one wave: every block of the step is taken
  // before any block is dropped, so no block is handed out twice within the step, and the tables
  // are those of the CPU's order (a chunk dropped earlier in the step is left out of the kept
  // chunks). With a cap, eviction depends on the order of drops and allocations: one wave per
  // phase, in the CPU's order (drops of phase k before the blocks of phase k + 1; the device
  // work of wave k is queued before wave k + 1 writes into a block it may reuse).
  HYLA_ASSIGN_OR_RETURN(in.out, scratch.AllocArray<float>(rows * vd_, "natsl attention"));
  if (ctx.store->options().max_kv_tokens_per_stream > 0) {
    for (int k = 0; k < num_phases; ++k) {
      HYLA_RETURN_IF_ERROR(RunWave(ctx, k, k + 1, decode_path, in));
    }
  } else if (num_phases > 0) {
    HYLA_RETURN_IF_ERROR(RunWave(ctx, 0, num_phases, decode_path, in));
  }

  // ---- 7. Dual-norm mix, gate, o_proj. --------------------------------------------------------
  HYLA_ASSIGN_OR_RETURN(float* y, scratch.AllocArray<float>(rows * vd_, "natsl mixed output"));
  kernels::NatslMixOutputParams mp;
  mp.rows = rows;
  mp.heads = Ha_;
  mp.dv = dav_;
  mp.o_gdn = o_gdn;
  mp.o_gdn_stride = vd_;
  mp.o_attn = in.out;
  mp.o_attn_stride = vd_;
  mp.attn_rows = nullptr;
  mp.mix = mix;
  mp.mix_stride = 2 * Ha_;
  mp.z = proj + branch_->off_g();
  mp.z_stride = P;
  mp.w_gdn = o_norm1_;
  mp.w_attn = o_norm2_;
  mp.eps = cfg_.gdn.norm_eps;
  mp.y = y;
  mp.y_stride = vd_;
  HYLA_KERNEL_RETURN_IF_ERROR(kernels::NatslMixOutput(mp, stream), "NatslMixOutput");
  return Linear(dev, y, rows, w_o_, nullptr, out);
}

// True when chunk `chunk` of sequence `seq` is completed in this step and routed to GDN for
// decision head `head` (its block is, or is about to be, dropped).
bool CudaNatslLayer::DroppedInStep(int seq, int64_t chunk, int head) const {
  const int begin = seq_seg_begin_[seq], end = seq_seg_begin_[seq + 1];
  if (begin == end) return false;
  const int64_t g = begin + (chunk - segs_[begin].chunk);
  if (g < begin || g >= end) return false;
  const Segment& seg = segs_[g];
  return seg.completion >= 0 && ops_[seg.completion * H_ + head] == 1;
}

// Phases [phase_begin, phase_end) as one wave: take the current chunk's block of every decision
// head for each of their segments (the CPU's WritableBlock, phase by phase, sequences in batch
// order), write the K/V of their rows, attend, then apply the decisions of the chunks they
// complete.
absl::Status CudaNatslLayer::RunWave(const CudaContext& ctx, int phase_begin, int phase_end,
                                     bool decode, const AttnInputs& in) {
  DeviceContext& dev = *ctx.dev;
  ScratchArena& scratch = dev.scratch();
  void* stream = dev.kernel_stream();
  wave_segs_.clear();
  for (int k = phase_begin; k < phase_end; ++k) {
    wave_segs_.insert(wave_segs_.end(), phase_segs_[k].begin(), phase_segs_[k].end());
  }
  const size_t nseg = wave_segs_.size();

  // Blocks: per segment, the current block and the kept chunks of every decision head.
  seg_cur_.assign(nseg * H_, -1);
  seg_kept_.resize(nseg * H_);
  int64_t max_blocks = 1;
  for (size_t i = 0; i < nseg; ++i) {
    const Segment& seg = segs_[wave_segs_[i]];
    SequenceState* seq = ctx.batch->seqs[seg.seq].seq;
    for (int n = 0; n < H_; ++n) {
      const int stream_index = first_stream_ + n;
      const std::vector<BlockRef>& table = seq->streams[stream_index];
      if (seg.j0 > 0 && (table.empty() || table.back().chunk != seg.chunk)) {
        return absl::InternalError(absl::StrCat("natsl layer ", layer_,
                                                ": the block of the current chunk ", seg.chunk,
                                                " of stream ", stream_index, " is missing"));
      }
      HYLA_ASSIGN_OR_RETURN(seg_cur_[i * H_ + n], ctx.WritableBlock(seq, stream_index, seg.chunk));
      std::vector<BlockRef>& kept = seg_kept_[i * H_ + n];
      kept.clear();
      for (const BlockRef& ref : seq->streams[stream_index]) {
        if (ref.chunk < seg.chunk && !DroppedInStep(seg.seq, ref.chunk, n)) kept.push_back(ref);
      }
      max_blocks = std::max<int64_t>(max_blocks, static_cast<int64_t>(kept.size()) + 1);
    }
  }

  // Everything allocated from here on is read only by work queued in this wave; later
  // allocations reuse the memory for work queued after it.
  const size_t mark = scratch.Mark();
  kv_rows_.clear();
  kv_tokens_.clear();
  kv_blocks_.clear();
  for (size_t i = 0; i < nseg; ++i) {
    const Segment& seg = segs_[wave_segs_[i]];
    for (int64_t r = seg.r0; r < seg.r1; ++r) {
      kv_rows_.push_back(static_cast<int32_t>(r));
      kv_tokens_.push_back(static_cast<int32_t>(seg.j0 + (r - seg.r0)));
      for (int n = 0; n < H_; ++n) kv_blocks_.push_back(seg_cur_[i * H_ + n]);
    }
  }
  {
    const int64_t m = static_cast<int64_t>(kv_rows_.size());
    HYLA_ASSIGN_OR_RETURN(int32_t * d_rows, dev.Upload(kv_rows_.data(), m, "natsl kv rows"));
    HYLA_ASSIGN_OR_RETURN(int32_t * d_tokens, dev.Upload(kv_tokens_.data(), m, "natsl kv tokens"));
    HYLA_ASSIGN_OR_RETURN(int32_t * d_blocks,
                          dev.Upload(kv_blocks_.data(), m * H_, "natsl kv blocks"));
    kernels::NatslKvWriteParams kp;
    kp.num_rows = static_cast<int>(m);
    kp.num_heads = H_;
    kp.groups = G_;
    kp.dk = dak_;
    kp.dv = dav_;
    kp.rows = d_rows;
    kp.tokens = d_tokens;
    kp.blocks = d_blocks;
    kp.k = in.k;
    kp.k_stride = in.k_stride;
    kp.v = in.v;
    kp.v_stride = in.v_stride;
    kp.kv_dtype = kv_dtype_;
    kp.kv = ctx.block_pool;
    kp.block_stride = block_stride_;
    HYLA_KERNEL_RETURN_IF_ERROR(kernels::NatslKvWrite(kp, stream), "NatslKvWrite");
  }

  // Attention over [kept chunks…, current chunk], in launches of at most kMaxTableEntries table
  // entries per decision head.
  const size_t per_launch =
      static_cast<size_t>(std::max<int64_t>(1, kMaxTableEntries / max_blocks));
  for (size_t i0 = 0; i0 < nseg; i0 += per_launch) {
    HYLA_RETURN_IF_ERROR(Attend(ctx, decode, in, max_blocks, i0, std::min(nseg, i0 + per_launch)));
  }
  scratch.RewindTo(mark);

  for (int32_t g : wave_segs_) {
    if (segs_[g].completion >= 0) HYLA_RETURN_IF_ERROR(ApplyDecisions(ctx, segs_[g]));
  }
  return absl::OkStatus();
}

// Softmax attention of the rows of wave segments [i0, i1), one launch per decision head n (its
// G softmax heads are the "query heads" of a G-head KV stream, group 1): table entries carry
// their chunk index (kept chunks are visible whole, the current chunk causally by position).
//   decode: PagedAttentionDecode, one "sequence" per row (the rows of a decode step are
//           0..num_seqs-1 in order, one segment each), kv_len = position + 1, split-K;
//   else:   PagedAttentionPrefill, one "sequence" per segment, its rows as tiles, the step's
//           row positions.
absl::Status CudaNatslLayer::Attend(const CudaContext& ctx, bool decode, const AttnInputs& in,
                                    int64_t max_blocks, size_t i0, size_t i1) {
  DeviceContext& dev = *ctx.dev;
  ScratchArena& scratch = dev.scratch();
  void* stream = dev.kernel_stream();
  const int64_t nseq = static_cast<int64_t>(i1 - i0);
  int tile_rows = 0;
  if (!decode) {
    tile_rows = kernels::PagedAttentionPrefillTileRows(G_, G_, dak_, dav_);
    if (tile_rows < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "natsl layer ", layer_, ": no prefill attention tile for d_ak ", dak_, ", d_av ", dav_));
    }
    tiles_.clear();
    for (size_t i = i0; i < i1; ++i) {
      const Segment& seg = segs_[wave_segs_[i]];
      for (int64_t r = seg.r0; r < seg.r1; r += tile_rows) {
        tiles_.push_back(static_cast<int32_t>(i - i0));
        tiles_.push_back(static_cast<int32_t>(r));
        tiles_.push_back(static_cast<int32_t>(std::min<int64_t>(tile_rows, seg.r1 - r)));
      }
    }
  }
  const int64_t first_row = segs_[wave_segs_[i0]].r0;  // decode: rows i0..i1-1 in order
  for (int n = 0; n < H_; ++n) {
    table_.assign(static_cast<size_t>(nseq * max_blocks), 0);
    chunks_.assign(static_cast<size_t>(nseq * max_blocks), 0);
    num_blocks_.assign(static_cast<size_t>(nseq), 0);
    kv_len_.assign(static_cast<size_t>(nseq), 0);
    for (int64_t s = 0; s < nseq; ++s) {
      const size_t i = i0 + static_cast<size_t>(s);
      const Segment& seg = segs_[wave_segs_[i]];
      const std::vector<BlockRef>& kept = seg_kept_[i * H_ + n];
      int32_t* blocks = table_.data() + s * max_blocks;
      int32_t* chunks = chunks_.data() + s * max_blocks;
      for (size_t e = 0; e < kept.size(); ++e) {
        blocks[e] = kept[e].block;
        chunks[e] = static_cast<int32_t>(kept[e].chunk);
      }
      blocks[kept.size()] = seg_cur_[i * H_ + n];
      chunks[kept.size()] = static_cast<int32_t>(seg.chunk);
      num_blocks_[s] = static_cast<int32_t>(kept.size() + 1);
      kv_len_[s] = static_cast<int32_t>(seg.chunk * kBlockTokens + seg.j0 + 1);
    }
    const size_t mark = scratch.Mark();
    HYLA_ASSIGN_OR_RETURN(int32_t * d_table,
                          dev.Upload(table_.data(), nseq * max_blocks, "natsl block tables"));
    HYLA_ASSIGN_OR_RETURN(int32_t * d_chunks,
                          dev.Upload(chunks_.data(), nseq * max_blocks, "natsl block chunks"));
    HYLA_ASSIGN_OR_RETURN(int32_t * d_num, dev.Upload(num_blocks_.data(), nseq, "natsl blocks"));
    const float* q = in.q + int64_t{n} * G_ * dak_;
    float* out = in.out + int64_t{n} * G_ * dav_;
    if (decode) {
      HYLA_ASSIGN_OR_RETURN(int32_t * d_len, dev.Upload(kv_len_.data(), nseq, "natsl kv_len"));
      kernels::PagedAttentionDecodeParams ap;
      ap.num_seqs = static_cast<int>(nseq);
      ap.num_heads = G_;
      ap.num_kv_heads = G_;
      ap.dk = dak_;
      ap.dv = dav_;
      ap.q_dtype = kernels::KernelDType::kF32;
      ap.kv_dtype = kv_dtype_;
      ap.q = q + first_row * in.q_stride;
      ap.q_stride = in.q_stride;
      ap.kv = ctx.block_pool;
      ap.block_stride = block_stride_;
      ap.block_table = d_table;
      ap.block_chunks = d_chunks;
      ap.num_blocks = d_num;
      ap.max_blocks = static_cast<int>(max_blocks);
      ap.kv_len = d_len;
      ap.window = 0;
      ap.scale = attn_scale_;
      ap.out = out + first_row * vd_;
      ap.out_stride = vd_;
      // Split-K as the kernel would choose it (about 4 CTAs per SM), with its workspace.
      const int64_t base = nseq * G_;
      const int64_t want = (4 * int64_t{std::max(1, dev.sm_count())} + base - 1) / base;
      const int splits = static_cast<int>(std::max<int64_t>(1, std::min(want, max_blocks)));
      ap.num_splits = splits;
      if (splits > 1) {
        const size_t ws_bytes =
            kernels::PagedAttentionDecodeWorkspaceBytes(ap.num_seqs, G_, dav_, splits);
        HYLA_ASSIGN_OR_RETURN(void* ws, scratch.Alloc(ws_bytes, "natsl attention split-K"));
        ap.workspace = ws;
        ap.workspace_bytes = ws_bytes;
      }
      HYLA_KERNEL_RETURN_IF_ERROR(kernels::PagedAttentionDecode(ap, stream),
                                  "PagedAttentionDecode (natsl)");
    } else {
      HYLA_ASSIGN_OR_RETURN(
          int32_t * d_tiles,
          dev.Upload(tiles_.data(), static_cast<int64_t>(tiles_.size()), "natsl attention tiles"));
      kernels::PagedAttentionPrefillParams ap;
      ap.num_heads = G_;
      ap.num_kv_heads = G_;
      ap.dk = dak_;
      ap.dv = dav_;
      ap.kv_dtype = kv_dtype_;
      ap.q = q;
      ap.q_stride = in.q_stride;
      ap.kv = ctx.block_pool;
      ap.block_stride = block_stride_;
      ap.block_table = d_table;
      ap.block_chunks = d_chunks;
      ap.num_blocks = d_num;
      ap.max_blocks = static_cast<int>(max_blocks);
      ap.row_pos = ctx.batch->row_pos;
      ap.tiles = d_tiles;
      ap.num_tiles = static_cast<int>(tiles_.size() / 3);
      ap.window = 0;
      ap.scale = attn_scale_;
      ap.out = out;
      ap.out_stride = vd_;
      HYLA_KERNEL_RETURN_IF_ERROR(kernels::PagedAttentionPrefill(ap, stream),
                                  "PagedAttentionPrefill (natsl)");
    }
    // The uploads are read by the launch just queued; the next head's reuse the memory after it.
    scratch.RewindTo(mark);
  }
  return absl::OkStatus();
}

// The decisions of the chunk `seg` completes, as the CPU's Decide: count them and drop the block
// of every head routed to GDN (the device state was committed by the recurrence).
absl::Status CudaNatslLayer::ApplyDecisions(const CudaContext& ctx, const Segment& seg) {
  SequenceState* seq = ctx.batch->seqs[seg.seq].seq;
  const float* logits = logits_host_.as<float>();
  for (int n = 0; n < H_; ++n) {
    const int stream_index = first_stream_ + n;
    std::vector<BlockRef>& table = seq->streams[stream_index];
    int index = static_cast<int>(table.size()) - 1;
    while (index >= 0 && table[index].chunk != seg.chunk) --index;
    if (index < 0) {
      return absl::InternalError(absl::StrCat("natsl layer ", layer_, ": chunk ", seg.chunk,
                                              " has no block in stream ", stream_index));
    }
    const int op = ops_[seg.completion * H_ + n];
    if (op == 0) {
      if (ctx.routing != nullptr) ++ctx.routing->to_softmax;
    } else {
      ctx.store->DropBlock(seq, stream_index, index);
      if (ctx.routing != nullptr) ++ctx.routing->to_gdn;
    }
    if (log_ != nullptr) {
      log_->decisions.push_back(cpu::NatslDecision{seq->slot, layer_, seg.chunk, n,
                                                   logits[(seg.completion * H_ + n) * 2],
                                                   logits[(seg.completion * H_ + n) * 2 + 1], op});
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaNatslLayerWithLog(const CudaLayerArgs& args,
                                                                       cpu::NatslDecisionLog* log) {
  if (args.config == nullptr || args.checkpoint == nullptr || args.layout == nullptr ||
      args.dev == nullptr || args.weights == nullptr || args.layer < 0 ||
      args.layer >= static_cast<int>(args.config->layers.size())) {
    return absl::InvalidArgumentError("CreateCudaNatslLayer: bad arguments");
  }
  const LayerConfig& lc = args.config->layers[args.layer];
  if (lc.kind != LayerKind::kNatsl) {
    return absl::InvalidArgumentError(absl::StrCat("CreateCudaNatslLayer: layer ", args.layer,
                                                   " is a ", LayerKindName(lc.kind), " layer"));
  }
  const NatslLayerConfig& n = lc.natsl;
  if (n.chunk_size != kBlockTokens || n.attn_apply_pos_encoding || !n.gdn.use_gate ||
      !n.outputs_are_weighted || n.gdn.num_v_heads != n.gdn.num_heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateCudaNatslLayer: layer ", args.layer,
        " uses a NAtS-L variant the CUDA backend does not implement (chunk size, positional "
        "encoding, ungated or unweighted output, or GVA)"));
  }
  if (n.gdn.num_heads < 1 || n.num_attn_heads < n.gdn.num_heads ||
      n.num_attn_heads % n.gdn.num_heads != 0 ||
      int64_t{n.num_attn_heads} * n.attn_head_k_dim != n.gdn.key_dim() ||
      int64_t{n.num_attn_heads} * n.attn_head_v_dim != n.gdn.value_dim() || n.attn_head_k_dim < 1 ||
      n.attn_head_k_dim > 256 || n.attn_head_v_dim < 1 || n.attn_head_v_dim > 256 ||
      n.gdn.head_k_dim > 256 || n.gdn.head_v_dim > 512) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateCudaNatslLayer: layer ", args.layer,
        ": head shapes outside the CUDA kernels' range (softmax heads must split the GDN heads "
        "evenly; d_ak, d_av, dk <= 256, dv <= 512)"));
  }
  auto layer = std::make_unique<CudaNatslLayer>(n, args.layer, args.config->hidden_size, log);
  HYLA_RETURN_IF_ERROR(layer->Load(args));
  return std::unique_ptr<CudaLayer>(std::move(layer));
}

absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaNatslLayer(const CudaLayerArgs& args) {
  return CreateCudaNatslLayerWithLog(args, nullptr);
}

}  // namespace hyla::cuda
