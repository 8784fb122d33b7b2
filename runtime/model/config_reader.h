// ConfigReader: typed access to the keys of a config.json object, with the authors' defaults,
// and errors that name the file, the key and what was expected.
//
// Usage:
//   ConfigReader r(root, path);
//   int heads = r.Int("num_heads", 6);              // default when absent or null
//   int vocab = r.RequiredInt("vocab_size");
//   ...
//   HYLA_RETURN_IF_ERROR(r.status());               // first error, if any
//
// Thread-safety: not thread-safe; one reader per parse.
#ifndef HYLA_RUNTIME_MODEL_CONFIG_READER_H_
#define HYLA_RUNTIME_MODEL_CONFIG_READER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "runtime/model/dtype.h"
#include "runtime/model/json.h"

namespace hyla {

// Python's math.isclose(a, b, rel_tol=1e-5) (abs_tol 0): how the authors' configs check that
// derived head dimensions are whole numbers.
bool PyIsClose(double a, double b);

class ConfigReader {
 public:
  ConfigReader(const JsonValue& object, absl::string_view path, std::string key_prefix = "")
      : obj_(object), path_(path), prefix_(std::move(key_prefix)) {}

  bool Has(absl::string_view key) const;  // present and not null
  const JsonValue* Get(absl::string_view key) const;

  int64_t Int(absl::string_view key, int64_t default_value);
  int64_t RequiredInt(absl::string_view key);
  // Accepts integers and floats (e.g. expand_v = 2.0); must be finite.
  double Float(absl::string_view key, double default_value);
  bool Bool(absl::string_view key, bool default_value);
  std::string String(absl::string_view key, absl::string_view default_value);
  std::optional<std::vector<int64_t>> IntList(absl::string_view key);
  // The checkpoint's torch dtype: "dtype" (transformers 5) or "torch_dtype" (4), with or without
  // the "torch." prefix; float32 when neither is present. F32, BF16 or F16, else an error.
  DType TorchDType();
  // A token id: an integer; null → -1 (Python None); a list → its first id (empty → -1);
  // `default_value` when absent.
  int TokenId(absl::string_view key, int64_t default_value);
  // fla GatedMLP's width when intermediate_size is null: int(hidden_size · hidden_ratio · 2 / 3)
  // (Python semantics: integer product, true division) rounded up to a multiple of 256;
  // hidden_ratio null means 4. 0 with an error on "hidden_ratio" when it gives no valid width.
  int FlaGatedMlpWidth(int hidden_size);

  // Records an error about `key` (first one wins).
  void Fail(absl::string_view key, absl::string_view what);
  const absl::Status& status() const { return status_; }

  std::string KeyName(absl::string_view key) const;  // prefix + key, for messages

 private:
  const JsonValue& obj_;
  std::string path_;
  std::string prefix_;
  absl::Status status_;
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_MODEL_CONFIG_READER_H_
