#include "runtime/model/config_reader.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace hyla {

const JsonValue* ConfigReader::Get(absl::string_view key) const {
  const JsonValue* v = obj_.Find(key);
  if (v == nullptr || v->is_null()) return nullptr;
  return v;
}

bool ConfigReader::Has(absl::string_view key) const { return Get(key) != nullptr; }

std::string ConfigReader::KeyName(absl::string_view key) const {
  return absl::StrCat(prefix_, key);
}

void ConfigReader::Fail(absl::string_view key, absl::string_view what) {
  if (!status_.ok()) return;
  status_ = absl::InvalidArgumentError(absl::StrCat(path_, ": key \"", KeyName(key), "\": ", what));
}

int64_t ConfigReader::Int(absl::string_view key, int64_t default_value) {
  const JsonValue* v = Get(key);
  if (v == nullptr) return default_value;
  if (v->is_integer()) return v->int_value();
  // Python writes some integer-valued floats (e.g. 4.0); accept exact integers.
  if (v->is_number() && std::isfinite(v->number_value()) &&
      v->number_value() == std::floor(v->number_value()) && std::fabs(v->number_value()) < 1e15) {
    return static_cast<int64_t>(v->number_value());
  }
  Fail(key, absl::StrCat("expected an integer, got ", JsonValue::TypeName(v->type()),
                         v->is_number() ? absl::StrCat(" ", v->number_value()) : ""));
  return default_value;
}

int64_t ConfigReader::RequiredInt(absl::string_view key) {
  if (!Has(key)) {
    Fail(key, "missing (required)");
    return 0;
  }
  return Int(key, 0);
}

double ConfigReader::Float(absl::string_view key, double default_value) {
  const JsonValue* v = Get(key);
  if (v == nullptr) return default_value;
  if (!v->is_number()) {
    Fail(key, absl::StrCat("expected a number, got ", JsonValue::TypeName(v->type())));
    return default_value;
  }
  if (!std::isfinite(v->number_value())) {
    Fail(key, absl::StrCat("expected a finite number, got ", v->number_value()));
    return default_value;
  }
  return v->number_value();
}

bool ConfigReader::Bool(absl::string_view key, bool default_value) {
  const JsonValue* v = Get(key);
  if (v == nullptr) return default_value;
  if (!v->is_bool()) {
    Fail(key, absl::StrCat("expected true or false, got ", JsonValue::TypeName(v->type())));
    return default_value;
  }
  return v->bool_value();
}

std::string ConfigReader::String(absl::string_view key, absl::string_view default_value) {
  const JsonValue* v = Get(key);
  if (v == nullptr) return std::string(default_value);
  if (!v->is_string()) {
    Fail(key, absl::StrCat("expected a string, got ", JsonValue::TypeName(v->type())));
    return std::string(default_value);
  }
  return v->string_value();
}

std::optional<std::vector<int64_t>> ConfigReader::IntList(absl::string_view key) {
  const JsonValue* v = Get(key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_array()) {
    Fail(key, absl::StrCat("expected a list of integers, got ", JsonValue::TypeName(v->type())));
    return std::nullopt;
  }
  std::vector<int64_t> out;
  for (const JsonValue& item : v->array_items()) {
    if (!item.is_integer()) {
      Fail(key, "expected a list of integers");
      return std::nullopt;
    }
    out.push_back(item.int_value());
  }
  return out;
}

bool PyIsClose(double a, double b) {
  return a == b || std::fabs(a - b) <= 1e-5 * std::max(std::fabs(a), std::fabs(b));
}

DType ConfigReader::TorchDType() {
  const char* key = Has("dtype") ? "dtype" : "torch_dtype";
  std::string name = String(key, "float32");
  if (name.rfind("torch.", 0) == 0) name = name.substr(6);
  if (name == "float32" || name == "float") return DType::kF32;
  if (name == "bfloat16") return DType::kBF16;
  if (name == "float16" || name == "half") return DType::kF16;
  Fail(key,
       absl::StrCat("unsupported dtype \"", name, "\" (expected float32, bfloat16 or float16)"));
  return DType::kF32;
}

int ConfigReader::TokenId(absl::string_view key, int64_t default_value) {
  const JsonValue* raw = obj_.Find(key);
  if (raw == nullptr) return static_cast<int>(default_value);
  if (raw->is_null()) return -1;
  if (raw->is_array()) {
    std::optional<std::vector<int64_t>> ids = IntList(key);
    if (!ids.has_value() || ids->empty()) return -1;
    return static_cast<int>((*ids)[0]);
  }
  return static_cast<int>(Int(key, default_value));
}

int ConfigReader::FlaGatedMlpWidth(int hidden_size) {
  const JsonValue* ratio_json = Get("hidden_ratio");
  double width;
  if (ratio_json == nullptr || ratio_json->is_integer()) {
    const int64_t ratio = Int("hidden_ratio", 4);
    // Python: hidden_size * hidden_ratio * 2 is an int, then "/ 3" is a true division.
    width = static_cast<double>(int64_t{hidden_size} * ratio * 2) / 3.0;
  } else {
    const double ratio = Float("hidden_ratio", 4.0);
    width = static_cast<double>(hidden_size) * ratio * 2.0 / 3.0;
  }
  if (!(width >= 0) || width > INT32_MAX) {
    Fail("hidden_ratio", "does not give a valid MLP width");
    return 0;
  }
  const int64_t inter = static_cast<int64_t>(std::trunc(width));
  return static_cast<int>(256 * ((inter + 256 - 1) / 256));
}

}  // namespace hyla
