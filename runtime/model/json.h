// A small, strict JSON reader for config.json, safetensors headers and sharded indexes.
// (runtime/ may depend only on Abseil and the standard library, so no third-party JSON here.)
//
// Thread-safety: a parsed JsonValue is immutable and may be read from any thread.
#ifndef HYLA_RUNTIME_MODEL_JSON_H_
#define HYLA_RUNTIME_MODEL_JSON_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hyla {

class JsonValue {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  JsonValue() = default;
  static JsonValue Null() { return JsonValue(); }
  static JsonValue Bool(bool b);
  static JsonValue Number(double d, bool is_integer, int64_t i);
  static JsonValue String(std::string s);
  static JsonValue Array(std::vector<JsonValue> items);
  static JsonValue Object(std::vector<std::pair<std::string, JsonValue>> members);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  // True when the literal had no fraction or exponent and fits in int64.
  bool is_integer() const { return type_ == Type::kNumber && is_integer_; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  bool bool_value() const { return bool_; }
  double number_value() const { return number_; }
  int64_t int_value() const { return int_; }
  const std::string& string_value() const { return string_; }
  const std::vector<JsonValue>& array_items() const { return items_; }
  const std::vector<std::pair<std::string, JsonValue>>& object_members() const { return members_; }
  // Object member by key, or nullptr (also when this is not an object).
  const JsonValue* Find(absl::string_view key) const;

  // "null", "bool", "number", "string", "array", "object".
  static const char* TypeName(Type t);

 private:
  Type type_ = Type::kNull;
  bool bool_ = false;
  bool is_integer_ = false;
  double number_ = 0;
  int64_t int_ = 0;
  std::string string_;
  std::vector<JsonValue> items_;
  std::vector<std::pair<std::string, JsonValue>> members_;
};

// Parses one JSON document (RFC 8259; NaN/Infinity literals are accepted as numbers because
// Python's json module writes them, and config validation rejects them by name). Errors are
// InvalidArgument with the byte offset.
absl::StatusOr<JsonValue> ParseJson(absl::string_view text);

}  // namespace hyla

#endif  // HYLA_RUNTIME_MODEL_JSON_H_
