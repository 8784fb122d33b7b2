// The kernels of the CUDA softmax attention layer and the layer itself against the CPU reference:
//   Rope                  vs cpu::ApplyRope with cpu::AttentionRopeInvFreq (default, partial,
//                         llama3), large positions, k-only;
//   KvAppend              vs the CPU block layout (cpu_layer.h BlockKey / BlockValue), fp32 and
//                         bf16 blocks, skipped rows, bitwise;
//   PagedAttentionPrefill vs a direct softmax attention written as the CPU layer's AttendOne
//                         (cpu::Dot · scale over the visible positions in table order,
//                         cpu::Softmax, Σ p·v): GQA groups 1..80, head dims 16..256, starts in
//                         mid-block, windows, sparse and window-pruned tables, several sequences
//                         per launch, random tile splits, fp32 and bf16 KV; the tensor-core
//                         path (bf16 KV, head dims 64, 128, 256) and its fallbacks;
//   CreateCudaAttentionLayer vs cpu::CreateAttentionLayer step by step over the same sequences
//                         (prefill, decode, mixed batches, chunked prefill, windows with block
//                         drops, the per-sequence cap evicting mid-step, a tight block pool,
//                         forks with copy-on-write), outputs, block tables and KV contents.
// Bounds: fp32 1e-4, bf16 KV with fp32 queries 1e-4 (the reference reads the rounded KV; the
// tensor-core path, which rounds q·scale and the probabilities to bf16, 1e-2), bf16
// layer (bf16 weights and KV) 3e-2 against the fp32 CPU layer (max|diff| / max|ref|).
// Label gpu; skipped without a CUDA device.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "runtime/base/float16.h"
#include "runtime/base/thread_pool.h"
#include "runtime/cpu/cpu_layer.h"
#include "runtime/cpu/ops.h"
#include "runtime/cuda/cuda_layer.h"
#include "runtime/cuda/device_context.h"
#include "runtime/cuda/gemm.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/safetensors.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"
#include "tests/gpu/gpu_test_util.h"

namespace hyla {
namespace {

using gpu_test::ExpectClose;
using gpu_test::GpuTest;
using gpu_test::Normal;
using gpu_test::ToDevice;
using gpu_test::ToHost;
using TestBuffer = gpu_test::DeviceBuffer;

constexpr int kBlock = 64;

// ---- Rope ------------------------------------------------------------------------------------

struct RopeCase {
  int rows, q_heads, k_heads, head_dim, rotary_dim;
  float theta;
  bool llama3;
  int max_pos;
  bool packed = false;  // q|k|v rows as the attention layer has them (float4-aligned strides)
};

void RunRope(const RopeCase& c, uint32_t seed,
             kernels::RopeVariant variant = kernels::RopeVariant::kAuto) {
  SCOPED_TRACE(absl::StrCat("rope rows ", c.rows, " heads ", c.q_heads, "/", c.k_heads, " hd ",
                            c.head_dim, " rotary ", c.rotary_dim, c.llama3 ? " llama3" : "",
                            c.packed ? " packed" : "", " variant ", static_cast<int>(variant)));
  std::mt19937 rng(seed);
  AttentionLayerConfig a;
  a.head_dim = c.head_dim;
  a.rotary_dim = c.rotary_dim;
  a.rope_theta = c.theta;
  if (c.llama3) {
    a.rope_type = RopeType::kLlama3;
    a.rope_factor = 8.0;
    a.rope_low_freq_factor = 1.0;
    a.rope_high_freq_factor = 4.0;
    a.rope_original_max_position_embeddings = 8192;
  }
  const std::vector<float> inv = cpu::AttentionRopeInvFreq(a);
  const int64_t q_stride = c.packed ? int64_t{c.q_heads + 2 * c.k_heads} * c.head_dim
                                    : int64_t{c.q_heads} * c.head_dim + 2;
  const int64_t k_stride = c.packed ? q_stride : int64_t{c.k_heads} * c.head_dim + 1;
  std::vector<float> q = Normal(static_cast<size_t>(c.rows * q_stride), &rng, 0.0f, 1.0f);
  std::vector<float> k = Normal(static_cast<size_t>(c.rows * k_stride), &rng, 0.0f, 1.0f);
  std::vector<int32_t> pos(c.rows);
  std::uniform_int_distribution<int> pd(0, c.max_pos);
  for (int r = 0; r < c.rows; ++r) pos[r] = r == 0 ? 0 : r == 1 ? c.max_pos : pd(rng);

  std::vector<float> want_q = q, want_k = k;
  for (int r = 0; r < c.rows; ++r) {
    for (int h = 0; h < c.q_heads; ++h) {
      cpu::ApplyRope(want_q.data() + r * q_stride + h * c.head_dim, c.rotary_dim, pos[r],
                     inv.data());
    }
    for (int h = 0; h < c.k_heads; ++h) {
      cpu::ApplyRope(want_k.data() + r * k_stride + h * c.head_dim, c.rotary_dim, pos[r],
                     inv.data());
    }
  }
  TestBuffer d_q = ToDevice(q), d_k = ToDevice(k), d_inv = ToDevice(inv), d_pos = ToDevice(pos);
  ASSERT_TRUE(d_q.ok() && d_k.ok() && d_inv.ok() && d_pos.ok());
  kernels::RopeParams p;
  p.rows = c.rows;
  p.head_dim = c.head_dim;
  p.rotary_dim = c.rotary_dim;
  p.q = c.q_heads > 0 ? d_q.as<float>() : nullptr;
  p.q_stride = q_stride;
  p.q_heads = c.q_heads;
  p.k = c.k_heads > 0 ? d_k.as<float>() : nullptr;
  p.k_stride = k_stride;
  p.k_heads = c.k_heads;
  p.inv_freq = d_inv.as<float>();
  p.row_pos = d_pos.as<int32_t>();
  p.variant = variant;
  HYLA_ASSERT_LAUNCH_OK(kernels::Rope(p, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ExpectClose(ToHost<float>(d_q, q.size()), want_q, 1e-4, "rope q");
  ExpectClose(ToHost<float>(d_k, k.size()), want_k, 1e-4, "rope k");
}

TEST_F(GpuTest, RopeMatchesCpu) {
  uint32_t seed = 10;
  RunRope({37, 6, 2, 80, 80, 10000.0f, false, 5000}, ++seed);       // full rotary, odd rows
  RunRope({50, 8, 2, 64, 32, 1000000.0f, false, 131072}, ++seed);   // partial, long positions
  RunRope({19, 4, 1, 128, 128, 500000.0f, true, 100000}, ++seed);   // llama3 scaling
  RunRope({7, 3, 3, 18, 10, 10000.0f, false, 300}, ++seed);         // odd head dim, partial
  RunRope({300, 16, 8, 256, 256, 10000.0f, false, 40000}, ++seed);  // large head dim
  RunRope({11, 0, 2, 32, 32, 10000.0f, false, 1000}, ++seed);       // k only
  RunRope({11, 2, 0, 32, 16, 10000.0f, false, 1000}, ++seed);       // q only
}

// Every kernel mapping (kernels::RopeVariant) on the cases above and on q|k rows packed as the
// attention layer has them (float4 accesses allowed: the vec4 kernel runs), the qwen3next-1b
// decode shape among them.
TEST_F(GpuTest, RopeVariantsMatchCpu) {
  const RopeCase cases[] = {
      {37, 6, 2, 80, 80, 10000.0f, false, 5000},
      {50, 8, 2, 64, 32, 1000000.0f, false, 131072},
      {7, 3, 3, 18, 10, 10000.0f, false, 300},
      {11, 0, 2, 32, 32, 10000.0f, false, 1000},
      {64, 16, 2, 128, 128, 10000000.0f, false, 70000, true},  // qwen3next-1b decode
      {19, 4, 1, 128, 128, 500000.0f, true, 100000, true},     // llama3 scaling, packed
      {5, 3, 1, 64, 32, 10000.0f, false, 131072, true},        // partial, packed
      {9, 0, 3, 64, 64, 10000.0f, false, 4000, true},          // k only, packed
      {3, 2, 1, 1200, 1200, 10000.0f, false, 4000, true},      // 600 pairs: scalar runs per element
  };
  uint32_t seed = 40;
  for (const kernels::RopeVariant v :
       {kernels::RopeVariant::kPerElement, kernels::RopeVariant::kSharedAngleScalar,
        kernels::RopeVariant::kSharedAngleVec4, kernels::RopeVariant::kAuto}) {
    for (const RopeCase& c : cases) RunRope(c, ++seed, v);
  }
}

// ---- KvAppend --------------------------------------------------------------------------------

void RunKvAppend(int rows, int hkv, int dk, int dv, bool bf16, uint32_t seed) {
  SCOPED_TRACE(absl::StrCat("kv_append rows ", rows, " Hkv ", hkv, " dk ", dk, " dv ", dv,
                            bf16 ? " bf16" : " f32"));
  std::mt19937 rng(seed);
  const int pool_blocks = rows / 16 + 3;
  const int64_t kw = int64_t{hkv} * dk, vw = int64_t{hkv} * dv;
  const int64_t block_stride = kBlock * (kw + vw) + 24;  // a wider stream's blocks
  // Every row gets a distinct (block, token); every 7th row is skipped.
  std::vector<int32_t> slots(static_cast<size_t>(pool_blocks) * kBlock);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  std::vector<int32_t> row_block(rows), row_pos(rows);
  for (int r = 0; r < rows; ++r) {
    row_block[r] = r % 7 == 3 ? -1 : slots[r] / kBlock;
    row_pos[r] = slots[r] % kBlock + kBlock * static_cast<int>(rng() % 1000);
  }
  const int64_t k_stride = kw + 3, v_stride = vw + 1;
  std::vector<float> k = Normal(static_cast<size_t>(rows * k_stride), &rng, 0.0f, 1.0f);
  std::vector<float> v = Normal(static_cast<size_t>(rows * v_stride), &rng, 0.0f, 1.0f);

  // Expected pool: 0xFF bytes (the poison of TestBuffer) except the written elements.
  const size_t es = bf16 ? 2 : 4;
  const size_t pool_elems = static_cast<size_t>(pool_blocks * block_stride);
  std::vector<uint8_t> want(pool_elems * es, 0xFF);
  std::vector<float> want_written, got_written;
  std::vector<size_t> written;
  auto put = [&](size_t index, float x) {
    if (bf16) {
      const uint16_t b = FloatToBf16(x);
      std::memcpy(want.data() + index * 2, &b, 2);
      want_written.push_back(Bf16ToFloat(b));
    } else {
      std::memcpy(want.data() + index * 4, &x, 4);
      want_written.push_back(x);
    }
    written.push_back(index);
  };
  for (int r = 0; r < rows; ++r) {
    if (row_block[r] < 0) continue;
    const int64_t base = row_block[r] * block_stride;
    const int t = row_pos[r] % kBlock;
    for (int64_t e = 0; e < kw; ++e) put(base + t * kw + e, k[r * k_stride + e]);
    for (int64_t e = 0; e < vw; ++e) {
      put(base + kBlock * kw + t * vw + e, v[r * v_stride + e]);
    }
  }

  TestBuffer d_pool(pool_elems * es);
  TestBuffer d_k = ToDevice(k), d_v = ToDevice(v), d_blk = ToDevice(row_block),
             d_pos = ToDevice(row_pos);
  ASSERT_TRUE(d_pool.ok() && d_k.ok() && d_v.ok() && d_blk.ok() && d_pos.ok());
  kernels::KvAppendParams p;
  p.rows = rows;
  p.num_kv_heads = hkv;
  p.dk = dk;
  p.dv = dv;
  p.k = d_k.as<float>();
  p.k_stride = k_stride;
  p.v = d_v.as<float>();
  p.v_stride = v_stride;
  p.row_block = d_blk.as<int32_t>();
  p.row_pos = d_pos.as<int32_t>();
  p.kv_dtype = bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
  p.kv = d_pool.get();
  p.block_stride = block_stride;
  HYLA_ASSERT_LAUNCH_OK(kernels::KvAppend(p, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<uint8_t> got = ToHost<uint8_t>(d_pool, want.size());
  int64_t mismatches = 0;
  for (size_t i = 0; i < want.size(); ++i) mismatches += got[i] != want[i];
  EXPECT_EQ(mismatches, 0) << "bytes of the pool differ from the CPU block layout";
  for (size_t index : written) {
    if (bf16) {
      uint16_t b;
      std::memcpy(&b, got.data() + index * 2, 2);
      got_written.push_back(Bf16ToFloat(b));
    } else {
      float x;
      std::memcpy(&x, got.data() + index * 4, 4);
      got_written.push_back(x);
    }
  }
  ExpectClose(got_written, want_written, 0.0, bf16 ? "kv_append bf16" : "kv_append f32");
}

TEST_F(GpuTest, KvAppendMatchesCpuBlockLayout) {
  uint32_t seed = 100;
  for (const bool bf16 : {false, true}) {
    RunKvAppend(1, 1, 16, 16, bf16, ++seed);
    RunKvAppend(77, 2, 64, 64, bf16, ++seed);
    RunKvAppend(300, 8, 128, 128, bf16, ++seed);
    RunKvAppend(45, 3, 40, 24, bf16, ++seed);  // dk != dv
    RunKvAppend(20, 2, 256, 256, bf16, ++seed);
  }
}

// ---- PagedAttentionPrefill -------------------------------------------------------------------

struct PrefillSeq {
  int start;  // tokens already in the cache
  int n;      // new query rows
  enum Table { kAll, kSparse, kWindowed } table = kAll;
};

struct PrefillCase {
  int hq, hkv, dk, dv;
  std::vector<PrefillSeq> seqs;
  int window = 0;
  bool kv_bf16 = false;
  bool random_tiles = false;  // random tile lengths (<= the maximum) in random order
  bool odd_stride = false;    // block stride not a multiple of 8 elements (no tensor cores)
};

std::string PrefillName(const PrefillCase& c) {
  return absl::StrCat("Hq ", c.hq, " Hkv ", c.hkv, " dk ", c.dk, " dv ", c.dv, " window ", c.window,
                      c.kv_bf16 ? " kv bf16" : " kv f32", c.random_tiles ? " random tiles" : "",
                      c.odd_stride ? " odd block stride" : "");
}

void RunPrefill(const PrefillCase& c, uint32_t seed) {
  SCOPED_TRACE(PrefillName(c));
  std::mt19937 rng(seed);
  const int num_seqs = static_cast<int>(c.seqs.size());
  const int group = c.hq / c.hkv;
  const float scale = static_cast<float>(std::pow(static_cast<double>(c.dk), -0.5));
  const int tile_rows = kernels::PagedAttentionPrefillTileRows(c.hq, c.hkv, c.dk, c.dv);
  ASSERT_GT(tile_rows, 0);

  // Tables: ascending chunks; the chunks of the new rows are always present.
  std::vector<std::vector<int32_t>> chunks(num_seqs);
  int max_blocks = 1, total_blocks = 0;
  for (int i = 0; i < num_seqs; ++i) {
    const PrefillSeq& s = c.seqs[i];
    const int end = s.start + s.n;
    for (int ch = 0; ch * kBlock < end; ++ch) {
      bool keep = true;
      if (s.table == PrefillSeq::kSparse) keep = (ch + 1) * kBlock > s.start || rng() % 3 != 0;
      if (s.table == PrefillSeq::kWindowed && c.window > 0) {
        keep = (ch + 1) * kBlock > std::max(0, s.start + 1 - c.window);
      }
      if (keep) chunks[i].push_back(ch);
    }
    max_blocks = std::max<int>(max_blocks, static_cast<int>(chunks[i].size()));
    total_blocks += static_cast<int>(chunks[i].size());
  }
  const int pool_blocks = total_blocks + 2;
  std::vector<int32_t> perm(pool_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> table(static_cast<size_t>(num_seqs) * max_blocks, -1);
  std::vector<int32_t> table_chunks(table.size(), -1), num_blocks(num_seqs);
  const int64_t block_elems = int64_t{kBlock} * c.hkv * (c.dk + c.dv);
  const int64_t block_stride = block_elems + (c.odd_stride ? 3 : 8);
  const int64_t v_off = int64_t{kBlock} * c.hkv * c.dk;
  // Written positions get N(0, 1); the rest of every block stays NaN: a leak shows.
  std::vector<float> kv(static_cast<size_t>(pool_blocks * block_stride), NAN);
  int next = 0;
  for (int i = 0; i < num_seqs; ++i) {
    const int end = c.seqs[i].start + c.seqs[i].n;
    num_blocks[i] = static_cast<int32_t>(chunks[i].size());
    for (size_t e = 0; e < chunks[i].size(); ++e) {
      const int32_t b = perm[next++];
      table[i * max_blocks + e] = b;
      table_chunks[i * max_blocks + e] = chunks[i][e];
      float* block = kv.data() + b * block_stride;
      for (int t = 0; t < kBlock && chunks[i][e] * kBlock + t < end; ++t) {
        std::vector<float> key = Normal(static_cast<size_t>(c.hkv * c.dk), &rng, 0.0f, 1.0f);
        std::vector<float> val = Normal(static_cast<size_t>(c.hkv * c.dv), &rng, 0.0f, 1.0f);
        std::copy(key.begin(), key.end(), block + int64_t{t} * c.hkv * c.dk);
        std::copy(val.begin(), val.end(), block + v_off + int64_t{t} * c.hkv * c.dv);
      }
    }
  }
  std::vector<uint16_t> kv_bits;
  if (c.kv_bf16) kv_bits = gpu_test::RoundToBf16(&kv);

  // Rows and queries (row stride padded by 3).
  std::vector<int32_t> row_pos, row_seq;
  std::vector<int> row_begin(num_seqs);
  for (int i = 0; i < num_seqs; ++i) {
    row_begin[i] = static_cast<int>(row_pos.size());
    for (int r = 0; r < c.seqs[i].n; ++r) {
      row_pos.push_back(c.seqs[i].start + r);
      row_seq.push_back(i);
    }
  }
  const int rows = static_cast<int>(row_pos.size());
  const int64_t q_stride = int64_t{c.hq} * c.dk + 3;
  std::vector<float> q = Normal(static_cast<size_t>(rows * q_stride), &rng, 0.0f, 1.0f);

  // Reference, as AttendOne.
  std::vector<float> want(static_cast<size_t>(rows) * c.hq * c.dv, 0.0f);
  std::vector<float> scores;
  std::vector<const float*> values;
  for (int r = 0; r < rows; ++r) {
    const int i = row_seq[r];
    const int pos = row_pos[r];
    const int lo = c.window > 0 ? std::max(0, pos + 1 - c.window) : 0;
    for (int h = 0; h < c.hq; ++h) {
      const int kvh = h / group;
      const float* qh = q.data() + r * q_stride + int64_t{h} * c.dk;
      scores.clear();
      values.clear();
      for (int e = 0; e < num_blocks[i]; ++e) {
        const float* block = kv.data() + table[i * max_blocks + e] * block_stride;
        const int base = table_chunks[i * max_blocks + e] * kBlock;
        for (int t = 0; t < kBlock; ++t) {
          if (base + t < lo || base + t > pos) continue;
          scores.push_back(cpu::Dot(qh, block + (int64_t{t} * c.hkv + kvh) * c.dk, c.dk) * scale);
          values.push_back(block + v_off + (int64_t{t} * c.hkv + kvh) * c.dv);
        }
      }
      if (scores.empty()) continue;
      cpu::Softmax(scores.data(), static_cast<int64_t>(scores.size()));
      float* o = want.data() + (int64_t{r} * c.hq + h) * c.dv;
      for (size_t j = 0; j < scores.size(); ++j) {
        for (int d = 0; d < c.dv; ++d) o[d] += scores[j] * values[j][d];
      }
    }
  }

  // Tiles.
  std::vector<std::array<int32_t, 3>> tile_list;
  for (int i = 0; i < num_seqs; ++i) {
    for (int r = 0; r < c.seqs[i].n;) {
      int len = std::min(tile_rows, c.seqs[i].n - r);
      if (c.random_tiles) len = 1 + static_cast<int>(rng() % len);
      tile_list.push_back({i, row_begin[i] + r, len});
      r += len;
    }
  }
  if (c.random_tiles) std::shuffle(tile_list.begin(), tile_list.end(), rng);
  std::vector<int32_t> tiles;
  for (const auto& t : tile_list) tiles.insert(tiles.end(), t.begin(), t.end());

  TestBuffer d_kv = c.kv_bf16 ? ToDevice(kv_bits) : ToDevice(kv);
  TestBuffer d_q = ToDevice(q), d_table = ToDevice(table), d_chunks = ToDevice(table_chunks);
  TestBuffer d_nb = ToDevice(num_blocks), d_pos = ToDevice(row_pos), d_tiles = ToDevice(tiles);
  const int64_t out_stride = int64_t{c.hq} * c.dv + 5;
  TestBuffer d_out(static_cast<size_t>(rows * out_stride) * sizeof(float));
  ASSERT_TRUE(d_kv.ok() && d_q.ok() && d_table.ok() && d_chunks.ok() && d_nb.ok() && d_pos.ok() &&
              d_tiles.ok() && d_out.ok());
  kernels::PagedAttentionPrefillParams p;
  p.num_heads = c.hq;
  p.num_kv_heads = c.hkv;
  p.dk = c.dk;
  p.dv = c.dv;
  p.kv_dtype = c.kv_bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
  p.q = d_q.as<float>();
  p.q_stride = q_stride;
  p.kv = d_kv.get();
  p.block_stride = block_stride;
  p.block_table = d_table.as<int32_t>();
  p.block_chunks = d_chunks.as<int32_t>();
  p.num_blocks = d_nb.as<int32_t>();
  p.max_blocks = max_blocks;
  p.row_pos = d_pos.as<int32_t>();
  p.tiles = d_tiles.as<int32_t>();
  p.num_tiles = static_cast<int>(tile_list.size());
  p.window = c.window;
  p.scale = scale;
  p.out = d_out.as<float>();
  p.out_stride = out_stride;
  // The tensor-core path: bf16 KV, dk == dv in {64, 128, 256}, 16-byte aligned blocks.
  const bool tensor_cores = kernels::PagedAttentionPrefillUsesTensorCores(p);
  EXPECT_EQ(tensor_cores, kernels::kPagedAttentionPrefillTensorCores && c.kv_bf16 && c.dk == c.dv &&
                              (c.dk == 64 || c.dk == 128 || c.dk == 256) && !c.odd_stride);
  // Sentinels in the stride padding of out: the kernel must leave them.
  ASSERT_EQ(cudaMemset(d_out.get(), 0x7f, static_cast<size_t>(rows * out_stride) * sizeof(float)),
            cudaSuccess);
  HYLA_ASSERT_LAUNCH_OK(kernels::PagedAttentionPrefill(p, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> raw = ToHost<float>(d_out, static_cast<size_t>(rows * out_stride));
  float sentinel;
  std::memset(&sentinel, 0x7f, sizeof(sentinel));
  for (int r = 0; r < rows; ++r) {
    for (int64_t x = int64_t{c.hq} * c.dv; x < out_stride; ++x) {
      ASSERT_EQ(raw[r * out_stride + x], sentinel) << "row " << r << " padding " << x;
    }
  }
  std::vector<float> got;
  for (int r = 0; r < rows; ++r) {
    got.insert(got.end(), raw.begin() + r * out_stride,
               raw.begin() + r * out_stride + int64_t{c.hq} * c.dv);
  }
  // Tensor cores round q·scale and the probabilities to bf16 (FlashAttention-2): 1e-2.
  ExpectClose(got, want, tensor_cores ? 1e-2 : 1e-4,
              tensor_cores ? absl::StrCat("paged_attention_prefill kv bf16 tensor cores d ", c.dk)
              : c.kv_bf16  ? "paged_attention_prefill kv bf16"
                           : "paged_attention_prefill kv f32");
}

struct Shape4 {
  int hq, hkv, dk, dv;
};

class PagedAttentionPrefillTest : public GpuTest, public ::testing::WithParamInterface<bool> {};

TEST_P(PagedAttentionPrefillTest, MatchesCpuSoftmaxAttention) {
  const bool kv_bf16 = GetParam();
  uint32_t seed = kv_bf16 ? 5000 : 4000;
  const std::vector<Shape4> shapes = {
      {4, 4, 32, 32},     // MHA, 64 rows per tile
      {8, 2, 64, 64},     // GQA 4
      {16, 2, 128, 128},  // GQA 8
      {6, 2, 80, 80},     // GQA 3, head dim 80 (64 + 16)
      {8, 1, 256, 256},   // head dim 256 (32 query vectors per CTA), GQA 8
      {3, 1, 17, 17},     // odd head dim
      {12, 3, 64, 40},    // dk != dv
      {32, 2, 128, 128},  // GQA 16
      {80, 1, 16, 16},    // GQA 80: two CTAs of heads, one row per tile
  };
  const std::vector<PrefillSeq> mixed = {
      {0, 100}, {5, 1}, {63, 2}, {64, 64}, {130, 77, PrefillSeq::kSparse}, {1000, 33}, {7, 57}};
  for (const Shape4& s : shapes) {
    RunPrefill({s.hq, s.hkv, s.dk, s.dv, mixed, 0, kv_bf16, false}, ++seed);
    RunPrefill({s.hq, s.hkv, s.dk, s.dv, mixed, 0, kv_bf16, true}, ++seed);
    RunPrefill({s.hq,
                s.hkv,
                s.dk,
                s.dv,
                {{0, 150, PrefillSeq::kWindowed},
                 {200, 64, PrefillSeq::kWindowed},
                 {37, 1},
                 {500, 130},
                 {90, 3, PrefillSeq::kWindowed}},
                100,
                kv_bf16,
                false},
               ++seed);
  }
  // Windows below and at one block; window 1 (each row sees itself only).
  for (const int window : {1, 7, 64}) {
    RunPrefill({8,
                2,
                64,
                64,
                {{0, 200}, {61, 70, PrefillSeq::kWindowed}, {64, 1}},
                window,
                kv_bf16,
                window == 7},
               ++seed);
  }
  // A long single sequence: many tiles of one sequence, the decode-like tail of one row.
  RunPrefill({8, 2, 128, 128, {{0, 1100}, {2000, 1}}, 0, kv_bf16, false}, ++seed);
  RunPrefill({4, 4, 64, 64, {{300, 700, PrefillSeq::kSparse}}, 0, kv_bf16, false}, ++seed);
}

// The tensor-core path (bf16 KV, head dims 64, 128 and 256): GQA 1..64, causal edges inside tiles
// (mid-block starts, tiles straddling block borders, one-row tiles), windows below, at and above
// one block, sparse and window-pruned tables, many sequences per launch, random tile splits; an
// odd block stride falls back to the fp32 kernel.
TEST_F(GpuTest, PagedAttentionPrefillTensorCoresMatchCpu) {
  uint32_t seed = 7000;
  const std::vector<Shape4> shapes = {
      {8, 8, 64, 64},     // MHA: 64 rows per tile
      {8, 8, 128, 128},   // MHA
      {32, 8, 128, 128},  // GQA 4 (Llama-3 8B)
      {16, 2, 64, 64},    // GQA 8
      {32, 4, 128, 128},  // GQA 8
      {64, 1, 64, 64},    // GQA 64: one row per tile
      {48, 1, 128, 128},  // GQA 48: 2 rows (96 of 128 query vectors) per tile
      {8, 1, 256, 256},   // head dim 256 (Q in shared memory, 64 query vectors), GQA 8
      {4, 4, 256, 256},   // head dim 256, MHA
  };
  const std::vector<PrefillSeq> mixed = {
      {0, 100},   {5, 1},  {63, 2},    {64, 64}, {130, 77, PrefillSeq::kSparse},
      {1000, 33}, {7, 57}, {127, 129}, {31, 1}};
  for (const Shape4& s : shapes) {
    RunPrefill({s.hq, s.hkv, s.dk, s.dv, mixed, 0, true, false}, ++seed);
    RunPrefill({s.hq, s.hkv, s.dk, s.dv, mixed, 0, true, true}, ++seed);
    RunPrefill({s.hq,
                s.hkv,
                s.dk,
                s.dv,
                {{0, 150, PrefillSeq::kWindowed},
                 {200, 64, PrefillSeq::kWindowed},
                 {37, 1},
                 {500, 130},
                 {90, 3, PrefillSeq::kWindowed}},
                100,
                true,
                true},
               ++seed);
  }
  for (const int window : {1, 2, 63, 64, 65, 128, 300}) {
    for (const int d : {64, 128, 256}) {
      RunPrefill(
          {16,
           4,
           d,
           d,
           {{0, 200}, {61, 70, PrefillSeq::kWindowed}, {64, 1}, {333, 90, PrefillSeq::kWindowed}},
           window,
           true,
           window % 2 == 1},
          ++seed);
    }
  }
  // Long sequences (many table entries per tile; the benchmark's shape), a sparse long history.
  RunPrefill({32, 8, 128, 128, {{0, 1500}, {3000, 1}}, 0, true, false}, ++seed);
  RunPrefill({8, 8, 64, 64, {{300, 700, PrefillSeq::kSparse}}, 0, true, false}, ++seed);
  RunPrefill({32, 8, 128, 128, {{0, 600}}, 256, true, true}, ++seed);
  // Fallbacks: odd block stride, dk != dv, head dim 96 (fp32 kernel, bound 1e-4).
  RunPrefill({16, 4, 128, 128, mixed, 0, true, false, true}, ++seed);
  RunPrefill({8, 2, 256, 256, mixed, 0, true, true, true}, ++seed);
  RunPrefill({16, 4, 128, 64, mixed, 0, true, false}, ++seed);
  RunPrefill({16, 4, 96, 96, mixed, 0, true, false}, ++seed);
}

INSTANTIATE_TEST_SUITE_P(KvDtypes, PagedAttentionPrefillTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return std::string(i.param ? "KvBf16" : "KvF32");
                         });

// Host-only planning (runs without a device): tile sizes and the tensor-core path selection.
TEST(PagedAttentionPrefillPlan, TileRowsAndTensorCoreSelection) {
  const bool tc = kernels::kPagedAttentionPrefillTensorCores;
  const bool wide = tc && kernels::kPagedAttentionPrefillWideTiles;
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(32, 8, 128, 128), wide ? 32 : 16);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(4, 4, 64, 64), wide ? 128 : 64);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(80, 1, 64, 64), 1);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(15, 3, 128, 128), wide ? 25 : 12);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(4, 4, 256, 256), tc ? 64 : 32);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(4, 4, 80, 80), 64);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(4, 4, 32, 32), 64);
  alignas(16) static uint16_t pool[64];
  kernels::PagedAttentionPrefillParams p;
  p.num_heads = 32;
  p.num_kv_heads = 8;
  p.dk = p.dv = 128;
  p.kv_dtype = kernels::KernelDType::kBf16;
  p.kv = pool;
  p.block_stride = 64 * 8 * 256;
  EXPECT_EQ(kernels::PagedAttentionPrefillUsesTensorCores(p), tc);
  p.dk = p.dv = 64;
  EXPECT_EQ(kernels::PagedAttentionPrefillUsesTensorCores(p), tc);
  p.dk = p.dv = 256;
  EXPECT_EQ(kernels::PagedAttentionPrefillUsesTensorCores(p), tc);
  p.kv = pool + 1;  // 2-byte aligned
  EXPECT_FALSE(kernels::PagedAttentionPrefillUsesTensorCores(p));
  p.kv = pool;
  p.block_stride += 4;  // blocks 8-byte aligned only
  EXPECT_FALSE(kernels::PagedAttentionPrefillUsesTensorCores(p));
  p.block_stride -= 4;
  p.kv_dtype = kernels::KernelDType::kF32;
  EXPECT_FALSE(kernels::PagedAttentionPrefillUsesTensorCores(p));
  p.kv_dtype = kernels::KernelDType::kBf16;
  p.dv = 128;  // dk != dv
  EXPECT_FALSE(kernels::PagedAttentionPrefillUsesTensorCores(p));
  p.dk = p.dv = 96;
  EXPECT_FALSE(kernels::PagedAttentionPrefillUsesTensorCores(p));
}

TEST_F(GpuTest, AttentionKernelsRejectBadArguments) {
  const int bad = static_cast<int>(cudaErrorInvalidValue);
  TestBuffer d(1 << 20);
  ASSERT_TRUE(d.ok());
  kernels::PagedAttentionPrefillParams p;
  EXPECT_EQ(kernels::PagedAttentionPrefill(p, nullptr), 0);  // no tiles
  p.num_tiles = 1;
  EXPECT_EQ(kernels::PagedAttentionPrefill(p, nullptr), bad);
  p.num_heads = 8;
  p.num_kv_heads = 2;
  p.dk = p.dv = 300;  // above 256
  p.q = p.out = d.as<float>();
  p.kv = d.get();
  p.block_table = p.num_blocks = p.row_pos = p.tiles = d.as<int32_t>();
  p.q_stride = p.out_stride = 8 * 300;
  p.block_stride = 64 * 2 * 600;
  EXPECT_EQ(kernels::PagedAttentionPrefill(p, nullptr), bad);
  p.dk = p.dv = 64;
  p.block_stride = 64 * 2 * 128 - 1;  // too small
  EXPECT_EQ(kernels::PagedAttentionPrefill(p, nullptr), bad);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(6, 4, 64, 64), 0);
  // 128 query vectors per tile at dk == dv in {64, 128} (tensor-core tiles), 64 at 256, else 64
  // (32 above head dim 128).
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(8, 2, 64, 64),
            kernels::kPagedAttentionPrefillTensorCores && kernels::kPagedAttentionPrefillWideTiles
                ? 32
                : 16);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(8, 2, 96, 96), 16);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(8, 2, 128, 64), 16);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(8, 1, 256, 256),
            kernels::kPagedAttentionPrefillTensorCores ? 8 : 4);
  EXPECT_EQ(kernels::PagedAttentionPrefillTileRows(8, 1, 160, 160), 4);

  kernels::RopeParams r;
  EXPECT_EQ(kernels::Rope(r, nullptr), bad);  // head_dim 0
  r.head_dim = 16;
  r.rotary_dim = 7;  // odd
  EXPECT_EQ(kernels::Rope(r, nullptr), bad);
  r.rotary_dim = 16;
  EXPECT_EQ(kernels::Rope(r, nullptr), 0);  // no rows
  r.rows = 3;
  r.q_heads = 2;
  r.q = d.as<float>();
  r.q_stride = 31;  // < 2 · 16
  r.inv_freq = d.as<float>();
  r.row_pos = d.as<int32_t>();
  EXPECT_EQ(kernels::Rope(r, nullptr), bad);

  kernels::KvAppendParams a;
  EXPECT_EQ(kernels::KvAppend(a, nullptr), bad);  // no heads
  a.num_kv_heads = 1;
  a.dk = a.dv = 8;
  EXPECT_EQ(kernels::KvAppend(a, nullptr), 0);  // no rows
  a.rows = 2;
  EXPECT_EQ(kernels::KvAppend(a, nullptr), bad);  // null pointers
}

// ---- The layer -------------------------------------------------------------------------------

struct LayerSpec {
  std::string name;
  int hidden = 64;
  int heads = 4, kv_heads = 2, head_dim = 16, rotary_dim = 16;
  float theta = 10000.0f;
  bool llama3 = false;
  bool qk_norm = false, qkv_bias = false, o_bias = false;
  int window = 0;
};

TensorToWrite Tensor(const std::string& name, std::vector<int64_t> shape,
                     const std::vector<float>& v) {
  TensorToWrite t;
  t.name = name;
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  t.bytes.resize(v.size() * 4);
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

// One step: (sequence index, new rows) in batch order. A negative row count forks: sequence
// `index` becomes a fork of sequence -rows - 1 (on both stores) and the entry has no rows.
using LayerStep = std::vector<std::pair<int, int>>;

struct LayerScenario {
  std::string name;
  std::vector<LayerStep> steps;
  int64_t num_blocks = 256;
  int64_t cap_tokens = 0;  // per-stream cap (kEvictOldest)
};

// The CPU and the CUDA layer over one hand-made checkpoint, each with its own state store.
class LayerPair {
 public:
  void SetUp(const LayerSpec& spec, const LayerScenario& sc, cuda::Precision precision) {
    spec_ = spec;
    precision_ = precision;
    std::mt19937 rng(77);
    const int64_t qw = int64_t{spec.heads} * spec.head_dim;
    const int64_t kw = int64_t{spec.kv_heads} * spec.head_dim;
    const int64_t d = spec.hidden;
    prefix_ = "model.layers.0.self_attn.";
    const std::string& p = prefix_;
    const float ws = 1.0f / std::sqrt(static_cast<float>(d));
    std::vector<TensorToWrite> tensors = {
        Tensor(p + "q_proj.weight", {qw, d}, Normal(qw * d, &rng, 0.0f, ws)),
        Tensor(p + "k_proj.weight", {kw, d}, Normal(kw * d, &rng, 0.0f, ws)),
        Tensor(p + "v_proj.weight", {kw, d}, Normal(kw * d, &rng, 0.0f, ws)),
        Tensor(p + "o_proj.weight", {d, qw}, Normal(d * qw, &rng, 0.0f, ws))};
    if (spec.qkv_bias) {
      tensors.push_back(Tensor(p + "q_proj.bias", {qw}, Normal(qw, &rng, 0.0f, 0.3f)));
      tensors.push_back(Tensor(p + "k_proj.bias", {kw}, Normal(kw, &rng, 0.0f, 0.3f)));
      tensors.push_back(Tensor(p + "v_proj.bias", {kw}, Normal(kw, &rng, 0.0f, 0.3f)));
    }
    if (spec.o_bias) tensors.push_back(Tensor(p + "o_proj.bias", {d}, Normal(d, &rng, 0.0f, 0.3f)));
    if (spec.qk_norm) {
      tensors.push_back(
          Tensor(p + "q_norm.weight", {spec.head_dim}, Normal(spec.head_dim, &rng, 1.0f, 0.3f)));
      tensors.push_back(
          Tensor(p + "k_norm.weight", {spec.head_dim}, Normal(spec.head_dim, &rng, 1.0f, 0.3f)));
    }
    namespace fs = std::filesystem;
    const fs::path dir =
        fs::path(::testing::TempDir()) / absl::StrCat("hyla_cuda_attn_layer_", spec.name);
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream(dir / "config.json")
        << absl::StrCat(R"({"model_type": "llama", "vocab_size": 16, "hidden_size": )", d,
                        R"(, "intermediate_size": 32, "num_hidden_layers": 1, )",
                        R"("num_attention_heads": )", spec.heads, R"(, "num_key_value_heads": )",
                        spec.kv_heads, R"(, "head_dim": )", spec.head_dim, "}");
    ASSERT_TRUE(WriteSafetensors((dir / "model.safetensors").string(), tensors).ok());
    auto cpu_ck = Checkpoint::Open(dir.string());
    auto gpu_ck = Checkpoint::Open(dir.string());
    ASSERT_TRUE(cpu_ck.ok() && gpu_ck.ok()) << cpu_ck.status() << gpu_ck.status();
    cpu_ck_ = std::move(cpu_ck).value();
    gpu_ck_ = std::move(gpu_ck).value();

    config_ = cpu_ck_->config();
    AttentionLayerConfig& a = config_.layers[0].attention;
    ASSERT_EQ(a.head_dim, spec.head_dim);
    a.qk_norm = spec.qk_norm;
    a.qk_norm_eps = 1e-5f;
    a.qkv_bias = spec.qkv_bias;
    a.o_bias = spec.o_bias;
    a.rotary_dim = spec.rotary_dim;
    a.rope_theta = spec.theta;
    a.window_size = spec.window;
    if (spec.llama3) {
      a.rope_type = RopeType::kLlama3;
      a.rope_factor = 8.0;
      a.rope_low_freq_factor = 1.0;
      a.rope_high_freq_factor = 4.0;
      a.rope_original_max_position_embeddings = 64;  // the scaling bands fall in range
    }
    auto cpu_layout = StateLayout::Create(config_, DType::kF32);
    auto gpu_layout = StateLayout::Create(
        config_, precision == cuda::Precision::kF32 ? DType::kF32 : DType::kBF16);
    ASSERT_TRUE(cpu_layout.ok() && gpu_layout.ok());
    cpu_layout_.emplace(std::move(cpu_layout).value());
    gpu_layout_.emplace(std::move(gpu_layout).value());
    StateStoreOptions so;
    so.num_slots = 8;
    so.num_blocks = sc.num_blocks;
    so.max_kv_tokens_per_stream = sc.cap_tokens;
    so.cap_policy = KvCapPolicy::kEvictOldest;
    auto cs = StateStore::Create(*cpu_layout_, so);
    auto gs = StateStore::Create(*gpu_layout_, so);
    ASSERT_TRUE(cs.ok() && gs.ok());
    cpu_store_ = std::move(cs).value();
    gpu_store_ = std::move(gs).value();
    cpu_blocks_.assign(static_cast<size_t>(so.num_blocks * cpu_layout_->block_bytes()), 0);
    gpu_blocks_ = TestBuffer(static_cast<size_t>(so.num_blocks * gpu_layout_->block_bytes()));
    ASSERT_TRUE(gpu_blocks_.ok());

    cpu::CpuLayerArgs cargs;
    cargs.config = &config_;
    cargs.layer = 0;
    cargs.prefix = prefix_;
    cargs.checkpoint = cpu_ck_.get();
    cargs.layout = &*cpu_layout_;
    auto cl = cpu::CreateAttentionLayer(cargs);
    ASSERT_TRUE(cl.ok()) << cl.status();
    cpu_layer_ = std::move(cl).value();

    auto dev = cuda::DeviceContext::Create(0, size_t{256} << 20);
    ASSERT_TRUE(dev.ok()) << dev.status();
    dev_ = std::move(dev).value();
    weights_ = std::make_unique<cuda::DeviceWeights>(dev_.get(), precision);
    cuda::CudaLayerArgs args;
    args.config = &config_;
    args.layer = 0;
    args.prefix = prefix_;
    args.checkpoint = gpu_ck_.get();
    args.layout = &*gpu_layout_;
    args.dev = dev_.get();
    args.weights = weights_.get();
    auto gl = cuda::CreateCudaAttentionLayer(args);
    ASSERT_TRUE(gl.ok()) << gl.status();
    gpu_layer_ = std::move(gl).value();
    // The CUDA layer takes exactly the CPU layer's tensors.
    EXPECT_TRUE(gpu_ck_->CheckAllTaken().ok()) << gpu_ck_->CheckAllTaken();
  }

  void Run(const LayerScenario& sc) {
    std::mt19937 rng(1234);
    const int64_t d = spec_.hidden;
    const int stream = cpu_layout_->first_stream(0);
    ThreadPool pool(2);
    const double bound = precision_ == cuda::Precision::kF32 ? 1e-4 : 3e-2;
    const std::string tag = absl::StrCat(
        "attention layer ", precision_ == cuda::Precision::kF32 ? "f32" : "bf16", " out");

    for (size_t si = 0; si < sc.steps.size(); ++si) {
      SCOPED_TRACE(absl::StrCat(sc.name, " step ", si));
      const LayerStep& step = sc.steps[si];
      std::vector<cpu::CpuSeq> cseqs;
      cuda::CudaBatch batch;
      std::vector<int32_t> slots, row_seq, row_pos;
      batch.host_cu_seqlens.push_back(0);
      int64_t rows = 0;
      batch.all_decode = true;
      for (const auto& [index, n] : step) {
        if (n < 0) {  // fork
          const int parent = -n - 1;
          auto cf = cpu_store_->Fork(*cpu_seqs_[parent]);
          auto gf = gpu_store_->Fork(*gpu_seqs_[parent]);
          ASSERT_TRUE(cf.ok() && gf.ok());
          ASSERT_EQ(static_cast<size_t>(index), cpu_seqs_.size());
          cpu_seqs_.push_back(std::move(cf).value());
          gpu_seqs_.push_back(std::move(gf).value());
          continue;
        }
        while (cpu_seqs_.size() <= static_cast<size_t>(index)) {
          auto cn = cpu_store_->NewSequence();
          auto gn = gpu_store_->NewSequence();
          ASSERT_TRUE(cn.ok() && gn.ok());
          cpu_seqs_.push_back(std::move(cn).value());
          gpu_seqs_.push_back(std::move(gn).value());
        }
        SequenceState* cq = cpu_seqs_[index].get();
        SequenceState* gq = gpu_seqs_[index].get();
        ASSERT_EQ(cq->num_tokens, gq->num_tokens);
        cpu::CpuSeq c;
        c.seq = cq;
        c.start_pos = cq->num_tokens;
        c.row_begin = rows;
        c.num_rows = n;
        cseqs.push_back(c);
        cuda::CudaSeq g;
        g.seq = gq;
        g.start_pos = gq->num_tokens;
        g.row_begin = rows;
        g.num_rows = n;
        g.slot = gq->slot;
        batch.seqs.push_back(g);
        slots.push_back(gq->slot);
        for (int r = 0; r < n; ++r) {
          row_seq.push_back(static_cast<int32_t>(batch.seqs.size() - 1));
          row_pos.push_back(static_cast<int32_t>(gq->num_tokens + r));
        }
        rows += n;
        batch.host_cu_seqlens.push_back(static_cast<int32_t>(rows));
        batch.host_start_pos.push_back(gq->num_tokens);
        batch.max_rows = std::max<int64_t>(batch.max_rows, n);
        batch.all_decode = batch.all_decode && n == 1;
      }
      if (rows == 0) continue;
      batch.total_rows = rows;
      batch.host_row_pos = row_pos;
      const std::vector<float> x = Normal(static_cast<size_t>(rows * d), &rng, 0.0f, 1.0f);

      // CPU.
      std::vector<float> want(static_cast<size_t>(rows * d));
      cpu::CpuContext cctx;
      cctx.pool = &pool;
      cctx.store = cpu_store_.get();
      cctx.layout = &*cpu_layout_;
      cctx.block_memory = cpu_blocks_.data();
      ASSERT_TRUE(cpu_layer_->Forward(cctx, cseqs, x.data(), want.data()).ok());

      // CUDA.
      cuda::ScratchArena& scratch = dev_->scratch();
      scratch.Rewind();
      const int num = batch.num_seqs();
      auto u_slots = dev_->Upload(slots.data(), num, "slots");
      auto u_cu = dev_->Upload(batch.host_cu_seqlens.data(), num + 1, "cu_seqlens");
      auto u_start = dev_->Upload(batch.host_start_pos.data(), num, "start_pos");
      auto u_row_seq = dev_->Upload(row_seq.data(), rows, "row_seq");
      auto u_row_pos = dev_->Upload(row_pos.data(), rows, "row_pos");
      auto u_x = dev_->Upload(x.data(), rows * d, "x");
      auto u_out = scratch.AllocArray<float>(rows * d, "out");
      ASSERT_TRUE(u_slots.ok() && u_cu.ok() && u_start.ok() && u_row_seq.ok() && u_row_pos.ok() &&
                  u_x.ok() && u_out.ok());
      batch.slots = *u_slots;
      batch.cu_seqlens = *u_cu;
      batch.start_pos = *u_start;
      batch.row_seq = *u_row_seq;
      batch.row_pos = *u_row_pos;
      cuda::CudaContext ctx;
      ctx.dev = dev_.get();
      ctx.store = gpu_store_.get();
      ctx.layout = &*gpu_layout_;
      ctx.block_pool = gpu_blocks_.as<uint8_t>();
      ctx.batch = &batch;
      const absl::Status st = gpu_layer_->Forward(ctx, *u_x, *u_out);
      ASSERT_TRUE(st.ok()) << st;
      std::vector<float> got(static_cast<size_t>(rows * d));
      ASSERT_TRUE(dev_->CopyToHost(got.data(), *u_out, got.size() * sizeof(float)).ok());
      ASSERT_TRUE(dev_->Synchronize().ok());
      ExpectClose(got, want, bound, tag);

      for (const auto& [index, rows_i] : step) {
        if (rows_i < 0) continue;
        cpu_seqs_[index]->num_tokens += rows_i;
        gpu_seqs_[index]->num_tokens += rows_i;
      }
      // The same block tables (chunks) and evictions on both sides.
      for (size_t i = 0; i < cpu_seqs_.size(); ++i) {
        const auto& ct = cpu_seqs_[i]->streams[stream];
        const auto& gt = gpu_seqs_[i]->streams[stream];
        ASSERT_EQ(ct.size(), gt.size()) << "sequence " << i;
        for (size_t e = 0; e < ct.size(); ++e) EXPECT_EQ(ct[e].chunk, gt[e].chunk);
        EXPECT_EQ(cpu_seqs_[i]->evicted_blocks, gpu_seqs_[i]->evicted_blocks);
      }
      EXPECT_EQ(cpu_store_->free_blocks(), gpu_store_->free_blocks());
    }
    CompareKv(stream);
  }

  // K/V of every token the tables hold, CPU blocks against device blocks.
  void CompareKv(int stream) {
    const KvStream& ks = cpu_layout_->streams()[stream];
    const bool bf16 = precision_ == cuda::Precision::kBf16;
    const size_t es = bf16 ? 2 : 4;
    const int64_t gpu_block_elems = gpu_layout_->block_bytes() / static_cast<int64_t>(es);
    const std::vector<uint8_t> dev_bytes = ToHost<uint8_t>(gpu_blocks_, gpu_blocks_.bytes());
    std::vector<float> got, want;
    const int64_t kw = int64_t{ks.heads} * ks.key_dim, vw = int64_t{ks.heads} * ks.value_dim;
    auto dev_at = [&](int32_t block, int64_t elem) {
      const uint8_t* p = dev_bytes.data() + (block * gpu_block_elems + elem) * es;
      if (bf16) {
        uint16_t b;
        std::memcpy(&b, p, 2);
        return Bf16ToFloat(b);
      }
      float f;
      std::memcpy(&f, p, 4);
      return f;
    };
    for (size_t i = 0; i < cpu_seqs_.size(); ++i) {
      const auto& ct = cpu_seqs_[i]->streams[stream];
      const auto& gt = gpu_seqs_[i]->streams[stream];
      ASSERT_EQ(ct.size(), gt.size());
      for (size_t e = 0; e < ct.size(); ++e) {
        float* cb =
            reinterpret_cast<float*>(cpu_blocks_.data() + ct[e].block * cpu_layout_->block_bytes());
        for (int64_t t = 0; t < kBlock && ct[e].chunk * kBlock + t < cpu_seqs_[i]->num_tokens;
             ++t) {
          for (int64_t j = 0; j < kw; ++j) {
            want.push_back(cpu::BlockKey(cb, ks, t, 0)[j]);
            got.push_back(dev_at(gt[e].block, t * kw + j));
          }
          for (int64_t j = 0; j < vw; ++j) {
            want.push_back(cpu::BlockValue(cb, ks, t, 0)[j]);
            got.push_back(dev_at(gt[e].block, int64_t{kBlock} * kw + t * vw + j));
          }
        }
      }
    }
    ExpectClose(got, want, bf16 ? 3e-2 : 1e-4,
                bf16 ? "attention layer bf16 kv blocks" : "attention layer f32 kv blocks");
  }

 private:
  LayerSpec spec_;
  cuda::Precision precision_ = cuda::Precision::kF32;
  std::string prefix_;
  ModelConfig config_;
  std::unique_ptr<Checkpoint> cpu_ck_, gpu_ck_;
  std::optional<StateLayout> cpu_layout_, gpu_layout_;
  std::unique_ptr<StateStore> cpu_store_, gpu_store_;
  std::vector<std::unique_ptr<SequenceState>> cpu_seqs_, gpu_seqs_;
  std::vector<uint8_t> cpu_blocks_;
  TestBuffer gpu_blocks_;
  std::unique_ptr<cpu::CpuLayer> cpu_layer_;
  std::unique_ptr<cuda::DeviceContext> dev_;
  std::unique_ptr<cuda::DeviceWeights> weights_;
  std::unique_ptr<cuda::CudaLayer> gpu_layer_;
};

std::vector<LayerScenario> Scenarios(int window) {
  std::vector<LayerScenario> out;
  // Prefill, decodes (first in the batch: the decode kernel), mixed batches with decodes before
  // and after prefill chunks, chunked prefill that starts mid-block, a fork (copy-on-write).
  out.push_back({"basic",
                 {{{0, 100}, {1, 37}},
                  {{0, 1}, {1, 1}},
                  {{0, 1}, {1, 1}},
                  {{1, 1}, {0, 1}, {2, 130}},
                  {{2, 70}, {0, 1}},
                  {{0, 1}, {1, 1}, {2, 1}},
                  {{3, -2}},  // sequence 3 = fork of sequence 1 (41 tokens: a shared last block)
                  {{1, 1}, {3, 1}},
                  {{3, 27}, {1, 1}, {0, 64}},
                  {{0, 1}, {1, 1}, {2, 1}, {3, 1}}}});
  // One long prefill in one step and in chunks; window drops over many blocks.
  out.push_back({"long", {{{0, 600}}, {{1, 250}, {0, 1}}, {{1, 350}}, {{0, 1}, {1, 1}}}});
  // The per-sequence cap (128 tokens, kEvictOldest) evicts mid-step: the CPU's rounds.
  LayerScenario cap{"cap", {{{0, 300}}, {{0, 1}}, {{0, 100}, {1, 70}}, {{1, 1}, {0, 1}}}};
  cap.cap_tokens = 128;
  out.push_back(cap);
  if (window > 0) {
    // A pool too small for one-shot allocation: only the CPU's per-round drops make it fit.
    LayerScenario tight{"tight", {{{0, 512}}, {{0, 1}}, {{0, 200}}}};
    tight.num_blocks = (window + 63) / 64 + 3;
    out.push_back(tight);
  }
  return out;
}

struct LayerParam {
  LayerSpec spec;
  cuda::Precision precision;
};

class CudaAttentionLayerTest : public GpuTest, public ::testing::WithParamInterface<LayerParam> {};

TEST_P(CudaAttentionLayerTest, MatchesCpuLayer) {
  const LayerParam& lp = GetParam();
  for (const LayerScenario& sc : Scenarios(lp.spec.window)) {
    SCOPED_TRACE(sc.name);
    LayerPair pair;
    LayerSpec spec = lp.spec;
    spec.name = absl::StrCat(spec.name, "_", sc.name,
                             lp.precision == cuda::Precision::kF32 ? "_f32" : "_bf16");
    pair.SetUp(spec, sc, lp.precision);
    if (HasFatalFailure()) return;
    pair.Run(sc);
    if (HasFatalFailure()) return;
  }
}

std::vector<LayerParam> LayerParams() {
  std::vector<LayerSpec> specs;
  {
    LayerSpec s;  // Llama: GQA 4, hd 32, full rotary
    s.name = "llama";
    s.hidden = 128;
    s.heads = 8;
    s.kv_heads = 2;
    s.head_dim = 32;
    s.rotary_dim = 32;
    specs.push_back(s);
  }
  {
    LayerSpec s;  // fla attn: qk-norm, q/k/v and o biases, partial rotary, hd 80, GQA 3
    s.name = "fla";
    s.hidden = 96;
    s.heads = 6;
    s.kv_heads = 2;
    s.head_dim = 80;
    s.rotary_dim = 40;
    s.theta = 1000000.0f;
    s.qk_norm = true;
    s.qkv_bias = true;
    s.o_bias = true;
    specs.push_back(s);
  }
  {
    LayerSpec s;  // llama3 rope, hd 128, MQA-ish group 4, window 100
    s.name = "llama3_window100";
    s.hidden = 64;
    s.heads = 4;
    s.kv_heads = 1;
    s.head_dim = 128;
    s.rotary_dim = 128;
    s.theta = 500000.0f;
    s.llama3 = true;
    s.window = 100;
    specs.push_back(s);
  }
  {
    LayerSpec s;  // MHA, window below one block
    s.name = "mha_window48";
    s.hidden = 64;
    s.heads = 4;
    s.kv_heads = 4;
    s.head_dim = 64;
    s.rotary_dim = 64;
    s.window = 48;
    specs.push_back(s);
  }
  std::vector<LayerParam> out;
  for (const LayerSpec& s : specs) {
    out.push_back({s, cuda::Precision::kF32});
    out.push_back({s, cuda::Precision::kBf16});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Variants, CudaAttentionLayerTest, ::testing::ValuesIn(LayerParams()),
                         [](const ::testing::TestParamInfo<LayerParam>& i) {
                           return absl::StrCat(
                               i.param.spec.name,
                               i.param.precision == cuda::Precision::kF32 ? "F32" : "Bf16");
                         });

// ---- Sanitizer-sized cases -------------------------------------------------------------------

// Small instances of every kernel path, sized for compute-sanitizer (racecheck is slow):
// scripts/device_run.sh runs the sanitizers with --gtest_filter='*Sanitizer*'.
TEST_F(GpuTest, SmallAttentionKernelsForSanitizers) {
  RunRope({5, 2, 1, 16, 8, 10000.0f, false, 200}, 1);
  RunKvAppend(9, 2, 16, 8, false, 2);
  RunKvAppend(9, 1, 24, 24, true, 3);
  RunPrefill({4, 2, 16, 16, {{0, 70}, {60, 1}, {3, 9, PrefillSeq::kSparse}}, 0, false, true}, 4);
  RunPrefill({2, 1, 40, 24, {{100, 20, PrefillSeq::kWindowed}}, 30, true, false}, 5);
  RunPrefill({4, 1, 160, 160, {{10, 40}}, 0, false, false}, 6);  // head dim > 128
  // Tensor-core path (bf16 KV): d 64 with random tiles over block borders, d 128 windowed,
  // d 256 (Q in shared memory).
  RunPrefill({4, 2, 64, 64, {{0, 70}, {60, 5}, {3, 9, PrefillSeq::kSparse}}, 0, true, true}, 7);
  RunPrefill({2, 1, 128, 128, {{100, 20, PrefillSeq::kWindowed}, {0, 3}}, 30, true, false}, 8);
  RunPrefill({2, 1, 256, 256, {{60, 10}, {0, 3}}, 0, true, false}, 9);
}

TEST_F(GpuTest, SmallAttentionLayerForSanitizers) {
  LayerSpec s;
  s.name = "sanitizer";
  s.hidden = 32;
  s.heads = 4;
  s.kv_heads = 2;
  s.head_dim = 16;
  s.rotary_dim = 8;
  s.qk_norm = true;
  s.window = 40;
  LayerScenario sc{"small", {{{0, 70}, {1, 3}}, {{0, 1}, {1, 1}}, {{2, -2}}, {{1, 1}, {2, 66}}}};
  LayerPair pair;
  pair.SetUp(s, sc, cuda::Precision::kF32);
  if (HasFatalFailure()) return;
  pair.Run(sc);
}

}  // namespace
}  // namespace hyla
