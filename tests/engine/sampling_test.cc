// Table tests of the sampler: vLLM semantics of penalties, temperature, top-k, top-p, min-p,
// greedy ties, logprobs of the processed distribution, seeded reproducibility, validation.
#include "runtime/engine/sampling.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hyla {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0.0f;
  return p;
}

TEST(SamplerTest, GreedyTakesLowestIdOnTiesAndReportsLogSoftmax) {
  Sampler s(Greedy(), 4);
  const SampledToken t = s.Sample(std::vector<float>{1.0f, 3.0f, 3.0f, 2.0f});
  EXPECT_EQ(t.id, 1);
  const double norm = std::log(std::exp(1.0) + 2 * std::exp(3.0) + std::exp(2.0));
  EXPECT_NEAR(t.logprob, 3.0 - norm, 1e-6);
}

struct PenaltyCase {
  std::string name;
  SamplingParams params;
  std::vector<int32_t> prompt;
  std::vector<std::vector<float>> steps;  // logits per greedy step
  std::vector<int32_t> expected;          // chosen ids
};

class PenaltyTest : public ::testing::TestWithParam<PenaltyCase> {};

TEST_P(PenaltyTest, GreedyChoices) {
  const PenaltyCase& c = GetParam();
  Sampler s(c.params, static_cast<int>(c.steps[0].size()));
  s.AddPrompt(c.prompt);
  std::vector<int32_t> got;
  for (const auto& logits : c.steps) got.push_back(s.Sample(logits).id);
  EXPECT_EQ(got, c.expected);
}

SamplingParams With(float rep, float presence, float frequency) {
  SamplingParams p = Greedy();
  p.repetition_penalty = rep;
  p.presence_penalty = presence;
  p.frequency_penalty = frequency;
  return p;
}

INSTANTIATE_TEST_SUITE_P(
    Table, PenaltyTest,
    ::testing::Values(
        // Repetition divides a positive logit of a prompt token: 2 / 2 = 1 < 1.9.
        PenaltyCase{"repetition_positive", With(2.0f, 0, 0), {0}, {{2.0f, 1.9f}}, {1}},
        // Repetition multiplies a negative logit: -1 * 2 = -2 < -1.5.
        PenaltyCase{"repetition_negative", With(2.0f, 0, 0), {0}, {{-1.0f, -1.5f}}, {1}},
        // Without the penalty the prompt token wins.
        PenaltyCase{"repetition_off", With(1.0f, 0, 0), {0}, {{2.0f, 1.9f}}, {0}},
        // Repetition also applies to output tokens: step 2 sees 0 as generated (2/2 = 1 < 1.5).
        PenaltyCase{
            "repetition_output", With(2.0f, 0, 0), {}, {{2.0f, 1.5f}, {2.0f, 1.5f}}, {0, 1}},
        // Presence subtracts once for a generated token: 1.0 - 0.5 < 0.8.
        PenaltyCase{"presence", With(1.0f, 0.5f, 0), {}, {{1.0f, 0.8f}, {1.0f, 0.8f}}, {0, 1}},
        // Presence ignores prompt tokens.
        PenaltyCase{"presence_not_prompt", With(1.0f, 0.5f, 0), {0}, {{1.0f, 0.8f}}, {0}},
        // Frequency subtracts count x penalty: after 0 twice, 1.0 - 2 * 0.15 = 0.7 < 0.8, but
        // after once 0.85 > 0.8.
        PenaltyCase{"frequency",
                    With(1.0f, 0, 0.15f),
                    {},
                    {{1.0f, 0.8f}, {1.0f, 0.8f}, {1.0f, 0.8f}},
                    {0, 0, 1}},
        // A negative presence penalty encourages repetition.
        PenaltyCase{
            "negative_presence", With(1.0f, -0.5f, 0), {}, {{1.0f, 0.8f}, {0.6f, 0.8f}}, {0, 0}}),
    [](const auto& info) { return info.param.name; });

// All three penalties together over a larger vocabulary with repeated prompt and output tokens,
// against a dense reference computed here: the penalised logits' argmax and log-softmax at
// every greedy step (the sampler applies them over its sparse history).
TEST(SamplerTest, PenaltiesOverAVocabularyMatchADenseReference) {
  constexpr int kVocab = 1000;
  SamplingParams p = With(1.3f, 0.4f, 0.25f);
  Sampler s(p, kVocab);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back((i * 37) % 101);  // repeats
  s.AddPrompt(prompt);
  std::vector<uint8_t> in_prompt(kVocab, 0);
  for (int32_t t : prompt) in_prompt[static_cast<size_t>(t)] = 1;
  std::vector<int> counts(kVocab, 0);
  uint64_t h = 12345;
  for (int step = 0; step < 30; ++step) {
    std::vector<float> logits(kVocab);
    for (int v = 0; v < kVocab; ++v) {
      h = h * 6364136223846793005ull + 1442695040888963407ull;
      logits[static_cast<size_t>(v)] = static_cast<float>((h >> 40) % 2000) / 1000.0f - 1.0f;
    }
    // Make a few recent choices and prompt tokens attractive so that penalties decide.
    for (int v = 0; v < 101; v += 7) logits[static_cast<size_t>(v)] += 1.5f;
    std::vector<float> x = logits;
    for (int v = 0; v < kVocab; ++v) {
      float& y = x[static_cast<size_t>(v)];
      if (in_prompt[static_cast<size_t>(v)] || counts[static_cast<size_t>(v)] > 0) {
        y = y > 0.0f ? y / p.repetition_penalty : y * p.repetition_penalty;
      }
      const int c = counts[static_cast<size_t>(v)];
      if (c > 0) y -= p.frequency_penalty * static_cast<float>(c) + p.presence_penalty;
    }
    int best = 0;
    for (int v = 1; v < kVocab; ++v) {
      if (x[static_cast<size_t>(v)] > x[static_cast<size_t>(best)]) best = v;
    }
    double norm = 0;
    for (float y : x) norm += std::exp(static_cast<double>(y) - x[static_cast<size_t>(best)]);
    const double want_logprob = -std::log(norm);
    const SampledToken t = s.Sample(logits);
    ASSERT_EQ(t.id, best) << "step " << step;
    EXPECT_NEAR(t.logprob, want_logprob, 1e-5) << "step " << step;
    ++counts[static_cast<size_t>(best)];
  }
  int distinct = 0;
  for (int c : counts) distinct += c > 0 ? 1 : 0;
  EXPECT_GT(distinct, 1);  // the penalties moved the choice around
}

// Logprobs after the filters, checked with TopAlternatives (every token that survived).
struct FilterCase {
  std::string name;
  SamplingParams params;
  std::vector<float> logits;
  std::vector<int32_t> kept;       // ids that survive, best first
  std::vector<double> kept_probs;  // their renormalised probabilities
};

class FilterTest : public ::testing::TestWithParam<FilterCase> {};

TEST_P(FilterTest, KeepsExactlyTheExpectedTokens) {
  const FilterCase& c = GetParam();
  Sampler s(c.params, static_cast<int>(c.logits.size()));
  const SampledToken t = s.Sample(c.logits);
  const std::vector<SampledToken> top = s.TopAlternatives(20);
  ASSERT_EQ(top.size(), c.kept.size());
  for (size_t i = 0; i < top.size(); ++i) {
    EXPECT_EQ(top[i].id, c.kept[i]) << i;
    EXPECT_NEAR(top[i].logprob, std::log(c.kept_probs[i]), 1e-5) << i;
  }
  bool chosen_kept = false;
  for (int32_t id : c.kept) chosen_kept |= id == t.id;
  EXPECT_TRUE(chosen_kept) << t.id;
  for (const SampledToken& a : top) {
    if (a.id == t.id) {
      EXPECT_FLOAT_EQ(a.logprob, t.logprob);
    }
  }
}

SamplingParams Filter(float temperature, int top_k, float top_p, float min_p) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.seed = 7;
  return p;
}

// Probabilities 0.5, 0.3, 0.15, 0.05 as logits.
const std::vector<float> kQuarter = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};

INSTANTIATE_TEST_SUITE_P(
    Table, FilterTest,
    ::testing::Values(
        FilterCase{"none", Filter(1, 0, 1, 0), kQuarter, {0, 1, 2, 3}, {0.5, 0.3, 0.15, 0.05}},
        FilterCase{"top_k_2",
                   Filter(1, 2, 1, 0),
                   {0.0f, 5.0f, 4.0f, 3.0f},
                   {1, 2},
                   {std::exp(5.0) / (std::exp(5.0) + std::exp(4.0)),
                    std::exp(4.0) / (std::exp(5.0) + std::exp(4.0))}},
        // Ties at the k-th value are kept.
        FilterCase{"top_k_ties", Filter(1, 1, 1, 0), {1.0f, 2.0f, 2.0f}, {1, 2}, {0.5, 0.5}},
        FilterCase{"top_k_above_vocab", Filter(1, 9, 1, 0), {0.0f, 0.0f}, {0, 1}, {0.5, 0.5}},
        // 0.5 < 0.75, 0.5 + 0.3 >= 0.75: the first two.
        FilterCase{"top_p_075", Filter(1, 0, 0.75f, 0), kQuarter, {0, 1}, {0.5 / 0.8, 0.3 / 0.8}},
        FilterCase{"top_p_085",
                   Filter(1, 0, 0.85f, 0),
                   kQuarter,
                   {0, 1, 2},
                   {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95}},
        // The most likely token always survives.
        FilterCase{"top_p_tiny", Filter(1, 0, 0.01f, 0), kQuarter, {0}, {1.0}},
        // min_p 0.25: threshold 0.125 drops 0.05.
        FilterCase{"min_p_025",
                   Filter(1, 0, 1, 0.25f),
                   kQuarter,
                   {0, 1, 2},
                   {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95}},
        FilterCase{"min_p_05", Filter(1, 0, 1, 0.5f), kQuarter, {0, 1}, {0.5 / 0.8, 0.3 / 0.8}},
        // Temperature 2 halves the logits: softmax(0.5, 1).
        FilterCase{"temperature_2",
                   Filter(2, 0, 1, 0),
                   {1.0f, 2.0f},
                   {1, 0},
                   {std::exp(1.0) / (std::exp(0.5) + std::exp(1.0)),
                    std::exp(0.5) / (std::exp(0.5) + std::exp(1.0))}},
        // top-k first, then top-p on the renormalised top-k: {0.5, 0.3} -> {0.625, 0.375}; p 0.6
        // keeps only the first.
        FilterCase{"top_k_then_top_p", Filter(1, 2, 0.6f, 0), kQuarter, {0}, {1.0}},
        // -inf logits never survive.
        FilterCase{"minus_inf", Filter(1, 0, 1, 0), {-kInf, 0.0f, 0.0f}, {1, 2}, {0.5, 0.5}}),
    [](const auto& info) { return info.param.name; });

TEST(SamplerTest, SameSeedSameStreamDifferentSeedDifferentStream) {
  const std::vector<float> flat(16, 0.0f);
  auto draw = [&](uint64_t seed) {
    SamplingParams p;
    p.seed = seed;
    Sampler s(p, 16);
    std::vector<int32_t> ids;
    for (int i = 0; i < 64; ++i) ids.push_back(s.Sample(flat).id);
    return ids;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(SamplerTest, DrawsFollowTheDistribution) {
  SamplingParams p;
  p.seed = 1234;
  Sampler s(p, 3);
  const std::vector<float> logits = {std::log(0.2f), std::log(0.7f), std::log(0.1f)};
  int counts[3] = {0, 0, 0};
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++counts[s.Sample(logits).id];
  // Standard deviation of a frequency at n = 20000 is below 0.0033; allow 5 sigma.
  EXPECT_NEAR(counts[0] / static_cast<double>(n), 0.2, 0.016);
  EXPECT_NEAR(counts[1] / static_cast<double>(n), 0.7, 0.016);
  EXPECT_NEAR(counts[2] / static_cast<double>(n), 0.1, 0.016);
}

TEST(SamplerTest, TopAlternativesBestFirstAtMostTwenty) {
  Sampler s(Greedy(), 30);
  std::vector<float> logits(30);
  for (int i = 0; i < 30; ++i) logits[i] = static_cast<float>(i % 7);  // ties: 6 at 6, 13, 20, 27
  s.Sample(logits);
  const std::vector<SampledToken> top = s.TopAlternatives(50);
  ASSERT_EQ(top.size(), 20u);
  EXPECT_EQ(top[0].id, 6);
  EXPECT_EQ(top[1].id, 13);
  EXPECT_EQ(top[2].id, 20);
  EXPECT_EQ(top[3].id, 27);
  EXPECT_EQ(top[4].id, 5);
  for (size_t i = 1; i < top.size(); ++i) EXPECT_LE(top[i].logprob, top[i - 1].logprob);
  EXPECT_TRUE(s.TopAlternatives(0).empty());
}

struct InvalidCase {
  std::string name;
  SamplingParams params;
  std::string field;
};

class ValidateSamplingTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(ValidateSamplingTest, NamesTheField) {
  const absl::Status st = ValidateSamplingParams(GetParam().params);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), ::testing::StartsWith(GetParam().field));
}

SamplingParams Set(void (*f)(SamplingParams*)) {
  SamplingParams p;
  f(&p);
  return p;
}

INSTANTIATE_TEST_SUITE_P(
    Table, ValidateSamplingTest,
    ::testing::Values(
        InvalidCase{"temperature_negative", Set([](SamplingParams* p) { p->temperature = -0.1f; }),
                    "temperature"},
        InvalidCase{"temperature_huge", Set([](SamplingParams* p) { p->temperature = 101; }),
                    "temperature"},
        InvalidCase{"temperature_nan", Set([](SamplingParams* p) { p->temperature = NAN; }),
                    "temperature"},
        InvalidCase{"top_k_negative", Set([](SamplingParams* p) { p->top_k = -1; }), "top_k"},
        InvalidCase{"top_p_zero", Set([](SamplingParams* p) { p->top_p = 0; }), "top_p"},
        InvalidCase{"top_p_above_one", Set([](SamplingParams* p) { p->top_p = 1.01f; }), "top_p"},
        InvalidCase{"min_p_negative", Set([](SamplingParams* p) { p->min_p = -0.1f; }), "min_p"},
        InvalidCase{"min_p_above_one", Set([](SamplingParams* p) { p->min_p = 1.5f; }), "min_p"},
        InvalidCase{"repetition_zero", Set([](SamplingParams* p) { p->repetition_penalty = 0; }),
                    "repetition_penalty"},
        InvalidCase{"repetition_huge", Set([](SamplingParams* p) { p->repetition_penalty = 11; }),
                    "repetition_penalty"},
        InvalidCase{"presence_low", Set([](SamplingParams* p) { p->presence_penalty = -2.5f; }),
                    "presence_penalty"},
        InvalidCase{"frequency_high", Set([](SamplingParams* p) { p->frequency_penalty = 2.5f; }),
                    "frequency_penalty"}),
    [](const auto& info) { return info.param.name; });

TEST(ValidateSamplingTest, DefaultsAndBoundsAreValid) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams()).ok());
  SamplingParams p;
  p.temperature = 0;
  p.top_p = 1;
  p.min_p = 1;
  p.repetition_penalty = 10;
  p.presence_penalty = -2;
  p.frequency_penalty = 2;
  EXPECT_TRUE(ValidateSamplingParams(p).ok());
}

}  // namespace
}  // namespace hyla
