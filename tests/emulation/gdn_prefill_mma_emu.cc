// Host emulation of kernels/gdn_prefill_mma.cu (GdnPrefill's tensor-core path) for checking its
// index math without a GPU: the file is compiled as host code (HYLA_GDN_MMA_EMULATION), every
// emulated thread is a std::thread, and the warp primitives (mma.m16n8k16, ldmatrix, shuffles,
// barriers) are emulated lane by lane from their PTX definitions; cp.async copies at once (so
// this checks indices and barriers, not the asynchronous ordering). Shared memory is poisoned
// with NaN per CTA. Each case runs launch 1, the state pass (and launch 3) of one variant and
// compares o and the final state with the per-token recurrence (bound 1e-2 of max|ref|, as
// tests/gpu/gdn_kernels_test.cc). Not part of the build:
//   g++ -std=c++17 -O2 -pthread -I. -o /tmp/gdn_mma_emu tests/emulation/gdn_prefill_mma_emu.cc
//   /tmp/gdn_mma_emu [case index]
#define HYLA_GDN_MMA_EMULATION 1
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <vector>
using std::log1pf;
// CUDA vector types the kernel bodies use.
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
#include "kernels/gdn_prefill_mma.cu"

namespace emu {
struct Barrier {
  int n;
  int count = 0;
  long gen = 0;
  std::mutex m;
  std::condition_variable cv;
  explicit Barrier(int n_) : n(n_) {}
  void Wait() {
    std::unique_lock<std::mutex> l(m);
    long g = gen;
    if (++count == n) {
      count = 0;
      ++gen;
      cv.notify_all();
    } else {
      cv.wait(l, [&] { return gen != g; });
    }
  }
};
struct Warp {
  Barrier bar{32};
  uint32_t a[32][4], b[32][2];
  const uint16_t* addr[32];
  float f[32];
};
thread_local int t_lane = 0;
thread_local Warp* t_warp = nullptr;
thread_local Barrier* t_cta = nullptr;

uint16_t ToBf(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = u + 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float FromBf(uint16_t v) {
  uint32_t u = uint32_t{v} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace emu

namespace hyla::kernels::gdn_mma {
void SyncThreads() { emu::t_cta->Wait(); }
uint16_t ToBf16(float v) { return emu::ToBf(v); }
float Bf16ToF(uint16_t v) { return emu::FromBf(v); }
uint32_t PackBf16(float lo, float hi) {
  return uint32_t{emu::ToBf(lo)} | (uint32_t{emu::ToBf(hi)} << 16);
}
void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::Warp* w = emu::t_warp;
  const int l = emu::t_lane;
  for (int i = 0; i < 4; ++i) w->a[l][i] = a[i];
  w->b[l][0] = b0;
  w->b[l][1] = b1;
  w->bar.Wait();
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    auto lo = [](uint32_t v) { return emu::FromBf(v & 0xffff); };
    auto hi = [](uint32_t v) { return emu::FromBf(v >> 16); };
    A[g][2 * t] = lo(w->a[lane][0]);
    A[g][2 * t + 1] = hi(w->a[lane][0]);
    A[g + 8][2 * t] = lo(w->a[lane][1]);
    A[g + 8][2 * t + 1] = hi(w->a[lane][1]);
    A[g][2 * t + 8] = lo(w->a[lane][2]);
    A[g][2 * t + 9] = hi(w->a[lane][2]);
    A[g + 8][2 * t + 8] = lo(w->a[lane][3]);
    A[g + 8][2 * t + 9] = hi(w->a[lane][3]);
    B[2 * t][g] = lo(w->b[lane][0]);
    B[2 * t + 1][g] = hi(w->b[lane][0]);
    B[2 * t + 8][g] = lo(w->b[lane][1]);
    B[2 * t + 9][g] = hi(w->b[lane][1]);
  }
  const int g = l / 4, t = l % 4;
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e >> 1), n = 2 * t + (e & 1);
    float s = 0;
    for (int k = 0; k < 16; ++k) s += A[r][k] * B[k][n];
    c[e] += s;
  }
  w->bar.Wait();
}
void LdMatrix(uint32_t (&r)[4], const uint16_t* row, bool trans) {
  emu::Warp* w = emu::t_warp;
  const int l = emu::t_lane;
  w->addr[l] = row;
  w->bar.Wait();
  const int g = l / 4, t = l % 4;
  for (int j = 0; j < 4; ++j) {
    uint16_t x0, x1;
    if (!trans) {
      x0 = w->addr[8 * j + g][2 * t];
      x1 = w->addr[8 * j + g][2 * t + 1];
    } else {
      x0 = w->addr[8 * j + 2 * t][g];
      x1 = w->addr[8 * j + 2 * t + 1][g];
    }
    r[j] = uint32_t{x0} | (uint32_t{x1} << 16);
  }
  w->bar.Wait();
}
void LdMatrixX4(uint32_t (&r)[4], const uint16_t* row) { LdMatrix(r, row, false); }
void LdMatrixX4Trans(uint32_t (&r)[4], const uint16_t* row) { LdMatrix(r, row, true); }
void CpAsync16(void* dst, const void* src, bool fill) {
  if (fill)
    std::memcpy(dst, src, 16);
  else
    std::memset(dst, 0, 16);
}
void CpAsyncCommit() {}
void SyncWarp() { emu::t_warp->bar.Wait(); }
float ShflUpF(float v, int delta) {
  emu::Warp* w = emu::t_warp;
  const int l = emu::t_lane;
  w->f[l] = v;
  w->bar.Wait();
  const float r = l >= delta ? w->f[l - delta] : v;
  w->bar.Wait();
  return r;
}
void CpAsyncWaitN(int) {}
}  // namespace hyla::kernels::gdn_mma

using namespace hyla::kernels;

// Runs body(cta, tid, smem) for every CTA with `threads` emulated threads.
void RunGrid(int ctas, int threads, size_t smem_bytes,
             const std::function<void(int, int, uint16_t*)>& body) {
  std::vector<uint16_t> smem(smem_bytes / 2 + 8);
  for (int cta = 0; cta < ctas; ++cta) {
    // Poison shared memory: the kernels must not read what they did not write.
    for (auto& x : smem) x = 0x7fc1;  // bf16 NaN
    emu::Barrier cta_bar(threads);
    std::vector<emu::Warp> warps(threads / 32);
    std::vector<std::thread> ts;
    for (int tid = 0; tid < threads; ++tid) {
      ts.emplace_back([&, tid] {
        emu::t_lane = tid % 32;
        emu::t_warp = &warps[tid / 32];
        emu::t_cta = &cta_bar;
        body(cta, tid, smem.data());
      });
    }
    for (auto& t : ts) t.join();
  }
}

struct Case {
  int H, HV, dk, dv;
  std::vector<int> lens;
  std::vector<int64_t> starts;
  int cols;
  bool aligned;
  bool neg;
  int split = 1;
  bool fused = false;
  int stages = 2;
  bool fast = false;
  int segments = 1;  // > 1: the overlapped variants' order (fused, split 2, fast solve)
};

template <int kDk, int kDv>
void Emulate(GdnPrefillParams& p, const gdn_mma::Access& acc, int cols, int split, bool fused,
             int stages, bool fast, int segments) {
  using namespace gdn_mma;
  const int piece_ctas = p.num_pieces * p.num_v_heads;
  if (segments > 1) {  // LaunchOverlapped's launches, one segment after the other
    for (int i = 0; i < segments; ++i) {
      const int g0 = p.num_pieces * i / segments, g1 = p.num_pieces * (i + 1) / segments;
      RunGrid((g1 - g0) * p.num_v_heads, kPieceThreads, PieceSmem<kDk, kDv, true, true>::kBytes,
              [&](int cta, int tid, uint16_t* sm) {
                PieceBody<kDk, kDv, true, true>(p, acc, g0, cta, tid, sm);
              });
      auto state = [&](auto colc) {
        constexpr int kC = decltype(colc)::value;
        RunGrid(p.num_seqs * p.num_v_heads * (kDv / kC), 4 * kC,
                StateOutSmem<kDk, kC, 2, 2>::kBytes, [&](int cta, int tid, uint16_t* sm) {
                  StateOutBody<kDk, kDv, kC, 2, 2, true>(p, acc, g0, g1, cta, tid, sm);
                });
      };
      if (cols == 32) state(std::integral_constant<int, 32>());
      if (cols == 64) state(std::integral_constant<int, 64>());
    }
    return;
  }
  auto pieces = [&](auto fusedc, auto fastc) {
    constexpr bool kF = decltype(fusedc)::value, kS = decltype(fastc)::value;
    RunGrid(piece_ctas, kPieceThreads, PieceSmem<kDk, kDv, kF, kS>::kBytes,
            [&](int cta, int tid, uint16_t* sm) {
              PieceBody<kDk, kDv, kF, kS>(p, acc, 0, cta, tid, sm);
            });
  };
  using BT = std::true_type;
  using BF = std::false_type;
  if (fused && fast) pieces(BT(), BT());
  if (fused && !fast) pieces(BT(), BF());
  if (!fused && fast) pieces(BF(), BT());
  if (!fused && !fast) pieces(BF(), BF());
  auto state = [&](auto colc) {
    constexpr int kC = decltype(colc)::value;
    if (stages == 2)
      RunGrid(p.num_seqs * p.num_v_heads * (kDv / kC), 2 * kC, StateSmem<kDk, kC, 2>::kBytes,
              [&](int cta, int tid, uint16_t* sm) {
                StateBody<kDk, kDv, kC, 2>(p, acc, cta, tid, sm);
              });
    else
      RunGrid(p.num_seqs * p.num_v_heads * (kDv / kC), 2 * kC, StateSmem<kDk, kC, 3>::kBytes,
              [&](int cta, int tid, uint16_t* sm) {
                StateBody<kDk, kDv, kC, 3>(p, acc, cta, tid, sm);
              });
  };
  auto stateout = [&](auto colc, auto splitc) {
    constexpr int kC = decltype(colc)::value;
    constexpr int kS = decltype(splitc)::value;
    if (stages == 2 && fast)
      RunGrid(p.num_seqs * p.num_v_heads * (kDv / kC), 2 * kC * kS,
              StateOutSmem<kDk, kC, kS, 2>::kBytes, [&](int cta, int tid, uint16_t* sm) {
                StateOutBody<kDk, kDv, kC, kS, 2, true>(p, acc, 0, p.num_pieces, cta, tid, sm);
              });
    else if (stages == 2)
      RunGrid(p.num_seqs * p.num_v_heads * (kDv / kC), 2 * kC * kS,
              StateOutSmem<kDk, kC, kS, 2>::kBytes, [&](int cta, int tid, uint16_t* sm) {
                StateOutBody<kDk, kDv, kC, kS, 2, false>(p, acc, 0, p.num_pieces, cta, tid, sm);
              });
    else if constexpr (kC == 16)
      RunGrid(p.num_seqs * p.num_v_heads * (kDv / kC), 2 * kC * kS,
              StateOutSmem<kDk, kC, kS, 3>::kBytes, [&](int cta, int tid, uint16_t* sm) {
                StateOutBody<kDk, kDv, kC, kS, 3, false>(p, acc, 0, p.num_pieces, cta, tid, sm);
              });
  };
  using I16 = std::integral_constant<int, 16>;
  using I32 = std::integral_constant<int, 32>;
  using I64 = std::integral_constant<int, 64>;
  using S1 = std::integral_constant<int, 1>;
  using S2 = std::integral_constant<int, 2>;
  if (!fused) {
    if (cols == 16) state(I16());
    if (cols == 32) state(I32());
    if (cols == 64) state(I64());
    RunGrid(piece_ctas, kPieceThreads, OutputSmem<kDk, kDv>::kBytes,
            [&](int cta, int tid, uint16_t* sm) { OutputBody<kDk, kDv>(p, acc, cta, tid, sm); });
  } else if (split == 1) {
    if (cols == 16) stateout(I16(), S1());
    if (cols == 32) stateout(I32(), S1());
  } else if (split == 2) {
    if (cols == 16) stateout(I16(), S2());
    if (cols == 32) stateout(I32(), S2());
    if (cols == 64) stateout(I64(), S2());
  } else if constexpr (kDk == 128) {
    using S4 = std::integral_constant<int, 4>;
    if (cols == 32) stateout(I32(), S4());
  }
}

int Plan(const std::vector<int32_t>& cu, const std::vector<int64_t>& st,
         std::vector<int32_t>* off) {
  int total = 0;
  (*off)[0] = 0;
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    const int len = cu[s + 1] - cu[s];
    if (len > 0) {
      const int64_t first = 64 - st[s] % 64;
      total += 1 + (len > first ? (len - first + 63) / 64 : 0);
    }
    (*off)[s + 1] = total;
  }
  return total;
}

size_t internal_ws(int pieces, int HV, int dk, int dv) {
  return (2 * (64 * size_t(dk) + 64 * size_t(dv) + size_t(dk) * dv + 4096) + 768) * pieces * HV;
}

bool RunCase(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int S = c.lens.size();
  std::vector<int32_t> cu(S + 1, 0), off(S + 1);
  for (int s = 0; s < S; ++s) cu[s + 1] = cu[s] + c.lens[s];
  const int T = cu[S];
  const int pieces = Plan(cu, c.starts, &off);
  int64_t row = 2 * c.H * c.dk + c.HV * c.dv + 2 * c.HV;
  row = c.aligned ? (row + 7) / 8 * 8 : row + 3;
  std::vector<uint16_t> rows(std::max<int64_t>(T, 1) * row);
  for (auto& x : rows) x = emu::ToBf(nd(rng));
  std::vector<float> alog(c.HV), dtb(c.HV);
  for (int i = 0; i < c.HV; ++i) {
    alog[i] = std::uniform_real_distribution<float>(-2.f, 1.f)(rng);
    dtb[i] = -1.f + 0.5f * nd(rng);
  }
  const int64_t st_stride = int64_t{c.HV} * c.dk * c.dv + 4;
  std::vector<float> state0(S * st_stride);
  for (auto& x : state0) x = 0.5f * nd(rng);
  std::vector<float> state = state0;
  std::vector<int32_t> slots(S);
  for (int s = 0; s < S; ++s) slots[s] = S - 1 - s;
  const int64_t o_stride = int64_t{c.HV} * c.dv + (c.aligned ? 8 : 5);
  std::vector<uint16_t> o(std::max(T, 1) * o_stride, 0);
  std::vector<char> ws(internal_ws(pieces, c.HV, c.dk, c.dv) + 64);
  char* wsp = ws.data() + (16 - reinterpret_cast<uintptr_t>(ws.data()) % 16) % 16;

  GdnPrefillParams p;
  p.num_seqs = S;
  p.num_heads = c.H;
  p.num_v_heads = c.HV;
  p.dk = c.dk;
  p.dv = c.dv;
  p.dtype = KernelDType::kBf16;
  p.q = rows.data();
  p.k = rows.data() + c.H * c.dk;
  p.v = rows.data() + 2 * c.H * c.dk;
  p.a = rows.data() + 2 * c.H * c.dk + c.HV * c.dv;
  p.b = rows.data() + 2 * c.H * c.dk + c.HV * c.dv + c.HV;
  p.q_stride = p.k_stride = p.v_stride = p.a_stride = p.b_stride = row;
  p.a_log = alog.data();
  p.dt_bias = dtb.data();
  p.allow_neg_eigval = c.neg;
  p.q_scale = 1.f / std::sqrt(float(c.dk));
  p.cu_seqlens = cu.data();
  p.start_pos = c.starts.data();
  p.piece_offsets = off.data();
  p.num_pieces = pieces;
  p.slots = slots.data();
  p.state = state.data();
  p.state_slot_stride = st_stride;
  p.o = o.data();
  p.o_stride = o_stride;
  p.workspace = wsp;
  gdn_mma::Access acc;
  acc.q16 = acc.k16 = acc.v16 = c.aligned;
  acc.o4 = c.aligned;
  acc.o16 = c.aligned;
  if (c.dk == 64 && c.dv == 64)
    Emulate<64, 64>(p, acc, c.cols, c.split, c.fused, c.stages, c.fast, c.segments);
  if (c.dk == 64 && c.dv == 128)
    Emulate<64, 128>(p, acc, c.cols, c.split, c.fused, c.stages, c.fast, c.segments);
  if (c.dk == 128 && c.dv == 64)
    Emulate<128, 64>(p, acc, c.cols, c.split, c.fused, c.stages, c.fast, c.segments);
  if (c.dk == 128 && c.dv == 128)
    Emulate<128, 128>(p, acc, c.cols, c.split, c.fused, c.stages, c.fast, c.segments);

  // Reference recurrence.
  std::vector<float> ref_state = state0;
  std::vector<float> ref_o(std::max(T, 1) * c.HV * c.dv, 0.f);
  const int group = c.HV / c.H;
  for (int s = 0; s < S; ++s) {
    for (int r = cu[s]; r < cu[s + 1]; ++r) {
      const uint16_t* x = rows.data() + r * row;
      for (int hv = 0; hv < c.HV; ++hv) {
        const int h = hv / group;
        std::vector<float> q(c.dk), k(c.dk);
        float sq = 0, sk = 0;
        for (int i = 0; i < c.dk; ++i) {
          q[i] = emu::FromBf(x[h * c.dk + i]);
          k[i] = emu::FromBf(x[c.H * c.dk + h * c.dk + i]);
          sq += q[i] * q[i];
          sk += k[i] * k[i];
        }
        for (int i = 0; i < c.dk; ++i) {
          q[i] = q[i] / std::sqrt(sq + 1e-6f) * p.q_scale;
          k[i] = k[i] / std::sqrt(sk + 1e-6f);
        }
        const float a = emu::FromBf(x[2 * c.H * c.dk + c.HV * c.dv + hv]);
        const float b = emu::FromBf(x[2 * c.H * c.dk + c.HV * c.dv + c.HV + hv]);
        const float sp = a + dtb[hv];
        const float g = -std::exp(alog[hv]) * (sp > 20 ? sp : std::log1p(std::exp(sp)));
        float beta = 1.f / (1.f + std::exp(-b));
        if (c.neg) beta *= 2;
        float* St = ref_state.data() + slots[s] * st_stride + int64_t{hv} * c.dk * c.dv;
        const float dec = std::exp(g);
        for (int i = 0; i < c.dk * c.dv; ++i) St[i] *= dec;
        for (int j = 0; j < c.dv; ++j) {
          float sk2 = 0;
          for (int i = 0; i < c.dk; ++i) sk2 += St[i * c.dv + j] * k[i];
          const float u = beta * (emu::FromBf(x[2 * c.H * c.dk + hv * c.dv + j]) - sk2);
          for (int i = 0; i < c.dk; ++i) St[i * c.dv + j] += k[i] * u;
        }
        for (int j = 0; j < c.dv; ++j) {
          float acc2 = 0;
          for (int i = 0; i < c.dk; ++i) acc2 += St[i * c.dv + j] * q[i];
          ref_o[(int64_t)r * c.HV * c.dv + hv * c.dv + j] = acc2;
        }
      }
    }
  }
  double mo = 0, mr = 0, so = 0, sr = 0;
  bool nan = false;
  for (int r = 0; r < T; ++r)
    for (int j = 0; j < c.HV * c.dv; ++j) {
      const float got = emu::FromBf(o[r * o_stride + j]);
      const float want = ref_o[(int64_t)r * c.HV * c.dv + j];
      if (!std::isfinite(got)) nan = true;
      mo = std::max(mo, (double)std::fabs(got - want));
      mr = std::max(mr, (double)std::fabs(want));
    }
  for (size_t i = 0; i < state.size(); ++i) {
    if (!std::isfinite(state[i])) nan = true;
    so = std::max(so, (double)std::fabs(state[i] - ref_state[i]));
    sr = std::max(sr, (double)std::fabs(ref_state[i]));
  }
  const bool ok = !nan && mo / mr < 1e-2 && so / sr < 1e-2;
  std::printf(
      "%s %s st%d %s seg%d split%d H%d HV%d dk%d dv%d cols%d %s T%d pieces%d: o %.3e (max %.3f)  "
      "state "
      "%.3e (max %.3f)%s\n",
      ok ? "OK  " : "FAIL", c.fast ? "solve2" : "solve1", c.stages, c.fused ? "fused" : "3-launch",
      c.segments, c.split, c.H, c.HV, c.dk, c.dv, c.cols, c.aligned ? "aligned" : "odd", T, pieces,
      mo / mr, mr, so / sr, sr, nan ? " NaN" : "");
  return ok;
}

int main(int argc, char** argv) {
  const int which = argc > 1 ? atoi(argv[1]) : -1;
  std::vector<Case> cases = {
      {1, 1, 64, 64, {64}, {0}, 32, true, false},
      {1, 2, 64, 64, {70, 5, 0}, {60, 0, 3}, 32, true, false},
      {2, 4, 64, 64, {1, 63, 65, 200, 0, 130}, {0, 5, 64, 3, 7, 127}, 16, true, false},
      {1, 2, 128, 128, {150, 3}, {10, 61}, 32, true, true},
      {1, 2, 128, 128, {150, 3}, {10, 61}, 64, false, false},
      {1, 1, 64, 128, {130}, {30}, 64, false, false},
      {1, 1, 128, 64, {100, 28}, {0, 1}, 16, true, false},
      {1, 1, 64, 64, {1200}, {0}, 64, true, false},
      {1, 1, 64, 64, {64}, {0}, 32, true, false, 1, true},
      {1, 2, 64, 64, {70, 5, 0}, {60, 0, 3}, 32, true, false, 2, true},
      {1, 2, 128, 128, {150, 3}, {10, 61}, 32, true, true, 2, true},
      {1, 2, 128, 128, {150, 3}, {10, 61}, 16, false, false, 1, true},
      {1, 1, 64, 128, {130}, {30}, 64, false, false, 2, true},
      {2, 2, 128, 64, {100, 28}, {0, 1}, 16, true, false, 2, true},
      {1, 1, 128, 128, {300}, {7}, 64, true, false, 2, true},
      {1, 2, 64, 64, {300, 70}, {7, 0}, 32, true, false, 1, false, 3},
      {1, 2, 128, 128, {300, 3}, {7, 62}, 16, true, false, 2, true, 3},
      {1, 1, 64, 128, {64, 1}, {0, 0}, 16, false, false, 2, true, 3},
      // The parallel T solve (kFastSolve) and Split4.
      {1, 2, 64, 64, {70, 5, 0}, {60, 0, 3}, 32, true, false, 1, false, 2, true},
      {1, 2, 128, 128, {150, 3}, {10, 61}, 32, true, true, 2, true, 2, true},
      {1, 1, 128, 128, {65}, {0}, 32, false, false, 2, true, 2, true},
      {1, 2, 128, 128, {200, 70}, {5, 64}, 32, true, false, 4, true, 2, true},
      {1, 2, 128, 128, {200, 3}, {5, 62}, 32, false, false, 4, true, 2, true},
      {1, 1, 128, 64, {130}, {30}, 32, true, false, 4, true, 2, true},
      // The overlapped variants' segments (segment borders inside and between sequences).
      {1, 2, 128, 128, {200, 70}, {5, 64}, 64, true, false, 2, true, 2, true, 3},
      {1, 2, 128, 128, {200, 70}, {5, 64}, 32, true, false, 2, true, 2, true, 6},
      {1, 1, 64, 64, {400, 1, 70}, {0, 0, 63}, 64, false, false, 2, true, 2, true, 4},
      {1, 2, 128, 128, {1000}, {0}, 64, true, true, 2, true, 2, true, 5},
  };
  bool all = true;
  for (size_t i = 0; i < cases.size(); ++i) {
    if (which >= 0 && int(i) != which) continue;
    all &= RunCase(cases[i], 100 + i);
  }
  return all ? 0 : 1;
}
