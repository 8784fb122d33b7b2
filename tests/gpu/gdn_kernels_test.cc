// The Gated DeltaNet kernels of kernels/ops.h (GdnDecode, ShortConvDecode, GdnPrefill) against
// the CPU reference (runtime/cpu/gdn_core.h: GdnNormalizeQk, GdnDecayGate, GdnBeta,
// GatedDeltaStep, ShortConv; the NAtS-L commit/decay as the CPU NAtS-L layer's Decide), on fresh
// random inputs, odd sizes, strided rows, padding rows and several batch compositions.
// Bounds (max|diff| / max|ref| per tensor): fp32 1e-4, bf16 outputs 1e-2 (fp32 states 1e-4).
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
#include "runtime/cpu/gdn_core.h"
#include "tests/gpu/gpu_test_util.h"

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

// Head shapes and gate parameters of one GDN layer, and the packed row layout the tests use:
// [q (H·dk) | k (H·dk) | v (HV·dv) | a (HV) | b (HV) | 3 unused], like the CPU layer's
// projection rows (strided access of every input).
struct GdnShape {
  int H = 1, HV = 1, dk = 1, dv = 1;
  bool neg_eigval = false;
  bool aligned = false;  // rows padded to 8 elements (16-byte bf16 rows); otherwise odd strides
  int64_t q_off() const { return 0; }
  int64_t k_off() const { return int64_t{H} * dk; }
  int64_t v_off() const { return 2 * int64_t{H} * dk; }
  int64_t a_off() const { return v_off() + int64_t{HV} * dv; }
  int64_t b_off() const { return a_off() + HV; }
  int64_t row() const { return aligned ? (b_off() + HV + 7) / 8 * 8 : b_off() + HV + 3; }
  int64_t state() const { return int64_t{HV} * dk * dv; }
  float q_scale() const { return static_cast<float>(std::pow(static_cast<double>(dk), -0.5)); }
};

struct GateParams {
  std::vector<float> a_log, dt_bias;  // [HV]
};

GateParams RandomGates(const GdnShape& s, std::mt19937* rng) {
  // exp(A_log) in (0.14, 2.7) and dt_bias around −1: decays exp(g) between ~0.2 and ~0.99.
  return {Uniform(s.HV, rng, -2.0f, 1.0f), Normal(s.HV, rng, -1.0f, 0.5f)};
}

// Random packed rows; with bf16 the values are rounded to bf16 (the reference then reads
// exactly what the kernel reads) and the bit patterns returned in *bits.
std::vector<float> RandomRows(const GdnShape& s, int64_t rows, std::mt19937* rng, bool bf16,
                              std::vector<uint16_t>* bits) {
  std::vector<float> x = Normal(static_cast<size_t>(rows * s.row()), rng, 0.0f, 1.0f);
  if (bf16) *bits = gpu_test::RoundToBf16(&x);
  return x;
}

// One recurrent step of every value head of one packed row on the CPU (the reference):
// state [HV, dk, dv], o [HV, dv].
void CpuStep(const GdnShape& s, const GateParams& gp, const float* row, float* state, float* o) {
  const int group = s.HV / s.H;
  std::vector<float> q(s.dk), k(s.dk);
  for (int hv = 0; hv < s.HV; ++hv) {
    const int h = hv / group;
    std::copy(row + s.q_off() + int64_t{h} * s.dk, row + s.q_off() + int64_t{h + 1} * s.dk,
              q.begin());
    std::copy(row + s.k_off() + int64_t{h} * s.dk, row + s.k_off() + int64_t{h + 1} * s.dk,
              k.begin());
    cpu::GdnNormalizeQk(q.data(), s.dk, s.q_scale());
    cpu::GdnNormalizeQk(k.data(), s.dk, 1.0f);
    const float g =
        cpu::GdnDecayGate(row[s.a_off() + hv], gp.dt_bias[hv], cpu::GdnNegExpALog(gp.a_log[hv]));
    const float beta = cpu::GdnBeta(row[s.b_off() + hv], s.neg_eigval);
    cpu::GatedDeltaStep(state + int64_t{hv} * s.dk * s.dv, q.data(), k.data(),
                        row + s.v_off() + int64_t{hv} * s.dv, g, beta, s.dk, s.dv,
                        o + int64_t{hv} * s.dv);
  }
}

float CpuGate(const GdnShape& s, const GateParams& gp, const float* row, int hv) {
  return cpu::GdnDecayGate(row[s.a_off() + hv], gp.dt_bias[hv], cpu::GdnNegExpALog(gp.a_log[hv]));
}

std::string ShapeName(const GdnShape& s) {
  return "H" + std::to_string(s.H) + " HV" + std::to_string(s.HV) + " dk" + std::to_string(s.dk) +
         " dv" + std::to_string(s.dv) + (s.neg_eigval ? " neg" : "") +
         (s.aligned ? " aligned" : "");
}

// ---- GdnDecode ---------------------------------------------------------------------------

struct DecodeCase {
  GdnShape shape;
  int num_seqs;
  int num_slots;
  int64_t slot_pad;  // extra floats between slots (odd: the scalar state path)
  int padding_rows;  // rows with slot −1
};

class GdnDecodeTest : public GpuTest, public ::testing::WithParamInterface<bool> {};

void RunDecodeCase(const DecodeCase& c, bool bf16, std::mt19937* rng_ptr) {
  std::mt19937& rng = *rng_ptr;
  const GdnShape& s = c.shape;
  SCOPED_TRACE(ShapeName(s) + " seqs " + std::to_string(c.num_seqs));
  const GateParams gp = RandomGates(s, &rng);
  const int64_t slot_stride = s.state() + c.slot_pad;
  std::vector<float> pool =
      Normal(static_cast<size_t>(c.num_slots * slot_stride), &rng, 0.0f, 0.5f);
  DeviceBuffer d_pool = ToDevice(pool);
  DeviceBuffer d_alog = ToDevice(gp.a_log), d_dt = ToDevice(gp.dt_bias);
  ASSERT_TRUE(d_pool.ok() && d_alog.ok() && d_dt.ok());
  for (int step = 0; step < 3; ++step) {
    // Distinct random slots; the last padding_rows rows (shuffled in) are padding.
    std::vector<int32_t> all(c.num_slots);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> slots(all.begin(), all.begin() + c.num_seqs);
    for (int i = 0; i < c.padding_rows && i < c.num_seqs; ++i) slots[i] = -1;
    std::shuffle(slots.begin(), slots.end(), rng);
    std::vector<uint16_t> bits;
    const std::vector<float> rows = RandomRows(s, c.num_seqs, &rng, bf16, &bits);
    const int64_t o_stride = int64_t{s.HV} * s.dv + 7;
    DeviceBuffer d_rows = bf16 ? ToDevice(bits) : ToDevice(rows);
    DeviceBuffer d_slots = ToDevice(slots);
    DeviceBuffer d_o(static_cast<size_t>(c.num_seqs * o_stride) * (bf16 ? 2 : 4));
    ASSERT_TRUE(d_rows.ok() && d_slots.ok() && d_o.ok());

    kernels::GdnDecodeParams p;
    p.num_seqs = c.num_seqs;
    p.num_heads = s.H;
    p.num_v_heads = s.HV;
    p.dk = s.dk;
    p.dv = s.dv;
    p.dtype = bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
    const size_t es = bf16 ? 2 : 4;
    const char* base = static_cast<const char*>(d_rows.get());
    p.q = base + s.q_off() * es;
    p.k = base + s.k_off() * es;
    p.v = base + s.v_off() * es;
    p.a = base + s.a_off() * es;
    p.b = base + s.b_off() * es;
    p.q_stride = p.k_stride = p.v_stride = p.a_stride = p.b_stride = s.row();
    p.a_log = d_alog.as<float>();
    p.dt_bias = d_dt.as<float>();
    p.allow_neg_eigval = s.neg_eigval;
    p.q_scale = s.q_scale();
    p.slots = d_slots.as<int32_t>();
    p.state = d_pool.as<float>();
    p.state_slot_stride = slot_stride;
    p.o = d_o.get();
    p.o_stride = o_stride;
    HYLA_ASSERT_LAUNCH_OK(kernels::GdnDecode(p, nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

    std::vector<float> want_o(static_cast<size_t>(c.num_seqs) * s.HV * s.dv, 0.0f);
    for (int r = 0; r < c.num_seqs; ++r) {
      if (slots[r] < 0) continue;
      CpuStep(s, gp, rows.data() + r * s.row(), pool.data() + slots[r] * slot_stride,
              want_o.data() + int64_t{r} * s.HV * s.dv);
    }
    std::vector<float> got_o;
    if (bf16) {
      const std::vector<uint16_t> raw = ToHost<uint16_t>(d_o, c.num_seqs * o_stride);
      for (int r = 0; r < c.num_seqs; ++r) {
        for (int64_t i = 0; i < int64_t{s.HV} * s.dv; ++i) {
          got_o.push_back(Bf16ToFloat(raw[r * o_stride + i]));
        }
      }
    } else {
      const std::vector<float> raw = ToHost<float>(d_o, c.num_seqs * o_stride);
      for (int r = 0; r < c.num_seqs; ++r) {
        got_o.insert(got_o.end(), raw.begin() + r * o_stride,
                     raw.begin() + r * o_stride + int64_t{s.HV} * s.dv);
      }
    }
    ExpectClose(got_o, want_o, bf16 ? 1e-2 : 1e-4, bf16 ? "gdn_decode bf16 o" : "gdn_decode f32 o");
  }
  // Every slot (and the padding between slots) after the three steps; untouched slots must
  // be exactly as they were.
  ExpectClose(ToHost<float>(d_pool, pool.size()), pool, 1e-4,
              bf16 ? "gdn_decode bf16 (fp32 state)" : "gdn_decode f32 state");
}

TEST_P(GdnDecodeTest, MatchesCpuRecurrenceOverSteps) {
  const bool bf16 = GetParam();
  const std::vector<DecodeCase> cases = {
      {{2, 4, 128, 128, false}, 7, 12, 0, 1},
      {{1, 3, 64, 96, true}, 5, 9, 4, 2},
      {{3, 3, 100, 33, false}, 4, 6, 0, 0},
      {{2, 2, 256, 256, false}, 3, 5, 8, 1},
      {{1, 1, 17, 5, true}, 1, 2, 1, 0},
      {{4, 8, 128, 128, false}, 33, 40, 0, 3},
      {{2, 6, 128, 64, false}, 9, 11, 3, 0},
      {{1, 2, 32, 36, true}, 6, 6, 0, 0},
      // Value heads wider than 256 (NAtS-L 760M: dk 192, dv 384), the widest (dk 256, dv 512),
      // dv 320 and an odd dv (the scalar state path).
      {{6, 6, 192, 384, false}, 5, 8, 0, 1},
      {{2, 4, 192, 320, true}, 4, 6, 4, 0},
      {{1, 1, 256, 512, false}, 2, 3, 0, 0},
      {{1, 2, 64, 385, false}, 3, 4, 1, 1},
  };
  std::mt19937 rng(bf16 ? 1234 : 4321);
  for (const DecodeCase& c : cases) {
    RunDecodeCase(c, bf16, &rng);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GdnDecodeTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "Bf16" : "F32";
                         });

TEST_F(GpuTest, GdnDecodeRejectsBadArguments) {
  kernels::GdnDecodeParams p;
  p.num_seqs = 0;
  EXPECT_EQ(kernels::GdnDecode(p, nullptr), 0);  // nothing to do
  p.num_seqs = 1;
  EXPECT_EQ(kernels::GdnDecode(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
  DeviceBuffer d(1 << 20);
  ASSERT_TRUE(d.ok());
  p.num_heads = 2;
  p.num_v_heads = 3;  // not a multiple of H
  p.dk = p.dv = 16;
  p.q = p.k = p.v = p.a = p.b = d.get();
  p.a_log = p.dt_bias = p.state = d.as<float>();
  p.slots = d.as<int32_t>();
  p.o = d.get();
  p.q_stride = p.k_stride = p.v_stride = p.o_stride = 64;
  p.a_stride = p.b_stride = 4;
  p.state_slot_stride = 3 * 16 * 16;
  EXPECT_EQ(kernels::GdnDecode(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
  p.num_v_heads = 4;
  p.dk = 257;  // too large
  EXPECT_EQ(kernels::GdnDecode(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
}

// ---- ShortConvDecode ---------------------------------------------------------------------

struct ConvCase {
  int channels, kernel, num_seqs, num_slots;
  bool silu, bf16;
  int x_pad = 3, tail_pad = 5;  // row / slot padding (multiples of 4: the 16-byte path)
  kernels::ShortConvDecodeVariant variant = kernels::ShortConvDecodeVariant::kDefault;
};

void RunConvCase(const ConvCase& c, std::mt19937* rng_ptr) {
  std::mt19937& rng = *rng_ptr;
  SCOPED_TRACE("C " + std::to_string(c.channels) + " K " + std::to_string(c.kernel) + " seqs " +
               std::to_string(c.num_seqs) + " bf16 " + std::to_string(c.bf16) + " x_pad " +
               std::to_string(c.x_pad) + " tail_pad " + std::to_string(c.tail_pad) + " variant " +
               std::to_string(static_cast<int>(c.variant)));
  const int taps = c.kernel - 1;
  const int64_t tail_stride = int64_t{std::max(taps, 1)} * c.channels + c.tail_pad;
  std::vector<float> tails =
      Normal(static_cast<size_t>(c.num_slots * tail_stride), &rng, 0.0f, 1.0f);
  const std::vector<float> weight =
      Normal(static_cast<size_t>(c.channels) * c.kernel, &rng, 0.0f, 0.5f);
  DeviceBuffer d_tails = ToDevice(tails), d_w = ToDevice(weight);
  ASSERT_TRUE(d_tails.ok() && d_w.ok());
  for (int step = 0; step < 3; ++step) {
    std::vector<int32_t> all(c.num_slots);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> slots(all.begin(), all.begin() + c.num_seqs);
    if (c.num_seqs > 2) slots[1] = -1;  // a padding row
    const int64_t x_stride = c.channels + c.x_pad;
    std::vector<float> x = Normal(static_cast<size_t>(c.num_seqs * x_stride), &rng, 0.0f, 2.0f);
    std::vector<uint16_t> bits;
    if (c.bf16) bits = gpu_test::RoundToBf16(&x);
    DeviceBuffer d_x = c.bf16 ? ToDevice(bits) : ToDevice(x);
    DeviceBuffer d_slots = ToDevice(slots);
    DeviceBuffer d_out(static_cast<size_t>(c.num_seqs) * c.channels * (c.bf16 ? 2 : 4));
    ASSERT_TRUE(d_x.ok() && d_slots.ok() && d_out.ok());
    kernels::ShortConvDecodeParams p;
    p.num_seqs = c.num_seqs;
    p.channels = c.channels;
    p.kernel = c.kernel;
    p.dtype = c.bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
    p.x = d_x.get();
    p.x_stride = x_stride;
    p.weight = d_w.as<float>();
    p.slots = d_slots.as<int32_t>();
    p.tail = d_tails.as<float>();
    p.tail_slot_stride = tail_stride;
    p.silu = c.silu;
    p.out = d_out.get();
    p.out_stride = c.channels;
    p.variant = c.variant;
    HYLA_ASSERT_LAUNCH_OK(kernels::ShortConvDecode(p, nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

    std::vector<float> want(static_cast<size_t>(c.num_seqs) * c.channels, 0.0f);
    for (int r = 0; r < c.num_seqs; ++r) {
      if (slots[r] < 0) continue;
      cpu::ShortConv(x.data() + r * x_stride, x_stride, 1, c.channels, weight.data(), c.kernel,
                     taps > 0 ? tails.data() + slots[r] * tail_stride : nullptr, c.silu,
                     want.data() + int64_t{r} * c.channels, c.channels);
    }
    const std::vector<float> got =
        c.bf16 ? gpu_test::Bf16ToFloats(ToHost<uint16_t>(d_out, want.size()))
               : ToHost<float>(d_out, want.size());
    ExpectClose(got, want, c.bf16 ? 1e-2 : 1e-4,
                c.bf16 ? "short_conv_decode bf16 out" : "short_conv_decode f32 out");
  }
  ExpectClose(ToHost<float>(d_tails, tails.size()), tails, 0.0, "short_conv_decode tails");
}

TEST_F(GpuTest, ShortConvDecodeMatchesCpu) {
  const std::vector<ConvCase> cases = {{37, 4, 5, 7, true, false}, {300, 4, 9, 9, true, true},
                                       {8, 1, 3, 4, false, false}, {513, 2, 17, 20, true, false},
                                       {64, 3, 2, 3, false, true}, {1, 4, 1, 1, true, false}};
  std::mt19937 rng(77);
  for (const ConvCase& c : cases) {
    RunConvCase(c, &rng);
  }
}

// Small shapes for compute-sanitizer: --gtest_filter='*Sanitizer*'.
TEST_F(GpuTest, ShortConvDecodeSanitizerSmall) {
  using V = kernels::ShortConvDecodeVariant;
  std::mt19937 rng(79);
  for (const V v : {V::kScalar, V::kVec4}) {
    for (const int k : {1, 4}) {
      ConvCase c{36, k, 3, 4, true, false, 4, 4};
      c.variant = v;
      RunConvCase(c, &rng);
    }
  }
}

// The decode shape of qwen3next-1b (C = 2·16·128 + 32·128 = 8192, K 4, 64 sequences) and rows
// 1, 3, 257, K 1..4, with aligned strides (the 16-byte path) through every launch shape.
TEST_F(GpuTest, ShortConvDecodeVecShapesMatchCpu) {
  using V = kernels::ShortConvDecodeVariant;
  std::mt19937 rng(78);
  for (const V v : {V::kDefault, V::kScalar, V::kVec4}) {
    for (const bool bf16 : {false, true}) {
      std::vector<ConvCase> cases = {
          {8192, 4, 64, 70, true, bf16, 4, 64}, {8192, 4, 1, 2, true, bf16, 0, 0},
          {8192, 4, 3, 5, true, bf16, 8, 4},    {1024, 4, 257, 260, true, bf16, 4, 0},
          {36, 1, 5, 6, false, bf16, 0, 0},     {36, 2, 9, 9, true, bf16, 4, 4},
          {516, 3, 17, 20, false, bf16, 4, 8},  {516, 4, 7, 9, true, bf16, 2, 8}};
      for (ConvCase& c : cases) {
        c.variant = v;
        RunConvCase(c, &rng);
      }
    }
  }
}

// ---- GdnPrefill --------------------------------------------------------------------------

struct PrefillCase {
  GdnShape shape;
  std::vector<int> lens;
  std::vector<int64_t> starts;
  bool bf16 = false;
  bool commit = false;
  bool decay = true;
  kernels::GdnPrefillMmaVariant variant = kernels::GdnPrefillMmaVariant::kDefault;
  int overlap_segments = 0;  // GdnPrefillParams::overlap_segments
};

// The pieces of a sequence as the API defines them, computed here independently of the kernel:
// cut at absolute positions that are multiples of 64.
int PiecesOf(int64_t start, int len) {
  if (len == 0) return 0;
  const int64_t first = kChunk - start % kChunk;
  return 1 + static_cast<int>(len > first ? (len - first + kChunk - 1) / kChunk : 0);
}
int PieceOfToken(int64_t start, int r) {
  const int64_t first = kChunk - start % kChunk;
  return r < first ? 0 : 1 + static_cast<int>((r - first) / kChunk);
}

// Host mirror of the slot pool: running state, committed state and g_sum per slot.
struct Pools {
  int64_t state_stride = 0, committed_stride = 0, gsum_stride = 0;
  std::vector<float> state, committed, g_sum;
};

// Runs GdnPrefill on `rows` (packed, all sequences) and checks outputs and pools against the
// CPU recurrence; the pools are updated to the reference result.
void RunPrefillAndCheck(const PrefillCase& c, const GateParams& gp, const std::vector<float>& rows,
                        const std::vector<uint16_t>& bits, const std::vector<int32_t>& slots,
                        std::mt19937* rng, Pools* pools, DeviceBuffer* d_state,
                        DeviceBuffer* d_committed, DeviceBuffer* d_gsum) {
  const GdnShape& s = c.shape;
  const int num_seqs = static_cast<int>(c.lens.size());
  std::vector<int32_t> cu(num_seqs + 1, 0);
  for (int i = 0; i < num_seqs; ++i) cu[i + 1] = cu[i] + c.lens[i];
  const int total_rows = cu[num_seqs];
  std::vector<int32_t> want_offsets(num_seqs + 1, 0);
  for (int i = 0; i < num_seqs; ++i) {
    want_offsets[i + 1] = want_offsets[i] + PiecesOf(c.starts[i], c.lens[i]);
  }
  const int num_pieces = want_offsets[num_seqs];
  std::vector<int32_t> offsets(num_seqs + 1, -7);
  ASSERT_EQ(kernels::GdnPrefillPlan(cu.data(), c.starts.data(), num_seqs, offsets.data()),
            num_pieces);
  ASSERT_EQ(offsets, want_offsets);

  std::vector<uint8_t> commit(static_cast<size_t>(std::max(num_pieces, 1)) * s.HV);
  for (uint8_t& m : commit) m = static_cast<uint8_t>((*rng)() % 2);

  const int64_t o_stride = int64_t{s.HV} * s.dv + (s.aligned ? 8 : 5);
  DeviceBuffer d_rows = c.bf16 ? ToDevice(bits) : ToDevice(rows);
  DeviceBuffer d_cu = ToDevice(cu), d_starts = ToDevice(c.starts), d_offsets = ToDevice(offsets);
  DeviceBuffer d_slots = ToDevice(slots), d_commit = ToDevice(commit);
  DeviceBuffer d_alog = ToDevice(gp.a_log), d_dt = ToDevice(gp.dt_bias);
  DeviceBuffer d_o(static_cast<size_t>(std::max(total_rows, 1) * o_stride) * (c.bf16 ? 2 : 4));
  const size_t ws_bytes = kernels::GdnPrefillWorkspaceBytes(num_pieces, s.HV, s.dk, s.dv);
  DeviceBuffer d_ws(std::max<size_t>(ws_bytes, 16));
  ASSERT_TRUE(d_rows.ok() && d_cu.ok() && d_starts.ok() && d_offsets.ok() && d_slots.ok() &&
              d_commit.ok() && d_alog.ok() && d_dt.ok() && d_o.ok() && d_ws.ok());

  kernels::GdnPrefillParams p;
  p.num_seqs = num_seqs;
  p.num_heads = s.H;
  p.num_v_heads = s.HV;
  p.dk = s.dk;
  p.dv = s.dv;
  p.dtype = c.bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
  const size_t es = c.bf16 ? 2 : 4;
  const char* base = static_cast<const char*>(d_rows.get());
  p.q = base + s.q_off() * es;
  p.k = base + s.k_off() * es;
  p.v = base + s.v_off() * es;
  p.a = base + s.a_off() * es;
  p.b = base + s.b_off() * es;
  p.q_stride = p.k_stride = p.v_stride = p.a_stride = p.b_stride = s.row();
  p.a_log = d_alog.as<float>();
  p.dt_bias = d_dt.as<float>();
  p.allow_neg_eigval = s.neg_eigval;
  p.q_scale = s.q_scale();
  p.cu_seqlens = d_cu.as<int32_t>();
  p.start_pos = d_starts.as<int64_t>();
  p.piece_offsets = d_offsets.as<int32_t>();
  p.num_pieces = num_pieces;
  p.slots = d_slots.as<int32_t>();
  p.state = d_state->as<float>();
  p.state_slot_stride = pools->state_stride;
  if (c.commit) {
    p.commit = d_commit.as<uint8_t>();
    p.committed = d_committed->as<float>();
    p.committed_slot_stride = pools->committed_stride;
    p.g_sum = d_gsum->as<float>();
    p.g_sum_slot_stride = pools->gsum_stride;
    p.decay_uncommitted = c.decay;
  }
  p.o = d_o.get();
  p.o_stride = o_stride;
  p.workspace = d_ws.get();
  p.workspace_bytes = ws_bytes;
  p.mma_variant = c.variant;
  p.overlap_segments = c.overlap_segments;
  // The tensor-core path (bf16 without commit, dk, dv in {64, 128}) rounds its intermediates and
  // the per-piece state to bf16 (kernels/ops.h GdnPrefillUsesTensorCores): its final state is
  // held to the bf16 bound, not fp32's.
  const bool tensor_cores = kernels::GdnPrefillUsesTensorCores(p);
  EXPECT_LE(kernels::GdnPrefillWorkspaceBytesFor(p), ws_bytes);
  HYLA_ASSERT_LAUNCH_OK(kernels::GdnPrefill(p, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  // CPU reference, token by token.
  std::vector<float> want_o(static_cast<size_t>(total_rows) * s.HV * s.dv, 0.0f);
  for (int i = 0; i < num_seqs; ++i) {
    float* S = pools->state.data() + slots[i] * pools->state_stride;
    float* Sc = pools->committed.data() + slots[i] * pools->committed_stride;
    float* gsum = pools->g_sum.data() + slots[i] * pools->gsum_stride;
    for (int r = 0; r < c.lens[i]; ++r) {
      const int64_t row = cu[i] + r;
      const float* x = rows.data() + row * s.row();
      CpuStep(s, gp, x, S, want_o.data() + row * s.HV * s.dv);
      if (!c.commit) continue;
      for (int hv = 0; hv < s.HV; ++hv) gsum[hv] += CpuGate(s, gp, x, hv);
      if ((c.starts[i] + r + 1) % kChunk != 0) continue;
      const int piece = want_offsets[i] + PieceOfToken(c.starts[i], r);
      for (int hv = 0; hv < s.HV; ++hv) {
        float* Sh = S + s.state() / s.HV * hv;
        float* Sch = Sc + s.state() / s.HV * hv;
        if (commit[static_cast<size_t>(piece) * s.HV + hv]) {
          std::copy(Sh, Sh + s.dk * s.dv, Sch);
        } else {
          if (c.decay) cpu::DecayState(Sch, gsum[hv], s.dk, s.dv);
          std::copy(Sch, Sch + s.dk * s.dv, Sh);
        }
        gsum[hv] = 0.0f;
      }
    }
  }
  std::vector<float> got_o;
  if (c.bf16) {
    const std::vector<uint16_t> raw = ToHost<uint16_t>(d_o, total_rows * o_stride);
    for (int r = 0; r < total_rows; ++r) {
      for (int64_t j = 0; j < int64_t{s.HV} * s.dv; ++j)
        got_o.push_back(Bf16ToFloat(raw[r * o_stride + j]));
    }
  } else {
    const std::vector<float> raw = ToHost<float>(d_o, total_rows * o_stride);
    for (int r = 0; r < total_rows; ++r) {
      got_o.insert(got_o.end(), raw.begin() + r * o_stride,
                   raw.begin() + r * o_stride + int64_t{s.HV} * s.dv);
    }
  }
  const std::string tag = std::string("gdn_prefill ") + (c.bf16 ? "bf16" : "f32") +
                          (c.commit ? " commit" : "") + (tensor_cores ? " mma" : "");
  ExpectClose(got_o, want_o, c.bf16 ? 1e-2 : 1e-4, tag + " o");
  ExpectClose(ToHost<float>(*d_state, pools->state.size()), pools->state,
              tensor_cores ? 1e-2 : 1e-4, tag + " state");
  if (c.commit) {
    ExpectClose(ToHost<float>(*d_committed, pools->committed.size()), pools->committed, 1e-4,
                tag + " committed");
    ExpectClose(ToHost<float>(*d_gsum, pools->g_sum.size()), pools->g_sum, 1e-4, tag + " g_sum");
  }
}

void RunPrefillCase(const PrefillCase& c, uint32_t seed) {
  const GdnShape& s = c.shape;
  SCOPED_TRACE(ShapeName(s) + (c.bf16 ? " bf16" : " f32") + (c.commit ? " commit" : "") +
               (c.decay ? "" : " keep"));
  std::mt19937 rng(seed);
  const int num_seqs = static_cast<int>(c.lens.size());
  const GateParams gp = RandomGates(s, &rng);
  const int num_slots = num_seqs + 2;
  Pools pools;
  pools.state_stride = s.state() + 4;
  pools.committed_stride = s.state() + 8;
  pools.gsum_stride = s.HV + 1;
  pools.state = Normal(static_cast<size_t>(num_slots * pools.state_stride), &rng, 0.0f, 0.5f);
  pools.committed =
      Normal(static_cast<size_t>(num_slots * pools.committed_stride), &rng, 0.0f, 0.5f);
  pools.g_sum = Uniform(static_cast<size_t>(num_slots * pools.gsum_stride), &rng, -2.0f, 0.0f);
  DeviceBuffer d_state = ToDevice(pools.state), d_committed = ToDevice(pools.committed),
               d_gsum = ToDevice(pools.g_sum);
  ASSERT_TRUE(d_state.ok() && d_committed.ok() && d_gsum.ok());
  std::vector<int32_t> slots(num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(num_seqs);
  const int total = std::accumulate(c.lens.begin(), c.lens.end(), 0);
  std::vector<uint16_t> bits;
  const std::vector<float> rows = RandomRows(s, total, &rng, c.bf16, &bits);
  RunPrefillAndCheck(c, gp, rows, bits, slots, &rng, &pools, &d_state, &d_committed, &d_gsum);
}

class GdnPrefillTest : public GpuTest {};

TEST_F(GdnPrefillTest, F32MatchesRecurrenceOnVariableLengths) {
  // Lengths around the chunk size, empty sequences, starts mid-chunk and on chunk boundaries.
  RunPrefillCase({{2, 4, 64, 64, false}, {1, 63, 64, 65, 200, 0, 130}, {0, 0, 5, 64, 3, 7, 127}},
                 11);
  RunPrefillCase({{2, 2, 128, 128, true}, {256, 17, 99}, {0, 100, 63}}, 12);
  RunPrefillCase({{1, 3, 100, 40, false}, {70, 5, 128}, {60, 0, 1}}, 13);  // odd dims
  RunPrefillCase({{1, 1, 256, 256, false}, {150, 64}, {10, 0}}, 14);       // largest dims
  RunPrefillCase({{3, 6, 33, 7, true}, {1, 2, 3, 64, 66}, {0, 63, 62, 32, 64}}, 15);
}

// Value heads wider than 256: kernel 1 substitutes the value columns in slices.
TEST_F(GdnPrefillTest, F32WideValueHeadsMatchRecurrence) {
  // NAtS-L 760M's GDN heads (H 6, dk 192, dv 384).
  RunPrefillCase({{6, 6, 192, 384, false}, {130, 1, 64, 40}, {0, 5, 64, 63}}, 51);
  RunPrefillCase({{2, 4, 192, 320, true}, {100, 64}, {30, 0}}, 52);   // GVA, dv 320
  RunPrefillCase({{1, 1, 256, 512, false}, {150, 3}, {10, 62}}, 53);  // largest dims
  RunPrefillCase({{1, 2, 37, 321, false}, {70, 66}, {60, 1}}, 54);    // odd dv: slices 164 + 160
  RunPrefillCase({{1, 1, 16, 257, true}, {65, 2}, {0, 0}}, 55);       // just over one slice
}

TEST_F(GdnPrefillTest, Bf16WideValueHeadsMatchRecurrence) {
  RunPrefillCase({{6, 6, 192, 384, false}, {130, 1, 64, 40}, {0, 5, 64, 63}, true}, 61);
  RunPrefillCase({{1, 2, 37, 321, true}, {70, 66}, {60, 1}, true}, 62);
}

TEST_F(GdnPrefillTest, NatslCommitWithWideValueHeads) {
  RunPrefillCase({{6, 6, 192, 384, false}, {130, 64, 10, 3}, {0, 64, 60, 5}, false, true, true},
                 71);
  RunPrefillCase({{1, 2, 64, 320, false}, {200, 64}, {17, 0}, false, true, false}, 72);
  RunPrefillCase({{6, 6, 192, 384, false}, {128, 77}, {64, 51}, true, true, true}, 73);  // bf16
}

// Shape limits of GdnPrefill: dk 1..256, dv 1..512. A call whose sequences are all empty does
// nothing but is validated like any other.
TEST_F(GdnPrefillTest, AcceptsHeadDimLimitsAndRejectsBeyond) {
  const std::vector<int32_t> cu = {0, 0};
  const std::vector<int32_t> offsets = {0, 0};
  const std::vector<int32_t> slots = {0};
  DeviceBuffer d_cu = ToDevice(cu), d_offsets = ToDevice(offsets), d_slots = ToDevice(slots);
  DeviceBuffer d(size_t{4} << 20);
  ASSERT_TRUE(d_cu.ok() && d_offsets.ok() && d_slots.ok() && d.ok());
  auto call = [&](int dk, int dv) {
    kernels::GdnPrefillParams p;
    p.num_seqs = 1;
    p.num_heads = p.num_v_heads = 1;
    p.dk = dk;
    p.dv = dv;
    p.q = p.k = p.v = p.a = p.b = d.get();
    p.q_stride = p.k_stride = dk;
    p.v_stride = p.o_stride = dv;
    p.a_stride = p.b_stride = 1;
    p.a_log = p.dt_bias = d.as<float>();
    p.cu_seqlens = d_cu.as<int32_t>();
    p.piece_offsets = d_offsets.as<int32_t>();
    p.num_pieces = 0;
    p.slots = d_slots.as<int32_t>();
    p.state = d.as<float>();
    p.state_slot_stride = int64_t{dk} * dv;
    p.o = d.get();
    return kernels::GdnPrefill(p, nullptr);
  };
  EXPECT_EQ(call(256, 512), 0);
  EXPECT_EQ(call(192, 384), 0);
  EXPECT_EQ(call(1, 1), 0);
  EXPECT_EQ(call(256, 513), static_cast<int>(cudaErrorInvalidValue));
  EXPECT_EQ(call(257, 512), static_cast<int>(cudaErrorInvalidValue));
  EXPECT_EQ(call(0, 16), static_cast<int>(cudaErrorInvalidValue));
  EXPECT_EQ(call(16, 0), static_cast<int>(cudaErrorInvalidValue));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST_F(GdnPrefillTest, Bf16MatchesRecurrence) {
  RunPrefillCase(
      {{2, 4, 64, 64, false}, {1, 63, 64, 65, 200, 0, 130}, {0, 0, 5, 64, 3, 7, 127}, true}, 21);
  RunPrefillCase({{2, 2, 128, 128, false}, {190, 3}, {0, 61}, true}, 22);
}

// The tensor-core path (kernels/gdn_prefill_mma.cu: bf16, no commit, dk, dv in {64, 128}) on
// 16-byte-aligned rows (cp.async loads, 4-byte o stores) and on odd strides (element loads).
// Bound 1e-2 of max|ref| for o and the final state, as the other bf16 cases: the path rounds
// T, W, U, V_new, the per-piece state and the update operands to bf16 (8 significant bits, a
// relative 2^-9 each) with fp32 accumulation, like fla's chunk_gated_delta_rule.
TEST_F(GdnPrefillTest, Bf16TensorCoresMatchRecurrence) {
  // Variable lengths, empty sequences, starts mid-chunk and on chunk boundaries; GVA (HV = 2H).
  RunPrefillCase(
      {{2, 4, 64, 64, false, true}, {1, 63, 64, 65, 200, 0, 130}, {0, 0, 5, 64, 3, 7, 127}, true},
      81);
  RunPrefillCase({{2, 4, 128, 128, true, true}, {256, 17, 99}, {0, 100, 63}, true}, 82);
  RunPrefillCase({{1, 3, 64, 128, false, true}, {70, 5, 128}, {60, 0, 1}, true}, 83);
  RunPrefillCase({{3, 3, 128, 64, false, true}, {1, 2, 3, 64, 66}, {0, 63, 62, 32, 64}, true}, 84);
  RunPrefillCase({{2, 4, 128, 128, false, false}, {190, 3, 64}, {0, 61, 0}, true}, 85);  // odd
  RunPrefillCase({{1, 2, 64, 128, true, false}, {130, 7}, {30, 0}, true}, 86);           // odd
}

// Every variant of the tensor-core path (kernels/ops.h GdnPrefillMmaVariant), same bound.
TEST_F(GdnPrefillTest, Bf16TensorCoreVariantsMatchRecurrence) {
  using V = kernels::GdnPrefillMmaVariant;
  for (const V v : {V::kCols16, V::kCols32, V::kCols64, V::kFusedCols16, V::kFusedCols32,
                    V::kFusedCols16Split2, V::kFusedCols32Split2, V::kFusedCols64Split2,
                    V::kCols32Stages3, V::kFusedCols16Split2Stages3, V::kFusedCols32Split2Solve2,
                    V::kFusedCols64Split2Solve2, V::kCols32Solve2, V::kFusedCols32Split4Solve2,
                    V::kOverlapCols64Split2Solve2, V::kOverlapCols32Split2Solve2}) {
    SCOPED_TRACE("mma_variant " + std::to_string(static_cast<int>(v)));
    RunPrefillCase({{2, 4, 128, 128, false, true}, {200, 70}, {5, 64}, true, false, true, v}, 87);
    RunPrefillCase({{1, 2, 64, 64, false, true}, {129, 1, 0}, {63, 0, 0}, true, false, true, v},
                   88);
    RunPrefillCase({{1, 1, 64, 128, true, false}, {100}, {3}, true, false, true, v}, 93);  // odd
  }
}

// Long sequences: 64 pieces in one sequential pass, so state drift from the bf16 operands would
// accumulate here (the gates decay it; the bound is the same).
TEST_F(GdnPrefillTest, Bf16TensorCoresLongSequenceMatchesRecurrence) {
  RunPrefillCase({{1, 2, 128, 128, false, true}, {4096}, {0}, true}, 89);
  RunPrefillCase({{2, 4, 64, 64, false, true}, {4000, 96}, {30, 64}, true}, 90);
}

// Small tensor-core cases for compute-sanitizer (scripts/device_run.sh, '*Sanitizer*'): the
// default variant, the unfused one (with either T solve of launch 1), element (unaligned) loads
// with either solve, and Split4.
TEST_F(GdnPrefillTest, Bf16TensorCoresSmallForSanitizer) {
  using V = kernels::GdnPrefillMmaVariant;
  RunPrefillCase({{1, 2, 64, 64, false, true}, {70, 5, 0}, {60, 0, 3}, true}, 91);
  RunPrefillCase({{1, 2, 64, 64, false, true}, {70, 5}, {60, 0}, true, false, true, V::kCols32},
                 94);
  RunPrefillCase({{1, 1, 128, 128, false, false}, {65}, {0}, true}, 92);  // element loads
  RunPrefillCase(
      {{1, 2, 64, 64, false, true}, {70, 5}, {60, 0}, true, false, true, V::kCols32Solve2}, 95);
  RunPrefillCase(
      {{1, 1, 128, 128, false, false}, {65}, {0}, true, false, true, V::kFusedCols32Split2Solve2},
      96);  // element loads, the parallel solve
  RunPrefillCase({{1, 2, 128, 128, false, true},
                  {130, 3},
                  {10, 0},
                  true,
                  false,
                  true,
                  V::kFusedCols32Split4Solve2},
                 97);  // four warps per 16 value rows
  PrefillCase overlap{{1, 2, 128, 128, false, true}, {130, 3}, {10, 0}, true};
  overlap.variant = V::kOverlapCols64Split2Solve2;
  overlap.overlap_segments = 2;
  RunPrefillCase(overlap, 101);  // two segments, side stream
}

// The parallel-solve and Split4 variants over a long sequence (64 pieces of drift), same bound.
TEST_F(GdnPrefillTest, Bf16TensorCoreNewVariantsLongSequenceMatchRecurrence) {
  using V = kernels::GdnPrefillMmaVariant;
  for (const V v : {V::kFusedCols32Split2Solve2, V::kFusedCols32Split4Solve2,
                    V::kOverlapCols64Split2Solve2, V::kOverlapCols32Split2Solve2}) {
    SCOPED_TRACE("mma_variant " + std::to_string(static_cast<int>(v)));
    RunPrefillCase({{1, 2, 128, 128, false, true}, {4096}, {0}, true, false, true, v}, 98);
  }
}

// The overlapped variants with every segment count that matters: one (not overlapped), a
// segment per piece, segment borders inside and between sequences (one of them empty), and more
// segments than pieces (clamped); the same bound.
TEST_F(GdnPrefillTest, Bf16TensorCoreOverlapSegmentsMatchRecurrence) {
  using V = kernels::GdnPrefillMmaVariant;
  for (const int segments : {1, 2, 3, 7, 13, 1000}) {
    SCOPED_TRACE("overlap_segments " + std::to_string(segments));
    PrefillCase c{{2, 4, 128, 128, false, true}, {300, 0, 150, 64}, {10, 0, 63, 0}, true};
    c.variant = V::kOverlapCols64Split2Solve2;
    c.overlap_segments = segments;
    RunPrefillCase(c, 99);
    c.variant = V::kOverlapCols32Split2Solve2;
    c.shape = {1, 1, 64, 64, false, true};
    RunPrefillCase(c, 100);
  }
}

// A negative segment count is the caller's error (GdnPrefill validates it before any launch).
TEST_F(GpuTest, GdnPrefillRejectsNegativeOverlapSegments) {
  kernels::GdnPrefillParams p;
  p.num_seqs = 1;
  p.overlap_segments = -1;
  EXPECT_NE(kernels::GdnPrefill(p, nullptr), 0);
}

TEST_F(GdnPrefillTest, NatslCommitAndDecayMatchReference) {
  PrefillCase c{
      {2, 4, 64, 64, false}, {130, 64, 10, 200, 3}, {0, 64, 60, 17, 5}, false, true, true};
  RunPrefillCase(c, 31);
  c.decay = false;
  RunPrefillCase(c, 32);
  RunPrefillCase({{1, 2, 128, 96, true}, {256, 70}, {0, 58}, false, true, true}, 33);
  RunPrefillCase({{2, 4, 64, 64, false}, {128, 77}, {64, 51}, true, true, true}, 34);  // bf16
}

// A sequence prefilled in two calls (the second starting mid-chunk) gives the recurrence's
// result, like one call: any split is valid.
TEST_F(GdnPrefillTest, SplitAcrossCallsMatchesRecurrence) {
  for (const bool commit : {false, true}) {
    const GdnShape s{2, 4, 64, 48, false};
    std::mt19937 rng(41);
    const GateParams gp = RandomGates(s, &rng);
    Pools pools;
    pools.state_stride = s.state();
    pools.committed_stride = s.state();
    pools.gsum_stride = s.HV;
    pools.state = Normal(static_cast<size_t>(2 * s.state()), &rng, 0.0f, 0.5f);
    pools.committed = pools.state;  // a chunk-aligned start: running == committed
    pools.g_sum.assign(static_cast<size_t>(2 * s.HV), 0.0f);
    DeviceBuffer d_state = ToDevice(pools.state), d_committed = ToDevice(pools.committed),
                 d_gsum = ToDevice(pools.g_sum);
    ASSERT_TRUE(d_state.ok() && d_committed.ok() && d_gsum.ok());
    const std::vector<int32_t> slots = {1};
    int64_t pos = 0;
    for (const int len : {90, 7, 160}) {
      std::vector<uint16_t> bits;
      const std::vector<float> rows = RandomRows(s, len, &rng, false, &bits);
      PrefillCase c{s, {len}, {pos}, false, commit, true};
      RunPrefillAndCheck(c, gp, rows, bits, slots, &rng, &pools, &d_state, &d_committed, &d_gsum);
      pos += len;
    }
  }
}

// Small instances of every GDN kernel path, sized for compute-sanitizer (racecheck is slow):
// scripts/device_run.sh runs the sanitizers with --gtest_filter='*Sanitizer*'.
TEST_F(GpuTest, SmallGdnKernelsForSanitizers) {
  std::mt19937 rng(99);
  RunDecodeCase({{2, 4, 64, 64, false}, 3, 4, 0, 1}, false, &rng);  // 16-byte state path
  RunDecodeCase({{1, 2, 33, 7, true}, 2, 3, 1, 0}, true, &rng);     // scalar state path, bf16
  RunConvCase({37, 4, 3, 4, true, false}, &rng);
  RunConvCase({20, 2, 2, 2, false, true}, &rng);
  RunPrefillCase({{1, 2, 40, 36, false}, {70, 5, 0}, {60, 0, 3}, false, true, true}, 98);
  RunPrefillCase({{1, 1, 64, 64, false}, {65}, {0}, true}, 97);
  RunDecodeCase({{1, 1, 8, 261, false}, 2, 3, 0, 0}, false, &rng);             // dv > 256
  RunPrefillCase({{1, 1, 8, 261, false}, {66}, {60}, false, true, true}, 96);  // two V slices
}

// Host-only: runs without a GPU too.
TEST(GdnPrefillPlan, CountsPiecesAndRejectsBadInput) {
  const std::vector<int32_t> cu = {0, 64, 64, 65, 265};
  const std::vector<int64_t> starts = {0, 9, 63, 10};
  std::vector<int32_t> offsets(5, -1);
  // 64 from 0: one piece; empty: none; 1 at 63: one; 200 from 10: 54 + 64 + 64 + 18, four.
  EXPECT_EQ(kernels::GdnPrefillPlan(cu.data(), starts.data(), 4, offsets.data()), 6);
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 1, 1, 2, 6}));
  EXPECT_EQ(kernels::GdnPrefillPlan(cu.data(), nullptr, 4, offsets.data()), 6);
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 1, 1, 2, 6}));
  const std::vector<int32_t> bad_cu = {0, 5, 3};
  EXPECT_EQ(kernels::GdnPrefillPlan(bad_cu.data(), nullptr, 2, offsets.data()), -1);
  const std::vector<int64_t> bad_start = {-1, 0};
  EXPECT_EQ(kernels::GdnPrefillPlan(cu.data(), bad_start.data(), 2, offsets.data()), -1);
}

// ---- GdnDecode kernel variants -----------------------------------------------------------
// Every GdnDecodeVariant (kernels/gdn_decode.cu) against the CPU recurrence: the decode cases
// above plus a batch large enough that each persistent CTA loops over many tiles (8320 tiles of
// 32 columns). Same bounds as MatchesCpuRecurrenceOverSteps.

// RunDecodeCase with p.variant = variant (two steps).
void RunDecodeVariantCase(const DecodeCase& c, bool bf16, kernels::GdnDecodeVariant variant,
                          std::mt19937* rng_ptr) {
  std::mt19937& rng = *rng_ptr;
  const GdnShape& s = c.shape;
  SCOPED_TRACE(ShapeName(s) + " seqs " + std::to_string(c.num_seqs) + " variant " +
               std::to_string(static_cast<int>(variant)));
  const GateParams gp = RandomGates(s, &rng);
  const int64_t slot_stride = s.state() + c.slot_pad;
  std::vector<float> pool =
      Normal(static_cast<size_t>(c.num_slots * slot_stride), &rng, 0.0f, 0.5f);
  DeviceBuffer d_pool = ToDevice(pool);
  DeviceBuffer d_alog = ToDevice(gp.a_log), d_dt = ToDevice(gp.dt_bias);
  ASSERT_TRUE(d_pool.ok() && d_alog.ok() && d_dt.ok());
  for (int step = 0; step < 2; ++step) {
    std::vector<int32_t> all(c.num_slots);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> slots(all.begin(), all.begin() + c.num_seqs);
    for (int i = 0; i < c.padding_rows && i < c.num_seqs; ++i) slots[i] = -1;
    std::shuffle(slots.begin(), slots.end(), rng);
    std::vector<uint16_t> bits;
    const std::vector<float> rows = RandomRows(s, c.num_seqs, &rng, bf16, &bits);
    const int64_t o_stride = int64_t{s.HV} * s.dv + 5;
    DeviceBuffer d_rows = bf16 ? ToDevice(bits) : ToDevice(rows);
    DeviceBuffer d_slots = ToDevice(slots);
    DeviceBuffer d_o(static_cast<size_t>(c.num_seqs * o_stride) * (bf16 ? 2 : 4));
    ASSERT_TRUE(d_rows.ok() && d_slots.ok() && d_o.ok());
    // NaN bit patterns in o: every output element must be written.
    ASSERT_EQ(
        cudaMemset(d_o.get(), 0xFF, static_cast<size_t>(c.num_seqs * o_stride) * (bf16 ? 2 : 4)),
        cudaSuccess);

    kernels::GdnDecodeParams p;
    p.num_seqs = c.num_seqs;
    p.num_heads = s.H;
    p.num_v_heads = s.HV;
    p.dk = s.dk;
    p.dv = s.dv;
    p.dtype = bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
    const size_t es = bf16 ? 2 : 4;
    const char* base = static_cast<const char*>(d_rows.get());
    p.q = base + s.q_off() * es;
    p.k = base + s.k_off() * es;
    p.v = base + s.v_off() * es;
    p.a = base + s.a_off() * es;
    p.b = base + s.b_off() * es;
    p.q_stride = p.k_stride = p.v_stride = p.a_stride = p.b_stride = s.row();
    p.a_log = d_alog.as<float>();
    p.dt_bias = d_dt.as<float>();
    p.allow_neg_eigval = s.neg_eigval;
    p.q_scale = s.q_scale();
    p.slots = d_slots.as<int32_t>();
    p.state = d_pool.as<float>();
    p.state_slot_stride = slot_stride;
    p.o = d_o.get();
    p.o_stride = o_stride;
    p.variant = variant;
    HYLA_ASSERT_LAUNCH_OK(kernels::GdnDecode(p, nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

    std::vector<float> want_o(static_cast<size_t>(c.num_seqs) * s.HV * s.dv, 0.0f);
    for (int r = 0; r < c.num_seqs; ++r) {
      if (slots[r] < 0) continue;
      CpuStep(s, gp, rows.data() + r * s.row(), pool.data() + slots[r] * slot_stride,
              want_o.data() + int64_t{r} * s.HV * s.dv);
    }
    std::vector<float> got_o;
    if (bf16) {
      const std::vector<uint16_t> raw = ToHost<uint16_t>(d_o, c.num_seqs * o_stride);
      for (int r = 0; r < c.num_seqs; ++r) {
        for (int64_t i = 0; i < int64_t{s.HV} * s.dv; ++i) {
          got_o.push_back(Bf16ToFloat(raw[r * o_stride + i]));
        }
      }
    } else {
      const std::vector<float> raw = ToHost<float>(d_o, c.num_seqs * o_stride);
      for (int r = 0; r < c.num_seqs; ++r) {
        got_o.insert(got_o.end(), raw.begin() + r * o_stride,
                     raw.begin() + r * o_stride + int64_t{s.HV} * s.dv);
      }
    }
    ExpectClose(got_o, want_o, bf16 ? 1e-2 : 1e-4,
                bf16 ? "gdn_decode variant bf16 o" : "gdn_decode variant f32 o");
  }
  ExpectClose(ToHost<float>(d_pool, pool.size()), pool, 1e-4,
              bf16 ? "gdn_decode variant bf16 (fp32 state)" : "gdn_decode variant f32 state");
}

class GdnDecodeVariantTest
    : public GpuTest,
      public ::testing::WithParamInterface<std::tuple<kernels::GdnDecodeVariant, bool>> {};

TEST_P(GdnDecodeVariantTest, MatchesCpuRecurrence) {
  const kernels::GdnDecodeVariant variant = std::get<0>(GetParam());
  const bool bf16 = std::get<1>(GetParam());
  const std::vector<DecodeCase> cases = {
      {{2, 4, 128, 128, false}, 7, 12, 0, 1},
      {{1, 3, 64, 96, true}, 5, 9, 4, 2},
      {{3, 3, 100, 33, false}, 4, 6, 0, 0},
      {{2, 2, 256, 256, false}, 3, 5, 8, 1},
      {{1, 1, 17, 5, true}, 1, 2, 1, 0},
      {{4, 8, 128, 128, false}, 33, 40, 0, 3},
      {{2, 6, 128, 64, false}, 9, 11, 3, 0},
      {{1, 2, 32, 36, true}, 6, 6, 0, 0},
      {{6, 6, 192, 384, false}, 5, 8, 0, 1},
      {{2, 4, 192, 320, true}, 4, 6, 4, 0},
      {{1, 1, 256, 512, false}, 2, 3, 0, 0},
      {{1, 2, 64, 385, false}, 3, 4, 1, 1},
      {{1, 2, 128, 200, false}, 5, 6, 0, 1},  // dv not a multiple of 64 or 128
      // 8320 tiles of [128, 32]: every persistent CTA loops over ~16 of them.
      {{4, 16, 128, 128, false}, 130, 136, 0, 5},
  };
  std::mt19937 rng(bf16 ? 777 : 778);
  for (const DecodeCase& c : cases) {
    RunDecodeVariantCase(c, bf16, variant, &rng);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Variants, GdnDecodeVariantTest,
    ::testing::Combine(::testing::Values(kernels::GdnDecodeVariant::kDefault,
                                         kernels::GdnDecodeVariant::kTile32,
                                         kernels::GdnDecodeVariant::kTile32Stream,
                                         kernels::GdnDecodeVariant::kTile64Stream,
                                         kernels::GdnDecodeVariant::kTile128Stream,
                                         kernels::GdnDecodeVariant::kPersistent32,
                                         kernels::GdnDecodeVariant::kTile64),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<kernels::GdnDecodeVariant, bool>>& i) {
      return "V" + std::to_string(static_cast<int>(std::get<0>(i.param))) +
             (std::get<1>(i.param) ? "Bf16" : "F32");
    });

TEST_F(GpuTest, GdnDecodeRejectsUnknownVariant) {
  DeviceBuffer d(1 << 20);
  ASSERT_TRUE(d.ok());
  kernels::GdnDecodeParams p;
  p.num_seqs = 1;
  p.num_heads = p.num_v_heads = 1;
  p.dk = p.dv = 16;
  p.q = p.k = p.v = p.a = p.b = d.get();
  p.a_log = p.dt_bias = p.state = d.as<float>();
  p.slots = d.as<int32_t>();
  p.o = d.get();
  p.q_stride = p.k_stride = p.v_stride = p.o_stride = 16;
  p.a_stride = p.b_stride = 1;
  p.state_slot_stride = 16 * 16;
  p.variant = static_cast<kernels::GdnDecodeVariant>(99);
  EXPECT_EQ(kernels::GdnDecode(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
  p.variant = static_cast<kernels::GdnDecodeVariant>(-1);
  EXPECT_EQ(kernels::GdnDecode(p, nullptr), static_cast<int>(cudaErrorInvalidValue));
}

// Small instances of every variant for compute-sanitizer (--gtest_filter='*Sanitizer*'): the
// 16-byte and scalar state paths, padding rows, and a persistent CTA that loops over tiles.
TEST_F(GpuTest, SmallGdnDecodeVariantsForSanitizers) {
  std::mt19937 rng(97);
  for (const kernels::GdnDecodeVariant v :
       {kernels::GdnDecodeVariant::kTile32, kernels::GdnDecodeVariant::kTile32Stream,
        kernels::GdnDecodeVariant::kTile64Stream, kernels::GdnDecodeVariant::kTile128Stream,
        kernels::GdnDecodeVariant::kPersistent32, kernels::GdnDecodeVariant::kTile64}) {
    RunDecodeVariantCase({{2, 4, 64, 64, false}, 3, 4, 0, 1}, false, v, &rng);
    RunDecodeVariantCase({{1, 2, 33, 7, true}, 2, 3, 1, 0}, true, v, &rng);
  }
  // 70 seqs × 8 HV × 2 tiles = 1120 small tiles: more than one per persistent CTA.
  RunDecodeVariantCase({{1, 8, 32, 36, false}, 70, 72, 0, 2}, false,
                       kernels::GdnDecodeVariant::kPersistent32, &rng);
}

}  // namespace
}  // namespace hyla
