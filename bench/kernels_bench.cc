// Kernel micro-benchmark (CUDA only): GdnDecode at 2048+ head-states, PagedAttentionDecode at
// long contexts, and GdnPrefill for reference, against the device-to-device copy bandwidth
// measured in the same run; SkinnyGemmBf16 on the decode GEMM shapes against cuBLAS (dlopen).
//
// Method (../.library/device/METHOD.md): random inputs (never zeros); warm-up launches; before
// every timed launch the L2 is flushed (a memset of 4x its size, outside the timed region); each
// launch is timed alone with CUDA events; the median of kReps launches is reported. Bytes are the
// fewest the op must move (each input read once, each output written once). The copy bandwidth
// is (bytes read + bytes written) / time of a 1 GiB cudaMemcpy D2D, median of kReps.
//
// Usage: kernels_bench [--quick | --skinny | --norms | --decode-misc]   (--quick: fewer sizes;
// --skinny: only the skinny GEMM rows, SkinnyGemmBf16 against cuBLAS; --norms: only the
// decode-step norm, SwiGLU and short-conv rows, every launch shape; --decode-misc: only the
// decode-step rope and SampleRows rows, every variant)
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/ops.h"
#include "runtime/cuda/gemm_tuner.h"

namespace {

constexpr int kReps = 30;
constexpr int kWarmup = 5;

#define BENCH_CHECK(expr)                                                \
  do {                                                                   \
    const cudaError_t bench_err = (expr);                                \
    if (bench_err != cudaSuccess) {                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(bench_err));                       \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

#define LAUNCH_CHECK(expr)                                               \
  do {                                                                   \
    const int launch_err = (expr);                                       \
    if (launch_err != 0) {                                               \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   hyla::kernels::KernelErrorString(launch_err));        \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

// Device allocation for the program's duration.
void* DeviceAlloc(size_t bytes) {
  void* p = nullptr;
  BENCH_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 16)));
  return p;
}

// Fills `bytes` of device memory with random bits shaped as small floats (fp32) or bf16 pairs:
// 16 MiB are generated on the host and copied over the whole range.
void FillRandom(void* dst, size_t bytes, bool bf16, uint32_t seed) {
  const size_t tile = std::min<size_t>(bytes, 16u << 20);
  std::vector<uint8_t> host(tile);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.5f);
  if (bf16) {
    for (size_t i = 0; i + 1 < tile; i += 2) {
      const float f = dist(rng);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      const uint16_t h = static_cast<uint16_t>(bits >> 16);
      std::memcpy(host.data() + i, &h, 2);
    }
  } else {
    for (size_t i = 0; i + 3 < tile; i += 4) {
      const float f = dist(rng);
      std::memcpy(host.data() + i, &f, 4);
    }
  }
  for (size_t off = 0; off < bytes; off += tile) {
    BENCH_CHECK(cudaMemcpy(static_cast<uint8_t*>(dst) + off, host.data(),
                           std::min(tile, bytes - off), cudaMemcpyHostToDevice));
  }
}

class Timer {
 public:
  Timer() {
    int device = 0;
    BENCH_CHECK(cudaGetDevice(&device));
    int l2 = 0;
    BENCH_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
    flush_bytes_ = std::max<size_t>(4 * static_cast<size_t>(l2), 64u << 20);
    flush_ = DeviceAlloc(flush_bytes_);
    BENCH_CHECK(cudaMemset(flush_, 0x5a, flush_bytes_));
    sink_ = static_cast<uint32_t*>(DeviceAlloc(sizeof(uint32_t)));
    BENCH_CHECK(cudaEventCreate(&start_));
    BENCH_CHECK(cudaEventCreate(&stop_));
  }
  // Median time in µs of fn() over `reps` launches (kReps), each after an L2 flush: a read-only
  // sweep of 4x the L2 (kernels::ReadSweep), which also writes back whatever the previous launch
  // left dirty, outside the timed window. (A memset flush, used up to run 3, left ~50 MB of
  // dirty lines that the timed kernel wrote back: ~17 us charged to read-only kernels such as
  // paged decode, a few percent to read+write ones; the PyTorch/fla peers flush the same way.)
  double MedianUs(const std::function<void()>& fn, bool flush = true, int reps = kReps,
                  int warmup = kWarmup) {
    for (int i = 0; i < warmup; ++i) fn();
    BENCH_CHECK(cudaDeviceSynchronize());
    std::vector<double> us;
    for (int i = 0; i < reps; ++i) {
      if (flush) {
        LAUNCH_CHECK(hyla::kernels::ReadSweep(flush_, static_cast<int64_t>(flush_bytes_ / 16),
                                              sink_, nullptr));
      }
      BENCH_CHECK(cudaEventRecord(start_));
      fn();
      BENCH_CHECK(cudaEventRecord(stop_));
      BENCH_CHECK(cudaEventSynchronize(stop_));
      BENCH_CHECK(cudaGetLastError());
      float ms = 0.0f;
      BENCH_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
      us.push_back(ms * 1000.0);
    }
    std::sort(us.begin(), us.end());
    return us[us.size() / 2];
  }

 private:
  void* flush_ = nullptr;
  uint32_t* sink_ = nullptr;
  size_t flush_bytes_ = 0;
  cudaEvent_t start_{}, stop_{};
};

struct Row {
  std::string name;
  double us;
  double bytes;
};

std::vector<Row> g_rows;
double g_copy_gbs = 0.0;

void Report(const std::string& name, double us, double bytes) {
  g_rows.push_back({name, us, bytes});
  const double gbs = bytes / (us * 1e3);
  std::printf("%-58s %10.1f us %8.1f GB/s %6.1f%% of copy\n", name.c_str(), us, gbs,
              100.0 * gbs / g_copy_gbs);
  std::fflush(stdout);
}

double CopyBandwidth(Timer* timer) {
  const size_t bytes = size_t{1} << 30;
  void* a = DeviceAlloc(bytes);
  void* b = DeviceAlloc(bytes);
  FillRandom(a, bytes, false, 1);
  const double us =
      timer->MedianUs([&] { BENCH_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); },
                      /*flush=*/false);
  BENCH_CHECK(cudaFree(a));
  BENCH_CHECK(cudaFree(b));
  const double gbs = 2.0 * bytes / (us * 1e3);
  std::printf("copy D2D 1 GiB: %.1f us, %.1f GB/s (read + write)\n", us, gbs);
  return gbs;
}

// GdnDecode's kernel variants (kernels/ops.h GdnDecodeVariant) timed by BenchGdnDecode with
// all_variants; a variant's row is the default row's name plus " [<name>]".
struct GdnDecodeVariantName {
  hyla::kernels::GdnDecodeVariant variant;
  const char* name;
};
constexpr GdnDecodeVariantName kGdnDecodeVariants[] = {
    {hyla::kernels::GdnDecodeVariant::kTile32, "tile32"},
    {hyla::kernels::GdnDecodeVariant::kTile32Stream, "tile32-cs"},
    {hyla::kernels::GdnDecodeVariant::kTile64, "tile64"},
    {hyla::kernels::GdnDecodeVariant::kTile64Stream, "tile64-cs"},
    {hyla::kernels::GdnDecodeVariant::kTile128Stream, "tile128-cs"},
    {hyla::kernels::GdnDecodeVariant::kPersistent32, "persistent32-cs"},
};

// Times GdnDecode (the default kernel; with all_variants also every GdnDecodeVariant, on the same
// buffers).
void BenchGdnDecode(Timer* timer, int num_seqs, int H, int HV, int dk, int dv, bool bf16,
                    bool all_variants = false) {
  const size_t es = bf16 ? 2 : 4;
  const int64_t row = 2 * int64_t{H} * dk + int64_t{HV} * dv + 2 * HV;
  const int64_t state = int64_t{HV} * dk * dv;
  void* rows = DeviceAlloc(static_cast<size_t>(num_seqs * row) * es);
  float* pool = static_cast<float*>(DeviceAlloc(static_cast<size_t>(num_seqs * state) * 4));
  float* gates = static_cast<float*>(DeviceAlloc(2 * HV * 4));
  void* o = DeviceAlloc(static_cast<size_t>(num_seqs) * HV * dv * es);
  FillRandom(rows, static_cast<size_t>(num_seqs * row) * es, bf16, 2);
  FillRandom(pool, static_cast<size_t>(num_seqs * state) * 4, false, 3);
  FillRandom(gates, 2 * HV * 4, false, 4);
  std::vector<int32_t> slots(num_seqs);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), std::mt19937(5));
  int32_t* d_slots = static_cast<int32_t*>(DeviceAlloc(num_seqs * 4));
  BENCH_CHECK(cudaMemcpy(d_slots, slots.data(), num_seqs * 4, cudaMemcpyHostToDevice));

  hyla::kernels::GdnDecodeParams p;
  p.num_seqs = num_seqs;
  p.num_heads = H;
  p.num_v_heads = HV;
  p.dk = dk;
  p.dv = dv;
  p.dtype = bf16 ? hyla::kernels::KernelDType::kBf16 : hyla::kernels::KernelDType::kF32;
  const char* base = static_cast<const char*>(rows);
  p.q = base;
  p.k = base + int64_t{H} * dk * es;
  p.v = base + 2 * int64_t{H} * dk * es;
  p.a = base + (2 * int64_t{H} * dk + int64_t{HV} * dv) * es;
  p.b = base + (2 * int64_t{H} * dk + int64_t{HV} * dv + HV) * es;
  p.q_stride = p.k_stride = p.v_stride = p.a_stride = p.b_stride = row;
  p.a_log = gates;
  p.dt_bias = gates + HV;
  p.q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  p.slots = d_slots;
  p.state = pool;
  p.state_slot_stride = state;
  p.o = o;
  p.o_stride = int64_t{HV} * dv;
  const double bytes =
      2.0 * num_seqs * state * 4 + double(num_seqs) * row * es + double(num_seqs) * HV * dv * es;
  const std::string name = "gdn_decode " + std::string(bf16 ? "bf16" : "f32") + " seqs " +
                           std::to_string(num_seqs) + " HV " + std::to_string(HV) + " (" +
                           std::to_string(num_seqs * HV) + " head-states " + std::to_string(dk) +
                           "x" + std::to_string(dv) + ")";
  Report(name, timer->MedianUs([&] { LAUNCH_CHECK(hyla::kernels::GdnDecode(p, nullptr)); }), bytes);
  for (const GdnDecodeVariantName& v : kGdnDecodeVariants) {
    if (!all_variants) break;
    p.variant = v.variant;
    Report(name + " [" + v.name + "]",
           timer->MedianUs([&] { LAUNCH_CHECK(hyla::kernels::GdnDecode(p, nullptr)); }), bytes);
  }
  for (void* ptr : {rows, static_cast<void*>(pool), static_cast<void*>(gates), o,
                    static_cast<void*>(d_slots)}) {
    BENCH_CHECK(cudaFree(ptr));
  }
}

// The PagedAttentionDecode variants (PagedAttentionDecodeParams::variant) that BenchPagedDecode
// times besides the default: all of them, or those listed (comma-separated indices, "none") in
// the environment variable HYLA_PAGED_DECODE_VARIANTS. A variant's row is the default row's name
// plus " [<name>]".
std::vector<int> PagedDecodeVariants() {
  std::vector<int> all;
  for (int v = 1; hyla::kernels::PagedAttentionDecodeVariantName(v) != nullptr; ++v) {
    all.push_back(v);
  }
  const char* env = std::getenv("HYLA_PAGED_DECODE_VARIANTS");
  if (env == nullptr || std::strcmp(env, "all") == 0) return all;
  std::vector<int> picked;
  for (const char* c = env; *c != '\0';) {
    char* end = nullptr;
    const long v = std::strtol(c, &end, 10);
    if (end == c) break;
    if (v >= 1 && hyla::kernels::PagedAttentionDecodeVariantName(static_cast<int>(v)) != nullptr) {
      picked.push_back(static_cast<int>(v));
    }
    c = *end == ',' ? end + 1 : end;
  }
  return picked;
}

// Times PagedAttentionDecode (default, then every PagedDecodeVariants() variant on the same
// buffers); prints each one's max |out − out of the CUDA-core kernel| / max |that| as a check.
// backend: as the CUDA attention layer launches it (fp32 queries and output, block_chunks
// given; name suffix " qf32"). clean_l2: also rows "[clean-L2]" / "[<variant>, clean-L2]",
// timed after the memset flush AND a read-only sweep (PagedAttentionDecode over another 128 MB
// pool), so that L2 holds clean lines: the memset alone leaves up to an L2 of dirty lines whose
// write-back a read-only kernel pays for (~17 us at copy bandwidth on the H100).
void BenchPagedDecode(Timer* timer, int num_seqs, int context, int Hq, int Hkv, int d, bool bf16,
                      int window, bool backend = false, bool clean_l2 = false) {
  const size_t es = bf16 ? 2 : 4;
  const int blocks_per_seq = (context + 63) / 64;
  const int64_t block_elems = int64_t{64} * Hkv * 2 * d;
  const int64_t total_blocks = int64_t{num_seqs} * blocks_per_seq;
  void* kv = DeviceAlloc(static_cast<size_t>(total_blocks * block_elems) * es);
  FillRandom(kv, static_cast<size_t>(total_blocks * block_elems) * es, bf16, 6);
  std::vector<int32_t> perm(total_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(7));
  std::vector<int32_t> nblocks(num_seqs, blocks_per_seq), lens(num_seqs, context);
  int32_t* d_table = static_cast<int32_t*>(DeviceAlloc(total_blocks * 4));
  int32_t* d_n = static_cast<int32_t*>(DeviceAlloc(num_seqs * 4));
  int32_t* d_len = static_cast<int32_t*>(DeviceAlloc(num_seqs * 4));
  BENCH_CHECK(cudaMemcpy(d_table, perm.data(), total_blocks * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(d_n, nblocks.data(), num_seqs * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(d_len, lens.data(), num_seqs * 4, cudaMemcpyHostToDevice));
  const size_t qes = backend ? 4 : es;  // of q and out
  const bool q_bf16 = bf16 && !backend;
  void* q = DeviceAlloc(static_cast<size_t>(num_seqs) * Hq * d * qes);
  FillRandom(q, static_cast<size_t>(num_seqs) * Hq * d * qes, q_bf16, 8);
  void* out = DeviceAlloc(static_cast<size_t>(num_seqs) * Hq * d * qes);
  int32_t* d_chunks = nullptr;  // backend: dense chunks 0 .. n − 1 (as a table without holes)
  if (backend) {
    std::vector<int32_t> chunks(total_blocks);
    for (int64_t i = 0; i < total_blocks; ++i) chunks[i] = static_cast<int32_t>(i % blocks_per_seq);
    d_chunks = static_cast<int32_t*>(DeviceAlloc(total_blocks * 4));
    BENCH_CHECK(cudaMemcpy(d_chunks, chunks.data(), total_blocks * 4, cudaMemcpyHostToDevice));
  }
  const size_t ws_bytes =
      hyla::kernels::PagedAttentionDecodeWorkspaceBytes(num_seqs, Hq, d, blocks_per_seq);
  void* ws = DeviceAlloc(ws_bytes);

  hyla::kernels::PagedAttentionDecodeParams p;
  p.num_seqs = num_seqs;
  p.num_heads = Hq;
  p.num_kv_heads = Hkv;
  p.dk = p.dv = d;
  p.q_dtype = p.kv_dtype =
      bf16 ? hyla::kernels::KernelDType::kBf16 : hyla::kernels::KernelDType::kF32;
  if (backend) p.q_dtype = hyla::kernels::KernelDType::kF32;
  p.block_chunks = d_chunks;
  p.q = q;
  p.q_stride = int64_t{Hq} * d;
  p.kv = kv;
  p.block_stride = block_elems;
  p.block_table = d_table;
  p.num_blocks = d_n;
  p.max_blocks = blocks_per_seq;
  p.kv_len = d_len;
  p.window = window;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.out = out;
  p.out_stride = int64_t{Hq} * d;
  p.workspace = ws;
  p.workspace_bytes = ws_bytes;
  const int visible = window > 0 ? std::min(window, context) : context;
  const double bytes =
      double(num_seqs) * visible * Hkv * 2 * d * es + 2.0 * num_seqs * Hq * d * qes;
  const std::string name = "paged_decode " + std::string(bf16 ? "bf16" : "f32") + " seqs " +
                           std::to_string(num_seqs) + " ctx " + std::to_string(context) +
                           (window > 0 ? " win " + std::to_string(window) : std::string()) +
                           " Hq " + std::to_string(Hq) + " Hkv " + std::to_string(Hkv) + " d " +
                           std::to_string(d) + (backend ? " qf32" : "");
  const size_t out_count = static_cast<size_t>(num_seqs) * Hq * d;
  auto output = [&](int variant) {
    p.variant = variant;
    LAUNCH_CHECK(hyla::kernels::PagedAttentionDecode(p, nullptr));
    BENCH_CHECK(cudaDeviceSynchronize());
    std::vector<float> host(out_count);
    if (q_bf16) {
      std::vector<uint16_t> bits(out_count);
      BENCH_CHECK(cudaMemcpy(bits.data(), out, out_count * 2, cudaMemcpyDeviceToHost));
      for (size_t i = 0; i < out_count; ++i) {
        const uint32_t w = uint32_t{bits[i]} << 16;
        std::memcpy(&host[i], &w, 4);
      }
    } else {
      BENCH_CHECK(cudaMemcpy(host.data(), out, out_count * 4, cudaMemcpyDeviceToHost));
    }
    return host;
  };
  const std::vector<float> ref = output(1);  // the CUDA-core kernel
  auto check = [&](int variant) {
    const std::vector<float> got = output(variant);
    double diff = 0.0, mag = 0.0;
    for (size_t i = 0; i < out_count; ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(got[i] - ref[i])));
      mag = std::max(mag, static_cast<double>(std::fabs(ref[i])));
    }
    std::printf("check %s [%s]: max|diff| / max|cuda_cores| = %.2e\n", name.c_str(),
                hyla::kernels::PagedAttentionDecodeVariantName(variant),
                mag > 0.0 ? diff / mag : diff);
  };
  const std::vector<int> variants = PagedDecodeVariants();
  check(0);
  for (const int v : variants) check(v);
  p.variant = 0;
  Report(name,
         timer->MedianUs([&] { LAUNCH_CHECK(hyla::kernels::PagedAttentionDecode(p, nullptr)); }),
         bytes);
  for (const int v : variants) {
    p.variant = v;
    Report(name + " [" + hyla::kernels::PagedAttentionDecodeVariantName(v) + "]",
           timer->MedianUs([&] { LAUNCH_CHECK(hyla::kernels::PagedAttentionDecode(p, nullptr)); }),
           bytes);
  }
  if (clean_l2) {
    // The sweep: 64 sequences x 2048 positions, Hkv 2, d 128, bf16 (128 MiB, read only).
    const int sw_seqs = 64, sw_blocks = 32;
    const int64_t sw_block_elems = int64_t{64} * 2 * 2 * 128;
    const size_t sw_bytes = static_cast<size_t>(sw_seqs) * sw_blocks * sw_block_elems * 2;
    void* sw_kv = DeviceAlloc(sw_bytes);
    FillRandom(sw_kv, sw_bytes, true, 9);
    std::vector<int32_t> sw_table(sw_seqs * sw_blocks), sw_n(sw_seqs, sw_blocks),
        sw_len(sw_seqs, sw_blocks * 64);
    std::iota(sw_table.begin(), sw_table.end(), 0);
    int32_t* sw_d = static_cast<int32_t*>(DeviceAlloc((sw_table.size() + 2 * sw_seqs) * 4));
    BENCH_CHECK(cudaMemcpy(sw_d, sw_table.data(), sw_table.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CHECK(
        cudaMemcpy(sw_d + sw_table.size(), sw_n.data(), sw_seqs * 4, cudaMemcpyHostToDevice));
    BENCH_CHECK(cudaMemcpy(sw_d + sw_table.size() + sw_seqs, sw_len.data(), sw_seqs * 4,
                           cudaMemcpyHostToDevice));
    void* sw_q = DeviceAlloc(static_cast<size_t>(sw_seqs) * 16 * 128 * 2);
    FillRandom(sw_q, static_cast<size_t>(sw_seqs) * 16 * 128 * 2, true, 10);
    void* sw_out = DeviceAlloc(static_cast<size_t>(sw_seqs) * 16 * 128 * 2);
    hyla::kernels::PagedAttentionDecodeParams sw;
    sw.num_seqs = sw_seqs;
    sw.num_heads = 16;
    sw.num_kv_heads = 2;
    sw.dk = sw.dv = 128;
    sw.q_dtype = sw.kv_dtype = hyla::kernels::KernelDType::kBf16;
    sw.q = sw_q;
    sw.q_stride = 16 * 128;
    sw.kv = sw_kv;
    sw.block_stride = sw_block_elems;
    sw.block_table = sw_d;
    sw.num_blocks = sw_d + sw_table.size();
    sw.max_blocks = sw_blocks;
    sw.kv_len = sw_d + sw_table.size() + sw_seqs;
    sw.scale = 0.088f;
    sw.out = sw_out;
    sw.out_stride = 16 * 128;
    sw.variant = 1;  // the CUDA-core kernel: plain cp.async, no split (no workspace)
    cudaEvent_t start, stop;
    BENCH_CHECK(cudaEventCreate(&start));
    BENCH_CHECK(cudaEventCreate(&stop));
    auto clean_us = [&] {
      for (int i = 0; i < kWarmup; ++i)
        LAUNCH_CHECK(hyla::kernels::PagedAttentionDecode(p, nullptr));
      std::vector<double> us;
      for (int i = 0; i < kReps; ++i) {
        timer->MedianUs([] {}, /*flush=*/true, /*reps=*/1, /*warmup=*/0);  // the memset flush
        LAUNCH_CHECK(hyla::kernels::PagedAttentionDecode(sw, nullptr));
        BENCH_CHECK(cudaEventRecord(start));
        LAUNCH_CHECK(hyla::kernels::PagedAttentionDecode(p, nullptr));
        BENCH_CHECK(cudaEventRecord(stop));
        BENCH_CHECK(cudaEventSynchronize(stop));
        float ms = 0.0f;
        BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
        us.push_back(ms * 1000.0);
      }
      std::sort(us.begin(), us.end());
      return us[us.size() / 2];
    };
    p.variant = 0;
    Report(name + " [clean-L2]", clean_us(), bytes);
    for (const int v : variants) {
      p.variant = v;
      Report(name + " [" + hyla::kernels::PagedAttentionDecodeVariantName(v) + ", clean-L2]",
             clean_us(), bytes);
    }
    BENCH_CHECK(cudaEventDestroy(start));
    BENCH_CHECK(cudaEventDestroy(stop));
    for (void* ptr : {sw_kv, static_cast<void*>(sw_d), sw_q, sw_out}) BENCH_CHECK(cudaFree(ptr));
  }
  for (void* ptr : {kv, static_cast<void*>(d_table), static_cast<void*>(d_n),
                    static_cast<void*>(d_len), q, out, ws, static_cast<void*>(d_chunks)}) {
    BENCH_CHECK(cudaFree(ptr));
  }
}

// Tensor-core path variants (kernels/ops.h GdnPrefillMmaVariant) timed by BenchGdnPrefill with
// all_variants; a variant's row is the default row's name plus " [<name>]".
struct GdnPrefillVariantName {
  hyla::kernels::GdnPrefillMmaVariant variant;
  const char* name;
};
constexpr GdnPrefillVariantName kGdnPrefillVariants[] = {
    {hyla::kernels::GdnPrefillMmaVariant::kCols16, "mma cols16"},
    {hyla::kernels::GdnPrefillMmaVariant::kCols32, "mma cols32"},
    {hyla::kernels::GdnPrefillMmaVariant::kCols64, "mma cols64"},
    {hyla::kernels::GdnPrefillMmaVariant::kFusedCols16, "mma fused cols16"},
    {hyla::kernels::GdnPrefillMmaVariant::kFusedCols32, "mma fused cols32"},
    {hyla::kernels::GdnPrefillMmaVariant::kFusedCols16Split2, "mma fused cols16 split2"},
    {hyla::kernels::GdnPrefillMmaVariant::kFusedCols32Split2, "mma fused cols32 split2"},
    {hyla::kernels::GdnPrefillMmaVariant::kFusedCols64Split2, "mma fused cols64 split2"},
    {hyla::kernels::GdnPrefillMmaVariant::kCols32Stages3, "mma cols32 stages3"},
    {hyla::kernels::GdnPrefillMmaVariant::kFusedCols16Split2Stages3,
     "mma fused cols16 split2 stages3"},
    {hyla::kernels::GdnPrefillMmaVariant::kFusedCols32Split2Solve2,
     "mma fused cols32 split2 solve2"},
    {hyla::kernels::GdnPrefillMmaVariant::kFusedCols64Split2Solve2,
     "mma fused cols64 split2 solve2"},
    {hyla::kernels::GdnPrefillMmaVariant::kCols32Solve2, "mma cols32 solve2"},
    {hyla::kernels::GdnPrefillMmaVariant::kFusedCols32Split4Solve2,
     "mma fused cols32 split4 solve2"},
    {hyla::kernels::GdnPrefillMmaVariant::kOverlapCols64Split2Solve2, "mma overlap cols64"},
    {hyla::kernels::GdnPrefillMmaVariant::kOverlapCols32Split2Solve2, "mma overlap cols32"},
};

// bf16 rows take GdnPrefill's tensor-core path (kernels/ops.h GdnPrefillUsesTensorCores);
// all_variants (bf16) also times each GdnPrefillMmaVariant and the fp32 kernels (" [fp32
// kernel]", GdnPrefillParams::tensor_cores = false) on the same buffers.
void BenchGdnPrefill(Timer* timer, int num_seqs, int len, int H, int HV, int dk, int dv, bool bf16,
                     bool all_variants = false,
                     hyla::kernels::GdnPrefillMmaVariant first_variant =
                         hyla::kernels::GdnPrefillMmaVariant::kDefault) {
  const size_t es = bf16 ? 2 : 4;
  const int64_t row = 2 * int64_t{H} * dk + int64_t{HV} * dv + 2 * HV;
  const int64_t rows_total = int64_t{num_seqs} * len;
  const int64_t state = int64_t{HV} * dk * dv;
  void* rows = DeviceAlloc(static_cast<size_t>(rows_total * row) * es);
  FillRandom(rows, static_cast<size_t>(rows_total * row) * es, bf16, 9);
  float* pool = static_cast<float*>(DeviceAlloc(static_cast<size_t>(num_seqs * state) * 4));
  FillRandom(pool, static_cast<size_t>(num_seqs * state) * 4, false, 10);
  float* gates = static_cast<float*>(DeviceAlloc(2 * HV * 4));
  FillRandom(gates, 2 * HV * 4, false, 11);
  void* o = DeviceAlloc(static_cast<size_t>(rows_total) * HV * dv * es);
  std::vector<int32_t> cu(num_seqs + 1), slots(num_seqs), offsets(num_seqs + 1);
  for (int s = 0; s <= num_seqs; ++s) cu[s] = s * len;
  std::iota(slots.begin(), slots.end(), 0);
  const int pieces = hyla::kernels::GdnPrefillPlan(cu.data(), nullptr, num_seqs, offsets.data());
  int32_t* d_cu = static_cast<int32_t*>(DeviceAlloc((num_seqs + 1) * 4));
  int32_t* d_off = static_cast<int32_t*>(DeviceAlloc((num_seqs + 1) * 4));
  int32_t* d_slots = static_cast<int32_t*>(DeviceAlloc(num_seqs * 4));
  BENCH_CHECK(cudaMemcpy(d_cu, cu.data(), (num_seqs + 1) * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(d_off, offsets.data(), (num_seqs + 1) * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(d_slots, slots.data(), num_seqs * 4, cudaMemcpyHostToDevice));
  const size_t ws_bytes = hyla::kernels::GdnPrefillWorkspaceBytes(pieces, HV, dk, dv);
  void* ws = DeviceAlloc(ws_bytes);

  hyla::kernels::GdnPrefillParams p;
  p.num_seqs = num_seqs;
  p.num_heads = H;
  p.num_v_heads = HV;
  p.dk = dk;
  p.dv = dv;
  p.dtype = bf16 ? hyla::kernels::KernelDType::kBf16 : hyla::kernels::KernelDType::kF32;
  const char* base = static_cast<const char*>(rows);
  p.q = base;
  p.k = base + int64_t{H} * dk * es;
  p.v = base + 2 * int64_t{H} * dk * es;
  p.a = base + (2 * int64_t{H} * dk + int64_t{HV} * dv) * es;
  p.b = base + (2 * int64_t{H} * dk + int64_t{HV} * dv + HV) * es;
  p.q_stride = p.k_stride = p.v_stride = p.a_stride = p.b_stride = row;
  p.a_log = gates;
  p.dt_bias = gates + HV;
  p.q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  p.cu_seqlens = d_cu;
  p.piece_offsets = d_off;
  p.num_pieces = pieces;
  p.slots = d_slots;
  p.state = pool;
  p.state_slot_stride = state;
  p.o = o;
  p.o_stride = int64_t{HV} * dv;
  p.workspace = ws;
  p.workspace_bytes = ws_bytes;
  p.mma_variant = first_variant;
  const double bytes = double(rows_total) * row * es + double(rows_total) * HV * dv * es +
                       2.0 * num_seqs * state * 4;
  auto time_one = [&](const std::string& suffix) {
    const double us = timer->MedianUs([&] { LAUNCH_CHECK(hyla::kernels::GdnPrefill(p, nullptr)); });
    Report("gdn_prefill " + std::string(bf16 ? "bf16" : "f32") + " seqs " +
               std::to_string(num_seqs) + " x " + std::to_string(len) + " HV " +
               std::to_string(HV) + " (" +
               std::to_string(static_cast<int64_t>(rows_total / (us * 1e-6) / 1e3)) + " ktok/s)" +
               suffix,
           us, bytes);
  };
  time_one("");
  if (all_variants && bf16) {
    for (const GdnPrefillVariantName& v : kGdnPrefillVariants) {
      p.mma_variant = v.variant;
      time_one(std::string(" [") + v.name + "]");
    }
    // The overlapped variants' segment count (GdnPrefillParams::overlap_segments; 0 = default).
    for (const hyla::kernels::GdnPrefillMmaVariant v :
         {hyla::kernels::GdnPrefillMmaVariant::kOverlapCols64Split2Solve2,
          hyla::kernels::GdnPrefillMmaVariant::kOverlapCols32Split2Solve2}) {
      p.mma_variant = v;
      for (const int segments : {4, 6, 12, 16, 32}) {
        p.overlap_segments = segments;
        time_one(
            std::string(" [mma overlap cols") +
            (v == hyla::kernels::GdnPrefillMmaVariant::kOverlapCols64Split2Solve2 ? "64" : "32") +
            " segments " + std::to_string(segments) + "]");
      }
    }
    p.overlap_segments = 0;
    // Launches alone (kernels/ops.h internal::GdnPrefillMmaLaunch), in order so that each
    // reads what the previous one wrote: the default variant, the unfused kCols32 and the
    // parallel-solve (launch 1) and Split4 (launch 2) variants.
    for (const GdnPrefillVariantName& alone :
         {GdnPrefillVariantName{hyla::kernels::GdnPrefillMmaVariant::kDefault, "default"},
          GdnPrefillVariantName{hyla::kernels::GdnPrefillMmaVariant::kCols32, "mma cols32"},
          GdnPrefillVariantName{hyla::kernels::GdnPrefillMmaVariant::kCols32Solve2,
                                "mma cols32 solve2"},
          GdnPrefillVariantName{hyla::kernels::GdnPrefillMmaVariant::kFusedCols32Split2Solve2,
                                "mma fused cols32 split2 solve2"},
          GdnPrefillVariantName{hyla::kernels::GdnPrefillMmaVariant::kFusedCols32Split4Solve2,
                                "mma fused cols32 split4 solve2"},
          GdnPrefillVariantName{hyla::kernels::GdnPrefillMmaVariant::kFusedCols64Split2Solve2,
                                "mma fused cols64 split2 solve2"}}) {
      p.mma_variant = alone.variant;
      for (int launch = 1; launch <= 3; ++launch) {
        const double us = timer->MedianUs([&] {
          LAUNCH_CHECK(hyla::kernels::internal::GdnPrefillMmaLaunch(p, launch, nullptr));
        });
        Report("gdn_prefill bf16 seqs " + std::to_string(num_seqs) + " x " + std::to_string(len) +
                   " HV " + std::to_string(HV) + " [" + alone.name + " launch " +
                   std::to_string(launch) + " alone]",
               us, 0.0);
      }
    }
    p.mma_variant = hyla::kernels::GdnPrefillMmaVariant::kDefault;
    p.tensor_cores = false;
    time_one(" [fp32 kernel]");
  }
  for (void* ptr :
       {rows, static_cast<void*>(pool), static_cast<void*>(gates), o, static_cast<void*>(d_cu),
        static_cast<void*>(d_off), static_cast<void*>(d_slots), ws}) {
    BENCH_CHECK(cudaFree(ptr));
  }
}

// Causal softmax prefill over paged KV (PagedAttentionPrefill) for one sequence of `len` tokens
// whose K/V are already in the blocks: the peer of PyTorch SDPA flash (bench/peers/); compute-
// bound, so reported with the nominal causal FLOPs 2·Hq·len²·d as well. q and out are fp32.
void BenchAttnPrefill(Timer* timer, int len, int Hq, int Hkv, int d, bool bf16) {
  const size_t es = bf16 ? 2 : 4;
  const int blocks = (len + 63) / 64;
  const int64_t block_elems = int64_t{64} * Hkv * 2 * d;
  void* kv = DeviceAlloc(static_cast<size_t>(blocks * block_elems) * es);
  FillRandom(kv, static_cast<size_t>(blocks * block_elems) * es, bf16, 12);
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(13));
  const int tile_rows = hyla::kernels::PagedAttentionPrefillTileRows(Hq, Hkv, d, d);
  if (tile_rows <= 0) {
    std::printf("attn_prefill: unsupported shape Hq %d Hkv %d d %d\n", Hq, Hkv, d);
    BENCH_CHECK(cudaFree(kv));
    return;
  }
  std::vector<int32_t> row_pos(len), tiles;
  std::iota(row_pos.begin(), row_pos.end(), 0);
  for (int r = 0; r < len; r += tile_rows) {
    tiles.insert(tiles.end(), {0, r, std::min(tile_rows, len - r)});
  }
  const int num_tiles = static_cast<int>(tiles.size() / 3);
  const int32_t nblocks = blocks;
  int32_t* d_table = static_cast<int32_t*>(DeviceAlloc(blocks * 4));
  int32_t* d_n = static_cast<int32_t*>(DeviceAlloc(4));
  int32_t* d_pos = static_cast<int32_t*>(DeviceAlloc(static_cast<size_t>(len) * 4));
  int32_t* d_tiles = static_cast<int32_t*>(DeviceAlloc(tiles.size() * 4));
  BENCH_CHECK(cudaMemcpy(d_table, table.data(), blocks * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(d_n, &nblocks, 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(
      cudaMemcpy(d_pos, row_pos.data(), static_cast<size_t>(len) * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(d_tiles, tiles.data(), tiles.size() * 4, cudaMemcpyHostToDevice));
  const size_t q_bytes = static_cast<size_t>(len) * Hq * d * 4;
  float* q = static_cast<float*>(DeviceAlloc(q_bytes));
  FillRandom(q, q_bytes, false, 14);
  float* out = static_cast<float*>(DeviceAlloc(q_bytes));

  hyla::kernels::PagedAttentionPrefillParams p;
  p.num_heads = Hq;
  p.num_kv_heads = Hkv;
  p.dk = p.dv = d;
  p.kv_dtype = bf16 ? hyla::kernels::KernelDType::kBf16 : hyla::kernels::KernelDType::kF32;
  p.q = q;
  p.q_stride = int64_t{Hq} * d;
  p.kv = kv;
  p.block_stride = block_elems;
  p.block_table = d_table;
  p.num_blocks = d_n;
  p.max_blocks = blocks;
  p.row_pos = d_pos;
  p.tiles = d_tiles;
  p.num_tiles = num_tiles;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.out = out;
  p.out_stride = int64_t{Hq} * d;
  // Long launches (up to ~1 s at 32K): fewer repetitions than the default.
  const double us = timer->MedianUs(
      [&] { LAUNCH_CHECK(hyla::kernels::PagedAttentionPrefill(p, nullptr)); }, true, 9, 2);
  const double bytes = 2.0 * q_bytes + double(len) * Hkv * 2 * d * es;
  const double tflops = 2.0 * Hq * double(len) * len * d / (us * 1e-6) / 1e12;
  Report("attn_prefill " + std::string(bf16 ? "bf16" : "f32") + " seqs 1 x " + std::to_string(len) +
             " Hq " + std::to_string(Hq) + " Hkv " + std::to_string(Hkv) + " d " +
             std::to_string(d) + " causal (" + std::to_string(static_cast<int>(tflops)) +
             " TFLOP/s)",
         us, bytes);
  for (void* ptr :
       {kv, static_cast<void*>(d_table), static_cast<void*>(d_n), static_cast<void*>(d_pos),
        static_cast<void*>(d_tiles), static_cast<void*>(q), static_cast<void*>(out)}) {
    BENCH_CHECK(cudaFree(ptr));
  }
}

// cuBLAS for the skinny GEMM comparison rows, loaded at run time (as runtime/cuda/cublas_api.cc
// does; kernels_bench does not link it). nullptr when it cannot be loaded (rows skipped).
struct BenchCublas {
  cublasHandle_t handle = nullptr;
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t) = nullptr;
};

const BenchCublas* LoadBenchCublas() {
  static const BenchCublas* api = []() -> const BenchCublas* {
    void* lib = nullptr;
    for (const char* name : {"libcublas.so.13", "libcublas.so"}) {
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) break;
    }
    if (lib == nullptr) {
      std::printf("cuBLAS not loadable (%s): no cublas rows\n", dlerror());
      return nullptr;
    }
    using CreateFn = cublasStatus_t (*)(cublasHandle_t*);
    auto create = reinterpret_cast<CreateFn>(dlsym(lib, "cublasCreate_v2"));
    auto* out = new BenchCublas;
    out->gemm_ex = reinterpret_cast<decltype(out->gemm_ex)>(dlsym(lib, "cublasGemmEx"));
    if (create == nullptr || out->gemm_ex == nullptr ||
        create(&out->handle) != CUBLAS_STATUS_SUCCESS) {
      std::printf("cuBLAS lacks cublasCreate_v2/cublasGemmEx or cannot create a handle\n");
      delete out;
      return nullptr;
    }
    return out;
  }();
  return api;
}

// max |a − b| / max |b| over count floats (device).
double RelDiff(const float* a, const float* b, size_t count) {
  std::vector<float> ha(count), hb(count);
  BENCH_CHECK(cudaMemcpy(ha.data(), a, count * 4, cudaMemcpyDeviceToHost));
  BENCH_CHECK(cudaMemcpy(hb.data(), b, count * 4, cudaMemcpyDeviceToHost));
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < count; ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(ha[i]) - hb[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(hb[i])));
    if (std::isnan(ha[i])) max_diff = INFINITY;
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

// Times SkinnyGemmBf16 y[m, n] = x[m, k]·Wᵀ (bf16 W [n, k], fp32 y): the default variant, with
// all_variants also every variant × splits 1/2/4/8 (" [<variant> s<splits>]"), and the same GEMM
// through cublasGemmEx as runtime/cuda/gemm.cc Linear calls it ("cublas ..."). Bytes: W + x + y.
// Checks: the default against a CPU double reference on 64 columns, every other output (cuBLAS
// included) against the default's (max |diff| / max |y|, printed; FAIL above 1e-3).
void BenchSkinnyGemm(Timer* timer, int m, int n, int k, bool all_variants) {
  const size_t w_bytes = size_t{2} * n * k, x_bytes = size_t{2} * m * k;
  const size_t y_count = size_t{1} * m * n;
  auto* w = static_cast<uint16_t*>(DeviceAlloc(w_bytes));
  auto* x = static_cast<uint16_t*>(DeviceAlloc(x_bytes));
  auto* y = static_cast<float*>(DeviceAlloc(y_count * 4));
  auto* y_ref = static_cast<float*>(DeviceAlloc(y_count * 4));
  FillRandom(w, w_bytes, true, 11);
  FillRandom(x, x_bytes, true, 12);
  const double bytes = static_cast<double>(w_bytes + x_bytes + y_count * 4);
  const std::string name = "skinny_gemm bf16 m " + std::to_string(m) + " n " + std::to_string(n) +
                           " k " + std::to_string(k);
  hyla::kernels::SkinnyGemmParams p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.x = x;
  p.w = w;
  p.y = y_ref;
  LAUNCH_CHECK(hyla::kernels::SkinnyGemmBf16(p, nullptr));
  BENCH_CHECK(cudaDeviceSynchronize());
  {  // CPU check of the default on 64 columns spread over n.
    std::vector<uint16_t> hx(static_cast<size_t>(m) * k), hw(k);
    std::vector<float> hy(y_count);
    BENCH_CHECK(cudaMemcpy(hx.data(), x, x_bytes, cudaMemcpyDeviceToHost));
    BENCH_CHECK(cudaMemcpy(hy.data(), y_ref, y_count * 4, cudaMemcpyDeviceToHost));
    auto bf = [](uint16_t h) {
      const uint32_t bits = static_cast<uint32_t>(h) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return static_cast<double>(f);
    };
    double max_diff = 0.0, max_ref = 0.0;
    for (int c = 0; c < 64; ++c) {
      const int j = static_cast<int>(static_cast<int64_t>(c) * (n - 1) / 63);
      BENCH_CHECK(cudaMemcpy(hw.data(), w + static_cast<size_t>(j) * k, size_t{2} * k,
                             cudaMemcpyDeviceToHost));
      for (int i = 0; i < m; ++i) {
        double ref = 0.0;
        for (int kk = 0; kk < k; ++kk) ref += bf(hx[static_cast<size_t>(i) * k + kk]) * bf(hw[kk]);
        max_ref = std::max(max_ref, std::fabs(ref));
        max_diff = std::max(max_diff, std::fabs(ref - hy[static_cast<size_t>(i) * n + j]));
      }
    }
    const double rel = max_ref > 0 ? max_diff / max_ref : max_diff;
    std::printf("  check %s vs CPU: rel %.2e%s\n", name.c_str(), rel, rel <= 1e-3 ? "" : " FAIL");
  }
  p.y = y;
  Report(name, timer->MedianUs([&] { LAUNCH_CHECK(hyla::kernels::SkinnyGemmBf16(p, nullptr)); }),
         bytes);
  if (all_variants) {
    for (int v = 1; hyla::kernels::SkinnyGemmVariantName(v) != nullptr; ++v) {
      for (const int splits : {1, 2, 4, 8}) {
        hyla::kernels::SkinnyGemmParams q = p;
        q.variant = v;
        q.num_splits = splits;
        BENCH_CHECK(cudaMemset(y, 0xFF, y_count * 4));
        const int err = hyla::kernels::SkinnyGemmBf16(q, nullptr);
        if (err != 0) {
          std::printf("  %s [%s s%d]: %s\n", name.c_str(), hyla::kernels::SkinnyGemmVariantName(v),
                      splits, hyla::kernels::KernelErrorString(err));
          (void)cudaGetLastError();
          continue;
        }
        BENCH_CHECK(cudaDeviceSynchronize());
        const double rel = RelDiff(y, y_ref, y_count);
        if (!(rel <= 1e-3)) {
          std::printf("  check [%s s%d] vs default: rel %.2e FAIL\n",
                      hyla::kernels::SkinnyGemmVariantName(v), splits, rel);
        }
        Report(name + " [" + hyla::kernels::SkinnyGemmVariantName(v) + " s" +
                   std::to_string(splits) + "]",
               timer->MedianUs([&] { LAUNCH_CHECK(hyla::kernels::SkinnyGemmBf16(q, nullptr)); }),
               bytes);
      }
    }
  }
  if (const BenchCublas* cublas = LoadBenchCublas(); cublas != nullptr) {
    const float alpha = 1.0f, beta = 0.0f;
    auto run = [&] {
      const cublasStatus_t st = cublas->gemm_ex(
          cublas->handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, x,
          CUDA_R_16BF, k, &beta, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      if (st != CUBLAS_STATUS_SUCCESS) {
        std::fprintf(stderr, "cublasGemmEx failed: %d\n", static_cast<int>(st));
        std::exit(1);
      }
    };
    run();
    BENCH_CHECK(cudaDeviceSynchronize());
    const double rel = RelDiff(y, y_ref, y_count);
    std::printf("  check cublas vs skinny: rel %.2e%s\n", rel, rel <= 1e-3 ? "" : " FAIL");
    Report("cublas bf16 m " + std::to_string(m) + " n " + std::to_string(n) + " k " +
               std::to_string(k),
           timer->MedianUs(run), bytes);
  }
  BENCH_CHECK(cudaFree(w));
  BENCH_CHECK(cudaFree(x));
  BENCH_CHECK(cudaFree(y));
  BENCH_CHECK(cudaFree(y_ref));
}

// The GEMM tuner of runtime/cuda/gemm.cc Linear (cuBLASLt algorithm per shape by timing), on the
// legacy default stream as the timer, for the "cublaslt tuned" rows. nullptr when cuBLAS or
// cuBLASLt cannot be loaded (rows skipped).
hyla::cuda::GemmTuner* BenchGemmTuner() {
  static hyla::cuda::GemmTuner* tuner = []() -> hyla::cuda::GemmTuner* {
    const BenchCublas* cublas = LoadBenchCublas();
    if (cublas == nullptr) return nullptr;
    int device = 0;
    BENCH_CHECK(cudaGetDevice(&device));
    constexpr size_t kWorkspace = size_t{32} << 20;  // as DeviceContext's
    hyla::cuda::GemmTunerOptions o;
    o.verbose = true;  // the plans and rejected candidates go to stderr
    absl::StatusOr<std::unique_ptr<hyla::cuda::GemmTuner>> t = hyla::cuda::GemmTuner::Create(
        device, nullptr, cublas->handle, DeviceAlloc(kWorkspace), kWorkspace, o);
    if (!t.ok()) {
      std::printf("GEMM tuner unavailable (%s): no cublaslt rows\n", t.status().ToString().c_str());
      return nullptr;
    }
    return t->release();
  }();
  return tuner;
}

// "cublaslt tuned bf16 m M n N k K [<plan>]": y[m, n] = x[m, k]·Wᵀ through GemmTuner::Run as
// Linear runs it (the first call tunes; the timed calls run the plan), bytes W + x + y as the
// cublas rows. with_cublas: also the "cublas bf16 ..." row of the same shape (cublasGemmEx
// default). Checks the tuned output against a CPU double reference on 64 columns spread over n
// (rel = max |diff| / max |ref|; FAIL above 1e-3) and prints it.
void BenchTunedGemm(Timer* timer, int m, int n, int k, bool with_cublas) {
  hyla::cuda::GemmTuner* tuner = BenchGemmTuner();
  if (tuner == nullptr) return;
  const size_t w_bytes = size_t{2} * n * k, x_bytes = size_t{2} * m * k;
  const size_t y_count = size_t{1} * m * n;
  auto* w = static_cast<uint16_t*>(DeviceAlloc(w_bytes));
  auto* x = static_cast<uint16_t*>(DeviceAlloc(x_bytes));
  auto* y = static_cast<float*>(DeviceAlloc(y_count * 4));
  FillRandom(w, w_bytes, true, 21);
  FillRandom(x, x_bytes, true, 22);
  const double bytes = static_cast<double>(w_bytes + x_bytes + y_count * 4);
  const std::string shape =
      "bf16 m " + std::to_string(m) + " n " + std::to_string(n) + " k " + std::to_string(k);
  hyla::cuda::Bf16GemmArgs g;
  g.out = n;
  g.rows = m;
  g.in = k;
  g.w = w;
  g.x = x;
  g.y = y;
  auto run = [&] {
    const absl::Status st = tuner->Run(g);
    if (!st.ok()) {
      std::fprintf(stderr, "GemmTuner::Run: %s\n", st.ToString().c_str());
      std::exit(1);
    }
  };
  BENCH_CHECK(cudaMemset(y, 0xFF, y_count * 4));
  run();  // tunes (synchronizes), leaves the product in y
  BENCH_CHECK(cudaDeviceSynchronize());
  {
    std::vector<uint16_t> hx(static_cast<size_t>(m) * k), hw(k);
    std::vector<float> hy(y_count);
    BENCH_CHECK(cudaMemcpy(hx.data(), x, x_bytes, cudaMemcpyDeviceToHost));
    BENCH_CHECK(cudaMemcpy(hy.data(), y, y_count * 4, cudaMemcpyDeviceToHost));
    auto bf = [](uint16_t h) {
      const uint32_t bits = static_cast<uint32_t>(h) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return static_cast<double>(f);
    };
    double max_diff = 0.0, max_ref = 0.0;
    for (int c = 0; c < 64; ++c) {
      const int j = static_cast<int>(static_cast<int64_t>(c) * (n - 1) / 63);
      BENCH_CHECK(cudaMemcpy(hw.data(), w + static_cast<size_t>(j) * k, size_t{2} * k,
                             cudaMemcpyDeviceToHost));
      for (int i = 0; i < m; ++i) {
        double ref = 0.0;
        for (int kk = 0; kk < k; ++kk) ref += bf(hx[static_cast<size_t>(i) * k + kk]) * bf(hw[kk]);
        max_ref = std::max(max_ref, std::fabs(ref));
        const double got = hy[static_cast<size_t>(i) * n + j];
        max_diff = std::isnan(got) ? INFINITY : std::max(max_diff, std::fabs(ref - got));
      }
    }
    const double rel = max_ref > 0 ? max_diff / max_ref : max_diff;
    std::printf("  check cublaslt tuned %s vs CPU: rel %.2e%s\n", shape.c_str(), rel,
                rel <= 1e-3 ? "" : " FAIL");
  }
  const std::string plan = tuner->PlanName(g);
  Report("cublaslt tuned " + shape + " [" + plan.substr(0, plan.find(" (")) + "]",
         timer->MedianUs(run), bytes);
  std::printf("  plan cublaslt tuned %s: %s\n", shape.c_str(), plan.c_str());
  if (with_cublas) {
    const BenchCublas* cublas = LoadBenchCublas();
    const float alpha = 1.0f, beta = 0.0f;
    Report("cublas " + shape, timer->MedianUs([&] {
      const cublasStatus_t st = cublas->gemm_ex(
          cublas->handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, x,
          CUDA_R_16BF, k, &beta, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      if (st != CUBLAS_STATUS_SUCCESS) {
        std::fprintf(stderr, "cublasGemmEx failed: %d\n", static_cast<int>(st));
        std::exit(1);
      }
    }),
           bytes);
  }
  BENCH_CHECK(cudaFree(w));
  BENCH_CHECK(cudaFree(x));
  BENCH_CHECK(cudaFree(y));
}

// The qwen3next-1b decode GEMM shapes (as BenchSkinnyGemms) through the GEMM tuner: batch 64 next
// to the cublas rows of BenchSkinnyGemm, and batch 1, 8 and 32 with their own cublas rows
// (kernels_bench --gemm: only these, after the copy bandwidth).
void BenchTunedGemms(Timer* timer) {
  const std::pair<int, int> shapes[] = {{12352, 2048}, {5632, 2048}, {2048, 2816}, {2048, 4096},
                                        {2560, 2048},  {2048, 2048}, {32000, 2048}};
  for (const int m : {64, 1, 8, 32}) {
    for (const auto& [n, k] : shapes) BenchTunedGemm(timer, m, n, k, /*with_cublas=*/m != 64);
  }
}

// The decode GEMMs of qwen3next-1b at batch 64 (GDN in-proj, MLP gate|up, MLP down, GDN
// out-proj, attention q|k|v, attention o, LM head), every variant; two at batch 1 and 16.
void BenchSkinnyGemms(Timer* timer) {
  const std::pair<int, int> shapes[] = {{12352, 2048}, {5632, 2048}, {2048, 2816}, {2048, 4096},
                                        {2560, 2048},  {2048, 2048}, {32000, 2048}};
  for (const auto& [n, k] : shapes) BenchSkinnyGemm(timer, 64, n, k, /*all_variants=*/true);
  for (const int m : {1, 16}) {
    BenchSkinnyGemm(timer, m, 12352, 2048, false);
    BenchSkinnyGemm(timer, m, 2048, 2048, false);
  }
}

// ---- Decode-step norms and elementwise ops (qwen3next-1b at batch 64) ------------------------
// Every launch shape of ResidualRmsNorm, GatedRmsNorm, SiluMulToBf16 and ShortConvDecode on the
// same buffers; each variant's outputs are checked against the first version's (kLoop, kScalar,
// kGridStride, kScalar: the GPU tests check those against the CPU) before it is timed.

// max |a − b| / max |b| over n fp32 (or bf16 when bf16) values of two device buffers.
double RelDiffAny(const void* a, const void* b, size_t n, bool bf16) {
  std::vector<float> ha(n), hb(n);
  if (bf16) {
    std::vector<uint16_t> ra(n), rb(n);
    BENCH_CHECK(cudaMemcpy(ra.data(), a, n * 2, cudaMemcpyDeviceToHost));
    BENCH_CHECK(cudaMemcpy(rb.data(), b, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) {
      const uint32_t ba = static_cast<uint32_t>(ra[i]) << 16, bb = static_cast<uint32_t>(rb[i])
                                                                   << 16;
      std::memcpy(&ha[i], &ba, 4);
      std::memcpy(&hb[i], &bb, 4);
    }
  } else {
    BENCH_CHECK(cudaMemcpy(ha.data(), a, n * 4, cudaMemcpyDeviceToHost));
    BENCH_CHECK(cudaMemcpy(hb.data(), b, n * 4, cudaMemcpyDeviceToHost));
  }
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < n; ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(ha[i]) - hb[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(hb[i])));
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

void PrintCheck(const std::string& name, double rel, double bound) {
  std::printf("  check %s vs first version: rel %.2e%s\n", name.c_str(), rel,
              rel <= bound ? "" : " FAIL");
}

// ResidualRmsNorm [rows, n] with the add; with_f32: the mixer norm (fp32 and bf16 outputs), else
// the MLP norm (bf16 only). h is reset from a saved copy before each variant's check.
void BenchResidualRmsNorm(Timer* timer, int rows, int n, bool with_f32) {
  namespace k = hyla::kernels;
  const size_t count = static_cast<size_t>(rows) * n;
  auto* h0 = static_cast<float*>(DeviceAlloc(count * 4));
  auto* h = static_cast<float*>(DeviceAlloc(count * 4));
  auto* add = static_cast<float*>(DeviceAlloc(count * 4));
  auto* w = static_cast<float*>(DeviceAlloc(size_t{4} * n));
  auto* f32 = static_cast<float*>(DeviceAlloc(count * 4));
  auto* f32_ref = static_cast<float*>(DeviceAlloc(count * 4));
  auto* b16 = static_cast<uint16_t*>(DeviceAlloc(count * 2));
  auto* b16_ref = static_cast<uint16_t*>(DeviceAlloc(count * 2));
  FillRandom(h0, count * 4, false, 21);
  FillRandom(add, count * 4, false, 22);
  FillRandom(w, size_t{4} * n, false, 23);
  const double bytes = count * (4.0 * 3 + 2.0 + (with_f32 ? 4.0 : 0.0)) + 4.0 * n;
  const std::string base = "residual_rmsnorm " + std::to_string(rows) + "x" + std::to_string(n) +
                           (with_f32 ? " f32+bf16" : " bf16");
  const std::pair<k::ResidualRmsNormVariant, const char*> variants[] = {
      {k::ResidualRmsNormVariant::kLoop, "loop"},
      {k::ResidualRmsNormVariant::kRegs, "regs"},
      {k::ResidualRmsNormVariant::kRegs256, "regs256"},
      {k::ResidualRmsNormVariant::kCluster2, "cluster2"},
      {k::ResidualRmsNormVariant::kCluster4, "cluster4"},
      {k::ResidualRmsNormVariant::kDefault, "default"}};
  for (const auto& [variant, vname] : variants) {
    k::ResidualRmsNormParams p;
    p.rows = rows;
    p.n = n;
    p.h = h;
    p.add = add;
    p.weight = w;
    p.eps = 1e-6f;
    p.out_f32 = with_f32 ? f32 : nullptr;
    p.out_bf16 = b16;
    p.variant = variant;
    BENCH_CHECK(cudaMemcpy(h, h0, count * 4, cudaMemcpyDeviceToDevice));
    LAUNCH_CHECK(k::ResidualRmsNorm(p, nullptr));
    BENCH_CHECK(cudaDeviceSynchronize());
    const std::string name = base + " [" + vname + "]";
    if (variant == k::ResidualRmsNormVariant::kLoop) {
      BENCH_CHECK(cudaMemcpy(b16_ref, b16, count * 2, cudaMemcpyDeviceToDevice));
      if (with_f32) BENCH_CHECK(cudaMemcpy(f32_ref, f32, count * 4, cudaMemcpyDeviceToDevice));
    } else {
      PrintCheck(name + " bf16", RelDiffAny(b16, b16_ref, count, true), 1e-2);
      if (with_f32) PrintCheck(name + " f32", RelDiffAny(f32, f32_ref, count, false), 1e-5);
    }
    Report(name, timer->MedianUs([&] { LAUNCH_CHECK(k::ResidualRmsNorm(p, nullptr)); }), bytes);
  }
  for (void* ptr : std::initializer_list<void*>{h0, h, add, w, f32, f32_ref, b16, b16_ref}) {
    BENCH_CHECK(cudaFree(ptr));
  }
}

// GatedRmsNorm of the GDN output: rows x heads x n, the gate inside the projection rows (stride
// gate_stride), out in place over x (as gdn_common.cc does), and the bf16 copy.
void BenchGatedRmsNorm(Timer* timer, int rows, int heads, int n, int64_t gate_stride) {
  namespace k = hyla::kernels;
  const int64_t width = int64_t{heads} * n;
  const size_t count = static_cast<size_t>(rows * width);
  auto* x0 = static_cast<float*>(DeviceAlloc(count * 4));
  auto* x = static_cast<float*>(DeviceAlloc(count * 4));
  auto* g = static_cast<float*>(DeviceAlloc(static_cast<size_t>(rows * gate_stride) * 4));
  auto* w = static_cast<float*>(DeviceAlloc(size_t{4} * n));
  auto* ref = static_cast<float*>(DeviceAlloc(count * 4));
  auto* b16 = static_cast<uint16_t*>(DeviceAlloc(count * 2));
  FillRandom(x0, count * 4, false, 31);
  FillRandom(g, static_cast<size_t>(rows * gate_stride) * 4, false, 32);
  FillRandom(w, size_t{4} * n, false, 33);
  const double bytes = count * (4.0 * 3 + 2.0) + 4.0 * n;
  const std::string base = "gated_rmsnorm " + std::to_string(rows) + "x" + std::to_string(heads) +
                           "x" + std::to_string(n);
  const std::pair<k::GatedRmsNormVariant, const char*> variants[] = {
      {k::GatedRmsNormVariant::kScalar, "scalar"},
      {k::GatedRmsNormVariant::kVec, "vec"},
      {k::GatedRmsNormVariant::kDefault, "default"}};
  for (const auto& [variant, vname] : variants) {
    k::GatedRmsNormParams p;
    p.rows = rows;
    p.heads = heads;
    p.n = n;
    p.x = x;
    p.x_stride = width;
    p.gate = g;
    p.gate_stride = gate_stride;
    p.weight = w;
    p.eps = 1e-6f;
    p.out = x;
    p.out_stride = width;
    p.out_bf16 = b16;
    p.variant = variant;
    BENCH_CHECK(cudaMemcpy(x, x0, count * 4, cudaMemcpyDeviceToDevice));
    LAUNCH_CHECK(k::GatedRmsNorm(p, nullptr));
    BENCH_CHECK(cudaDeviceSynchronize());
    const std::string name = base + " [" + vname + "]";
    if (variant == k::GatedRmsNormVariant::kScalar) {
      BENCH_CHECK(cudaMemcpy(ref, x, count * 4, cudaMemcpyDeviceToDevice));
    } else {
      PrintCheck(name, RelDiffAny(x, ref, count, false), 1e-5);
    }
    // In place: each timed launch normalises the previous output again (same traffic).
    Report(name, timer->MedianUs([&] { LAUNCH_CHECK(k::GatedRmsNorm(p, nullptr)); }), bytes);
  }
  for (void* ptr : std::initializer_list<void*>{x0, x, g, w, ref, b16}) BENCH_CHECK(cudaFree(ptr));
}

// SiluMulToBf16 over a fused gate|up projection [rows, 2n].
void BenchSiluMulToBf16(Timer* timer, int rows, int n) {
  namespace k = hyla::kernels;
  const size_t count = static_cast<size_t>(rows) * n;
  auto* gu = static_cast<float*>(DeviceAlloc(count * 8));
  auto* out = static_cast<uint16_t*>(DeviceAlloc(count * 2));
  auto* ref = static_cast<uint16_t*>(DeviceAlloc(count * 2));
  FillRandom(gu, count * 8, false, 41);
  const double bytes = count * (8.0 + 2.0);
  const std::string base = "silu_mul_bf16 " + std::to_string(rows) + "x" + std::to_string(n);
  const std::pair<k::SiluMulVariant, const char*> variants[] = {
      {k::SiluMulVariant::kGridStride, "grid-stride"},
      {k::SiluMulVariant::kRowGrid, "row-grid"},
      {k::SiluMulVariant::kRowGrid2, "row-grid2"},
      {k::SiluMulVariant::kDefault, "default"}};
  for (const auto& [variant, vname] : variants) {
    const std::string name = base + " [" + vname + "]";
    auto run = [&, v = variant] { LAUNCH_CHECK(k::SiluMulToBf16(gu, rows, n, out, nullptr, v)); };
    run();
    BENCH_CHECK(cudaDeviceSynchronize());
    if (variant == k::SiluMulVariant::kGridStride) {
      BENCH_CHECK(cudaMemcpy(ref, out, count * 2, cudaMemcpyDeviceToDevice));
    } else {
      PrintCheck(name, RelDiffAny(out, ref, count, true), 0.0);
    }
    Report(name, timer->MedianUs(run), bytes);
  }
  for (void* ptr : std::initializer_list<void*>{gu, out, ref}) BENCH_CHECK(cudaFree(ptr));
}

// ShortConvDecode, fp32, K taps, num_seqs rows of C channels read from projection rows of
// x_stride, slots spread over a pool of 4 · num_seqs (tails of (K − 1) · C fp32 per slot).
void BenchShortConvDecode(Timer* timer, int num_seqs, int channels, int kernel, int64_t x_stride) {
  namespace k = hyla::kernels;
  const int64_t tail_stride = int64_t{kernel - 1} * channels;
  const int slots_n = 4 * num_seqs;
  auto* x = static_cast<float*>(DeviceAlloc(static_cast<size_t>(num_seqs * x_stride) * 4));
  auto* w = static_cast<float*>(DeviceAlloc(static_cast<size_t>(channels) * kernel * 4));
  auto* tail0 = static_cast<float*>(DeviceAlloc(static_cast<size_t>(slots_n * tail_stride) * 4));
  auto* tail = static_cast<float*>(DeviceAlloc(static_cast<size_t>(slots_n * tail_stride) * 4));
  auto* tail_ref = static_cast<float*>(DeviceAlloc(static_cast<size_t>(slots_n * tail_stride) * 4));
  const size_t out_n = static_cast<size_t>(num_seqs) * channels;
  auto* out = static_cast<float*>(DeviceAlloc(out_n * 4));
  auto* out_ref = static_cast<float*>(DeviceAlloc(out_n * 4));
  auto* slots = static_cast<int32_t*>(DeviceAlloc(static_cast<size_t>(num_seqs) * 4));
  FillRandom(x, static_cast<size_t>(num_seqs * x_stride) * 4, false, 51);
  FillRandom(w, static_cast<size_t>(channels) * kernel * 4, false, 52);
  FillRandom(tail0, static_cast<size_t>(slots_n * tail_stride) * 4, false, 53);
  std::vector<int32_t> hs(static_cast<size_t>(num_seqs));
  for (int i = 0; i < num_seqs; ++i) hs[static_cast<size_t>(i)] = (i * 7 + 3) % slots_n;
  BENCH_CHECK(cudaMemcpy(slots, hs.data(), hs.size() * 4, cudaMemcpyHostToDevice));
  // x and out once, the tail read and written, the weights once.
  const double bytes = out_n * (4.0 + 4.0 + 8.0 * (kernel - 1)) + 4.0 * channels * kernel;
  const std::string base = "short_conv_decode f32 " + std::to_string(num_seqs) + "x" +
                           std::to_string(channels) + " K" + std::to_string(kernel);
  const std::pair<k::ShortConvDecodeVariant, const char*> variants[] = {
      {k::ShortConvDecodeVariant::kScalar, "scalar"},
      {k::ShortConvDecodeVariant::kVec4, "vec4"},
      {k::ShortConvDecodeVariant::kDefault, "default"}};
  for (const auto& [variant, vname] : variants) {
    k::ShortConvDecodeParams p;
    p.num_seqs = num_seqs;
    p.channels = channels;
    p.kernel = kernel;
    p.dtype = k::KernelDType::kF32;
    p.x = x;
    p.x_stride = x_stride;
    p.weight = w;
    p.slots = slots;
    p.tail = tail;
    p.tail_slot_stride = tail_stride;
    p.silu = true;
    p.out = out;
    p.out_stride = channels;
    p.variant = variant;
    const size_t tail_bytes = static_cast<size_t>(slots_n * tail_stride) * 4;
    BENCH_CHECK(cudaMemcpy(tail, tail0, tail_bytes, cudaMemcpyDeviceToDevice));
    LAUNCH_CHECK(k::ShortConvDecode(p, nullptr));
    BENCH_CHECK(cudaDeviceSynchronize());
    const std::string name = base + " [" + vname + "]";
    if (variant == k::ShortConvDecodeVariant::kScalar) {
      BENCH_CHECK(cudaMemcpy(out_ref, out, out_n * 4, cudaMemcpyDeviceToDevice));
      BENCH_CHECK(cudaMemcpy(tail_ref, tail, tail_bytes, cudaMemcpyDeviceToDevice));
    } else {
      PrintCheck(name + " out", RelDiffAny(out, out_ref, out_n, false), 1e-6);
      PrintCheck(name + " tail", RelDiffAny(tail, tail_ref, tail_bytes / 4, false), 0.0);
    }
    Report(name, timer->MedianUs([&] { LAUNCH_CHECK(k::ShortConvDecode(p, nullptr)); }), bytes);
  }
  for (void* ptr : std::initializer_list<void*>{x, w, tail0, tail, tail_ref, out, out_ref, slots}) {
    BENCH_CHECK(cudaFree(ptr));
  }
}

// The decode-step shapes of qwen3next-1b at batch 64 (and batch 1 / 256 for the norm).
void BenchDecodeNorms(Timer* timer) {
  for (const int rows : {64, 1, 256}) {
    BenchResidualRmsNorm(timer, rows, 2048, /*with_f32=*/true);
    BenchResidualRmsNorm(timer, rows, 2048, /*with_f32=*/false);
  }
  // GDN output norm: HV 32 x dv 128, gate at column 8192 of the 12352-wide projection rows.
  BenchGatedRmsNorm(timer, 64, 32, 128, 12352);
  BenchSiluMulToBf16(timer, 64, 2816);
  // q|k|v conv channels 2·16·128 + 32·128 = 8192 read from the 12352-wide projection rows.
  BenchShortConvDecode(timer, 64, 8192, 4, 12352);
}

// Rope at the qwen3next-1b decode shape: rows x (q_heads + k_heads) x head_dim fp32 in the q|k|v
// projection rows (stride (q_heads + 2·k_heads)·head_dim), positions around `pos`; every
// kernels::RopeVariant (" [<variant>]"), each checked against a CPU rotation (max abs error,
// FAIL above 1e-4). Bytes: the rotated q and k read and written.
void BenchRope(Timer* timer, int rows, int q_heads, int k_heads, int head_dim, int pos) {
  const int rotary = head_dim;
  const int64_t stride = int64_t{q_heads + 2 * k_heads} * head_dim;
  const size_t count = static_cast<size_t>(rows * stride);
  std::vector<float> host(count);
  std::mt19937 rng(21);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : host) v = dist(rng);
  std::vector<float> inv(static_cast<size_t>(rotary / 2));
  for (int i = 0; i < rotary / 2; ++i) {
    inv[static_cast<size_t>(i)] =
        1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / static_cast<float>(rotary));
  }
  std::vector<int32_t> positions(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) positions[static_cast<size_t>(r)] = pos + 37 * r;
  std::vector<float> want = host;
  for (int r = 0; r < rows; ++r) {
    for (int h = 0; h < q_heads + k_heads; ++h) {
      float* x = want.data() + r * stride + int64_t{h} * head_dim;
      for (int i = 0; i < rotary / 2; ++i) {
        const float angle =
            static_cast<float>(positions[static_cast<size_t>(r)]) * inv[static_cast<size_t>(i)];
        const float c = std::cos(angle), sn = std::sin(angle);
        const float a = x[i], b = x[i + rotary / 2];
        x[i] = a * c - b * sn;
        x[i + rotary / 2] = b * c + a * sn;
      }
    }
  }
  auto* qkv = static_cast<float*>(DeviceAlloc(count * 4));
  auto* d_inv = static_cast<float*>(DeviceAlloc(inv.size() * 4));
  auto* d_pos = static_cast<int32_t*>(DeviceAlloc(positions.size() * 4));
  BENCH_CHECK(cudaMemcpy(d_inv, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(d_pos, positions.data(), positions.size() * 4, cudaMemcpyHostToDevice));
  hyla::kernels::RopeParams p;
  p.rows = rows;
  p.head_dim = head_dim;
  p.rotary_dim = rotary;
  p.q = qkv;
  p.q_stride = stride;
  p.q_heads = q_heads;
  p.k = qkv + int64_t{q_heads} * head_dim;
  p.k_stride = stride;
  p.k_heads = k_heads;
  p.inv_freq = d_inv;
  p.row_pos = d_pos;
  const std::string name = "rope f32 rows " + std::to_string(rows) + " heads " +
                           std::to_string(q_heads) + "+" + std::to_string(k_heads) + " d " +
                           std::to_string(head_dim);
  const double bytes = 2.0 * rows * (q_heads + k_heads) * head_dim * 4;
  const std::pair<hyla::kernels::RopeVariant, const char*> variants[] = {
      {hyla::kernels::RopeVariant::kAuto, ""},
      {hyla::kernels::RopeVariant::kPerElement, " [per-element]"},
      {hyla::kernels::RopeVariant::kSharedAngleScalar, " [shared-angle]"},
      {hyla::kernels::RopeVariant::kSharedAngleVec4, " [shared-angle-vec4]"},
  };
  for (const auto& [variant, suffix] : variants) {
    p.variant = variant;
    BENCH_CHECK(cudaMemcpy(qkv, host.data(), count * 4, cudaMemcpyHostToDevice));
    LAUNCH_CHECK(hyla::kernels::Rope(p, nullptr));
    std::vector<float> got(count);
    BENCH_CHECK(cudaMemcpy(got.data(), qkv, count * 4, cudaMemcpyDeviceToHost));
    double err = 0.0;
    for (size_t i = 0; i < count; ++i) {
      err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
      if (std::isnan(got[i])) err = INFINITY;
    }
    std::printf("  check %s%s vs CPU: max abs %.2e%s\n", name.c_str(), suffix, err,
                err <= 1e-4 ? "" : " FAIL");
    // Timed in place on the rotated data (the values grow no larger: rotations).
    Report(name + suffix, timer->MedianUs([&] { LAUNCH_CHECK(hyla::kernels::Rope(p, nullptr)); }),
           bytes);
  }
  for (void* ptr : std::initializer_list<void*>{qkv, d_inv, d_pos}) BENCH_CHECK(cudaFree(ptr));
}

// SampleRows at the decode shape: rows x vocab fp32 logits (N(0, 2) with a few peaked ids per
// row), out of place, one sampling mode for all rows (greedy; temperature 1 = the engine's
// default SamplingParams, as the end-to-end "sample" mode; top-k 50; top-p 0.9; top-k 50 +
// top-p 0.9 + min-p 0.05; temperature 1 with 20 alternatives), every cluster size (" [c<C>]"; the
// default row uses SampleRowsClusterFor) and the default without the exp cache (" [no exp cache]").
// Tokens of every variant are compared with cluster 1's (the sums' association differs, so a row at
// a rounding boundary may differ: printed, not a failure). Bytes: logits read + processed logits
// written.
void BenchSampleRows(Timer* timer, int rows, int vocab) {
  const size_t count = static_cast<size_t>(rows) * vocab;
  std::vector<float> host(count);
  std::mt19937 rng(31);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::uniform_int_distribution<int> any(0, vocab - 1);
  for (float& v : host) v = dist(rng);
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < 4; ++j) host[static_cast<size_t>(r) * vocab + any(rng)] = 12.0f + j;
  }
  auto* logits = static_cast<float*>(DeviceAlloc(count * 4));
  auto* work = static_cast<float*>(DeviceAlloc(count * 4));
  BENCH_CHECK(cudaMemcpy(logits, host.data(), count * 4, cudaMemcpyHostToDevice));
  auto* d_params = static_cast<hyla::kernels::SamplingRowParams*>(
      DeviceAlloc(sizeof(hyla::kernels::SamplingRowParams) * rows));
  auto* d_offsets = static_cast<int32_t*>(DeviceAlloc(4 * (rows + 1)));
  BENCH_CHECK(cudaMemset(d_offsets, 0, 4 * (rows + 1)));
  auto* d_out = static_cast<hyla::kernels::SampledRow*>(
      DeviceAlloc(sizeof(hyla::kernels::SampledRow) * rows));
  struct Mode {
    const char* name;
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    int num_top;
  };
  const Mode modes[] = {{"greedy", 0.0f, 0, 1.0f, 0.0f, 0},
                        {"temperature 1", 1.0f, 0, 1.0f, 0.0f, 0},
                        {"top-k 50", 1.0f, 50, 1.0f, 0.0f, 0},
                        {"top-p 0.9", 1.0f, 0, 0.9f, 0.0f, 0},
                        {"top-k 50 top-p 0.9 min-p 0.05", 1.0f, 50, 0.9f, 0.05f, 0},
                        {"temperature 1 logprobs 20", 1.0f, 0, 1.0f, 0.0f, 20}};
  const double bytes = 2.0 * static_cast<double>(count) * 4;
  for (const Mode& m : modes) {
    std::vector<hyla::kernels::SamplingRowParams> params(static_cast<size_t>(rows));
    for (int r = 0; r < rows; ++r) {
      hyla::kernels::SamplingRowParams& kp = params[static_cast<size_t>(r)];
      kp.temperature = m.temperature;
      kp.top_k = m.top_k;
      kp.top_p = m.top_p;
      kp.min_p = m.min_p;
      kp.num_top = m.num_top;
      kp.uniform = (r + 0.5) / rows;
    }
    BENCH_CHECK(
        cudaMemcpy(d_params, params.data(), sizeof(params[0]) * rows, cudaMemcpyHostToDevice));
    hyla::kernels::SampleRowsParams a;
    a.rows = rows;
    a.vocab = vocab;
    a.logits = logits;
    a.logits_stride = vocab;
    a.work = work;
    a.work_stride = vocab;
    a.params = d_params;
    a.history_offsets = d_offsets;
    a.history = nullptr;
    a.out = d_out;
    const std::string name = "sample_rows " + std::string(m.name) + " rows " +
                             std::to_string(rows) + " vocab " + std::to_string(vocab);
    std::vector<int32_t> ref_tokens;
    // Cluster -1: the default cluster size without the exp cache.
    for (const int cluster : {0, 1, 2, 4, 8, 16, -1}) {
      a.cluster = std::max(cluster, 0);
      a.exp_cache = cluster >= 0;
      const int err = hyla::kernels::SampleRows(a, nullptr);
      const std::string label = name + (cluster == 0  ? std::string()
                                        : cluster < 0 ? std::string(" [no exp cache]")
                                                      : " [c" + std::to_string(cluster) + "]");
      if (err != 0) {
        std::printf("  %s: %s\n", label.c_str(), hyla::kernels::KernelErrorString(err));
        (void)cudaGetLastError();
        continue;
      }
      BENCH_CHECK(cudaDeviceSynchronize());
      std::vector<hyla::kernels::SampledRow> out(static_cast<size_t>(rows));
      BENCH_CHECK(cudaMemcpy(out.data(), d_out, sizeof(out[0]) * rows, cudaMemcpyDeviceToHost));
      std::vector<int32_t> tokens;
      for (const auto& o : out) tokens.push_back(o.token);
      if (cluster == 1) ref_tokens = tokens;
      if (m.temperature == 0.0f) {  // greedy: the argmax on the host
        int bad = 0;
        for (int r = 0; r < rows; ++r) {
          const float* x = host.data() + static_cast<size_t>(r) * vocab;
          const int want = static_cast<int>(std::max_element(x, x + vocab) - x);
          if (tokens[static_cast<size_t>(r)] != want) ++bad;
        }
        std::printf("  check %s greedy vs host argmax: %d rows differ%s\n", label.c_str(), bad,
                    bad == 0 ? "" : " FAIL");
      }
      Report(label, timer->MedianUs([&] { LAUNCH_CHECK(hyla::kernels::SampleRows(a, nullptr)); }),
             bytes);
      if (cluster != 1 && !ref_tokens.empty()) {
        int differ = 0;
        for (int r = 0; r < rows; ++r) {
          differ += tokens[static_cast<size_t>(r)] != ref_tokens[static_cast<size_t>(r)];
        }
        std::printf("  tokens %s vs [c1]: %d of %d rows differ\n", label.c_str(), differ, rows);
      }
    }
  }
  for (void* ptr : std::initializer_list<void*>{logits, work, d_params, d_offsets, d_out}) {
    BENCH_CHECK(cudaFree(ptr));
  }
}

// The decode-step rope and sampling rows of qwen3next-1b at batch 64 (--decode-misc: only these).
void BenchDecodeRopeSampling(Timer* timer) {
  BenchRope(timer, 64, 16, 2, 128, 1024);
  BenchSampleRows(timer, 64, 32000);
  BenchSampleRows(timer, 1, 32000);
  BenchSampleRows(timer, 64, 151936);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    std::printf("kernels_bench: no CUDA device\n");
    return 0;
  }
  std::printf("device: %s, %d SMs, L2 %d MiB, %zu MiB memory\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, prop.totalGlobalMem >> 20);
  Timer timer;
  g_copy_gbs = CopyBandwidth(&timer);
  if (argc > 1 && std::strcmp(argv[1], "--gemm") == 0) {
    BenchTunedGemms(&timer);  // only the cuBLASLt-tuned GEMM rows and their cublas rows
    return 0;
  }

  // Decode-step rope and sampling (qwen3next-1b, batch 64); --decode-misc: only these.
  if (argc > 1 && std::strcmp(argv[1], "--decode-misc") == 0) {
    BenchDecodeRopeSampling(&timer);
    return 0;
  }
  // Decode-step norms / elementwise / short conv, every launch shape; --norms: only these.
  if (argc > 1 && std::strcmp(argv[1], "--norms") == 0) {
    BenchDecodeNorms(&timer);
    return 0;
  }
  // GDN prefill at the fla comparison shape, every variant; --gdn-prefill: only these.
  // --gdn-prefill-once: one row, kFusedCols32Split2Solve2 (launch 1 and the state pass each as
  // one launch over every piece), for a profiler.
  if (argc > 1 && std::strcmp(argv[1], "--gdn-prefill") == 0) {
    BenchGdnPrefill(&timer, 4, 4096, 8, 16, 128, 128, true);
    BenchGdnPrefill(&timer, 1, 32768, 16, 32, 128, 128, true, true);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--gdn-prefill-once") == 0) {
    BenchGdnPrefill(&timer, 1, 32768, 16, 32, 128, 128, true, false,
                    hyla::kernels::GdnPrefillMmaVariant::kFusedCols32Split2Solve2);
    return 0;
  }
  // Skinny GEMMs (decode batches) against cuBLAS; --skinny: only these.
  const bool skinny_only = argc > 1 && std::strcmp(argv[1], "--skinny") == 0;
  BenchSkinnyGemms(&timer);
  BenchTunedGemms(&timer);  // the cuBLASLt-tuned rows (--gemm: only these)
  if (skinny_only) return 0;

  // GDN decode: 2048, 4096, 8192 head-states of 128x128 fp32 (64 KiB each), every kernel variant.
  for (const bool bf16 : {true, false}) {
    for (const int seqs : {128, 256, 512}) {
      if (quick && seqs != 128) continue;
      BenchGdnDecode(&timer, seqs, 8, 16, 128, 128, bf16, /*all_variants=*/true);
    }
  }
  // Qwen3-Next shape (qwen3next-1b decode batch), 2048 head-states.
  BenchGdnDecode(&timer, 64, 16, 32, 128, 128, true, /*all_variants=*/true);
  BenchGdnDecode(&timer, 128, 4, 8, 256, 128, true, /*all_variants=*/true);  // dk 256

  // Paged decode at long context.
  BenchPagedDecode(&timer, 8, 32768, 32, 8, 128, true, 0, false, /*clean_l2=*/!quick);
  BenchPagedDecode(&timer, 1, 131072, 32, 8, 128, true, 0, false, /*clean_l2=*/!quick);
  BenchPagedDecode(&timer, 64, 4096, 32, 8, 128, true, 0);
  if (!quick) {
    BenchPagedDecode(&timer, 8, 16384, 32, 8, 128, false, 0, false, /*clean_l2=*/true);
    BenchPagedDecode(&timer, 4, 32768, 16, 2, 256, true, 0, /*backend=*/false, /*clean_l2=*/true);
    BenchPagedDecode(&timer, 16, 32768, 32, 8, 128, true, 4096, false, /*clean_l2=*/true);
  }
  // The Qwen3-Next-style hybrid's attention (the end-to-end benchmark's decode batch).
  for (const int ctx : {1024, 8192, 32768}) {
    BenchPagedDecode(&timer, 64, ctx, 16, 2, 128, true, 0, false, /*clean_l2=*/ctx >= 16384);
  }
  // ... as the backend launches it (fp32 queries, block_chunks), with clean-L2 rows beside.
  for (const int ctx : {1024, 8192}) {
    BenchPagedDecode(&timer, 64, ctx, 16, 2, 128, true, 0, /*backend=*/true, /*clean_l2=*/true);
  }

  // GDN prefill (compute-bound; for reference).
  BenchGdnPrefill(&timer, 4, 4096, 8, 16, 128, 128, true);
  BenchGdnPrefill(&timer, 1, 8192, 8, 16, 128, 128, false);
  // Issue 5's prefill target (peer: fla chunk_gated_delta_rule, bench/peers/peers_bench.py).
  // (all_variants: every tensor-core variant and the fp32 kernels, for comparison.)
  BenchGdnPrefill(&timer, 1, 32768, 16, 32, 128, 128, true, !quick);

  // Softmax prefill (peer: PyTorch SDPA flash): Llama3-8B attention, and qwen3next-1b's.
  BenchAttnPrefill(&timer, 4096, 32, 8, 128, true);
  if (!quick) BenchAttnPrefill(&timer, 32768, 32, 8, 128, true);
  BenchAttnPrefill(&timer, 32768, 16, 2, 128, true);

  BenchDecodeNorms(&timer);
  BenchDecodeRopeSampling(&timer);

  std::printf("\n%-58s %10s %10s %8s\n", "kernel", "us", "GB/s", "% copy");
  for (const Row& r : g_rows) {
    const double gbs = r.bytes / (r.us * 1e3);
    std::printf("%-58s %10.1f %10.1f %7.1f%%\n", r.name.c_str(), r.us, gbs,
                100.0 * gbs / g_copy_gbs);
  }
  return 0;
}
