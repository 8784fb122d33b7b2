// The NHA kernels (kernels/nha.h: Nha, NhaMakePlan) and the CUDA NHA layer against the CPU
// reference, runtime/cpu/nha_layer.cc:
//   - the kernels against RefStep below, a transcription of the CPU layer's per-token
//     recurrence (NhaLayer::RunHead) over the same packed projections, with the ring in fp32 or
//     bf16 (the bf16 ring stores rounded tokens; a row uses its own token unrounded), on odd
//     sizes, strided rows, several batch compositions (prefill, decode with and without a plan,
//     mixed, padding sequences, sequences at different positions, windows and rings wrapping,
//     chunked scans);
//   - RefStep itself against the CPU layer (host only, runs without a device);
//   - the CUDA layer against the CPU layer through small checkpoints written here (GQA, slot
//     shift, short convs, Llama3-8B head shapes; fp32 and bf16).
// Bounds (max|diff| / max|ref| per tensor): fp32 1e-4; bf16 ring 1e-2 (a token whose rounding
// lands on the other side of a bf16 tie moves by one bf16 ulp); bf16 layer 3e-2 (both sides
// with the same bf16-valued weights; bf16 GEMM inputs and ring keys under a sharp softmax).
// Label gpu; the device tests are skipped without a CUDA device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
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
#include "runtime/cpu/ops.h"
#include "runtime/cuda/cuda_layer.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/safetensors.h"
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
using gpu_test::Uniform;

// ---- the reference -------------------------------------------------------------------------

struct NhaShape {
  int H = 1, Hkv = 1, dk = 2, dv = 1, M = 1, W = 0, shift = 0;
  float scale = 1.0f;
  float norm = 8.0f;
  float theta = 10000.0f;
  int G() const { return H / Hkv; }
  int R() const { return std::max(W, shift); }
  int64_t RE() const { return int64_t{dk} + dv + M; }
  int64_t hk_size() const { return int64_t{Hkv} * dk * M; }
  int64_t hv_size() const { return int64_t{Hkv} * M * dv; }
  int64_t ring_size() const { return int64_t{R()} * Hkv * RE(); }
};

std::string ShapeName(const NhaShape& s) {
  return absl::StrCat("H", s.H, " Hkv", s.Hkv, " dk", s.dk, " dv", s.dv, " M", s.M, " W", s.W,
                      " shift", s.shift);
}

// One slot's NHA state on the host: H_K [Hkv, dk, M], H_V [Hkv, M, dv], ring [R, Hkv, RE] (bf16
// values when the ring is bf16).
struct RefSlot {
  std::vector<float> hk, hv, ring;
};

// A step's packed projections: row r holds q at q_off, k at k_off, v at v_off, f at f_off (the
// gaps are unused), rows `stride` floats apart.
struct StepRows {
  std::vector<float> data;
  int64_t stride = 0, q_off = 0, k_off = 0, v_off = 0, f_off = 0;
};

// One sequence's share of a step: its slot (−1: padding), first row, rows, start position.
struct RefSeq {
  int32_t slot = -1;
  int64_t row_begin = 0, rows = 0, start = 0;
};

float RoundKv(float x, bool bf16) { return bf16 ? Bf16ToFloat(FloatToBf16(x)) : x; }

// NhaLayer::RunHead (runtime/cpu/nha_layer.cc) for every sequence and KV head, over the packed
// projections `in`; o [rows, H·dv] receives SiLU of the mixed heads (the kernel's output). With
// a bf16 ring the tokens are stored rounded.
void RefStep(const NhaShape& sh, bool bf16, const std::vector<float>& inv_freq,
             const std::vector<RefSeq>& seqs, const StepRows& in, std::vector<RefSlot>* slots,
             std::vector<float>* o) {
  const int dk = sh.dk, dv = sh.dv, M = sh.M, W = sh.W, R = sh.R(), G = sh.G();
  const int64_t re = sh.RE();
  const int64_t ow = int64_t{sh.H} * dv;
  std::vector<float> win_k(static_cast<size_t>(W + 1) * dk), logits(static_cast<size_t>(M + W + 1));
  std::vector<float> kf(dk), qf(dk), qr(dk), v_cur(dv), f_cur(M), out(dv);
  for (const RefSeq& s : seqs) {
    if (s.slot < 0) {
      for (int64_t r = 0; r < s.rows; ++r) {
        std::fill(o->begin() + (s.row_begin + r) * ow, o->begin() + (s.row_begin + r + 1) * ow,
                  0.0f);
      }
      continue;
    }
    RefSlot& slot = (*slots)[static_cast<size_t>(s.slot)];
    for (int h = 0; h < sh.Hkv; ++h) {
      float* HK = slot.hk.data() + int64_t{h} * dk * M;
      float* HV = slot.hv.data() + int64_t{h} * M * dv;
      auto ring_at = [&](int64_t pos) { return slot.ring.data() + ((pos % R) * sh.Hkv + h) * re; };
      for (int64_t r = 0; r < s.rows; ++r) {
        const int64_t pos = s.start + r;
        const float* row = in.data.data() + (s.row_begin + r) * in.stride;
        const float* k_raw = row + in.k_off + int64_t{h} * dk;
        const float* v_raw = row + in.v_off + int64_t{h} * dv;
        const float* f_raw = row + in.f_off + int64_t{h} * M;
        for (int j = 0; j < dv; ++j) v_cur[j] = cpu::Silu(v_raw[j]);
        for (int m = 0; m < M; ++m) f_cur[m] = cpu::LogSigmoid(f_raw[m]) / sh.norm;
        const float* uk = nullptr;
        const float* uv = nullptr;
        const float* uf = nullptr;
        if (sh.shift == 0) {
          uk = k_raw;
          uv = v_cur.data();
          uf = f_cur.data();
        } else if (pos - sh.shift >= 0) {
          const float* e = ring_at(pos - sh.shift);
          uk = e;
          uv = e + dk;
          uf = e + dk + dv;
        }
        if (uk != nullptr) {
          for (int i = 0; i < dk; ++i) kf[i] = cpu::Silu(uk[i]);
          for (int m = 0; m < M; ++m) {
            const float a = std::exp(kernels::kNhaDecayLogScale * uf[m]);
            const float sm = 1.0f - std::exp(uf[m]);
            for (int i = 0; i < dk; ++i) {
              HK[int64_t{i} * M + m] = HK[int64_t{i} * M + m] * a + kf[i] * sm;
            }
            float* hv = HV + int64_t{m} * dv;
            for (int j = 0; j < dv; ++j) hv[j] = hv[j] * a + sm * uv[j];
          }
        }
        const int64_t first = std::max<int64_t>(0, pos - W);
        const int n_win = static_cast<int>(pos - first + 1);
        for (int w = 0; w < n_win; ++w) {
          const int64_t kpos = first + w;
          const float* src = kpos == pos ? k_raw : ring_at(kpos);
          float* dst = win_k.data() + int64_t{w} * dk;
          std::memcpy(dst, src, sizeof(float) * dk);
          cpu::ApplyRope(dst, dk, kpos, inv_freq.data());
        }
        for (int g = 0; g < G; ++g) {
          const int qh = h * G + g;
          const float* q_raw = row + in.q_off + int64_t{qh} * dk;
          for (int i = 0; i < dk; ++i) {
            qf[i] = cpu::Silu(q_raw[i]);
            qr[i] = q_raw[i];
          }
          cpu::ApplyRope(qr.data(), dk, pos, inv_freq.data());
          for (int m = 0; m < M; ++m) logits[m] = 0.0f;
          for (int i = 0; i < dk; ++i) {
            for (int m = 0; m < M; ++m) logits[m] += qf[i] * HK[int64_t{i} * M + m];
          }
          for (int m = 0; m < M; ++m) logits[m] *= sh.scale;
          for (int w = 0; w < n_win; ++w) {
            logits[M + w] = sh.scale * cpu::Dot(qr.data(), win_k.data() + int64_t{w} * dk, dk);
          }
          cpu::Softmax(logits.data(), M + n_win);
          std::fill(out.begin(), out.end(), 0.0f);
          for (int m = 0; m < M; ++m) {
            for (int j = 0; j < dv; ++j) out[j] += logits[m] * HV[int64_t{m} * dv + j];
          }
          for (int w = 0; w < n_win; ++w) {
            const int64_t kpos = first + w;
            const float* vw = kpos == pos ? v_cur.data() : ring_at(kpos) + dk;
            for (int j = 0; j < dv; ++j) out[j] += logits[M + w] * vw[j];
          }
          float* orow = o->data() + (s.row_begin + r) * ow + int64_t{qh} * dv;
          for (int j = 0; j < dv; ++j) orow[j] = cpu::Silu(out[j]);
        }
        if (R > 0) {
          float* e = ring_at(pos);
          for (int i = 0; i < dk; ++i) e[i] = RoundKv(k_raw[i], bf16);
          for (int j = 0; j < dv; ++j) e[dk + j] = RoundKv(v_cur[j], bf16);
          for (int m = 0; m < M; ++m) e[dk + dv + m] = RoundKv(f_cur[m], bf16);
        }
      }
    }
  }
}

std::vector<float> InvFreq(const NhaShape& s) {
  std::vector<float> inv(static_cast<size_t>(s.dk / 2));
  cpu::RopeInvFreq(s.theta, s.dk, inv.data());
  return inv;
}

RefSlot RandomSlot(const NhaShape& s, bool bf16, std::mt19937* rng) {
  RefSlot slot;
  slot.hk = Normal(static_cast<size_t>(s.hk_size()), rng, 0.0f, 0.3f);
  slot.hv = Normal(static_cast<size_t>(s.hv_size()), rng, 0.0f, 0.3f);
  slot.ring.resize(static_cast<size_t>(s.ring_size()));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> gate(-0.6f, 0.0f);
  for (int64_t e = 0; e < s.ring_size(); ++e) {
    const int64_t c = e % s.RE();
    const float x = c < s.dk          ? normal(*rng)
                    : c < s.dk + s.dv ? cpu::Silu(normal(*rng))
                                      : gate(*rng);
    slot.ring[static_cast<size_t>(e)] = RoundKv(x, bf16);
  }
  return slot;
}

// Random packed rows with gaps between the parts and a padded stride.
StepRows RandomRows(const NhaShape& s, int64_t rows, std::mt19937* rng) {
  StepRows in;
  in.q_off = 1;
  in.k_off = in.q_off + int64_t{s.H} * s.dk + 2;
  in.v_off = in.k_off + int64_t{s.Hkv} * s.dk;
  in.f_off = in.v_off + int64_t{s.Hkv} * s.dv + 1;
  in.stride = in.f_off + int64_t{s.Hkv} * s.M + 3;
  in.data = Normal(static_cast<size_t>(rows * in.stride), rng, 0.0f, 1.0f);
  // Gate logits around −1 with a wide spread: decays 2^(logsigmoid(f)/8) from ~0.6 to ~1.
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < int64_t{s.Hkv} * s.M; ++c) {
      float& x = in.data[static_cast<size_t>(r * in.stride + in.f_off + c)];
      x = 2.5f * x - 1.0f;
    }
  }
  return in;
}

// ---- device slot pool ------------------------------------------------------------------------
// Per slot: H_K | H_V | 3 floats of padding | ring (in the ring dtype) | padding; the slot size
// is a multiple of 4 bytes (the kernels address H_K/H_V in floats, the ring in its elements).
struct PoolLayout {
  int64_t ring_offset = 0;  // bytes
  int64_t slot_bytes = 0;
  int64_t es = 4;  // ring element bytes
};

PoolLayout MakePoolLayout(const NhaShape& s, bool bf16) {
  PoolLayout l;
  l.es = bf16 ? 2 : 4;
  l.ring_offset = 4 * (s.hk_size() + s.hv_size() + 3);
  const int64_t end = l.ring_offset + (s.ring_size() + 5) * l.es;
  l.slot_bytes = (end + 3) / 4 * 4;
  return l;
}

std::vector<uint8_t> PackPool(const NhaShape& s, const PoolLayout& l,
                              const std::vector<RefSlot>& slots) {
  std::vector<uint8_t> pool(static_cast<size_t>(l.slot_bytes) * slots.size(), 0xAB);
  for (size_t i = 0; i < slots.size(); ++i) {
    uint8_t* base = pool.data() + i * l.slot_bytes;
    std::memcpy(base, slots[i].hk.data(), sizeof(float) * s.hk_size());
    std::memcpy(base + 4 * s.hk_size(), slots[i].hv.data(), sizeof(float) * s.hv_size());
    for (int64_t e = 0; e < s.ring_size(); ++e) {
      const float x = slots[i].ring[static_cast<size_t>(e)];
      if (l.es == 2) {
        const uint16_t b = FloatToBf16(x);
        std::memcpy(base + l.ring_offset + 2 * e, &b, 2);
      } else {
        std::memcpy(base + l.ring_offset + 4 * e, &x, 4);
      }
    }
  }
  return pool;
}

std::vector<RefSlot> UnpackPool(const NhaShape& s, const PoolLayout& l,
                                const std::vector<uint8_t>& pool, size_t num_slots) {
  std::vector<RefSlot> slots(num_slots);
  for (size_t i = 0; i < num_slots; ++i) {
    const uint8_t* base = pool.data() + i * l.slot_bytes;
    RefSlot& slot = slots[i];
    slot.hk.resize(static_cast<size_t>(s.hk_size()));
    slot.hv.resize(static_cast<size_t>(s.hv_size()));
    slot.ring.resize(static_cast<size_t>(s.ring_size()));
    std::memcpy(slot.hk.data(), base, sizeof(float) * s.hk_size());
    std::memcpy(slot.hv.data(), base + 4 * s.hk_size(), sizeof(float) * s.hv_size());
    for (int64_t e = 0; e < s.ring_size(); ++e) {
      if (l.es == 2) {
        uint16_t b;
        std::memcpy(&b, base + l.ring_offset + 2 * e, 2);
        slot.ring[static_cast<size_t>(e)] = Bf16ToFloat(b);
      } else {
        std::memcpy(&slot.ring[static_cast<size_t>(e)], base + l.ring_offset + 4 * e, 4);
      }
    }
  }
  return slots;
}

// ---- kernel cases ----------------------------------------------------------------------------

// A step: (sequence index, rows) in batch order; sequence index −1 is a padding sequence.
using StepSpec = std::vector<std::pair<int, int>>;

struct KernelCase {
  NhaShape shape;
  std::vector<int64_t> start_pos;  // per sequence (sequence i uses slot slot_of[i])
  std::vector<int32_t> slot_of;
  int num_slots = 0;
  std::vector<StepSpec> steps;
  int chunk_rows = 64;
  bool decode_work = true;  // one-row steps without a plan (NhaDecodeWork)
};

void RunKernelCase(const KernelCase& kc, bool bf16, uint32_t seed) {
  const NhaShape& s = kc.shape;
  SCOPED_TRACE(ShapeName(s) + (bf16 ? " bf16 ring" : " f32 ring") +
               absl::StrCat(" chunk ", kc.chunk_rows));
  std::mt19937 rng(seed);
  const std::string tag = bf16 ? "bf16" : "f32";
  const std::vector<float> inv_freq = InvFreq(s);
  std::vector<RefSlot> ref(static_cast<size_t>(kc.num_slots));
  for (RefSlot& slot : ref) slot = RandomSlot(s, bf16, &rng);
  const PoolLayout pl = MakePoolLayout(s, bf16);
  DeviceBuffer d_pool = ToDevice(PackPool(s, pl, ref));
  DeviceBuffer d_inv = ToDevice(inv_freq);
  ASSERT_TRUE(d_pool.ok() && d_inv.ok());
  std::vector<int64_t> pos = kc.start_pos;

  for (size_t si = 0; si < kc.steps.size(); ++si) {
    SCOPED_TRACE(absl::StrCat("step ", si));
    const StepSpec& step = kc.steps[si];
    std::vector<RefSeq> seqs;
    std::vector<int32_t> cu = {0}, slots;
    std::vector<int64_t> starts;
    int64_t rows = 0;
    bool one_row = true;
    for (const auto& [seq, n] : step) {
      RefSeq rs;
      rs.slot = seq < 0 ? -1 : kc.slot_of[static_cast<size_t>(seq)];
      rs.row_begin = rows;
      rs.rows = n;
      rs.start = seq < 0 ? 0 : pos[static_cast<size_t>(seq)];
      seqs.push_back(rs);
      slots.push_back(rs.slot);
      starts.push_back(rs.start);
      rows += n;
      cu.push_back(static_cast<int32_t>(rows));
      one_row = one_row && n <= 1;
    }
    const StepRows in = RandomRows(s, rows, &rng);
    const int64_t o_stride = int64_t{s.H} * s.dv + 5;
    DeviceBuffer d_in = ToDevice(in.data);
    DeviceBuffer d_cu = ToDevice(cu), d_slots = ToDevice(slots), d_starts = ToDevice(starts);
    DeviceBuffer d_o(static_cast<size_t>(std::max<int64_t>(rows, 1) * o_stride) * 4);
    ASSERT_TRUE(d_in.ok() && d_cu.ok() && d_slots.ok() && d_starts.ok() && d_o.ok());

    kernels::NhaParams p;
    p.num_seqs = static_cast<int>(seqs.size());
    p.total_rows = rows;
    p.num_heads = s.H;
    p.num_kv_heads = s.Hkv;
    p.dk = s.dk;
    p.dv = s.dv;
    p.num_slots = s.M;
    p.window = s.W;
    p.kv_shift = s.shift;
    p.scale = s.scale;
    p.gate_logit_normalizer = s.norm;
    p.inv_freq = d_inv.as<float>();
    const float* base = d_in.as<float>();
    p.q = base + in.q_off;
    p.k = base + in.k_off;
    p.v = base + in.v_off;
    p.f = base + in.f_off;
    p.q_stride = p.k_stride = p.v_stride = p.f_stride = in.stride;
    p.cu_seqlens = d_cu.as<int32_t>();
    p.start_pos = d_starts.as<int64_t>();
    p.slots = d_slots.as<int32_t>();
    p.hk = d_pool.as<float>();
    p.hv = d_pool.as<float>() + s.hk_size();
    p.state_slot_stride = pl.slot_bytes / 4;
    p.ring = d_pool.as<uint8_t>() + pl.ring_offset;
    p.ring_dtype = bf16 ? kernels::KernelDType::kBf16 : kernels::KernelDType::kF32;
    p.ring_slot_stride = pl.slot_bytes / pl.es;
    p.o = d_o.as<float>();
    p.o_stride = o_stride;
    DeviceBuffer d_plan;
    if (one_row && kc.decode_work) {
      p.work = kernels::NhaDecodeWork(p.num_seqs);
    } else {
      kernels::NhaPlan plan;
      ASSERT_EQ(kernels::NhaMakePlan(cu.data(), p.num_seqs, s.H, s.Hkv, kc.chunk_rows, &plan), 0);
      p.work = plan.work;
      d_plan = ToDevice(plan.data);
      ASSERT_TRUE(d_plan.ok());
      p.plan = d_plan.as<int32_t>();
    }
    DeviceBuffer d_ws(kernels::NhaWorkspaceBytes(p));
    ASSERT_TRUE(d_ws.ok());
    p.workspace = d_ws.get();
    p.workspace_bytes = d_ws.bytes();
    HYLA_ASSERT_LAUNCH_OK(kernels::Nha(p, nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

    std::vector<float> want(static_cast<size_t>(rows * s.H * s.dv), 0.0f);
    RefStep(s, bf16, inv_freq, seqs, in, &ref, &want);
    const std::vector<float> raw = ToHost<float>(d_o, static_cast<size_t>(rows * o_stride));
    std::vector<float> got;
    for (int64_t r = 0; r < rows; ++r) {
      got.insert(got.end(), raw.begin() + r * o_stride,
                 raw.begin() + r * o_stride + int64_t{s.H} * s.dv);
    }
    const double tol = bf16 ? 1e-2 : 1e-4;  // the header's bounds: bf16 ring 1e-2
    ExpectClose(got, want, tol, "nha " + tag + " o");

    // Every slot after the step (untouched ones must be unchanged).
    const std::vector<RefSlot> dev =
        UnpackPool(s, pl, ToHost<uint8_t>(d_pool, static_cast<size_t>(pl.slot_bytes) * ref.size()),
                   ref.size());
    std::vector<float> got_hk, want_hk, got_hv, want_hv, got_ring, want_ring;
    for (size_t i = 0; i < ref.size(); ++i) {
      got_hk.insert(got_hk.end(), dev[i].hk.begin(), dev[i].hk.end());
      want_hk.insert(want_hk.end(), ref[i].hk.begin(), ref[i].hk.end());
      got_hv.insert(got_hv.end(), dev[i].hv.begin(), dev[i].hv.end());
      want_hv.insert(want_hv.end(), ref[i].hv.begin(), ref[i].hv.end());
      got_ring.insert(got_ring.end(), dev[i].ring.begin(), dev[i].ring.end());
      want_ring.insert(want_ring.end(), ref[i].ring.begin(), ref[i].ring.end());
    }
    ExpectClose(got_hk, want_hk, tol, "nha " + tag + " H_K");
    ExpectClose(got_hv, want_hv, tol, "nha " + tag + " H_V");
    ExpectClose(got_ring, want_ring, bf16 ? 1e-2 : 1e-4, "nha " + tag + " ring");
    // Continue from the device state (the reference follows the kernels' rounding of the ring).
    ref = dev;
    for (const auto& [seq, n] : step) {
      if (seq >= 0) pos[static_cast<size_t>(seq)] += n;
    }
  }
}

// Four sequences at different positions (slots shuffled), steps of every composition.
KernelCase StandardCase(const NhaShape& s, int chunk_rows, bool decode_work) {
  KernelCase kc;
  kc.shape = s;
  kc.start_pos = {0, 5, 37, 200};
  kc.slot_of = {4, 1, 3, 0};
  kc.num_slots = 6;
  kc.chunk_rows = chunk_rows;
  kc.decode_work = decode_work;
  kc.steps = {
      {{0, 23}, {1, 1}, {2, 40}},         // prefill (+ a one-row sequence)
      {{0, 1}, {1, 1}, {2, 1}, {3, 1}},   // decode
      {{2, 1}, {-1, 1}, {0, 1}},          // decode, another order, a padding row
      {{0, 1}, {1, 50}, {2, 3}, {3, 9}},  // mixed
      {{3, 100}, {-1, 3}},                // long (windows and rings wrap), padding sequence
      {{3, 1}, {0, 1}, {1, 1}},           // decode after the long one
      {{1, 2}, {0, 1}, {2, 1}, {3, 1}},   // short prefill with decodes (plan path)
  };
  return kc;
}

const std::vector<NhaShape>& KernelShapes() {
  static const std::vector<NhaShape>* shapes = new std::vector<NhaShape>{
      {2, 1, 32, 32, 8, 16, 0},         // the "tiny" preset: GQA 2:1
      {4, 2, 64, 48, 16, 5, 5},         // slots consume tokens leaving the window
      {3, 3, 18, 33, 20, 7, 3, 0.3f},   // odd sizes, shift < W, scale
      {4, 1, 40, 24, 100, 40, 10},      // M > 64, group 4, window over two key tiles
      {2, 2, 34, 40, 9, 70, 80, 0.2f},  // shift > W (ring of 80), window over three key tiles
      {1, 1, 2, 1, 1, 0, 0},            // minimal: no window, no ring
      {16, 1, 16, 8, 4, 3, 0},          // group 16 (one row per window tile)
      {8, 2, 128, 128, 64, 64, 64, 0.088388f},  // Llama3-8B head shapes (group 4, M 64, W 64)
  };
  return *shapes;
}

class NhaKernelTest : public GpuTest, public ::testing::WithParamInterface<bool> {};

TEST_P(NhaKernelTest, MatchesReferenceOverSteps) {
  const bool bf16 = GetParam();
  uint32_t seed = 100;
  for (const NhaShape& s : KernelShapes()) RunKernelCase(StandardCase(s, 64, true), bf16, ++seed);
}

TEST_P(NhaKernelTest, ChunkedScansMatchReference) {
  const bool bf16 = GetParam();
  uint32_t seed = 200;
  for (const NhaShape& s : KernelShapes()) {
    RunKernelCase(StandardCase(s, 7, false), bf16, ++seed);  // scans for most prefill rows
  }
  RunKernelCase(StandardCase(KernelShapes()[1], 1, false), bf16, ++seed);  // every row a chunk
}

INSTANTIATE_TEST_SUITE_P(RingDtypes, NhaKernelTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Bf16Ring" : "F32Ring";
                         });

// Tiny shapes for compute-sanitizer (memcheck / racecheck): prefill with a scan, decode without a
// plan, both ring dtypes.
TEST_F(GpuTest, SmallNhaKernelsForSanitizers) {
  KernelCase kc;
  kc.shape = {2, 1, 8, 6, 5, 3, 2};
  kc.start_pos = {0, 4};
  kc.slot_of = {1, 0};
  kc.num_slots = 2;
  kc.chunk_rows = 3;
  kc.steps = {{{0, 7}, {1, 2}}, {{0, 1}, {1, 1}}, {{1, 1}, {-1, 1}}};
  RunKernelCase(kc, false, 7);
  RunKernelCase(kc, true, 8);
}

TEST_F(GpuTest, NhaRejectsBadArguments) {
  const NhaShape s{2, 1, 8, 8, 4, 4, 0};
  const PoolLayout pl = MakePoolLayout(s, false);
  DeviceBuffer pool(static_cast<size_t>(pl.slot_bytes) * 2);
  DeviceBuffer in(4096 * 4), o(4096 * 4), inv(64), meta(256);
  ASSERT_TRUE(pool.ok() && in.ok() && o.ok() && inv.ok() && meta.ok());
  kernels::NhaParams ok;
  ok.num_seqs = 1;
  ok.total_rows = 1;
  ok.num_heads = s.H;
  ok.num_kv_heads = s.Hkv;
  ok.dk = s.dk;
  ok.dv = s.dv;
  ok.num_slots = s.M;
  ok.window = s.W;
  ok.inv_freq = inv.as<float>();
  ok.q = ok.k = ok.v = ok.f = in.as<float>();
  ok.q_stride = ok.k_stride = ok.v_stride = ok.f_stride = 64;
  ok.cu_seqlens = meta.as<int32_t>();
  ok.start_pos = meta.as<int64_t>() + 8;
  ok.slots = meta.as<int32_t>() + 4;
  ok.hk = pool.as<float>();
  ok.hv = pool.as<float>() + s.hk_size();
  ok.state_slot_stride = pl.slot_bytes / 4;
  ok.ring = pool.as<uint8_t>() + pl.ring_offset;
  ok.ring_slot_stride = pl.slot_bytes / 4;
  ok.o = o.as<float>();
  ok.o_stride = s.H * s.dv;
  ok.work = kernels::NhaDecodeWork(1);
  DeviceBuffer ws(kernels::NhaWorkspaceBytes(ok));
  ok.workspace = ws.get();
  ok.workspace_bytes = ws.bytes();
  const int bad = static_cast<int>(cudaErrorInvalidValue);
  auto expect_bad = [&](auto mutate, const char* what) {
    kernels::NhaParams p = ok;
    mutate(p);
    EXPECT_EQ(kernels::Nha(p, nullptr), bad) << what;
  };
  expect_bad([](kernels::NhaParams& p) { p.dk = 7; }, "odd dk");
  expect_bad([](kernels::NhaParams& p) { p.dk = 258; }, "dk > 256");
  expect_bad([](kernels::NhaParams& p) { p.dv = 0; }, "dv 0");
  expect_bad([](kernels::NhaParams& p) { p.num_slots = 129; }, "M > 128");
  expect_bad([](kernels::NhaParams& p) { p.num_heads = 3; }, "H % Hkv");
  expect_bad(
      [](kernels::NhaParams& p) {
        p.num_heads = 34;
        p.num_kv_heads = 2;
      },
      "group 17");
  expect_bad([](kernels::NhaParams& p) { p.window = -1; }, "negative window");
  expect_bad([](kernels::NhaParams& p) { p.ring = nullptr; }, "no ring");
  expect_bad([](kernels::NhaParams& p) { p.q_stride = 15; }, "q stride");
  expect_bad([](kernels::NhaParams& p) { p.state_slot_stride = 10; }, "state stride");
  expect_bad([](kernels::NhaParams& p) { p.ring_slot_stride = 10; }, "ring stride");
  expect_bad([](kernels::NhaParams& p) { p.workspace_bytes -= 4; }, "small workspace");
  expect_bad([](kernels::NhaParams& p) { p.work.num_chunks = 2; }, "decode work mismatch");
  expect_bad([](kernels::NhaParams& p) { p.gate_logit_normalizer = 0.0f; }, "normalizer 0");
  // Nothing to do is fine.
  kernels::NhaParams empty = ok;
  empty.total_rows = 0;
  EXPECT_EQ(kernels::Nha(empty, nullptr), 0);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// ---- host-only checks (run without a device) -------------------------------------------------

TEST(NhaPlanTest, CutsSequencesIntoChunksTilesAndScans) {
  // Rows 5, 0, 1, 12 with C = 4; group 4 → tiles of 4 rows.
  const std::vector<int32_t> cu = {0, 5, 5, 6, 18};
  kernels::NhaPlan plan;
  ASSERT_EQ(kernels::NhaMakePlan(cu.data(), 4, 8, 2, 4, &plan), 0);
  EXPECT_EQ(plan.work.chunk_rows, 4);
  EXPECT_EQ(plan.work.tile_rows, 4);
  EXPECT_EQ(plan.work.num_chunks, 2 + 1 + 3);
  EXPECT_EQ(plan.work.num_tiles, 2 + 1 + 3);
  EXPECT_EQ(plan.work.num_scans, 2);
  EXPECT_EQ(plan.work.num_snapshots, 5);
  const std::vector<int32_t> want = {// chunks (sequence, first row, snapshot)
                                     0, 0, 0, 0, 4, 1, 2, 0, -1, 3, 0, 2, 3, 4, 3, 3, 8, 4,
                                     // tiles (sequence, first row)
                                     0, 0, 0, 4, 2, 0, 3, 0, 3, 4, 3, 8,
                                     // scans (sequence, first snapshot)
                                     0, 0, 3, 2};
  EXPECT_EQ(plan.data, want);
  // Group 1 with short sequences: tiles as long as the longest sequence, at most 16.
  ASSERT_EQ(kernels::NhaMakePlan(cu.data(), 4, 2, 2, 64, &plan), 0);
  EXPECT_EQ(plan.work.tile_rows, 12);
  EXPECT_EQ(plan.work.num_scans, 0);
  // Invalid input.
  const std::vector<int32_t> bad = {0, 5, 3};
  EXPECT_NE(kernels::NhaMakePlan(bad.data(), 2, 2, 2, 64, &plan), 0);
  EXPECT_NE(kernels::NhaMakePlan(cu.data(), 4, 3, 2, 64, &plan), 0);
  EXPECT_NE(kernels::NhaMakePlan(cu.data(), 4, 2, 2, 0, &plan), 0);
  const kernels::NhaWork d = kernels::NhaDecodeWork(5);
  EXPECT_EQ(d.num_chunks, 5);
  EXPECT_EQ(d.num_tiles, 5);
  EXPECT_EQ(d.num_scans, 0);
  EXPECT_EQ(d.tile_rows, 1);
}

// ---- checkpoints for the layer tests ---------------------------------------------------------

// A layer-0 NHA checkpoint for `nha` (hidden d): config.json of the "tiny" preset (only parsed by
// Checkpoint::Open; the layers use the config given to them) and model.safetensors with the
// layer's tensors, random, including short-conv weights.
// bf16_weights: every weight is a bf16 value (stored as fp32), so that a CPU layer and a CUDA
// layer with Precision::kBf16 compute with the same weights and differ only by the bf16 path.
std::string WriteNhaCheckpoint(const NhaLayerConfig& nha, int64_t d, const std::string& name,
                               uint32_t seed, bool bf16_weights = false) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/nha_kernels_test_", name);
  absl::StatusOr<tools::ModelShape> shape = tools::PresetShape(Family::kNha, "tiny");
  EXPECT_TRUE(shape.ok());
  tools::GeneratorOptions gen;
  gen.shape = *shape;
  gen.config_only = true;
  EXPECT_TRUE(tools::GenerateModel(gen, dir).ok());
  std::mt19937 rng(seed);
  std::vector<TensorToWrite> tensors;
  auto add = [&](const std::string& tname, std::vector<int64_t> tshape, float mean, float stddev) {
    int64_t n = 1;
    for (int64_t x : tshape) n *= x;
    std::vector<float> v = Normal(static_cast<size_t>(n), &rng, mean, stddev);
    if (bf16_weights) {
      for (float& x : v) x = Bf16ToFloat(FloatToBf16(x));
    }
    TensorToWrite t;
    t.name = "model.layers.0.attn." + tname;
    t.dtype = DType::kF32;
    t.shape = std::move(tshape);
    t.bytes.resize(static_cast<size_t>(n) * 4);
    std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
    tensors.push_back(std::move(t));
  };
  const int64_t qw = int64_t{nha.num_heads} * nha.head_k_dim;
  const int64_t kw = int64_t{nha.num_kv_heads} * nha.head_k_dim;
  const int64_t vw = int64_t{nha.num_kv_heads} * nha.head_v_dim;
  const int64_t value_dim = int64_t{nha.num_heads} * nha.head_v_dim;
  const float in_std = 1.0f / std::sqrt(static_cast<float>(d));
  add("q_proj.weight", {qw, d}, 0.0f, in_std);
  add("k_proj.weight", {kw, d}, 0.0f, in_std);
  add("v_proj.weight", {vw, d}, 0.0f, in_std);
  add("f_proj.weight", {int64_t{nha.num_kv_heads} * nha.num_slots, d}, 0.0f, 2.0f * in_std);
  add("q_conv1d.weight", {qw, 1, nha.conv_size}, 0.0f, 0.5f);
  add("k_conv1d.weight", {kw, 1, nha.conv_size}, 0.0f, 0.5f);
  add("v_conv1d.weight", {vw, 1, nha.conv_size}, 0.0f, 0.5f);
  add("g_norm.weight", {value_dim}, 1.0f, 0.1f);
  add("o_proj.weight", {d, value_dim}, 0.0f, 1.0f / std::sqrt(static_cast<float>(value_dim)));
  EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  return dir;
}

// The NHA config of a layer-test variant, on top of the "tiny" preset's parsed config.
struct LayerVariant {
  const char* name;
  NhaShape shape;
  bool short_conv = false;
  cuda::Precision precision = cuda::Precision::kF32;
};

// RefStep against the CPU layer (host only): projections by cpu::Linear, RefStep, then the CPU
// layer's output lines (SiLU is in RefStep's o). Checks the transcription above.
TEST(NhaReferenceTest, RefStepMatchesCpuLayer) {
  const NhaShape s{4, 2, 16, 16, 6, 5, 3};
  NhaLayerConfig nha;
  nha.num_heads = s.H;
  nha.num_kv_heads = s.Hkv;
  nha.head_k_dim = s.dk;
  nha.head_v_dim = s.dv;
  nha.num_slots = s.M;
  nha.window_size = s.W;
  nha.kv_shift = s.shift;
  const int64_t d = 40;
  const std::string dir = WriteNhaCheckpoint(nha, d, "reference", 3);
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  ModelConfig cfg = (*ck)->config();
  cfg.hidden_size = static_cast<int>(d);
  cfg.layers[0].kind = LayerKind::kNha;
  cfg.layers[0].nha = nha;
  absl::StatusOr<StateLayout> layout = StateLayout::Create(cfg, DType::kF32);
  ASSERT_TRUE(layout.ok()) << layout.status();
  cpu::CpuLayerArgs args;
  args.config = &cfg;
  args.layer = 0;
  args.prefix = "model.layers.0.attn.";
  args.checkpoint = ck->get();
  args.layout = &*layout;
  absl::StatusOr<std::unique_ptr<cpu::CpuLayer>> layer = cpu::CreateNhaLayer(args);
  ASSERT_TRUE(layer.ok()) << layer.status();
  absl::StatusOr<F32Tensor> wq = (*ck)->TakeF32(args.prefix + "q_proj.weight", {s.H * s.dk, d});
  absl::StatusOr<F32Tensor> wk = (*ck)->TakeF32(args.prefix + "k_proj.weight", {s.Hkv * s.dk, d});
  absl::StatusOr<F32Tensor> wv = (*ck)->TakeF32(args.prefix + "v_proj.weight", {s.Hkv * s.dv, d});
  absl::StatusOr<F32Tensor> wf = (*ck)->TakeF32(args.prefix + "f_proj.weight", {s.Hkv * s.M, d});
  absl::StatusOr<F32Tensor> gn = (*ck)->TakeF32(args.prefix + "g_norm.weight", {s.H * s.dv});
  absl::StatusOr<F32Tensor> wo = (*ck)->TakeF32(args.prefix + "o_proj.weight", {d, s.H * s.dv});
  ASSERT_TRUE(wq.ok() && wk.ok() && wv.ok() && wf.ok() && gn.ok() && wo.ok());

  std::mt19937 rng(5);
  const int num_slots = 3;
  const int64_t slot_bytes = layout->slot_bytes();
  std::vector<uint8_t> cpu_slots(static_cast<size_t>(num_slots * slot_bytes), 0);
  std::vector<RefSlot> ref(num_slots);
  for (int i = 0; i < num_slots; ++i) {
    ref[i] = RandomSlot(s, false, &rng);
    uint8_t* base = cpu_slots.data() + i * slot_bytes;
    std::memcpy(base + layout->Component(0, "H_K").offset, ref[i].hk.data(), 4 * s.hk_size());
    std::memcpy(base + layout->Component(0, "H_V").offset, ref[i].hv.data(), 4 * s.hv_size());
    std::memcpy(base + layout->Component(0, "ring").offset, ref[i].ring.data(), 4 * s.ring_size());
  }
  ThreadPool pool(1);
  cpu::CpuContext ctx;
  ctx.pool = &pool;
  ctx.layout = &*layout;
  const std::vector<int64_t> start = {3, 0, 11};
  const std::vector<std::vector<std::pair<int, int>>> steps = {
      {{0, 9}, {1, 1}, {2, 4}}, {{0, 1}, {1, 1}, {2, 1}}, {{2, 13}, {0, 1}}};
  std::vector<int64_t> pos = start;
  const std::vector<float> inv_freq = InvFreq(s);
  for (const auto& step : steps) {
    std::vector<cpu::CpuSeq> cseqs;
    std::vector<RefSeq> rseqs;
    int64_t rows = 0;
    for (const auto& [seq, n] : step) {
      cpu::CpuSeq c;
      c.start_pos = pos[seq];
      c.row_begin = rows;
      c.num_rows = n;
      c.slot = cpu_slots.data() + seq * slot_bytes;
      cseqs.push_back(c);
      rseqs.push_back({seq, rows, n, pos[seq]});
      rows += n;
    }
    const std::vector<float> x = Normal(static_cast<size_t>(rows * d), &rng, 0.0f, 1.0f);
    std::vector<float> want(static_cast<size_t>(rows * d));
    ASSERT_TRUE((*layer)->Forward(ctx, cseqs, x.data(), want.data()).ok());
    // The reference path: packed projections, RefStep, RMSNorm, o_proj.
    StepRows in;
    in.q_off = 0;
    in.k_off = int64_t{s.H} * s.dk;
    in.v_off = in.k_off + int64_t{s.Hkv} * s.dk;
    in.f_off = in.v_off + int64_t{s.Hkv} * s.dv;
    in.stride = in.f_off + int64_t{s.Hkv} * s.M;
    in.data.resize(static_cast<size_t>(rows * in.stride));
    cpu::LinearStrided(&pool, x.data(), d, rows, d, wq->data(), s.H * s.dk, nullptr,
                       in.data.data() + in.q_off, in.stride);
    cpu::LinearStrided(&pool, x.data(), d, rows, d, wk->data(), s.Hkv * s.dk, nullptr,
                       in.data.data() + in.k_off, in.stride);
    cpu::LinearStrided(&pool, x.data(), d, rows, d, wv->data(), s.Hkv * s.dv, nullptr,
                       in.data.data() + in.v_off, in.stride);
    cpu::LinearStrided(&pool, x.data(), d, rows, d, wf->data(), s.Hkv * s.M, nullptr,
                       in.data.data() + in.f_off, in.stride);
    std::vector<float> o(static_cast<size_t>(rows * s.H * s.dv));
    RefStep(s, false, inv_freq, rseqs, in, &ref, &o);
    cpu::RmsNormRows(&pool, o.data(), gn->data(), nha.output_norm_eps, rows, s.H * s.dv, o.data());
    std::vector<float> got(static_cast<size_t>(rows * d));
    cpu::Linear(&pool, o.data(), rows, s.H * s.dv, wo->data(), d, nullptr, got.data());
    EXPECT_EQ(got, want);  // the same operations in the same order: bitwise
    for (int i = 0; i < num_slots; ++i) {
      const uint8_t* base = cpu_slots.data() + i * slot_bytes;
      EXPECT_EQ(0, std::memcmp(base + layout->Component(0, "H_K").offset, ref[i].hk.data(),
                               4 * s.hk_size()));
      EXPECT_EQ(0, std::memcmp(base + layout->Component(0, "H_V").offset, ref[i].hv.data(),
                               4 * s.hv_size()));
      EXPECT_EQ(0, std::memcmp(base + layout->Component(0, "ring").offset, ref[i].ring.data(),
                               4 * s.ring_size()));
    }
    for (const auto& [seq, n] : step) pos[seq] += n;
  }
}

// ---- The CUDA NHA layer against the CPU NHA layer --------------------------------------------

void RunLayerTest(const LayerVariant& v) {
  SCOPED_TRACE(v.name);
  const NhaShape& s = v.shape;
  NhaLayerConfig nha;
  nha.num_heads = s.H;
  nha.num_kv_heads = s.Hkv;
  nha.head_k_dim = s.dk;
  nha.head_v_dim = s.dv;
  nha.num_slots = s.M;
  nha.window_size = s.W;
  nha.kv_shift = s.shift;
  nha.scale = s.scale;
  nha.use_short_conv = v.short_conv;
  nha.conv_size = 4;
  const int64_t d = 64;
  const std::string dir =
      WriteNhaCheckpoint(nha, d, v.name, 11, v.precision == cuda::Precision::kBf16);
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  ModelConfig cfg = (*ck)->config();
  cfg.hidden_size = static_cast<int>(d);
  cfg.layers[0].kind = LayerKind::kNha;
  cfg.layers[0].nha = nha;
  const int layer = 0;
  const std::string prefix = "model.layers.0.attn.";
  const bool bf16 = v.precision == cuda::Precision::kBf16;
  // The CPU keeps its ring in fp32; the CUDA layer uses the backend's KV dtype.
  absl::StatusOr<StateLayout> cpu_layout = StateLayout::Create(cfg, DType::kF32);
  absl::StatusOr<StateLayout> gpu_layout =
      StateLayout::Create(cfg, bf16 ? DType::kBF16 : DType::kF32);
  ASSERT_TRUE(cpu_layout.ok() && gpu_layout.ok());

  cpu::CpuLayerArgs cargs;
  cargs.config = &cfg;
  cargs.layer = layer;
  cargs.prefix = prefix;
  cargs.checkpoint = ck->get();
  cargs.layout = &*cpu_layout;
  absl::StatusOr<std::unique_ptr<cpu::CpuLayer>> cpu_layer = cpu::CreateNhaLayer(cargs);
  ASSERT_TRUE(cpu_layer.ok()) << cpu_layer.status();

  absl::StatusOr<std::unique_ptr<cuda::DeviceContext>> dev =
      cuda::DeviceContext::Create(0, size_t{256} << 20);
  ASSERT_TRUE(dev.ok()) << dev.status();
  cuda::DeviceWeights weights(dev->get(), v.precision);
  cuda::CudaLayerArgs args;
  args.config = &cfg;
  args.layer = layer;
  args.prefix = prefix;
  args.checkpoint = ck->get();
  args.layout = &*gpu_layout;
  args.dev = dev->get();
  args.weights = &weights;
  absl::StatusOr<std::unique_ptr<cuda::CudaLayer>> cuda_layer = cuda::CreateCudaNhaLayer(args);
  ASSERT_TRUE(cuda_layer.ok()) << cuda_layer.status();

  // Slots: random H_K / H_V and conv tails, the same on both sides (rings are written before
  // they are read: every sequence starts at position 0).
  std::mt19937 rng(31);
  const int num_slots = 6;
  const int64_t cpu_slot = cpu_layout->slot_bytes(), gpu_slot = gpu_layout->slot_bytes();
  std::vector<uint8_t> cpu_slots(static_cast<size_t>(num_slots * cpu_slot), 0);
  std::vector<uint8_t> gpu_slots(static_cast<size_t>(num_slots * gpu_slot), 0);
  std::vector<const char*> compared = {"H_K", "H_V"};
  if (v.short_conv) compared.push_back("conv");
  for (const char* name : compared) {
    const StateComponent& cc = cpu_layout->Component(layer, name);
    const StateComponent& gc = gpu_layout->Component(layer, name);
    ASSERT_EQ(cc.bytes, gc.bytes);
    for (int i = 0; i < num_slots; ++i) {
      const std::vector<float> init =
          Normal(static_cast<size_t>(cc.bytes / 4), &rng, 0.0f, name[0] == 'c' ? 1.0f : 0.3f);
      std::memcpy(cpu_slots.data() + i * cpu_slot + cc.offset, init.data(), cc.bytes);
      std::memcpy(gpu_slots.data() + i * gpu_slot + gc.offset, init.data(), gc.bytes);
    }
  }
  DeviceBuffer d_slots = ToDevice(gpu_slots);
  ASSERT_TRUE(d_slots.ok());

  struct Seq {
    int32_t slot;
    int64_t pos;
  };
  std::vector<Seq> seqs = {{4, 0}, {1, 0}, {3, 0}, {0, 0}};
  const std::vector<StepSpec> steps = {
      {{0, 70}, {1, 5}, {2, 1}},         // prefill (a scan for 70 rows) + short ones
      {{0, 1}, {1, 1}, {2, 1}},          // decode
      {{2, 1}, {0, 1}},                  // decode, another order, a subset
      {{0, 1}, {1, 130}, {2, 3}},        // mixed, a long prefill (windows wrap)
      {{3, 64}, {1, 1}},                 // a fresh sequence of exactly one chunk
      {{3, 1}, {0, 1}, {1, 1}, {2, 1}},  // decode of all
      {{2, 59}, {3, 2}},                 // prefill after decodes
  };
  ThreadPool pool(1);
  cpu::CpuContext cctx;
  cctx.pool = &pool;
  cctx.layout = &*cpu_layout;
  // bf16: the same (bf16-valued) weights on both sides. The layer still rounds every GEMM input
  // to bf16 and reads window keys from a bf16 ring; with this test's sharp joint softmax the
  // output moves up to ~2.9e-2 (H100, 2026-11-23) while the state and ring stay at ~3e-3 and the
  // NHA kernel itself, fed the same bf16 inputs, at ~2e-4. Whole models in bf16 stay within
  // 5.2e-3 of the fp32 CPU reference (cuda_backend_test).
  const double bound = bf16 ? 3e-2 : 1e-4;
  const std::string tag = absl::StrCat("nha layer ", bf16 ? "bf16" : "f32");

  for (size_t si = 0; si < steps.size(); ++si) {
    SCOPED_TRACE(absl::StrCat("step ", si));
    const StepSpec& step = steps[si];
    cuda::CudaBatch batch;
    std::vector<cpu::CpuSeq> cseqs;
    std::vector<int32_t> slots, row_seq, row_pos;
    batch.host_cu_seqlens.push_back(0);
    int64_t rows = 0;
    bool all_decode = true;
    for (size_t i = 0; i < step.size(); ++i) {
      const Seq& sq = seqs[static_cast<size_t>(step[i].first)];
      const int n = step[i].second;
      cuda::CudaSeq cs;
      cs.start_pos = sq.pos;
      cs.row_begin = rows;
      cs.num_rows = n;
      cs.slot = sq.slot;
      batch.seqs.push_back(cs);
      cpu::CpuSeq c;
      c.start_pos = sq.pos;
      c.row_begin = rows;
      c.num_rows = n;
      c.slot = cpu_slots.data() + sq.slot * cpu_slot;
      cseqs.push_back(c);
      slots.push_back(sq.slot);
      for (int r = 0; r < n; ++r) {
        row_seq.push_back(static_cast<int32_t>(i));
        row_pos.push_back(static_cast<int32_t>(sq.pos + r));
      }
      rows += n;
      batch.host_cu_seqlens.push_back(static_cast<int32_t>(rows));
      batch.host_start_pos.push_back(sq.pos);
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
    ctx.layout = &*gpu_layout;
    ctx.slot_pool = d_slots.as<uint8_t>();
    ctx.batch = &batch;
    const absl::Status st = (*cuda_layer)->Forward(ctx, d_x.as<float>(), d_out.as<float>());
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE((*dev)->Synchronize().ok());

    std::vector<float> want(static_cast<size_t>(rows * d));
    ASSERT_TRUE((*cpu_layer)->Forward(cctx, cseqs, x.data(), want.data()).ok());
    ExpectClose(ToHost<float>(d_out, want.size()), want, bound,
                absl::StrCat(tag, " out (", v.name, ")"));

    // Slot state of every slot: H_K, H_V (fp32 on both sides), conv tails, and the ring.
    const std::vector<uint8_t> dev_slots = ToHost<uint8_t>(d_slots, gpu_slots.size());
    std::vector<float> got_state, want_state, got_ring, want_ring;
    for (int i = 0; i < num_slots; ++i) {
      for (const char* name : compared) {
        const StateComponent& cc = cpu_layout->Component(layer, name);
        const StateComponent& gc = gpu_layout->Component(layer, name);
        const float* gp =
            reinterpret_cast<const float*>(dev_slots.data() + i * gpu_slot + gc.offset);
        const float* wp =
            reinterpret_cast<const float*>(cpu_slots.data() + i * cpu_slot + cc.offset);
        got_state.insert(got_state.end(), gp, gp + cc.bytes / 4);
        want_state.insert(want_state.end(), wp, wp + cc.bytes / 4);
      }
      const StateComponent& cr = cpu_layout->Component(layer, "ring");
      const StateComponent& gr = gpu_layout->Component(layer, "ring");
      const int64_t n = cr.bytes / 4;
      const float* wp = reinterpret_cast<const float*>(cpu_slots.data() + i * cpu_slot + cr.offset);
      want_ring.insert(want_ring.end(), wp, wp + n);
      for (int64_t e = 0; e < n; ++e) {
        if (bf16) {
          uint16_t b;
          std::memcpy(&b, dev_slots.data() + i * gpu_slot + gr.offset + 2 * e, 2);
          got_ring.push_back(Bf16ToFloat(b));
        } else {
          float f;
          std::memcpy(&f, dev_slots.data() + i * gpu_slot + gr.offset + 4 * e, 4);
          got_ring.push_back(f);
        }
      }
    }
    ExpectClose(got_state, want_state, bound, absl::StrCat(tag, " state (", v.name, ")"));
    ExpectClose(got_ring, want_ring, bf16 ? 1e-2 : 1e-4, absl::StrCat(tag, " ring (", v.name, ")"));
    for (const auto& [seq, n] : step) seqs[static_cast<size_t>(seq)].pos += n;
  }
}

TEST_F(GpuTest, CudaNhaLayerMatchesCpuLayer) {
  RunLayerTest({"tiny", {2, 1, 32, 32, 8, 16, 0}});
  RunLayerTest({"shifted_scaled", {4, 2, 24, 16, 12, 10, 10, 0.2041241f}});
  RunLayerTest({"short_conv", {2, 1, 32, 32, 8, 5, 3}, true});
  RunLayerTest({"llama3_heads", {8, 2, 128, 128, 64, 64, 64, 0.088388f}});
}

TEST_F(GpuTest, CudaNhaLayerBf16CloseToCpuLayer) {
  RunLayerTest({"bf16", {2, 1, 32, 32, 8, 16, 16}, false, cuda::Precision::kBf16});
  RunLayerTest({"bf16_conv", {4, 2, 32, 32, 16, 8, 0}, true, cuda::Precision::kBf16});
}

// The kernels at the nha-llama3-8b shape (H 32, Hkv 8, dk = dv = 128, M 64, W = kv_shift = 64,
// bf16 ring): decode batches and prefills run, give finite outputs, and their times are printed
// ("[gpu-perf] ..."; decode with the bytes of state and ring it must move). No timing bound.
TEST_F(GpuTest, NhaLlama3ShapeRunsAndReportsTimes) {
  const NhaShape s{32, 8, 128, 128, 64, 64, 64, 0.088388f};
  const PoolLayout pl = MakePoolLayout(s, true);
  const int max_seqs = 128;
  std::mt19937 rng(9);
  // Slots: small random state (the same pattern repeated), ring values O(1).
  std::vector<RefSlot> init(1);
  init[0] = RandomSlot(s, true, &rng);
  const std::vector<uint8_t> one = PackPool(s, pl, init);
  std::vector<uint8_t> pool_host(one.size() * max_seqs);
  for (int i = 0; i < max_seqs; ++i)
    std::memcpy(pool_host.data() + i * one.size(), one.data(), one.size());
  DeviceBuffer d_pool = ToDevice(pool_host);
  DeviceBuffer d_inv = ToDevice(InvFreq(s));
  ASSERT_TRUE(d_pool.ok() && d_inv.ok());
  cudaEvent_t start, stop;
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);

  struct Run {
    const char* name;
    int seqs;
    int rows_per_seq;
    int64_t start_pos;
  };
  for (const Run& run : {Run{"decode 64 seqs", 64, 1, 1000}, Run{"decode 128 seqs", 128, 1, 1000},
                         Run{"prefill 1 x 4096", 1, 4096, 0}, Run{"prefill 4 x 1024", 4, 1024, 0},
                         Run{"prefill 16 x 256 at 512", 16, 256, 512}}) {
    SCOPED_TRACE(run.name);
    const int64_t rows = int64_t{run.seqs} * run.rows_per_seq;
    std::vector<int32_t> cu = {0}, slots;
    std::vector<int64_t> starts;
    for (int i = 0; i < run.seqs; ++i) {
      cu.push_back(cu.back() + run.rows_per_seq);
      slots.push_back(i);
      starts.push_back(run.start_pos);
    }
    const StepRows in = RandomRows(s, rows, &rng);
    DeviceBuffer d_in = ToDevice(in.data);
    DeviceBuffer d_cu = ToDevice(cu), d_slots = ToDevice(slots), d_starts = ToDevice(starts);
    DeviceBuffer d_o(static_cast<size_t>(rows * s.H * s.dv) * 4);
    ASSERT_TRUE(d_in.ok() && d_cu.ok() && d_slots.ok() && d_starts.ok() && d_o.ok());
    kernels::NhaParams p;
    p.num_seqs = run.seqs;
    p.total_rows = rows;
    p.num_heads = s.H;
    p.num_kv_heads = s.Hkv;
    p.dk = s.dk;
    p.dv = s.dv;
    p.num_slots = s.M;
    p.window = s.W;
    p.kv_shift = s.shift;
    p.scale = s.scale;
    p.inv_freq = d_inv.as<float>();
    p.q = d_in.as<float>() + in.q_off;
    p.k = d_in.as<float>() + in.k_off;
    p.v = d_in.as<float>() + in.v_off;
    p.f = d_in.as<float>() + in.f_off;
    p.q_stride = p.k_stride = p.v_stride = p.f_stride = in.stride;
    p.cu_seqlens = d_cu.as<int32_t>();
    p.start_pos = d_starts.as<int64_t>();
    p.slots = d_slots.as<int32_t>();
    p.hk = d_pool.as<float>();
    p.hv = d_pool.as<float>() + s.hk_size();
    p.state_slot_stride = pl.slot_bytes / 4;
    p.ring = d_pool.as<uint8_t>() + pl.ring_offset;
    p.ring_dtype = kernels::KernelDType::kBf16;
    p.ring_slot_stride = pl.slot_bytes / 2;
    p.o = d_o.as<float>();
    p.o_stride = int64_t{s.H} * s.dv;
    DeviceBuffer d_plan;
    if (run.rows_per_seq == 1) {
      p.work = kernels::NhaDecodeWork(run.seqs);
    } else {
      kernels::NhaPlan plan;
      ASSERT_EQ(kernels::NhaMakePlan(cu.data(), run.seqs, s.H, s.Hkv, 64, &plan), 0);
      p.work = plan.work;
      d_plan = ToDevice(plan.data);
      ASSERT_TRUE(d_plan.ok());
      p.plan = d_plan.as<int32_t>();
    }
    DeviceBuffer d_ws(kernels::NhaWorkspaceBytes(p));
    ASSERT_TRUE(d_ws.ok());
    p.workspace = d_ws.get();
    p.workspace_bytes = d_ws.bytes();
    for (int i = 0; i < 2; ++i) HYLA_ASSERT_LAUNCH_OK(kernels::Nha(p, nullptr));
    const int iters = run.rows_per_seq == 1 ? 20 : 5;
    ASSERT_EQ(cudaEventRecord(start), cudaSuccess);
    for (int i = 0; i < iters; ++i) HYLA_ASSERT_LAUNCH_OK(kernels::Nha(p, nullptr));
    ASSERT_EQ(cudaEventRecord(stop), cudaSuccess);
    ASSERT_EQ(cudaEventSynchronize(stop), cudaSuccess);
    float ms = 0.0f;
    ASSERT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
    const double us = 1000.0 * ms / iters;
    const std::vector<float> o = ToHost<float>(d_o, static_cast<size_t>(rows * s.H * s.dv));
    EXPECT_TRUE(std::all_of(o.begin(), o.end(), [](float x) { return std::isfinite(x); }));
    if (run.rows_per_seq == 1) {
      // Per (sequence, KV head): H_K and H_V read and written, the ring's W entries read.
      const double bytes = static_cast<double>(run.seqs) * s.Hkv *
                           (2.0 * 4 * (s.hk_size() + s.hv_size()) / s.Hkv + 2.0 * s.W * s.RE());
      std::printf("[gpu-perf] nha llama3-8b %-24s %9.1f us  %7.1f GB/s (state + ring)\n", run.name,
                  us, bytes / us * 1e-3);
    } else {
      std::printf("[gpu-perf] nha llama3-8b %-24s %9.1f us  %7.2f Mtok/s\n", run.name, us,
                  static_cast<double>(rows) / us);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

TEST_F(GpuTest, CudaNhaLayerRejectsUnsupportedConfigs) {
  NhaLayerConfig nha;
  nha.num_heads = 2;
  nha.num_kv_heads = 1;
  nha.head_k_dim = 32;
  nha.head_v_dim = 32;
  nha.num_slots = 8;
  nha.window_size = 4;
  const std::string dir = WriteNhaCheckpoint(nha, 64, "reject", 1);
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  absl::StatusOr<std::unique_ptr<cuda::DeviceContext>> dev =
      cuda::DeviceContext::Create(0, size_t{16} << 20);
  ASSERT_TRUE(dev.ok()) << dev.status();
  cuda::DeviceWeights weights(dev->get(), cuda::Precision::kF32);
  auto create = [&](const NhaLayerConfig& c) {
    ModelConfig cfg = (*ck)->config();
    cfg.hidden_size = 64;
    cfg.layers[0].kind = LayerKind::kNha;
    cfg.layers[0].nha = c;
    absl::StatusOr<StateLayout> layout = StateLayout::Create(cfg, DType::kF32);
    EXPECT_TRUE(layout.ok());
    cuda::CudaLayerArgs args;
    args.config = &cfg;
    args.layer = 0;
    args.prefix = "model.layers.0.attn.";
    args.checkpoint = ck->get();
    args.layout = &*layout;
    args.dev = dev->get();
    args.weights = &weights;
    return cuda::CreateCudaNhaLayer(args).status();
  };
  EXPECT_TRUE(create(nha).ok());
  NhaLayerConfig c = nha;
  c.num_slots = 200;  // more slots than the kernels hold (the checkpoint's f_proj differs too)
  EXPECT_FALSE(create(c).ok());
  c = nha;
  c.use_output_gate = true;
  EXPECT_FALSE(create(c).ok());
  c = nha;
  c.head_k_dim = 31;
  EXPECT_FALSE(create(c).ok());
}

}  // namespace
}  // namespace hyla
