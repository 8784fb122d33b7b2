// PagedAttentionDecode (kernels/ops.h) against a direct softmax attention on the CPU written as
// the CPU attention layer computes it (AttendOne: cpu::Dot · scale over the visible positions in
// table order, cpu::Softmax, Σ p·v), over the block layout of runtime/cpu/cpu_layer.h
// (keys [64, Hkv, dk] then values [64, Hkv, dv]). Fresh random inputs; GQA, MQA and MHA; odd
// head dims; sliding windows; sparse block tables (NAtS-L-like kept chunks); padding rows;
// forced and automatic split-K (per-sequence split boundaries on the device, more splits than
// blocks, very unequal lengths); table_rows (shuffled rows, decoy rows); windows over untrimmed
// tables; every kernel variant (PagedAttentionDecodeParams::variant: the CUDA-core kernel and the
// tensor-core tilings). Bounds (by the query/output dtype): fp32 1e-4, bf16 1e-2 (max|diff| /
// max|ref|); the tensor-core kernel keeps fp32 queries at ~1e-5 with its hi/lo bf16 rows.
// Label gpu; skipped without a CUDA device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "runtime/cpu/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace hyla {
namespace {

using gpu_test::DeviceBuffer;
using gpu_test::ExpectClose;
using gpu_test::GpuTest;
using gpu_test::Normal;
using gpu_test::ToDevice;
using gpu_test::ToHost;

constexpr int kBlock = 64;

struct AttnShape {
  int Hq, Hkv, dk, dv;
};

// One sequence of a batch: its query position + 1 (kv_len) and which chunks its table keeps.
struct SeqSpec {
  int kv_len;
  enum Table { kAll, kSparse, kWindowed, kEmpty } table;
};

struct AttnCase {
  AttnShape shape;
  std::vector<SeqSpec> seqs;
  int window = 0;
  int num_splits = 0;  // 0 = automatic
  bool q_bf16 = false;
  bool kv_bf16 = false;
  // Table layout (additive options): sequence i reads a shuffled row through table_rows, the
  // tables have extra_rows more rows than sequences (filled with decoy entries), pad_blocks more
  // columns than any sequence needs, and block_chunks nullptr (every table kAll).
  bool shuffle_rows = false;
  int extra_rows = 0;
  int pad_blocks = 0;
  bool null_chunks = false;
  int variant = 0;  // PagedAttentionDecodeParams::variant
};

// The PagedAttentionDecodeParams::variant named `name` (fails the test when there is none).
int VariantByName(const std::string& name) {
  for (int v = 0; kernels::PagedAttentionDecodeVariantName(v) != nullptr; ++v) {
    if (name == kernels::PagedAttentionDecodeVariantName(v)) return v;
  }
  ADD_FAILURE() << "no PagedAttentionDecode variant " << name;
  return 0;
}

// Whether variant v runs the CUDA-core kernel whatever the blocks ("cuda_cores", "cc_*").
bool IsCudaCoreVariant(int v) {
  const std::string name = kernels::PagedAttentionDecodeVariantName(v);
  return name == "cuda_cores" || name.rfind("cc_", 0) == 0;
}

std::string CaseName(const AttnCase& c) {
  return "Hq" + std::to_string(c.shape.Hq) + " Hkv" + std::to_string(c.shape.Hkv) + " dk" +
         std::to_string(c.shape.dk) + " dv" + std::to_string(c.shape.dv) + " window " +
         std::to_string(c.window) + " splits " + std::to_string(c.num_splits) +
         (c.q_bf16 ? " q bf16" : " q f32") + (c.kv_bf16 ? " kv bf16" : " kv f32") +
         (c.shuffle_rows ? " table_rows" : "") + " extra_rows " + std::to_string(c.extra_rows) +
         " pad_blocks " + std::to_string(c.pad_blocks) + (c.null_chunks ? " no chunks" : "") +
         " variant " + std::to_string(c.variant) + " (" +
         kernels::PagedAttentionDecodeVariantName(c.variant) + ")";
}

void RunCase(const AttnCase& c, uint32_t seed) {
  SCOPED_TRACE(CaseName(c));
  std::mt19937 rng(seed);
  const AttnShape& s = c.shape;
  const int num_seqs = static_cast<int>(c.seqs.size());
  const int group = s.Hq / s.Hkv;
  const float scale = static_cast<float>(std::pow(static_cast<double>(s.dk), -0.5));

  // Block tables: ascending chunks, random distinct physical blocks.
  std::vector<std::vector<int32_t>> chunks(num_seqs);
  int max_blocks = 1;
  for (int i = 0; i < num_seqs; ++i) {
    const SeqSpec& q = c.seqs[i];
    const int n_chunks = (q.kv_len + kBlock - 1) / kBlock;
    for (int ch = 0; ch < n_chunks; ++ch) {
      const bool last = ch == n_chunks - 1;
      bool keep = true;
      if (q.table == SeqSpec::kSparse) keep = last || rng() % 3 != 0;
      if (q.table == SeqSpec::kWindowed && c.window > 0) {
        keep = (ch + 1) * kBlock > q.kv_len - c.window;  // blocks a window layer still holds
      }
      if (q.table == SeqSpec::kEmpty) keep = false;
      if (keep) chunks[i].push_back(ch);
    }
    max_blocks = std::max<int>(max_blocks, static_cast<int>(chunks[i].size()));
    if (c.null_chunks) {
      ASSERT_EQ(q.table, SeqSpec::kAll) << "block_chunks nullptr needs kAll";
    }
  }
  max_blocks += c.pad_blocks;
  int total_blocks = 0;
  for (const auto& t : chunks) total_blocks += static_cast<int>(t.size());
  const int pool_blocks = total_blocks + 3;
  std::vector<int32_t> perm(pool_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  // Sequence i lives in row rows[i] of the tables; the other rows are decoys: valid blocks and
  // ascending chunks that a kernel reading the wrong row would attend to.
  const int num_rows = num_seqs + c.extra_rows;
  std::vector<int32_t> rows(num_rows);
  std::iota(rows.begin(), rows.end(), 0);
  if (c.shuffle_rows) std::shuffle(rows.begin(), rows.end(), rng);
  rows.resize(num_seqs);
  std::vector<int32_t> table(static_cast<size_t>(num_rows) * max_blocks, -1);
  std::vector<int32_t> table_chunks(static_cast<size_t>(num_rows) * max_blocks, -1);
  std::vector<int32_t> num_blocks(num_rows), kv_len(num_seqs);
  for (int r = 0; r < num_rows; ++r) {
    num_blocks[r] = static_cast<int32_t>(rng() % (max_blocks + 1));
    for (int e = 0; e < num_blocks[r]; ++e) {
      table[r * max_blocks + e] = static_cast<int32_t>(rng() % pool_blocks);
      table_chunks[r * max_blocks + e] = e;
    }
  }
  int next = 0;
  for (int i = 0; i < num_seqs; ++i) {
    const int r = rows[i];
    num_blocks[r] = static_cast<int32_t>(chunks[i].size());
    kv_len[i] = c.seqs[i].table == SeqSpec::kEmpty ? 0 : c.seqs[i].kv_len;
    for (int e = 0; e < max_blocks; ++e) {
      const bool used = e < static_cast<int>(chunks[i].size());
      table[r * max_blocks + e] = used ? perm[next++] : -1;
      table_chunks[r * max_blocks + e] = used ? chunks[i][e] : -1;
    }
  }

  // The pool (block stride padded by 8 elements) and the queries (row stride padded by 3).
  const int64_t block_elems = int64_t{kBlock} * s.Hkv * (s.dk + s.dv);
  const int64_t block_stride = block_elems + 8;
  std::vector<float> kv = Normal(static_cast<size_t>(pool_blocks * block_stride), &rng, 0.0f, 1.0f);
  std::vector<uint16_t> kv_bits;
  if (c.kv_bf16) kv_bits = gpu_test::RoundToBf16(&kv);
  const int64_t q_stride = int64_t{s.Hq} * s.dk + 3;
  std::vector<float> q = Normal(static_cast<size_t>(num_seqs * q_stride), &rng, 0.0f, 1.0f);
  std::vector<uint16_t> q_bits;
  if (c.q_bf16) q_bits = gpu_test::RoundToBf16(&q);

  // Reference.
  std::vector<float> want(static_cast<size_t>(num_seqs) * s.Hq * s.dv, 0.0f);
  std::vector<float> scores;
  for (int i = 0; i < num_seqs; ++i) {
    const int first_visible = c.window > 0 ? std::max(0, kv_len[i] - c.window) : 0;
    const int r = rows[i];
    for (int h = 0; h < s.Hq; ++h) {
      const int kvh = h / group;
      const float* qh = q.data() + i * q_stride + int64_t{h} * s.dk;
      scores.clear();
      std::vector<const float*> values;
      for (int e = 0; e < num_blocks[r]; ++e) {
        const float* block = kv.data() + table[r * max_blocks + e] * block_stride;
        const int base = table_chunks[r * max_blocks + e] * kBlock;
        for (int t = 0; t < kBlock; ++t) {
          const int pos = base + t;
          if (pos < first_visible || pos >= kv_len[i]) continue;
          const float* key = block + (int64_t{t} * s.Hkv + kvh) * s.dk;
          scores.push_back(cpu::Dot(qh, key, s.dk) * scale);
          values.push_back(block + int64_t{kBlock} * s.Hkv * s.dk +
                           (int64_t{t} * s.Hkv + kvh) * s.dv);
        }
      }
      if (scores.empty()) continue;
      cpu::Softmax(scores.data(), static_cast<int64_t>(scores.size()));
      float* o = want.data() + (int64_t{i} * s.Hq + h) * s.dv;
      for (size_t j = 0; j < scores.size(); ++j) {
        for (int d = 0; d < s.dv; ++d) o[d] += scores[j] * values[j][d];
      }
    }
  }

  DeviceBuffer d_kv = c.kv_bf16 ? ToDevice(kv_bits) : ToDevice(kv);
  DeviceBuffer d_q = c.q_bf16 ? ToDevice(q_bits) : ToDevice(q);
  DeviceBuffer d_table = ToDevice(table), d_chunks = ToDevice(table_chunks);
  DeviceBuffer d_nblocks = ToDevice(num_blocks), d_len = ToDevice(kv_len);
  DeviceBuffer d_rows = ToDevice(rows);
  const int64_t out_stride = int64_t{s.Hq} * s.dv + 5;
  const size_t es = c.q_bf16 ? 2 : 4;
  DeviceBuffer d_out(static_cast<size_t>(num_seqs * out_stride) * es);
  const int max_splits = std::max(c.num_splits, max_blocks);
  const size_t ws_bytes =
      kernels::PagedAttentionDecodeWorkspaceBytes(num_seqs, s.Hq, s.dv, max_splits);
  DeviceBuffer d_ws(std::max<size_t>(ws_bytes, 16));
  ASSERT_TRUE(d_kv.ok() && d_q.ok() && d_table.ok() && d_chunks.ok() && d_nblocks.ok() &&
              d_len.ok() && d_out.ok() && d_ws.ok() && d_rows.ok());

  kernels::PagedAttentionDecodeParams p;
  p.num_seqs = num_seqs;
  p.num_heads = s.Hq;
  p.num_kv_heads = s.Hkv;
  p.dk = s.dk;
  p.dv = s.dv;
  p.q_dtype = c.q_bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
  p.kv_dtype = c.kv_bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
  p.q = d_q.get();
  p.q_stride = q_stride;
  p.kv = d_kv.get();
  p.block_stride = block_stride;
  p.block_table = d_table.as<int32_t>();
  p.block_chunks = c.null_chunks ? nullptr : d_chunks.as<int32_t>();
  p.num_blocks = d_nblocks.as<int32_t>();
  p.max_blocks = max_blocks;
  p.kv_len = d_len.as<int32_t>();
  p.window = c.window;
  p.scale = scale;
  p.out = d_out.get();
  p.out_stride = out_stride;
  p.num_splits = c.num_splits;
  p.workspace = d_ws.get();
  p.workspace_bytes = ws_bytes;
  p.table_rows = c.shuffle_rows || c.extra_rows > 0 ? d_rows.as<int32_t>() : nullptr;
  p.variant = c.variant;
  HYLA_ASSERT_LAUNCH_OK(kernels::PagedAttentionDecode(p, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  std::vector<float> got;
  const size_t out_count = static_cast<size_t>(num_seqs * out_stride);
  const std::vector<float> raw = c.q_bf16
                                     ? gpu_test::Bf16ToFloats(ToHost<uint16_t>(d_out, out_count))
                                     : ToHost<float>(d_out, out_count);
  for (int i = 0; i < num_seqs; ++i) {
    got.insert(got.end(), raw.begin() + i * out_stride,
               raw.begin() + i * out_stride + int64_t{s.Hq} * s.dv);
  }
  const std::string tag = std::string("paged_attention_decode q ") + (c.q_bf16 ? "bf16" : "f32") +
                          " kv " + (c.kv_bf16 ? "bf16" : "f32");
  // fp32 queries over fp32 blocks is the exactness mode: 1e-5 (H100, 2026-11-23: at most
  // 3.6e-6 over every case); fp32 queries over bf16 blocks 1e-4 (6.0e-6 seen).
  ExpectClose(got, want, c.q_bf16 ? 1e-2 : (c.kv_bf16 ? 1e-4 : 1e-5), tag);
}

class PagedAttentionTest : public GpuTest,
                           public ::testing::WithParamInterface<std::pair<bool, bool>> {};

// Shapes × batch compositions × split choices for one (q dtype, kv dtype).
TEST_P(PagedAttentionTest, MatchesCpuSoftmaxAttention) {
  const bool q_bf16 = GetParam().first, kv_bf16 = GetParam().second;
  const std::vector<AttnShape> shapes = {
      {8, 2, 128, 128},   // GQA 4
      {4, 4, 64, 64},     // MHA
      {12, 1, 96, 96},    // MQA, 12 query heads per KV head (two CTAs of heads)
      {6, 3, 40, 24},     // odd head dims (16-byte rows in fp32 and bf16)
      {3, 1, 36, 20},     // rows that are not 16-byte multiples in bf16: element-wise copies
      {16, 2, 256, 256},  // largest head dim
  };
  const std::vector<SeqSpec> mixed = {
      {1, SeqSpec::kAll},       {63, SeqSpec::kAll},  {64, SeqSpec::kAll}, {65, SeqSpec::kSparse},
      {1000, SeqSpec::kSparse}, {0, SeqSpec::kEmpty}, {777, SeqSpec::kAll}};
  uint32_t seed = q_bf16 * 1000 + kv_bf16 * 100;
  for (const AttnShape& s : shapes) {
    for (const int splits : {1, 0, 3}) {
      RunCase({s, mixed, 0, splits, q_bf16, kv_bf16}, ++seed);
    }
    // Sliding window over pruned and over full tables.
    RunCase({s,
             {{1, SeqSpec::kWindowed},
              {130, SeqSpec::kWindowed},
              {900, SeqSpec::kAll},
              {64, SeqSpec::kWindowed}},
             100,
             0,
             q_bf16,
             kv_bf16},
            ++seed);
  }
  // Long contexts: many splits, and a single sequence (one CTA per KV head without splits).
  RunCase(
      {{8, 2, 128, 128}, {{4097, SeqSpec::kAll}, {2500, SeqSpec::kSparse}}, 0, 0, q_bf16, kv_bf16},
      ++seed);
  RunCase({{8, 2, 128, 128}, {{4097, SeqSpec::kAll}}, 0, 7, q_bf16, kv_bf16}, ++seed);
  RunCase({{8, 8, 64, 64}, {{3000, SeqSpec::kWindowed}}, 1024, 0, q_bf16, kv_bf16}, ++seed);
  // Many sequences: no splits chosen automatically.
  std::vector<SeqSpec> many;
  for (int i = 0; i < 70; ++i) many.push_back({1 + (i * 37) % 300, SeqSpec::kAll});
  RunCase({{4, 2, 64, 64}, many, 0, 0, q_bf16, kv_bf16}, ++seed);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, PagedAttentionTest,
                         ::testing::Values(std::make_pair(false, false),
                                           std::make_pair(false, true), std::make_pair(true, true),
                                           std::make_pair(true, false)),
                         [](const ::testing::TestParamInfo<std::pair<bool, bool>>& i) {
                           return std::string(i.param.first ? "QBf16" : "QF32") +
                                  (i.param.second ? "KvBf16" : "KvF32");
                         });

// Small instances of every paged-attention path, sized for compute-sanitizer (racecheck is
// slow): scripts/device_run.sh runs the sanitizers with --gtest_filter='*Sanitizer*'.
TEST_F(GpuTest, SmallPagedAttentionForSanitizers) {
  const std::vector<SeqSpec> seqs = {
      {1, SeqSpec::kAll}, {130, SeqSpec::kSparse}, {0, SeqSpec::kEmpty}, {200, SeqSpec::kAll}};
  RunCase({{8, 2, 64, 64}, seqs, 0, 3, false, true}, 1);   // splits + combine, GQA 4
  RunCase({{4, 4, 32, 32}, seqs, 0, 1, false, false}, 2);  // one split, MHA
  RunCase({{12, 1, 40, 160}, {{150, SeqSpec::kWindowed}, {70, SeqSpec::kAll}}, 100, 0, true, true},
          3);  // two CTAs of heads, dv > 128, window
  RunCase({{3, 1, 36, 20}, {{90, SeqSpec::kAll}}, 0, 2, true, true}, 4);  // element-wise copies
  AttnCase rows{{8, 2, 64, 64}, {{300, SeqSpec::kAll}, {1, SeqSpec::kAll}}, 100, 4, false, true};
  rows.shuffle_rows = true;
  rows.extra_rows = 2;
  rows.pad_blocks = 3;
  RunCase(rows, 5);                // table_rows, untrimmed window, empty splits
  for (const int v : {1, 3, 6}) {  // CUDA cores; tensor cores t64s3, t32s4
    AttnCase c{{16, 2, 128, 128}, seqs, 100, 2, false, true};
    c.variant = v;
    RunCase(c, 6 + v);
  }
  // Value-column slices (2 and 4 warps per token slice) at head dim 256 and 64, automatic
  // splits, also with S split over the column warps and evict_first copies ("s", "e"); the
  // CUDA-core kernel with splits for whole waves over fp32 blocks.
  uint32_t seed = 20;
  for (const char* name :
       {"t64s3w1c2", "t32s6w1c4", "t64s3wSc2", "t64s3w1c2se", "t32s3w1c2se", "t64s3w1c4se"}) {
    AttnCase c{{16, 2, 256, 256}, seqs, 0, 0, true, true};
    c.variant = VariantByName(name);
    RunCase(c, ++seed);
    AttnCase m{{8, 2, 64, 64}, seqs, 100, 0, false, true};
    m.variant = c.variant;
    RunCase(m, ++seed);
  }
  for (const char* name : {"cc_w1", "cc_r3w1"}) {  // cc_r3w1: the 32-token cp.async ring
    AttnCase cc{{8, 2, 128, 128}, seqs, 100, 0, false, false};
    cc.variant = VariantByName(name);
    RunCase(cc, ++seed);
    cc.num_splits = 3;
    cc.q_bf16 = true;
    RunCase(cc, ++seed);
  }
}

// table_rows: shuffled rows, and tables with more rows than sequences (decoy rows), with
// automatic and forced splits, with and without block_chunks.
TEST_F(GpuTest, PagedAttentionTableRows) {
  const std::vector<SeqSpec> mixed = {{1, SeqSpec::kAll},    {700, SeqSpec::kSparse},
                                      {0, SeqSpec::kEmpty},  {129, SeqSpec::kAll},
                                      {2000, SeqSpec::kAll}, {64, SeqSpec::kAll}};
  const std::vector<SeqSpec> all = {
      {300, SeqSpec::kAll}, {1, SeqSpec::kAll}, {1500, SeqSpec::kAll}};
  uint32_t seed = 500;
  for (const bool kv_bf16 : {false, true}) {
    for (const int splits : {1, 0, 4}) {
      AttnCase c{{8, 2, 128, 128}, mixed, 0, splits, false, kv_bf16};
      c.shuffle_rows = true;
      RunCase(c, ++seed);
      c.extra_rows = 5;  // more rows than sequences
      RunCase(c, ++seed);
      c.shuffle_rows = false;  // identity rows, still through table_rows
      RunCase(c, ++seed);
      AttnCase n{{16, 2, 64, 64}, all, 0, splits, false, kv_bf16};
      n.shuffle_rows = true;
      n.extra_rows = 2;
      n.null_chunks = true;
      RunCase(n, ++seed);
    }
  }
}

// Device-side split boundaries: one batch with very unequal lengths (1 block next to 500
// blocks), automatic and forced splits; every sequence splits its own entries.
TEST_F(GpuTest, PagedAttentionUnequalLengthsSplitPerSequence) {
  const std::vector<SeqSpec> seqs = {
      {64, SeqSpec::kAll}, {500 * 64, SeqSpec::kAll}, {1, SeqSpec::kAll}, {37, SeqSpec::kAll}};
  uint32_t seed = 600;
  for (const bool kv_bf16 : {false, true}) {
    for (const int splits : {0, 1, 16, 64}) {
      RunCase({{8, 2, 128, 128}, seqs, 0, splits, false, kv_bf16}, ++seed);
      AttnCase c{{16, 2, 256, 256}, seqs, 0, splits, true, kv_bf16};
      c.shuffle_rows = true;
      c.null_chunks = true;
      RunCase(c, ++seed);
    }
  }
}

// More splits than a sequence has blocks (splits that get no block: m = −inf, l = 0 in the
// combine), and tables wider than any sequence needs (pad_blocks).
TEST_F(GpuTest, PagedAttentionMoreSplitsThanBlocks) {
  const std::vector<SeqSpec> seqs = {
      {1, SeqSpec::kAll}, {100, SeqSpec::kAll}, {0, SeqSpec::kEmpty}, {200, SeqSpec::kSparse}};
  uint32_t seed = 700;
  for (const bool kv_bf16 : {false, true}) {
    for (const int splits : {3, 8, 40}) {
      AttnCase c{{8, 2, 64, 64}, seqs, 0, splits, false, kv_bf16};
      c.pad_blocks = 37;
      RunCase(c, ++seed);
      c.pad_blocks = 0;  // splits clamped to max_blocks (4), still more than most sequences'
      RunCase(c, ++seed);
    }
    AttnCase w{{8, 2, 128, 128}, {{5000, SeqSpec::kAll}, {3, SeqSpec::kAll}}, 64, 0, false,
               kv_bf16};  // a window of one or two blocks, automatic splits
    w.pad_blocks = 10;
    RunCase(w, ++seed);
  }
}

// Sliding window over untrimmed tables (every chunk kept, as persistent per-slot tables are):
// the kernel itself skips the entries before kv_len − window; with and without block_chunks,
// sparse tables, windows that do and do not align with blocks, splits.
TEST_F(GpuTest, PagedAttentionWindowSkipsUntrimmedEntries) {
  uint32_t seed = 800;
  for (const bool kv_bf16 : {false, true}) {
    for (const int window : {1, 64, 100, 256, 4096}) {
      for (const int splits : {0, 1, 5}) {
        const std::vector<SeqSpec> all = {{6000, SeqSpec::kAll},
                                          {65, SeqSpec::kAll},
                                          {4200, SeqSpec::kAll},
                                          {window, SeqSpec::kAll}};
        AttnCase c{{8, 2, 128, 128}, all, window, splits, false, kv_bf16};
        c.null_chunks = true;
        c.shuffle_rows = true;
        RunCase(c, ++seed);
        c.null_chunks = false;
        c.seqs[1].table = SeqSpec::kSparse;
        c.seqs[2].table = SeqSpec::kSparse;
        RunCase(c, ++seed);
      }
    }
  }
}

// Every kernel variant (CUDA cores; tensor-core tilings, with their own split choices) on the
// shapes that take the tensor-core path (bf16 blocks, head dims multiples of 16) and one that
// does not, with windows, sparse tables, table_rows and forced splits.
TEST_F(GpuTest, PagedAttentionEveryVariant) {
  const std::vector<AttnShape> shapes = {
      {8, 2, 128, 128},   // GQA 4
      {16, 2, 128, 128},  // GQA 8 (the hybrid's shape)
      {4, 4, 64, 64},     // MHA
      {12, 1, 96, 96},    // 12 heads per KV head: two CTAs of heads, dims < kD
      {16, 2, 256, 256},  // largest head dim
      {6, 3, 48, 32},     // dk != dv
      {3, 1, 36, 20},     // not multiples of 16: CUDA cores whatever the variant
  };
  const std::vector<SeqSpec> mixed = {
      {1, SeqSpec::kAll},       {63, SeqSpec::kAll},  {64, SeqSpec::kAll}, {65, SeqSpec::kSparse},
      {1000, SeqSpec::kSparse}, {0, SeqSpec::kEmpty}, {777, SeqSpec::kAll}};
  uint32_t seed = 900;
  for (int v = 0; kernels::PagedAttentionDecodeVariantName(v) != nullptr; ++v) {
    for (const AttnShape& s : shapes) {
      for (const bool q_bf16 : {false, true}) {
        AttnCase c{s, mixed, 0, 0, q_bf16, true};
        c.variant = v;
        RunCase(c, ++seed);
        c.num_splits = 1;
        c.shuffle_rows = true;
        RunCase(c, ++seed);
        AttnCase w{s,      {{3000, SeqSpec::kAll}, {100, SeqSpec::kSparse}, {700, SeqSpec::kAll}},
                   200,    0,
                   q_bf16, true};
        w.variant = v;
        w.num_splits = 5;
        RunCase(w, ++seed);
      }
    }
    // fp32 blocks (the exactness mode: always the CUDA-core kernel) for the default and the
    // CUDA-core variants (their own split plans): odd lengths, table_rows, windows, automatic
    // splits and more splits than blocks.
    if (v != 0 && !IsCudaCoreVariant(v)) continue;
    for (const AttnShape& s : {AttnShape{16, 2, 128, 128}, AttnShape{4, 4, 64, 64},
                               AttnShape{16, 2, 256, 256}, AttnShape{3, 1, 36, 20}}) {
      AttnCase c{s, mixed, 0, 0, false, false};
      c.variant = v;
      RunCase(c, ++seed);
      c.shuffle_rows = true;
      c.q_bf16 = true;
      RunCase(c, ++seed);
      AttnCase w{s,     {{3000, SeqSpec::kAll}, {100, SeqSpec::kSparse}, {700, SeqSpec::kAll}},
                 200,   0,
                 false, false};
      w.variant = v;
      RunCase(w, ++seed);
      w.num_splits = 40;  // more than the window's blocks
      w.pad_blocks = 7;
      RunCase(w, ++seed);
    }
  }
}

TEST_F(GpuTest, PagedAttentionRejectsBadArguments) {
  kernels::PagedAttentionDecodeParams p;
  EXPECT_EQ(kernels::PagedAttentionDecode(p, nullptr), 0);  // no sequences
  p.num_seqs = 1;
  EXPECT_EQ(kernels::PagedAttentionDecode(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
  DeviceBuffer d(1 << 20);
  ASSERT_TRUE(d.ok());
  p.num_heads = 6;
  p.num_kv_heads = 4;  // does not divide
  p.dk = p.dv = 64;
  p.q = p.kv = p.out = d.get();
  p.block_table = p.num_blocks = p.kv_len = d.as<int32_t>();
  p.q_stride = p.out_stride = 6 * 64;
  p.block_stride = 64 * 4 * 128;
  EXPECT_EQ(kernels::PagedAttentionDecode(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
  p.num_kv_heads = 3;
  p.block_stride = 64 * 3 * 128 - 1;  // too small
  EXPECT_EQ(kernels::PagedAttentionDecode(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
  p.block_stride = 64 * 3 * 128;
  p.variant = -1;  // no such variant
  EXPECT_EQ(kernels::PagedAttentionDecode(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
}

}  // namespace
}  // namespace hyla
