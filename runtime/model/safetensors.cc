#include "runtime/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/model/json.h"

namespace hyla {
namespace {

// A header larger than this is not a real safetensors header (the format's own reader uses the
// same bound); refusing it early avoids parsing megabytes of garbage from a wrong file.
constexpr uint64_t kMaxHeaderBytes = 100u * 1000u * 1000u;

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string SupportedDTypes() {
  static constexpr DType kAll[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF64,
                                   DType::kI64, DType::kI32,  DType::kI16, DType::kI8,
                                   DType::kU8,  DType::kBool};
  std::vector<std::string> names;
  for (DType t : kAll) names.emplace_back(DTypeName(t));
  return absl::StrJoin(names, ", ");
}

absl::Status Invalid(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::Status TensorError(const std::string& path, absl::string_view name, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor \"", name, "\": ", what));
}

// Parses one header entry {dtype, shape, data_offsets} into `t` (data pointer not yet set).
// `data_size` is the size of the data buffer that follows the header.
absl::Status ParseEntry(const std::string& path, const std::string& name, const JsonValue& entry,
                        uint64_t data_size, TensorInfo* t, uint64_t* begin) {
  if (!entry.is_object()) {
    return TensorError(path, name,
                       absl::StrCat("expected an object {dtype, shape, data_offsets}, got ",
                                    JsonValue::TypeName(entry.type())));
  }
  t->name = name;
  t->file = path;

  const JsonValue* dtype = entry.Find("dtype");
  if (dtype == nullptr) return TensorError(path, name, "missing \"dtype\"");
  if (!dtype->is_string()) {
    return TensorError(
        path, name,
        absl::StrCat("\"dtype\" must be a string, got ", JsonValue::TypeName(dtype->type())));
  }
  if (!ParseDTypeName(dtype->string_value(), &t->dtype)) {
    return TensorError(path, name,
                       absl::StrCat("unknown dtype \"", dtype->string_value(),
                                    "\" (supported: ", SupportedDTypes(), ")"));
  }

  const JsonValue* shape = entry.Find("shape");
  if (shape == nullptr) return TensorError(path, name, "missing \"shape\"");
  if (!shape->is_array()) {
    return TensorError(path, name,
                       absl::StrCat("\"shape\" must be an array of integers, got ",
                                    JsonValue::TypeName(shape->type())));
  }
  int64_t numel = 1;
  t->shape.clear();
  for (size_t i = 0; i < shape->array_items().size(); ++i) {
    const JsonValue& d = shape->array_items()[i];
    if (!d.is_integer()) {
      return TensorError(path, name, absl::StrCat("\"shape\" dimension ", i, " is not an integer"));
    }
    if (d.int_value() < 0) {
      return TensorError(
          path, name,
          absl::StrCat("\"shape\" dimension ", i, " is negative (", d.int_value(), ")"));
    }
    if (__builtin_mul_overflow(numel, d.int_value(), &numel)) {
      return TensorError(path, name, "\"shape\" element count overflows 64 bits");
    }
    t->shape.push_back(d.int_value());
  }
  int64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, DTypeSize(t->dtype), &nbytes)) {
    return TensorError(path, name, "\"shape\" byte size overflows 64 bits");
  }

  const JsonValue* offsets = entry.Find("data_offsets");
  if (offsets == nullptr) return TensorError(path, name, "missing \"data_offsets\"");
  if (!offsets->is_array() || offsets->array_items().size() != 2 ||
      !offsets->array_items()[0].is_integer() || !offsets->array_items()[1].is_integer() ||
      offsets->array_items()[0].int_value() < 0 || offsets->array_items()[1].int_value() < 0) {
    return TensorError(path, name,
                       "\"data_offsets\" must be [begin, end], two non-negative integers");
  }
  const int64_t b = offsets->array_items()[0].int_value();
  const int64_t e = offsets->array_items()[1].int_value();
  if (b > e) {
    return TensorError(path, name,
                       absl::StrCat("\"data_offsets\" [", b, ", ", e, "]: begin is after end"));
  }
  if (static_cast<uint64_t>(e) > data_size) {
    return TensorError(
        path, name,
        absl::StrCat("truncated: \"data_offsets\" end ", e, " is beyond the data buffer (",
                     data_size, " bytes after the header)"));
  }
  if (e - b != nbytes) {
    return TensorError(
        path, name,
        absl::StrCat("\"data_offsets\" [", b, ", ", e, "] span ", e - b, " bytes, expected ",
                     nbytes, " (shape ", ShapeString(t->shape), " x ", DTypeName(t->dtype), " of ",
                     DTypeSize(t->dtype), " bytes)"));
  }
  t->nbytes = static_cast<uint64_t>(nbytes);
  *begin = static_cast<uint64_t>(b);
  return absl::OkStatus();
}

// JSON string literal for `s` (header names are arbitrary UTF-8).
std::string JsonQuote(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string what = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(what);
    return absl::InvalidArgumentError(what);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Invalid(path, absl::StrCat("cannot stat: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Invalid(path, "not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Invalid(path, absl::StrCat("truncated: the file is ", size,
                                      " bytes, shorter than the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    return Invalid(path, absl::StrCat("cannot mmap: ", std::strerror(map_err)));
  }
  // From here the mapping is owned by `file` and released by its destructor on every error.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->map_size_ = size;
  const uint8_t* bytes = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("header length ", header_len, " is absurd (more than ",
                                      kMaxHeaderBytes, " bytes): not a safetensors file?"));
  }
  if (header_len > size - 8) {
    return Invalid(
        path, absl::StrCat("header length ", header_len, " is beyond the end of the file (", size,
                           " bytes): truncated, or not a safetensors file"));
  }
  const absl::string_view header_text(reinterpret_cast<const char*>(bytes + 8), header_len);
  absl::StatusOr<JsonValue> header = ParseJson(header_text);
  if (!header.ok()) {
    return Invalid(path, absl::StrCat("header is not valid JSON: ", header.status().message()));
  }
  if (!header->is_object()) {
    return Invalid(path, absl::StrCat("header must be a JSON object, got ",
                                      JsonValue::TypeName(header->type())));
  }
  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  struct Range {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Range> ranges;
  for (const auto& member : header->object_members()) {
    if (member.first == "__metadata__") {
      if (!member.second.is_object()) {
        return Invalid(path, absl::StrCat("\"__metadata__\" must be an object, got ",
                                          JsonValue::TypeName(member.second.type())));
      }
      continue;
    }
    TensorInfo t;
    uint64_t begin = 0;
    absl::Status s = ParseEntry(path, member.first, member.second, data_size, &t, &begin);
    if (!s.ok()) return s;
    t.data = data + begin;
    ranges.push_back(Range{begin, begin + t.nbytes, file->tensors_.size()});
    file->tensors_.push_back(std::move(t));
  }

  // Overlap check over the non-empty ranges, in offset order.
  std::vector<Range> sorted;
  for (const Range& r : ranges) {
    if (r.end > r.begin) sorted.push_back(r);
  }
  std::sort(sorted.begin(), sorted.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < sorted.size(); ++i) {
    const Range& a = sorted[i - 1];
    const Range& b = sorted[i];
    if (b.begin < a.end) {
      return Invalid(path,
                     absl::StrCat("tensors \"", file->tensors_[a.index].name, "\" (data_offsets [",
                                  a.begin, ", ", a.end, "]) and \"", file->tensors_[b.index].name,
                                  "\" (data_offsets [", b.begin, ", ", b.end, "]) overlap"));
    }
  }
  for (size_t i = 0; i < file->tensors_.size(); ++i) {
    file->index_.emplace(file->tensors_[i].name, i);
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      if (i > 0) header += ",";
      header += JsonQuote(metadata[i].first) + ":" + JsonQuote(metadata[i].second);
    }
    header += "}";
    first = false;
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name == "__metadata__") {
      return Invalid(path, "a tensor may not be named \"__metadata__\"");
    }
    if (!names.insert(t.name).second) {
      return Invalid(path, absl::StrCat("tensor \"", t.name, "\" is given twice"));
    }
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || __builtin_mul_overflow(numel, d, &numel)) {
        return TensorError(path, t.name, absl::StrCat("invalid shape ", ShapeString(t.shape)));
      }
    }
    const uint64_t expected = static_cast<uint64_t>(numel) * DTypeSize(t.dtype);
    if (t.bytes.size() != expected) {
      return TensorError(
          path, t.name,
          absl::StrCat(t.bytes.size(), " bytes given, expected ", expected, " (shape ",
                       ShapeString(t.shape), " x ", DTypeName(t.dtype), ")"));
    }
    if (!first) header += ",";
    first = false;
    header += absl::StrCat(JsonQuote(t.name), ":{\"dtype\":\"", DTypeName(t.dtype),
                           "\",\"shape\":", ShapeString(t.shape), ",\"data_offsets\":[", offset,
                           ",", offset + expected, "]}");
    offset += expected;
  }
  header += "}";
  // Pad with spaces so that the data buffer starts 8-byte aligned (fp32 views stay aligned).
  while (header.size() % 8 != 0) header.push_back(' ');

  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot create: ", std::strerror(errno)));
  }
  uint8_t len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) {
    len[i] = static_cast<uint8_t>(n & 0xff);
    n >>= 8;
  }
  bool ok = std::fwrite(len, 1, 8, f) == 8 &&
            std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (const TensorToWrite& t : tensors) {
    if (!ok) break;
    if (!t.bytes.empty()) ok = std::fwrite(t.bytes.data(), 1, t.bytes.size(), f) == t.bytes.size();
  }
  const int write_err = errno;
  if (std::fclose(f) != 0) ok = false;
  if (!ok) {
    return absl::InternalError(absl::StrCat(path, ": write failed: ", std::strerror(write_err)));
  }
  return absl::OkStatus();
}

}  // namespace hyla
