// CPU reference of the NHA token mixer (JusenD/NHA nha_fla/layers/nha.py, from-scratch model;
// reference/models.md §2.2), as an exact per-token recurrence that serves prefill and decode
// alike.
//
// Per token at position p, per KV head (state shared by its query group):
//   q, k, v, f = x W_qᵀ, x W_kᵀ, x W_vᵀ, x W_fᵀ   (optionally through SiLU short convs)
//   v ← SiLU(v);  f ← logsigmoid(f) / gate_logit_normalizer            [M]
//   slots consume token j = p − kv_shift (no-op while j < 0), "state updated before readout":
//     H_K ← H_K · diag(α_j) + swish(k_j) s_jᵀ     H_V ← diag(α_j) · H_V + s_j v_jᵀ
//     with s_j = 1 − exp(f_j) and α_j = exp(c · f_j), see kDecayLogScale below
//   logits: slot m: scale · swish(q)ᵀ H_K[:, m];  window keys i ∈ [max(0, p−W), p] (W+1 keys,
//     flash-attn window_size_left = W): scale · RoPE(q, p)ᵀ RoPE(k_i, i)
//   one softmax over [slots ; window];  o = Σ_m p_m H_V[m] + Σ_i p_i v_i
//   out = o_proj(RMSNorm_1e-5(SiLU(o)) · g_norm)
//
// State (StateLayout kind kNha): "H_K" [Hkv, dk, M] fp32, "H_V" [Hkv, M, dv] fp32, "ring"
// [R = max(W, kv_shift)][Hkv][dk + dv + M] fp32 holding, for the last R tokens, the pre-RoPE,
// pre-feature-map k, the post-SiLU v and the log-gate f (entry = position mod R), and "conv"
// (q tail [K−1, H·dk], k tail [K−1, Hkv·dk], v tail [K−1, Hkv·dv]) with short convs.
//
// Every token runs the same arithmetic in the same order whatever the chunking or batching, so
// results are bitwise independent of how a sequence is split into steps.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/base/check.h"
#include "runtime/base/status_macros.h"
#include "runtime/cpu/cpu_layer.h"
#include "runtime/cpu/gdn_core.h"
#include "runtime/cpu/ops.h"

namespace hyla::cpu {
namespace {

// The slot decay is α = exp(kDecayLogScale · f). The reference (nha_fla/ops/nha/chunk.py @
// a9256a72) hands natural-log gates to fla's GSA chunk kernels through chunk_local_cumsum(g)
// without fla's RCP_LN2 pre-scaling, and since fla 0d0a2f9a ("Switch chunk paths to exp2", #867,
// first released in v0.5.1; the fixtures use bc3b101d) those kernels evaluate exp2. So the decay
// the reference applies is 2^f = exp(ln2 · f), while the write strength s = 1 − e^f is computed
// in PyTorch with the natural exponent. With fla before #867 the decay was e^f (scale 1): the
// fixture decides, natural-exp decay misses it by 6e-2.
constexpr float kDecayLogScale = 0.69314718055994530942f;

// One NHA layer's weights and step scratch. Forward parallelises over (sequence, KV head) work
// items; each item touches only its own head's slots, ring entries and output columns.
// Thread-safety: as CpuLayer (one caller at a time; scratch is reused across steps).
class NhaLayer : public CpuLayer {
 public:
  NhaLayer(const NhaLayerConfig& cfg, int layer, int hidden) : c_(cfg), layer_(layer), d_(hidden) {}

  absl::Status Load(const CpuLayerArgs& args);
  absl::Status Forward(const CpuContext& ctx, absl::Span<const CpuSeq> seqs, const float* x,
                       float* out) override;

 private:
  // Widths of the packed projection row [q | k | v | f].
  int64_t q_width() const { return int64_t{c_.num_heads} * c_.head_k_dim; }
  int64_t k_width() const { return int64_t{c_.num_kv_heads} * c_.head_k_dim; }
  int64_t v_width() const { return int64_t{c_.num_kv_heads} * c_.head_v_dim; }
  int64_t f_width() const { return int64_t{c_.num_kv_heads} * c_.num_slots; }
  int64_t proj_width() const { return q_width() + k_width() + v_width() + f_width(); }
  int64_t ring_entry() const { return int64_t{c_.head_k_dim} + c_.head_v_dim + c_.num_slots; }
  int ring_tokens() const { return std::max(c_.window_size, c_.kv_shift); }
  // Floats of per-(sequence, KV head) scratch used by the recurrence.
  int64_t scratch_floats() const {
    return int64_t{c_.head_k_dim} * (c_.window_size + 1)  // RoPE'd window keys
           + c_.num_slots + c_.window_size + 1            // logits
           + 3 * int64_t{c_.head_k_dim}                   // swish(k), swish(q), RoPE(q)
           + c_.head_v_dim + c_.num_slots;                // current v, f
  }

  // Runs the recurrence for rows [row_begin, row_begin + num_rows) of one sequence and one KV
  // head. proj: [rows, proj_width()] packed projections (v, f still raw); o: [rows, H·dv].
  void RunHead(const CpuContext& ctx, const CpuSeq& s, int kv_head, const float* proj, float* o,
               float* scratch) const;

  NhaLayerConfig c_;
  int layer_;
  int64_t d_;
  F32Tensor w_q_;                       // [H·dk, d]
  F32Tensor w_k_;                       // [Hkv·dk, d]
  F32Tensor w_v_;                       // [Hkv·dv, d]
  F32Tensor w_f_;                       // [Hkv·M, d]
  F32Tensor conv_q_, conv_k_, conv_v_;  // [channels, 1, K] each (short conv only)
  F32Tensor g_norm_;                    // [H·dv] (= hidden)
  F32Tensor w_o_;                       // [d, H·dv]
  std::vector<float> inv_freq_;         // [dk/2]
  // Step scratch, reused across steps.
  std::vector<float> proj_;      // [rows, proj_width()]
  std::vector<float> conv_out_;  // [rows, max conv channels]
  std::vector<float> o_;         // [rows, H·dv]
  std::vector<float> scratch_;   // [seqs·Hkv, scratch_floats()]
};

absl::Status NhaLayer::Load(const CpuLayerArgs& args) {
  Checkpoint* ck = args.checkpoint;
  const std::string& p = args.prefix;
  if (args.layout->kv_dtype() != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nha layer ", layer_, ": the CPU backend keeps the window ring in F32, layout has ",
        DTypeName(args.layout->kv_dtype())));
  }
  HYLA_ASSIGN_OR_RETURN(w_q_, ck->TakeF32(p + "q_proj.weight", {q_width(), d_}));
  HYLA_ASSIGN_OR_RETURN(w_k_, ck->TakeF32(p + "k_proj.weight", {k_width(), d_}));
  HYLA_ASSIGN_OR_RETURN(w_v_, ck->TakeF32(p + "v_proj.weight", {v_width(), d_}));
  HYLA_ASSIGN_OR_RETURN(w_f_, ck->TakeF32(p + "f_proj.weight", {f_width(), d_}));
  if (c_.use_short_conv) {
    const int64_t kk = c_.conv_size;
    HYLA_ASSIGN_OR_RETURN(conv_q_, ck->TakeF32(p + "q_conv1d.weight", {q_width(), 1, kk}));
    HYLA_ASSIGN_OR_RETURN(conv_k_, ck->TakeF32(p + "k_conv1d.weight", {k_width(), 1, kk}));
    HYLA_ASSIGN_OR_RETURN(conv_v_, ck->TakeF32(p + "v_conv1d.weight", {v_width(), 1, kk}));
  }
  const int64_t value_dim = int64_t{c_.num_heads} * c_.head_v_dim;
  HYLA_ASSIGN_OR_RETURN(g_norm_, ck->TakeF32(p + "g_norm.weight", {value_dim}));
  HYLA_ASSIGN_OR_RETURN(w_o_, ck->TakeF32(p + "o_proj.weight", {d_, value_dim}));
  inv_freq_.resize(static_cast<size_t>(c_.head_k_dim / 2));
  RopeInvFreq(c_.rope_theta, c_.head_k_dim, inv_freq_.data());
  // The layout must match what this layer addresses.
  const StateLayout& L = *args.layout;
  const struct {
    const char* name;
    int64_t floats;
  } expect[] = {
      {"H_K", int64_t{c_.num_kv_heads} * c_.head_k_dim * c_.num_slots},
      {"H_V", int64_t{c_.num_kv_heads} * c_.num_slots * c_.head_v_dim},
      {"ring", int64_t{ring_tokens()} * c_.num_kv_heads * ring_entry()},
      {"conv",
       c_.use_short_conv ? int64_t{c_.conv_size - 1} * (q_width() + k_width() + v_width()) : 0},
  };
  for (const auto& e : expect) {
    const StateComponent* comp = L.FindComponent(layer_, e.name);
    const int64_t have = comp == nullptr ? 0 : comp->bytes;
    if (have != e.floats * 4) {
      return absl::InternalError(absl::StrCat("nha layer ", layer_, ": state component \"", e.name,
                                              "\" has ", have, " bytes, expected ", e.floats * 4));
    }
  }
  return absl::OkStatus();
}

void NhaLayer::RunHead(const CpuContext& ctx, const CpuSeq& s, int kv_head, const float* proj,
                       float* o, float* scratch) const {
  const int dk = c_.head_k_dim;
  const int dv = c_.head_v_dim;
  const int M = c_.num_slots;
  const int W = c_.window_size;
  const int R = ring_tokens();
  const int G = c_.num_heads / c_.num_kv_heads;
  const int64_t pw = proj_width();
  const int64_t re = ring_entry();
  const float scale = c_.scale;

  float* HK = SlotF32(ctx, s, layer_, "H_K") + int64_t{kv_head} * dk * M;  // [dk, M]
  float* HV = SlotF32(ctx, s, layer_, "H_V") + int64_t{kv_head} * M * dv;  // [M, dv]
  float* ring = R > 0 ? SlotF32(ctx, s, layer_, "ring") : nullptr;         // [R, Hkv, re]
  auto ring_at = [&](int64_t pos) { return ring + ((pos % R) * c_.num_kv_heads + kv_head) * re; };

  float* win_k = scratch;                       // [W+1, dk] RoPE'd keys
  float* logits = win_k + int64_t{W + 1} * dk;  // [M + W + 1]
  float* kf = logits + M + W + 1;               // [dk]
  float* qf = kf + dk;                          // [dk]
  float* qr = qf + dk;                          // [dk]
  float* v_cur = qr + dk;                       // [dv]
  float* f_cur = v_cur + dv;                    // [M]

  for (int64_t r = 0; r < s.num_rows; ++r) {
    const int64_t pos = s.start_pos + r;
    const float* row = proj + (s.row_begin + r) * pw;
    const float* q_all = row;
    // Current token: raw k, then post-SiLU v and log-gate f.
    const float* k_raw = row + q_width() + int64_t{kv_head} * dk;
    const float* v_raw = row + q_width() + k_width() + int64_t{kv_head} * dv;
    const float* f_raw = row + q_width() + k_width() + v_width() + int64_t{kv_head} * M;
    for (int j = 0; j < dv; ++j) v_cur[j] = Silu(v_raw[j]);
    for (int m = 0; m < M; ++m) f_cur[m] = LogSigmoid(f_raw[m]) / c_.gate_logit_normalizer;

    // 1. Slot update with token pos − kv_shift (state updated before readout).
    const float* uk = nullptr;
    const float* uv = nullptr;
    const float* uf = nullptr;
    if (c_.kv_shift == 0) {
      uk = k_raw;
      uv = v_cur;
      uf = f_cur;
    } else if (pos - c_.kv_shift >= 0) {
      const float* e = ring_at(pos - c_.kv_shift);
      uk = e;
      uv = e + dk;
      uf = e + dk + dv;
    }
    if (uk != nullptr) {
      for (int i = 0; i < dk; ++i) kf[i] = Silu(uk[i]);
      for (int m = 0; m < M; ++m) {
        const float a = std::exp(kDecayLogScale * uf[m]);
        const float sm = 1.0f - std::exp(uf[m]);
        for (int i = 0; i < dk; ++i)
          HK[int64_t{i} * M + m] = HK[int64_t{i} * M + m] * a + kf[i] * sm;
        float* hv = HV + int64_t{m} * dv;
        for (int j = 0; j < dv; ++j) hv[j] = hv[j] * a + sm * uv[j];
      }
    }

    // 2. Window keys [first, pos]: the ring holds pos − R .. pos − 1, the current row pos.
    const int64_t first = std::max<int64_t>(0, pos - W);
    const int n_win = static_cast<int>(pos - first + 1);
    for (int w = 0; w < n_win; ++w) {
      const int64_t kpos = first + w;
      const float* src = kpos == pos ? k_raw : ring_at(kpos);
      float* dst = win_k + int64_t{w} * dk;
      std::memcpy(dst, src, sizeof(float) * dk);
      ApplyRope(dst, dk, kpos, inv_freq_.data());
    }

    // 3. Read-out for every query head of the group.
    for (int g = 0; g < G; ++g) {
      const int qh = kv_head * G + g;
      const float* q_raw = q_all + int64_t{qh} * dk;
      for (int i = 0; i < dk; ++i) {
        qf[i] = Silu(q_raw[i]);
        qr[i] = q_raw[i];
      }
      ApplyRope(qr, dk, pos, inv_freq_.data());
      // Slot logits: scale · qfᵀ H_K.
      for (int m = 0; m < M; ++m) logits[m] = 0.0f;
      for (int i = 0; i < dk; ++i) {
        const float qi = qf[i];
        const float* hk = HK + int64_t{i} * M;
        for (int m = 0; m < M; ++m) logits[m] += qi * hk[m];
      }
      for (int m = 0; m < M; ++m) logits[m] *= scale;
      for (int w = 0; w < n_win; ++w) {
        logits[M + w] = scale * Dot(qr, win_k + int64_t{w} * dk, dk);
      }
      Softmax(logits, M + n_win);
      float* out = o + (s.row_begin + r) * (int64_t{c_.num_heads} * dv) + int64_t{qh} * dv;
      for (int j = 0; j < dv; ++j) out[j] = 0.0f;
      for (int m = 0; m < M; ++m) {
        const float pm = logits[m];
        const float* hv = HV + int64_t{m} * dv;
        for (int j = 0; j < dv; ++j) out[j] += pm * hv[j];
      }
      for (int w = 0; w < n_win; ++w) {
        const int64_t kpos = first + w;
        const float* vw = kpos == pos ? v_cur : ring_at(kpos) + dk;
        const float pw_ = logits[M + w];
        for (int j = 0; j < dv; ++j) out[j] += pw_ * vw[j];
      }
    }

    // 4. The current token enters the ring (after every read of the entry it replaces).
    if (R > 0) {
      float* e = ring_at(pos);
      std::memcpy(e, k_raw, sizeof(float) * dk);
      std::memcpy(e + dk, v_cur, sizeof(float) * dv);
      std::memcpy(e + dk + dv, f_cur, sizeof(float) * M);
    }
  }
}

absl::Status NhaLayer::Forward(const CpuContext& ctx, absl::Span<const CpuSeq> seqs, const float* x,
                               float* out) {
  int64_t rows = 0;
  for (const CpuSeq& s : seqs) rows = std::max(rows, s.row_begin + s.num_rows);
  if (rows == 0) return absl::OkStatus();
  const int64_t pw = proj_width();
  const int64_t value_dim = int64_t{c_.num_heads} * c_.head_v_dim;
  proj_.resize(static_cast<size_t>(rows * pw));
  o_.resize(static_cast<size_t>(rows * value_dim));

  // Projections into the packed row [q | k | v | f].
  float* pq = proj_.data();
  float* pk = pq + q_width();
  float* pv = pk + k_width();
  float* pf = pv + v_width();
  LinearStrided(ctx.pool, x, d_, rows, d_, w_q_.data(), q_width(), nullptr, pq, pw);
  LinearStrided(ctx.pool, x, d_, rows, d_, w_k_.data(), k_width(), nullptr, pk, pw);
  LinearStrided(ctx.pool, x, d_, rows, d_, w_v_.data(), v_width(), nullptr, pv, pw);
  LinearStrided(ctx.pool, x, d_, rows, d_, w_f_.data(), f_width(), nullptr, pf, pw);

  if (c_.use_short_conv) {
    const int64_t widest = std::max({q_width(), k_width(), v_width()});
    conv_out_.resize(static_cast<size_t>(rows * widest));
    const int taps = c_.conv_size - 1;
    for (const CpuSeq& s : seqs) {
      float* tail = SlotF32(ctx, s, layer_, "conv");
      struct {
        float* data;
        int64_t width;
        const F32Tensor* weight;
      } parts[] = {{pq, q_width(), &conv_q_}, {pk, k_width(), &conv_k_}, {pv, v_width(), &conv_v_}};
      for (auto& part : parts) {
        float* first_row = part.data + s.row_begin * pw;
        ShortConv(first_row, pw, s.num_rows, part.width, part.weight->data(), c_.conv_size, tail,
                  /*silu=*/true, conv_out_.data(), part.width);
        for (int64_t r = 0; r < s.num_rows; ++r) {
          std::memcpy(first_row + r * pw, conv_out_.data() + r * part.width,
                      sizeof(float) * part.width);
        }
        tail += int64_t{taps} * part.width;
      }
    }
  }

  // The recurrence, one work item per (sequence, KV head).
  const int64_t hkv = c_.num_kv_heads;
  const int64_t items = static_cast<int64_t>(seqs.size()) * hkv;
  const int64_t per_item = scratch_floats();
  scratch_.resize(static_cast<size_t>(items * per_item));
  ctx.pool->ParallelFor(items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const CpuSeq& s = seqs[static_cast<size_t>(it / hkv)];
      RunHead(ctx, s, static_cast<int>(it % hkv), proj_.data(), o_.data(),
              scratch_.data() + it * per_item);
    }
  });

  // Output: o_proj(RMSNorm(SiLU(o))).
  for (int64_t k = 0; k < rows * value_dim; ++k) o_[k] = Silu(o_[k]);
  RmsNormRows(ctx.pool, o_.data(), g_norm_.data(), c_.output_norm_eps, rows, value_dim, o_.data());
  Linear(ctx.pool, o_.data(), rows, value_dim, w_o_.data(), d_, nullptr, out);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuLayer>> CreateNhaLayer(const CpuLayerArgs& args) {
  const LayerConfig& lc = args.config->layers[static_cast<size_t>(args.layer)];
  if (lc.kind != LayerKind::kNha) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", args.layer, " is not an nha layer"));
  }
  const NhaLayerConfig& c = lc.nha;
  if (!c.feature_map_swish || c.use_output_gate || !c.use_norm || c.head_k_dim % 2 != 0 ||
      c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nha layer ", args.layer,
        ": unsupported configuration (needs swish feature map, output norm without gate, even "
        "head_k_dim, num_heads a multiple of num_kv_heads)"));
  }
  auto layer = std::make_unique<NhaLayer>(c, args.layer, args.config->hidden_size);
  HYLA_RETURN_IF_ERROR(layer->Load(args));
  return std::unique_ptr<CpuLayer>(std::move(layer));
}

}  // namespace hyla::cpu
