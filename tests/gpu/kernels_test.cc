// The CUDA kernels of kernels/ops.h against their CPU references (runtime/cpu/ops.h), on odd
// shapes, strides and alignments, fp32 and bf16. Label `gpu`: needs a CUDA device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "runtime/base/float16.h"
#include "runtime/cpu/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace hyla {
namespace {

// Every test skips (reported as skipped) where no CUDA device is present.
class RmsNormKernel : public gpu_test::GpuTest {};
class SiluMulKernel : public gpu_test::GpuTest {};

// Asserts that a launcher returned 0, naming the error otherwise.
#define ASSERT_CUDA_OK(expr)                                                            \
  do {                                                                                  \
    const int hyla_launch_result = (expr);                                              \
    ASSERT_EQ(hyla_launch_result, 0) << kernels::KernelErrorString(hyla_launch_result); \
  } while (0)

// Device memory for the test's duration (move-only).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&ptr_, bytes_ == 0 ? 1 : bytes_) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(other.bytes_) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  bool ok() const { return ptr_ != nullptr; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
void Upload(const std::vector<T>& host, T* device) {
  ASSERT_EQ(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
            cudaSuccess);
}

template <typename T>
std::vector<T> Download(const T* device, size_t count) {
  std::vector<T> host(count);
  EXPECT_EQ(cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return host;
}

std::vector<float> RandomFloats(size_t count, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(count);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<uint16_t> ToBf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = FloatToBf16(v[i]);
  return out;
}

std::vector<float> FromBf16(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Bf16ToFloat(v[i]);
  return out;
}

// fp32 results: the GPU reduces in another order than the CPU (and its expf may differ from
// std::exp by an ulp or two), so allow a relative 1e-5.
void ExpectCloseF32(const std::vector<float>& got, const std::vector<float>& want,
                    const char* what) {
  ASSERT_EQ(got.size(), want.size());
  float max_diff = 0.0f;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float diff = std::fabs(got[i] - want[i]);
    max_diff = std::max(max_diff, diff);
    if (!(diff <= 1e-5f * std::fabs(want[i]) + 1e-6f)) ++bad;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size()
                     << " values off; max |diff| = " << max_diff;
}

// bf16 results: the fp32 value before rounding may differ by a few fp32 ulps from the CPU's, so
// the rounded result is within one bf16 ulp (2^-7 relative) of the CPU value.
void ExpectCloseBf16(const std::vector<uint16_t>& got, const std::vector<float>& want,
                     const char* what) {
  ASSERT_EQ(got.size(), want.size());
  size_t bad = 0;
  size_t exact = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = Bf16ToFloat(got[i]);
    if (got[i] == FloatToBf16(want[i])) ++exact;
    if (!(std::fabs(g - want[i]) <= std::ldexp(std::fabs(want[i]), -7) + 1e-30f)) ++bad;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " values off";
  // Nearly all must round exactly like the CPU value.
  EXPECT_GE(exact, got.size() * 99 / 100) << what << ": only " << exact << " exact";
}

struct NormCase {
  int64_t rows;
  int64_t n;
  int64_t x_stride;
  int64_t out_stride;
  bool weight;
  bool gemma;
};

std::vector<NormCase> NormCases() {
  std::vector<NormCase> cases;
  for (int64_t n : {1, 3, 8, 64, 100, 127, 128, 256, 1000, 1024, 1025, 2048, 4099, 8192}) {
    for (int64_t rows : {1, 5, 33}) {
      cases.push_back({rows, n, n, n, true, false});
      cases.push_back({rows, n, n, n, true, true});
    }
    cases.push_back({7, n, n, n, false, false});
    cases.push_back({9, n, n + 3, n + 5, true, false});  // odd strides: scalar path
    cases.push_back({9, n, n + 8, n + 16, true, true});  // padded strides, still vectorised
  }
  cases.push_back({70000, 64, 64, 64, true, false});  // many rows: many blocks
  // The decode shapes (hidden 2048: the final norm) and rows wider than the register block
  // shape holds (40000, 40003: the two-pass fallback), 3001 scalar (8 values per thread).
  for (int64_t rows : {1, 3, 64, 257}) cases.push_back({rows, 2048, 2048, 2048, true, false});
  cases.push_back({3, 40000, 40000, 40000, true, false});
  cases.push_back({3, 40003, 40003, 40003, true, true});
  cases.push_back({4, 3001, 3002, 3005, true, false});
  return cases;
}

std::vector<float> CpuRmsNorm(const std::vector<float>& x, const std::vector<float>& w,
                              const NormCase& c) {
  std::vector<float> out(static_cast<size_t>(c.rows * c.out_stride), 0.0f);
  for (int64_t r = 0; r < c.rows; ++r) {
    cpu::RmsNorm(x.data() + r * c.x_stride, c.weight ? w.data() : nullptr, 1e-6f, c.n,
                 out.data() + r * c.out_stride, c.gemma);
  }
  return out;
}

// Only the n leading elements of each output row are compared (the padding is not written).
template <typename T>
std::vector<T> Rows(const std::vector<T>& v, int64_t rows, int64_t n, int64_t stride) {
  std::vector<T> out;
  out.reserve(static_cast<size_t>(rows * n));
  for (int64_t r = 0; r < rows; ++r) {
    out.insert(out.end(), v.begin() + r * stride, v.begin() + r * stride + n);
  }
  return out;
}

TEST_F(RmsNormKernel, F32MatchesCpu) {
  for (const NormCase& c : NormCases()) {
    SCOPED_TRACE(testing::Message() << "rows=" << c.rows << " n=" << c.n
                                    << " x_stride=" << c.x_stride << " gemma=" << c.gemma);
    const std::vector<float> x = RandomFloats(c.rows * c.x_stride, 1 + c.n, 2.0f);
    const std::vector<float> w = RandomFloats(c.n, 7 + c.n, 0.5f);
    DeviceBuffer dx(x.size() * 4), dw(w.size() * 4), dout(c.rows * c.out_stride * 4);
    ASSERT_TRUE(dx.ok() && dw.ok() && dout.ok());
    Upload(x, dx.as<float>());
    Upload(w, dw.as<float>());
    ASSERT_CUDA_OK(kernels::RmsNormF32(dx.as<float>(), c.x_stride,
                                       c.weight ? dw.as<float>() : nullptr, 1e-6f, c.rows, c.n,
                                       c.gemma, dout.as<float>(), c.out_stride, nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> got = Download(dout.as<float>(), c.rows * c.out_stride);
    ExpectCloseF32(Rows(got, c.rows, c.n, c.out_stride),
                   Rows(CpuRmsNorm(x, w, c), c.rows, c.n, c.out_stride), "rmsnorm f32");
  }
}

TEST_F(RmsNormKernel, Bf16MatchesCpu) {
  for (const NormCase& c : NormCases()) {
    SCOPED_TRACE(testing::Message() << "rows=" << c.rows << " n=" << c.n
                                    << " x_stride=" << c.x_stride << " gemma=" << c.gemma);
    const std::vector<uint16_t> x = ToBf16(RandomFloats(c.rows * c.x_stride, 3 + c.n, 2.0f));
    const std::vector<float> w = RandomFloats(c.n, 11 + c.n, 0.5f);
    DeviceBuffer dx(x.size() * 2), dw(w.size() * 4), dout(c.rows * c.out_stride * 2);
    ASSERT_TRUE(dx.ok() && dw.ok() && dout.ok());
    Upload(x, dx.as<uint16_t>());
    Upload(w, dw.as<float>());
    ASSERT_CUDA_OK(kernels::RmsNormBf16(dx.as<uint16_t>(), c.x_stride,
                                        c.weight ? dw.as<float>() : nullptr, 1e-6f, c.rows, c.n,
                                        c.gemma, dout.as<uint16_t>(), c.out_stride, nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<uint16_t> got = Download(dout.as<uint16_t>(), c.rows * c.out_stride);
    ExpectCloseBf16(Rows(got, c.rows, c.n, c.out_stride),
                    Rows(CpuRmsNorm(FromBf16(x), w, c), c.rows, c.n, c.out_stride), "rmsnorm bf16");
  }
}

TEST_F(RmsNormKernel, InPlaceMisalignedAndOnAStream) {
  const int64_t rows = 6, n = 96;
  // x starts one float past the allocation: not 16-byte aligned, so the scalar path runs.
  const std::vector<float> x = RandomFloats(rows * n + 1, 5, 1.0f);
  const std::vector<float> w = RandomFloats(n, 6, 0.5f);
  DeviceBuffer dx(x.size() * 4), dw(w.size() * 4);
  ASSERT_TRUE(dx.ok() && dw.ok());
  Upload(x, dx.as<float>());
  Upload(w, dw.as<float>());
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  float* xp = dx.as<float>() + 1;
  ASSERT_CUDA_OK(
      kernels::RmsNormF32(xp, n, dw.as<float>(), 1e-5f, rows, n, /*gemma=*/false, xp, n, stream));
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);
  const std::vector<float> got = Download(xp, rows * n);
  std::vector<float> want(rows * n);
  for (int64_t r = 0; r < rows; ++r) {
    cpu::RmsNorm(x.data() + 1 + r * n, w.data(), 1e-5f, n, want.data() + r * n);
  }
  ExpectCloseF32(got, want, "rmsnorm in place");
}

TEST_F(RmsNormKernel, RejectsBadArgumentsAndAcceptsNoRows) {
  DeviceBuffer d(1024);
  ASSERT_TRUE(d.ok());
  float* p = d.as<float>();
  constexpr int kInvalidValue = static_cast<int>(cudaErrorInvalidValue);
  EXPECT_EQ(kernels::RmsNormF32(p, 8, nullptr, 1e-6f, 0, 8, false, p, 8, nullptr), 0);
  EXPECT_EQ(kernels::RmsNormF32(p, 8, nullptr, 1e-6f, 2, 0, false, p, 8, nullptr), kInvalidValue);
  EXPECT_EQ(kernels::RmsNormF32(p, 4, nullptr, 1e-6f, 2, 8, false, p, 8, nullptr), kInvalidValue);
  EXPECT_EQ(kernels::RmsNormF32(p, 8, nullptr, 1e-6f, 2, 8, false, p, 7, nullptr), kInvalidValue);
  EXPECT_EQ(kernels::RmsNormF32(p, 8, nullptr, 1e-6f, -1, 8, false, p, 8, nullptr), kInvalidValue);
  EXPECT_EQ(kernels::RmsNormF32(nullptr, 8, nullptr, 1e-6f, 1, 8, false, p, 8, nullptr),
            kInvalidValue);
}

struct SiluCase {
  int64_t rows;
  int64_t n;
  bool fused;  // gate|up in one [rows, 2n] buffer
};

TEST_F(SiluMulKernel, MatchesCpuF32AndBf16) {
  const std::vector<SiluCase> cases = {{1, 1, false},   {3, 7, false},     {3, 7, true},
                                       {5, 64, true},   {17, 1000, false}, {17, 1000, true},
                                       {2, 5632, true}, {4097, 24, false}, {1, 8193, true}};
  for (const SiluCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "rows=" << c.rows << " n=" << c.n << " fused=" << c.fused);
    const int64_t stride = c.fused ? 2 * c.n : c.n;
    // gate spans [-12, 12] so both tails of silu are exercised.
    std::vector<float> gate = RandomFloats(c.rows * stride, 21 + c.n, 4.0f);
    std::vector<float> up = RandomFloats(c.rows * stride, 22 + c.n, 1.0f);
    if (c.fused) {  // one buffer: gate in the first n columns, up in the last n
      for (int64_t r = 0; r < c.rows; ++r) {
        std::memcpy(gate.data() + r * stride + c.n, up.data() + r * stride, c.n * 4);
      }
    }
    std::vector<float> want(c.rows * c.n);
    for (int64_t r = 0; r < c.rows; ++r) {
      for (int64_t i = 0; i < c.n; ++i) {
        const float g = gate[r * stride + i];
        const float u = c.fused ? gate[r * stride + c.n + i] : up[r * stride + i];
        want[r * c.n + i] = cpu::Silu(g) * u;
      }
    }
    {  // fp32
      DeviceBuffer dg(gate.size() * 4), du(up.size() * 4), dout(want.size() * 4);
      ASSERT_TRUE(dg.ok() && du.ok() && dout.ok());
      Upload(gate, dg.as<float>());
      Upload(up, du.as<float>());
      const float* g = dg.as<float>();
      const float* u = c.fused ? dg.as<float>() + c.n : du.as<float>();
      ASSERT_CUDA_OK(
          kernels::SiluMulF32(g, stride, u, stride, c.rows, c.n, dout.as<float>(), c.n, nullptr));
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      ExpectCloseF32(Download(dout.as<float>(), want.size()), want, "silu_mul f32");
    }
    {  // bf16: the CPU reference runs on the bf16-rounded inputs
      const std::vector<uint16_t> gate16 = ToBf16(gate), up16 = ToBf16(up);
      const std::vector<float> gate_r = FromBf16(gate16), up_r = FromBf16(up16);
      std::vector<float> want16(c.rows * c.n);
      for (int64_t r = 0; r < c.rows; ++r) {
        for (int64_t i = 0; i < c.n; ++i) {
          const float g = gate_r[r * stride + i];
          const float u = c.fused ? gate_r[r * stride + c.n + i] : up_r[r * stride + i];
          want16[r * c.n + i] = cpu::Silu(g) * u;
        }
      }
      DeviceBuffer dg(gate16.size() * 2), du(up16.size() * 2), dout(want16.size() * 2);
      ASSERT_TRUE(dg.ok() && du.ok() && dout.ok());
      Upload(gate16, dg.as<uint16_t>());
      Upload(up16, du.as<uint16_t>());
      const uint16_t* g = dg.as<uint16_t>();
      const uint16_t* u = c.fused ? dg.as<uint16_t>() + c.n : du.as<uint16_t>();
      ASSERT_CUDA_OK(kernels::SiluMulBf16(g, stride, u, stride, c.rows, c.n, dout.as<uint16_t>(),
                                          c.n, nullptr));
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      ExpectCloseBf16(Download(dout.as<uint16_t>(), want16.size()), want16, "silu_mul bf16");
    }
  }
}

TEST_F(SiluMulKernel, RejectsBadArguments) {
  DeviceBuffer d(1024);
  ASSERT_TRUE(d.ok());
  float* p = d.as<float>();
  constexpr int kInvalidValue = static_cast<int>(cudaErrorInvalidValue);
  EXPECT_EQ(kernels::SiluMulF32(p, 4, p, 4, 0, 4, p, 4, nullptr), 0);
  EXPECT_EQ(kernels::SiluMulF32(p, 4, p, 4, 1, 0, p, 4, nullptr), kInvalidValue);
  EXPECT_EQ(kernels::SiluMulF32(p, 3, p, 4, 1, 4, p, 4, nullptr), kInvalidValue);
  EXPECT_EQ(kernels::SiluMulF32(p, 4, nullptr, 4, 1, 4, p, 4, nullptr), kInvalidValue);
}

class ResidualKernel : public gpu_test::GpuTest {};

// ResidualRmsNorm: h += add, then RMSNorm(h) as fp32 and bf16, against the CPU's add and
// cpu::RmsNorm (plain and Gemma weights, with and without the add, vector and scalar paths).
struct ResidualCase {
  int64_t rows, n;
  bool add, gemma;
};

// Runs `cases` through every ResidualRmsNorm launch shape against the CPU.
void RunResidualCases(const std::vector<ResidualCase>& cases) {
  using Case = ResidualCase;
  using V = kernels::ResidualRmsNormVariant;
  for (const V variant :
       {V::kDefault, V::kLoop, V::kRegs, V::kCluster2, V::kCluster4, V::kRegs256}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(testing::Message()
                   << "variant=" << static_cast<int>(variant) << " rows=" << c.rows << " n=" << c.n
                   << " add=" << c.add << " gemma=" << c.gemma);
      const std::vector<float> h = RandomFloats(c.rows * c.n, 31 + c.n, 2.0f);
      const std::vector<float> a = RandomFloats(c.rows * c.n, 32 + c.n, 1.0f);
      const std::vector<float> w = RandomFloats(c.n, 33 + c.n, 0.5f);
      std::vector<float> h_want = h;
      if (c.add) {
        for (size_t i = 0; i < h_want.size(); ++i) h_want[i] += a[i];
      }
      std::vector<float> w_eff = w;
      if (c.gemma) {
        for (float& x : w_eff) x += 1.0f;
      }
      std::vector<float> want(c.rows * c.n);
      for (int64_t r = 0; r < c.rows; ++r) {
        cpu::RmsNorm(h_want.data() + r * c.n, w_eff.data(), 1e-6f, c.n, want.data() + r * c.n);
      }
      DeviceBuffer dh(h.size() * 4), da(a.size() * 4), dw(w.size() * 4), df(want.size() * 4),
          db(want.size() * 2);
      ASSERT_TRUE(dh.ok() && da.ok() && dw.ok() && df.ok() && db.ok());
      Upload(h, dh.as<float>());
      Upload(a, da.as<float>());
      Upload(w, dw.as<float>());
      kernels::ResidualRmsNormParams p;
      p.rows = c.rows;
      p.n = c.n;
      p.h = dh.as<float>();
      p.add = c.add ? da.as<float>() : nullptr;
      p.weight = dw.as<float>();
      p.eps = 1e-6f;
      p.gemma = c.gemma;
      p.out_f32 = df.as<float>();
      p.out_bf16 = db.as<uint16_t>();
      p.variant = variant;
      ASSERT_CUDA_OK(kernels::ResidualRmsNorm(p, nullptr));
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      ExpectCloseF32(Download(dh.as<float>(), h.size()), h_want, "residual h");
      ExpectCloseF32(Download(df.as<float>(), want.size()), want, "residual norm f32");
      ExpectCloseBf16(Download(db.as<uint16_t>(), want.size()), want, "residual norm bf16");
    }
  }
}

TEST_F(ResidualKernel, ResidualRmsNormMatchesCpu) {
  using Case = ResidualCase;
  // The decode shapes (rows 1, 3, 64, 257 of 2048), widths off the 16-byte path (1537, 2050),
  // a row wider than the register shapes hold (40000: kLoop fallback), every launch shape.
  RunResidualCases({Case{1, 2048, true, false}, Case{64, 2048, true, false},
                    Case{5, 96, false, false}, Case{7, 1537, true, true}, Case{3, 4096, true, true},
                    Case{3, 2048, true, false}, Case{257, 2048, true, false},
                    Case{64, 2050, true, false}, Case{2, 40000, true, false},
                    Case{2, 16384, false, true}, Case{1, 4, true, false}});
  float* p = nullptr;
  kernels::ResidualRmsNormParams bad;
  bad.rows = 1;
  bad.n = 8;
  bad.h = p;
  EXPECT_EQ(kernels::ResidualRmsNorm(bad, nullptr), static_cast<int>(cudaErrorInvalidValue))
      << "no output";
}

// Small shapes for compute-sanitizer (every launch shape, vector and scalar paths, a partial
// last pack block): --gtest_filter='*Sanitizer*'.
TEST_F(ResidualKernel, ResidualRmsNormSanitizerSmall) {
  using Case = ResidualCase;
  RunResidualCases({Case{3, 2048, true, false}, Case{2, 36, true, true}, Case{3, 37, true, false},
                    Case{1, 8, false, false}});
}

// SiluMulToBf16 over a fused gate|up projection against cpu::Silu, rounded like FloatToBf16.
TEST_F(ResidualKernel, SiluMulToBf16MatchesCpu) {
  using V = kernels::SiluMulVariant;
  for (const V variant : {V::kDefault, V::kGridStride, V::kRowGrid, V::kRowGrid2}) {
    for (const std::pair<int64_t, int64_t>& rn : {std::pair<int64_t, int64_t>{64, 2816},
                                                  {3, 7},
                                                  {1, 5632},
                                                  {257, 2816},
                                                  {3, 2820},
                                                  {64, 1030}}) {
      const int64_t rows = rn.first, n = rn.second;
      SCOPED_TRACE(testing::Message()
                   << "variant=" << static_cast<int>(variant) << " rows=" << rows << " n=" << n);
      const std::vector<float> gu = RandomFloats(rows * 2 * n, 41 + n, 4.0f);
      std::vector<float> want(rows * n);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < n; ++i) {
          want[r * n + i] = cpu::Silu(gu[r * 2 * n + i]) * gu[r * 2 * n + n + i];
        }
      }
      DeviceBuffer dg(gu.size() * 4), dout(want.size() * 2);
      ASSERT_TRUE(dg.ok() && dout.ok());
      Upload(gu, dg.as<float>());
      ASSERT_CUDA_OK(
          kernels::SiluMulToBf16(dg.as<float>(), rows, n, dout.as<uint16_t>(), nullptr, variant));
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      ExpectCloseBf16(Download(dout.as<uint16_t>(), want.size()), want, "silu_mul to bf16");
    }
  }
}

// SkinnyGemmBf16 (kernels/skinny_gemm.h) against a CPU reference in double from the same bf16
// values: max |y − ref| <= 1e-3 · max |ref| (fp32 accumulation over k <= 8192), every output
// written, row padding untouched, bitwise-equal repeats (eager and CUDA-graph replay).
class SkinnyGemmKernel : public gpu_test::GpuTest {};

struct SkinnyCase {
  int m, n, k;
  int64_t x_stride, w_stride, y_stride;  // elements
  bool bias;
  int variant = 0;
  int splits = 0;
};

// Device inputs of one case (x, W, bias from fixed seeds) and the poisoned output.
struct SkinnyData {
  std::vector<uint16_t> x, w;  // bf16, strided as the case says
  std::vector<float> bias;
  DeviceBuffer dx, dw, dbias, dy;
  explicit SkinnyData(const SkinnyCase& c)
      : x(ToBf16(RandomFloats(static_cast<size_t>(c.m) * c.x_stride, 1000 + c.k, 1.0f))),
        w(ToBf16(RandomFloats(static_cast<size_t>(c.n) * c.w_stride, 2000 + c.n, 0.05f))),
        bias(RandomFloats(static_cast<size_t>(c.n), 3000 + c.n, 0.5f)),
        dx(x.size() * 2),
        dw(w.size() * 2),
        dbias(bias.size() * 4),
        dy(static_cast<size_t>(c.m) * c.y_stride * 4) {}
  bool ok() const { return dx.ok() && dw.ok() && dbias.ok() && dy.ok(); }
  void UploadAll() {
    Upload(x, dx.as<uint16_t>());
    Upload(w, dw.as<uint16_t>());
    Upload(bias, dbias.as<float>());
  }
  kernels::SkinnyGemmParams Params(const SkinnyCase& c) const {
    kernels::SkinnyGemmParams p;
    p.m = c.m;
    p.n = c.n;
    p.k = c.k;
    p.x = dx.as<uint16_t>();
    p.x_stride = c.x_stride;
    p.w = dw.as<uint16_t>();
    p.w_stride = c.w_stride;
    p.bias = c.bias ? dbias.as<float>() : nullptr;
    p.y = dy.as<float>();
    p.y_stride = c.y_stride;
    p.variant = c.variant;
    p.num_splits = c.splits;
    return p;
  }
};

// Output columns compared: all for small n, else the first and last 256 and every 7th (the
// double reference over 64 x 32000 x 2048 would take too long).
bool SkinnyChecked(int n, int j) { return n <= 4096 || j < 256 || j >= n - 256 || j % 7 == 0; }

// Runs case c (already launched into d.dy and synchronised by the caller) against the reference.
void ExpectSkinnyMatches(const SkinnyCase& c, const SkinnyData& d, const std::vector<float>& y) {
  double max_ref = 0.0, max_err = 0.0;
  size_t unwritten = 0, padding_written = 0;
  for (int i = 0; i < c.m; ++i) {
    for (int j = 0; j < c.n; ++j) {
      const float got = y[static_cast<size_t>(i) * c.y_stride + j];
      if (std::isnan(got)) ++unwritten;
      if (!SkinnyChecked(c.n, j)) continue;
      double ref = c.bias ? static_cast<double>(d.bias[j]) : 0.0;
      const uint16_t* xr = d.x.data() + static_cast<size_t>(i) * c.x_stride;
      const uint16_t* wr = d.w.data() + static_cast<size_t>(j) * c.w_stride;
      for (int kk = 0; kk < c.k; ++kk) {
        ref += static_cast<double>(Bf16ToFloat(xr[kk])) * static_cast<double>(Bf16ToFloat(wr[kk]));
      }
      max_ref = std::max(max_ref, std::fabs(ref));
      max_err = std::max(max_err, std::fabs(static_cast<double>(got) - ref));
    }
    for (int64_t j = c.n; j < c.y_stride; ++j) {
      uint32_t bits;
      std::memcpy(&bits, &y[static_cast<size_t>(i) * c.y_stride + j], 4);
      if (bits != 0xFFFFFFFFu) ++padding_written;
    }
  }
  const double rel = max_ref > 0 ? max_err / max_ref : max_err;
  std::printf(
      "[gpu-error] skinny_gemm m=%d n=%d k=%d bias=%d variant=%d splits=%d: max|diff| %.3g "
      "max|ref| %.3g rel %.3g\n",
      c.m, c.n, c.k, c.bias ? 1 : 0, c.variant, c.splits, max_err, max_ref, rel);
  EXPECT_EQ(unwritten, 0u) << "outputs not written (or NaN)";
  EXPECT_EQ(padding_written, 0u) << "row padding of y written";
  EXPECT_LE(rel, 1e-3);
}

void RunSkinnyCase(const SkinnyCase& c) {
  SCOPED_TRACE(testing::Message() << "m=" << c.m << " n=" << c.n << " k=" << c.k
                                  << " x_stride=" << c.x_stride << " w_stride=" << c.w_stride
                                  << " y_stride=" << c.y_stride << " bias=" << c.bias
                                  << " variant=" << c.variant << " splits=" << c.splits);
  SkinnyData d(c);
  ASSERT_TRUE(d.ok());
  d.UploadAll();
  const size_t y_count = static_cast<size_t>(c.m) * c.y_stride;
  ASSERT_EQ(cudaMemset(d.dy.as<float>(), 0xFF, y_count * 4), cudaSuccess);  // NaN poison
  ASSERT_CUDA_OK(kernels::SkinnyGemmBf16(d.Params(c), nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> y = Download(d.dy.as<float>(), y_count);
  ExpectSkinnyMatches(c, d, y);
  // A second launch gives bitwise the same output.
  ASSERT_CUDA_OK(kernels::SkinnyGemmBf16(d.Params(c), nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> again = Download(d.dy.as<float>(), y_count);
  EXPECT_EQ(std::memcmp(y.data(), again.data(), y_count * 4), 0) << "not deterministic";
}

// The decode shapes of qwen3next-1b (and a tiny odd one) at batch sizes 1..64, dense and padded
// strides, with and without bias; the chosen variant and splits.
TEST_F(SkinnyGemmKernel, MatchesCpuOnDecodeShapes) {
  const std::pair<int, int> shapes[] = {
      {12352, 2048}, {2048, 2816}, {2048, 4096}, {100, 24}, {32000, 2048}};
  int index = 0;
  for (const auto& [n, k] : shapes) {
    for (const int m : {1, 7, 16, 33, 64}) {
      const bool padded = index % 3 == 1;
      SkinnyCase c{
          m, n, k, padded ? k + 8 : k, padded ? k + 16 : k, padded ? n + 3 : n, index % 2 == 0};
      RunSkinnyCase(c);
      ++index;
    }
  }
}

// Every variant with every split count (and the automatic one) on shapes with partial row
// tiles, a K tail (k % 64 != 0) and splits of unequal length.
TEST_F(SkinnyGemmKernel, EveryVariantAndSplit) {
  for (int variant = 1; kernels::SkinnyGemmVariantName(variant) != nullptr; ++variant) {
    for (const int splits : {0, 1, 2, 4, 8}) {
      for (const int m : {5, 24, 64}) {
        SkinnyCase c{m, 300, 1000, 1000, 1000, 301, (variant + splits) % 2 == 0, variant, splits};
        RunSkinnyCase(c);
      }
    }
    // k shorter than one step with 8 requested splits (clamped to 1).
    RunSkinnyCase({9, 129, 40, 48, 40, 129, true, variant, 8});
  }
  EXPECT_EQ(kernels::SkinnyGemmVariantName(0), nullptr);
}

// A replay of a CUDA graph that captured the launch (cluster launch included) writes bitwise
// the eager result.
TEST_F(SkinnyGemmKernel, GraphReplayMatchesEagerBitwise) {
  for (const int splits : {1, 4}) {
    const SkinnyCase c{64, 2048, 4096, 4096, 4096, 2048, true, 0, splits};
    SkinnyData d(c);
    ASSERT_TRUE(d.ok());
    d.UploadAll();
    const size_t y_count = static_cast<size_t>(c.m) * c.y_stride;
    ASSERT_CUDA_OK(kernels::SkinnyGemmBf16(d.Params(c), nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> eager = Download(d.dy.as<float>(), y_count);
    ASSERT_EQ(cudaMemset(d.dy.as<float>(), 0xFF, y_count * 4), cudaSuccess);
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    const int launched = kernels::SkinnyGemmBf16(d.Params(c), stream);
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    ASSERT_EQ(launched, 0) << kernels::KernelErrorString(launched);
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    for (int i = 0; i < 3; ++i) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const std::vector<float> replay = Download(d.dy.as<float>(), y_count);
    EXPECT_EQ(std::memcmp(eager.data(), replay.data(), y_count * 4), 0) << "splits " << splits;
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}

// Small enough for compute-sanitizer (memcheck, racecheck, synccheck): partial tiles, K tail,
// bias, split 2 (cluster reduction) and no split.
TEST_F(SkinnyGemmKernel, SanitizerSmall) {
  RunSkinnyCase({3, 37, 72, 80, 72, 40, true, 1, 2});
  RunSkinnyCase({17, 70, 136, 136, 136, 70, false, 5, 1});
}

TEST_F(SkinnyGemmKernel, RejectsBadArguments) {
  const SkinnyCase c{4, 64, 64, 64, 64, 64, true};
  SkinnyData d(c);
  ASSERT_TRUE(d.ok());
  const kernels::SkinnyGemmParams good = d.Params(c);
  const int invalid = static_cast<int>(cudaErrorInvalidValue);
  auto expect_rejected = [&](kernels::SkinnyGemmParams p, const char* what) {
    EXPECT_EQ(kernels::SkinnyGemmBf16(p, nullptr), invalid) << what;
  };
  kernels::SkinnyGemmParams p = good;
  p.m = 0;
  expect_rejected(p, "m 0");
  p = good;
  p.m = 65;
  expect_rejected(p, "m 65");
  p = good;
  p.n = 0;
  expect_rejected(p, "n 0");
  p = good;
  p.k = 60;
  p.x_stride = p.w_stride = 64;
  expect_rejected(p, "k not a multiple of 8");
  p = good;
  p.k = 0;
  expect_rejected(p, "k 0");
  p = good;
  p.x_stride = 60;
  expect_rejected(p, "x_stride < k");
  p = good;
  p.x_stride = 68;
  expect_rejected(p, "x_stride not a multiple of 8");
  p = good;
  p.w_stride = 72 + 4;
  expect_rejected(p, "w_stride not a multiple of 8");
  p = good;
  p.y_stride = 63;
  expect_rejected(p, "y_stride < n");
  p = good;
  p.x = d.dx.as<uint16_t>() + 1;
  expect_rejected(p, "x misaligned");
  p = good;
  p.w = d.dw.as<uint16_t>() + 4;
  expect_rejected(p, "w misaligned");
  p = good;
  p.x = nullptr;
  expect_rejected(p, "no x");
  p = good;
  p.w = nullptr;
  expect_rejected(p, "no w");
  p = good;
  p.y = nullptr;
  expect_rejected(p, "no y");
  p = good;
  p.y = reinterpret_cast<float*>(d.dw.as<uint16_t>());
  expect_rejected(p, "y overlaps w");
  p = good;
  p.num_splits = 3;
  expect_rejected(p, "3 splits");
  p = good;
  p.variant = 99;
  expect_rejected(p, "unknown variant");
  ASSERT_CUDA_OK(kernels::SkinnyGemmBf16(good, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// ConvertF32ToBf16Rows / ConvertBf16ToF32Rows (the GDN layer's bf16 prefill copies) over strided
// rows against runtime/base/float16.h's conversions, bit for bit; the padding between rows is
// left untouched; bad strides are rejected.
TEST_F(ResidualKernel, ConvertRowsMatchCpuBitForBitAndKeepPadding) {
  std::mt19937 rng(61);
  const int64_t rows = 37, n = 45, xs = 50, os = 48;
  std::vector<float> x = gpu_test::Normal(static_cast<size_t>(rows * xs), &rng, 0.0f, 3.0f);
  x[7] = 1.0f + 1.0f / 256.0f;  // a tie: rounds to even
  gpu_test::DeviceBuffer dx = gpu_test::ToDevice(x);
  const std::vector<uint16_t> fill(static_cast<size_t>(rows * os), 0x7fc1);
  gpu_test::DeviceBuffer d16 = gpu_test::ToDevice(fill);
  ASSERT_TRUE(dx.ok() && d16.ok());
  ASSERT_EQ(
      kernels::ConvertF32ToBf16Rows(dx.as<float>(), xs, rows, n, d16.as<uint16_t>(), os, nullptr),
      0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<uint16_t> got16 = gpu_test::ToHost<uint16_t>(d16, fill.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < os; ++c) {
      const uint16_t want = c < n ? FloatToBf16(x[r * xs + c]) : uint16_t{0x7fc1};
      ASSERT_EQ(got16[r * os + c], want) << "row " << r << " col " << c;
    }
  }
  // Back to fp32 into rows of a wider matrix: exact.
  const int64_t fs = 52;
  gpu_test::DeviceBuffer df =
      gpu_test::ToDevice(std::vector<float>(static_cast<size_t>(rows * fs), -7.0f));
  ASSERT_TRUE(df.ok());
  ASSERT_EQ(
      kernels::ConvertBf16ToF32Rows(d16.as<uint16_t>(), os, rows, n, df.as<float>(), fs, nullptr),
      0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> gotf = gpu_test::ToHost<float>(df, static_cast<size_t>(rows * fs));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < fs; ++c) {
      const float want = c < n ? Bf16ToFloat(got16[r * os + c]) : -7.0f;
      ASSERT_EQ(gotf[r * fs + c], want) << "row " << r << " col " << c;
    }
  }
  EXPECT_NE(kernels::ConvertF32ToBf16Rows(dx.as<float>(), n - 1, rows, n, d16.as<uint16_t>(), os,
                                          nullptr),
            0);
  EXPECT_NE(kernels::ConvertBf16ToF32Rows(d16.as<uint16_t>(), os, rows, n, df.as<float>(), n - 1,
                                          nullptr),
            0);
  EXPECT_EQ(kernels::ConvertF32ToBf16Rows(nullptr, xs, 0, n, nullptr, os, nullptr), 0);
}

}  // namespace
}  // namespace hyla
