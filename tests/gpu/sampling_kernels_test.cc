// Device sampling (kernels::SampleRows of kernels/ops.h, cuda::DeviceSampler of
// runtime/cuda/device_sampler.h) against the engine's CPU sampler (hyla::Sampler,
// runtime/engine/sampling.h), the reference: the same token ids, logprobs and top alternatives
// for the same logits and the same per-request random stream, over many random rows (vocab 1,
// 2, 31, 257, 32000, 151936; every parameter combination; ties, ±0, -inf, NaN, +inf, fp32
// overflow under temperature; prompt / output / suppressed histories; several steps per request).
//
// A differing token is accepted only at a rounding boundary: where a rounding-sensitive decision
// of the CPU sampler lies within 1e-6 of its threshold (the cumulative probability against
// u · total, a top-p prefix mass against top_p, a probability against min_p · max). The margins
// come from ReferenceSample, a direct transcription of Sampler::Sample that also records them; it
// must pick the CPU's token everywhere. Such boundary rows are counted and printed
// ("[sampling] ..."). Logprob errors are printed as "[gpu-error]" lines.
// Every cluster size (CTAs per row, SampleRowsParams::cluster) is run against the same reference.
// Label gpu; skipped without a CUDA device. *Sanitizer* cases are tiny (compute-sanitizer).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "runtime/cuda/device_context.h"
#include "runtime/cuda/device_sampler.h"
#include "runtime/engine/sampling.h"
#include "tests/gpu/gpu_test_util.h"

namespace hyla {
namespace {

using gpu_test::DeviceBuffer;
using gpu_test::GpuTest;
using gpu_test::ToDevice;
using gpu_test::ToHost;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();
constexpr double kBoundary = 1e-6;

double NextUniform(std::mt19937_64* rng) { return static_cast<double>((*rng)() >> 11) * 0x1.0p-53; }

// ---- the reference with margins --------------------------------------------------------------

struct Reference {
  std::vector<float> processed;  // logits after suppression, NaN, penalties (and temperature)
  int32_t token = -1;
  float logprob = 0.0f;
  bool used_uniform = false;
  // Smallest distance of a rounding-sensitive decision to its threshold: of the filters (top-p:
  // absolute probability mass; min-p: relative) and of the draw (cumulative weight against
  // u · total, relative to total).
  double filter_margin = INFINITY;
  double cdf_margin = INFINITY;
  double margin() const { return std::min(filter_margin, cdf_margin); }
};

std::vector<double> Probabilities(const std::vector<float>& x) {
  float max = kNegInf;
  for (float v : x) max = std::max(max, v);
  std::vector<double> p(x.size(), 0.0);
  if (!std::isfinite(max)) return p;
  double sum = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] != kNegInf) {
      p[i] = std::exp(static_cast<double>(x[i]) - max);
      sum += p[i];
    }
  }
  for (double& v : p) v /= sum;
  return p;
}

// Sampler::Sample, step by step (runtime/engine/sampling.cc), for a request whose prompt tokens
// are `in_prompt` [vocab] and output counts `counts` [vocab]; u is the uniform it would draw.
Reference ReferenceSample(const float* raw, int vocab, const SamplingParams& p,
                          const std::vector<uint8_t>& in_prompt, const std::vector<int32_t>& counts,
                          const std::vector<int32_t>& suppressed, double u) {
  Reference ref;
  std::vector<float> x(raw, raw + vocab);
  for (int32_t id : suppressed) {
    if (id >= 0 && id < vocab) x[id] = kNegInf;
  }
  for (float& v : x) {
    if (std::isnan(v)) v = kNegInf;
  }
  if (p.repetition_penalty != 1.0f) {
    const float r = p.repetition_penalty;
    for (int i = 0; i < vocab; ++i) {
      if (in_prompt[i] || counts[i] > 0) x[i] = x[i] > 0.0f ? x[i] / r : x[i] * r;
    }
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    for (int i = 0; i < vocab; ++i) {
      if (counts[i] > 0) {
        const float sub = p.frequency_penalty * static_cast<float>(counts[i]) + p.presence_penalty;
        x[i] -= sub;
      }
    }
  }
  auto log_softmax = [](std::vector<float>* y) {
    float max = kNegInf;
    for (float v : *y) max = std::max(max, v);
    if (!std::isfinite(max)) {
      std::fill(y->begin(), y->end(), kNegInf);
      return false;
    }
    double sum = 0.0;
    for (float v : *y) {
      if (v != kNegInf) sum += std::exp(static_cast<double>(v) - max);
    }
    const double log_norm = static_cast<double>(max) + std::log(sum);
    for (float& v : *y) {
      if (v != kNegInf) v = static_cast<float>(static_cast<double>(v) - log_norm);
    }
    return true;
  };
  if (p.temperature == 0.0f) {
    ref.processed = x;
    int32_t best = 0;
    for (int i = 1; i < vocab; ++i) {
      if (x[i] > x[best]) best = i;
    }
    log_softmax(&x);
    ref.token = best;
    ref.logprob = x[best];
    return ref;
  }
  const float inv_t = 1.0f / p.temperature;
  for (float& v : x) {
    if (v != kNegInf) v *= inv_t;
  }
  ref.processed = x;
  if (p.top_k > 0 && p.top_k < vocab) {
    std::vector<float> sorted = x;
    std::nth_element(sorted.begin(), sorted.begin() + (p.top_k - 1), sorted.end(),
                     std::greater<float>());
    const float kth = sorted[p.top_k - 1];
    for (float& v : x) {
      if (v < kth) v = kNegInf;
    }
  }
  if (p.top_p < 1.0f) {
    const std::vector<double> prob = Probabilities(x);
    std::vector<int32_t> order(x.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&x](int32_t a, int32_t b) { return x[a] > x[b]; });
    double above = 0.0;
    for (int32_t id : order) {
      ref.filter_margin =
          std::min(ref.filter_margin, std::fabs(above - static_cast<double>(p.top_p)));
      if (above >= p.top_p && above > 0.0) {
        x[id] = kNegInf;
      } else {
        above += prob[id];
      }
    }
  }
  if (p.min_p > 0.0f) {
    const std::vector<double> prob = Probabilities(x);
    const double top = *std::max_element(prob.begin(), prob.end());
    const double threshold = static_cast<double>(p.min_p) * top;
    for (int i = 0; i < vocab; ++i) {
      if (prob[i] > 0.0 && threshold > 0.0 && prob[i] != top) {  // the maxima stay on both sides
        ref.filter_margin = std::min(ref.filter_margin, std::fabs(prob[i] - threshold) / threshold);
      }
      if (prob[i] < threshold) x[i] = kNegInf;
    }
  }
  if (!log_softmax(&x)) {
    ref.token = 0;
    ref.logprob = kNegInf;
    ref.filter_margin = INFINITY;
    return ref;
  }
  ref.used_uniform = true;
  double total = 0.0;
  for (float v : x) {
    if (v != kNegInf) total += std::exp(static_cast<double>(v));
  }
  const double target = u * total;
  double cum = 0.0;
  int32_t pick = -1;
  int32_t last_possible = -1;
  for (int i = 0; i < vocab; ++i) {
    if (x[i] == kNegInf) continue;
    last_possible = i;
    cum += std::exp(static_cast<double>(x[i]));
    ref.cdf_margin = std::min(ref.cdf_margin, std::fabs(cum - target) / total);
    if (cum > target) {
      pick = i;
      break;
    }
  }
  if (pick < 0) pick = last_possible;
  ref.token = pick;
  ref.logprob = x[pick];
  return ref;
}

// ---- requests, logits, parameters ------------------------------------------------------------

// One request of the comparison: the CPU sampler (reference), its random stream mirrored, and
// the history the device side is given (prompt tokens, the CPU's outputs, suppressed ids).
struct Request {
  SamplingParams params;
  int num_top = 0;
  std::vector<int32_t> prompt;      // may hold ids outside the vocabulary (ignored)
  std::vector<int32_t> suppressed;  // may repeat ids, overlap the prompt, leave the vocabulary
  std::unique_ptr<Sampler> cpu;
  std::mt19937_64 stream;          // the CPU sampler's stream, advanced when it draws
  std::vector<uint8_t> in_prompt;  // [vocab]
  std::vector<int32_t> counts;     // [vocab] output counts (the CPU's tokens)
  bool diverged = false;           // DeviceSampler test: a boundary mismatch happened
};

float Pick(std::mt19937* rng, std::initializer_list<float> values) {
  std::uniform_int_distribution<size_t> d(0, values.size() - 1);
  return *(values.begin() + d(*rng));
}

SamplingParams RandomParams(std::mt19937* rng, int vocab) {
  SamplingParams p;
  std::uniform_real_distribution<float> coin(0.0f, 1.0f);
  p.temperature = coin(*rng) < 0.2f ? 0.0f : Pick(rng, {0.05f, 0.3f, 0.7f, 1.0f, 1.5f, 3.0f});
  if (coin(*rng) < 0.5f) {
    const int k =
        static_cast<int>(Pick(rng, {1.0f, 2.0f, 5.0f, 50.0f, -1.0f, 0.0f, 1.0f * 1000000, -2.0f}));
    p.top_k = k == -1 ? vocab - 1 : (k == -2 ? vocab : k);
  }
  if (coin(*rng) < 0.5f) p.top_p = Pick(rng, {0.999f, 0.9f, 0.5f, 0.1f, 0.001f, 1.0f});
  if (coin(*rng) < 0.4f) p.min_p = Pick(rng, {0.01f, 0.05f, 0.2f, 0.9f, 1.0f});
  if (coin(*rng) < 0.4f) p.repetition_penalty = Pick(rng, {1.3f, 0.7f, 2.0f, 1.05f});
  if (coin(*rng) < 0.4f) p.presence_penalty = Pick(rng, {0.5f, -1.0f, 2.0f});
  if (coin(*rng) < 0.4f) p.frequency_penalty = Pick(rng, {0.3f, -0.5f, 2.0f, -2.0f});
  p.seed = (static_cast<uint64_t>((*rng)()) << 32) ^ (*rng)();
  return p;
}

void InitRequest(Request* q, const SamplingParams& params, int vocab, std::mt19937* rng) {
  q->params = params;
  q->num_top = static_cast<int>(Pick(rng, {0.0f, 0.0f, 1.0f, 5.0f, 20.0f}));
  std::uniform_int_distribution<int> len(0, 40);
  std::uniform_int_distribution<int32_t> tok(0, vocab - 1);
  q->prompt.clear();
  const int n = len(*rng);
  for (int i = 0; i < n; ++i) q->prompt.push_back(tok(*rng));
  if (n > 0) {
    q->prompt.push_back(q->prompt[0]);  // a repeat
    q->prompt.push_back(vocab + 7);     // outside the vocabulary: ignored
    q->prompt.push_back(-3);
  }
  q->suppressed.clear();
  std::uniform_int_distribution<int> ns(0, 3);
  const int s = ns(*rng);
  for (int i = 0; i < s; ++i) q->suppressed.push_back(tok(*rng));
  if (s > 0 && !q->prompt.empty() && q->prompt[0] >= 0) q->suppressed.push_back(q->prompt[0]);
  if (s > 1) {
    q->suppressed.push_back(q->suppressed[0]);  // a duplicate
    q->suppressed.push_back(vocab);             // outside
  }
  q->cpu = std::make_unique<Sampler>(params, vocab);
  q->cpu->AddPrompt(q->prompt);
  q->stream.seed(params.seed);
  q->in_prompt.assign(static_cast<size_t>(vocab), 0);
  q->counts.assign(static_cast<size_t>(vocab), 0);
  for (int32_t t : q->prompt) {
    if (t >= 0 && t < vocab) q->in_prompt[t] = 1;
  }
  q->diverged = false;
}

// A row of logits of one of several shapes: normal at several scales, quantised (many ties),
// all equal, ±0 and ±1 only, peaked, with -inf / NaN holes, all -inf, a +inf, fp32-huge values.
std::vector<float> RandomLogits(int vocab, std::mt19937* rng, std::string* kind) {
  std::uniform_int_distribution<int> shape(0, 11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> coin(0.0f, 1.0f);
  std::uniform_int_distribution<int> any(0, vocab - 1);
  std::vector<float> x(static_cast<size_t>(vocab));
  const int s = shape(*rng);
  const float scale = s == 0 ? 1.0f : (s == 1 ? 3.0f : 8.0f);
  for (float& v : x) v = normal(*rng) * scale;
  switch (s) {
    case 0:
    case 1:
    case 2:
      *kind = "normal";
      break;
    case 3:
      *kind = "quantised";
      for (float& v : x) v = std::round(v * 0.25f) * 2.0f;
      break;
    case 4:
      *kind = "equal";
      std::fill(x.begin(), x.end(), 0.75f);
      break;
    case 5:
      *kind = "signed-zeros";
      for (float& v : x) v = Pick(rng, {0.0f, -0.0f, 1.0f, -1.0f, -0.0f});
      break;
    case 6:
      *kind = "peaked";
      x[any(*rng)] = 25.0f;
      x[any(*rng)] = 22.0f;
      break;
    case 7:
      *kind = "holes";
      for (float& v : x) {
        const float c = coin(*rng);
        if (c < 0.3f) v = kNegInf;
        if (c > 0.98f) v = std::numeric_limits<float>::quiet_NaN();
      }
      break;
    case 8:
      *kind = "one-finite";
      std::fill(x.begin(), x.end(), kNegInf);
      x[any(*rng)] = normal(*rng);
      if (coin(*rng) < 0.5f) x[any(*rng)] = std::numeric_limits<float>::quiet_NaN();
      break;
    case 9:
      *kind = "all-neg-inf";
      for (float& v : x) v = coin(*rng) < 0.5f ? kNegInf : std::numeric_limits<float>::quiet_NaN();
      break;
    case 10:
      *kind = "pos-inf";
      x[any(*rng)] = kPosInf;
      break;
    default:
      *kind = "huge";
      for (float& v : x) {
        if (coin(*rng) < 0.01f) v = coin(*rng) < 0.5f ? 3.0e38f : -3.0e38f;
      }
      break;
  }
  return x;
}

// ---- comparison ------------------------------------------------------------------------------

struct Tally {
  int64_t rows = 0, greedy = 0, sampled = 0, degenerate = 0, near = 0, boundary = 0;
  int64_t filter_near = 0;  // token matched; logprobs not compared (a filter decision was near)
  int64_t top_near_ties = 0;
  std::vector<float> lp_got, lp_want;  // finite chosen and alternative logprobs
};

bool LogprobClose(float got, float want) {
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::fabs(static_cast<double>(got) - want) <= 1e-6 * (1.0 + std::fabs(want));
}

// Compares a device result with the CPU's for one row; true when the token matched.
bool CompareRow(const std::string& where, const kernels::SampledRow& got, const SampledToken& cpu,
                const std::vector<SampledToken>& cpu_top, const Reference& ref, bool cpu_used,
                Tally* tally) {
  ++tally->rows;
  EXPECT_EQ(ref.token, cpu.id) << where << ": the transcription disagrees with Sampler";
  EXPECT_EQ(got.used_uniform != 0, cpu_used) << where;
  if (ref.margin() <= kBoundary) ++tally->near;
  if (got.token != cpu.id) {
    if (ref.margin() <= kBoundary) {
      ++tally->boundary;
      std::printf(
          "[sampling] boundary row %s: device %d, CPU %d (filter margin %.3e, draw "
          "margin %.3e)\n",
          where.c_str(), got.token, cpu.id, ref.filter_margin, ref.cdf_margin);
      return false;
    }
    ADD_FAILURE() << where << ": device token " << got.token << " (logprob " << got.logprob
                  << "), CPU token " << cpu.id << " (logprob " << cpu.logprob << "), filter margin "
                  << ref.filter_margin << ", draw margin " << ref.cdf_margin;
    return false;
  }
  if (ref.filter_margin <= kBoundary) {
    // A top-p / min-p decision at rounding distance may keep one more or one fewer token: the
    // normalisation (logprobs, alternatives) may differ by that token's mass.
    ++tally->filter_near;
    return true;
  }
  EXPECT_TRUE(LogprobClose(got.logprob, cpu.logprob))
      << where << ": logprob " << got.logprob << " vs CPU " << cpu.logprob;
  if (std::isfinite(cpu.logprob)) {
    tally->lp_got.push_back(got.logprob);
    tally->lp_want.push_back(cpu.logprob);
  }
  EXPECT_EQ(got.num_top, static_cast<int>(cpu_top.size())) << where;
  const int n = std::min(got.num_top, static_cast<int>(cpu_top.size()));
  for (int k = 0; k < n; ++k) {
    EXPECT_TRUE(LogprobClose(got.top_logprobs[k], cpu_top[k].logprob))
        << where << ": alternative " << k << " logprob " << got.top_logprobs[k] << " vs CPU "
        << cpu_top[k].logprob;
    tally->lp_got.push_back(got.top_logprobs[k]);
    tally->lp_want.push_back(cpu_top[k].logprob);
    if (got.top_ids[k] != cpu_top[k].id) {
      // Only a near tie may order differently (fp32 logprobs one ulp apart).
      bool near_tie = false;
      for (int j = std::max(0, k - 1); j <= std::min(n - 1, k + 1); ++j) {
        if (j != k && cpu_top[j].id == got.top_ids[k] &&
            LogprobClose(cpu_top[j].logprob, cpu_top[k].logprob)) {
          near_tie = true;
        }
      }
      if (near_tie) {
        ++tally->top_near_ties;
      } else {
        ADD_FAILURE() << where << ": alternative " << k << " is " << got.top_ids[k] << ", CPU "
                      << cpu_top[k].id;
      }
    }
  }
  return true;
}

void Report(const std::string& what, const Tally& t) {
  std::printf(
      "[sampling] %-34s rows %lld (greedy %lld, sampled %lld, degenerate %lld); within %.0e of a "
      "threshold %lld, boundary mismatches %lld, filter near (logprobs not compared) %lld, "
      "alternative near-ties %lld\n",
      what.c_str(), static_cast<long long>(t.rows), static_cast<long long>(t.greedy),
      static_cast<long long>(t.sampled), static_cast<long long>(t.degenerate), kBoundary,
      static_cast<long long>(t.near), static_cast<long long>(t.boundary),
      static_cast<long long>(t.filter_near), static_cast<long long>(t.top_near_ties));
  if (!t.lp_want.empty()) {
    gpu_test::ExpectClose(t.lp_got, t.lp_want, 1e-6, what + " logprobs");
  }
}

// ---- one batched step of the kernel against the CPU ------------------------------------------

struct StepOptions {
  bool in_place = false;
  int64_t logits_pad = 0;    // extra elements per logits row
  int64_t work_pad = 0;      // extra elements per work row (out of place)
  bool junk_entries = true;  // add history entries outside the vocabulary (ignored)
  int cluster = 0;           // SampleRowsParams::cluster (0: the default for the vocabulary)
  bool exp_cache = true;     // SampleRowsParams::exp_cache
};

// Samples one step for every request in `batch` (one launch) and compares with the CPU.
void KernelStep(int vocab, std::vector<Request*> batch, std::mt19937* rng, const StepOptions& opt,
                const std::string& label, int step, Tally* tally) {
  const int64_t rows = static_cast<int64_t>(batch.size());
  const int64_t ls = vocab + opt.logits_pad;
  const int64_t ws = opt.in_place ? ls : vocab + opt.work_pad;
  std::vector<float> logits(static_cast<size_t>(rows * ls), 1.0e30f);  // pads: never read
  std::vector<std::string> kinds(static_cast<size_t>(rows));
  std::vector<kernels::SamplingRowParams> params(static_cast<size_t>(rows));
  std::vector<int32_t> offsets(1, 0);
  std::vector<kernels::SamplingTokenCount> entries;
  std::vector<double> uniforms(static_cast<size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    Request& q = *batch[static_cast<size_t>(r)];
    const std::vector<float> row = RandomLogits(vocab, rng, &kinds[static_cast<size_t>(r)]);
    std::copy(row.begin(), row.end(), logits.begin() + r * ls);
    std::mt19937_64 peek = q.stream;
    uniforms[static_cast<size_t>(r)] = NextUniform(&peek);
    kernels::SamplingRowParams& kp = params[static_cast<size_t>(r)];
    kp.temperature = q.params.temperature;
    kp.top_k = q.params.top_k;
    kp.top_p = q.params.top_p;
    kp.min_p = q.params.min_p;
    kp.repetition_penalty = q.params.repetition_penalty;
    kp.presence_penalty = q.params.presence_penalty;
    kp.frequency_penalty = q.params.frequency_penalty;
    kp.num_top = q.num_top;
    kp.uniform = uniforms[static_cast<size_t>(r)];
    // History entries (each token once), in a shuffled order; suppressed ones override.
    std::vector<kernels::SamplingTokenCount> row_entries;
    std::vector<uint8_t> listed(static_cast<size_t>(vocab), 0);
    for (int32_t id : q.suppressed) {
      if (id >= 0 && id < vocab && !listed[id]) {
        listed[id] = 1;
        row_entries.push_back({id, kernels::kSamplingSuppressed});
      }
    }
    for (int i = 0; i < vocab; ++i) {
      if (!listed[i] && (q.in_prompt[i] || q.counts[i] > 0)) {
        row_entries.push_back({i, q.counts[i]});
      }
    }
    if (opt.junk_entries && !row_entries.empty()) {
      row_entries.push_back({vocab, 3});
      row_entries.push_back({-1, kernels::kSamplingSuppressed});
    }
    std::shuffle(row_entries.begin(), row_entries.end(), *rng);
    entries.insert(entries.end(), row_entries.begin(), row_entries.end());
    offsets.push_back(static_cast<int32_t>(entries.size()));
  }

  DeviceBuffer d_logits = ToDevice(logits);
  DeviceBuffer d_work_own(opt.in_place ? 0 : static_cast<size_t>(rows * ws) * sizeof(float));
  DeviceBuffer d_params = ToDevice(params);
  DeviceBuffer d_offsets = ToDevice(offsets);
  DeviceBuffer d_entries = ToDevice(entries);
  DeviceBuffer d_out(static_cast<size_t>(rows) * sizeof(kernels::SampledRow));
  ASSERT_TRUE(d_logits.ok() && d_params.ok() && d_offsets.ok() && d_entries.ok() && d_out.ok());
  kernels::SampleRowsParams a;
  a.rows = rows;
  a.vocab = vocab;
  a.logits = d_logits.as<float>();
  a.logits_stride = ls;
  a.work = opt.in_place ? d_logits.as<float>() : d_work_own.as<float>();
  a.work_stride = ws;
  a.params = d_params.as<kernels::SamplingRowParams>();
  a.history_offsets = d_offsets.as<int32_t>();
  a.history = entries.empty() ? nullptr : d_entries.as<kernels::SamplingTokenCount>();
  a.out = d_out.as<kernels::SampledRow>();
  a.cluster = opt.cluster;
  a.exp_cache = opt.exp_cache;
  HYLA_ASSERT_LAUNCH_OK(kernels::SampleRows(a, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<kernels::SampledRow> got =
      ToHost<kernels::SampledRow>(d_out, static_cast<size_t>(rows));
  const std::vector<float> work =
      ToHost<float>(opt.in_place ? d_logits : d_work_own, static_cast<size_t>(rows * ws));
  if (!opt.in_place) {
    const std::vector<float> after = ToHost<float>(d_logits, logits.size());
    EXPECT_EQ(std::memcmp(after.data(), logits.data(), logits.size() * sizeof(float)), 0)
        << label << ": out of place, the logits must stay untouched";
  }

  for (int64_t r = 0; r < rows; ++r) {
    Request& q = *batch[static_cast<size_t>(r)];
    const float* row = logits.data() + r * ls;
    const std::string where =
        label + " step " + std::to_string(step) + " row " + std::to_string(r) + " (" +
        kinds[static_cast<size_t>(r)] + ", T " + std::to_string(q.params.temperature) + ", k " +
        std::to_string(q.params.top_k) + ", p " + std::to_string(q.params.top_p) + ", min_p " +
        std::to_string(q.params.min_p) + ")";
    // The CPU as the engine's worker drives it: suppressed ids to -inf, then Sample.
    std::vector<float> cpu_in(row, row + vocab);
    for (int32_t id : q.suppressed) {
      if (id >= 0 && id < vocab) cpu_in[id] = kNegInf;
    }
    const Reference ref = ReferenceSample(row, vocab, q.params, q.in_prompt, q.counts, q.suppressed,
                                          uniforms[static_cast<size_t>(r)]);
    const SampledToken cpu = q.cpu->Sample(cpu_in);
    const std::vector<SampledToken> cpu_top = q.cpu->TopAlternatives(q.num_top);
    const bool cpu_used = q.params.temperature > 0.0f && std::isfinite(cpu.logprob);
    if (q.params.temperature == 0.0f) {
      ++tally->greedy;
    } else if (cpu_used) {
      ++tally->sampled;
    } else {
      ++tally->degenerate;
    }
    // The processed logits are exact fp32 operations: equal on both sides.
    int64_t differ = 0;
    for (int i = 0; i < vocab; ++i) {
      if (!(work[static_cast<size_t>(r * ws + i)] == ref.processed[i])) ++differ;
    }
    EXPECT_EQ(differ, 0) << where << ": processed logits differ from the CPU's";
    CompareRow(where, got[static_cast<size_t>(r)], cpu, cpu_top, ref, cpu_used, tally);
    // The history follows the CPU (the reference), as does its random stream.
    if (cpu_used) q.stream();
    ++q.counts[cpu.id];
  }
}

void RunRandom(int vocab, int num_requests, int batch, int steps, uint32_t seed,
               const StepOptions& opt, const std::string& label) {
  std::mt19937 rng(seed);
  std::vector<Request> requests(static_cast<size_t>(num_requests));
  for (Request& q : requests) InitRequest(&q, RandomParams(&rng, vocab), vocab, &rng);
  Tally tally;
  for (int begin = 0; begin < num_requests; begin += batch) {
    std::vector<Request*> group;
    for (int i = begin; i < std::min(num_requests, begin + batch); ++i) {
      group.push_back(&requests[static_cast<size_t>(i)]);
    }
    for (int step = 0; step < steps; ++step) {
      KernelStep(vocab, group, &rng, opt, label, step, &tally);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  Report(label, tally);
}

class SamplingKernelsTest : public GpuTest {};

TEST_F(SamplingKernelsTest, RandomRowsVocab257) {
  RunRandom(257, 256, 16, 4, 11, StepOptions{}, "SampleRows vocab 257");
}

TEST_F(SamplingKernelsTest, RandomRowsVocab257InPlaceStrided) {
  StepOptions opt;
  opt.in_place = true;
  opt.logits_pad = 5;
  RunRandom(257, 128, 8, 4, 12, opt, "SampleRows vocab 257 in place");
}

TEST_F(SamplingKernelsTest, RandomRowsVocab32000) {
  StepOptions opt;
  opt.work_pad = 3;
  RunRandom(32000, 64, 16, 4, 13, opt, "SampleRows vocab 32000");
}

TEST_F(SamplingKernelsTest, RandomRowsVocab151936) {
  StepOptions opt;
  opt.in_place = true;
  RunRandom(151936, 32, 16, 3, 14, opt, "SampleRows vocab 151936");
}

TEST_F(SamplingKernelsTest, TinyVocabularies) {
  for (int vocab : {1, 2, 3, 31, 32, 33}) {
    RunRandom(vocab, 48, 16, 3, 15 + static_cast<uint32_t>(vocab), StepOptions{},
              "SampleRows vocab " + std::to_string(vocab));
  }
}

// Every cluster size (CTAs per row): vocabularies that split unevenly (1000: slices of 32-id
// multiples, the last one short; 33 and 100 at 16 CTAs: empty slices), in place and out of place,
// at the decode shape (32000) too.
TEST_F(SamplingKernelsTest, EveryClusterSize) {
  for (int cluster : {1, 2, 4, 8, 16}) {
    StepOptions opt;
    opt.cluster = cluster;
    const std::string c = " cluster " + std::to_string(cluster);
    RunRandom(1000, 64, 16, 3, 40 + static_cast<uint32_t>(cluster), opt,
              "SampleRows vocab 1000" + c);
    if (HasFatalFailure()) return;
    opt.in_place = true;
    opt.logits_pad = 3;
    RunRandom(33, 32, 16, 2, 60 + static_cast<uint32_t>(cluster), opt, "SampleRows vocab 33" + c);
    if (HasFatalFailure()) return;
    RunRandom(100, 32, 16, 2, 70 + static_cast<uint32_t>(cluster), opt, "SampleRows vocab 100" + c);
    if (HasFatalFailure()) return;
    opt.in_place = false;
    opt.logits_pad = 0;
    RunRandom(32000, 32, 16, 2, 80 + static_cast<uint32_t>(cluster), opt,
              "SampleRows vocab 32000" + c);
    if (HasFatalFailure()) return;
  }
}

// Without the exp cache (every exp(x − max) and CDF weight recomputed where it is used).
TEST_F(SamplingKernelsTest, WithoutExpCache) {
  StepOptions opt;
  opt.exp_cache = false;
  RunRandom(1000, 64, 16, 3, 90, opt, "SampleRows vocab 1000 no exp cache");
  RunRandom(32000, 32, 16, 2, 91, opt, "SampleRows vocab 32000 no exp cache");
}

// Every combination of the filters on / off (greedy, top-k, top-p, min-p, penalties).
TEST_F(SamplingKernelsTest, AllParameterCombinations) {
  for (const auto& [vocab, cluster] :
       {std::pair<int, int>{257, 0}, {32000, 0}, {257, 4}, {32000, 16}, {32000, 1}}) {
    StepOptions opt;
    opt.cluster = cluster;
    std::mt19937 rng(21 + static_cast<uint32_t>(vocab));
    std::vector<Request> requests;
    requests.reserve(64);
    for (int combo = 0; combo < 32; ++combo) {
      for (int rep = 0; rep < 2; ++rep) {
        SamplingParams p;
        p.temperature = (combo & 1) != 0 ? 0.0f : (rep == 0 ? 0.8f : 1.7f);
        p.top_k = (combo & 2) != 0 ? (rep == 0 ? 20 : 3) : 0;
        p.top_p = (combo & 4) != 0 ? (rep == 0 ? 0.8f : 0.35f) : 1.0f;
        p.min_p = (combo & 8) != 0 ? (rep == 0 ? 0.1f : 0.02f) : 0.0f;
        if ((combo & 16) != 0) {
          p.repetition_penalty = rep == 0 ? 1.2f : 0.8f;
          p.presence_penalty = rep == 0 ? 0.4f : -0.6f;
          p.frequency_penalty = rep == 0 ? 0.25f : 1.1f;
        }
        p.seed = 1000u + static_cast<uint64_t>(combo * 2 + rep);
        requests.emplace_back();
        InitRequest(&requests.back(), p, vocab, &rng);
      }
    }
    Tally tally;
    const std::string label = "SampleRows combinations vocab " + std::to_string(vocab) +
                              " cluster " + std::to_string(cluster);
    for (size_t begin = 0; begin < requests.size(); begin += 16) {
      std::vector<Request*> group;
      for (size_t i = begin; i < begin + 16; ++i) group.push_back(&requests[i]);
      for (int step = 0; step < 4; ++step) {
        KernelStep(vocab, group, &rng, opt, label, step, &tally);
        if (HasFatalFailure()) return;
      }
    }
    Report(label, tally);
  }
}

// Equal logits: top-k keeps all ties; top-p keeps the lowest ids of the tie group (the CPU's
// stable order), which needs the id selection inside a group.
TEST_F(SamplingKernelsTest, TiesInsideTopPGroup) {
  for (const auto& [vocab, cluster] :
       {std::pair<int, int>{257, 0}, {32000, 0}, {257, 8}, {32000, 16}, {32000, 1}}) {
    for (float top_p : {0.5f, 0.1f, 0.013f, 0.999f}) {
      SamplingParams p;
      p.temperature = 1.0f;
      p.top_p = top_p;
      p.top_k = vocab / 3;
      p.seed = 77;
      std::mt19937 rng(5);
      Request q;
      InitRequest(&q, p, vocab, &rng);
      q.suppressed.clear();
      std::vector<float> logits(static_cast<size_t>(vocab), 0.5f);
      for (int i = 0; i < vocab; i += 7) logits[i] = 2.0f;  // a top group of equal values
      for (int trial = 0; trial < 20; ++trial) {
        std::vector<kernels::SamplingRowParams> params(1);
        params[0].temperature = p.temperature;
        params[0].top_k = p.top_k;
        params[0].top_p = p.top_p;
        std::mt19937_64 peek = q.stream;
        params[0].uniform = NextUniform(&peek);
        const std::vector<int32_t> offsets = {0, 0};
        DeviceBuffer d_logits = ToDevice(logits);
        DeviceBuffer d_work(logits.size() * sizeof(float));
        DeviceBuffer d_params = ToDevice(params);
        DeviceBuffer d_offsets = ToDevice(offsets);
        DeviceBuffer d_out(sizeof(kernels::SampledRow));
        kernels::SampleRowsParams a;
        a.rows = 1;
        a.vocab = vocab;
        a.logits = d_logits.as<float>();
        a.logits_stride = vocab;
        a.work = d_work.as<float>();
        a.work_stride = vocab;
        a.params = d_params.as<kernels::SamplingRowParams>();
        a.history_offsets = d_offsets.as<int32_t>();
        a.out = d_out.as<kernels::SampledRow>();
        a.cluster = cluster;
        HYLA_ASSERT_LAUNCH_OK(kernels::SampleRows(a, nullptr));
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const kernels::SampledRow got = ToHost<kernels::SampledRow>(d_out, 1)[0];
        const SampledToken cpu = q.cpu->Sample(logits);
        q.stream();
        EXPECT_EQ(got.token, cpu.id)
            << "vocab " << vocab << " top_p " << top_p << " cluster " << cluster;
        EXPECT_TRUE(LogprobClose(got.logprob, cpu.logprob));
      }
    }
  }
}

TEST_F(SamplingKernelsTest, LauncherRejectsBadArguments) {
  DeviceBuffer d(4096);
  kernels::SampleRowsParams a;
  a.rows = 1;
  a.vocab = 8;
  a.logits = d.as<float>();
  a.logits_stride = 8;
  a.work = d.as<float>() + 16;
  a.work_stride = 8;
  a.params = reinterpret_cast<const kernels::SamplingRowParams*>(d.as<char>() + 1024);
  a.history_offsets = reinterpret_cast<const int32_t*>(d.as<char>() + 2048);
  a.out = reinterpret_cast<kernels::SampledRow*>(d.as<char>() + 3072);
  kernels::SampleRowsParams bad = a;
  bad.vocab = 0;
  EXPECT_EQ(kernels::SampleRows(bad, nullptr), static_cast<int>(cudaErrorInvalidValue));
  bad = a;
  bad.rows = -1;
  EXPECT_EQ(kernels::SampleRows(bad, nullptr), static_cast<int>(cudaErrorInvalidValue));
  bad = a;
  bad.logits_stride = 7;
  EXPECT_EQ(kernels::SampleRows(bad, nullptr), static_cast<int>(cudaErrorInvalidValue));
  bad = a;
  bad.work = d.as<float>() + 4;  // overlaps the logits row
  EXPECT_EQ(kernels::SampleRows(bad, nullptr), static_cast<int>(cudaErrorInvalidValue));
  bad = a;
  bad.work = d.as<float>();
  bad.work_stride = 9;  // in place with another stride
  EXPECT_EQ(kernels::SampleRows(bad, nullptr), static_cast<int>(cudaErrorInvalidValue));
  bad = a;
  bad.params = nullptr;
  EXPECT_EQ(kernels::SampleRows(bad, nullptr), static_cast<int>(cudaErrorInvalidValue));
  bad = a;
  bad.out = nullptr;
  EXPECT_EQ(kernels::SampleRows(bad, nullptr), static_cast<int>(cudaErrorInvalidValue));
  bad = a;
  bad.cluster = 3;  // not a cluster size
  EXPECT_EQ(kernels::SampleRows(bad, nullptr), static_cast<int>(cudaErrorInvalidValue));
  bad = a;
  bad.rows = 0;
  EXPECT_EQ(kernels::SampleRows(bad, nullptr), 0);
}

// ---- tiny cases for compute-sanitizer (memcheck / racecheck / synccheck) ----------------------

TEST_F(SamplingKernelsTest, SanitizerTinyOutOfPlace) {
  StepOptions opt;
  opt.logits_pad = 2;
  opt.work_pad = 1;
  RunRandom(37, 8, 4, 2, 31, opt, "SampleRows sanitizer out of place");
}

TEST_F(SamplingKernelsTest, SanitizerTinyInPlace) {
  StepOptions opt;
  opt.in_place = true;
  RunRandom(70, 6, 3, 2, 32, opt, "SampleRows sanitizer in place");
}

// Clusters of 4 over 70 ids: slices of 32, 32, 6 and an empty one.
TEST_F(SamplingKernelsTest, SanitizerTinyCluster) {
  StepOptions opt;
  opt.cluster = 4;
  RunRandom(70, 6, 3, 2, 33, opt, "SampleRows sanitizer cluster 4");
  opt.in_place = true;
  RunRandom(70, 6, 3, 2, 34, opt, "SampleRows sanitizer cluster 4 in place");
}

// ---- DeviceSampler ---------------------------------------------------------------------------

// Several requests over many steps through DeviceSampler (its own SamplingState: history and
// uniform stream) against one CPU Sampler each, with rows whose logits are all -inf for
// temperature > 0 (no uniform drawn on either side) and suppressed ids.
void RunDeviceSampler(int vocab, int num_requests, int steps, uint32_t seed,
                      const std::string& label) {
  absl::StatusOr<std::unique_ptr<cuda::DeviceContext>> ctx =
      cuda::DeviceContext::Create(0, size_t{64} << 20);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  absl::StatusOr<std::unique_ptr<cuda::DeviceSampler>> sampler =
      cuda::DeviceSampler::Create(vocab, num_requests);
  ASSERT_TRUE(sampler.ok()) << sampler.status();
  std::mt19937 rng(seed);
  std::vector<Request> requests(static_cast<size_t>(num_requests));
  std::vector<std::unique_ptr<cuda::SamplingState>> states;
  for (Request& q : requests) {
    InitRequest(&q, RandomParams(&rng, vocab), vocab, &rng);
    states.push_back(std::make_unique<cuda::SamplingState>(q.params, vocab));
    states.back()->AddPrompt(q.prompt);
  }
  const int64_t stride = vocab + 3;
  DeviceBuffer d_logits(static_cast<size_t>(num_requests * stride) * sizeof(float));
  ASSERT_TRUE(d_logits.ok());
  Tally tally;
  std::uniform_real_distribution<float> coin(0.0f, 1.0f);
  for (int step = 0; step < steps; ++step) {
    std::vector<float> logits(static_cast<size_t>(num_requests * stride), 0.0f);
    std::vector<std::string> kinds(static_cast<size_t>(num_requests));
    std::vector<cuda::DeviceSampleRow> rows(static_cast<size_t>(num_requests));
    for (int r = 0; r < num_requests; ++r) {
      std::vector<float> row = RandomLogits(vocab, &rng, &kinds[static_cast<size_t>(r)]);
      if (coin(rng) < 0.1f) {
        std::fill(row.begin(), row.end(), kNegInf);
        kinds[static_cast<size_t>(r)] = "all-neg-inf";
      }
      std::copy(row.begin(), row.end(), logits.begin() + r * stride);
      rows[static_cast<size_t>(r)].state = states[static_cast<size_t>(r)].get();
      rows[static_cast<size_t>(r)].suppressed = requests[static_cast<size_t>(r)].suppressed;
      rows[static_cast<size_t>(r)].num_top = requests[static_cast<size_t>(r)].num_top;
    }
    ASSERT_EQ(cudaMemcpy(d_logits.get(), logits.data(), logits.size() * sizeof(float),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
    std::vector<cuda::DeviceSampleResult> results;
    const absl::Status st = (*sampler)->Sample(**ctx, d_logits.as<float>(), stride, rows, &results);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(results.size(), rows.size());
    EXPECT_EQ((*ctx)->scratch().used(), 0u) << "Sample must release its scratch";
    for (int r = 0; r < num_requests; ++r) {
      Request& q = requests[static_cast<size_t>(r)];
      const float* row = logits.data() + r * stride;
      std::vector<float> cpu_in(row, row + vocab);
      for (int32_t id : q.suppressed) {
        if (id >= 0 && id < vocab) cpu_in[id] = kNegInf;
      }
      std::mt19937_64 peek = q.stream;
      const double u = NextUniform(&peek);
      const Reference ref =
          ReferenceSample(row, vocab, q.params, q.in_prompt, q.counts, q.suppressed, u);
      const SampledToken cpu = q.cpu->Sample(cpu_in);
      const std::vector<SampledToken> cpu_top = q.cpu->TopAlternatives(q.num_top);
      const bool cpu_used = q.params.temperature > 0.0f && std::isfinite(cpu.logprob);
      if (cpu_used) q.stream();
      ++q.counts[cpu.id];
      if (q.diverged) continue;  // its device history differs since a boundary mismatch
      if (q.params.temperature == 0.0f) {
        ++tally.greedy;
      } else if (cpu_used) {
        ++tally.sampled;
      } else {
        ++tally.degenerate;
      }
      const cuda::DeviceSampleResult& res = results[static_cast<size_t>(r)];
      kernels::SampledRow got;
      got.token = res.token.id;
      got.logprob = res.token.logprob;
      got.used_uniform = cpu_used ? 1 : 0;  // not reported by DeviceSampler: checked below
      got.num_top = static_cast<int32_t>(res.top.size());
      for (size_t k = 0; k < res.top.size(); ++k) {
        got.top_ids[k] = res.top[k].id;
        got.top_logprobs[k] = res.top[k].logprob;
      }
      const std::string where = label + " step " + std::to_string(step) + " request " +
                                std::to_string(r) + " (" + kinds[static_cast<size_t>(r)] + ")";
      if (!CompareRow(where, got, cpu, cpu_top, ref, cpu_used, &tally)) q.diverged = true;
      // The device state's stream must be where the CPU's is: the next peek is the CPU's next u.
      std::mt19937_64 next = q.stream;
      EXPECT_EQ(states[static_cast<size_t>(r)]->uniforms().Peek(), NextUniform(&next)) << where;
      const int64_t at = states[static_cast<size_t>(r)]->history().Find(cpu.id);
      ASSERT_GE(at, 0) << where;
      EXPECT_EQ(states[static_cast<size_t>(r)]->history().entries()[static_cast<size_t>(at)].count,
                q.counts[cpu.id])
          << where;
    }
  }
  Report(label, tally);
}

TEST_F(SamplingKernelsTest, DeviceSamplerMatchesCpuSamplerOverSteps) {
  RunDeviceSampler(257, 24, 12, 41, "DeviceSampler vocab 257");
  RunDeviceSampler(151936, 8, 4, 42, "DeviceSampler vocab 151936");
}

TEST_F(SamplingKernelsTest, DeviceSamplerRejectsBadRows) {
  absl::StatusOr<std::unique_ptr<cuda::DeviceContext>> ctx =
      cuda::DeviceContext::Create(0, size_t{1} << 20);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  absl::StatusOr<std::unique_ptr<cuda::DeviceSampler>> sampler = cuda::DeviceSampler::Create(16, 2);
  ASSERT_TRUE(sampler.ok()) << sampler.status();
  DeviceBuffer d_logits(3 * 16 * sizeof(float));
  SamplingParams good;
  cuda::SamplingState state(good, 16);
  SamplingParams bad_params;
  bad_params.temperature = -1.0f;
  cuda::SamplingState bad_state(bad_params, 16);
  std::vector<cuda::DeviceSampleResult> out;
  std::vector<cuda::DeviceSampleRow> rows(3);
  for (auto& r : rows) r.state = &state;
  EXPECT_EQ((*sampler)->Sample(**ctx, d_logits.as<float>(), 16, rows, &out).code(),
            absl::StatusCode::kInvalidArgument);  // 3 rows > max_rows 2
  rows.resize(1);
  rows[0].state = nullptr;
  EXPECT_EQ((*sampler)->Sample(**ctx, d_logits.as<float>(), 16, rows, &out).code(),
            absl::StatusCode::kInvalidArgument);
  rows[0].state = &bad_state;
  EXPECT_EQ((*sampler)->Sample(**ctx, d_logits.as<float>(), 16, rows, &out).code(),
            absl::StatusCode::kInvalidArgument);
  rows[0].state = &state;
  rows[0].num_top = kernels::kSamplingMaxTop + 1;
  EXPECT_EQ((*sampler)->Sample(**ctx, d_logits.as<float>(), 16, rows, &out).code(),
            absl::StatusCode::kInvalidArgument);
  rows[0].num_top = 0;
  EXPECT_EQ((*sampler)->Sample(**ctx, d_logits.as<float>(), 15, rows, &out).code(),
            absl::StatusCode::kInvalidArgument);  // stride < vocab
  EXPECT_TRUE(state.history().entries().empty()) << "no state change on error";
}

}  // namespace
}  // namespace hyla
