// CudaBackend (runtime/cuda/) against the authors' golden fixtures and the CPU backend (the
// reference): whole-model logits in fp32 (prefill, prefill + token-by-token decode, random
// splits, batches of sequences at different positions), the bf16 serving precision, the NAtS-L
// routing counters, the embedded default model, generated models of every family, and the
// errors of bad input. Every comparison prints "[gpu-error] ..." with its observed maximum.
// Every test skips (reported as skipped) without a CUDA device.
#include "runtime/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "runtime/base/float16.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/engine/sequence_runner.h"
#include "runtime/model/checkpoint.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/testing/golden_util.h"
#include "tools/default_model.h"
#include "tools/model_generator.h"

namespace hyla {
namespace {

using gpu_test::GpuTest;
using testing::GoldenDir;
using testing::GoldenF32;
using testing::GoldenI32;
using testing::LoadCpuBackend;
using testing::MaxAbsDiff;
using testing::PrefillThenDecode;
using testing::RandomSplit;

// A backend for the checkpoint in `dir` with the tests' pool sizes; `adjust` (optional) changes
// the options before Create.
absl::StatusOr<std::unique_ptr<cuda::CudaBackend>> LoadCudaBackend(
    const std::string& dir, cuda::Precision precision = cuda::Precision::kF32, int num_slots = 8,
    int64_t num_blocks = 512,
    const std::function<void(cuda::CudaBackendOptions*)>& adjust = nullptr) {
  auto ck = Checkpoint::Open(dir);
  if (!ck.ok()) return ck.status();
  cuda::CudaBackendOptions o;
  o.precision = precision;
  o.store.num_slots = num_slots;
  o.store.num_blocks = num_blocks;
  o.max_step_tokens = 1024;
  o.max_step_seqs = 16;
  if (adjust) adjust(&o);
  return cuda::CudaBackend::Create(std::move(ck).value(), o);
}

float MaxAbs(const std::vector<float>& v) {
  float m = 0.0f;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Prints the observed error and returns |diff| / max|ref|.
float Report(const std::string& what, const std::vector<float>& got,
             const std::vector<float>& ref) {
  const float diff = MaxAbsDiff(got, ref);
  const float rel = diff / std::max(MaxAbs(ref), 1e-30f);
  std::printf("[gpu-error] %s: max|diff| %.3g, max|ref| %.3g, rel %.3g\n", what.c_str(), diff,
              MaxAbs(ref), rel);
  return rel;
}

struct GoldenCase {
  const char* family;
  const char* tensor;  // logits of golden.safetensors the backend must reproduce
  float tol;           // golden.json recommended_tolerance (absolute)
};

class CudaGoldenTest : public GpuTest, public ::testing::WithParamInterface<GoldenCase> {};

// Full-sequence prefill, prefill + token-by-token decode and a random split, each against the
// golden logits and against the CPU backend.
TEST_P(CudaGoldenTest, MatchesGoldenAndCpuInFp32) {
  const GoldenCase& c = GetParam();
  auto ids = GoldenI32(c.family, "input_ids");
  ASSERT_TRUE(ids.ok()) << ids.status();
  auto golden = GoldenF32(c.family, c.tensor);
  ASSERT_TRUE(golden.ok()) << golden.status();
  auto gpu = LoadCudaBackend(GoldenDir(c.family));
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  auto cpu = LoadCpuBackend(GoldenDir(c.family));
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  const int64_t T = static_cast<int64_t>(ids->size());

  const std::vector<std::vector<int64_t>> splits = {
      {}, PrefillThenDecode(T, 70), RandomSplit(T, 80, 7), RandomSplit(T, 5, 11)};
  const char* names[] = {"prefill", "prefill70+decode", "split<=80", "split<=5"};
  auto cpu_logits = RunSequenceLogits(**cpu, *ids, {});
  ASSERT_TRUE(cpu_logits.ok()) << cpu_logits.status();
  std::vector<float> gpu_prefill;
  for (size_t s = 0; s < splits.size(); ++s) {
    auto logits = RunSequenceLogits(**gpu, *ids, splits[s]);
    ASSERT_TRUE(logits.ok()) << names[s] << ": " << logits.status();
    const std::string tag = absl::StrCat("golden ", c.family, " fp32 ", names[s]);
    const float d_golden = MaxAbsDiff(*logits, *golden);
    Report(tag + " vs golden " + c.tensor, *logits, *golden);
    EXPECT_LE(d_golden, c.tol) << tag;
    EXPECT_LE(Report(tag + " vs CPU backend", *logits, *cpu_logits), 1e-4f) << tag;
    if (s == 0) {
      gpu_prefill = *logits;
    } else {
      // Chunking invariance on the GPU.
      EXPECT_LE(Report(tag + " vs GPU prefill", *logits, gpu_prefill), 1e-4f) << tag;
    }
  }
  // The decode steps above replayed CUDA graphs (every MLP is graph-safe; GDN mixers too), so
  // the decode comparisons checked the replays.
  std::printf("[gpu-graphs] %s: %lld segments captured, %lld replays\n", c.family,
              static_cast<long long>((*gpu)->graphs_captured()),
              static_cast<long long>((*gpu)->graph_replays()));
  EXPECT_GT((*gpu)->graphs_captured(), 0) << c.family;
  EXPECT_GT((*gpu)->graph_replays(), 0) << c.family;
}

// The same decode steps with and without CUDA graphs give the same logits (bitwise: the graph
// replays the same kernels on the same data).
TEST_F(GpuTest, CudaGraphReplaysEqualEagerDecode) {
  for (const char* family : {"gdn", "llama", "natsl", "nha"}) {
    auto ids = GoldenI32(family, "input_ids");
    ASSERT_TRUE(ids.ok());
    std::vector<float> logits[2];
    for (int graphs = 0; graphs < 2; ++graphs) {
      auto gpu =
          LoadCudaBackend(GoldenDir(family), cuda::Precision::kBf16, 8, 512,
                          [&](cuda::CudaBackendOptions* o) { o->cuda_graphs = graphs == 1; });
      ASSERT_TRUE(gpu.ok()) << gpu.status();
      auto l =
          RunSequenceLogits(**gpu, *ids, PrefillThenDecode(static_cast<int64_t>(ids->size()), 20));
      ASSERT_TRUE(l.ok()) << l.status();
      logits[graphs] = *l;
      if (graphs == 1) {
        EXPECT_GT((*gpu)->graph_replays(), 100) << family;
      } else {
        EXPECT_EQ((*gpu)->graph_replays(), 0) << family;
      }
    }
    EXPECT_EQ(MaxAbsDiff(logits[0], logits[1]), 0.0f) << family;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, CudaGoldenTest,
                         ::testing::Values(GoldenCase{"llama", "logits", 1e-4f},
                                           GoldenCase{"gdn", "logits", 5.2e-4f},
                                           GoldenCase{"natsl", "logits", 1e-4f},
                                           GoldenCase{"nha", "logits", 2.6e-3f}),
                         [](const ::testing::TestParamInfo<GoldenCase>& info) {
                           return std::string(info.param.family);
                         });

// Sequences of different lengths and splits in one batch equal the same sequences run alone.
TEST_F(GpuTest, CudaBatchedEqualsAlone) {
  for (const char* family : {"llama", "gdn", "natsl", "nha"}) {
    auto ids = GoldenI32(family, "input_ids");
    ASSERT_TRUE(ids.ok()) << ids.status();
    auto gpu = LoadCudaBackend(GoldenDir(family));
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    std::vector<std::vector<int32_t>> seqs;
    std::vector<std::vector<int64_t>> chunks;
    for (int i = 0; i < 4; ++i) {
      const int64_t len = 60 + 37 * i;
      std::vector<int32_t> s(ids->begin() + i, ids->begin() + i + len);
      seqs.push_back(s);
      chunks.push_back(RandomSplit(len, 1 + 30 * i, 100 + i));
    }
    auto batched = RunBatchedLogits(**gpu, seqs, chunks);
    ASSERT_TRUE(batched.ok()) << batched.status();
    for (size_t i = 0; i < seqs.size(); ++i) {
      auto alone = RunSequenceLogits(**gpu, seqs[i], {});
      ASSERT_TRUE(alone.ok()) << alone.status();
      EXPECT_LE(
          Report(absl::StrCat(family, " batched seq ", i, " vs alone"), (*batched)[i], *alone),
          1e-4f);
    }
  }
}

// The NAtS-L routing counters of the GPU equal the fixture's decisions (2 layers × 3 completed
// chunks × 2 heads over 200 tokens), whether prefilled or decoded.
TEST_F(GpuTest, CudaNatslRoutingCountsMatchGolden) {
  auto ids = GoldenI32("natsl", "input_ids");
  ASSERT_TRUE(ids.ok());
  std::vector<int64_t> shape;
  auto routing = GoldenI32("natsl", "routing", &shape);
  ASSERT_TRUE(routing.ok());
  int64_t to_softmax = 0;
  int64_t to_gdn = 0;
  for (int32_t r : *routing) {
    if (r == 0) ++to_softmax;
    if (r == 1) ++to_gdn;
  }
  for (bool decode : {false, true}) {
    auto gpu = LoadCudaBackend(GoldenDir("natsl"));
    ASSERT_TRUE(gpu.ok());
    StateStore& store = (*gpu)->store();
    auto seq = store.NewSequence();
    ASSERT_TRUE(seq.ok()) << seq.status();
    (*gpu)->ResetSlot((*seq)->slot);
    RoutingCounts total;
    const int64_t T = static_cast<int64_t>(ids->size());
    const std::vector<int64_t> chunks = decode ? PrefillThenDecode(T, 1) : std::vector<int64_t>{T};
    int64_t pos = 0;
    for (int64_t n : chunks) {
      SequenceWork w;
      w.seq = seq->get();
      w.tokens = absl::MakeConstSpan(ids->data() + pos, static_cast<size_t>(n));
      w.logits = LogitsMode::kLast;
      StepOutput out;
      ASSERT_TRUE((*gpu)->Step({w}, &out).ok());
      total.to_softmax += out.routing.to_softmax;
      total.to_gdn += out.routing.to_gdn;
      pos += n;
    }
    EXPECT_EQ(total.to_softmax, to_softmax) << (decode ? "decode" : "prefill");
    EXPECT_EQ(total.to_gdn, to_gdn) << (decode ? "decode" : "prefill");
    store.Release(std::move(seq).value());
  }
}

// The bf16 serving precision stays close to the fp32 CPU reference on every family.
TEST_F(GpuTest, CudaBf16CloseToCpu) {
  for (const char* family : {"llama", "gdn", "natsl", "nha"}) {
    auto ids = GoldenI32(family, "input_ids");
    ASSERT_TRUE(ids.ok());
    auto gpu = LoadCudaBackend(GoldenDir(family), cuda::Precision::kBf16);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    auto cpu = LoadCpuBackend(GoldenDir(family));
    ASSERT_TRUE(cpu.ok());
    auto ref = RunSequenceLogits(**cpu, *ids, {});
    ASSERT_TRUE(ref.ok());
    auto got =
        RunSequenceLogits(**gpu, *ids, PrefillThenDecode(static_cast<int64_t>(ids->size()), 100));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_LE(Report(absl::StrCat(family, " bf16 vs CPU fp32"), *got, *ref), 5e-2f) << family;
  }
}

// In bf16 precision a GDN model of a tensor-core shape (the "small" preset: dk 64, dv 128)
// prefills on the tensor-core path (runtime/cuda/gdn_common.cc): bf16 activations around the
// chunked kernel. A 1024-token chunk (16 pieces: the overlapped variant) and a 44-token one,
// then decode steps: close to the CPU reference at the bf16 bound, and close to the same
// backend forced onto the fp32 prefill kernel (HYLA_GDN_PREFILL_FP32=1).
TEST_F(GpuTest, CudaBf16GdnPrefillOnTensorCoresCloseToCpu) {
  auto shape = tools::PresetShape(Family::kGdn, "small");
  ASSERT_TRUE(shape.ok()) << shape.status();
  tools::GeneratorOptions g;
  g.shape = *shape;
  g.seed = 29;
  const std::string dir = absl::StrCat(::testing::TempDir(), "/hyla_cuda_gdn_tc");
  ASSERT_TRUE(tools::GenerateModel(g, dir).ok());
  auto cpu = LoadCpuBackend(dir);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  const int64_t vocab = (*cpu)->config().vocab_size;
  std::vector<int32_t> ids(1072);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<int32_t>((i * 7919 + 13) % static_cast<size_t>(vocab));
  }
  const std::vector<int64_t> split = {1024, 44, 1, 1, 1, 1};
  auto ref = RunSequenceLogits(**cpu, ids, {});
  ASSERT_TRUE(ref.ok());
  std::vector<float> logits[2];
  for (int fp32 = 0; fp32 < 2; ++fp32) {
    if (fp32 == 1) {
      ASSERT_EQ(setenv("HYLA_GDN_PREFILL_FP32", "1", 1), 0);
    }
    auto gpu = LoadCudaBackend(dir, cuda::Precision::kBf16);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    auto got = RunSequenceLogits(**gpu, ids, split);
    if (fp32 == 1) unsetenv("HYLA_GDN_PREFILL_FP32");
    ASSERT_TRUE(got.ok()) << got.status();
    logits[fp32] = *got;
    EXPECT_LE(Report(fp32 == 1 ? "gdn small bf16, fp32 prefill kernel, vs CPU fp32"
                               : "gdn small bf16, tensor-core prefill, vs CPU fp32",
                     *got, *ref),
              5e-2f);
  }
  EXPECT_LE(Report("gdn small bf16: tensor-core vs fp32 prefill kernel", logits[0], logits[1]),
            5e-2f);
}

// Programmatic dependent launch (kernels/common.cuh LaunchPdl) changes no result: prefill and
// graph-replayed decode steps give bit-identical logits with it off (HYLA_PDL=0's switch) and on,
// in both precisions, on every family.
TEST_F(GpuTest, CudaProgrammaticLaunchChangesNoLogit) {
  for (const char* family : {"gdn", "llama", "natsl", "nha"}) {
    auto ids = GoldenI32(family, "input_ids");
    ASSERT_TRUE(ids.ok());
    for (cuda::Precision precision : {cuda::Precision::kF32, cuda::Precision::kBf16}) {
      std::vector<float> logits[2];
      for (int pdl = 0; pdl < 2; ++pdl) {
        auto gpu = LoadCudaBackend(
            GoldenDir(family), precision, 8, 512,
            [&](cuda::CudaBackendOptions* o) { o->programmatic_launch = pdl == 1; });
        ASSERT_TRUE(gpu.ok()) << gpu.status();
        EXPECT_EQ(kernels::ProgrammaticDependentLaunch(), pdl == 1);
        auto got = RunSequenceLogits(**gpu, *ids,
                                     PrefillThenDecode(static_cast<int64_t>(ids->size()), 60));
        ASSERT_TRUE(got.ok()) << got.status();
        logits[pdl] = *got;
        EXPECT_GT((*gpu)->graph_replays(), 0) << family;
      }
      ASSERT_EQ(logits[0].size(), logits[1].size());
      EXPECT_EQ(std::memcmp(logits[0].data(), logits[1].data(), logits[0].size() * sizeof(float)),
                0)
          << family << " " << cuda::PrecisionName(precision) << ": max|diff| "
          << MaxAbsDiff(logits[0], logits[1]);
    }
  }
  kernels::SetProgrammaticDependentLaunch(true);
}

// The embedded default model (6.07M NAtS-L) and generated models of every family agree with the
// CPU backend over prefill + decode.
TEST_F(GpuTest, CudaMatchesCpuOnDefaultAndGeneratedModels) {
  std::vector<std::string> dirs;
  auto def = tools::FindDefaultModelDir();
  ASSERT_TRUE(def.ok()) << def.status();
  dirs.push_back(*def);
  const std::string tmp = ::testing::TempDir();
  const std::pair<Family, const char*> presets[] = {{Family::kNatsl, "tiny"},
                                                    {Family::kNha, "tiny"},
                                                    {Family::kGdn, "tiny-hybrid"},
                                                    {Family::kLlama, "tiny"}};
  int k = 0;
  for (const auto& [family, preset] : presets) {
    auto shape = tools::PresetShape(family, preset);
    ASSERT_TRUE(shape.ok()) << shape.status();
    tools::GeneratorOptions g;
    g.shape = *shape;
    g.seed = 17 + k;
    const std::string dir = absl::StrCat(tmp, "/hyla_cuda_gen_", k++);
    ASSERT_TRUE(tools::GenerateModel(g, dir).ok());
    dirs.push_back(dir);
  }
  std::vector<int32_t> ids(300);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13) % 256);
  for (const std::string& dir : dirs) {
    auto gpu = LoadCudaBackend(dir);
    ASSERT_TRUE(gpu.ok()) << dir << ": " << gpu.status();
    auto cpu = LoadCpuBackend(dir);
    ASSERT_TRUE(cpu.ok()) << dir << ": " << cpu.status();
    const int64_t vocab = (*cpu)->config().vocab_size;
    std::vector<int32_t> seq = ids;
    for (int32_t& t : seq) t %= static_cast<int32_t>(vocab);
    auto ref = RunSequenceLogits(**cpu, seq, {});
    ASSERT_TRUE(ref.ok());
    auto got = RunSequenceLogits(**gpu, seq, RandomSplit(static_cast<int64_t>(seq.size()), 90, 3));
    ASSERT_TRUE(got.ok()) << dir << ": " << got.status();
    EXPECT_LE(Report(absl::StrCat(dir, " fp32 split vs CPU"), *got, *ref), 1e-4f) << dir;
  }
}

// Decode steps replayed from whole-step CUDA graphs keep the attention layers' device-resident
// block tables right while the batch changes under them: sequences leave, join and change rows,
// a fork shares blocks and copies the shared one on write, contexts cross 64-token blocks and a
// sliding window drops blocks. Every step's logits equal the CPU backend's (fp32).
TEST_F(GpuTest, CudaDecodeGraphsFollowBatchChanges) {
  struct Model {
    Family family;
    const char* preset;
    int window;  // gdn hybrids: attn_window_size
  };
  const Model models[] = {{Family::kGdn, "tiny-hybrid", 0},
                          {Family::kGdn, "tiny-hybrid", 80},
                          {Family::kLlama, "tiny", 0}};
  int k = 0;
  for (const Model& m : models) {
    auto shape = tools::PresetShape(m.family, m.preset);
    ASSERT_TRUE(shape.ok()) << shape.status();
    tools::GeneratorOptions g;
    g.shape = *shape;
    g.shape.attn_window_size = m.window;
    g.seed = 41 + k;
    const std::string dir = absl::StrCat(::testing::TempDir(), "/hyla_cuda_graph_tables_", k++);
    ASSERT_TRUE(tools::GenerateModel(g, dir).ok());
    auto gpu = LoadCudaBackend(dir);
    ASSERT_TRUE(gpu.ok()) << dir << ": " << gpu.status();
    auto cpu = LoadCpuBackend(dir);
    ASSERT_TRUE(cpu.ok()) << dir << ": " << cpu.status();
    Backend* backends[2] = {gpu->get(), cpu->get()};
    const int vocab = (*cpu)->config().vocab_size;
    // Sequence j exists on both backends; prompts of different lengths.
    std::vector<std::unique_ptr<SequenceState>> seqs[2];
    uint32_t rng = 12345;
    auto next_token = [&]() {
      rng = rng * 1664525u + 1013904223u;
      return static_cast<int32_t>((rng >> 8) % static_cast<uint32_t>(vocab));
    };
    auto add_seq = [&](int64_t prompt) {
      std::vector<int32_t> ids(static_cast<size_t>(prompt));
      for (int32_t& t : ids) t = next_token();
      for (int b = 0; b < 2; ++b) {
        auto s = backends[b]->store().NewSequence();
        ASSERT_TRUE(s.ok()) << s.status();
        backends[b]->ResetSlot((*s)->slot);
        SequenceWork w;
        w.seq = s->get();
        w.tokens = ids;
        w.logits = LogitsMode::kNone;
        StepOutput out;
        ASSERT_TRUE(backends[b]->Step({w}, &out).ok());
        seqs[b].push_back(std::move(*s));
      }
    };
    add_seq(60);
    add_seq(130);
    add_seq(7);
    std::vector<int> active = {0, 1, 2};
    float worst = 0.0f;
    for (int step = 0; step < 90; ++step) {
      if (step == 20) active.erase(active.begin() + 1);  // sequence 1 leaves
      if (step == 30) {                                  // sequence 3 joins
        add_seq(63);
        active.push_back(3);
      }
      if (step == 45) {  // a fork of sequence 0 (mid-block: its next token copies the block)
        for (int b = 0; b < 2; ++b) {
          auto child = backends[b]->store().Fork(*seqs[b][0]);
          ASSERT_TRUE(child.ok()) << child.status();
          backends[b]->CopySlot(seqs[b][0]->slot, (*child)->slot);
          seqs[b].push_back(std::move(*child));
        }
        active.push_back(4);
      }
      if (step % 7 == 3) std::reverse(active.begin(), active.end());  // rows change
      std::vector<int32_t> tokens(active.size());
      for (int32_t& t : tokens) t = next_token();
      std::vector<float> logits[2];
      for (int b = 0; b < 2; ++b) {
        std::vector<SequenceWork> batch(active.size());
        for (size_t i = 0; i < active.size(); ++i) {
          batch[i].seq = seqs[b][static_cast<size_t>(active[i])].get();
          batch[i].tokens = absl::MakeConstSpan(&tokens[i], 1);
        }
        StepOutput out;
        const absl::Status st = backends[b]->Step(batch, &out);
        ASSERT_TRUE(st.ok()) << dir << " step " << step << ": " << st;
        logits[b] = out.logits;
      }
      const float rel = MaxAbsDiff(logits[0], logits[1]) / std::max(MaxAbs(logits[1]), 1e-30f);
      worst = std::max(worst, rel);
      ASSERT_LE(rel, 1e-4f) << dir << " (window " << m.window << ") step " << step;
    }
    std::printf("[gpu-error] decode graphs vs CPU, %s window %d: rel %.3g; %lld replays\n",
                m.preset, m.window, worst, static_cast<long long>((*gpu)->graph_replays()));
    EXPECT_GT((*gpu)->graph_replays(), 80) << dir;
    for (int b = 0; b < 2; ++b) {
      for (auto& s : seqs[b]) backends[b]->store().Release(std::move(s));
    }
  }
}

// Small whole-model runs of every family (fp32 and bf16) for compute-sanitizer memcheck and
// racecheck: every layer kind, prefill across a chunk end, decode and a mixed batch.
TEST_F(GpuTest, CudaBackendSmallModelsForSanitizers) {
  const std::string tmp = ::testing::TempDir();
  const std::pair<Family, const char*> presets[] = {{Family::kNatsl, "tiny"},
                                                    {Family::kNha, "tiny"},
                                                    {Family::kGdn, "tiny-hybrid"},
                                                    {Family::kLlama, "tiny"}};
  int k = 0;
  for (const auto& [family, preset] : presets) {
    auto shape = tools::PresetShape(family, preset);
    ASSERT_TRUE(shape.ok()) << shape.status();
    tools::GeneratorOptions g;
    g.shape = *shape;
    g.seed = 5 + k;
    const std::string dir = absl::StrCat(tmp, "/hyla_cuda_san_", k++);
    ASSERT_TRUE(tools::GenerateModel(g, dir).ok());
    auto cpu = LoadCpuBackend(dir);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    std::vector<int32_t> ids(72);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 31 + 7) % 256);
    auto ref = RunSequenceLogits(**cpu, ids, {});
    ASSERT_TRUE(ref.ok());
    for (cuda::Precision p : {cuda::Precision::kF32, cuda::Precision::kBf16}) {
      auto gpu = LoadCudaBackend(dir, p);
      ASSERT_TRUE(gpu.ok()) << dir << ": " << gpu.status();
      auto got = RunSequenceLogits(**gpu, ids, {66, 1, 1, 4});
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_LE(Report(absl::StrCat(dir, " small ", cuda::PrecisionName(p), " vs CPU"), *got, *ref),
                p == cuda::Precision::kF32 ? 1e-4f : 5e-2f);
    }
  }
}

// Bad input is rejected with InvalidArgument before any state changes.
TEST_F(GpuTest, CudaRejectsBadInputWithoutTouchingState) {
  auto gpu = LoadCudaBackend(GoldenDir("llama"));
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  StateStore& store = (*gpu)->store();
  auto seq = store.NewSequence();
  ASSERT_TRUE(seq.ok());
  (*gpu)->ResetSlot((*seq)->slot);
  const std::vector<int32_t> bad = {1, 2, 999};
  SequenceWork w;
  w.seq = seq->get();
  w.tokens = bad;
  StepOutput out;
  absl::Status st = (*gpu)->Step({w}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("999"), absl::string_view::npos) << st;
  EXPECT_EQ((*seq)->num_tokens, 0);
  std::vector<int32_t> many(2000, 1);
  w.tokens = many;
  st = (*gpu)->Step({w}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("max_step_tokens"), absl::string_view::npos) << st;
  EXPECT_EQ((*seq)->num_tokens, 0);
  store.Release(std::move(seq).value());
}

// Linear's bf16 GEMMs on the GEMM tuner (DeviceContext::gemm_tune, runtime/cuda/gemm_tuner.h):
// every shape (odd row counts, x and y row strides, bias, a long K that draws split-K candidates,
// a wide y stride that is not a multiple of 4) against a CPU double reference on the same
// bf16-rounded operands (bound 1e-3 · max |ref|: only the fp32 accumulation order differs). The
// first call of a shape tunes it (the tuner's count goes up by one) and leaves the product in y;
// the second call runs the plan and must give the same bits; a CUDA graph of the call replays the
// plan with the same bits too. A shape first met inside a capture runs cublasGemmEx there (no
// tuning while capturing) and is tuned at its first eager call. Row padding of y stays untouched.
TEST_F(GpuTest, TunedBf16LinearMatchesCpu) {
  auto dev = cuda::DeviceContext::Create(0, size_t{64} << 20);
  ASSERT_TRUE(dev.ok()) << dev.status();
  cuda::DeviceContext& ctx = **dev;
  ctx.set_gemm_tune(true);
  cuda::GemmTuner* tuner = ctx.gemm_tuner();
  ASSERT_NE(tuner, nullptr) << "cuBLASLt not loadable: the tuner cannot be tested";
  cuda::DeviceWeights weights(&ctx, cuda::Precision::kBf16);
  struct Case {
    int64_t rows, out, in, x_stride, y_stride;
    bool bias;
    bool capture_first;  // the shape's first call is inside a graph capture
  };
  const Case cases[] = {
      {1, 96, 64, 0, 0, false, false},          {7, 257, 200, 0, 0, true, false},
      {33, 130, 136, 150, 301, true, false},    {64, 2048, 512, 0, 0, false, false},
      {5, 1000, 2048, 2100, 1003, true, false}, {64, 520, 4096, 0, 0, false, false},
      {3, 384, 256, 0, 0, true, true},          {64, 1024, 1024, 0, 1030, false, true}};
  uint32_t rng = 777;
  auto uniform = [&]() {
    rng = rng * 1664525u + 1013904223u;
    return static_cast<float>((rng >> 8) & 0xFFFF) / 32768.0f - 1.0f;
  };
  constexpr float kSentinel = 12345.0f;
  for (const Case& c : cases) {
    const std::string tag = absl::StrCat("rows ", c.rows, " out ", c.out, " in ", c.in,
                                         " x_stride ", c.x_stride, " y_stride ", c.y_stride,
                                         c.bias ? " bias" : "", c.capture_first ? " capture" : "");
    const int64_t xs = c.x_stride == 0 ? c.in : c.x_stride;
    const int64_t ys = c.y_stride == 0 ? c.out : c.y_stride;
    std::vector<float> hw(static_cast<size_t>(c.out * c.in)), hx(static_cast<size_t>(c.rows * xs));
    std::vector<float> hb(static_cast<size_t>(c.out));
    for (float& v : hw) v = uniform();
    for (float& v : hx) v = uniform();
    for (float& v : hb) v = uniform();
    auto w = weights.Matrix(F32Tensor::View(hw.data(), {c.out, c.in}), "w");
    ASSERT_TRUE(w.ok()) << w.status();
    auto bias = weights.F32(hb, "bias");
    ASSERT_TRUE(bias.ok()) << bias.status();
    auto dx = cuda::DeviceBuffer::Allocate(hx.size() * sizeof(float), "x");
    ASSERT_TRUE(dx.ok()) << dx.status();
    const size_t y_count = static_cast<size_t>(c.rows * ys);
    auto dy = cuda::DeviceBuffer::Allocate(y_count * sizeof(float), "y");
    ASSERT_TRUE(dy.ok()) << dy.status();
    ASSERT_TRUE(ctx.CopyToDevice(dx->get(), hx.data(), hx.size() * sizeof(float)).ok());
    const std::vector<float> sentinel(y_count, kSentinel);
    auto reset_y = [&]() {
      ASSERT_TRUE(ctx.CopyToDevice(dy->get(), sentinel.data(), y_count * sizeof(float)).ok());
    };
    auto linear = [&]() {
      return cuda::Linear(ctx, dx->as<float>(), c.rows, *w, c.bias ? *bias : nullptr,
                          dy->as<float>(), c.x_stride, c.y_stride);
    };
    auto fetch = [&](std::vector<float>* out) {
      out->resize(y_count);
      ASSERT_TRUE(ctx.CopyToHost(out->data(), dy->get(), y_count * sizeof(float)).ok());
      ASSERT_TRUE(ctx.Synchronize().ok());
    };
    // CPU reference on the bf16-rounded operands.
    double max_ref = 0.0;
    std::vector<double> ref(static_cast<size_t>(c.rows * c.out));
    for (int64_t i = 0; i < c.rows; ++i) {
      for (int64_t j = 0; j < c.out; ++j) {
        double s = c.bias ? hb[static_cast<size_t>(j)] : 0.0;
        for (int64_t k = 0; k < c.in; ++k) {
          s += static_cast<double>(Bf16ToFloat(FloatToBf16(hx[static_cast<size_t>(i * xs + k)]))) *
               Bf16ToFloat(FloatToBf16(hw[static_cast<size_t>(j * c.in + k)]));
        }
        ref[static_cast<size_t>(i * c.out + j)] = s;
        max_ref = std::max(max_ref, std::fabs(s));
      }
    }
    auto check = [&](const std::vector<float>& got, const char* what) {
      double max_diff = 0.0;
      int64_t padding_touched = 0;
      for (int64_t i = 0; i < c.rows; ++i) {
        for (int64_t j = 0; j < ys; ++j) {
          const float g = got[static_cast<size_t>(i * ys + j)];
          if (j >= c.out) {
            padding_touched += g != kSentinel;
            continue;
          }
          const double d = std::fabs(g - ref[static_cast<size_t>(i * c.out + j)]);
          max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
        }
      }
      const double rel = max_diff / std::max(max_ref, 1e-30);
      std::printf("[gpu-error] tuned bf16 linear %s, %s: rel %.3g\n", tag.c_str(), what, rel);
      EXPECT_LE(rel, 1e-3) << tag << " " << what;
      EXPECT_EQ(padding_touched, 0) << tag << " " << what;
    };
    const int64_t tuned_before = tuner->tuned_count();
    std::vector<float> first, again, replayed;
    cudaStream_t stream = ctx.stream();
    if (c.capture_first) {
      // Untuned inside a capture: cublasGemmEx in the graph, no tuning.
      reset_y();
      ctx.scratch().Rewind();
      ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
      const absl::Status st = linear();
      auto exec = cuda::CudaGraphExec::EndCapture(stream);
      ASSERT_TRUE(st.ok()) << tag << ": " << st;
      ASSERT_TRUE(exec.ok()) << tag << ": " << exec.status();
      EXPECT_EQ(tuner->tuned_count(), tuned_before) << tag << ": tuned inside a capture";
      ASSERT_TRUE(exec->Launch(stream).ok());
      std::vector<float> untuned;
      fetch(&untuned);
      check(untuned, "untuned graph (cublasGemmEx)");
    }
    reset_y();
    ctx.scratch().Rewind();
    const absl::Status st = linear();  // tunes the shape
    ASSERT_TRUE(st.ok()) << tag << ": " << st;
    fetch(&first);
    EXPECT_EQ(tuner->tuned_count(), tuned_before + 1) << tag << ": not tuned at its first call";
    check(first, "tuning call");
    reset_y();
    ctx.scratch().Rewind();
    ASSERT_TRUE(linear().ok()) << tag;
    fetch(&again);
    EXPECT_EQ(tuner->tuned_count(), tuned_before + 1) << tag << ": tuned twice";
    EXPECT_EQ(std::memcmp(first.data(), again.data(), y_count * sizeof(float)), 0)
        << tag << ": the plan's call differs from the tuning call";
    // The plan inside a CUDA graph.
    reset_y();
    ctx.scratch().Rewind();
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    const absl::Status cst = linear();
    auto exec = cuda::CudaGraphExec::EndCapture(stream);
    ASSERT_TRUE(cst.ok()) << tag << ": " << cst;
    ASSERT_TRUE(exec.ok()) << tag << ": " << exec.status();
    ASSERT_TRUE(exec->Launch(stream).ok());
    fetch(&replayed);
    EXPECT_EQ(std::memcmp(first.data(), replayed.data(), y_count * sizeof(float)), 0)
        << tag << ": the graph replay differs from the eager plan";
    ctx.scratch().Rewind();
  }
}

}  // namespace
}  // namespace hyla
