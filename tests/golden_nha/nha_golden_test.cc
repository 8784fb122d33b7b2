// The nha fixture (JusenD/NHA from-scratch NHAForCausalLM, shared/golden/nha) through
// Checkpoint::Open and the CPU backend: full-sequence logits against the fp32 reference
// (`logits_fp32_swa`) and the reference as run (`logits`, bf16 SWA inputs), prefill + one token
// per call against the prefix-recompute oracle (`decode_logits`), the greedy continuation, the
// invariance of the per-token recurrence to chunking and batching, and the bounded state.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "runtime/engine/sequence_runner.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

using testing::GoldenDir;
using testing::GoldenF32;
using testing::GoldenI32;
using testing::LoadCpuBackend;
using testing::MaxAbsDiff;
using testing::PrefillThenDecode;
using testing::RandomSplit;

// Against `logits_fp32_swa`: the reference's forward in fp32 throughout. It still runs fla's
// chunked Triton kernels (another summation order), so equality holds to fp32 noise only.
constexpr float kFp32Tol = 1e-4f;
// golden.json "recommended_tolerance": for `logits` and `decode_logits`, which carry the
// reference's bf16 rounding of the sliding-window q/k/v and output.
constexpr float kBf16Tol = 2.6e-3f;
// Splitting a sequence differently or batching it must not change a token's arithmetic.
constexpr float kInvarianceTol = 1e-5f;
constexpr int64_t kPrefill = 70;  // golden.json "P"
constexpr int kT = 200;

class NhaGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ids = GoldenI32("nha", "input_ids");
    ASSERT_TRUE(ids.ok()) << ids.status();
    ids_ = *ids;
    ASSERT_EQ(ids_.size(), static_cast<size_t>(kT));
    auto backend = LoadCpuBackend(GoldenDir("nha"));
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(backend).value();
    vocab_ = backend_->config().vocab_size;
    ASSERT_EQ(vocab_, 256);
  }

  std::vector<float> Run(absl::Span<const int32_t> ids, const std::vector<int64_t>& chunks) {
    auto logits = RunSequenceLogits(*backend_, ids, chunks);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : std::vector<float>();
  }
  std::vector<float> Run(const std::vector<int64_t>& chunks) { return Run(ids_, chunks); }

  std::vector<float> Golden(const std::string& name) {
    auto t = GoldenF32("nha", name);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : std::vector<float>();
  }

  std::vector<int32_t> ids_;
  std::unique_ptr<cpu::CpuBackend> backend_;
  int64_t vocab_ = 0;
};

TEST_F(NhaGoldenTest, ConfigMatchesFixture) {
  const ModelConfig& c = backend_->config();
  EXPECT_EQ(c.family, Family::kNha);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.intermediate_size, 256);
  EXPECT_EQ(c.num_layers, 4);
  ASSERT_EQ(c.layers.size(), 4u);
  for (const LayerConfig& l : c.layers) {
    ASSERT_EQ(l.kind, LayerKind::kNha);
    EXPECT_EQ(l.nha.num_heads, 2);
    EXPECT_EQ(l.nha.num_kv_heads, 2);
    EXPECT_EQ(l.nha.head_k_dim, 64);
    EXPECT_EQ(l.nha.head_v_dim, 64);
    EXPECT_EQ(l.nha.num_slots, 16);
    EXPECT_EQ(l.nha.window_size, 32);
    EXPECT_EQ(l.nha.kv_shift, 0);
    EXPECT_FLOAT_EQ(l.nha.scale, 1.0f);  // golden.json "nha_layer_scale"
    EXPECT_FLOAT_EQ(l.nha.output_norm_eps, 1e-5f);
  }
}

TEST_F(NhaGoldenTest, FullSequenceLogitsMatchFp32Reference) {
  const std::vector<float> fp32 = Golden("logits_fp32_swa");
  const std::vector<float> logits = Run({});
  ASSERT_EQ(logits.size(), fp32.size());
  const float diff = MaxAbsDiff(logits, fp32);
  std::printf("nha logits vs logits_fp32_swa: max |diff| = %.3g (tolerance %.3g)\n", diff,
              kFp32Tol);
  EXPECT_LE(diff, kFp32Tol);
}

TEST_F(NhaGoldenTest, FullSequenceLogitsMatchReferenceWithBf16Window) {
  const std::vector<float> golden = Golden("logits");
  const std::vector<float> logits = Run({});
  ASSERT_EQ(logits.size(), golden.size());
  const float diff = MaxAbsDiff(logits, golden);
  std::printf("nha logits vs logits: max |diff| = %.3g (tolerance %.3g)\n", diff, kBf16Tol);
  EXPECT_LE(diff, kBf16Tol);
}

TEST_F(NhaGoldenTest, PrefillThenDecodeMatchesPrefixRecompute) {
  const std::vector<float> golden = Golden("decode_logits");
  const std::vector<float> fp32 = Golden("logits_fp32_swa");
  const std::vector<float> decoded = Run(PrefillThenDecode(kT, kPrefill));
  ASSERT_EQ(decoded.size(), golden.size());
  const size_t split = static_cast<size_t>(kPrefill * vocab_);
  const float prefill_diff = MaxAbsDiff(decoded, golden, 0, split);
  const float decode_diff = MaxAbsDiff(decoded, golden, split);
  // The oracle's row t is the last row of a full forward over ids[:t+1], which for a causal
  // model is row t of the full fp32 forward: the fp32 comparison is the tight one.
  const float decode_fp32_diff = MaxAbsDiff(decoded, fp32, split);
  std::printf(
      "nha decode_logits: prefill rows %.3g, decode rows %.3g (tolerance %.3g); decode rows vs "
      "logits_fp32_swa %.3g (tolerance %.3g)\n",
      prefill_diff, decode_diff, kBf16Tol, decode_fp32_diff, kFp32Tol);
  EXPECT_LE(prefill_diff, kBf16Tol);
  EXPECT_LE(decode_diff, kBf16Tol);
  EXPECT_LE(decode_fp32_diff, kFp32Tol);
}

TEST_F(NhaGoldenTest, GreedyContinuation) {
  auto greedy = GoldenI32("nha", "greedy");
  ASSERT_TRUE(greedy.ok()) << greedy.status();
  const std::vector<float> margin = Golden("greedy_top2_margin");
  ASSERT_EQ(margin.size(), greedy->size());

  // Prefill the input, then feed back each argmax one token per step.
  auto seq_or = backend_->store().NewSequence();
  ASSERT_TRUE(seq_or.ok()) << seq_or.status();
  std::unique_ptr<SequenceState> seq = std::move(seq_or).value();
  backend_->ResetSlot(seq->slot);
  std::vector<int32_t> next_tokens = ids_;
  int checked = 0;
  bool binding = true;
  int first_disagreement = -1;
  for (size_t step = 0; step < greedy->size(); ++step) {
    SequenceWork w;
    w.seq = seq.get();
    w.tokens = next_tokens;
    w.logits = LogitsMode::kLast;
    StepOutput out;
    ASSERT_TRUE(backend_->Step({&w, 1}, &out).ok());
    ASSERT_EQ(out.row_count[0], 1);
    const float* row = out.logits.data() + out.row_offset[0] * vocab_;
    const int32_t best = static_cast<int32_t>(std::max_element(row, row + vocab_) - row);
    // Binding only while the reference's choice was clear of the (bf16) tolerance; past that the
    // sequences may legitimately diverge, so the rest is only reported.
    if (binding && margin[step] < 10 * kBf16Tol) {
      binding = false;
      std::printf("nha greedy: steps 0..%zu binding; step %zu has margin %.3g < %.3g\n",
                  step == 0 ? 0 : step - 1, step, margin[step], 10 * kBf16Tol);
    }
    if (binding) {
      ASSERT_EQ(best, (*greedy)[step]) << "greedy step " << step;
      ++checked;
    }
    if (best != (*greedy)[step] && first_disagreement < 0) {
      first_disagreement = static_cast<int>(step);
    }
    if (first_disagreement >= 0) break;
    next_tokens = {best};
  }
  std::printf("nha greedy: %s\n",
              first_disagreement < 0
                  ? "all 32 steps agree with the reference"
                  : absl::StrCat("first disagreement at step ", first_disagreement).c_str());
  backend_->store().Release(std::move(seq));
  EXPECT_GT(checked, 0);
}

TEST_F(NhaGoldenTest, RandomSplitsMatchOnePrefill) {
  const std::vector<float> whole = Run({});
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    const std::vector<float> split = Run(RandomSplit(kT, 80, seed));
    EXPECT_LE(MaxAbsDiff(split, whole), kInvarianceTol) << "seed " << seed;
  }
}

TEST_F(NhaGoldenTest, TokenByTokenMatchesOnePrefill) {
  const std::vector<float> whole = Run({});
  const std::vector<float> one_by_one = Run(std::vector<int64_t>(kT, 1));
  const float diff = MaxAbsDiff(one_by_one, whole);
  std::printf("nha token-by-token vs one prefill: max |diff| = %.3g\n", diff);
  EXPECT_LE(diff, kInvarianceTol);
}

TEST_F(NhaGoldenTest, BatchedMatchesAlone) {
  // Three sequences of different lengths and splits in one batch, against each run alone.
  std::vector<std::vector<int32_t>> ids = {
      ids_, std::vector<int32_t>(ids_.begin() + 17, ids_.begin() + 140),
      std::vector<int32_t>(ids_.rbegin(), ids_.rbegin() + 90)};
  std::vector<std::vector<int64_t>> chunks = {PrefillThenDecode(kT, kPrefill),
                                              RandomSplit(123, 40, 7), RandomSplit(90, 33, 8)};
  auto batched = RunBatchedLogits(*backend_, ids, chunks);
  ASSERT_TRUE(batched.ok()) << batched.status();
  ASSERT_EQ(batched->size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::vector<float> alone = Run(ids[i], chunks[i]);
    EXPECT_EQ(MaxAbsDiff((*batched)[i], alone), 0.0f) << "sequence " << i;
  }
}

TEST_F(NhaGoldenTest, StateDoesNotGrowWithContext) {
  auto seq_or = backend_->store().NewSequence();
  ASSERT_TRUE(seq_or.ok()) << seq_or.status();
  std::unique_ptr<SequenceState> seq = std::move(seq_or).value();
  backend_->ResetSlot(seq->slot);
  auto feed = [&](absl::Span<const int32_t> tokens) {
    SequenceWork w;
    w.seq = seq.get();
    w.tokens = tokens;
    w.logits = LogitsMode::kNone;
    StepOutput out;
    ASSERT_TRUE(backend_->Step({&w, 1}, &out).ok());
  };
  feed(absl::MakeConstSpan(ids_).subspan(0, 10));
  const SequenceMemory at10 = backend_->store().MemoryOf(*seq);
  feed(absl::MakeConstSpan(ids_).subspan(10, 190));
  const SequenceMemory at200 = backend_->store().MemoryOf(*seq);
  EXPECT_EQ(seq->num_tokens, 200);
  EXPECT_EQ(at10.kv_bytes, 0);
  EXPECT_EQ(at200.kv_bytes, 0);
  EXPECT_EQ(at10.kv_blocks, 0);
  EXPECT_EQ(at200.kv_blocks, 0);
  EXPECT_GT(at10.slot_bytes, 0);
  EXPECT_EQ(at200.slot_bytes, at10.slot_bytes);
  // Per layer: H_K + H_V = 2 heads × 16 slots × (64 + 64) × 4 B, ring = 32 × 2 × (64+64+16) × 4 B.
  EXPECT_GE(at200.slot_bytes, 4 * (2 * 16 * 128 * 4 + 32 * 2 * 144 * 4));
  // A softmax model with the same shapes would have grown 20-fold.
  EXPECT_EQ(at200.softmax_equivalent_bytes, 20 * at10.softmax_equivalent_bytes);
  backend_->store().Release(std::move(seq));
}

}  // namespace
}  // namespace hyla
