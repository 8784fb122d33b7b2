// The CPU reference of softmax attention: transformers LlamaAttention (eager) and fla's
// Attention layer (fla/layers/attn.py) inside hybrids.
//
//   q, k, v = x Wq (+bq), x Wk (+bk), x Wv (+bv)          per head: [hd]
//   q, k    = RMSNorm(q), RMSNorm(k) per head              (qk_norm, fla/Qwen3 style)
//   q, k    = RoPE rotate-half on the first rotary_dim dims, angle = float(pos) · inv_freq[i]
//   o_t     = Σ_j softmax_j(q_t·k_j · hd^-1/2) v_j          over cached keys j ≤ t (GQA: query
//             head h reads KV head h / (H / Hkv)); with a window w > 0 only t - w < j ≤ t
//   out     = o Wo (+bo)
//
// Post-RoPE K and V of every token go into the sequence's KV stream of this layer, 64 tokens a
// block ([64, Hkv, hd] keys then [64, Hkv, hd] values). The new tokens of a step are processed
// chunk by chunk (a piece never crosses a 64-token boundary): write the piece's K/V, attend its
// queries, then, with a window, drop the blocks no later query can see. So a token's result does
// not depend on how its sequence was split into steps or what else was in the batch (bitwise),
// also when the per-sequence cap evicts old blocks (kEvictOldest) or a window drops them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/base/status_macros.h"
#include "runtime/cpu/cpu_layer.h"
#include "runtime/cpu/ops.h"

namespace hyla::cpu {

std::vector<float> AttentionRopeInvFreq(const AttentionLayerConfig& a) {
  const int64_t half = a.rotary_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  if (half == 0) return inv;
  // transformers _compute_default_rope_parameters (fla RotaryEmbedding computes the same):
  // 1 / theta^(arange(0, dim, 2) / dim) in float32.
  RopeInvFreq(a.rope_theta, a.rotary_dim, inv.data());
  if (a.rope_type == RopeType::kLlama3) {
    // transformers _compute_llama3_parameters, op by op in float32 as torch evaluates it:
    // Python scalars enter float32 ops rounded to float; `scalar / tensor` is
    // tensor.reciprocal() * scalar; the band edges are Python (double) divisions.
    const double old_context_len = static_cast<double>(a.rope_original_max_position_embeddings);
    const float low_freq_wavelen = static_cast<float>(old_context_len / a.rope_low_freq_factor);
    const float high_freq_wavelen = static_cast<float>(old_context_len / a.rope_high_freq_factor);
    const float two_pi = static_cast<float>(2.0 * 3.141592653589793);
    const float factor = static_cast<float>(a.rope_factor);
    const float low_freq_factor = static_cast<float>(a.rope_low_freq_factor);
    const float band = static_cast<float>(a.rope_high_freq_factor - a.rope_low_freq_factor);
    const float context = static_cast<float>(old_context_len);
    for (int64_t i = 0; i < half; ++i) {
      const float f = inv[i];
      const float wavelen = (1.0f / f) * two_pi;
      const float f_llama = wavelen > low_freq_wavelen ? f / factor : f;
      const float smooth = ((1.0f / wavelen) * context - low_freq_factor) / band;
      const float smoothed = ((1.0f - smooth) * f_llama) / factor + smooth * f_llama;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      inv[i] = medium ? smoothed : f_llama;
    }
  }
  return inv;
}

namespace {

// Rotate-half RoPE of one head vector with precomputed cos/sin of its position:
// (a, b) = (x[i], x[i + half]) → (a·c − b·s, b·c + a·s), as x·cos + rotate_half(x)·sin.
inline void RotateHalf(float* x, int64_t half, const float* cos, const float* sin) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i];
    const float b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i] + a * sin[i];
  }
}

class AttentionLayer : public CpuLayer {
 public:
  AttentionLayer(const AttentionLayerConfig& cfg, int hidden, int stream)
      : cfg_(cfg), hidden_(hidden), stream_(stream) {
    hd_ = cfg_.head_dim;
    q_width_ = int64_t{cfg_.num_heads} * hd_;
    kv_width_ = int64_t{cfg_.num_kv_heads} * hd_;
    group_ = cfg_.num_heads / cfg_.num_kv_heads;
    // transformers: scaling = head_dim ** -0.5 (a Python float), applied to q·k in float32.
    scale_ = static_cast<float>(std::pow(static_cast<double>(hd_), -0.5));
    inv_freq_ = AttentionRopeInvFreq(cfg_);
  }

  absl::Status Load(const CpuLayerArgs& args) {
    Checkpoint* ck = args.checkpoint;
    const std::string& p = args.prefix;
    const int64_t d = hidden_;
    HYLA_ASSIGN_OR_RETURN(w_q_, ck->TakeF32(p + "q_proj.weight", {q_width_, d}));
    HYLA_ASSIGN_OR_RETURN(w_k_, ck->TakeF32(p + "k_proj.weight", {kv_width_, d}));
    HYLA_ASSIGN_OR_RETURN(w_v_, ck->TakeF32(p + "v_proj.weight", {kv_width_, d}));
    HYLA_ASSIGN_OR_RETURN(w_o_, ck->TakeF32(p + "o_proj.weight", {d, q_width_}));
    if (cfg_.qkv_bias) {
      HYLA_ASSIGN_OR_RETURN(b_q_, ck->TakeF32(p + "q_proj.bias", {q_width_}));
      HYLA_ASSIGN_OR_RETURN(b_k_, ck->TakeF32(p + "k_proj.bias", {kv_width_}));
      HYLA_ASSIGN_OR_RETURN(b_v_, ck->TakeF32(p + "v_proj.bias", {kv_width_}));
    }
    if (cfg_.o_bias) {
      HYLA_ASSIGN_OR_RETURN(b_o_, ck->TakeF32(p + "o_proj.bias", {d}));
    }
    if (cfg_.qk_norm) {
      HYLA_ASSIGN_OR_RETURN(q_norm_, ck->TakeF32(p + "q_norm.weight", {hd_}));
      HYLA_ASSIGN_OR_RETURN(k_norm_, ck->TakeF32(p + "k_norm.weight", {hd_}));
    }
    return absl::OkStatus();
  }

  absl::Status Forward(const CpuContext& ctx, absl::Span<const CpuSeq> seqs, const float* x,
                       float* out) override;

 private:
  // A run of one sequence's new tokens inside one 64-token chunk.
  struct Piece {
    const CpuSeq* seq = nullptr;
    int64_t row = 0;  // first packed row
    int64_t pos = 0;  // position of that row
    int64_t n = 0;    // tokens
  };

  void ProjectAndRotate(ThreadPool* pool, absl::Span<const CpuSeq> seqs, const float* x,
                        int64_t rows);
  // Attention of every query of `pieces` (all heads) over the keys present in their streams.
  void Attend(const CpuContext& ctx, const std::vector<Piece>& pieces);
  // One query row/head: q [hd] at position t over the block table of `seq`; o [hd].
  void AttendOne(const CpuContext& ctx, const SequenceState& seq, const float* q, int kv_head,
                 int64_t t, float* scores, float* o) const;

  AttentionLayerConfig cfg_;
  int64_t hidden_ = 0;
  int stream_ = 0;
  int64_t hd_ = 0;
  int64_t q_width_ = 0;   // H * hd
  int64_t kv_width_ = 0;  // Hkv * hd
  int group_ = 1;         // H / Hkv
  float scale_ = 1.0f;
  std::vector<float> inv_freq_;  // [rotary_dim / 2]
  F32Tensor w_q_, w_k_, w_v_;    // [H*hd, hidden], [Hkv*hd, hidden], [Hkv*hd, hidden]
  F32Tensor w_o_;                // [hidden, H*hd]
  F32Tensor b_q_, b_k_, b_v_;    // [H*hd], [Hkv*hd], [Hkv*hd] (qkv_bias)
  F32Tensor b_o_;                // [hidden] (o_bias)
  F32Tensor q_norm_, k_norm_;    // [hd] (qk_norm)
  // Step scratch, reused across steps.
  std::vector<float> q_, k_, v_;  // [rows, H*hd], [rows, Hkv*hd], [rows, Hkv*hd]
  std::vector<float> o_;          // [rows, H*hd]
  std::vector<int64_t> row_pos_;  // [rows] position of each packed row
};

void AttentionLayer::ProjectAndRotate(ThreadPool* pool, absl::Span<const CpuSeq> seqs,
                                      const float* x, int64_t rows) {
  Linear(pool, x, rows, hidden_, w_q_.data(), q_width_, b_q_.empty() ? nullptr : b_q_.data(),
         q_.data());
  Linear(pool, x, rows, hidden_, w_k_.data(), kv_width_, b_k_.empty() ? nullptr : b_k_.data(),
         k_.data());
  Linear(pool, x, rows, hidden_, w_v_.data(), kv_width_, b_v_.empty() ? nullptr : b_v_.data(),
         v_.data());
  for (const CpuSeq& s : seqs) {
    for (int64_t r = 0; r < s.num_rows; ++r) row_pos_[s.row_begin + r] = s.start_pos + r;
  }
  const int64_t half = cfg_.rotary_dim / 2;
  const int64_t heads = cfg_.num_heads, kv_heads = cfg_.num_kv_heads;
  pool->ParallelFor(rows, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> cos(static_cast<size_t>(half)), sin(static_cast<size_t>(half));
    for (int64_t r = begin; r < end; ++r) {
      float* q = q_.data() + r * q_width_;
      float* k = k_.data() + r * kv_width_;
      if (cfg_.qk_norm) {
        for (int64_t h = 0; h < heads; ++h) {
          RmsNorm(q + h * hd_, q_norm_.data(), cfg_.qk_norm_eps, hd_, q + h * hd_);
        }
        for (int64_t h = 0; h < kv_heads; ++h) {
          RmsNorm(k + h * hd_, k_norm_.data(), cfg_.qk_norm_eps, hd_, k + h * hd_);
        }
      }
      if (half == 0) continue;
      // transformers: freqs = inv_freq · float(position) in float32; cos/sin in float32.
      const float pos = static_cast<float>(row_pos_[r]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = pos * inv_freq_[i];
        cos[i] = std::cos(angle);
        sin[i] = std::sin(angle);
      }
      for (int64_t h = 0; h < heads; ++h) RotateHalf(q + h * hd_, half, cos.data(), sin.data());
      for (int64_t h = 0; h < kv_heads; ++h) RotateHalf(k + h * hd_, half, cos.data(), sin.data());
    }
  });
}

void AttentionLayer::AttendOne(const CpuContext& ctx, const SequenceState& seq, const float* q,
                               int kv_head, int64_t t, float* scores, float* o) const {
  const KvStream& ks = ctx.layout->streams()[stream_];
  const std::vector<BlockRef>& table = seq.streams[stream_];
  const int64_t first_visible =
      cfg_.window_size > 0 ? std::max<int64_t>(0, t - cfg_.window_size + 1) : 0;
  // Pass 1: scores of the visible keys, in position order.
  int64_t n = 0;
  for (const BlockRef& ref : table) {
    const int64_t base = ref.chunk * kBlockTokens;
    if (base > t) break;
    const int64_t lo = std::max(first_visible, base) - base;
    const int64_t hi = std::min(t, base + kBlockTokens - 1) - base;
    if (lo > hi) continue;
    float* block = ctx.BlockData(ref.block);
    for (int64_t i = lo; i <= hi; ++i) {
      scores[n++] = Dot(q, BlockKey(block, ks, i, kv_head), hd_) * scale_;
    }
  }
  std::fill(o, o + hd_, 0.0f);
  if (n == 0) return;  // unreachable: the current chunk's block is always present
  Softmax(scores, n);
  // Pass 2: o = Σ p_j v_j in the same order.
  n = 0;
  for (const BlockRef& ref : table) {
    const int64_t base = ref.chunk * kBlockTokens;
    if (base > t) break;
    const int64_t lo = std::max(first_visible, base) - base;
    const int64_t hi = std::min(t, base + kBlockTokens - 1) - base;
    if (lo > hi) continue;
    float* block = ctx.BlockData(ref.block);
    for (int64_t i = lo; i <= hi; ++i) {
      const float p = scores[n++];
      const float* v = BlockValue(block, ks, i, kv_head);
      for (int64_t d = 0; d < hd_; ++d) o[d] += p * v[d];
    }
  }
}

void AttentionLayer::Attend(const CpuContext& ctx, const std::vector<Piece>& pieces) {
  // Tasks: (piece, row, head) flattened; offsets[p] = first task of piece p.
  std::vector<int64_t> offsets(pieces.size() + 1, 0);
  int64_t max_keys = 0;
  for (size_t p = 0; p < pieces.size(); ++p) {
    offsets[p + 1] = offsets[p] + pieces[p].n * cfg_.num_heads;
    max_keys = std::max<int64_t>(
        max_keys, static_cast<int64_t>(pieces[p].seq->seq->streams[stream_].size()) * kBlockTokens);
  }
  const int64_t tasks = offsets.back();
  if (tasks == 0) return;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, max_keys * hd_ * 2));
  ctx.pool->ParallelFor(tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(max_keys));
    size_t p = static_cast<size_t>(std::upper_bound(offsets.begin(), offsets.end(), begin) -
                                   offsets.begin()) -
               1;
    for (int64_t task = begin; task < end; ++task) {
      while (task >= offsets[p + 1]) ++p;
      const Piece& piece = pieces[p];
      const int64_t local = task - offsets[p];
      const int64_t r = local / cfg_.num_heads;
      const int h = static_cast<int>(local % cfg_.num_heads);
      const int64_t row = piece.row + r;
      AttendOne(ctx, *piece.seq->seq, q_.data() + row * q_width_ + h * hd_, h / group_,
                piece.pos + r, scores.data(), o_.data() + row * q_width_ + h * hd_);
    }
  });
}

absl::Status AttentionLayer::Forward(const CpuContext& ctx, absl::Span<const CpuSeq> seqs,
                                     const float* x, float* out) {
  int64_t rows = 0;
  for (const CpuSeq& s : seqs) rows = std::max(rows, s.row_begin + s.num_rows);
  if (rows == 0) return absl::OkStatus();
  q_.resize(static_cast<size_t>(rows * q_width_));
  k_.resize(static_cast<size_t>(rows * kv_width_));
  v_.resize(static_cast<size_t>(rows * kv_width_));
  o_.assign(static_cast<size_t>(rows * q_width_), 0.0f);
  row_pos_.resize(static_cast<size_t>(rows));
  ProjectAndRotate(ctx.pool, seqs, x, rows);

  // Split every sequence's rows at 64-token chunk boundaries; round i handles piece i of every
  // sequence that has one.
  std::vector<std::vector<Piece>> per_seq(seqs.size());
  size_t rounds = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const CpuSeq& s = seqs[i];
    int64_t r = 0;
    while (r < s.num_rows) {
      const int64_t pos = s.start_pos + r;
      const int64_t n = std::min(s.num_rows - r, kBlockTokens - pos % kBlockTokens);
      per_seq[i].push_back(Piece{&s, s.row_begin + r, pos, n});
      r += n;
    }
    rounds = std::max(rounds, per_seq[i].size());
  }

  const KvStream& ks = ctx.layout->streams()[stream_];
  const size_t key_bytes = sizeof(float) * static_cast<size_t>(kv_width_);
  std::vector<Piece> active;
  for (size_t round = 0; round < rounds; ++round) {
    active.clear();
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (round >= per_seq[i].size()) continue;
      const Piece& piece = per_seq[i][round];
      HYLA_ASSIGN_OR_RETURN(float* block,
                            ctx.WritableBlock(piece.seq->seq, stream_, piece.pos / kBlockTokens));
      for (int64_t r = 0; r < piece.n; ++r) {
        const int64_t slot = (piece.pos + r) % kBlockTokens;
        std::memcpy(BlockKey(block, ks, slot, 0), k_.data() + (piece.row + r) * kv_width_,
                    key_bytes);
        std::memcpy(BlockValue(block, ks, slot, 0), v_.data() + (piece.row + r) * kv_width_,
                    key_bytes);
      }
      active.push_back(piece);
    }
    Attend(ctx, active);
    if (cfg_.window_size > 0) {
      // The next query (position `next`) sees keys from next - w + 1 on: drop the blocks that
      // end before that (StateLayout::StreamBlocksAt counts the same).
      for (const Piece& piece : active) {
        const int64_t next = piece.pos + piece.n;
        const int64_t first_needed = next - cfg_.window_size + 1;
        SequenceState* seq = piece.seq->seq;
        while (!seq->streams[stream_].empty() &&
               (seq->streams[stream_].front().chunk + 1) * kBlockTokens <= first_needed) {
          ctx.store->DropBlock(seq, stream_, 0);
        }
      }
    }
  }

  Linear(ctx.pool, o_.data(), rows, q_width_, w_o_.data(), hidden_,
         b_o_.empty() ? nullptr : b_o_.data(), out);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuLayer>> CreateAttentionLayer(const CpuLayerArgs& args) {
  if (args.config == nullptr || args.layout == nullptr || args.checkpoint == nullptr) {
    return absl::InvalidArgumentError("attention layer: missing config, layout or checkpoint");
  }
  if (args.layer < 0 || args.layer >= static_cast<int>(args.config->layers.size())) {
    return absl::InvalidArgumentError(absl::StrCat("attention layer: no layer ", args.layer));
  }
  const LayerConfig& lc = args.config->layers[args.layer];
  const std::string where = absl::StrCat("layer ", args.layer, " (", args.prefix, ")");
  if (lc.kind != LayerKind::kAttention) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected an attention layer, got ", LayerKindName(lc.kind)));
  }
  const AttentionLayerConfig& a = lc.attention;
  if (a.num_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 ||
      a.num_heads % a.num_kv_heads != 0 || a.rotary_dim < 0 || a.rotary_dim > a.head_dim ||
      a.rotary_dim % 2 != 0 || a.window_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": invalid attention shape (heads ", a.num_heads, ", kv heads ", a.num_kv_heads,
        ", head_dim ", a.head_dim, ", rotary_dim ", a.rotary_dim, ", window ", a.window_size, ")"));
  }
  const int stream = args.layout->first_stream(args.layer);
  if (stream < 0) {
    return absl::InternalError(absl::StrCat(where, ": the state layout has no KV stream"));
  }
  const KvStream& ks = args.layout->streams()[stream];
  if (ks.heads != a.num_kv_heads || ks.key_dim != a.head_dim || ks.value_dim != a.head_dim ||
      ks.window != a.window_size) {
    return absl::InternalError(absl::StrCat(where, ": KV stream shape does not match the layer"));
  }
  if (args.layout->kv_dtype() != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(where,
                                                   ": the CPU backend keeps KV in F32, layout has ",
                                                   DTypeName(args.layout->kv_dtype())));
  }
  auto layer = std::make_unique<AttentionLayer>(a, args.config->hidden_size, stream);
  HYLA_RETURN_IF_ERROR(layer->Load(args));
  return std::unique_ptr<CpuLayer>(std::move(layer));
}

}  // namespace hyla::cpu
