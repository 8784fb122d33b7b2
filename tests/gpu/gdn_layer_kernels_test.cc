// The kernels of the CUDA GDN layer (kernels/ops.h ShortConvPrefill, GatedRmsNorm) against the
// CPU reference (runtime/cpu/gdn_core.h ShortConv, GatedRmsNorm; runtime/cpu/ops.h RmsNorm), and
// the CUDA GDN layer (runtime/cuda/gdn_layer.cc on GdnBranch) against the CPU GDN layer
// (runtime/cpu/gdn_layer.cc) on a generated model, step by step: prefill, decode and mixed
// batches, output and slot state after every step.
// Shapes are odd (channels, head widths, strides, sequence lengths shorter than the conv tail,
// empty and padding sequences). Bounds (max|diff| / max|ref|): fp32 1e-4, bf16 1e-2; conv tails
// are copies of inputs and must be exact. Every comparison is recorded in the "[gpu-error]"
// summary. Label gpu; every test skips without a CUDA device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
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
#include "runtime/cpu/gdn_core.h"
#include "runtime/cpu/ops.h"
#include "runtime/cuda/cuda_layer.h"
#include "runtime/cuda/device_context.h"
#include "runtime/cuda/gemm.h"
#include "runtime/model/checkpoint.h"
#include "runtime/state/state_layout.h"
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

// ---- ShortConvPrefill -----------------------------------------------------------------------

struct ConvCase {
  int channels = 1;
  int kernel = 4;
  std::vector<int> lens;  // rows per sequence (0 allowed)
  int padding_seq = -1;   // this sequence gets slot -1
  bool bf16 = false;
  bool silu = true;
  int x_pad = 0;  // x rows are channels + x_pad elements apart
  int out_pad = 0;
};

// The state of a conv test: a pool of tails, per-sequence slots, the conv weight.
struct ConvWorld {
  int C = 1, K = 1, num_slots = 1;
  int64_t tail_stride = 0;     // elements between slots
  std::vector<float> weight;   // [C, K]
  std::vector<float> tails;    // [num_slots, tail_stride]
  std::vector<int32_t> slots;  // [num_seqs]
};

ConvWorld MakeConvWorld(int C, int K, int num_seqs, int padding_seq, std::mt19937* rng) {
  ConvWorld w;
  w.C = C;
  w.K = K;
  w.num_slots = num_seqs + 3;
  w.tail_stride = int64_t{K - 1} * C + 7;
  w.weight = Normal(static_cast<size_t>(C) * K, rng, 0.0f, 0.5f);
  w.tails = Normal(static_cast<size_t>(w.num_slots * w.tail_stride), rng, 0.0f, 1.0f);
  // Distinct slots in a shuffled order, not 0..n-1.
  std::vector<int32_t> all(static_cast<size_t>(w.num_slots));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), *rng);
  w.slots.assign(all.begin(), all.begin() + num_seqs);
  if (padding_seq >= 0) w.slots[padding_seq] = -1;
  return w;
}

// CPU reference of one ShortConvPrefill call on `world` (tails updated in place).
// x: [rows, x_stride]; returns out [rows, C] dense.
std::vector<float> CpuConv(ConvWorld* world, const std::vector<int>& lens,
                           const std::vector<float>& x, int64_t x_stride, bool silu) {
  const int64_t total = std::accumulate(lens.begin(), lens.end(), int64_t{0});
  std::vector<float> out(static_cast<size_t>(total * world->C), 0.0f);
  int64_t begin = 0;
  for (size_t s = 0; s < lens.size(); ++s) {
    const int32_t slot = world->slots[s];
    if (slot >= 0 && lens[s] > 0) {
      float* tail = world->K > 1 ? world->tails.data() + slot * world->tail_stride : nullptr;
      cpu::ShortConv(x.data() + begin * x_stride, x_stride, lens[s], world->C, world->weight.data(),
                     world->K, tail, silu, out.data() + begin * world->C, world->C);
    }
    begin += lens[s];
  }
  return out;
}

std::vector<int32_t> CuSeqlens(const std::vector<int>& lens) {
  std::vector<int32_t> cu(lens.size() + 1, 0);
  for (size_t s = 0; s < lens.size(); ++s) cu[s + 1] = cu[s] + lens[s];
  return cu;
}

// Runs ShortConvPrefill on the device copies (d_tails updated) and returns out [rows, C] dense
// as floats. x holds the (bf16-representable, when bf16) input values [rows, x_stride].
std::vector<float> GpuConv(const ConvWorld& world, const DeviceBuffer& d_weight,
                           const DeviceBuffer& d_tails, const std::vector<int>& lens,
                           const std::vector<float>& x, int64_t x_stride, bool bf16, bool silu,
                           int64_t out_stride) {
  const std::vector<int32_t> cu = CuSeqlens(lens);
  const int64_t total = cu.back();
  DeviceBuffer d_cu = ToDevice(cu);
  DeviceBuffer d_slots = ToDevice(world.slots);
  DeviceBuffer d_x, d_out;
  if (bf16) {
    std::vector<float> xr = x;
    d_x = ToDevice(gpu_test::RoundToBf16(&xr));
    d_out = DeviceBuffer(static_cast<size_t>(std::max<int64_t>(total, 1) * out_stride) * 2);
  } else {
    d_x = ToDevice(x);
    d_out = DeviceBuffer(static_cast<size_t>(std::max<int64_t>(total, 1) * out_stride) * 4);
  }
  kernels::ShortConvPrefillParams p;
  p.num_seqs = static_cast<int>(lens.size());
  p.total_rows = total;
  p.channels = world.C;
  p.kernel = world.K;
  p.dtype = bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
  p.x = d_x.get();
  p.x_stride = x_stride;
  p.weight = d_weight.as<float>();
  p.cu_seqlens = d_cu.as<int32_t>();
  p.slots = d_slots.as<int32_t>();
  p.tail = d_tails.as<float>();
  p.tail_slot_stride = world.tail_stride;
  p.silu = silu;
  p.out = d_out.get();
  p.out_stride = out_stride;
  const int err = kernels::ShortConvPrefill(p, nullptr);
  EXPECT_EQ(err, 0) << kernels::KernelErrorString(err);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> out(static_cast<size_t>(total * world.C));
  if (total == 0) return out;
  if (bf16) {
    const std::vector<uint16_t> raw =
        ToHost<uint16_t>(d_out, static_cast<size_t>(total * out_stride));
    for (int64_t r = 0; r < total; ++r) {
      for (int c = 0; c < world.C; ++c) out[r * world.C + c] = Bf16ToFloat(raw[r * out_stride + c]);
    }
  } else {
    const std::vector<float> raw = ToHost<float>(d_out, static_cast<size_t>(total * out_stride));
    for (int64_t r = 0; r < total; ++r) {
      for (int c = 0; c < world.C; ++c) out[r * world.C + c] = raw[r * out_stride + c];
    }
  }
  return out;
}

// Random input rows [rows, stride]; bf16-representable when bf16.
std::vector<float> RandomInput(int64_t rows, int64_t stride, bool bf16, std::mt19937* rng) {
  std::vector<float> x =
      Normal(static_cast<size_t>(std::max<int64_t>(rows, 0) * stride), rng, 0.0f, 1.0f);
  if (bf16) gpu_test::RoundToBf16(&x);
  return x;
}

void RunConvCase(const ConvCase& c, uint32_t seed) {
  SCOPED_TRACE(absl::StrCat("C ", c.channels, " K ", c.kernel, " bf16 ", c.bf16, " silu ", c.silu,
                            " seqs ", c.lens.size()));
  std::mt19937 rng(seed);
  ConvWorld world =
      MakeConvWorld(c.channels, c.kernel, static_cast<int>(c.lens.size()), c.padding_seq, &rng);
  const int64_t total = std::accumulate(c.lens.begin(), c.lens.end(), int64_t{0});
  const int64_t x_stride = c.channels + c.x_pad;
  const std::vector<float> x = RandomInput(total, x_stride, c.bf16, &rng);
  DeviceBuffer d_weight = ToDevice(world.weight);
  DeviceBuffer d_tails = ToDevice(world.tails);
  ASSERT_TRUE(d_weight.ok() && d_tails.ok());
  const std::vector<float> got = GpuConv(world, d_weight, d_tails, c.lens, x, x_stride, c.bf16,
                                         c.silu, c.channels + c.out_pad);
  const std::vector<float> want = CpuConv(&world, c.lens, x, x_stride, c.silu);
  ExpectClose(got, want, c.bf16 ? 1e-2 : 1e-4,
              c.bf16 ? "short_conv_prefill bf16 out" : "short_conv_prefill f32 out");
  // Tails are copies of inputs (or of the old tail): exact; untouched slots keep their values.
  ExpectClose(ToHost<float>(d_tails, world.tails.size()), world.tails, 0.0,
              "short_conv_prefill tails (exact)");
}

TEST_F(GpuTest, ShortConvPrefillMatchesCpu) {
  // Sequences shorter than, equal to and longer than the K-1 tail, empty ones, a padding one.
  RunConvCase({37, 4, {5, 1, 0, 2, 3, 4, 70}, -1, false, true, 3, 0}, 1);
  RunConvCase({37, 4, {5, 1, 0, 2, 3, 4, 70}, 3, true, true, 3, 5}, 2);
  RunConvCase({129, 2, {1, 1, 1}, -1, false, true, 0, 0}, 3);
  RunConvCase({129, 5, {9, 0, 1, 2, 3, 4, 130}, 0, false, false, 1, 2}, 4);
  RunConvCase({8, 1, {3, 0, 4}, -1, false, true, 0, 0}, 5);  // K = 1: no tail
  RunConvCase({200, 3, {1, 2, 0}, 1, true, false, 0, 0}, 6);
  RunConvCase({3, 4, {0, 0}, -1, false, true, 0, 0}, 7);  // no rows at all
  // Many sequences, many rows (grid-stride loops).
  std::vector<int> lens;
  std::mt19937 rng(99);
  for (int s = 0; s < 45; ++s) lens.push_back(static_cast<int>(rng() % 40));
  RunConvCase({513, 4, lens, 17, false, true, 0, 0}, 8);
}

// Chained calls: prefill, then single-token steps through ShortConvDecode, then prefill again,
// give the outputs and tails of one call over all rows (the CPU reference, per sequence).
TEST_F(GpuTest, ShortConvPrefillThenDecodeEqualsOneCall) {
  for (bool bf16 : {false, true}) {
    for (int K : {2, 4, 6}) {
      SCOPED_TRACE(absl::StrCat("bf16 ", bf16, " K ", K));
      std::mt19937 rng(1000 + K + (bf16 ? 7 : 0));
      const int C = 45;
      const std::vector<int> part1 = {0, 1, 2, 7, 3};  // some shorter than K-1
      const int decode_steps = 3;
      const std::vector<int> part3 = {4, 0, 1, 66, 2};
      const int n = static_cast<int>(part1.size());
      ConvWorld world = MakeConvWorld(C, K, n, -1, &rng);
      ConvWorld ref = world;
      DeviceBuffer d_weight = ToDevice(world.weight);
      DeviceBuffer d_tails = ToDevice(world.tails);
      ASSERT_TRUE(d_weight.ok() && d_tails.ok());

      // Per sequence, all its rows in order (dense [len, C]).
      std::vector<std::vector<float>> seq_x(n), seq_out(n);
      auto append = [&](int s, const float* row) { seq_x[s].insert(seq_x[s].end(), row, row + C); };

      // 1. Prefill.
      std::vector<float> x1 = RandomInput(CuSeqlens(part1).back(), C, bf16, &rng);
      std::vector<float> o1 = GpuConv(world, d_weight, d_tails, part1, x1, C, bf16, true, C);
      for (int s = 0, r = 0; s < n; ++s) {
        for (int i = 0; i < part1[s]; ++i, ++r) {
          append(s, x1.data() + int64_t{r} * C);
          seq_out[s].insert(seq_out[s].end(), o1.begin() + int64_t{r} * C,
                            o1.begin() + int64_t{r + 1} * C);
        }
      }
      // 2. Decode steps: one row per sequence.
      DeviceBuffer d_slots = ToDevice(world.slots);
      for (int step = 0; step < decode_steps; ++step) {
        std::vector<float> x2 = RandomInput(n, C, bf16, &rng);
        DeviceBuffer d_x, d_out;
        if (bf16) {
          std::vector<float> xr = x2;
          d_x = ToDevice(gpu_test::RoundToBf16(&xr));
          d_out = DeviceBuffer(static_cast<size_t>(n) * C * 2);
        } else {
          d_x = ToDevice(x2);
          d_out = DeviceBuffer(static_cast<size_t>(n) * C * 4);
        }
        kernels::ShortConvDecodeParams p;
        p.num_seqs = n;
        p.channels = C;
        p.kernel = K;
        p.dtype = bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
        p.x = d_x.get();
        p.x_stride = C;
        p.weight = d_weight.as<float>();
        p.slots = d_slots.as<int32_t>();
        p.tail = d_tails.as<float>();
        p.tail_slot_stride = world.tail_stride;
        p.silu = true;
        p.out = d_out.get();
        p.out_stride = C;
        HYLA_ASSERT_LAUNCH_OK(kernels::ShortConvDecode(p, nullptr));
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<float> o2(static_cast<size_t>(n) * C);
        if (bf16) {
          o2 = gpu_test::Bf16ToFloats(ToHost<uint16_t>(d_out, o2.size()));
        } else {
          o2 = ToHost<float>(d_out, o2.size());
        }
        for (int s = 0; s < n; ++s) {
          append(s, x2.data() + int64_t{s} * C);
          seq_out[s].insert(seq_out[s].end(), o2.begin() + int64_t{s} * C,
                            o2.begin() + int64_t{s + 1} * C);
        }
      }
      // 3. Prefill again.
      std::vector<float> x3 = RandomInput(CuSeqlens(part3).back(), C, bf16, &rng);
      std::vector<float> o3 = GpuConv(world, d_weight, d_tails, part3, x3, C, bf16, true, C);
      for (int s = 0, r = 0; s < n; ++s) {
        for (int i = 0; i < part3[s]; ++i, ++r) {
          append(s, x3.data() + int64_t{r} * C);
          seq_out[s].insert(seq_out[s].end(), o3.begin() + int64_t{r} * C,
                            o3.begin() + int64_t{r + 1} * C);
        }
      }

      // Reference: one ShortConv per sequence over all its rows.
      std::vector<float> got, want;
      for (int s = 0; s < n; ++s) {
        const int64_t rows = static_cast<int64_t>(seq_x[s].size()) / C;
        std::vector<float> out(seq_x[s].size());
        cpu::ShortConv(seq_x[s].data(), C, rows, C, ref.weight.data(), K,
                       ref.tails.data() + ref.slots[s] * ref.tail_stride, true, out.data(), C);
        want.insert(want.end(), out.begin(), out.end());
        got.insert(got.end(), seq_out[s].begin(), seq_out[s].end());
      }
      ExpectClose(got, want, bf16 ? 1e-2 : 1e-4,
                  bf16 ? "short_conv chained bf16 out" : "short_conv chained f32 out");
      ExpectClose(ToHost<float>(d_tails, ref.tails.size()), ref.tails, 0.0,
                  "short_conv chained tails (exact)");
    }
  }
}

TEST_F(GpuTest, ShortConvPrefillRejectsBadArguments) {
  DeviceBuffer buf(4096);
  kernels::ShortConvPrefillParams ok;
  ok.num_seqs = 1;
  ok.total_rows = 2;
  ok.channels = 4;
  ok.kernel = 3;
  ok.x = buf.get();
  ok.x_stride = 4;
  ok.weight = buf.as<float>();
  ok.cu_seqlens = buf.as<int32_t>();
  ok.slots = buf.as<int32_t>();
  ok.tail = buf.as<float>();
  ok.tail_slot_stride = 8;
  ok.out = buf.get();
  ok.out_stride = 4;
  auto rejected = [](kernels::ShortConvPrefillParams p) {
    return kernels::ShortConvPrefill(p, nullptr) == static_cast<int>(cudaErrorInvalidValue);
  };
  kernels::ShortConvPrefillParams p = ok;
  p.channels = 0;
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.kernel = 0;
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.tail = nullptr;
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.tail_slot_stride = 7;  // < (K-1)·C
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.x_stride = 3;
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.num_seqs = -1;
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.num_seqs = 0;  // rows without sequences
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.dtype = static_cast<kernels::KernelDType>(7);
  EXPECT_TRUE(rejected(p));
}

// ---- GatedRmsNorm ----------------------------------------------------------------------------

struct NormCase {
  int64_t rows = 1;
  int heads = 1;
  int n = 1;
  bool gate = true;
  bool weight = true;
  int x_pad = 0, gate_pad = 0, out_pad = 0;
  bool in_place = false;  // out == x (then out_pad = x_pad)
  float eps = 1e-6f;
  kernels::GatedRmsNormVariant variant = kernels::GatedRmsNormVariant::kDefault;
};

void RunNormCase(const NormCase& c, uint32_t seed) {
  SCOPED_TRACE(absl::StrCat("rows ", c.rows, " heads ", c.heads, " n ", c.n, " gate ", c.gate,
                            " weight ", c.weight, " in_place ", c.in_place, " variant ",
                            static_cast<int>(c.variant)));
  std::mt19937 rng(seed);
  const int64_t width = int64_t{c.heads} * c.n;
  const int64_t xs = width + c.x_pad, gs = width + c.gate_pad;
  const int64_t os = c.in_place ? xs : width + c.out_pad;
  std::vector<float> x = Normal(static_cast<size_t>(c.rows * xs), &rng, 0.3f, 2.0f);
  std::vector<float> g = Normal(static_cast<size_t>(c.rows * gs), &rng, 0.0f, 3.0f);
  std::vector<float> w = Normal(static_cast<size_t>(c.n), &rng, 1.0f, 0.3f);
  DeviceBuffer d_x = ToDevice(x), d_g = ToDevice(g), d_w = ToDevice(w);
  DeviceBuffer d_out_own(static_cast<size_t>(std::max<int64_t>(c.rows * os, 1)) * 4);
  ASSERT_TRUE(d_x.ok() && d_g.ok() && d_w.ok() && d_out_own.ok());
  float* d_out = c.in_place ? d_x.as<float>() : d_out_own.as<float>();
  kernels::GatedRmsNormParams p;
  p.rows = c.rows;
  p.heads = c.heads;
  p.n = c.n;
  p.x = d_x.as<float>();
  p.x_stride = xs;
  p.gate = c.gate ? d_g.as<float>() : nullptr;
  p.gate_stride = gs;
  p.weight = c.weight ? d_w.as<float>() : nullptr;
  p.eps = c.eps;
  p.out = d_out;
  p.out_stride = os;
  p.variant = c.variant;
  // The bf16 copy (dense) for the GEMM after the norm.
  DeviceBuffer d_bf16(static_cast<size_t>(std::max<int64_t>(c.rows * width, 1)) * 2);
  ASSERT_TRUE(d_bf16.ok());
  p.out_bf16 = d_bf16.as<uint16_t>();
  HYLA_ASSERT_LAUNCH_OK(kernels::GatedRmsNorm(p, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> raw(static_cast<size_t>(c.rows * os));
  if (!raw.empty()) {
    ASSERT_EQ(cudaMemcpy(raw.data(), d_out, raw.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  }
  std::vector<float> got(static_cast<size_t>(c.rows * width)), want(got.size());
  for (int64_t r = 0; r < c.rows; ++r) {
    for (int h = 0; h < c.heads; ++h) {
      const float* xh = x.data() + r * xs + int64_t{h} * c.n;
      float* ref = want.data() + r * width + int64_t{h} * c.n;
      const float* wp = c.weight ? w.data() : nullptr;
      if (c.gate) {
        cpu::GatedRmsNorm(xh, g.data() + r * gs + int64_t{h} * c.n, wp, c.eps, c.n, ref);
      } else {
        cpu::RmsNorm(xh, wp, c.eps, c.n, ref);
      }
    }
    std::copy(raw.begin() + r * os, raw.begin() + r * os + width, got.begin() + r * width);
  }
  ExpectClose(got, want, 1e-4, c.gate ? "gated_rmsnorm f32" : "gated_rmsnorm f32 (no gate)");
  // out_bf16 holds exactly the fp32 outputs rounded to bf16.
  std::vector<uint16_t> bf(got.size());
  if (!bf.empty()) {
    ASSERT_EQ(cudaMemcpy(bf.data(), d_bf16.as<uint16_t>(), bf.size() * 2, cudaMemcpyDeviceToHost),
              cudaSuccess);
  }
  size_t bf_mismatch = 0;
  for (size_t i = 0; i < bf.size(); ++i) bf_mismatch += bf[i] != FloatToBf16(got[i]) ? 1 : 0;
  EXPECT_EQ(bf_mismatch, 0u) << "out_bf16 differs from the rounded fp32 output";
  // Padding columns of a separate output stay untouched (0xFF poison = NaN bytes).
  if (!c.in_place && c.out_pad > 0 && c.rows > 0) {
    uint32_t bits = 0;
    std::memcpy(&bits, &raw[static_cast<size_t>(width)], 4);
    EXPECT_EQ(bits, 0xFFFFFFFFu) << "a padding column of out was written";
  }
}

TEST_F(GpuTest, GatedRmsNormMatchesCpu) {
  RunNormCase({7, 3, 33, true, true, 5, 2, 3, false}, 11);
  RunNormCase({1, 1, 1, true, true, 0, 0, 0, false}, 12);
  RunNormCase({129, 4, 128, true, true, 0, 7, 0, true}, 13);        // in place
  RunNormCase({5, 2, 200, false, true, 1, 0, 1, false}, 14);        // plain RMSNorm per head
  RunNormCase({9, 5, 64, true, false, 0, 0, 0, false, 1e-5f}, 15);  // no affine weight
  RunNormCase({3, 1, 1000, true, true, 3, 0, 0, false}, 16);        // wide head (n > 32 · lanes)
  RunNormCase({2000, 16, 17, true, true, 0, 0, 0, false}, 17);      // many (row, head) pairs
  RunNormCase({0, 2, 8, true, true, 0, 0, 0, false}, 18);           // no rows
}

// Small shapes for compute-sanitizer: --gtest_filter='*Sanitizer*'.
TEST_F(GpuTest, GatedRmsNormSanitizerSmall) {
  using V = kernels::GatedRmsNormVariant;
  for (const V v : {V::kScalar, V::kVec}) {
    NormCase c{3, 2, 36, true, true, 4, 8, 0, false};
    c.variant = v;
    RunNormCase(c, 90);
    c.in_place = true;
    RunNormCase(c, 91);
  }
}

// The decode shapes of the GDN output norm (HV 32 heads of dv 128, the gate inside the wider
// projection rows) through both launch shapes, and head widths that take the 16-byte path with
// 1, 2 and 4 packs per lane, a partial warp (n 36, 96) or fall back (n 130, 516, odd strides).
TEST_F(GpuTest, GatedRmsNormDecodeShapesBothVariants) {
  using V = kernels::GatedRmsNormVariant;
  uint32_t seed = 40;
  for (const V v : {V::kDefault, V::kScalar, V::kVec}) {
    for (const int64_t rows : {1, 3, 64, 257}) {
      NormCase c{rows, 32, 128, true, true, 0, 4160, 0, false};
      c.variant = v;
      RunNormCase(c, ++seed);
      c.in_place = true;
      RunNormCase(c, ++seed);
    }
    for (const int n : {36, 96, 256, 512, 130, 516}) {
      NormCase c{5, 3, n, true, true, 4, 8, 12, false};
      c.variant = v;
      RunNormCase(c, ++seed);
      c.gate = false;
      c.weight = false;
      RunNormCase(c, ++seed);
    }
    NormCase odd{4, 2, 64, true, true, 1, 0, 0, false};  // x stride % 4 != 0: scalar path
    odd.variant = v;
    RunNormCase(odd, ++seed);
  }
}

TEST_F(GpuTest, GatedRmsNormRejectsBadArguments) {
  DeviceBuffer buf(4096);
  kernels::GatedRmsNormParams ok;
  ok.rows = 2;
  ok.heads = 2;
  ok.n = 4;
  ok.x = buf.as<float>();
  ok.x_stride = 8;
  ok.gate = buf.as<float>();
  ok.gate_stride = 8;
  ok.out = buf.as<float>();
  ok.out_stride = 8;
  auto rejected = [](kernels::GatedRmsNormParams p) {
    return kernels::GatedRmsNorm(p, nullptr) == static_cast<int>(cudaErrorInvalidValue);
  };
  kernels::GatedRmsNormParams p = ok;
  p.n = 0;
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.heads = 0;
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.x_stride = 7;
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.gate_stride = 7;
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.out = nullptr;
  EXPECT_TRUE(rejected(p));
  p = ok;
  p.rows = -1;
  EXPECT_TRUE(rejected(p));
  EXPECT_EQ(kernels::GatedRmsNorm(ok, nullptr), 0);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// Tiny shapes for compute-sanitizer (racecheck / memcheck): every path of both kernels once.
TEST_F(GpuTest, SmallGdnLayerKernelsForSanitizers) {
  RunConvCase({3, 3, {0, 1, 2, 5}, -1, false, true, 1, 1}, 21);
  RunConvCase({5, 4, {1, 2}, 1, true, true, 0, 0}, 22);
  RunNormCase({3, 2, 5, true, true, 1, 1, 1, false}, 23);
  RunNormCase({2, 3, 40, true, true, 0, 0, 0, true}, 24);
}

// ---- The CUDA GDN layer against the CPU GDN layer --------------------------------------------

// One sequence of the layer test: its slot and the tokens already in its state.
struct LayerSeq {
  int32_t slot = 0;
  int64_t pos = 0;
};

// A step: (sequence index, new rows) in batch order.
using LayerStep = std::vector<std::pair<int, int>>;

struct LayerVariant {
  const char* name;
  bool use_gate = true;
  bool use_short_conv = true;
  bool allow_neg_eigval = false;
  cuda::Precision precision = cuda::Precision::kF32;
  int head_dim = 0;       // > 0: the GDN layers' dk (the preset's 32 otherwise)
  double expand_v = 1.0;  // with head_dim: dv = head_dim · expand_v
};

void RunLayerTest(const LayerVariant& v) {
  SCOPED_TRACE(v.name);
  // A generated GDN hybrid with GVA (2 q/k heads, 4 value heads, dk = dv = 32); layer 0 is GDN.
  absl::StatusOr<tools::ModelShape> shape = tools::PresetShape(Family::kGdn, "tiny-hybrid");
  ASSERT_TRUE(shape.ok()) << shape.status();
  if (v.head_dim > 0) {
    shape->head_dim = v.head_dim;
    shape->expand_v = v.expand_v;
  }
  tools::GeneratorOptions gen;
  gen.shape = *shape;
  gen.seed = 7;
  const std::string dir = absl::StrCat(::testing::TempDir(), "/gdn_layer_kernels_test_", v.name);
  ASSERT_TRUE(tools::GenerateModel(gen, dir).ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  ModelConfig cfg = (*ck)->config();
  const int layer = 0;
  ASSERT_EQ(cfg.layers[layer].kind, LayerKind::kGdn);
  GdnLayerConfig& g = cfg.layers[layer].gdn;
  g.use_gate = v.use_gate;
  g.use_short_conv = v.use_short_conv;
  g.allow_neg_eigval = v.allow_neg_eigval;
  absl::StatusOr<StateLayout> layout = StateLayout::Create(cfg, DType::kF32);
  ASSERT_TRUE(layout.ok()) << layout.status();
  const std::string prefix = absl::StrCat("model.layers.", layer, ".attn.");
  const int64_t d = cfg.hidden_size;

  // CPU layer.
  cpu::CpuLayerArgs cargs;
  cargs.config = &cfg;
  cargs.layer = layer;
  cargs.prefix = prefix;
  cargs.checkpoint = ck->get();
  cargs.layout = &*layout;
  absl::StatusOr<std::unique_ptr<cpu::CpuLayer>> cpu_layer = cpu::CreateGdnLayer(cargs);
  ASSERT_TRUE(cpu_layer.ok()) << cpu_layer.status();

  // CUDA layer.
  absl::StatusOr<std::unique_ptr<cuda::DeviceContext>> dev =
      cuda::DeviceContext::Create(0, size_t{256} << 20);
  ASSERT_TRUE(dev.ok()) << dev.status();
  cuda::DeviceWeights weights(dev->get(), v.precision);
  cuda::CudaLayerArgs args;
  args.config = &cfg;
  args.layer = layer;
  args.prefix = prefix;
  args.checkpoint = ck->get();
  args.layout = &*layout;
  args.dev = dev->get();
  args.weights = &weights;
  absl::StatusOr<std::unique_ptr<cuda::CudaLayer>> cuda_layer = cuda::CreateCudaGdnLayer(args);
  ASSERT_TRUE(cuda_layer.ok()) << cuda_layer.status();

  // Slots: random non-zero initial states (S small, tails O(1)), the same on both sides.
  std::mt19937 rng(31);
  const int num_slots = 6;
  const int64_t slot_bytes = layout->slot_bytes();
  std::vector<uint8_t> host_slots(static_cast<size_t>(num_slots * slot_bytes), 0);
  std::vector<std::pair<int64_t, int64_t>> compared;  // (offset, floats) of this layer's state
  for (const char* name : {"S", "conv"}) {
    const StateComponent* comp = layout->FindComponent(layer, name);
    if (comp == nullptr) continue;
    compared.emplace_back(comp->offset, comp->bytes / 4);
    for (int s = 0; s < num_slots; ++s) {
      std::vector<float> init =
          Normal(static_cast<size_t>(comp->bytes / 4), &rng, 0.0f, name[0] == 'S' ? 0.05f : 1.0f);
      std::memcpy(host_slots.data() + s * slot_bytes + comp->offset, init.data(), comp->bytes);
    }
  }
  DeviceBuffer d_slots = ToDevice(host_slots);
  ASSERT_TRUE(d_slots.ok());

  std::vector<LayerSeq> seqs = {{4, 0}, {1, 0}, {3, 0}, {0, 0}};
  // Positions cross the 64-token chunk grid; decodes mixed with prefill chunks; empty state.
  const std::vector<LayerStep> steps = {
      {{0, 70}, {1, 5}, {2, 1}},         // prefill + a one-row sequence (prefill path)
      {{0, 1}, {1, 1}, {2, 1}},          // decode
      {{2, 1}, {0, 1}},                  // decode, another order, a subset
      {{0, 1}, {1, 130}, {2, 3}},        // mixed
      {{3, 64}, {1, 1}},                 // a fresh sequence of exactly one chunk
      {{3, 1}, {0, 1}, {1, 1}, {2, 1}},  // decode of all
      {{2, 57}, {3, 2}},                 // ends exactly at a chunk boundary / crosses none
  };
  ThreadPool pool(1);
  cpu::CpuContext cctx;
  cctx.pool = &pool;
  cctx.layout = &*layout;
  const double bound = v.precision == cuda::Precision::kF32 ? 1e-4 : 3e-2;
  const std::string tag = v.precision == cuda::Precision::kF32 ? "f32" : "bf16";

  for (size_t si = 0; si < steps.size(); ++si) {
    SCOPED_TRACE(absl::StrCat("step ", si));
    const LayerStep& step = steps[si];
    cuda::CudaBatch batch;
    std::vector<cpu::CpuSeq> cseqs;
    std::vector<int32_t> slots;
    std::vector<int32_t> row_seq, row_pos;
    batch.host_cu_seqlens.push_back(0);
    int64_t rows = 0;
    bool all_decode = true;
    for (size_t i = 0; i < step.size(); ++i) {
      const LayerSeq& s = seqs[step[i].first];
      const int n = step[i].second;
      cuda::CudaSeq cs;
      cs.start_pos = s.pos;
      cs.row_begin = rows;
      cs.num_rows = n;
      cs.slot = s.slot;
      batch.seqs.push_back(cs);
      cpu::CpuSeq c;
      c.start_pos = s.pos;
      c.row_begin = rows;
      c.num_rows = n;
      c.slot = host_slots.data() + s.slot * slot_bytes;
      cseqs.push_back(c);
      slots.push_back(s.slot);
      for (int r = 0; r < n; ++r) {
        row_seq.push_back(static_cast<int32_t>(i));
        row_pos.push_back(static_cast<int32_t>(s.pos + r));
      }
      rows += n;
      batch.host_cu_seqlens.push_back(static_cast<int32_t>(rows));
      batch.host_start_pos.push_back(s.pos);
      batch.max_rows = std::max<int64_t>(batch.max_rows, n);
      all_decode = all_decode && n == 1;
    }
    batch.total_rows = rows;
    batch.all_decode = all_decode;
    batch.host_row_pos = row_pos;
    cuda::ScratchArena& scratch = (*dev)->scratch();
    scratch.Rewind();
    auto up_slots = (*dev)->Upload(slots.data(), static_cast<int64_t>(slots.size()), "slots");
    auto up_cu = (*dev)->Upload(batch.host_cu_seqlens.data(),
                                static_cast<int64_t>(batch.host_cu_seqlens.size()), "cu");
    auto up_start = (*dev)->Upload(batch.host_start_pos.data(),
                                   static_cast<int64_t>(batch.host_start_pos.size()), "start");
    auto up_row_seq = (*dev)->Upload(row_seq.data(), rows, "row_seq");
    auto up_row_pos = (*dev)->Upload(row_pos.data(), rows, "row_pos");
    ASSERT_TRUE(up_slots.ok() && up_cu.ok() && up_start.ok() && up_row_seq.ok() && up_row_pos.ok());
    batch.slots = *up_slots;
    batch.cu_seqlens = *up_cu;
    batch.start_pos = *up_start;
    batch.row_seq = *up_row_seq;
    batch.row_pos = *up_row_pos;

    const std::vector<float> x = Normal(static_cast<size_t>(rows * d), &rng, 0.0f, 1.0f);
    DeviceBuffer d_x = ToDevice(x);
    DeviceBuffer d_out(static_cast<size_t>(rows * d) * 4);
    ASSERT_TRUE(d_x.ok() && d_out.ok());

    cuda::CudaContext ctx;
    ctx.dev = dev->get();
    ctx.layout = &*layout;
    ctx.slot_pool = d_slots.as<uint8_t>();
    ctx.batch = &batch;
    const absl::Status st = (*cuda_layer)->Forward(ctx, d_x.as<float>(), d_out.as<float>());
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE((*dev)->Synchronize().ok());

    std::vector<float> want(static_cast<size_t>(rows * d));
    ASSERT_TRUE((*cpu_layer)->Forward(cctx, cseqs, x.data(), want.data()).ok());
    ExpectClose(ToHost<float>(d_out, want.size()), want, bound,
                absl::StrCat("gdn layer ", tag, " out (", v.name, ")"));

    // The layer's slot state, every slot (untouched ones included).
    const std::vector<uint8_t> dev_slots = ToHost<uint8_t>(d_slots, host_slots.size());
    std::vector<float> got_state, want_state;
    for (int s = 0; s < num_slots; ++s) {
      for (const auto& [offset, floats] : compared) {
        const float* gp =
            reinterpret_cast<const float*>(dev_slots.data() + s * slot_bytes + offset);
        const float* wp =
            reinterpret_cast<const float*>(host_slots.data() + s * slot_bytes + offset);
        got_state.insert(got_state.end(), gp, gp + floats);
        want_state.insert(want_state.end(), wp, wp + floats);
      }
    }
    ExpectClose(got_state, want_state, bound,
                absl::StrCat("gdn layer ", tag, " state (", v.name, ")"));
    for (const auto& [seq, n] : step) seqs[seq].pos += n;
  }
}

TEST_F(GpuTest, CudaGdnLayerMatchesCpuLayer) {
  RunLayerTest({"gated_conv"});
  RunLayerTest({"ungated_noconv_negeig", false, false, true});
}

TEST_F(GpuTest, CudaGdnLayerBf16CloseToCpuLayer) {
  RunLayerTest({"bf16", true, true, false, cuda::Precision::kBf16});
}

// Head widths beyond 256 value columns: NAtS-L 760M's dk 192 / dv 384 (with GVA here), dv 320,
// and an odd dv 321 (dk 214: GdnDecode's scalar state path, GdnPrefill's uneven value slices).
TEST_F(GpuTest, CudaGdnLayerWideHeadsMatchCpuLayer) {
  RunLayerTest({"dk192_dv384", true, true, false, cuda::Precision::kF32, 192, 2.0});
  RunLayerTest({"dk128_dv320_noconv", true, false, false, cuda::Precision::kF32, 128, 2.5});
  RunLayerTest({"dk214_dv321_negeig", true, true, true, cuda::Precision::kF32, 214, 1.5});
}

TEST_F(GpuTest, CudaGdnLayerWideHeadsBf16CloseToCpuLayer) {
  RunLayerTest({"dk192_dv384_bf16", true, true, false, cuda::Precision::kBf16, 192, 2.0});
}

}  // namespace
}  // namespace hyla
