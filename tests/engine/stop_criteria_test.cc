// Table tests of the stop criteria over the byte tokenizer: EOS / stop tokens, min_new_tokens,
// stop strings across token boundaries (matched text excluded, undecided text held back),
// max_new_tokens, UTF-8 safety, validation.
#include "runtime/engine/stop_criteria.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/tokenizer.h"

namespace hyla {
namespace {

constexpr int32_t kEos = 2;

struct StopCase {
  std::string name;
  StopParams params;
  std::vector<int32_t> tokens;     // fed until a stop is reported
  std::vector<std::string> texts;  // text released by each token fed
  StopKind stop;                   // what the last token fed reports
  std::string matched;
};

class StopTest : public ::testing::TestWithParam<StopCase> {};

TEST_P(StopTest, ReleasesTextAndStops) {
  const StopCase& c = GetParam();
  ByteTokenizer tok(1, kEos);
  StopChecker checker(c.params, kEos, &tok);
  ASSERT_EQ(c.tokens.size(), c.texts.size());
  for (size_t i = 0; i < c.tokens.size(); ++i) {
    ASSERT_FALSE(checker.done()) << "stopped early at token " << i;
    const StopUpdate u = checker.Add(c.tokens[i]);
    EXPECT_EQ(u.text, c.texts[i]) << "token " << i;
    if (i + 1 < c.tokens.size()) {
      EXPECT_EQ(u.stop, StopKind::kNone) << "token " << i;
    } else {
      EXPECT_EQ(u.stop, c.stop);
      EXPECT_EQ(u.matched_stop, c.matched);
    }
  }
  EXPECT_EQ(checker.generated(), static_cast<int>(c.tokens.size()));
}

StopParams Params(int max_new, int min_new, std::vector<std::string> stop,
                  std::vector<int32_t> stop_ids = {}, bool ignore_eos = false) {
  StopParams p;
  p.max_new_tokens = max_new;
  p.min_new_tokens = min_new;
  p.stop = std::move(stop);
  p.stop_token_ids = std::move(stop_ids);
  p.ignore_eos = ignore_eos;
  return p;
}

INSTANTIATE_TEST_SUITE_P(
    Table, StopTest,
    ::testing::Values(StopCase{"eos_stops_without_text",
                               Params(10, 0, {}),
                               {'a', 'b', kEos},
                               {"a", "b", ""},
                               StopKind::kEos,
                               ""},
                      StopCase{"ignore_eos_makes_it_text",
                               Params(3, 0, {}, {}, true),
                               {'a', kEos, 'b'},
                               {"a", "\x02", "b"},
                               StopKind::kLength,
                               ""},
                      StopCase{"stop_token",
                               Params(10, 0, {}, {'z'}),
                               {'a', 'z'},
                               {"a", ""},
                               StopKind::kStopToken,
                               ""},
                      StopCase{"max_new_tokens",
                               Params(3, 0, {}),
                               {'a', 'b', 'c'},
                               {"a", "b", "c"},
                               StopKind::kLength,
                               ""},
                      // "cd" spans two tokens: 'c' is held back, then the match drops it.
                      StopCase{"stop_string_across_tokens",
                               Params(10, 0, {"cd"}),
                               {'a', 'b', 'c', 'd'},
                               {"a", "b", "", ""},
                               StopKind::kStopString,
                               "cd"},
                      // Held-back text is released once it cannot start the stop string any more.
                      StopCase{"held_back_then_released",
                               Params(3, 0, {"cd"}),
                               {'c', 'x', 'y'},
                               {"", "cx", "y"},
                               StopKind::kLength,
                               ""},
                      // Held-back text at the length limit is released too.
                      StopCase{"held_back_at_length",
                               Params(2, 0, {"cd"}),
                               {'a', 'c'},
                               {"a", "c"},
                               StopKind::kLength,
                               ""},
                      // Text before the match in the same token is kept; the rest is dropped.
                      StopCase{"stop_string_drops_match",
                               Params(10, 0, {"bc"}),
                               {'a', 'b', 'c'},
                               {"a", "", ""},
                               StopKind::kStopString,
                               "bc"},
                      // The earliest match wins among several stop strings.
                      StopCase{"earliest_match",
                               Params(10, 0, {"yz", "xy"}),
                               {'w', 'x', 'y'},
                               {"w", "", ""},
                               StopKind::kStopString,
                               "xy"},
                      // A longer stop string's prefix is held while a shorter one can still match.
                      StopCase{"overlapping_prefixes",
                               Params(10, 0, {"abc", "bd"}),
                               {'a', 'b', 'd'},
                               {"", "", "a"},
                               StopKind::kStopString,
                               "bd"},
                      // EOS is suppressed and ignored before min_new_tokens (if sampled anyway it
                      // is text). (min 2: the earliest EOS that stops is the third token).
                      StopCase{"eos_before_min_is_text",
                               Params(10, 2, {}),
                               {kEos, kEos, kEos},
                               {"\x02", "\x02", ""},
                               StopKind::kEos,
                               ""},
                      // Stop strings are not matched before min_new_tokens tokens.
                      StopCase{"stop_string_before_min",
                               Params(4, 3, {"b"}),
                               {'a', 'b', 'c', 'b'},
                               {"a", "b", "c", ""},
                               StopKind::kStopString,
                               "b"},
                      // A stop string completed by the min_new_tokens-th token counts.
                      StopCase{"stop_string_at_min",
                               Params(10, 2, {"ab"}),
                               {'a', 'b'},
                               {"", ""},
                               StopKind::kStopString,
                               "ab"},
                      // UTF-8: é = C3 A9 split over two tokens comes out whole.
                      StopCase{"utf8_split_character",
                               Params(3, 0, {}),
                               {0xC3, 0xA9, 'x'},
                               {"", "\xC3\xA9", "x"},
                               StopKind::kLength,
                               ""},
                      // An incomplete character at the end becomes U+FFFD.
                      StopCase{"utf8_incomplete_at_length",
                               Params(2, 0, {}),
                               {'a', 0xE2},
                               {"a", "\xEF\xBF\xBD"},
                               StopKind::kLength,
                               ""},
                      // A stop string made of a multi-byte character, matched across byte tokens.
                      StopCase{"utf8_stop_string",
                               Params(10, 0, {"\xC3\xA9"}),
                               {'a', 0xC3, 0xA9},
                               {"a", "", ""},
                               StopKind::kStopString,
                               "\xC3\xA9"}),
    [](const auto& info) { return info.param.name; });

TEST(StopCheckerTest, SuppressesEosAndStopTokensUntilMinimum) {
  ByteTokenizer tok(1, kEos);
  StopChecker checker(Params(10, 2, {}, {'z', kEos}), kEos, &tok);
  EXPECT_THAT(checker.SuppressedIds(), ::testing::UnorderedElementsAre(kEos, 'z'));
  checker.Add('a');
  EXPECT_THAT(checker.SuppressedIds(), ::testing::UnorderedElementsAre(kEos, 'z'));
  checker.Add('b');
  EXPECT_TRUE(checker.SuppressedIds().empty());
}

TEST(StopCheckerTest, IgnoreEosSuppressesOnlyStopTokens) {
  ByteTokenizer tok(1, kEos);
  StopChecker checker(Params(10, 1, {}, {'z'}, true), kEos, &tok);
  EXPECT_THAT(checker.SuppressedIds(), ::testing::ElementsAre('z'));
}

TEST(StopCheckerTest, FlushReleasesHeldText) {
  ByteTokenizer tok(1, kEos);
  StopChecker checker(Params(10, 0, {"cd"}), kEos, &tok);
  EXPECT_EQ(checker.Add('c').text, "");
  EXPECT_EQ(checker.Add(0xC3).text, "");  // a partial character; "c" still held
  EXPECT_EQ(checker.Flush(), "c\xEF\xBF\xBD");
}

TEST(StopCheckerTest, WithoutTokenizerNoText) {
  StopChecker checker(Params(2, 0, {}), kEos, nullptr);
  EXPECT_EQ(checker.Add('a').text, "");
  const StopUpdate u = checker.Add('b');
  EXPECT_EQ(u.text, "");
  EXPECT_EQ(u.stop, StopKind::kLength);
}

struct InvalidStop {
  std::string name;
  StopParams params;
  bool have_tokenizer;
  std::string field;
};

class ValidateStopTest : public ::testing::TestWithParam<InvalidStop> {};

TEST_P(ValidateStopTest, NamesTheField) {
  const absl::Status st = ValidateStopParams(GetParam().params, 256, GetParam().have_tokenizer);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), ::testing::StartsWith(GetParam().field));
}

INSTANTIATE_TEST_SUITE_P(
    Table, ValidateStopTest,
    ::testing::Values(
        InvalidStop{"max_negative", Params(-1, 0, {}), true, "max_new_tokens"},
        InvalidStop{"min_negative", Params(5, -1, {}), true, "min_new_tokens"},
        InvalidStop{"min_above_max", Params(5, 6, {}), true, "min_new_tokens"},
        InvalidStop{"empty_stop", Params(5, 0, {"a", ""}), true, "stop[1]"},
        InvalidStop{"long_stop", Params(5, 0, {std::string(300, 'x')}), true, "stop[0]"},
        InvalidStop{"too_many_stops", Params(5, 0, std::vector<std::string>(17, "x")), true,
                    "stop"},
        InvalidStop{"stop_without_tokenizer", Params(5, 0, {"x"}), false, "stop"},
        InvalidStop{"stop_id_negative", Params(5, 0, {}, {3, -1}), true, "stop_token_ids[1]"},
        InvalidStop{"stop_id_outside_vocab", Params(5, 0, {}, {256}), true, "stop_token_ids[0]"}),
    [](const auto& info) { return info.param.name; });

TEST(ValidateStopTest, ValidParams) {
  EXPECT_TRUE(ValidateStopParams(Params(0, 0, {}), 256, false).ok());
  EXPECT_TRUE(ValidateStopParams(Params(5, 5, {"ab", "c"}, {0, 255}), 256, true).ok());
}

}  // namespace
}  // namespace hyla
