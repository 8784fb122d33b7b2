#include "runtime/cpu/cpu_backend.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/base/check.h"
#include "runtime/base/status_macros.h"
#include "runtime/cpu/ops.h"

namespace hyla::cpu {
CpuBackend::CpuBackend(std::unique_ptr<Checkpoint> checkpoint, StateLayout layout, int num_threads)
    : checkpoint_(std::move(checkpoint)), layout_(std::move(layout)), pool_(num_threads) {}

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(
    std::unique_ptr<Checkpoint> checkpoint, const CpuBackendOptions& options) {
  if (checkpoint == nullptr) return absl::InvalidArgumentError("CpuBackend: no checkpoint");
  HYLA_ASSIGN_OR_RETURN(StateLayout layout, StateLayout::Create(checkpoint->config(), DType::kF32));
  std::unique_ptr<CpuBackend> backend(
      new CpuBackend(std::move(checkpoint), std::move(layout), std::max(1, options.num_threads)));
  HYLA_RETURN_IF_ERROR(backend->Load(options));
  return backend;
}

absl::Status CpuBackend::Load(const CpuBackendOptions& options) {
  const ModelConfig& cfg = checkpoint_->config();
  const int64_t d = cfg.hidden_size;
  const int64_t inter = cfg.intermediate_size;
  const ResidualBlockNames names = ResidualBlockNamesFor(cfg.family);
  Checkpoint* ck = checkpoint_.get();

  HYLA_ASSIGN_OR_RETURN(embed_, ck->TakeF32(names.embed, {cfg.vocab_size, d}));
  HYLA_ASSIGN_OR_RETURN(final_norm_, ck->TakeF32("model.norm.weight", {d}));
  if (cfg.tie_word_embeddings) {
    lm_head_ = F32Tensor::View(embed_.data(), embed_.shape());
    if (ck->Has("lm_head.weight")) {
      // transformers may still save the tied copy; accept it when it has the right shape.
      HYLA_ASSIGN_OR_RETURN(F32Tensor unused, ck->TakeF32("lm_head.weight", {cfg.vocab_size, d}));
      (void)unused;
    }
  } else {
    HYLA_ASSIGN_OR_RETURN(lm_head_, ck->TakeF32("lm_head.weight", {cfg.vocab_size, d}));
  }

  blocks_.resize(cfg.layers.size());
  for (size_t i = 0; i < cfg.layers.size(); ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    Block& b = blocks_[i];
    HYLA_ASSIGN_OR_RETURN(b.mixer_norm,
                          ck->TakeF32(absl::StrCat(p, names.mixer_norm, ".weight"), {d}));
    HYLA_ASSIGN_OR_RETURN(b.mlp_norm, ck->TakeF32(absl::StrCat(p, names.mlp_norm, ".weight"), {d}));
    HYLA_ASSIGN_OR_RETURN(b.w_gate,
                          ck->TakeF32(absl::StrCat(p, "mlp.gate_proj.weight"), {inter, d}));
    HYLA_ASSIGN_OR_RETURN(b.w_up, ck->TakeF32(absl::StrCat(p, "mlp.up_proj.weight"), {inter, d}));
    HYLA_ASSIGN_OR_RETURN(b.w_down,
                          ck->TakeF32(absl::StrCat(p, "mlp.down_proj.weight"), {d, inter}));
    CpuLayerArgs args;
    args.config = &cfg;
    args.layer = static_cast<int>(i);
    args.prefix = absl::StrCat(p, names.mixer, ".");
    args.checkpoint = ck;
    args.layout = &layout_;
    switch (cfg.layers[i].kind) {
      case LayerKind::kGdn: {
        HYLA_ASSIGN_OR_RETURN(b.mixer, CreateGdnLayer(args));
        break;
      }
      case LayerKind::kNatsl: {
        HYLA_ASSIGN_OR_RETURN(b.mixer, CreateNatslLayer(args));
        break;
      }
      case LayerKind::kNha: {
        HYLA_ASSIGN_OR_RETURN(b.mixer, CreateNhaLayer(args));
        break;
      }
      case LayerKind::kAttention: {
        HYLA_ASSIGN_OR_RETURN(b.mixer, CreateAttentionLayer(args));
        break;
      }
    }
  }
  HYLA_RETURN_IF_ERROR(ck->CheckAllTaken());

  HYLA_ASSIGN_OR_RETURN(store_, StateStore::Create(layout_, options.store));
  slot_memory_.assign(static_cast<size_t>(store_->num_slots() * layout_.slot_bytes()), 0);
  block_memory_.assign(static_cast<size_t>(store_->num_blocks() * layout_.block_bytes()), 0);
  return absl::OkStatus();
}

void CpuBackend::ResetSlot(int32_t slot) {
  HYLA_CHECK(slot >= 0 && slot < store_->num_slots());
  if (layout_.slot_bytes() == 0) return;  // pure-attention models carry no fixed state
  std::memset(slot_memory_.data() + slot * layout_.slot_bytes(), 0, layout_.slot_bytes());
}

void CpuBackend::CopySlot(int32_t src, int32_t dst) {
  HYLA_CHECK(src >= 0 && src < store_->num_slots() && dst >= 0 && dst < store_->num_slots());
  if (src == dst || layout_.slot_bytes() == 0) return;
  std::memcpy(slot_memory_.data() + dst * layout_.slot_bytes(),
              slot_memory_.data() + src * layout_.slot_bytes(), layout_.slot_bytes());
}

absl::Status CpuBackend::Step(absl::Span<const SequenceWork> batch, StepOutput* out) {
  const ModelConfig& cfg = checkpoint_->config();
  const int64_t d = cfg.hidden_size;
  const int64_t vocab = cfg.vocab_size;

  // Validate everything before touching any state.
  HYLA_RETURN_IF_ERROR(ValidateStepBatch(batch, store_->num_slots(), static_cast<int>(vocab)));
  std::vector<CpuSeq> seqs(batch.size());
  int64_t rows = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceWork& w = batch[i];
    seqs[i].seq = w.seq;
    seqs[i].start_pos = w.seq->num_tokens;
    seqs[i].row_begin = rows;
    seqs[i].num_rows = static_cast<int64_t>(w.tokens.size());
    seqs[i].slot = slot_memory_.data() + w.seq->slot * layout_.slot_bytes();
    rows += seqs[i].num_rows;
  }

  h_.resize(static_cast<size_t>(rows * d));
  xn_.resize(h_.size());
  mix_.resize(h_.size());
  mlp_scratch_.resize(static_cast<size_t>(rows * 2 * cfg.intermediate_size));
  for (size_t i = 0; i < batch.size(); ++i) {
    for (int64_t r = 0; r < seqs[i].num_rows; ++r) {
      std::memcpy(&h_[(seqs[i].row_begin + r) * d], embed_.data() + batch[i].tokens[r] * d,
                  sizeof(float) * d);
    }
  }

  CpuContext ctx;
  ctx.pool = &pool_;
  ctx.store = store_.get();
  ctx.layout = &layout_;
  ctx.block_memory = block_memory_.data();
  RoutingCounts routing;
  ctx.routing = &routing;
  const bool gemma = cfg.norm_kind == NormKind::kGemma;

  for (Block& b : blocks_) {
    RmsNormRows(&pool_, h_.data(), b.mixer_norm.data(), cfg.norm_eps, rows, d, xn_.data(), gemma);
    HYLA_RETURN_IF_ERROR(b.mixer->Forward(ctx, seqs, xn_.data(), mix_.data()));
    for (int64_t k = 0; k < rows * d; ++k) h_[k] += mix_[k];
    RmsNormRows(&pool_, h_.data(), b.mlp_norm.data(), cfg.norm_eps, rows, d, xn_.data(), gemma);
    SwiGluMlp(&pool_, xn_.data(), rows, d, cfg.intermediate_size, b.w_gate.data(), b.w_up.data(),
              b.w_down.data(), mlp_scratch_.data(), mix_.data());
    for (int64_t k = 0; k < rows * d; ++k) h_[k] += mix_[k];
  }

  // LM head over the rows asked for.
  out->row_offset.assign(batch.size(), 0);
  out->row_count.assign(batch.size(), 0);
  int64_t out_rows = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    out->row_offset[i] = out_rows;
    const int64_t n = batch[i].logits == LogitsMode::kAll    ? seqs[i].num_rows
                      : batch[i].logits == LogitsMode::kLast ? 1
                                                             : 0;
    out->row_count[i] = n;
    out_rows += n;
  }
  head_in_.resize(static_cast<size_t>(out_rows * d));
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t n = out->row_count[i];
    const int64_t first = seqs[i].row_begin + seqs[i].num_rows - n;
    for (int64_t r = 0; r < n; ++r) {
      RmsNorm(&h_[(first + r) * d], final_norm_.data(), cfg.norm_eps, d,
              &head_in_[(out->row_offset[i] + r) * d], gemma);
    }
  }
  out->logits.resize(static_cast<size_t>(out_rows * vocab));
  Linear(&pool_, head_in_.data(), out_rows, d, lm_head_.data(), vocab, nullptr, out->logits.data());
  out->routing = routing;
  for (size_t i = 0; i < batch.size(); ++i) batch[i].seq->num_tokens += seqs[i].num_rows;
  return absl::OkStatus();
}

}  // namespace hyla::cpu
