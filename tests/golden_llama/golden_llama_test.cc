// The Llama baseline against the fixture made by transformers 5.17 LlamaForCausalLM
// (shared/golden/llama): full logits, prefill + decode, greedy; and the properties the golden
// fixture does not pin down — split and batch invariance, KV accounting, sliding windows, evicted
// chunks, biases, forks — against a naive double-precision reference (llama_reference.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/engine/sequence_runner.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/safetensors.h"
#include "tests/golden_llama/llama_reference.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

using ::hyla::testing::GoldenDir;
using ::hyla::testing::GoldenF32;
using ::hyla::testing::GoldenI32;
using ::hyla::testing::MaxAbsDiff;
using ::hyla::testing::PrefillThenDecode;
using ::hyla::testing::RandomSplit;
using ::hyla::testing::RefLlama;
using ::hyla::testing::RefLlamaDims;
using ::hyla::testing::RefMask;

constexpr float kTol = 1e-4f;  // README: recommended tolerance for llama (fp32 server)
constexpr int64_t kVocab = 256;
// The fixture's shapes, from shared/golden/README.md (not read through hyla's parser).
constexpr int kLayers = 4, kKvHeads = 2, kHeadDim = 32;

RefLlamaDims FixtureDims() {
  RefLlamaDims d;
  d.vocab = 256;
  d.hidden = 128;
  d.layers = kLayers;
  d.heads = 4;
  d.kv_heads = kKvHeads;
  d.head_dim = kHeadDim;
  d.inter = 256;
  d.eps = 1e-6;
  d.theta = 10000.0;
  return d;
}

std::string Dir() { return GoldenDir("llama"); }

absl::StatusOr<std::unique_ptr<cpu::CpuBackend>> Load(const std::string& dir,
                                                      StateStoreOptions store = {}) {
  auto ck = Checkpoint::Open(dir);
  if (!ck.ok()) return ck.status();
  cpu::CpuBackendOptions o;
  o.num_threads = 2;
  o.store = store;
  if (o.store.num_blocks < 256) o.store.num_blocks = 256;
  return cpu::CpuBackend::Create(std::move(ck).value(), o);
}

std::vector<int32_t> GoldenIds() {
  auto ids = GoldenI32("llama", "input_ids");
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A copy of the fixture checkpoint in a fresh directory with config.json edited by `edit` and,
// when `extra` is given, model.safetensors rewritten with extra tensors appended.
std::string VariantDir(const std::string& name, const std::function<std::string(std::string)>& edit,
                       const std::vector<TensorToWrite>& extra = {}) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / ("hyla_llama_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << edit(ReadText(Dir() + "/config.json"));
  if (extra.empty()) {
    fs::copy_file(Dir() + "/model.safetensors", dir / "model.safetensors");
  } else {
    auto file = SafetensorsFile::Open(Dir() + "/model.safetensors");
    EXPECT_TRUE(file.ok()) << file.status();
    std::vector<TensorToWrite> all;
    for (const TensorInfo& t : (*file)->tensors()) {
      TensorToWrite w;
      w.name = t.name;
      w.dtype = t.dtype;
      w.shape = t.shape;
      w.bytes.assign(t.data, t.data + t.nbytes);
      all.push_back(std::move(w));
    }
    all.insert(all.end(), extra.begin(), extra.end());
    const absl::Status st = WriteSafetensors((dir / "model.safetensors").string(), all);
    EXPECT_TRUE(st.ok()) << st;
  }
  return dir.string();
}

std::string Replace(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

std::string WithSlidingWindow(const std::string& config, int window) {
  return Replace(config, "\"model_type\": \"llama\",",
                 absl::StrCat("\"model_type\": \"llama\",\n  \"sliding_window\": ", window, ","));
}

// Feeds `ids` to a fresh sequence in `chunks`, calling `check(seq, tokens_so_far)` after every
// step, and returns all logits [T, vocab]. The sequence is released at the end.
std::vector<float> RunChecked(Backend& backend, const std::vector<int32_t>& ids,
                              const std::vector<int64_t>& chunks,
                              const std::function<void(const SequenceState&, int64_t)>& check) {
  auto seq_or = backend.store().NewSequence();
  EXPECT_TRUE(seq_or.ok()) << seq_or.status();
  if (!seq_or.ok()) return {};
  std::unique_ptr<SequenceState> seq = std::move(seq_or).value();
  backend.ResetSlot(seq->slot);
  std::vector<float> logits;
  int64_t pos = 0;
  for (int64_t c : chunks) {
    SequenceWork w;
    w.seq = seq.get();
    w.tokens = absl::MakeConstSpan(ids).subspan(pos, c);
    w.logits = LogitsMode::kAll;
    StepOutput out;
    const absl::Status st = backend.Step({w}, &out);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) break;
    logits.insert(logits.end(), out.logits.begin(), out.logits.end());
    pos += c;
    check(*seq, pos);
  }
  backend.store().Release(std::move(seq));
  return logits;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

TEST(GoldenLlama, ConfigIsTheFixtures) {
  auto config = Checkpoint::ReadConfig(Dir());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->family, Family::kLlama);
  EXPECT_EQ(config->num_layers, kLayers);
  ASSERT_EQ(config->layers.size(), 4u);
  for (const LayerConfig& l : config->layers) {
    EXPECT_EQ(l.kind, LayerKind::kAttention);
    EXPECT_EQ(l.attention.num_heads, 4);
    EXPECT_EQ(l.attention.num_kv_heads, kKvHeads);
    EXPECT_EQ(l.attention.head_dim, kHeadDim);
    EXPECT_EQ(l.attention.rotary_dim, kHeadDim);
    EXPECT_EQ(l.attention.rope_theta, 10000.0f);
    EXPECT_EQ(l.attention.window_size, 0);
  }
}

TEST(GoldenLlama, FullLogitsMatchGolden) {
  auto backend = Load(Dir());
  ASSERT_TRUE(backend.ok()) << backend.status();
  const std::vector<int32_t> ids = GoldenIds();
  auto golden = GoldenF32("llama", "logits");
  ASSERT_TRUE(golden.ok()) << golden.status();
  ASSERT_EQ(ids.size(), 200u);
  auto logits = RunSequenceLogits(**backend, ids, {});
  ASSERT_TRUE(logits.ok()) << logits.status();
  const float diff = MaxAbsDiff(*logits, *golden);
  std::printf("[llama] full logits: max |diff| vs golden = %.3g\n", diff);
  EXPECT_LE(diff, kTol);
}

TEST(GoldenLlama, PrefillThenDecodeMatchesGolden) {
  auto backend = Load(Dir());
  ASSERT_TRUE(backend.ok()) << backend.status();
  const std::vector<int32_t> ids = GoldenIds();
  auto golden = GoldenF32("llama", "decode_logits");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const std::vector<int64_t> chunks = PrefillThenDecode(200, 70);
  auto logits = RunSequenceLogits(**backend, ids, chunks);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const float prefill = MaxAbsDiff(*logits, *golden, 0, 70 * kVocab);
  const float decode = MaxAbsDiff(*logits, *golden, 70 * kVocab);
  std::printf("[llama] decode logits: max |diff| prefill rows %.3g, decode rows %.3g\n", prefill,
              decode);
  EXPECT_LE(prefill, kTol);
  EXPECT_LE(decode, kTol);
}

TEST(GoldenLlama, GreedyMatchesGolden) {
  auto backend_or = Load(Dir());
  ASSERT_TRUE(backend_or.ok()) << backend_or.status();
  Backend& backend = **backend_or;
  const std::vector<int32_t> ids = GoldenIds();
  auto greedy = GoldenI32("llama", "greedy");
  auto margin = GoldenF32("llama", "greedy_top2_margin");
  ASSERT_TRUE(greedy.ok()) << greedy.status();
  ASSERT_TRUE(margin.ok()) << margin.status();
  ASSERT_EQ(greedy->size(), 32u);

  auto seq_or = backend.store().NewSequence();
  ASSERT_TRUE(seq_or.ok());
  std::unique_ptr<SequenceState> seq = std::move(seq_or).value();
  backend.ResetSlot(seq->slot);
  std::vector<int32_t> feed = ids;
  int binding = 0;
  for (size_t step = 0; step < greedy->size(); ++step) {
    SequenceWork w;
    w.seq = seq.get();
    w.tokens = feed;
    w.logits = LogitsMode::kLast;
    StepOutput out;
    ASSERT_TRUE(backend.Step({w}, &out).ok());
    ASSERT_EQ(out.logits.size(), static_cast<size_t>(kVocab));
    const int32_t next = static_cast<int32_t>(
        std::max_element(out.logits.begin(), out.logits.end()) - out.logits.begin());
    // README: compare up to the first step whose margin is below 10× the logit tolerance.
    if ((*margin)[step] < 10 * kTol) break;
    ++binding;
    EXPECT_EQ(next, (*greedy)[step]) << "greedy step " << step;
    feed = {next};
  }
  backend.store().Release(std::move(seq));
  std::printf("[llama] greedy: %d of 32 steps binding, all equal\n", binding);
  EXPECT_EQ(binding, 32);  // the fixture's min margin is 0.066, far above 1e-3
}

// The test's own reference is first checked against the golden logits.
TEST(GoldenLlama, ReferenceMatchesGolden) {
  auto ref = RefLlama::Load(Dir(), FixtureDims());
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto golden = GoldenF32("llama", "logits");
  ASSERT_TRUE(golden.ok());
  const float diff = MaxAbsDiff(ref->Logits(GoldenIds(), RefMask{}), *golden);
  std::printf("[llama] double reference vs golden: max |diff| = %.3g\n", diff);
  EXPECT_LE(diff, kTol);
}

TEST(GoldenLlama, SplitInvariance) {
  auto backend = Load(Dir());
  ASSERT_TRUE(backend.ok()) << backend.status();
  const std::vector<int32_t> ids = GoldenIds();
  auto whole = RunSequenceLogits(**backend, ids, {});
  ASSERT_TRUE(whole.ok()) << whole.status();
  float worst = 0;
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    const std::vector<int64_t> split = RandomSplit(200, 80, seed);
    auto logits = RunSequenceLogits(**backend, ids, split);
    ASSERT_TRUE(logits.ok()) << logits.status();
    const float diff = MaxAbsDiff(*logits, *whole);
    EXPECT_LE(diff, 1e-5f) << "seed " << seed;
    worst = std::max(worst, diff);
  }
  auto one_by_one = RunSequenceLogits(**backend, ids, std::vector<int64_t>(200, 1));
  ASSERT_TRUE(one_by_one.ok());
  const float token_diff = MaxAbsDiff(*one_by_one, *whole);
  EXPECT_LE(token_diff, 1e-5f);
  std::printf("[llama] split invariance: random splits %.3g, token by token %.3g\n", worst,
              token_diff);
}

TEST(GoldenLlama, BatchedEqualsAlone) {
  auto backend = Load(Dir());
  ASSERT_TRUE(backend.ok()) << backend.status();
  const std::vector<int32_t> ids = GoldenIds();
  std::vector<int32_t> reversed(ids.rbegin(), ids.rend());
  std::vector<int32_t> prefix(ids.begin(), ids.begin() + 131);
  const std::vector<std::vector<int32_t>> all = {ids, reversed, prefix};
  const std::vector<std::vector<int64_t>> chunks = {
      RandomSplit(200, 80, 11), PrefillThenDecode(200, 70), RandomSplit(131, 80, 12)};
  auto batched = RunBatchedLogits(**backend, all, chunks);
  ASSERT_TRUE(batched.ok()) << batched.status();
  for (size_t i = 0; i < all.size(); ++i) {
    auto alone = RunSequenceLogits(**backend, all[i], {});
    ASSERT_TRUE(alone.ok());
    EXPECT_EQ((*batched)[i], *alone)
        << "sequence " << i << " differs (max |diff| " << MaxAbsDiff((*batched)[i], *alone) << ")";
  }
}

TEST(GoldenLlama, KvAccounting) {
  auto backend_or = Load(Dir());
  ASSERT_TRUE(backend_or.ok()) << backend_or.status();
  Backend& backend = **backend_or;
  const std::vector<int32_t> ids = GoldenIds();
  ASSERT_EQ(backend.layout().num_streams(), kLayers);
  int checks = 0;
  RunChecked(backend, ids, RandomSplit(200, 80, 5), [&](const SequenceState& seq, int64_t T) {
    const int64_t blocks = CeilDiv(T, 64);
    for (int s = 0; s < kLayers; ++s) {
      ASSERT_EQ(static_cast<int64_t>(seq.streams[s].size()), blocks) << "T=" << T;
      for (int64_t c = 0; c < blocks; ++c) EXPECT_EQ(seq.streams[s][c].chunk, c);
    }
    const SequenceMemory m = backend.store().MemoryOf(seq);
    EXPECT_EQ(m.kv_blocks, kLayers * blocks);
    EXPECT_EQ(m.kv_bytes, int64_t{kLayers} * blocks * 64 * kKvHeads * 2 * kHeadDim * 4) << T;
    EXPECT_EQ(m.softmax_equivalent_bytes, T * int64_t{kLayers} * kKvHeads * 2 * kHeadDim * 4);
    EXPECT_EQ(backend.layout().KvBlocksAt(T, 1.0), kLayers * blocks);
    ++checks;
  });
  EXPECT_GT(checks, 2);
  EXPECT_EQ(backend.store().free_blocks(), backend.store().num_blocks());
}

TEST(GoldenLlama, ForkContinuesLikeAFreshSequence) {
  auto backend_or = Load(Dir());
  ASSERT_TRUE(backend_or.ok()) << backend_or.status();
  Backend& backend = **backend_or;
  const std::vector<int32_t> ids = GoldenIds();
  std::vector<int32_t> other(ids.begin(), ids.begin() + 70);
  for (int i = 0; i < 60; ++i) other.push_back((ids[i] * 7 + 3) % kVocab);

  auto parent_or = backend.store().NewSequence();
  ASSERT_TRUE(parent_or.ok());
  std::unique_ptr<SequenceState> parent = std::move(parent_or).value();
  backend.ResetSlot(parent->slot);
  auto step = [&](SequenceState* seq, const std::vector<int32_t>& toks, int64_t from, int64_t n) {
    SequenceWork w;
    w.seq = seq;
    w.tokens = absl::MakeConstSpan(toks).subspan(from, n);
    w.logits = LogitsMode::kAll;
    StepOutput out;
    const absl::Status st = backend.Step({w}, &out);
    EXPECT_TRUE(st.ok()) << st;
    return out.logits;
  };
  step(parent.get(), ids, 0, 70);  // 70 tokens: block 1 is partial and will be shared
  auto child_or = backend.store().Fork(*parent);
  ASSERT_TRUE(child_or.ok());
  std::unique_ptr<SequenceState> child = std::move(child_or).value();
  backend.CopySlot(parent->slot, child->slot);
  const std::vector<float> child_tail = step(child.get(), other, 70, 60);
  const std::vector<float> parent_tail = step(parent.get(), ids, 70, 130);
  backend.store().Release(std::move(child));
  backend.store().Release(std::move(parent));

  auto fresh_parent = RunSequenceLogits(backend, ids, {});
  auto fresh_child = RunSequenceLogits(backend, other, {});
  ASSERT_TRUE(fresh_parent.ok() && fresh_child.ok());
  EXPECT_EQ(parent_tail,
            std::vector<float>(fresh_parent->begin() + 70 * kVocab, fresh_parent->end()));
  EXPECT_EQ(child_tail, std::vector<float>(fresh_child->begin() + 70 * kVocab, fresh_child->end()));
  EXPECT_EQ(backend.store().free_blocks(), backend.store().num_blocks());
}

class SlidingWindowTest : public ::testing::TestWithParam<int> {};

TEST_P(SlidingWindowTest, MatchesReferenceInvariantAndBounded) {
  const int window = GetParam();
  const std::string dir = VariantDir(absl::StrCat("window", window),
                                     [&](std::string c) { return WithSlidingWindow(c, window); });
  auto backend_or = Load(dir);
  ASSERT_TRUE(backend_or.ok()) << backend_or.status();
  Backend& backend = **backend_or;
  ASSERT_EQ(backend.config().layers[0].attention.window_size, window);
  const std::vector<int32_t> ids = GoldenIds();

  auto ref = RefLlama::Load(dir, FixtureDims());
  ASSERT_TRUE(ref.ok()) << ref.status();
  RefMask mask;
  mask.window = window;
  const std::vector<float> expected = ref->Logits(ids, mask);

  // A window changes the model: the reference must differ from full attention once T > window.
  const float vs_full = MaxAbsDiff(expected, ref->Logits(ids, RefMask{}));
  EXPECT_GT(vs_full, 1e-3f);  // every window tested is below T = 200

  const int64_t max_blocks = CeilDiv(window - 1, 64) + 1;  // blocks a window can straddle
  auto check = [&](const SequenceState& seq, int64_t T) {
    const int64_t first = std::max<int64_t>(0, T - window + 1) / 64;
    const int64_t want = (T - 1) / 64 - first + 1;
    for (int s = 0; s < kLayers; ++s) {
      ASSERT_EQ(static_cast<int64_t>(seq.streams[s].size()), want) << "T=" << T;
      EXPECT_LE(static_cast<int64_t>(seq.streams[s].size()), max_blocks);
      EXPECT_EQ(StateLayout::StreamBlocksAt(backend.layout().streams()[s], T, 1.0), want);
    }
    EXPECT_EQ(backend.store().MemoryOf(seq).kv_blocks, kLayers * want);
    EXPECT_EQ(backend.layout().KvBlocksAt(T, 1.0), kLayers * want);
  };
  const std::vector<float> whole = RunChecked(backend, ids, {200}, check);
  const float diff = MaxAbsDiff(whole, expected);
  std::printf("[llama] window %d: max |diff| vs double reference %.3g (window vs full %.3g)\n",
              window, diff, vs_full);
  EXPECT_LE(diff, kTol);

  float worst = 0;
  for (uint32_t seed = 21; seed <= 24; ++seed) {
    const std::vector<float> split = RunChecked(backend, ids, RandomSplit(200, 80, seed), check);
    worst = std::max(worst, MaxAbsDiff(split, whole));
  }
  worst = std::max(
      worst, MaxAbsDiff(RunChecked(backend, ids, std::vector<int64_t>(200, 1), check), whole));
  std::printf("[llama] window %d: split/decode invariance max |diff| %.3g\n", window, worst);
  EXPECT_LE(worst, 1e-5f);
  EXPECT_EQ(backend.store().free_blocks(), backend.store().num_blocks());
}

INSTANTIATE_TEST_SUITE_P(Windows, SlidingWindowTest, ::testing::Values(1, 32, 64, 65, 100, 150));

TEST(GoldenLlama, EvictOldestAttendsToWhatIsKept) {
  StateStoreOptions store;
  store.max_kv_tokens_per_stream = 128;  // two blocks per stream
  store.cap_policy = KvCapPolicy::kEvictOldest;
  auto backend_or = Load(Dir(), store);
  ASSERT_TRUE(backend_or.ok()) << backend_or.status();
  Backend& backend = **backend_or;
  const std::vector<int32_t> ids = GoldenIds();
  auto ref = RefLlama::Load(Dir(), FixtureDims());
  ASSERT_TRUE(ref.ok());
  RefMask mask;
  mask.cap_blocks = 2;
  const std::vector<float> expected = ref->Logits(ids, mask);
  auto check = [&](const SequenceState& seq, int64_t T) {
    for (int s = 0; s < kLayers; ++s) {
      EXPECT_EQ(static_cast<int64_t>(seq.streams[s].size()), std::min<int64_t>(2, CeilDiv(T, 64)));
    }
  };
  const std::vector<float> whole = RunChecked(backend, ids, {200}, check);
  const float diff = MaxAbsDiff(whole, expected);
  float worst = 0;
  for (uint32_t seed = 31; seed <= 33; ++seed) {
    worst = std::max(
        worst, MaxAbsDiff(RunChecked(backend, ids, RandomSplit(200, 80, seed), check), whole));
  }
  std::printf("[llama] evict-oldest cap 128: max |diff| vs reference %.3g, split invariance %.3g\n",
              diff, worst);
  EXPECT_LE(diff, kTol);
  EXPECT_LE(worst, 1e-5f);
}

TEST(GoldenLlama, AttentionBiasMatchesReference) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<TensorToWrite> biases;
  const std::pair<const char*, int64_t> shapes[] = {
      {"q_proj", 128}, {"k_proj", 64}, {"v_proj", 64}, {"o_proj", 128}};
  for (int l = 0; l < kLayers; ++l) {
    for (const auto& [proj, width] : shapes) {
      TensorToWrite t;
      t.name = absl::StrCat("model.layers.", l, ".self_attn.", proj, ".bias");
      t.dtype = DType::kF32;
      t.shape = {width};
      std::vector<float> v(static_cast<size_t>(width));
      for (float& x : v) x = dist(rng);
      t.bytes.resize(v.size() * 4);
      std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
      biases.push_back(std::move(t));
    }
  }
  const std::string dir = VariantDir(
      "bias",
      [](std::string c) {
        return Replace(c, "\"attention_bias\": false", "\"attention_bias\": true");
      },
      biases);
  auto backend = Load(dir);
  ASSERT_TRUE(backend.ok()) << backend.status();
  auto ref = RefLlama::Load(dir, FixtureDims());
  ASSERT_TRUE(ref.ok()) << ref.status();
  const std::vector<int32_t> ids = GoldenIds();
  auto logits = RunSequenceLogits(**backend, ids, RandomSplit(200, 80, 3));
  ASSERT_TRUE(logits.ok()) << logits.status();
  const std::vector<float> expected = ref->Logits(ids, RefMask{});
  auto golden = GoldenF32("llama", "logits");
  ASSERT_TRUE(golden.ok());
  EXPECT_GT(MaxAbsDiff(expected, *golden), 1e-3f);  // the biases matter
  const float diff = MaxAbsDiff(*logits, expected);
  std::printf("[llama] attention_bias: max |diff| vs reference %.3g\n", diff);
  EXPECT_LE(diff, kTol);
}

TEST(GoldenLlama, MissingBiasTensorIsAnError) {
  const std::string dir = VariantDir("nobias", [](std::string c) {
    return Replace(c, "\"attention_bias\": false", "\"attention_bias\": true");
  });
  auto backend = Load(dir);
  ASSERT_FALSE(backend.ok());
  EXPECT_NE(backend.status().message().find("model.layers.0.self_attn.q_proj.bias"),
            std::string::npos)
      << backend.status();
}

}  // namespace
}  // namespace hyla
