#include "runtime/model/tokenizer.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace hyla {

// ---------------------------------------------------------------------------------------------
// Utf8StreamDecoder: the WHATWG UTF-8 decoder (encoding.spec.whatwg.org, "UTF-8 decoder"), which
// replaces each maximal subpart of an ill-formed sequence by one U+FFFD.

void Utf8StreamDecoder::Reset() {
  pending_.clear();
  needed_ = 0;
  lower_ = 0x80;
  upper_ = 0xBF;
}

void Utf8StreamDecoder::AppendByte(uint8_t b, std::string* out) {
  if (needed_ == 0) {
    if (b <= 0x7F) {
      out->push_back(static_cast<char>(b));
    } else if (b >= 0xC2 && b <= 0xDF) {
      needed_ = 1;
      pending_.push_back(static_cast<char>(b));
    } else if (b >= 0xE0 && b <= 0xEF) {
      if (b == 0xE0) lower_ = 0xA0;  // no overlong 3-byte forms
      if (b == 0xED) upper_ = 0x9F;  // no surrogates
      needed_ = 2;
      pending_.push_back(static_cast<char>(b));
    } else if (b >= 0xF0 && b <= 0xF4) {
      if (b == 0xF0) lower_ = 0x90;  // no overlong 4-byte forms
      if (b == 0xF4) upper_ = 0x8F;  // nothing above U+10FFFF
      needed_ = 3;
      pending_.push_back(static_cast<char>(b));
    } else {
      // 0x80..0xC1 (stray continuation, overlong 2-byte lead) and 0xF5..0xFF.
      out->append(kReplacementCharacter.data(), kReplacementCharacter.size());
    }
    return;
  }
  if (b < lower_ || b > upper_) {
    // The sequence so far is a maximal subpart: one U+FFFD, then `b` starts afresh.
    Reset();
    out->append(kReplacementCharacter.data(), kReplacementCharacter.size());
    AppendByte(b, out);
    return;
  }
  lower_ = 0x80;
  upper_ = 0xBF;
  pending_.push_back(static_cast<char>(b));
  if (--needed_ == 0) {
    out->append(pending_);
    Reset();
  }
}

void Utf8StreamDecoder::Append(absl::string_view bytes, std::string* out) {
  for (char c : bytes) AppendByte(static_cast<uint8_t>(c), out);
}

void Utf8StreamDecoder::Flush(std::string* out) {
  if (needed_ != 0) {
    Reset();
    out->append(kReplacementCharacter.data(), kReplacementCharacter.size());
  }
}

// ---------------------------------------------------------------------------------------------

std::string Detokenizer::Add(int32_t id) {
  std::string out;
  const std::optional<absl::string_view> bytes = tokenizer_.TokenBytes(id);
  if (!bytes.has_value()) {
    // Not a token of this vocabulary: the pending bytes are cut short, then one U+FFFD.
    decoder_.Flush(&out);
    out.append(kReplacementCharacter.data(), kReplacementCharacter.size());
    return out;
  }
  if (tokenizer_.IsSpecial(id)) {
    if (skip_special_tokens_) return out;
    decoder_.Flush(&out);  // a special token's text never completes a character
  }
  decoder_.Append(*bytes, &out);
  return out;
}

std::string Detokenizer::Flush() {
  std::string out;
  decoder_.Flush(&out);
  return out;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  Detokenizer d(*this, skip_special_tokens);
  std::string out;
  for (int32_t id : ids) out += d.Add(id);
  out += d.Flush();
  return out;
}

// ---------------------------------------------------------------------------------------------

ByteTokenizer::ByteTokenizer(int32_t bos_id, int32_t eos_id)
    : bos_id_(bos_id >= 0 && bos_id < 256 ? bos_id : -1),
      eos_id_(eos_id >= 0 && eos_id < 256 ? eos_id : -1) {
  for (int i = 0; i < 256; ++i) bytes_[i] = static_cast<char>(i);
}

absl::StatusOr<std::vector<int32_t>> ByteTokenizer::Encode(absl::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (char c : text) ids.push_back(static_cast<int32_t>(static_cast<uint8_t>(c)));
  return ids;
}

std::optional<absl::string_view> ByteTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= 256) return std::nullopt;
  return absl::string_view(&bytes_[id], 1);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> CreateTokenizerForModel(const std::string& dir,
                                                                   const ModelConfig& config) {
  if (config.vocab_size == 256) {
    return std::unique_ptr<Tokenizer>(new ByteTokenizer(config.bos_token_id, config.eos_token_id));
  }
  return absl::UnimplementedError(absl::StrCat(
      dir, ": vocab_size ", config.vocab_size,
      " needs the model's tokenizer.json (Hugging Face BPE), which hyla cannot load yet; only the "
      "256-token byte vocabulary is supported"));
}

}  // namespace hyla
