// Tokenizer: text ↔ token ids for a model, and Detokenizer: the streaming, UTF-8-safe way back.
//
// Every tokenizer hyla serves maps each token to a string of raw bytes (byte-level BPE maps its
// token strings through the GPT-2 byte↔unicode table, SentencePiece has <0xNN> byte fallbacks),
// and a token may end in the middle of a multi-byte UTF-8 character. So a Tokenizer only says
// which bytes a token stands for (TokenBytes), and the Detokenizer turns a stream of tokens into
// text that is valid UTF-8 at every step:
//   - it returns only complete characters, holding back a partial multi-byte sequence until a
//     later token completes it;
//   - each maximal ill-formed subsequence becomes one U+FFFD (the Unicode / WHATWG "maximal
//     subpart" rule, the same as Python's bytes.decode(errors="replace")), and so does an id
//     outside the vocabulary;
//   - Flush() ends the stream: a sequence still incomplete then becomes one U+FFFD.
//
// Implementations: ByteTokenizer (the 256-token byte vocabulary of the fixtures and of the
// embedded default model: id = byte value). A Hugging Face tokenizer.json BPE tokenizer is meant
// to implement the same interface later (TokenBytes from its vocabulary, IsSpecial from its
// added tokens); CreateTokenizerForModel says Unimplemented for such models until then.
//
// Thread-safety: a Tokenizer is immutable after creation and may be shared by threads. A
// Detokenizer belongs to one stream (one request); it is not thread-safe.
#ifndef HYLA_RUNTIME_MODEL_TOKENIZER_H_
#define HYLA_RUNTIME_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/model/config.h"

namespace hyla {

// UTF-8 text returned for ill-formed input: U+FFFD REPLACEMENT CHARACTER.
inline constexpr absl::string_view kReplacementCharacter = "\xEF\xBF\xBD";

// Incremental UTF-8 validator: bytes in, valid UTF-8 out (complete characters only).
// Invariant: between calls it holds at most 3 bytes of one incomplete, so far well-formed
// sequence.
class Utf8StreamDecoder {
 public:
  // Appends to *out every character completed by `bytes` (ill-formed parts as U+FFFD).
  void Append(absl::string_view bytes, std::string* out);
  // Ends the stream: an incomplete sequence still held becomes one U+FFFD.
  void Flush(std::string* out);
  // Bytes held back waiting for the rest of a character (0..3).
  int pending_bytes() const { return static_cast<int>(pending_.size()); }

 private:
  void AppendByte(uint8_t b, std::string* out);
  void Reset();

  std::string pending_;   // the incomplete sequence so far (lead byte + continuation bytes)
  int needed_ = 0;        // continuation bytes still expected
  uint8_t lower_ = 0x80;  // allowed range of the next continuation byte
  uint8_t upper_ = 0xBF;
};

class Detokenizer;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  virtual int vocab_size() const = 0;
  // Beginning / end of sequence ids from the model's config (-1 when it has none).
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;

  // Text → ids. Adds no BOS: callers decide (see hyla-model generate).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const = 0;

  // The raw bytes that token `id` stands for (possibly part of a UTF-8 character); for a
  // special token its literal text. nullopt when `id` is outside the vocabulary. The view stays
  // valid as long as the tokenizer lives.
  virtual std::optional<absl::string_view> TokenBytes(int32_t id) const = 0;
  // Control tokens (BOS/EOS/padding of a BPE vocabulary) that a detokenizer skips by default.
  virtual bool IsSpecial(int32_t id) const = 0;

  // Whole-sequence decode: the same text a Detokenizer produces over `ids` followed by Flush.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens = true) const;
};

// Streaming detokenization of one sequence. Holds a reference to its Tokenizer, which must
// outlive it.
class Detokenizer {
 public:
  explicit Detokenizer(const Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

  // Feeds one token; returns the text it completes (possibly empty).
  std::string Add(int32_t id);
  // Ends the stream; returns what was held back (empty or U+FFFD).
  std::string Flush();
  // Bytes held back waiting for the rest of a character.
  int pending_bytes() const { return decoder_.pending_bytes(); }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  Utf8StreamDecoder decoder_;
};

// The 256-token byte vocabulary: id = byte value; every id is a plain byte (none is special:
// the fixtures' bos_token_id 1 and eos_token_id 2 are the control bytes SOH and STX, reported by
// bos_id()/eos_id() so that callers may stop on STX, and decoded as those bytes).
class ByteTokenizer : public Tokenizer {
 public:
  ByteTokenizer(int32_t bos_id, int32_t eos_id);

  int vocab_size() const override { return 256; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const override;
  std::optional<absl::string_view> TokenBytes(int32_t id) const override;
  bool IsSpecial(int32_t id) const override { return false; }

 private:
  int32_t bos_id_;
  int32_t eos_id_;
  char bytes_[256];  // bytes_[i] == i: the storage TokenBytes views point into
};

// The tokenizer of the checkpoint in `dir`: ByteTokenizer when config.vocab_size == 256 (bos/eos
// from the config when they are byte ids, else -1); Unimplemented otherwise (Hugging Face
// tokenizer.json support is not built yet).
absl::StatusOr<std::unique_ptr<Tokenizer>> CreateTokenizerForModel(const std::string& dir,
                                                                   const ModelConfig& config);

}  // namespace hyla

#endif  // HYLA_RUNTIME_MODEL_TOKENIZER_H_
