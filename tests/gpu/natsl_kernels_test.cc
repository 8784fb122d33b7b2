// The NAtS-L kernels of kernels/natsl.h and the CUDA NAtS-L layer (runtime/cuda/natsl_layer.h)
// against the CPU reference (runtime/cpu/natsl_layer.cc and the CPU ops it uses):
//   * NatslChunkSums + NatslRouterLogits: chunk means and the slot's x_sum bitwise equal to the
//     CPU's sums, router logits equal to cpu::Dot (bitwise with the AVX2/FMA CPU build), on
//     several batch compositions (mid-chunk starts, exact chunk ends, long prefills, odd d);
//   * NatslKvWrite (fp32 and bf16 blocks), NatslDecodeCommit (commit / decay / none, padding),
//     NatslMixOutput (permuted attention rows, odd widths) on odd sizes;
//   * the whole layer: CudaNatslLayer against cpu::NatslLayer on a generated NAtS-L model over
//     mixed prefill/decode steps of several sequences (chunk ends inside prefills and decodes, a
//     fork with copy-on-write, a per-stream KV cap with eviction), comparing every step's output,
//     every routing decision (identical), the routing counts, the carried state and the kept KV.
// Bounds (max|diff| / max|ref|): fp32 1e-4, bf16 1e-2. Label gpu; skipped without a device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "runtime/base/float16.h"
#include "runtime/base/thread_pool.h"
#include "runtime/cpu/cpu_layer.h"
#include "runtime/cpu/gdn_core.h"
#include "runtime/cpu/natsl_layer.h"
#include "runtime/cpu/ops.h"
#include "runtime/cuda/cuda_layer.h"
#include "runtime/cuda/device_context.h"
#include "runtime/cuda/gemm.h"
#include "runtime/cuda/natsl_layer.h"
#include "runtime/model/checkpoint.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"
#include "tests/gpu/gpu_test_util.h"
#include "tools/model_generator.h"

namespace hyla {
namespace {

using gpu_test::DeviceBuffer;
using gpu_test::ExpectClose;
using gpu_test::GpuTest;
using gpu_test::Normal;
using gpu_test::ToDevice;
using gpu_test::ToHost;
using gpu_test::Uniform;

constexpr int kChunk = 64;

// Counts the positions where two float vectors differ bitwise (NaN never equals).
int64_t BitwiseMismatches(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return static_cast<int64_t>(std::max(a.size(), b.size()));
  int64_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    uint32_t x, y;
    std::memcpy(&x, &a[i], 4);
    std::memcpy(&y, &b[i], 4);
    if (x != y) ++n;
  }
  return n;
}

// ---- NatslChunkSums + NatslRouterLogits ----------------------------------------------------

struct SeqSpec {
  int64_t start_pos;
  int64_t rows;
};

// The segments of a batch as the layer builds them (the CPU's ForwardSequence loop).
std::vector<kernels::NatslSegment> Segments(const std::vector<SeqSpec>& seqs, int* completions) {
  std::vector<kernels::NatslSegment> out;
  *completions = 0;
  int64_t row = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int64_t begin = row, end = row + seqs[s].rows;
    int64_t r = begin;
    while (r < end) {
      const int64_t pos = seqs[s].start_pos + (r - begin);
      const int64_t j0 = pos % kChunk;
      const int64_t r1 = std::min(end, r + (kChunk - j0));
      kernels::NatslSegment seg;
      seg.seq = static_cast<int32_t>(s);
      seg.row_begin = static_cast<int32_t>(r);
      seg.row_end = static_cast<int32_t>(r1);
      seg.completion = j0 + (r1 - r) == kChunk ? (*completions)++ : -1;
      seg.flags = (r == begin ? kernels::kNatslSegmentFirst : 0) |
                  (r1 == end ? kernels::kNatslSegmentLast : 0);
      out.push_back(seg);
      r = r1;
    }
    row = end;
  }
  return out;
}

void RunRouterCase(int64_t d, int H, const std::vector<SeqSpec>& seqs, std::mt19937* rng) {
  SCOPED_TRACE(absl::StrCat("d ", d, " H ", H, " seqs ", seqs.size()));
  const int num_seqs = static_cast<int>(seqs.size());
  int64_t rows = 0;
  for (const SeqSpec& s : seqs) rows += s.rows;
  const int64_t x_stride = d + 3;
  const std::vector<float> x =
      Normal(static_cast<size_t>(std::max<int64_t>(rows, 1) * x_stride), rng, 0.1f, 1.0f);
  const int num_slots = num_seqs + 3;
  const int64_t slot_stride = d + 5;
  std::vector<float> pool = Normal(static_cast<size_t>(num_slots * slot_stride), rng, 0.0f, 4.0f);
  std::vector<int32_t> all(num_slots);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), *rng);
  const std::vector<int32_t> slots(all.begin(), all.begin() + num_seqs);
  // A sequence at a chunk start carries x_sum = 0 (reset slot or after a decision).
  for (int s = 0; s < num_seqs; ++s) {
    if (seqs[s].start_pos % kChunk == 0) {
      std::fill_n(pool.begin() + slots[s] * slot_stride, d, 0.0f);
    }
  }
  const std::vector<float> w = Normal(static_cast<size_t>(2 * H * d), rng, 0.0f, 0.3f);
  int completions = 0;
  const std::vector<kernels::NatslSegment> segs = Segments(seqs, &completions);

  // CPU reference: the CPU layer's x_sum loop, Decide's mean and its router Dot.
  std::vector<float> want_pool = pool;
  std::vector<float> want_means, want_logits;
  int64_t row = 0;
  for (int s = 0; s < num_seqs; ++s) {
    float* xs = want_pool.data() + slots[s] * slot_stride;
    for (int64_t t = 0; t < seqs[s].rows; ++t, ++row) {
      for (int64_t i = 0; i < d; ++i) xs[i] += x[row * x_stride + i];
      if ((seqs[s].start_pos + t + 1) % kChunk == 0) {
        std::vector<float> mean(static_cast<size_t>(d));
        for (int64_t i = 0; i < d; ++i) mean[i] = xs[i] / static_cast<float>(kChunk);
        want_means.insert(want_means.end(), mean.begin(), mean.end());
        for (int o = 0; o < 2 * H; ++o) {
          want_logits.push_back(cpu::Dot(mean.data(), w.data() + o * d, d));
        }
        std::memset(xs, 0, sizeof(float) * d);
      }
    }
  }
  ASSERT_EQ(static_cast<int64_t>(want_means.size()), int64_t{completions} * d);

  DeviceBuffer d_x = ToDevice(x), d_pool = ToDevice(pool), d_slots = ToDevice(slots);
  DeviceBuffer d_w = ToDevice(w);
  DeviceBuffer d_segs(segs.size() * sizeof(kernels::NatslSegment));
  DeviceBuffer d_means(static_cast<size_t>(std::max(completions, 1) * d) * 4);
  DeviceBuffer d_new(static_cast<size_t>(num_seqs * d) * 4);
  DeviceBuffer d_logits(static_cast<size_t>(std::max(completions, 1) * 2 * H) * 4);
  ASSERT_TRUE(d_x.ok() && d_pool.ok() && d_slots.ok() && d_w.ok() && d_segs.ok() && d_means.ok() &&
              d_new.ok() && d_logits.ok());
  if (!segs.empty()) {
    ASSERT_EQ(cudaMemcpy(d_segs.get(), segs.data(), segs.size() * sizeof(kernels::NatslSegment),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  kernels::NatslChunkSumsParams p;
  p.num_segments = static_cast<int>(segs.size());
  p.num_seqs = num_seqs;
  p.num_completions = completions;
  p.d = d;
  p.x = d_x.as<float>();
  p.x_stride = x_stride;
  p.segments = d_segs.as<kernels::NatslSegment>();
  p.slots = d_slots.as<int32_t>();
  p.x_sum = d_pool.as<float>();
  p.x_sum_slot_stride = slot_stride;
  p.means = d_means.as<float>();
  p.new_x_sum = d_new.as<float>();
  HYLA_ASSERT_LAUNCH_OK(kernels::NatslChunkSums(p, nullptr));
  HYLA_ASSERT_LAUNCH_OK(kernels::NatslRouterLogits(
      d_means.as<float>(), completions, d, d_w.as<float>(), 2 * H, d_logits.as<float>(), nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  // Sums in the CPU's order: bitwise equal.
  const std::vector<float> got_pool = ToHost<float>(d_pool, pool.size());
  EXPECT_EQ(BitwiseMismatches(got_pool, want_pool), 0) << "x_sum differs from the CPU's sums";
  ExpectClose(got_pool, want_pool, 1e-6, "natsl_chunk_sums x_sum");
  if (completions > 0) {
    const std::vector<float> got_means = ToHost<float>(d_means, want_means.size());
    EXPECT_EQ(BitwiseMismatches(got_means, want_means), 0) << "chunk means differ";
    ExpectClose(got_means, want_means, 1e-6, "natsl_chunk_sums means");
    const std::vector<float> got_logits = ToHost<float>(d_logits, want_logits.size());
    ExpectClose(got_logits, want_logits, 1e-6, "natsl_router_logits");
    const int64_t mismatches = BitwiseMismatches(got_logits, want_logits);
    std::printf("natsl router logits: %lld of %zu not bitwise equal to cpu::Dot\n",
                static_cast<long long>(mismatches), want_logits.size());
    // The decisions (the CPU's rule on each logit pair) must agree.
    for (size_t i = 0; i + 1 < want_logits.size(); i += 2) {
      float a[2] = {got_logits[i], got_logits[i + 1]};
      float b[2] = {want_logits[i], want_logits[i + 1]};
      cpu::Softmax(a, 2);
      cpu::Softmax(b, 2);
      EXPECT_EQ(a[1] > a[0], b[1] > b[0]) << "routing decision " << i / 2;
    }
  }
}

TEST_F(GpuTest, NatslChunkSumsAndRouterMatchCpu) {
  std::mt19937 rng(11);
  // Decode rows (one completes its chunk), mid-chunk starts, exact chunks, long prefills.
  RunRouterCase(64, 2, {{0, 1}, {63, 1}, {5, 1}, {127, 1}}, &rng);
  RunRouterCase(100, 3, {{0, 150}, {10, 54}, {64, 64}, {3, 1}, {70, 200}}, &rng);
  RunRouterCase(257, 1, {{200, 300}, {0, 7}}, &rng);
  RunRouterCase(5, 2, {{60, 10}, {1, 63}}, &rng);
  RunRouterCase(1024, 6, {{1, 400}, {64, 128}}, &rng);
  RunRouterCase(24, 1, {{0, 1}}, &rng);  // no completion: x_sum only
}

TEST_F(GpuTest, NatslChunkSumsRejectsBadArguments) {
  kernels::NatslChunkSumsParams p;
  p.num_segments = 1;
  EXPECT_EQ(kernels::NatslChunkSums(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
  p.num_segments = -1;
  EXPECT_EQ(kernels::NatslChunkSums(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
  EXPECT_EQ(kernels::NatslRouterLogits(nullptr, 1, 4, nullptr, 2, nullptr, nullptr),
            static_cast<int>(cudaErrorInvalidValue));
  EXPECT_EQ(kernels::NatslRouterLogits(nullptr, 0, 4, nullptr, 2, nullptr, nullptr), 0);
  kernels::NatslKvWriteParams kp;
  kp.num_rows = 2;
  EXPECT_EQ(kernels::NatslKvWrite(kp, nullptr), static_cast<int>(cudaErrorInvalidValue));
  kernels::NatslDecodeCommitParams dp;
  dp.num_seqs = 1;
  EXPECT_EQ(kernels::NatslDecodeCommit(dp, nullptr), static_cast<int>(cudaErrorInvalidValue));
  kernels::NatslMixOutputParams mp;
  mp.rows = 1;
  EXPECT_EQ(kernels::NatslMixOutput(mp, nullptr), static_cast<int>(cudaErrorInvalidValue));
  mp.rows = 0;
  EXPECT_EQ(kernels::NatslMixOutput(mp, nullptr), 0);
}

// ---- NatslKvWrite --------------------------------------------------------------------------

struct KvCase {
  int H, G, dk, dv;
  int num_rows;
  int src_rows;
  int num_blocks;
  int64_t block_pad;  // extra elements per block
};

void RunKvWriteCase(const KvCase& c, bool bf16, std::mt19937* rng) {
  SCOPED_TRACE(absl::StrCat("H ", c.H, " G ", c.G, " dk ", c.dk, " dv ", c.dv, " rows ", c.num_rows,
                            bf16 ? " bf16" : " f32"));
  const int Ha = c.H * c.G;
  const int64_t block_stride = int64_t{kChunk} * c.G * (c.dk + c.dv) + c.block_pad;
  const int64_t k_stride = int64_t{Ha} * c.dk + 3, v_stride = int64_t{Ha} * c.dv + 1;
  const std::vector<float> k = Normal(static_cast<size_t>(c.src_rows * k_stride), rng, 0, 1);
  const std::vector<float> v = Normal(static_cast<size_t>(c.src_rows * v_stride), rng, 0, 1);
  std::uniform_int_distribution<int> src(0, c.src_rows - 1), tok(0, kChunk - 1),
      blk(0, c.num_blocks - 1);
  std::vector<int32_t> rows(c.num_rows), tokens(c.num_rows), blocks(c.num_rows * c.H);
  std::set<std::pair<int, int>> used;  // (block, token) destinations
  for (int m = 0; m < c.num_rows; ++m) {
    rows[m] = src(*rng);
    for (;;) {
      tokens[m] = tok(*rng);
      bool ok = true;
      std::set<std::pair<int, int>> mine;
      for (int n = 0; n < c.H && ok; ++n) {
        int tries = 0;
        do {
          blocks[m * c.H + n] = blk(*rng);
        } while ((used.count({blocks[m * c.H + n], tokens[m]}) ||
                  mine.count({blocks[m * c.H + n], tokens[m]})) &&
                 ++tries < 1000);
        ok = tries < 1000;
        mine.insert({blocks[m * c.H + n], tokens[m]});
      }
      if (ok) {
        used.insert(mine.begin(), mine.end());
        break;
      }
    }
  }
  std::vector<float> pool =
      Normal(static_cast<size_t>(c.num_blocks * block_stride), rng, 0.0f, 1.0f);
  std::vector<uint16_t> pool_bits;
  if (bf16) pool_bits = gpu_test::RoundToBf16(&pool);
  // Reference: the CPU block layout (BlockKey / BlockValue with G heads).
  std::vector<float> want = pool;
  for (int m = 0; m < c.num_rows; ++m) {
    for (int a = 0; a < Ha; ++a) {
      const int n = a / c.G, g = a % c.G;
      float* block = want.data() + int64_t{blocks[m * c.H + n]} * block_stride;
      for (int e = 0; e < c.dk; ++e) {
        float val = k[rows[m] * k_stride + int64_t{a} * c.dk + e];
        if (bf16) val = Bf16ToFloat(FloatToBf16(val));
        block[(int64_t{tokens[m]} * c.G + g) * c.dk + e] = val;
      }
      for (int e = 0; e < c.dv; ++e) {
        float val = v[rows[m] * v_stride + int64_t{a} * c.dv + e];
        if (bf16) val = Bf16ToFloat(FloatToBf16(val));
        block[int64_t{kChunk} * c.G * c.dk + (int64_t{tokens[m]} * c.G + g) * c.dv + e] = val;
      }
    }
  }
  DeviceBuffer d_k = ToDevice(k), d_v = ToDevice(v), d_rows = ToDevice(rows),
               d_tokens = ToDevice(tokens), d_blocks = ToDevice(blocks);
  DeviceBuffer d_pool = bf16 ? ToDevice(pool_bits) : ToDevice(pool);
  ASSERT_TRUE(d_k.ok() && d_v.ok() && d_rows.ok() && d_tokens.ok() && d_blocks.ok() && d_pool.ok());
  kernels::NatslKvWriteParams p;
  p.num_rows = c.num_rows;
  p.num_heads = c.H;
  p.groups = c.G;
  p.dk = c.dk;
  p.dv = c.dv;
  p.rows = d_rows.as<int32_t>();
  p.tokens = d_tokens.as<int32_t>();
  p.blocks = d_blocks.as<int32_t>();
  p.k = d_k.as<float>();
  p.k_stride = k_stride;
  p.v = d_v.as<float>();
  p.v_stride = v_stride;
  p.kv_dtype = bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
  p.kv = d_pool.get();
  p.block_stride = block_stride;
  HYLA_ASSERT_LAUNCH_OK(kernels::NatslKvWrite(p, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> got = bf16
                                     ? gpu_test::Bf16ToFloats(ToHost<uint16_t>(d_pool, pool.size()))
                                     : ToHost<float>(d_pool, pool.size());
  EXPECT_EQ(BitwiseMismatches(got, want), 0) << "KV blocks differ";
  ExpectClose(got, want, 0.0, bf16 ? "natsl_kv_write bf16" : "natsl_kv_write f32");
}

TEST_F(GpuTest, NatslKvWriteMatchesCpuBlockLayout) {
  std::mt19937 rng(12);
  const std::vector<KvCase> cases = {{2, 2, 16, 32, 9, 20, 6, 0},
                                     {3, 1, 32, 64, 64, 70, 8, 5},
                                     {1, 3, 7, 13, 5, 5, 2, 1},
                                     {6, 2, 64, 128, 130, 200, 40, 0},
                                     {1, 1, 1, 1, 1, 1, 1, 0}};
  for (const KvCase& c : cases) {
    RunKvWriteCase(c, false, &rng);
    RunKvWriteCase(c, true, &rng);
  }
}

// ---- NatslDecodeCommit ---------------------------------------------------------------------

struct CommitCase {
  int H, dk, dv;
  int num_seqs;
  int padding_rows;
  bool decay;
};

void RunCommitCase(const CommitCase& c, std::mt19937* rng) {
  SCOPED_TRACE(absl::StrCat("H ", c.H, " dk ", c.dk, " dv ", c.dv, " seqs ", c.num_seqs,
                            c.decay ? " decay" : ""));
  const int64_t state = int64_t{c.H} * c.dk * c.dv;
  // Slot: S | S_committed | g_sum | pad.
  const int64_t slot_stride = 2 * state + c.H + 3;
  const int num_slots = c.num_seqs + 2;
  std::vector<float> pool = Normal(static_cast<size_t>(num_slots * slot_stride), rng, 0, 0.5f);
  for (int s = 0; s < num_slots; ++s) {
    for (int n = 0; n < c.H; ++n) {
      pool[s * slot_stride + 2 * state + n] = Uniform(1, rng, -3.0f, 0.0f)[0];
    }
  }
  std::vector<int32_t> all(num_slots);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), *rng);
  std::vector<int32_t> slots(all.begin(), all.begin() + c.num_seqs);
  for (int i = 0; i < c.padding_rows && i < c.num_seqs; ++i) slots[i] = -1;
  std::shuffle(slots.begin(), slots.end(), *rng);
  const int64_t a_stride = c.H + 2;
  const std::vector<float> a = Normal(static_cast<size_t>(c.num_seqs * a_stride), rng, 0, 1);
  const std::vector<float> a_log = Uniform(c.H, rng, -2.0f, 1.0f);
  const std::vector<float> dt_bias = Normal(c.H, rng, -1.0f, 0.5f);
  std::vector<int8_t> decision(static_cast<size_t>(c.num_seqs * c.H));
  std::uniform_int_distribution<int> dec(-1, 1);
  for (int8_t& d : decision) d = static_cast<int8_t>(dec(*rng));

  // CPU reference: RunHead's g_sum update and Decide.
  std::vector<float> want = pool;
  for (int s = 0; s < c.num_seqs; ++s) {
    if (slots[s] < 0) continue;
    float* base = want.data() + slots[s] * slot_stride;
    for (int n = 0; n < c.H; ++n) {
      float* S = base + n * int64_t{c.dk} * c.dv;
      float* Sc = base + state + n * int64_t{c.dk} * c.dv;
      float* g_sum = base + 2 * state + n;
      *g_sum += cpu::GdnDecayGate(a[s * a_stride + n], dt_bias[n], cpu::GdnNegExpALog(a_log[n]));
      const int d = decision[s * c.H + n];
      if (d < 0) continue;
      if (d == 0) {
        if (c.decay) cpu::DecayState(Sc, *g_sum, c.dk, c.dv);
        std::memcpy(S, Sc, sizeof(float) * c.dk * c.dv);
      } else {
        std::memcpy(Sc, S, sizeof(float) * c.dk * c.dv);
      }
      *g_sum = 0.0f;
    }
  }
  DeviceBuffer d_pool = ToDevice(pool), d_slots = ToDevice(slots), d_a = ToDevice(a),
               d_alog = ToDevice(a_log), d_dt = ToDevice(dt_bias), d_dec = ToDevice(decision);
  ASSERT_TRUE(d_pool.ok() && d_slots.ok() && d_a.ok() && d_alog.ok() && d_dt.ok() && d_dec.ok());
  kernels::NatslDecodeCommitParams p;
  p.num_seqs = c.num_seqs;
  p.num_heads = c.H;
  p.dk = c.dk;
  p.dv = c.dv;
  p.a = d_a.as<float>();
  p.a_stride = a_stride;
  p.a_log = d_alog.as<float>();
  p.dt_bias = d_dt.as<float>();
  p.slots = d_slots.as<int32_t>();
  p.decision = d_dec.as<int8_t>();
  p.state = d_pool.as<float>();
  p.state_slot_stride = slot_stride;
  p.committed = d_pool.as<float>() + state;
  p.committed_slot_stride = slot_stride;
  p.g_sum = d_pool.as<float>() + 2 * state;
  p.g_sum_slot_stride = slot_stride;
  p.decay_uncommitted = c.decay;
  HYLA_ASSERT_LAUNCH_OK(kernels::NatslDecodeCommit(p, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ExpectClose(ToHost<float>(d_pool, pool.size()), want, 1e-4, "natsl_decode_commit slots");
}

TEST_F(GpuTest, NatslDecodeCommitMatchesCpuDecide) {
  std::mt19937 rng(13);
  const std::vector<CommitCase> cases = {{2, 32, 64, 7, 1, true},
                                         {3, 17, 33, 5, 0, true},
                                         {1, 128, 128, 3, 1, false},
                                         {6, 64, 128, 40, 3, true},
                                         {1, 1, 1, 1, 0, true}};
  for (const CommitCase& c : cases) RunCommitCase(c, &rng);
}

// ---- NatslMixOutput ------------------------------------------------------------------------

void RunMixCase(int64_t rows, int Ha, int dv, bool permuted, std::mt19937* rng) {
  SCOPED_TRACE(absl::StrCat("rows ", rows, " Ha ", Ha, " dv ", dv, permuted ? " permuted" : ""));
  const int64_t width = int64_t{Ha} * dv;
  const int64_t s1 = width + 1, s2 = width + 4, sm = 2 * Ha + 3, sz = width + 2, sy = width + 5;
  const std::vector<float> o_gdn = Normal(static_cast<size_t>(rows * s1), rng, 0, 1);
  const std::vector<float> o_attn = Normal(static_cast<size_t>(rows * s2), rng, 0, 0.3f);
  const std::vector<float> mix = Normal(static_cast<size_t>(rows * sm), rng, 0, 2);
  const std::vector<float> z = Normal(static_cast<size_t>(rows * sz), rng, 0, 1.5f);
  const std::vector<float> w1 = Normal(dv, rng, 1, 0.2f), w2 = Normal(dv, rng, 1, 0.2f);
  std::vector<int32_t> attn_rows(static_cast<size_t>(rows));
  std::iota(attn_rows.begin(), attn_rows.end(), 0);
  if (permuted) std::shuffle(attn_rows.begin(), attn_rows.end(), *rng);
  const float eps = 1e-6f;
  // CPU reference: the end of NatslLayer::RunHead.
  std::vector<float> want(static_cast<size_t>(rows * width));
  std::vector<float> n1(dv), n2(dv);
  for (int64_t r = 0; r < rows; ++r) {
    for (int a = 0; a < Ha; ++a) {
      cpu::RmsNorm(o_gdn.data() + r * s1 + int64_t{a} * dv, w1.data(), eps, dv, n1.data());
      cpu::RmsNorm(o_attn.data() + int64_t{attn_rows[r]} * s2 + int64_t{a} * dv, w2.data(), eps, dv,
                   n2.data());
      float m[2] = {mix[r * sm + 2 * a], mix[r * sm + 2 * a + 1]};
      cpu::Softmax(m, 2);
      const float* zz = z.data() + r * sz + int64_t{a} * dv;
      for (int i = 0; i < dv; ++i) {
        want[r * width + int64_t{a} * dv + i] =
            ((n1[i] * m[0] + n2[i] * m[1]) * zz[i]) * cpu::Sigmoid(zz[i]);
      }
    }
  }
  DeviceBuffer d1 = ToDevice(o_gdn), d2 = ToDevice(o_attn), dm = ToDevice(mix), dz = ToDevice(z),
               dw1 = ToDevice(w1), dw2 = ToDevice(w2), dr = ToDevice(attn_rows);
  DeviceBuffer dy(static_cast<size_t>(rows * sy) * 4);
  ASSERT_TRUE(d1.ok() && d2.ok() && dm.ok() && dz.ok() && dw1.ok() && dw2.ok() && dr.ok() &&
              dy.ok());
  kernels::NatslMixOutputParams p;
  p.rows = rows;
  p.heads = Ha;
  p.dv = dv;
  p.o_gdn = d1.as<float>();
  p.o_gdn_stride = s1;
  p.o_attn = d2.as<float>();
  p.o_attn_stride = s2;
  p.attn_rows = permuted ? dr.as<int32_t>() : nullptr;
  p.mix = dm.as<float>();
  p.mix_stride = sm;
  p.z = dz.as<float>();
  p.z_stride = sz;
  p.w_gdn = dw1.as<float>();
  p.w_attn = dw2.as<float>();
  p.eps = eps;
  p.y = dy.as<float>();
  p.y_stride = sy;
  HYLA_ASSERT_LAUNCH_OK(kernels::NatslMixOutput(p, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> raw = ToHost<float>(dy, static_cast<size_t>(rows * sy));
  std::vector<float> got;
  for (int64_t r = 0; r < rows; ++r) {
    got.insert(got.end(), raw.begin() + r * sy, raw.begin() + r * sy + width);
  }
  ExpectClose(got, want, 1e-4, "natsl_mix_output");
}

TEST_F(GpuTest, NatslMixOutputMatchesCpu) {
  std::mt19937 rng(14);
  RunMixCase(7, 4, 32, true, &rng);
  RunMixCase(33, 6, 64, false, &rng);
  RunMixCase(5, 3, 100, true, &rng);
  RunMixCase(130, 12, 128, true, &rng);
  RunMixCase(1, 1, 1, false, &rng);
  RunMixCase(3, 2, 33, true, &rng);
}

// Tiny shapes of every kernel (compute-sanitizer memcheck / racecheck).
TEST_F(GpuTest, SmallNatslKernelsForSanitizers) {
  std::mt19937 rng(15);
  RunRouterCase(9, 1, {{62, 3}, {0, 2}}, &rng);
  RunKvWriteCase({1, 2, 3, 5, 2, 3, 2, 1}, false, &rng);
  RunKvWriteCase({1, 2, 3, 5, 2, 3, 2, 1}, true, &rng);
  RunCommitCase({2, 5, 7, 3, 1, true}, &rng);
  RunMixCase(2, 2, 5, true, &rng);
}

// ---- The whole layer: CudaNatslLayer against cpu::NatslLayer --------------------------------

struct LayerOptions {
  bool bf16 = false;
  int64_t max_kv_tokens_per_stream = 0;  // cap (kEvictOldest) when > 0
  int hidden = 100;
  int num_heads = 2;
  int head_dim = 24;
  int num_attn_heads = 4;
};

// Drives one NAtS-L layer of a generated model on the CPU and on the GPU with the same inputs
// and sequence operations.
class LayerPair {
 public:
  void Init(const LayerOptions& o, const std::string& name) {
    opts_ = o;
    tools::GeneratorOptions go;
    go.shape.family = Family::kNatsl;
    go.shape.hidden_size = o.hidden;
    go.shape.num_layers = 2;
    go.shape.intermediate_size = 64;
    go.shape.num_heads = o.num_heads;
    go.shape.head_dim = o.head_dim;
    go.shape.expand_v = 2;
    go.shape.num_attn_heads = o.num_attn_heads;
    go.shape.gdn_layers = {0};
    // bf16 weights: the CPU reference reads exactly the values the bf16 GPU path uses.
    go.shape.dtype = o.bf16 ? DType::kBF16 : DType::kF32;
    go.seed = 1234;
    dir_ = ::testing::TempDir() + "/natsl_layer_" + name;
    ASSERT_TRUE(tools::GenerateModel(go, dir_).ok());
    auto ck_cpu = Checkpoint::Open(dir_);
    auto ck_gpu = Checkpoint::Open(dir_);
    ASSERT_TRUE(ck_cpu.ok() && ck_gpu.ok());
    ck_cpu_ = std::move(ck_cpu).value();
    ck_gpu_ = std::move(ck_gpu).value();
    cfg_ = ck_cpu_->config();
    ASSERT_EQ(cfg_.layers[kLayer].kind, LayerKind::kNatsl);
    auto lc = StateLayout::Create(cfg_, DType::kF32);
    auto lg = StateLayout::Create(cfg_, o.bf16 ? DType::kBF16 : DType::kF32);
    ASSERT_TRUE(lc.ok() && lg.ok());
    layout_cpu_ = std::make_unique<StateLayout>(*lc);
    layout_gpu_ = std::make_unique<StateLayout>(*lg);
    StateStoreOptions so;
    so.num_slots = 6;
    so.num_blocks = 256;
    so.max_kv_tokens_per_stream = o.max_kv_tokens_per_stream;
    so.cap_policy = KvCapPolicy::kEvictOldest;
    auto sc = StateStore::Create(*layout_cpu_, so);
    auto sg = StateStore::Create(*layout_gpu_, so);
    ASSERT_TRUE(sc.ok() && sg.ok());
    store_cpu_ = std::move(sc).value();
    store_gpu_ = std::move(sg).value();

    const std::string prefix = absl::StrCat("model.layers.", kLayer, ".attn.");
    cpu::CpuLayerArgs ca;
    ca.config = &cfg_;
    ca.layer = kLayer;
    ca.prefix = prefix;
    ca.checkpoint = ck_cpu_.get();
    ca.layout = layout_cpu_.get();
    auto cl = cpu::CreateNatslLayerWithLog(ca, &log_cpu_);
    ASSERT_TRUE(cl.ok()) << cl.status();
    cpu_layer_ = std::move(cl).value();

    auto dev = cuda::DeviceContext::Create(0, size_t{256} << 20);
    ASSERT_TRUE(dev.ok()) << dev.status();
    dev_ = std::move(dev).value();
    weights_ = std::make_unique<cuda::DeviceWeights>(
        dev_.get(), o.bf16 ? cuda::Precision::kBf16 : cuda::Precision::kF32);
    cuda::CudaLayerArgs ga;
    ga.config = &cfg_;
    ga.layer = kLayer;
    ga.prefix = prefix;
    ga.checkpoint = ck_gpu_.get();
    ga.layout = layout_gpu_.get();
    ga.dev = dev_.get();
    ga.weights = weights_.get();
    auto gl = cuda::CreateCudaNatslLayerWithLog(ga, &log_gpu_);
    ASSERT_TRUE(gl.ok()) << gl.status();
    gpu_layer_ = std::move(gl).value();

    cpu_slots_.assign(static_cast<size_t>(so.num_slots * layout_cpu_->slot_bytes()), 0);
    cpu_blocks_.assign(static_cast<size_t>(so.num_blocks * layout_cpu_->block_bytes()), 0);
    gpu_slots_ = DeviceBuffer(static_cast<size_t>(so.num_slots * layout_gpu_->slot_bytes()));
    gpu_blocks_ = DeviceBuffer(static_cast<size_t>(so.num_blocks * layout_gpu_->block_bytes()));
    ASSERT_TRUE(gpu_slots_.ok() && gpu_blocks_.ok());
    ASSERT_EQ(cudaMemset(gpu_slots_.get(), 0, gpu_slots_.bytes()), cudaSuccess);
  }

  // A new empty sequence on both sides; returns its id.
  int NewSequence() {
    auto c = store_cpu_->NewSequence();
    auto g = store_gpu_->NewSequence();
    EXPECT_TRUE(c.ok() && g.ok());
    EXPECT_EQ((*c)->slot, (*g)->slot);
    seq_cpu_.push_back(std::move(c).value());
    seq_gpu_.push_back(std::move(g).value());
    return static_cast<int>(seq_cpu_.size()) - 1;
  }

  // A fork of sequence `id` (slot copied, blocks shared copy-on-write) on both sides.
  int Fork(int id) {
    auto c = store_cpu_->Fork(*seq_cpu_[id]);
    auto g = store_gpu_->Fork(*seq_gpu_[id]);
    EXPECT_TRUE(c.ok() && g.ok());
    EXPECT_EQ((*c)->slot, (*g)->slot);
    const int64_t sb = layout_cpu_->slot_bytes(), gb = layout_gpu_->slot_bytes();
    std::memcpy(cpu_slots_.data() + (*c)->slot * sb, cpu_slots_.data() + seq_cpu_[id]->slot * sb,
                static_cast<size_t>(sb));
    EXPECT_EQ(cudaMemcpy(static_cast<uint8_t*>(gpu_slots_.get()) + (*g)->slot * gb,
                         static_cast<uint8_t*>(gpu_slots_.get()) + seq_gpu_[id]->slot * gb,
                         static_cast<size_t>(gb), cudaMemcpyDeviceToDevice),
              cudaSuccess);
    seq_cpu_.push_back(std::move(c).value());
    seq_gpu_.push_back(std::move(g).value());
    return static_cast<int>(seq_cpu_.size()) - 1;
  }

  // One step: work = (sequence id, new rows), in batch order.
  void Step(const std::vector<std::pair<int, int64_t>>& work, std::mt19937* rng) {
    const int64_t d = cfg_.hidden_size;
    int64_t rows = 0;
    for (const auto& w : work) rows += w.second;
    SCOPED_TRACE(absl::StrCat("step ", step_, " (", work.size(), " seqs, ", rows, " rows)"));
    const std::vector<float> x = Normal(static_cast<size_t>(rows * d), rng, 0.05f, 1.0f);

    // CPU.
    std::vector<cpu::CpuSeq> cs;
    int64_t row = 0;
    for (const auto& w : work) {
      cpu::CpuSeq s;
      s.seq = seq_cpu_[w.first].get();
      s.start_pos = s.seq->num_tokens;
      s.row_begin = row;
      s.num_rows = w.second;
      s.slot = cpu_slots_.data() + s.seq->slot * layout_cpu_->slot_bytes();
      cs.push_back(s);
      row += w.second;
    }
    ThreadPool pool(2);
    cpu::CpuContext cctx;
    cctx.pool = &pool;
    cctx.store = store_cpu_.get();
    cctx.layout = layout_cpu_.get();
    cctx.block_memory = cpu_blocks_.data();
    cctx.routing = &routing_cpu_;
    std::vector<float> want(static_cast<size_t>(rows * d));
    const absl::Status cst = cpu_layer_->Forward(cctx, cs, x.data(), want.data());
    ASSERT_TRUE(cst.ok()) << cst;

    // GPU: the batch description as CudaBackend builds it.
    cuda::ScratchArena& scratch = dev_->scratch();
    scratch.Rewind();
    cuda::CudaBatch b;
    b.total_rows = rows;
    b.all_decode = true;
    std::vector<int32_t> slots, cu{0}, row_seq, row_pos;
    std::vector<int64_t> start;
    row = 0;
    for (size_t i = 0; i < work.size(); ++i) {
      cuda::CudaSeq s;
      s.seq = seq_gpu_[work[i].first].get();
      s.start_pos = s.seq->num_tokens;
      s.row_begin = row;
      s.num_rows = work[i].second;
      s.slot = s.seq->slot;
      b.seqs.push_back(s);
      b.max_rows = std::max(b.max_rows, s.num_rows);
      if (s.num_rows != 1) b.all_decode = false;
      slots.push_back(s.slot);
      start.push_back(s.start_pos);
      for (int64_t r = 0; r < s.num_rows; ++r) {
        row_seq.push_back(static_cast<int32_t>(i));
        row_pos.push_back(static_cast<int32_t>(s.start_pos + r));
      }
      row += s.num_rows;
      cu.push_back(static_cast<int32_t>(row));
    }
    const int n = static_cast<int>(work.size());
    b.host_cu_seqlens = cu;
    b.host_start_pos = start;
    b.host_row_pos = row_pos;
    auto up_slots = dev_->Upload(slots.data(), n, "slots");
    auto up_cu = dev_->Upload(cu.data(), n + 1, "cu_seqlens");
    auto up_start = dev_->Upload(start.data(), n, "start_pos");
    auto up_rs = dev_->Upload(row_seq.data(), rows, "row_seq");
    auto up_rp = dev_->Upload(row_pos.data(), rows, "row_pos");
    auto up_x = dev_->Upload(x.data(), rows * d, "x");
    auto out = scratch.AllocArray<float>(rows * d, "out");
    ASSERT_TRUE(up_slots.ok() && up_cu.ok() && up_start.ok() && up_rs.ok() && up_rp.ok() &&
                up_x.ok() && out.ok());
    b.slots = *up_slots;
    b.cu_seqlens = *up_cu;
    b.start_pos = *up_start;
    b.row_seq = *up_rs;
    b.row_pos = *up_rp;
    cuda::CudaContext gctx;
    gctx.dev = dev_.get();
    gctx.store = store_gpu_.get();
    gctx.layout = layout_gpu_.get();
    gctx.slot_pool = static_cast<uint8_t*>(gpu_slots_.get());
    gctx.block_pool = static_cast<uint8_t*>(gpu_blocks_.get());
    gctx.batch = &b;
    gctx.routing = &routing_gpu_;
    const absl::Status gst = gpu_layer_->Forward(gctx, *up_x, *out);
    ASSERT_TRUE(gst.ok()) << gst;
    std::vector<float> got(static_cast<size_t>(rows * d));
    ASSERT_TRUE(dev_->CopyToHost(got.data(), *out, got.size() * sizeof(float)).ok());
    const absl::Status sync = dev_->Synchronize();
    ASSERT_TRUE(sync.ok()) << sync;
    ExpectClose(got, want, Bound(), Label("out"));

    for (const auto& w : work) {
      seq_cpu_[w.first]->num_tokens += w.second;
      seq_gpu_[w.first]->num_tokens += w.second;
    }
    EXPECT_EQ(routing_gpu_.to_softmax, routing_cpu_.to_softmax);
    EXPECT_EQ(routing_gpu_.to_gdn, routing_cpu_.to_gdn);
    ++step_;
  }

  // Decisions, carried state and kept KV of every sequence, against the CPU.
  void CompareState() {
    // Decisions: the same set (the GPU applies them phase by phase, the CPU sequence by
    // sequence), identical ops, logits equal to rounding.
    using Key = std::tuple<int32_t, int64_t, int>;
    std::map<Key, cpu::NatslDecision> cpu_dec, gpu_dec;
    for (const auto& d : log_cpu_.decisions) cpu_dec[{d.slot, d.chunk, d.head}] = d;
    for (const auto& d : log_gpu_.decisions) gpu_dec[{d.slot, d.chunk, d.head}] = d;
    EXPECT_EQ(log_gpu_.decisions.size(), log_cpu_.decisions.size());
    ASSERT_EQ(gpu_dec.size(), cpu_dec.size());
    std::vector<float> gl, cl;
    int softmax = 0;
    for (const auto& [key, c] : cpu_dec) {
      auto it = gpu_dec.find(key);
      ASSERT_NE(it, gpu_dec.end());
      EXPECT_EQ(it->second.op, c.op)
          << "slot " << c.slot << " chunk " << c.chunk << " head " << c.head;
      gl.push_back(it->second.logit_softmax);
      gl.push_back(it->second.logit_gdn);
      cl.push_back(c.logit_softmax);
      cl.push_back(c.logit_gdn);
      softmax += c.op == 0;
    }
    ExpectClose(gl, cl, 1e-6, "natsl layer router logits");
    std::printf("natsl layer%s: %zu decisions (%d softmax), %lld logits not bitwise equal\n",
                opts_.bf16 ? " bf16" : " f32", cpu_dec.size(), softmax,
                static_cast<long long>(BitwiseMismatches(gl, cl)));

    // Slot components.
    std::vector<uint8_t> gpu_slots(gpu_slots_.bytes());
    ASSERT_EQ(
        cudaMemcpy(gpu_slots.data(), gpu_slots_.get(), gpu_slots.size(), cudaMemcpyDeviceToHost),
        cudaSuccess);
    for (size_t i = 0; i < seq_cpu_.size(); ++i) {
      if (seq_cpu_[i] == nullptr) continue;
      const int32_t slot = seq_cpu_[i]->slot;
      for (const char* name : {"S", "S_committed", "g_sum", "x_sum", "conv"}) {
        const StateComponent* cc = layout_cpu_->FindComponent(kLayer, name);
        const StateComponent* gc = layout_gpu_->FindComponent(kLayer, name);
        ASSERT_TRUE(cc != nullptr && gc != nullptr && cc->bytes == gc->bytes) << name;
        std::vector<float> c(static_cast<size_t>(cc->bytes / 4)), g(c.size());
        std::memcpy(c.data(), cpu_slots_.data() + slot * layout_cpu_->slot_bytes() + cc->offset,
                    static_cast<size_t>(cc->bytes));
        std::memcpy(g.data(), gpu_slots.data() + slot * layout_gpu_->slot_bytes() + gc->offset,
                    static_cast<size_t>(gc->bytes));
        ExpectClose(g, c, Bound(), Label(absl::StrCat("slot ", name)));
      }
    }

    // KV: the same chunks per stream; keys and values of their valid tokens.
    std::vector<uint8_t> gpu_blocks(gpu_blocks_.bytes());
    ASSERT_EQ(
        cudaMemcpy(gpu_blocks.data(), gpu_blocks_.get(), gpu_blocks.size(), cudaMemcpyDeviceToHost),
        cudaSuccess);
    const int first = layout_cpu_->first_stream(kLayer);
    const NatslLayerConfig& nc = cfg_.layers[kLayer].natsl;
    const int G = nc.groups(), dak = nc.attn_head_k_dim, dav = nc.attn_head_v_dim;
    std::vector<float> kv_cpu, kv_gpu;
    for (size_t i = 0; i < seq_cpu_.size(); ++i) {
      const SequenceState& sc = *seq_cpu_[i];
      const SequenceState& sg = *seq_gpu_[i];
      for (int n = 0; n < nc.gdn.num_heads; ++n) {
        const auto& tc = sc.streams[first + n];
        const auto& tg = sg.streams[first + n];
        ASSERT_EQ(tc.size(), tg.size()) << "sequence " << i << " stream " << n;
        for (size_t e = 0; e < tc.size(); ++e) {
          ASSERT_EQ(tc[e].chunk, tg[e].chunk) << "sequence " << i << " stream " << n;
          const int64_t valid =
              tc[e].chunk < sc.num_tokens / kChunk ? kChunk : sc.num_tokens % kChunk;
          for (int64_t t = 0; t < valid; ++t) {
            for (int g = 0; g < G; ++g) {
              for (int k = 0; k < dak + dav; ++k) {
                const int64_t off = k < dak
                                        ? (t * G + g) * dak + k
                                        : int64_t{kChunk} * G * dak + (t * G + g) * dav + (k - dak);
                float cv;
                std::memcpy(&cv,
                            cpu_blocks_.data() + tc[e].block * layout_cpu_->block_bytes() + off * 4,
                            4);
                float gv;
                const uint8_t* gb = gpu_blocks.data() + tg[e].block * layout_gpu_->block_bytes();
                if (opts_.bf16) {
                  uint16_t bits;
                  std::memcpy(&bits, gb + off * 2, 2);
                  gv = Bf16ToFloat(bits);
                } else {
                  std::memcpy(&gv, gb + off * 4, 4);
                }
                kv_cpu.push_back(cv);
                kv_gpu.push_back(gv);
              }
            }
          }
        }
      }
    }
    ExpectClose(kv_gpu, kv_cpu, Bound(), Label("kept KV"));
  }

  int64_t num_tokens(int id) const { return seq_cpu_[id]->num_tokens; }

 private:
  static constexpr int kLayer = 1;
  double Bound() const { return opts_.bf16 ? 1e-2 : 1e-4; }
  std::string Label(const std::string& what) const {
    return absl::StrCat("natsl layer ", opts_.bf16 ? "bf16 " : "f32 ",
                        opts_.max_kv_tokens_per_stream > 0 ? "capped " : "", what);
  }

  LayerOptions opts_;
  std::string dir_;
  std::unique_ptr<Checkpoint> ck_cpu_, ck_gpu_;
  ModelConfig cfg_;
  std::unique_ptr<StateLayout> layout_cpu_, layout_gpu_;
  std::unique_ptr<StateStore> store_cpu_, store_gpu_;
  std::unique_ptr<cpu::CpuLayer> cpu_layer_;
  std::unique_ptr<cuda::DeviceContext> dev_;
  std::unique_ptr<cuda::DeviceWeights> weights_;
  std::unique_ptr<cuda::CudaLayer> gpu_layer_;
  cpu::NatslDecisionLog log_cpu_, log_gpu_;
  RoutingCounts routing_cpu_, routing_gpu_;
  std::vector<uint8_t> cpu_slots_, cpu_blocks_;
  DeviceBuffer gpu_slots_, gpu_blocks_;
  std::vector<std::unique_ptr<SequenceState>> seq_cpu_, seq_gpu_;
  int step_ = 0;
};

// Prefills crossing chunk ends, exact chunks, mixed prefill + decode steps, long decode runs
// (the decode path, with chunk ends), a fork (copy-on-write of the shared current block), and a
// long prefill at the end.
void RunLayerSchedule(const LayerOptions& o, const std::string& name) {
  LayerPair lp;
  lp.Init(o, name);
  if (::testing::Test::HasFatalFailure()) return;
  std::mt19937 rng(21);
  const int a = lp.NewSequence(), b = lp.NewSequence(), c = lp.NewSequence();
  lp.Step({{a, 150}, {b, 64}, {c, 5}}, &rng);
  lp.Step({{a, 1}, {b, 37}, {c, 70}}, &rng);
  for (int i = 0; i < 45 && !::testing::Test::HasFatalFailure(); ++i) {
    lp.Step({{a, 1}, {b, 1}, {c, 1}}, &rng);  // a crosses 191, b crosses 127
  }
  const int f = lp.Fork(a);  // mid chunk 3: the current block is shared
  lp.Step({{a, 100}, {f, 1}, {c, 9}}, &rng);
  for (int i = 0; i < 12 && !::testing::Test::HasFatalFailure(); ++i) {
    lp.Step({{c, 1}, {a, 1}, {f, 1}, {b, 1}}, &rng);
  }
  lp.Step({{b, 300}, {f, 2}}, &rng);
  if (::testing::Test::HasFatalFailure()) return;
  lp.CompareState();
}

class NatslLayerTest : public GpuTest {};

TEST_F(NatslLayerTest, F32MatchesCpuLayer) { RunLayerSchedule(LayerOptions(), "f32"); }

TEST_F(NatslLayerTest, Bf16MatchesCpuLayer) {
  LayerOptions o;
  o.bf16 = true;
  RunLayerSchedule(o, "bf16");
}

// A cap of 2 blocks per stream with kEvictOldest: evictions happen while blocks of the same
// step are still read, and in the CPU's order.
TEST_F(NatslLayerTest, F32WithKvCapMatchesCpuLayer) {
  LayerOptions o;
  o.max_kv_tokens_per_stream = 128;
  RunLayerSchedule(o, "capped");
}

// Other head shapes: 3 decision heads with one softmax head each (G = 1), d_ak = d_av / 2.
TEST_F(NatslLayerTest, F32OneSoftmaxHeadPerDecisionHead) {
  LayerOptions o;
  o.hidden = 64;
  o.num_heads = 3;
  o.head_dim = 32;
  o.num_attn_heads = 3;
  RunLayerSchedule(o, "g1");
}

}  // namespace
}  // namespace hyla
