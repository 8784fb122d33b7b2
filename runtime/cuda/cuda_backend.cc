#include "runtime/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "runtime/base/check.h"
#include "runtime/base/status_macros.h"

namespace hyla::cuda {
namespace {

DType KvDType(Precision p) { return p == Precision::kF32 ? DType::kF32 : DType::kBF16; }

// Rows of logits computed per LM-head GEMM (bounds the logits scratch; more rows are done in
// pieces).
int64_t LogitsRowsPerPiece(const CudaBackendOptions& o) {
  return std::max<int64_t>(256, o.max_step_seqs);
}

// The widest per-row activation a mixer projects to (floats): its projections plus outputs,
// bounded generously over the kinds.
int64_t WidestMixerRow(const ModelConfig& c) {
  int64_t widest = 12 * int64_t{c.hidden_size};
  for (const LayerConfig& l : c.layers) {
    if (l.kind == LayerKind::kAttention) {
      const AttentionLayerConfig& a = l.attention;
      widest = std::max<int64_t>(widest, 2 * (a.num_heads + a.num_kv_heads) * a.head_dim);
    } else if (l.kind == LayerKind::kGdn || l.kind == LayerKind::kNatsl) {
      const GdnLayerConfig& g = l.kind == LayerKind::kGdn ? l.gdn : l.natsl.gdn;
      widest = std::max<int64_t>(widest, 4 * (g.key_dim() + g.value_dim()));
    }
  }
  return widest;
}

// Step scratch plan: activations of max_step_tokens rows, the LM head pieces, the mixers'
// projections and the chunked-GDN workspace, plus a margin.
int64_t PlannedScratchBytes(const ModelConfig& c, const CudaBackendOptions& o) {
  const int64_t rows = std::max<int64_t>(1, o.max_step_tokens);
  const int64_t d = c.hidden_size;
  const int64_t inter = c.intermediate_size;
  int64_t bytes = 0;
  bytes += rows * sizeof(float) * (3 * d + 3 * inter);        // h, xn, mix, gate|up, act
  bytes += 2 * rows * sizeof(uint16_t) * std::max(d, inter);  // bf16 GEMM inputs
  bytes += rows * sizeof(float) * 2 * WidestMixerRow(c);      // a mixer's projections and outputs
  bytes += LogitsRowsPerPiece(o) * sizeof(float) * (c.vocab_size + d);
  int64_t gdn_ws = 0;
  for (const LayerConfig& l : c.layers) {
    if (l.kind == LayerKind::kGdn || l.kind == LayerKind::kNatsl) {
      const GdnLayerConfig& g = l.kind == LayerKind::kGdn ? l.gdn : l.natsl.gdn;
      const int pieces = static_cast<int>(rows / kBlockTokens + 2 * o.max_step_seqs);
      gdn_ws = std::max<int64_t>(gdn_ws, static_cast<int64_t>(kernels::GdnPrefillWorkspaceBytes(
                                             pieces, g.num_v_heads, g.head_k_dim, g.head_v_dim)));
    }
  }
  bytes += gdn_ws;
  bytes += int64_t{64} << 20;  // step metadata, block tables, small per-layer buffers
  bytes += o.extra_scratch_bytes;
  return bytes;
}

// The context decode-graph tables cover (CudaBackendOptions::max_context); 0 without graphs.
int64_t GraphMaxContext(const CudaBackendOptions& o) {
  if (!o.cuda_graphs) return 0;
  if (o.max_context > 0) return o.max_context;
  if (o.store.max_kv_tokens_per_stream > 0) return o.store.max_kv_tokens_per_stream;
  return 131072;
}

// Device bytes of the attention layers' decode-graph tables (an upper bound: window layers
// need fewer entries).
int64_t DecodeTableBytes(const ModelConfig& c, const CudaBackendOptions& o) {
  const int64_t ctx = GraphMaxContext(o);
  if (ctx == 0) return 0;
  int64_t layers = 0;
  for (const LayerConfig& l : c.layers) layers += l.kind == LayerKind::kAttention ? 1 : 0;
  const int64_t width = (ctx + kBlockTokens - 1) / kBlockTokens + 1;
  return layers * int64_t{o.max_step_seqs} * (2 * width + 2) * int64_t{sizeof(int32_t)};
}

}  // namespace

int64_t CudaBackendStateBytes(const ModelConfig& config, const CudaBackendOptions& options) {
  absl::StatusOr<StateLayout> layout = StateLayout::Create(config, KvDType(options.precision));
  if (!layout.ok()) return 0;
  return options.store.num_slots * layout->slot_bytes() +
         options.store.num_blocks * layout->block_bytes() + PlannedScratchBytes(config, options) +
         DecodeTableBytes(config, options);
}

CudaBackend::CudaBackend(const ModelConfig& config, StateLayout layout,
                         const CudaBackendOptions& options)
    : config_(config), layout_(std::move(layout)), options_(options) {}

CudaBackend::~CudaBackend() {
  if (dev_ != nullptr) (void)dev_->Synchronize();
  // Layers and weights free their device memory before the context goes (member order below
  // would destroy dev_ last anyway; be explicit).
  blocks_.clear();
  weights_.reset();
  slot_pool_.Reset();
  block_pool_.Reset();
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(
    std::unique_ptr<Checkpoint> checkpoint, const CudaBackendOptions& options) {
  if (checkpoint == nullptr) return absl::InvalidArgumentError("CudaBackend: no checkpoint");
  if (options.max_step_tokens < 1 || options.max_step_seqs < 1) {
    return absl::InvalidArgumentError(
        "CudaBackend: max_step_tokens and max_step_seqs must be at least 1");
  }
  HYLA_ASSIGN_OR_RETURN(StateLayout layout,
                        StateLayout::Create(checkpoint->config(), KvDType(options.precision)));
  std::unique_ptr<CudaBackend> backend(
      new CudaBackend(checkpoint->config(), std::move(layout), options));
  HYLA_RETURN_IF_ERROR(backend->Load(std::move(checkpoint)));
  HYLA_RETURN_IF_ERROR(backend->Warmup());
  return backend;
}

absl::Status CudaBackend::Load(std::unique_ptr<Checkpoint> checkpoint) {
  const ModelConfig& cfg = config_;
  const int64_t d = cfg.hidden_size;
  const int64_t inter = cfg.intermediate_size;
  HYLA_ASSIGN_OR_RETURN(
      dev_, DeviceContext::Create(options_.device,
                                  static_cast<size_t>(PlannedScratchBytes(cfg, options_))));
  dev_->set_skinny_gemm(options_.skinny_gemm);
  {
    const char* env = std::getenv("HYLA_GEMM_TUNE");
    const bool env_off = env != nullptr && std::strcmp(env, "0") == 0;
    dev_->set_gemm_tune(options_.gemm_tune && options_.precision == Precision::kBf16 && !env_off);
    const char* pdl = std::getenv("HYLA_PDL");
    kernels::SetProgrammaticDependentLaunch(options_.programmatic_launch &&
                                            !(pdl != nullptr && std::strcmp(pdl, "0") == 0));
  }
  weights_ = std::make_unique<DeviceWeights>(dev_.get(), options_.precision);
  const ResidualBlockNames names = ResidualBlockNamesFor(cfg.family);
  Checkpoint* ck = checkpoint.get();

  {
    HYLA_ASSIGN_OR_RETURN(F32Tensor embed, ck->TakeF32(names.embed, {cfg.vocab_size, d}));
    HYLA_ASSIGN_OR_RETURN(DeviceMatrix m, weights_->Matrix(embed, names.embed));
    embed_ = m.data;
    if (cfg.tie_word_embeddings) {
      lm_head_ = m;
      if (ck->Has("lm_head.weight")) {
        HYLA_ASSIGN_OR_RETURN(F32Tensor unused, ck->TakeF32("lm_head.weight", {cfg.vocab_size, d}));
        (void)unused;
      }
    }
  }
  if (!cfg.tie_word_embeddings) {
    HYLA_ASSIGN_OR_RETURN(F32Tensor head, ck->TakeF32("lm_head.weight", {cfg.vocab_size, d}));
    HYLA_ASSIGN_OR_RETURN(lm_head_, weights_->Matrix(head, "lm_head.weight"));
  }
  {
    HYLA_ASSIGN_OR_RETURN(F32Tensor norm, ck->TakeF32("model.norm.weight", {d}));
    HYLA_ASSIGN_OR_RETURN(final_norm_, weights_->F32(norm, "model.norm.weight"));
  }

  blocks_.resize(cfg.layers.size());
  for (size_t i = 0; i < cfg.layers.size(); ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    Block& b = blocks_[i];
    {
      const std::string n = absl::StrCat(p, names.mixer_norm, ".weight");
      HYLA_ASSIGN_OR_RETURN(F32Tensor t, ck->TakeF32(n, {d}));
      HYLA_ASSIGN_OR_RETURN(b.mixer_norm, weights_->F32(t, n));
    }
    {
      const std::string n = absl::StrCat(p, names.mlp_norm, ".weight");
      HYLA_ASSIGN_OR_RETURN(F32Tensor t, ck->TakeF32(n, {d}));
      HYLA_ASSIGN_OR_RETURN(b.mlp_norm, weights_->F32(t, n));
    }
    {
      HYLA_ASSIGN_OR_RETURN(F32Tensor gate,
                            ck->TakeF32(absl::StrCat(p, "mlp.gate_proj.weight"), {inter, d}));
      HYLA_ASSIGN_OR_RETURN(F32Tensor up,
                            ck->TakeF32(absl::StrCat(p, "mlp.up_proj.weight"), {inter, d}));
      std::vector<float> fused(static_cast<size_t>(2 * inter * d));
      std::memcpy(fused.data(), gate.data(), sizeof(float) * inter * d);
      std::memcpy(fused.data() + inter * d, up.data(), sizeof(float) * inter * d);
      const F32Tensor t = F32Tensor::View(fused.data(), {2 * inter, d});
      HYLA_ASSIGN_OR_RETURN(b.w_gate_up, weights_->Matrix(t, absl::StrCat(p, "mlp.gate|up")));
    }
    {
      HYLA_ASSIGN_OR_RETURN(F32Tensor down,
                            ck->TakeF32(absl::StrCat(p, "mlp.down_proj.weight"), {d, inter}));
      HYLA_ASSIGN_OR_RETURN(b.w_down, weights_->Matrix(down, absl::StrCat(p, "mlp.down_proj")));
    }
    CudaLayerArgs args;
    args.config = &cfg;
    args.layer = static_cast<int>(i);
    args.prefix = absl::StrCat(p, names.mixer, ".");
    args.checkpoint = ck;
    args.layout = &layout_;
    args.dev = dev_.get();
    args.weights = weights_.get();
    args.max_step_seqs = options_.max_step_seqs;
    args.max_context = GraphMaxContext(options_);
    switch (cfg.layers[i].kind) {
      case LayerKind::kGdn: {
        HYLA_ASSIGN_OR_RETURN(b.mixer, CreateCudaGdnLayer(args));
        break;
      }
      case LayerKind::kNatsl: {
        HYLA_ASSIGN_OR_RETURN(b.mixer, CreateCudaNatslLayer(args));
        break;
      }
      case LayerKind::kNha: {
        HYLA_ASSIGN_OR_RETURN(b.mixer, CreateCudaNhaLayer(args));
        break;
      }
      case LayerKind::kAttention: {
        HYLA_ASSIGN_OR_RETURN(b.mixer, CreateCudaAttentionLayer(args));
        break;
      }
    }
  }
  HYLA_RETURN_IF_ERROR(ck->CheckAllTaken());
  checkpoint.reset();  // every weight is on the device now
  // Runs of graph-safe pieces (the embedding and every MLP are graph-safe).
  runs_.clear();
  for (int piece = 0; piece <= 2 * static_cast<int>(blocks_.size()); ++piece) {
    const bool safe =
        piece == 0 || piece % 2 == 0 || blocks_[(piece - 1) / 2].mixer->DecodeGraphSafe();
    if (safe && !runs_.empty() && runs_.back().graph_safe) {
      runs_.back().last = piece;
    } else {
      runs_.push_back(PieceRun{piece, piece, safe});
    }
  }

  HYLA_ASSIGN_OR_RETURN(
      sampler_,
      DeviceSampler::Create(cfg.vocab_size, static_cast<int>(LogitsRowsPerPiece(options_))));
  HYLA_ASSIGN_OR_RETURN(store_, StateStore::Create(layout_, options_.store));
  HYLA_ASSIGN_OR_RETURN(
      slot_pool_,
      DeviceBuffer::Allocate(static_cast<size_t>(store_->num_slots() * layout_.slot_bytes()),
                             "state-slot pool"));
  HYLA_ASSIGN_OR_RETURN(
      block_pool_,
      DeviceBuffer::Allocate(static_cast<size_t>(store_->num_blocks() * layout_.block_bytes()),
                             "KV-block pool"));
  return dev_->Synchronize();
}

absl::Status CudaBackend::Warmup() {
  // CUDA loads kernel modules lazily and cuBLAS picks its algorithms on first use: without this
  // the first request would pay hundreds of milliseconds. A prefill that completes a 64-token
  // chunk (NAtS-L routing), a decode step and a mixed batch touch every path; the sequences are
  // released afterwards, leaving no state behind.
  const int64_t prefill = std::min<int64_t>(kBlockTokens + 6, options_.max_step_tokens - 1);
  if (prefill < 1 || store_->num_slots() < 2) return absl::OkStatus();
  std::vector<int32_t> ids(static_cast<size_t>(prefill));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i % config_.vocab_size);
  std::vector<std::unique_ptr<SequenceState>> seqs;
  absl::Status st = absl::OkStatus();
  for (int i = 0; i < 2 && st.ok(); ++i) {
    absl::StatusOr<std::unique_ptr<SequenceState>> s = store_->NewSequence();
    if (!s.ok()) {
      st = s.status();
      break;
    }
    ResetSlot((*s)->slot);
    seqs.push_back(std::move(*s));
  }
  StepOutput out;
  if (st.ok()) {
    SequenceWork w;
    w.seq = seqs[0].get();
    w.tokens = ids;
    st = Step({w}, &out);
  }
  if (st.ok()) {
    SequenceWork a;
    a.seq = seqs[0].get();
    a.tokens = absl::MakeConstSpan(ids.data(), 1);
    SequenceWork b;
    b.seq = seqs[1].get();
    b.tokens = absl::MakeConstSpan(ids.data(), std::min<size_t>(3, ids.size()));
    st = Step({a}, &out);
    // A decode batch's graphs are captured at its second step (RunSegment): capture batch 1's.
    if (st.ok()) st = Step({a}, &out);
    if (st.ok() && options_.max_step_seqs >= 2) st = Step({a, b}, &out);
  }
  for (std::unique_ptr<SequenceState>& s : seqs) store_->Release(std::move(s));
  if (!st.ok()) {
    return absl::Status(st.code(), absl::StrCat("CUDA backend warm-up: ", st.message()));
  }
  return dev_->Synchronize();
}

absl::Status CudaBackend::RunSegment(std::vector<GraphSegment>* graphs, size_t index,
                                     bool capturable, size_t mark,
                                     const std::function<absl::Status()>& fn) {
  if (graphs == nullptr || !capturable) return fn();
  GraphSegment& seg = (*graphs)[index];
  if (seg.exec.valid()) {
    ++graph_replays_;
    return seg.exec.Launch(dev_->stream());
  }
  if (!seg.seen) {
    // First sight: eager, so that GEMM shapes new to the tuner are timed now; captured next time.
    seg.seen = true;
    return fn();
  }
  if (seg.attempted) return fn();  // not capturable: eager
  seg.attempted = true;
  cudaStream_t stream = dev_->stream();
  if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
    (void)cudaGetLastError();
    return fn();
  }
  const absl::Status st = fn();  // enqueued into the graph, not run
  absl::StatusOr<CudaGraphExec> exec = CudaGraphExec::EndCapture(stream);
  if (!st.ok() || !exec.ok()) {
    // Something in the segment cannot be captured (or failed): run it eagerly from the same
    // scratch position; a real error recurs there and is returned.
    (void)cudaGetLastError();
    dev_->scratch().RewindTo(mark);
    return fn();
  }
  seg.exec = std::move(*exec);
  ++graphs_captured_;
  return seg.exec.Launch(stream);
}

int64_t CudaBackend::scratch_high_water() const {
  return static_cast<int64_t>(dev_->scratch().high_water());
}

void CudaBackend::ResetSlot(int32_t slot) {
  HYLA_CHECK(slot >= 0 && slot < store_->num_slots());
  if (layout_.slot_bytes() == 0) return;
  const absl::Status st =
      dev_->Memset(slot_pool_.as<uint8_t>() + static_cast<int64_t>(slot) * layout_.slot_bytes(), 0,
                   static_cast<size_t>(layout_.slot_bytes()));
  HYLA_CHECK_MSG(st.ok(), st.ToString().c_str());
}

void CudaBackend::CopySlot(int32_t src, int32_t dst) {
  HYLA_CHECK(src >= 0 && src < store_->num_slots() && dst >= 0 && dst < store_->num_slots());
  if (src == dst || layout_.slot_bytes() == 0) return;
  uint8_t* base = slot_pool_.as<uint8_t>();
  const absl::Status st =
      dev_->CopyDeviceToDevice(base + static_cast<int64_t>(dst) * layout_.slot_bytes(),
                               base + static_cast<int64_t>(src) * layout_.slot_bytes(),
                               static_cast<size_t>(layout_.slot_bytes()));
  HYLA_CHECK_MSG(st.ok(), st.ToString().c_str());
}

absl::Status CudaBackend::Step(absl::Span<const SequenceWork> batch, StepOutput* out) {
  const ModelConfig& cfg = config_;
  const int64_t d = cfg.hidden_size;
  const int64_t inter = cfg.intermediate_size;
  const int64_t vocab = cfg.vocab_size;

  // Validate everything before touching any state.
  if (static_cast<int64_t>(batch.size()) > options_.max_step_seqs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step of ", batch.size(), " sequences exceeds max_step_seqs ", options_.max_step_seqs));
  }
  HYLA_RETURN_IF_ERROR(ValidateStepBatch(batch, store_->num_slots(), static_cast<int>(vocab)));
  CudaBatch cb;
  cb.seqs.resize(batch.size());
  std::vector<int32_t> ids;
  int64_t rows = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceWork& w = batch[i];
    CudaSeq& s = cb.seqs[i];
    s.seq = w.seq;
    s.start_pos = w.seq->num_tokens;
    s.row_begin = rows;
    s.num_rows = static_cast<int64_t>(w.tokens.size());
    s.slot = w.seq->slot;
    rows += s.num_rows;
    ids.insert(ids.end(), w.tokens.begin(), w.tokens.end());
  }
  if (rows > options_.max_step_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step of ", rows, " tokens exceeds max_step_tokens ", options_.max_step_tokens));
  }

  // Per-step metadata on the device, packed into one upload: start_pos [n] int64, then int32
  // slots [n], cu_seqlens [n + 1], kv_len [n], row_seq [rows], row_pos [rows], ids [rows].
  // Sizes depend only on n and rows, so decode steps of one batch size see the same addresses.
  ScratchArena& scratch = dev_->scratch();
  scratch.Rewind();
  const int n = static_cast<int>(batch.size());
  cb.host_cu_seqlens.assign(n + 1, 0);
  cb.host_start_pos.assign(n, 0);
  cb.host_row_pos.assign(rows, 0);
  cb.total_rows = rows;
  cb.all_decode = true;
  const size_t start_bytes = sizeof(int64_t) * static_cast<size_t>(n);
  const int64_t ints = 3 * int64_t{n} + 1 + 3 * rows;
  meta_.resize(start_bytes + sizeof(int32_t) * static_cast<size_t>(ints));
  int64_t* m_start = reinterpret_cast<int64_t*>(meta_.data());
  int32_t* m_slots = reinterpret_cast<int32_t*>(meta_.data() + start_bytes);
  int32_t* m_cu = m_slots + n;
  int32_t* m_kv_len = m_cu + n + 1;
  int32_t* m_row_seq = m_kv_len + n;
  int32_t* m_row_pos = m_row_seq + rows;
  int32_t* m_ids = m_row_pos + rows;
  m_cu[0] = 0;
  for (int i = 0; i < n; ++i) {
    const CudaSeq& s = cb.seqs[i];
    m_start[i] = s.start_pos;
    m_slots[i] = s.slot;
    m_cu[i + 1] = static_cast<int32_t>(s.row_begin + s.num_rows);
    m_kv_len[i] = static_cast<int32_t>(s.start_pos + s.num_rows);
    cb.host_cu_seqlens[i + 1] = m_cu[i + 1];
    cb.host_start_pos[i] = s.start_pos;
    cb.max_rows = std::max(cb.max_rows, s.num_rows);
    if (s.num_rows != 1) cb.all_decode = false;
    for (int64_t r = 0; r < s.num_rows; ++r) {
      m_row_seq[s.row_begin + r] = i;
      m_row_pos[s.row_begin + r] = static_cast<int32_t>(s.start_pos + r);
      cb.host_row_pos[s.row_begin + r] = m_row_pos[s.row_begin + r];
    }
  }
  std::memcpy(m_ids, ids.data(), sizeof(int32_t) * static_cast<size_t>(rows));
  HYLA_ASSIGN_OR_RETURN(
      uint8_t * d_meta,
      dev_->Upload(meta_.data(), static_cast<int64_t>(meta_.size()), "step batch arrays"));
  cb.start_pos = reinterpret_cast<const int64_t*>(d_meta);
  cb.slots = reinterpret_cast<const int32_t*>(d_meta + start_bytes);
  cb.cu_seqlens = cb.slots + n;
  cb.kv_len = cb.cu_seqlens + n + 1;
  cb.row_seq = cb.kv_len + n;
  cb.row_pos = cb.row_seq + rows;
  const int32_t* d_ids = cb.row_pos + rows;

  CudaContext ctx;
  ctx.dev = dev_.get();
  ctx.store = store_.get();
  ctx.layout = &layout_;
  ctx.slot_pool = slot_pool_.as<uint8_t>();
  ctx.block_pool = block_pool_.as<uint8_t>();
  ctx.batch = &cb;
  RoutingCounts routing;
  ctx.routing = &routing;

  // Decode steps replay per-batch-size CUDA graphs of the runs of graph-safe pieces. Every
  // address a graph uses is the same for every decode step of the same batch size: the arena is
  // rewound each step and allocated in the same order and sizes (the batch arrays above, then
  // the activations), the table updates' upload is rewound before the activations, and each
  // piece rewinds what it allocated.
  std::vector<GraphSegment>* graphs = nullptr;
  if (cb.all_decode && options_.cuda_graphs) {
    bool prepared = true;
    for (const Block& b : blocks_) {
      if (b.mixer->DecodeGraphSafe() && !b.mixer->CanPrepareDecode(ctx)) prepared = false;
    }
    auto it = graphs_.find(rows);
    if (prepared && it == graphs_.end() &&
        static_cast<int>(graphs_.size()) < options_.max_graph_batch_sizes) {
      it = graphs_.emplace(rows, std::vector<GraphSegment>(runs_.size())).first;
    }
    if (prepared && it != graphs_.end()) graphs = &it->second;
  }
  if (graphs != nullptr) {
    uploads_.Clear();
    ctx.uploads = &uploads_;
    for (Block& b : blocks_) {
      if (b.mixer->DecodeGraphSafe()) HYLA_RETURN_IF_ERROR(b.mixer->PrepareDecode(ctx));
    }
    ctx.uploads = nullptr;
    const size_t mark = scratch.Mark();
    HYLA_RETURN_IF_ERROR(uploads_.Apply(*dev_));
    scratch.RewindTo(mark);  // the scatter has read the upload before the graphs run
    ctx.graph_decode = true;
  }

  HYLA_ASSIGN_OR_RETURN(float* h, scratch.AllocArray<float>(rows * d, "residual stream"));
  HYLA_ASSIGN_OR_RETURN(float* xn, scratch.AllocArray<float>(rows * d, "normed input"));
  HYLA_ASSIGN_OR_RETURN(float* mix, scratch.AllocArray<float>(rows * d, "mixer output"));
  // bf16 weights: the norms also write their output rounded to bf16 for the GEMMs after them.
  const bool bf16 = options_.precision == Precision::kBf16;
  uint16_t* xb = nullptr;
  if (bf16) {
    HYLA_ASSIGN_OR_RETURN(
        xb, scratch.AllocArray<uint16_t>(rows * std::max(d, inter), "bf16 block input"));
  }
  ctx.x_bf16 = xb;
  void* stream = dev_->kernel_stream();
  const bool gemma = cfg.norm_kind == NormKind::kGemma;
  const float eps = static_cast<float>(cfg.norm_eps);
  const int last_piece = 2 * static_cast<int>(blocks_.size());
  // h += the previous piece's output (from piece 2 on: the residual add is fused into the next
  // norm), then the norm of h into out_f32 and/or xb.
  auto add_norm = [&](int p, const float* w, float* out_f32) -> absl::Status {
    kernels::ResidualRmsNormParams np;
    np.rows = rows;
    np.n = d;
    np.h = h;
    np.add = p >= 2 ? mix : nullptr;
    np.weight = w;
    np.eps = eps;
    np.gemma = gemma;
    np.out_f32 = out_f32;
    np.out_bf16 = xb;
    HYLA_KERNEL_RETURN_IF_ERROR(kernels::ResidualRmsNorm(np, stream), "residual + norm");
    return absl::OkStatus();
  };
  // Piece p of the step (see PieceRun).
  auto run_piece = [&](int p) -> absl::Status {
    if (p == 0) {
      HYLA_KERNEL_RETURN_IF_ERROR(kernels::EmbeddingGather(embed_,
                                                           options_.precision == Precision::kF32
                                                               ? kernels::KernelDType::kF32
                                                               : kernels::KernelDType::kBf16,
                                                           vocab, d, d_ids, rows, h, stream),
                                  "embedding");
      return absl::OkStatus();
    }
    Block& b = blocks_[static_cast<size_t>((p - 1) / 2)];
    if (p % 2 == 1) {
      HYLA_RETURN_IF_ERROR(add_norm(p, b.mixer_norm, xn));
      return b.mixer->Forward(ctx, xn, mix);
    }
    HYLA_RETURN_IF_ERROR(add_norm(p, b.mlp_norm, bf16 ? nullptr : xn));
    HYLA_ASSIGN_OR_RETURN(float* gu, scratch.AllocArray<float>(rows * 2 * inter, "mlp gate|up"));
    HYLA_RETURN_IF_ERROR(Linear(*dev_, bf16 ? nullptr : xn, xb, rows, b.w_gate_up, nullptr, gu));
    if (bf16) {
      HYLA_KERNEL_RETURN_IF_ERROR(kernels::SiluMulToBf16(gu, rows, inter, xb, stream), "SwiGLU");
      HYLA_RETURN_IF_ERROR(Linear(*dev_, nullptr, xb, rows, b.w_down, nullptr, mix));
    } else {
      HYLA_ASSIGN_OR_RETURN(float* act, scratch.AllocArray<float>(rows * inter, "mlp activation"));
      HYLA_KERNEL_RETURN_IF_ERROR(kernels::SiluMulF32(gu, 2 * inter, gu + inter, 2 * inter, rows,
                                                      inter, act, inter, stream),
                                  "SwiGLU");
      HYLA_RETURN_IF_ERROR(Linear(*dev_, act, rows, b.w_down, nullptr, mix));
    }
    if (p == last_piece) {
      HYLA_KERNEL_RETURN_IF_ERROR(kernels::AddInPlaceF32(h, mix, rows * d, stream), "residual");
    }
    return absl::OkStatus();
  };
  for (size_t ri = 0; ri < runs_.size(); ++ri) {
    const PieceRun& run = runs_[ri];
    const size_t mark = scratch.Mark();
    HYLA_RETURN_IF_ERROR(RunSegment(graphs, ri, run.graph_safe, mark, [&]() -> absl::Status {
      for (int p = run.first; p <= run.last; ++p) {
        const size_t piece_mark = scratch.Mark();
        HYLA_RETURN_IF_ERROR(run_piece(p));
        scratch.RewindTo(piece_mark);
      }
      return absl::OkStatus();
    }));
    scratch.RewindTo(mark);
  }
  if (ctx.graph_decode) {
    for (Block& b : blocks_) {
      if (b.mixer->DecodeGraphSafe()) b.mixer->FinishDecode(ctx);
    }
  }

  // LM head over the rows asked for, in pieces of at most LogitsRowsPerPiece rows: first the rows
  // whose logits go back to the host, then the rows sampled here (SequenceWork::sampler).
  out->row_offset.assign(batch.size(), 0);
  out->row_count.assign(batch.size(), 0);
  out->sampled.clear();
  std::vector<int32_t> head_rows;    // rows whose logits are returned
  std::vector<int32_t> sample_rows;  // last rows sampled on the device
  std::vector<size_t> sample_items;  // their batch items
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceWork& w = batch[i];
    const int32_t last = static_cast<int32_t>(cb.seqs[i].row_begin + cb.seqs[i].num_rows - 1);
    if (w.logits == LogitsMode::kLast && w.sampler != nullptr && options_.device_sampling) {
      sample_rows.push_back(last);
      sample_items.push_back(i);
      continue;
    }
    const int64_t nr = w.logits == LogitsMode::kAll    ? cb.seqs[i].num_rows
                       : w.logits == LogitsMode::kLast ? 1
                                                       : 0;
    out->row_offset[i] = static_cast<int64_t>(head_rows.size());
    out->row_count[i] = nr;
    const int64_t first = cb.seqs[i].row_begin + cb.seqs[i].num_rows - nr;
    for (int64_t r = 0; r < nr; ++r) head_rows.push_back(static_cast<int32_t>(first + r));
  }
  const int64_t out_rows = static_cast<int64_t>(head_rows.size());
  out->logits.resize(static_cast<size_t>(out_rows * vocab));
  const int64_t piece = LogitsRowsPerPiece(options_);
  if (out_rows > 0 || !sample_rows.empty()) {
    HYLA_ASSIGN_OR_RETURN(float* head_in, scratch.AllocArray<float>(piece * d, "LM-head input"));
    HYLA_ASSIGN_OR_RETURN(float* logits, scratch.AllocArray<float>(piece * vocab, "logits"));
    // Logits of rows[r0, r0 + nr) into `logits`.
    auto head = [&](const int32_t* d_rows, int64_t nr) -> absl::Status {
      HYLA_KERNEL_RETURN_IF_ERROR(kernels::GatherRowsF32(h, d, d_rows, nr, d, head_in, stream),
                                  "gather rows");
      HYLA_KERNEL_RETURN_IF_ERROR(
          kernels::RmsNormF32(head_in, d, final_norm_, eps, nr, d, gemma, head_in, d, stream),
          "final norm");
      return Linear(*dev_, head_in, nr, lm_head_, nullptr, logits);
    };
    if (out_rows > 0) {
      HYLA_ASSIGN_OR_RETURN(const int32_t* d_head_rows,
                            dev_->Upload(head_rows.data(), out_rows, "LM-head rows"));
      for (int64_t r0 = 0; r0 < out_rows; r0 += piece) {
        const int64_t nr = std::min(piece, out_rows - r0);
        HYLA_RETURN_IF_ERROR(head(d_head_rows + r0, nr));
        HYLA_RETURN_IF_ERROR(dev_->CopyToHost(out->logits.data() + r0 * vocab, logits,
                                              sizeof(float) * static_cast<size_t>(nr * vocab)));
      }
    }
    if (!sample_rows.empty()) {
      const int64_t ns = static_cast<int64_t>(sample_rows.size());
      HYLA_ASSIGN_OR_RETURN(const int32_t* d_sample_rows,
                            dev_->Upload(sample_rows.data(), ns, "sampled rows"));
      out->sampled.assign(batch.size(), BackendSample());
      std::vector<DeviceSampleRow> rows;
      std::vector<DeviceSampleResult> results;
      for (int64_t r0 = 0; r0 < ns; r0 += piece) {
        const int64_t nr = std::min(piece, ns - r0);
        HYLA_RETURN_IF_ERROR(head(d_sample_rows + r0, nr));
        rows.assign(static_cast<size_t>(nr), DeviceSampleRow());
        for (int64_t r = 0; r < nr; ++r) {
          const SequenceWork& w = batch[sample_items[static_cast<size_t>(r0 + r)]];
          rows[static_cast<size_t>(r)].state = w.sampler;
          rows[static_cast<size_t>(r)].suppressed = w.suppressed;
          rows[static_cast<size_t>(r)].num_top = w.num_top;
        }
        HYLA_RETURN_IF_ERROR(sampler_->Sample(*dev_, logits, vocab, rows, &results));
        for (int64_t r = 0; r < nr; ++r) {
          BackendSample& s = out->sampled[sample_items[static_cast<size_t>(r0 + r)]];
          s.valid = true;
          s.token = results[static_cast<size_t>(r)].token;
          s.top = std::move(results[static_cast<size_t>(r)].top);
        }
      }
    }
  }
  HYLA_RETURN_IF_ERROR(dev_->Synchronize());
  out->routing = routing;
  for (size_t i = 0; i < batch.size(); ++i) batch[i].seq->num_tokens += cb.seqs[i].num_rows;
  return absl::OkStatus();
}

}  // namespace hyla::cuda
