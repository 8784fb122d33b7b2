// Helpers of the GPU kernel tests (tests/gpu/): a fixture that skips without a CUDA device,
// move-only device buffers, poisoned uploads, random inputs, bf16 rounding and the error report
// printed by every kernel comparison ("[gpu-error] <what>: max|diff| ... rel ...").
#ifndef HYLA_TESTS_GPU_GPU_TEST_UTIL_H_
#define HYLA_TESTS_GPU_GPU_TEST_UTIL_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "runtime/base/float16.h"

namespace hyla::gpu_test {

// Asserts that a launcher returned 0, naming the error otherwise.
#define HYLA_ASSERT_LAUNCH_OK(expr)                                                             \
  do {                                                                                          \
    const int hyla_launch_result = (expr);                                                      \
    ASSERT_EQ(hyla_launch_result, 0) << ::hyla::kernels::KernelErrorString(hyla_launch_result); \
  } while (0)

// Skips the test (reported as skipped, never as passed) where no CUDA device is usable.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      GTEST_SKIP() << "no CUDA device (" << cudaGetErrorString(err) << ", " << count
                   << " devices): GPU test not run";
    }
  }
};

// Device memory for the test's duration (move-only). Filled with 0xFF bytes (NaN as floats and
// bf16) at allocation, so that outputs a kernel fails to write are caught.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&ptr_, bytes_ == 0 ? 1 : bytes_) != cudaSuccess) {
      ptr_ = nullptr;
      return;
    }
    if (cudaMemset(ptr_, 0xFF, bytes_ == 0 ? 1 : bytes_) != cudaSuccess) {
      cudaFree(ptr_);
      ptr_ = nullptr;
    }
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(other.bytes_) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      if (ptr_ != nullptr) cudaFree(ptr_);
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = other.bytes_;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  bool ok() const { return ptr_ != nullptr; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A device copy of a host vector.
template <typename T>
DeviceBuffer ToDevice(const std::vector<T>& host) {
  DeviceBuffer d(host.size() * sizeof(T));
  if (d.ok() && !host.empty()) {
    if (cudaMemcpy(d.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) !=
        cudaSuccess) {
      return DeviceBuffer();
    }
  }
  return d;
}

template <typename T>
std::vector<T> ToHost(const DeviceBuffer& d, size_t count) {
  std::vector<T> host(count);
  EXPECT_EQ(cudaMemcpy(host.data(), d.get(), count * sizeof(T), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return host;
}

inline std::vector<float> Normal(size_t count, std::mt19937* rng, float mean, float stddev) {
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(count);
  for (float& x : v) x = dist(*rng);
  return v;
}

inline std::vector<float> Uniform(size_t count, std::mt19937* rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(count);
  for (float& x : v) x = dist(*rng);
  return v;
}

// Rounds every value to bf16 (in place) and returns the bit patterns.
inline std::vector<uint16_t> RoundToBf16(std::vector<float>* v) {
  std::vector<uint16_t> bits(v->size());
  for (size_t i = 0; i < v->size(); ++i) {
    bits[i] = FloatToBf16((*v)[i]);
    (*v)[i] = Bf16ToFloat(bits[i]);
  }
  return bits;
}

inline std::vector<float> Bf16ToFloats(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Bf16ToFloat(v[i]);
  return out;
}

// Error of `got` against `want`: max |diff| and that over max |want| (the relative error used
// for the acceptance bounds: 1e-4 fp32, 1e-2 bf16). A NaN anywhere makes it infinite.
struct ErrorStats {
  double max_abs = 0.0;
  double max_ref = 0.0;
  double rel() const { return max_abs / std::max(max_ref, 1e-30); }
};

inline ErrorStats Compare(const std::vector<float>& got, const std::vector<float>& want) {
  ErrorStats e;
  if (got.size() != want.size()) {
    e.max_abs = INFINITY;
    return e;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    e.max_abs = std::isnan(diff) ? INFINITY : std::max(e.max_abs, diff);
    e.max_ref = std::max(e.max_ref, std::fabs(static_cast<double>(want[i])));
  }
  return e;
}

// Largest relative error seen per kernel label over the whole test program, printed at exit.
class ErrorLog {
 public:
  static ErrorLog& Get() {
    static ErrorLog* log = new ErrorLog();
    return *log;
  }
  void Add(const std::string& what, const ErrorStats& e) {
    for (auto& entry : entries_) {
      if (entry.first == what) {
        if (e.rel() > entry.second.rel()) entry.second = e;
        return;
      }
    }
    entries_.emplace_back(what, e);
  }
  void Print() const {
    for (const auto& entry : entries_) {
      std::printf("[gpu-error] %-40s max|diff| %.3e  max|ref| %.3e  rel %.3e\n",
                  entry.first.c_str(), entry.second.max_abs, entry.second.max_ref,
                  entry.second.rel());
    }
  }

 private:
  std::vector<std::pair<std::string, ErrorStats>> entries_;
};

// Prints the per-kernel maxima when the test program ends.
class ErrorLogPrinter : public ::testing::EmptyTestEventListener {
 public:
  void OnTestProgramEnd(const ::testing::UnitTest&) override { ErrorLog::Get().Print(); }
};

// Expects rel error <= bound and records it under `what`.
inline void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double bound,
                        const std::string& what) {
  const ErrorStats e = Compare(got, want);
  ErrorLog::Get().Add(what, e);
  EXPECT_LE(e.rel(), bound) << what << ": max|diff| " << e.max_abs << " over max|ref| "
                            << e.max_ref;
}

}  // namespace hyla::gpu_test

#endif  // HYLA_TESTS_GPU_GPU_TEST_UTIL_H_
