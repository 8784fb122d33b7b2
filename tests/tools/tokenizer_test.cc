#include "runtime/model/tokenizer.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hyla {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

// Independent strict UTF-8 check (RFC 3629 table of well-formed byte sequences).
bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  const auto in = [&](size_t k, int lo, int hi) {
    return k < s.size() && static_cast<uint8_t>(s[k]) >= lo && static_cast<uint8_t>(s[k]) <= hi;
  };
  while (i < s.size()) {
    const uint8_t b = static_cast<uint8_t>(s[i]);
    if (b <= 0x7F) {
      i += 1;
    } else if (b >= 0xC2 && b <= 0xDF && in(i + 1, 0x80, 0xBF)) {
      i += 2;
    } else if (b == 0xE0 && in(i + 1, 0xA0, 0xBF) && in(i + 2, 0x80, 0xBF)) {
      i += 3;
    } else if (((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) && in(i + 1, 0x80, 0xBF) &&
               in(i + 2, 0x80, 0xBF)) {
      i += 3;
    } else if (b == 0xED && in(i + 1, 0x80, 0x9F) && in(i + 2, 0x80, 0xBF)) {
      i += 3;
    } else if (b == 0xF0 && in(i + 1, 0x90, 0xBF) && in(i + 2, 0x80, 0xBF) &&
               in(i + 3, 0x80, 0xBF)) {
      i += 4;
    } else if (b >= 0xF1 && b <= 0xF3 && in(i + 1, 0x80, 0xBF) && in(i + 2, 0x80, 0xBF) &&
               in(i + 3, 0x80, 0xBF)) {
      i += 4;
    } else if (b == 0xF4 && in(i + 1, 0x80, 0x8F) && in(i + 2, 0x80, 0xBF) &&
               in(i + 3, 0x80, 0xBF)) {
      i += 4;
    } else {
      return false;
    }
  }
  return true;
}

std::vector<int32_t> Bytes(const std::string& s) {
  std::vector<int32_t> ids;
  for (char c : s) ids.push_back(static_cast<uint8_t>(c));
  return ids;
}

TEST(ByteTokenizerTest, EncodeIsTheBytesAndDecodeRoundTrips) {
  ByteTokenizer tok(1, 2);
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  const std::string text = "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80!\n\x01\x02\x7F";
  absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text);
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ::testing::ElementsAreArray(Bytes(text)));
  EXPECT_EQ((*ids)[1], 0xC3);
  EXPECT_EQ(tok.Decode(*ids), text);
  EXPECT_TRUE(tok.Encode("")->empty());
  for (int id = 0; id < 256; ++id) {
    std::optional<absl::string_view> b = tok.TokenBytes(id);
    ASSERT_TRUE(b.has_value());
    ASSERT_EQ(b->size(), 1u);
    EXPECT_EQ(static_cast<uint8_t>((*b)[0]), id);
    EXPECT_FALSE(tok.IsSpecial(id));
  }
  EXPECT_FALSE(tok.TokenBytes(256).has_value());
  EXPECT_FALSE(tok.TokenBytes(-1).has_value());
}

TEST(ByteTokenizerTest, BosEosOutsideTheByteRangeAreAbsent) {
  ByteTokenizer tok(128000, -1);
  EXPECT_EQ(tok.bos_id(), -1);
  EXPECT_EQ(tok.eos_id(), -1);
}

TEST(DetokenizerTest, HoldsBackMultiByteCharactersUntilComplete) {
  ByteTokenizer tok(1, 2);
  Detokenizer d(tok);
  EXPECT_EQ(d.Add('a'), "a");
  // U+20AC EURO SIGN: E2 82 AC.
  EXPECT_EQ(d.Add(0xE2), "");
  EXPECT_EQ(d.pending_bytes(), 1);
  EXPECT_EQ(d.Add(0x82), "");
  EXPECT_EQ(d.pending_bytes(), 2);
  EXPECT_EQ(d.Add(0xAC), "\xE2\x82\xAC");
  EXPECT_EQ(d.pending_bytes(), 0);
  // U+1F600: F0 9F 98 80.
  EXPECT_EQ(d.Add(0xF0), "");
  EXPECT_EQ(d.Add(0x9F), "");
  EXPECT_EQ(d.Add(0x98), "");
  EXPECT_EQ(d.Add(0x80), "\xF0\x9F\x98\x80");
  // Two-byte é.
  EXPECT_EQ(d.Add(0xC3), "");
  EXPECT_EQ(d.Add(0xA9), "\xC3\xA9");
  EXPECT_EQ(d.Flush(), "");
}

// Each case: input bytes and what Python's bytes.decode("utf-8", errors="replace") returns.
struct InvalidCase {
  std::string in;
  std::string out;
};

TEST(DetokenizerTest, IllFormedBytesBecomeReplacementCharacters) {
  const std::vector<InvalidCase> cases = {
      {"\x80", kFffd},  // stray continuation byte
      {"a\xBF"
       "b",
       "a" + kFffd + "b"},
      {"\xC0\x80", kFffd + kFffd},  // overlong NUL: C0 is never valid
      {"\xC1\xBF", kFffd + kFffd},
      {"\xE2\x82"
       "A",
       kFffd + "A"},                            // truncated 3-byte: one U+FFFD
      {"\xE0\x80\x80", kFffd + kFffd + kFffd},  // overlong 3-byte
      {"\xED\xA0\x80", kFffd + kFffd + kFffd},  // UTF-16 surrogate D800
      {"\xF0\x9F\x98"
       "x",
       kFffd + "x"},                                        // truncated 4-byte
      {"\xF4\x90\x80\x80", kFffd + kFffd + kFffd + kFffd},  // above U+10FFFF
      {"\xF5\x80", kFffd + kFffd},
      {"\xFF\xFE", kFffd + kFffd},
      {"\xE2\xE2\x82\xAC", kFffd + "\xE2\x82\xAC"},  // a new lead byte restarts
      {"\xC3\xC3\xA9", kFffd + "\xC3\xA9"},
  };
  ByteTokenizer tok(1, 2);
  for (const InvalidCase& c : cases) {
    Detokenizer d(tok);
    std::string streamed;
    for (int32_t id : Bytes(c.in)) {
      const std::string piece = d.Add(id);
      EXPECT_TRUE(IsValidUtf8(piece));
      streamed += piece;
    }
    streamed += d.Flush();
    EXPECT_EQ(streamed, c.out) << "input bytes of size " << c.in.size();
    EXPECT_EQ(tok.Decode(Bytes(c.in)), c.out);
  }
}

TEST(DetokenizerTest, FlushEndsAnIncompleteSequenceAndResets) {
  ByteTokenizer tok(1, 2);
  Detokenizer d(tok);
  EXPECT_EQ(d.Add(0xE2), "");
  EXPECT_EQ(d.Add(0x82), "");
  EXPECT_EQ(d.Flush(), kFffd);
  EXPECT_EQ(d.pending_bytes(), 0);
  EXPECT_EQ(d.Flush(), "");
  EXPECT_EQ(d.Add(0xAC), kFffd);  // a continuation byte after the flush starts nothing
  EXPECT_EQ(d.Add('z'), "z");
}

TEST(DetokenizerTest, IdsOutsideTheVocabularyBecomeReplacementCharacters) {
  ByteTokenizer tok(1, 2);
  Detokenizer d(tok);
  EXPECT_EQ(d.Add(300), kFffd);
  EXPECT_EQ(d.Add(0xE2), "");
  EXPECT_EQ(d.Add(-5), kFffd + kFffd);  // the cut-short sequence, then the bad id
  EXPECT_EQ(d.Add('x'), "x");
}

TEST(DetokenizerTest, RandomBytesStreamToValidUtf8AndMatchWholeDecode) {
  ByteTokenizer tok(1, 2);
  std::mt19937 rng(12345);
  // Biased towards lead and continuation bytes so that multi-byte sequences actually occur.
  std::uniform_int_distribution<int> pick(0, 9);
  std::uniform_int_distribution<int> any(0, 255);
  std::uniform_int_distribution<int> cont(0x80, 0xBF);
  std::uniform_int_distribution<int> lead(0xC0, 0xF7);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<int32_t> ids;
    const int n = 1 + trial % 40;
    for (int i = 0; i < n; ++i) {
      const int p = pick(rng);
      ids.push_back(p < 3 ? any(rng) : p < 7 ? cont(rng) : lead(rng));
    }
    Detokenizer d(tok);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = d.Add(id);
      ASSERT_TRUE(IsValidUtf8(piece));
      streamed += piece;
    }
    streamed += d.Flush();
    ASSERT_TRUE(IsValidUtf8(streamed));
    EXPECT_EQ(streamed, tok.Decode(ids));
    // Valid input passes through unchanged.
    std::string bytes;
    for (int32_t id : ids) bytes += static_cast<char>(id);
    if (IsValidUtf8(bytes)) {
      EXPECT_EQ(streamed, bytes);
    }
  }
}

// A tokenizer whose tokens are several bytes, some splitting a character, plus a special token:
// the shape of a byte-level BPE vocabulary.
class MultiByteTokenizer : public Tokenizer {
 public:
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int32_t bos_id() const override { return -1; }
  int32_t eos_id() const override { return 3; }
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view) const override {
    return absl::UnimplementedError("not needed");
  }
  std::optional<absl::string_view> TokenBytes(int32_t id) const override {
    if (id < 0 || id >= vocab_size()) return std::nullopt;
    return absl::string_view(pieces_[id]);
  }
  bool IsSpecial(int32_t id) const override { return id == 3; }

 private:
  std::vector<std::string> pieces_ = {"he",       "\xE2\x82", "\xAC!", "</s>",
                                      "\xF0\x9F", "\x98\x80", "\xE2"};
};

TEST(DetokenizerTest, CharactersSplitAcrossMultiByteTokens) {
  MultiByteTokenizer tok;
  Detokenizer d(tok);
  EXPECT_EQ(d.Add(0), "he");
  EXPECT_EQ(d.Add(1), "");
  EXPECT_EQ(d.Add(2), "\xE2\x82\xAC!");
  EXPECT_EQ(d.Add(4), "");
  EXPECT_EQ(d.Add(3), "");  // special tokens are skipped and do not disturb the pending bytes
  EXPECT_EQ(d.Add(5), "\xF0\x9F\x98\x80");
  EXPECT_EQ(d.Add(6), "");
  EXPECT_EQ(d.Flush(), kFffd);
  EXPECT_EQ(tok.Decode({0, 3, 1, 2}), "he\xE2\x82\xAC!");
}

TEST(DetokenizerTest, SpecialTokensCanBeKept) {
  MultiByteTokenizer tok;
  Detokenizer d(tok, /*skip_special_tokens=*/false);
  EXPECT_EQ(d.Add(0), "he");
  EXPECT_EQ(d.Add(3), "</s>");
  EXPECT_EQ(d.Add(1), "");
  EXPECT_EQ(d.Add(3), kFffd + "</s>");  // a special token cuts a pending character short
  EXPECT_EQ(tok.Decode({0, 3}, /*skip_special_tokens=*/false), "he</s>");
}

TEST(CreateTokenizerTest, ByteVocabularyGivesTheByteTokenizer) {
  ModelConfig c;
  c.vocab_size = 256;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = CreateTokenizerForModel("/some/model", c);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 256);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_THAT(*(*tok)->Encode("AB"), ::testing::ElementsAre(65, 66));
}

TEST(CreateTokenizerTest, OtherVocabulariesNeedTokenizerJson) {
  ModelConfig c;
  c.vocab_size = 32000;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = CreateTokenizerForModel("/some/model", c);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(tok.status().message(), ::testing::HasSubstr("tokenizer.json"));
  EXPECT_THAT(tok.status().message(), ::testing::HasSubstr("/some/model"));
}

}  // namespace
}  // namespace hyla
