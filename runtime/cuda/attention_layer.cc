// The CUDA softmax attention layer (Llama; the `attn` layers of fla / Qwen3-Next-style hybrids).
// Reference: runtime/cpu/attention_layer.cc, op for op:
//   q, k, v = x·Wqᵀ (+bq), x·Wkᵀ (+bk), x·Wvᵀ (+bv)      Linear (three GEMMs, as the CPU)
//   q, k    = RMSNorm per head (qk_norm)                  RmsNormF32 over rows·heads rows of hd
//   q, k    = rotate-half RoPE on the first rotary_dim    Rope (inv_freq: AttentionRopeInvFreq)
//   K, V    → the sequence's KV blocks of this stream     KvAppend (layout.kv_dtype())
//   o       = causal softmax attention (GQA, window)      PagedAttentionDecode for the leading
//                                                         one-row sequences of the batch (the
//                                                         scheduler puts decodes first),
//                                                         PagedAttentionPrefill for the rest
//   out     = o·Woᵀ (+bo)                                  Linear
//
// KV blocks. The CPU layer walks each sequence's new rows chunk by chunk in rounds: allocate the
// chunk's block (StateStore::PrepareAppend), write its K/V, attend its queries, then drop the
// blocks a window slid past. The results of a query only depend on the keys its table holds at
// its round, so when no block can be evicted during the step this layer does it in one shot:
// all blocks of the step first, one K/V append, one attention launch per kernel, the window
// drops last (the same final tables; dropped blocks were invisible to every query of the step).
// When the per-sequence cap could evict a block mid-step (the CPU would then hide or even reuse
// it between rounds), or the pool might run dry before the CPU's intermediate drops would
// free blocks, the layer runs the CPU's rounds literally (one append and one attention launch
// per round).
//
// Host work per step: block allocation per 64-token chunk, one int32 table per step (one upload:
// block tables, chunks, lengths, tiles, per-row block), no loops over heads. Step scratch is
// released when the layer's kernels are enqueued (stream order).
//
// Decode steps from CUDA graphs (DecodeGraphSafe): PrepareDecode allocates the new tokens' blocks
// and stages the changes of per-row device tables (blocks, chunks, counts, the new token's block)
// in ctx.uploads; Forward then appends and attends through those tables with a launch that
// depends only on the batch size and the table width (AttendDecodeGraph); FinishDecode drops the
// blocks a window slid past. Eager decode uses the same split count, so both give the same sums.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "runtime/base/status_macros.h"
#include "runtime/cpu/cpu_layer.h"
#include "runtime/cuda/cuda_layer.h"

namespace hyla::cuda {
namespace {

// A run of new rows of one sequence: all its rows (one-shot) or one chunk piece (rounds).
struct Item {
  SequenceState* seq = nullptr;
  int64_t row = 0;  // first packed row
  int64_t pos = 0;  // position of that row
  int64_t n = 0;    // rows
};

class CudaAttentionLayer : public CudaLayer {
 public:
  CudaAttentionLayer(const AttentionLayerConfig& cfg, int layer, int hidden, int stream,
                     kernels::KernelDType kv_dtype, int64_t block_stride)
      : cfg_(cfg),
        layer_(layer),
        hidden_(hidden),
        stream_(stream),
        kv_dtype_(kv_dtype),
        block_stride_(block_stride) {
    hd_ = cfg_.head_dim;
    q_width_ = int64_t{cfg_.num_heads} * hd_;
    kv_width_ = int64_t{cfg_.num_kv_heads} * hd_;
    qkv_stride_ = q_width_ + 2 * kv_width_;
    // transformers: scaling = head_dim ** -0.5 (a Python float), applied to q·k in float32.
    scale_ = static_cast<float>(std::pow(static_cast<double>(hd_), -0.5));
    tile_rows_ = kernels::PagedAttentionPrefillTileRows(
        cfg_.num_heads, cfg_.num_kv_heads, static_cast<int>(hd_), static_cast<int>(hd_));
  }

  absl::Status Load(const CudaLayerArgs& args);
  absl::Status Forward(const CudaContext& ctx, const float* x, float* out) override;
  bool DecodeGraphSafe() const override { return width_ > 0; }
  bool CanPrepareDecode(const CudaContext& ctx) const override;
  absl::Status PrepareDecode(const CudaContext& ctx) override;
  void FinishDecode(const CudaContext& ctx) override;

 private:
  std::string Where() const { return absl::StrCat("CUDA attention layer ", layer_); }
  // Allocates the blocks of `items` (in order, chunk by chunk), appends their K/V rows and
  // attends their queries. allow_decode: the leading one-row items whose row equals their index
  // go through PagedAttentionDecode.
  absl::Status AttendItems(const CudaContext& ctx, const std::vector<Item>& items,
                           bool allow_decode, const float* q, const float* k, const float* v,
                           float* o);
  // Drops the blocks that no query after `next` can see (window layers).
  void DropWindowBlocks(const CudaContext& ctx, SequenceState* seq, int64_t next) const;
  // Decode step from a CUDA graph: appends the new K/V rows through the per-row tables that
  // PrepareDecode staged and attends every row's query over them.
  absl::Status AttendDecodeGraph(const CudaContext& ctx, const float* q, const float* k,
                                 const float* v, float* o);
  // Entries a decode-graph table row can need at most.
  int64_t TableWidth(int64_t max_context) const;
  // KvAppend of `rows` new K/V rows (strided like the fused projection) into their blocks.
  absl::Status AppendKv(const CudaContext& ctx, int64_t rows, const float* k, const float* v,
                        const int32_t* row_block, const int32_t* row_pos) const;
  // PagedAttentionDecode of the first n query rows over tables [n, max_blocks] (device), with
  // the split count of DecodeSplits(split_blocks); split-K workspace from step scratch.
  absl::Status Decode(const CudaContext& ctx, int n, const float* q, float* o, const int32_t* table,
                      const int32_t* chunks, const int32_t* num_blocks, int max_blocks,
                      const int32_t* kv_len, int split_blocks) const;
  // Split-K pieces of a PagedAttentionDecode launch of `n` sequences over tables of `max_blocks`
  // entries: enough CTAs for ~4 per SM.
  int DecodeSplits(const DeviceContext& dev, int n, int max_blocks) const {
    const int group_chunks = (cfg_.num_heads / cfg_.num_kv_heads + 7) / 8;
    const int64_t base = int64_t{n} * cfg_.num_kv_heads * group_chunks;
    const int64_t want = (4 * int64_t{std::max(1, dev.sm_count())} + base - 1) / base;
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, max_blocks)));
  }

  const AttentionLayerConfig cfg_;
  const int layer_;
  const int64_t hidden_;
  const int stream_;
  const kernels::KernelDType kv_dtype_;
  const int64_t block_stride_;  // elements of kv_dtype between blocks
  int64_t hd_ = 0;
  int64_t q_width_ = 0;     // H · hd
  int64_t kv_width_ = 0;    // Hkv · hd
  int64_t qkv_stride_ = 0;  // columns of one row of the fused q | k | v projection
  float scale_ = 1.0f;
  int tile_rows_ = 0;
  DeviceMatrix w_qkv_;               // [(H + 2·Hkv)·hd, hidden]: q_proj, k_proj, v_proj rows
  DeviceMatrix w_o_;                 // [hidden, H·hd]
  const float* b_qkv_ = nullptr;     // [(H + 2·Hkv)·hd] (qkv_bias)
  const float* b_o_ = nullptr;       // [hidden] (o_bias)
  const float* q_norm_ = nullptr;    // [hd] (qk_norm)
  const float* k_norm_ = nullptr;    // [hd]
  const float* inv_freq_ = nullptr;  // [rotary_dim / 2] device
  // Host staging of the per-step int32 tables, reused across steps.
  std::vector<int32_t> host_ints_;
  std::vector<int32_t> item_blocks_;  // blocks of each item's chunks, flattened

  // Decode-graph tables: row r of a decode step's batch reads its KV stream's block table from
  // row r of these device arrays (fixed addresses, so the step can be replayed from a graph).
  // PrepareDecode stages only what changed since the row last held the same sequence (by
  // SequenceState::uid): in steady decode, one entry per 64 tokens and the new token's block.
  int width_ = 0;                // entries per row (0: no decode graphs)
  int max_rows_ = 0;             // rows (the backend's max_step_seqs)
  DeviceBuffer graph_tables_;    // blocks [rows, width], chunks [rows, width], num [rows],
  int32_t* d_blocks_ = nullptr;  //   row_block [rows] (the block of the row's new token)
  int32_t* d_chunks_ = nullptr;
  int32_t* d_num_ = nullptr;
  int32_t* d_row_block_ = nullptr;
  std::vector<int32_t> h_blocks_, h_chunks_, h_num_, h_row_block_;  // what the device holds
  std::vector<uint64_t> h_owner_;  // uid of the sequence each row's entries belong to (0: none)
  std::vector<int32_t> staged_;    // PrepareDecode's scratch
  bool prepared_ = false;          // PrepareDecode ran and FinishDecode did not yet
};

absl::Status CudaAttentionLayer::Load(const CudaLayerArgs& args) {
  Checkpoint* ck = args.checkpoint;
  DeviceWeights* w = args.weights;
  const std::string& p = args.prefix;
  const int64_t d = hidden_;
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols,
                    DeviceMatrix* dst) -> absl::Status {
    HYLA_ASSIGN_OR_RETURN(F32Tensor t, ck->TakeF32(p + name, {rows, cols}));
    HYLA_ASSIGN_OR_RETURN(*dst, w->Matrix(t, p + name));
    return absl::OkStatus();
  };
  auto vec = [&](const std::string& name, int64_t n, const float** dst) -> absl::Status {
    HYLA_ASSIGN_OR_RETURN(F32Tensor t, ck->TakeF32(p + name, {n}));
    HYLA_ASSIGN_OR_RETURN(*dst, w->F32(t, p + name));
    return absl::OkStatus();
  };
  // q, k and v projections as one GEMM (rows q | k | v).
  {
    const char* names[3] = {"q_proj", "k_proj", "v_proj"};
    const int64_t widths[3] = {q_width_, kv_width_, kv_width_};
    std::vector<float> fused(static_cast<size_t>(qkv_stride_ * d));
    std::vector<float> bias(cfg_.qkv_bias ? static_cast<size_t>(qkv_stride_) : 0);
    int64_t at = 0;
    for (int i = 0; i < 3; ++i) {
      HYLA_ASSIGN_OR_RETURN(F32Tensor t, ck->TakeF32(p + names[i] + ".weight", {widths[i], d}));
      std::memcpy(fused.data() + at * d, t.data(), sizeof(float) * widths[i] * d);
      if (cfg_.qkv_bias) {
        HYLA_ASSIGN_OR_RETURN(F32Tensor b, ck->TakeF32(p + names[i] + ".bias", {widths[i]}));
        std::memcpy(bias.data() + at, b.data(), sizeof(float) * widths[i]);
      }
      at += widths[i];
    }
    HYLA_ASSIGN_OR_RETURN(w_qkv_, w->Matrix(F32Tensor::View(fused.data(), {qkv_stride_, d}),
                                            p + "{q,k,v}_proj.weight"));
    if (cfg_.qkv_bias) {
      HYLA_ASSIGN_OR_RETURN(b_qkv_, w->F32(bias, p + "{q,k,v}_proj.bias"));
    }
  }
  HYLA_RETURN_IF_ERROR(matrix("o_proj.weight", d, q_width_, &w_o_));
  if (cfg_.o_bias) HYLA_RETURN_IF_ERROR(vec("o_proj.bias", d, &b_o_));
  if (cfg_.qk_norm) {
    HYLA_RETURN_IF_ERROR(vec("q_norm.weight", hd_, &q_norm_));
    HYLA_RETURN_IF_ERROR(vec("k_norm.weight", hd_, &k_norm_));
  }
  if (cfg_.rotary_dim > 0) {
    HYLA_ASSIGN_OR_RETURN(
        inv_freq_, w->F32(cpu::AttentionRopeInvFreq(cfg_), absl::StrCat(p, "rope inv_freq")));
  }
  if (args.max_context > 0 && args.max_step_seqs > 0) {
    const int64_t width = TableWidth(args.max_context);
    const int64_t rows = args.max_step_seqs;
    if (width * rows * 2 + 2 * rows > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(Where(), ": decode-graph tables of ", rows,
                                                     " rows x ", width, " entries are too large"));
    }
    width_ = static_cast<int>(width);
    max_rows_ = static_cast<int>(rows);
    const int64_t ints = 2 * rows * width + 2 * rows;
    HYLA_ASSIGN_OR_RETURN(graph_tables_,
                          DeviceBuffer::Allocate(sizeof(int32_t) * static_cast<size_t>(ints),
                                                 absl::StrCat(Where(), " decode-graph tables")));
    d_blocks_ = graph_tables_.as<int32_t>();
    d_chunks_ = d_blocks_ + rows * width;
    d_num_ = d_chunks_ + rows * width;
    d_row_block_ = d_num_ + rows;
    // Every entry starts as "no block": rows the host has not written read as empty.
    std::vector<int32_t> init(static_cast<size_t>(ints), -1);
    std::fill(init.begin() + 2 * rows * width, init.begin() + 2 * rows * width + rows, 0);
    HYLA_RETURN_IF_ERROR(
        args.dev->CopyToDevice(d_blocks_, init.data(), sizeof(int32_t) * init.size()));
    h_blocks_.assign(static_cast<size_t>(rows * width), -1);
    h_chunks_.assign(static_cast<size_t>(rows * width), -1);
    h_num_.assign(static_cast<size_t>(rows), 0);
    h_row_block_.assign(static_cast<size_t>(rows), -1);
    h_owner_.assign(static_cast<size_t>(rows), 0);
  }
  return absl::OkStatus();
}

int64_t CudaAttentionLayer::TableWidth(int64_t max_context) const {
  int64_t width = (max_context + kBlockTokens - 1) / kBlockTokens + 1;
  if (cfg_.window_size > 0) {
    // After the previous step's drops a window layer holds the chunks of the last `window`
    // positions, plus the new token's chunk.
    width = std::min<int64_t>(width, (cfg_.window_size + kBlockTokens - 1) / kBlockTokens + 2);
  }
  return width;
}

bool CudaAttentionLayer::CanPrepareDecode(const CudaContext& ctx) const {
  if (width_ == 0 || ctx.batch == nullptr || ctx.batch->num_seqs() > max_rows_) return false;
  for (const CudaSeq& s : ctx.batch->seqs) {
    if (s.seq == nullptr || s.num_rows != 1 || static_cast<int>(s.seq->streams.size()) <= stream_) {
      return false;
    }
    const std::vector<BlockRef>& table = s.seq->streams[stream_];
    const bool has_chunk = !table.empty() && table.back().chunk == s.start_pos / kBlockTokens;
    if (static_cast<int64_t>(table.size()) + (has_chunk ? 0 : 1) > width_) return false;
  }
  return true;
}

absl::Status CudaAttentionLayer::PrepareDecode(const CudaContext& ctx) {
  if (ctx.uploads == nullptr || width_ == 0) {
    return absl::InternalError(absl::StrCat(Where(), ": PrepareDecode without decode tables"));
  }
  StepUploads& up = *ctx.uploads;
  if (prepared_) {
    // The previous decode step failed between PrepareDecode and FinishDecode: its staged writes
    // may not have reached the device, so the mirrors say nothing; rewrite every row used.
    std::fill(h_blocks_.begin(), h_blocks_.end(), -1);
    std::fill(h_chunks_.begin(), h_chunks_.end(), -1);
    std::fill(h_num_.begin(), h_num_.end(), -1);
    std::fill(h_row_block_.begin(), h_row_block_.end(), -1);
    std::fill(h_owner_.begin(), h_owner_.end(), 0);
  }
  prepared_ = true;
  const std::vector<CudaSeq>& seqs = ctx.batch->seqs;
  for (size_t r = 0; r < seqs.size(); ++r) {
    const CudaSeq& s = seqs[r];
    HYLA_ASSIGN_OR_RETURN(const int32_t block,
                          ctx.WritableBlock(s.seq, stream_, s.start_pos / kBlockTokens));
    const std::vector<BlockRef>& table = s.seq->streams[stream_];
    const int size = static_cast<int>(table.size());
    if (size > width_) {
      return absl::InternalError(absl::StrCat(Where(), ": block table of ", size,
                                              " entries exceeds the decode-graph width ", width_));
    }
    const int64_t base = static_cast<int64_t>(r) * width_;
    int32_t* hb = h_blocks_.data() + base;
    int32_t* hc = h_chunks_.data() + base;
    const int old = h_num_[r];
    // The same sequence with the same first entry and no fewer entries: only its last known
    // entry (copy-on-write) and new entries can differ.
    const bool same = h_owner_[r] == s.seq->uid && old > 0 && size >= old &&
                      hb[0] == table[0].block && hc[0] == static_cast<int32_t>(table[0].chunk);
    int first = same ? old - 1 : 0;
    while (first < size && first < old && hb[first] == table[first].block &&
           hc[first] == static_cast<int32_t>(table[first].chunk)) {
      ++first;
    }
    if (first < size) {
      staged_.resize(static_cast<size_t>(size - first));
      for (int e = first; e < size; ++e) {
        hb[e] = table[e].block;
        staged_[e - first] = hb[e];
      }
      up.Write(d_blocks_ + base + first, staged_.data(), size - first);
      for (int e = first; e < size; ++e) {
        hc[e] = static_cast<int32_t>(table[e].chunk);
        staged_[e - first] = hc[e];
      }
      up.Write(d_chunks_ + base + first, staged_.data(), size - first);
    }
    if (old != size) {
      h_num_[r] = size;
      up.Write(d_num_ + r, size);
    }
    if (h_row_block_[r] != block) {
      h_row_block_[r] = block;
      up.Write(d_row_block_ + r, block);
    }
    h_owner_[r] = s.seq->uid;
  }
  return absl::OkStatus();
}

void CudaAttentionLayer::FinishDecode(const CudaContext& ctx) {
  prepared_ = false;
  if (cfg_.window_size <= 0) return;
  for (const CudaSeq& s : ctx.batch->seqs) DropWindowBlocks(ctx, s.seq, s.start_pos + 1);
}

void CudaAttentionLayer::DropWindowBlocks(const CudaContext& ctx, SequenceState* seq,
                                          int64_t next) const {
  // As the CPU layer: the next query (position `next`) sees keys from next - w + 1 on.
  const int64_t first_needed = next - cfg_.window_size + 1;
  while (!seq->streams[stream_].empty() &&
         (seq->streams[stream_].front().chunk + 1) * kBlockTokens <= first_needed) {
    ctx.store->DropBlock(seq, stream_, 0);
  }
}

absl::Status CudaAttentionLayer::AttendItems(const CudaContext& ctx, const std::vector<Item>& items,
                                             bool allow_decode, const float* q, const float* k,
                                             const float* v, float* o) {
  DeviceContext& dev = *ctx.dev;
  const int num = static_cast<int>(items.size());
  if (num == 0) return absl::OkStatus();

  // 1. Blocks of every chunk the items touch (host, StateStore order as the CPU).
  std::vector<int> first_block(static_cast<size_t>(num) + 1, 0);
  item_blocks_.clear();
  int64_t row_lo = INT64_MAX, row_hi = 0;
  for (int i = 0; i < num; ++i) {
    const Item& it = items[i];
    first_block[i] = static_cast<int>(item_blocks_.size());
    for (int64_t c = it.pos / kBlockTokens; c <= (it.pos + it.n - 1) / kBlockTokens; ++c) {
      HYLA_ASSIGN_OR_RETURN(int32_t block, ctx.WritableBlock(it.seq, stream_, c));
      item_blocks_.push_back(block);
    }
    row_lo = std::min(row_lo, it.row);
    row_hi = std::max(row_hi, it.row + it.n);
  }
  first_block[num] = static_cast<int>(item_blocks_.size());

  // 2. Decode items: the leading one-row items whose row is their index.
  int num_decode = 0;
  if (allow_decode) {
    while (num_decode < num && items[num_decode].n == 1 && items[num_decode].row == num_decode) {
      ++num_decode;
    }
  }

  // 3. Tables of the items (entries a window hides from all the item's queries are left out).
  int max_blocks = 1;
  std::vector<int> entry_begin(static_cast<size_t>(num), 0);
  for (int i = 0; i < num; ++i) {
    const std::vector<BlockRef>& table = items[i].seq->streams[stream_];
    int b = 0;
    if (cfg_.window_size > 0) {
      const int64_t lo = std::max<int64_t>(0, items[i].pos + 1 - cfg_.window_size);
      while (b < static_cast<int>(table.size()) && (table[b].chunk + 1) * kBlockTokens <= lo) ++b;
    }
    entry_begin[i] = b;
    max_blocks = std::max(max_blocks, static_cast<int>(table.size()) - b);
  }
  int num_tiles = 0;
  for (int i = num_decode; i < num; ++i) {
    num_tiles += static_cast<int>((items[i].n + tile_rows_ - 1) / tile_rows_);
  }
  const int64_t span = row_hi - row_lo;  // rows covered by the per-row block table
  const int64_t table_size = int64_t{num} * max_blocks;
  const int64_t off_chunks = table_size;
  const int64_t off_num = 2 * table_size;
  const int64_t off_len = off_num + num;
  const int64_t off_tiles = off_len + num;
  const int64_t off_rows = off_tiles + 3 * int64_t{num_tiles};
  const int64_t total = off_rows + span;
  host_ints_.assign(static_cast<size_t>(total), -1);
  int32_t* h = host_ints_.data();
  int tile = 0;
  for (int i = 0; i < num; ++i) {
    const Item& it = items[i];
    const std::vector<BlockRef>& table = it.seq->streams[stream_];
    const int entries = static_cast<int>(table.size()) - entry_begin[i];
    for (int e = 0; e < entries; ++e) {
      const BlockRef& ref = table[entry_begin[i] + e];
      h[int64_t{i} * max_blocks + e] = ref.block;
      h[off_chunks + int64_t{i} * max_blocks + e] = static_cast<int32_t>(ref.chunk);
    }
    h[off_num + i] = entries;
    h[off_len + i] = static_cast<int32_t>(it.pos + it.n);  // decode: kv_len = pos + 1
    if (i >= num_decode) {
      for (int64_t r = 0; r < it.n; r += tile_rows_) {
        h[off_tiles + 3 * tile] = i;
        h[off_tiles + 3 * tile + 1] = static_cast<int32_t>(it.row + r);
        h[off_tiles + 3 * tile + 2] = static_cast<int32_t>(std::min<int64_t>(tile_rows_, it.n - r));
        ++tile;
      }
    }
    const int64_t first_chunk = it.pos / kBlockTokens;
    for (int64_t r = 0; r < it.n; ++r) {
      h[off_rows + it.row + r - row_lo] =
          item_blocks_[first_block[i] + (it.pos + r) / kBlockTokens - first_chunk];
    }
  }
  HYLA_ASSIGN_OR_RETURN(int32_t * d_ints,
                        dev.Upload(h, total, absl::StrCat(Where(), " block tables")));

  void* stream = dev.kernel_stream();
  HYLA_RETURN_IF_ERROR(AppendKv(ctx, span, k + row_lo * qkv_stride_, v + row_lo * qkv_stride_,
                                d_ints + off_rows, ctx.batch->row_pos + row_lo));

  if (num_decode > 0) {
    // The decode-graph path's split count when it could run this batch, so that eager and
    // replayed decode steps give the same sums. Decode item i is row i.
    HYLA_RETURN_IF_ERROR(Decode(ctx, num_decode, q, o, d_ints, d_ints + off_chunks,
                                d_ints + off_num, max_blocks, d_ints + off_len,
                                width_ > 0 && max_blocks <= width_ ? width_ : max_blocks));
  }
  if (num_tiles > 0) {
    kernels::PagedAttentionPrefillParams pp;
    pp.num_heads = cfg_.num_heads;
    pp.num_kv_heads = cfg_.num_kv_heads;
    pp.dk = static_cast<int>(hd_);
    pp.dv = static_cast<int>(hd_);
    pp.kv_dtype = kv_dtype_;
    pp.q = q;
    pp.q_stride = qkv_stride_;
    pp.kv = ctx.block_pool;
    pp.block_stride = block_stride_;
    pp.block_table = d_ints;
    pp.block_chunks = d_ints + off_chunks;
    pp.num_blocks = d_ints + off_num;
    pp.max_blocks = max_blocks;
    pp.row_pos = ctx.batch->row_pos;
    pp.tiles = d_ints + off_tiles;
    pp.num_tiles = num_tiles;
    pp.window = cfg_.window_size;
    pp.scale = scale_;
    pp.out = o;
    pp.out_stride = q_width_;
    HYLA_KERNEL_RETURN_IF_ERROR(kernels::PagedAttentionPrefill(pp, stream),
                                absl::StrCat(Where(), " PagedAttentionPrefill"));
  }
  return absl::OkStatus();
}

absl::Status CudaAttentionLayer::AttendDecodeGraph(const CudaContext& ctx, const float* q,
                                                   const float* k, const float* v, float* o) {
  const CudaBatch& batch = *ctx.batch;
  const int n = batch.num_seqs();
  if (width_ == 0 || n > max_rows_ || batch.total_rows != n || batch.kv_len == nullptr) {
    return absl::InternalError(absl::StrCat(Where(), ": not a prepared decode step"));
  }
  HYLA_RETURN_IF_ERROR(AppendKv(ctx, n, k, v, d_row_block_, batch.row_pos));
  // The launch depends only on n and the table width (the kernel splits each row's own blocks).
  return Decode(ctx, n, q, o, d_blocks_, d_chunks_, d_num_, width_, batch.kv_len, width_);
}

absl::Status CudaAttentionLayer::AppendKv(const CudaContext& ctx, int64_t rows, const float* k,
                                          const float* v, const int32_t* row_block,
                                          const int32_t* row_pos) const {
  kernels::KvAppendParams ap;
  ap.rows = rows;
  ap.num_kv_heads = cfg_.num_kv_heads;
  ap.dk = static_cast<int>(hd_);
  ap.dv = static_cast<int>(hd_);
  ap.k = k;
  ap.k_stride = qkv_stride_;
  ap.v = v;
  ap.v_stride = qkv_stride_;
  ap.row_block = row_block;
  ap.row_pos = row_pos;
  ap.kv_dtype = kv_dtype_;
  ap.kv = ctx.block_pool;
  ap.block_stride = block_stride_;
  HYLA_KERNEL_RETURN_IF_ERROR(kernels::KvAppend(ap, ctx.dev->kernel_stream()),
                              absl::StrCat(Where(), " KvAppend"));
  return absl::OkStatus();
}

absl::Status CudaAttentionLayer::Decode(const CudaContext& ctx, int n, const float* q, float* o,
                                        const int32_t* table, const int32_t* chunks,
                                        const int32_t* num_blocks, int max_blocks,
                                        const int32_t* kv_len, int split_blocks) const {
  DeviceContext& dev = *ctx.dev;
  const int splits = DecodeSplits(dev, n, split_blocks);
  const size_t ws_bytes =
      kernels::PagedAttentionDecodeWorkspaceBytes(n, cfg_.num_heads, static_cast<int>(hd_), splits);
  void* ws = nullptr;
  if (ws_bytes > 0) {
    HYLA_ASSIGN_OR_RETURN(ws, dev.scratch().Alloc(ws_bytes, absl::StrCat(Where(), " split-K")));
  }
  kernels::PagedAttentionDecodeParams dp;
  dp.num_seqs = n;
  dp.num_heads = cfg_.num_heads;
  dp.num_kv_heads = cfg_.num_kv_heads;
  dp.dk = static_cast<int>(hd_);
  dp.dv = static_cast<int>(hd_);
  dp.q_dtype = kernels::KernelDType::kF32;
  dp.kv_dtype = kv_dtype_;
  dp.q = q;
  dp.q_stride = qkv_stride_;
  dp.kv = ctx.block_pool;
  dp.block_stride = block_stride_;
  dp.block_table = table;
  dp.block_chunks = chunks;
  dp.num_blocks = num_blocks;
  dp.max_blocks = max_blocks;
  dp.kv_len = kv_len;
  dp.window = cfg_.window_size;
  dp.scale = scale_;
  dp.out = o;
  dp.out_stride = q_width_;
  dp.workspace = ws;
  dp.workspace_bytes = ws_bytes;
  HYLA_KERNEL_RETURN_IF_ERROR(kernels::PagedAttentionDecode(dp, dev.kernel_stream()),
                              absl::StrCat(Where(), " PagedAttentionDecode"));
  return absl::OkStatus();
}

absl::Status CudaAttentionLayer::Forward(const CudaContext& ctx, const float* x, float* out) {
  if (ctx.dev == nullptr || ctx.batch == nullptr || ctx.store == nullptr ||
      ctx.block_pool == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(Where(), ": incomplete context"));
  }
  const CudaBatch& batch = *ctx.batch;
  const int64_t rows = batch.total_rows;
  if (rows == 0) return absl::OkStatus();
  for (const CudaSeq& s : batch.seqs) {
    if (s.seq == nullptr || s.num_rows < 0 || s.row_begin < 0 || s.start_pos < 0 ||
        s.row_begin + s.num_rows > rows || s.start_pos + s.num_rows >= INT32_MAX ||
        static_cast<int>(s.seq->streams.size()) <= stream_) {
      return absl::InvalidArgumentError(absl::StrCat(Where(), ": bad batch entry (rows ",
                                                     s.row_begin, "+", s.num_rows, " of ", rows,
                                                     ", start ", s.start_pos, ")"));
    }
  }
  DeviceContext& dev = *ctx.dev;
  ScratchArena& arena = dev.scratch();
  const size_t mark = arena.Mark();
  absl::Status st = [&]() -> absl::Status {
    HYLA_ASSIGN_OR_RETURN(float* qkv,
                          arena.AllocArray<float>(rows * qkv_stride_, "attention q|k|v"));
    HYLA_ASSIGN_OR_RETURN(float* o, arena.AllocArray<float>(rows * q_width_, "attention o"));
    float* q = qkv;
    float* k = qkv + q_width_;
    float* v = k + kv_width_;
    HYLA_RETURN_IF_ERROR(Linear(dev, x, ctx.x_bf16, rows, w_qkv_, b_qkv_, qkv));
    void* stream = dev.kernel_stream();
    if (cfg_.qk_norm) {
      // Per-head RMSNorm in place, heads of a row contiguous, rows qkv_stride_ apart.
      auto norm = [&](float* t, int heads, const float* w, const char* what) -> absl::Status {
        kernels::GatedRmsNormParams np;
        np.rows = rows;
        np.heads = heads;
        np.n = static_cast<int>(hd_);
        np.x = t;
        np.x_stride = qkv_stride_;
        np.weight = w;
        np.eps = cfg_.qk_norm_eps;
        np.out = t;
        np.out_stride = qkv_stride_;
        HYLA_KERNEL_RETURN_IF_ERROR(kernels::GatedRmsNorm(np, stream), absl::StrCat(Where(), what));
        return absl::OkStatus();
      };
      HYLA_RETURN_IF_ERROR(norm(q, cfg_.num_heads, q_norm_, " q_norm"));
      HYLA_RETURN_IF_ERROR(norm(k, cfg_.num_kv_heads, k_norm_, " k_norm"));
    }
    if (cfg_.rotary_dim > 0) {
      kernels::RopeParams rp;
      rp.rows = rows;
      rp.head_dim = static_cast<int>(hd_);
      rp.rotary_dim = cfg_.rotary_dim;
      rp.q = q;
      rp.q_stride = qkv_stride_;
      rp.q_heads = cfg_.num_heads;
      rp.k = k;
      rp.k_stride = qkv_stride_;
      rp.k_heads = cfg_.num_kv_heads;
      rp.inv_freq = inv_freq_;
      rp.row_pos = batch.row_pos;
      HYLA_KERNEL_RETURN_IF_ERROR(kernels::Rope(rp, stream), absl::StrCat(Where(), " Rope"));
    }

    if (ctx.graph_decode) {
      HYLA_RETURN_IF_ERROR(AttendDecodeGraph(ctx, q, k, v, o));
      return Linear(dev, o, rows, w_o_, b_o_, out);
    }
    // One shot unless a block could be evicted or the pool could run short mid-step.
    const StateStoreOptions& opts = ctx.store->options();
    const int64_t cap_blocks =
        opts.max_kv_tokens_per_stream > 0
            ? std::max<int64_t>(1, opts.max_kv_tokens_per_stream / kBlockTokens)
            : 0;
    bool rounds = false;
    int64_t needed = 0;
    std::vector<Item> items;
    items.reserve(batch.seqs.size());
    for (const CudaSeq& s : batch.seqs) {
      if (s.num_rows == 0) continue;
      items.push_back(Item{s.seq, s.row_begin, s.start_pos, s.num_rows});
      const std::vector<BlockRef>& table = s.seq->streams[stream_];
      const int64_t first = s.start_pos / kBlockTokens;
      const int64_t last = (s.start_pos + s.num_rows - 1) / kBlockTokens;
      const bool has_current = !table.empty() && table.back().chunk == first;
      const int64_t fresh = last - first + (has_current ? 0 : 1);
      needed += fresh;
      if (has_current && ctx.store->refcount(table.back().block) > 1) ++needed;
      if (cap_blocks > 0 && static_cast<int64_t>(table.size()) + fresh > cap_blocks) rounds = true;
    }
    if (needed > ctx.store->free_blocks()) rounds = true;

    if (!rounds) {
      HYLA_RETURN_IF_ERROR(AttendItems(ctx, items, /*allow_decode=*/true, q, k, v, o));
      if (cfg_.window_size > 0) {
        for (const Item& it : items) DropWindowBlocks(ctx, it.seq, it.pos + it.n);
      }
    } else {
      // The CPU's rounds: piece i of every sequence (pieces end at 64-token boundaries).
      std::vector<Item> active;
      for (bool more = true; more;) {
        more = false;
        active.clear();
        for (Item& it : items) {
          if (it.n == 0) continue;
          const int64_t n = std::min<int64_t>(it.n, kBlockTokens - it.pos % kBlockTokens);
          active.push_back(Item{it.seq, it.row, it.pos, n});
          it.row += n;
          it.pos += n;
          it.n -= n;
          more = more || it.n > 0;
        }
        HYLA_RETURN_IF_ERROR(AttendItems(ctx, active, /*allow_decode=*/false, q, k, v, o));
        if (cfg_.window_size > 0) {
          for (const Item& piece : active) DropWindowBlocks(ctx, piece.seq, piece.pos + piece.n);
        }
      }
    }
    return Linear(dev, o, rows, w_o_, b_o_, out);
  }();
  arena.RewindTo(mark);
  return st;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaLayer>> CreateCudaAttentionLayer(const CudaLayerArgs& args) {
  if (args.config == nullptr || args.layout == nullptr || args.checkpoint == nullptr ||
      args.dev == nullptr || args.weights == nullptr) {
    return absl::InvalidArgumentError(
        "CUDA attention layer: missing config, layout, checkpoint, device or weights");
  }
  if (args.layer < 0 || args.layer >= static_cast<int>(args.config->layers.size())) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA attention layer: no layer ", args.layer));
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
  if (a.head_dim > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": head_dim ", a.head_dim, " is above the CUDA attention kernels' limit of 256"));
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
  kernels::KernelDType kv_dtype;
  if (args.layout->kv_dtype() == DType::kF32) {
    kv_dtype = kernels::KernelDType::kF32;
  } else if (args.layout->kv_dtype() == DType::kBF16) {
    kv_dtype = kernels::KernelDType::kBf16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": the CUDA backend keeps KV in F32 or BF16, layout has ",
                     DTypeName(args.layout->kv_dtype())));
  }
  const int64_t elem = DTypeSize(args.layout->kv_dtype());
  if (args.layout->block_bytes() % elem != 0 ||
      args.layout->block_bytes() / elem < int64_t{kBlockTokens} * a.num_kv_heads * 2 * a.head_dim) {
    return absl::InternalError(absl::StrCat(where, ": KV block of ", args.layout->block_bytes(),
                                            " bytes does not hold the stream"));
  }
  auto layer = std::make_unique<CudaAttentionLayer>(a, args.layer, args.config->hidden_size, stream,
                                                    kv_dtype, args.layout->block_bytes() / elem);
  HYLA_RETURN_IF_ERROR(layer->Load(args));
  return std::unique_ptr<CudaLayer>(std::move(layer));
}

}  // namespace hyla::cuda
