// Helpers for the model-loading tests: a temporary directory that removes itself, raw file I/O,
// hand-made safetensors files (any header text, any data) and copies of golden checkpoints.
#ifndef HYLA_TESTS_MODEL_MODEL_TEST_UTIL_H_
#define HYLA_TESTS_MODEL_MODEL_TEST_UTIL_H_

#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace hyla::testing {

// A fresh directory under /tmp (mkdtemp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    std::string templ = "/tmp/hyla_model_test_XXXXXX";
    char* made = ::mkdtemp(templ.data());
    EXPECT_NE(made, nullptr) << "mkdtemp failed";
    if (made != nullptr) path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  ASSERT_TRUE(out.good()) << "cannot write " << path;
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "write failed: " << path;
}

// 8-byte little-endian length, then `header` exactly as given (no padding), then `data`.
inline std::string RawSafetensors(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) {
    out[static_cast<size_t>(i)] = static_cast<char>(n & 0xff);
    n >>= 8;
  }
  return out + header + data;
}

// Splits a safetensors file into its header text and data buffer (no validation).
inline void SplitSafetensors(const std::string& file, std::string* header, std::string* data) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(file[static_cast<size_t>(i)]);
  *header = file.substr(8, n);
  *data = file.substr(8 + n);
}

inline std::vector<uint8_t> F32Bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(float));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

inline std::vector<uint8_t> U16Bytes(const std::vector<uint16_t>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(uint16_t));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Copies config.json and model.safetensors of golden fixture `family` into `dir`.
inline void CopyGolden(const std::string& family, const std::string& dir) {
  const std::string src = std::string(HYLA_GOLDEN_DIR) + "/" + family;
  for (const char* f : {"config.json", "model.safetensors"}) {
    ASSERT_TRUE(std::filesystem::exists(src + "/" + f))
        << "golden fixture missing: " << src << "/" << f;
    std::filesystem::copy_file(src + "/" + f, dir + "/" + f,
                               std::filesystem::copy_options::overwrite_existing);
  }
}

// Replaces the first occurrence of `from` in `s` with `to`; fails the test when absent.
inline void ReplaceOnce(std::string* s, const std::string& from, const std::string& to) {
  const size_t pos = s->find(from);
  ASSERT_NE(pos, std::string::npos) << "\"" << from << "\" not found";
  s->replace(pos, from.size(), to);
}

}  // namespace hyla::testing

#endif  // HYLA_TESTS_MODEL_MODEL_TEST_UTIL_H_
