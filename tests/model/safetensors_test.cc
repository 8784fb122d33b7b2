// Tests of SafetensorsFile (mmap reader with a fully validated header) and WriteSafetensors.
#include "runtime/model/safetensors.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/json.h"
#include "tests/model/model_test_util.h"

namespace hyla {
namespace {

using ::hyla::testing::F32Bytes;
using ::hyla::testing::RawSafetensors;
using ::hyla::testing::ReadBytes;
using ::hyla::testing::SplitSafetensors;
using ::hyla::testing::TempDir;
using ::hyla::testing::U16Bytes;
using ::hyla::testing::WriteBytes;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

class SafetensorsTest : public ::testing::Test {
 protected:
  // Writes a raw file (given header text and data) and opens it.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenRaw(const std::string& header,
                                                           const std::string& data) {
    const std::string path = dir_.File("raw.safetensors");
    WriteBytes(path, RawSafetensors(header, data));
    return SafetensorsFile::Open(path);
  }
  // Expects Open of a raw file to fail with InvalidArgument naming the file and `parts`.
  void ExpectInvalid(const std::string& header, const std::string& data,
                     const std::vector<std::string>& parts) {
    auto f = OpenRaw(header, data);
    ASSERT_FALSE(f.ok()) << header;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
    EXPECT_THAT(Msg(f.status()), HasSubstr(dir_.File("raw.safetensors")));
    for (const std::string& p : parts) EXPECT_THAT(Msg(f.status()), HasSubstr(p));
  }

  TempDir dir_;
};

TEST_F(SafetensorsTest, RoundTripKeepsOrderShapesAndExactValues) {
  // fp32 values of every kind, bf16 and fp16 bit patterns written by hand.
  const std::vector<float> f32 = {0.0f, -0.0f, 1.0f, -3.5f, 1e-38f, 3.4028235e38f, 0.1f};
  const std::vector<uint16_t> bf16 = {0x3f80 /*1*/, 0xc020 /*-2.5*/, 0x0001, 0x7f80 /*inf*/};
  const std::vector<uint16_t> f16 = {0x3c00 /*1*/,     0xc100 /*-2.5*/, 0x0001 /*2^-24*/,
                                     0x7bff /*65504*/, 0xfc00 /*-inf*/, 0x3555 /*~1/3*/};
  std::vector<TensorToWrite> ts(4);
  ts[0] = {"z.first", DType::kF32, {7}, F32Bytes(f32)};
  ts[1] = {"a.bf16", DType::kBF16, {2, 2}, U16Bytes(bf16)};
  ts[2] = {"m.f16", DType::kF16, {3, 1, 2}, U16Bytes(f16)};
  ts[3] = {"empty", DType::kF32, {0, 5}, {}};
  const std::string path = dir_.File("rt.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, ts, {{"format", "pt"}, {"note", "a \"quoted\" value"}}).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const auto& got = (*file)->tensors();
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].name, "z.first");  // header order, not sorted
  EXPECT_EQ(got[1].name, "a.bf16");
  EXPECT_EQ(got[2].name, "m.f16");
  EXPECT_EQ(got[3].name, "empty");
  EXPECT_EQ(got[0].dtype, DType::kF32);
  EXPECT_EQ(got[1].dtype, DType::kBF16);
  EXPECT_EQ(got[2].dtype, DType::kF16);
  EXPECT_THAT(got[0].shape, ElementsAre(7));
  EXPECT_THAT(got[1].shape, ElementsAre(2, 2));
  EXPECT_THAT(got[2].shape, ElementsAre(3, 1, 2));
  EXPECT_THAT(got[3].shape, ElementsAre(0, 5));
  EXPECT_EQ(got[0].nbytes, 28u);
  EXPECT_EQ(got[1].nbytes, 8u);
  EXPECT_EQ(got[2].nbytes, 12u);
  EXPECT_EQ(got[3].nbytes, 0u);
  EXPECT_EQ(got[3].numel(), 0);
  for (const TensorInfo& t : got) EXPECT_EQ(t.file, path);

  std::vector<float> f32_back(f32.size());
  std::memcpy(f32_back.data(), got[0].data, got[0].nbytes);
  for (size_t i = 0; i < f32.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &f32[i], 4);
    std::memcpy(&b, &f32_back[i], 4);
    EXPECT_EQ(a, b) << i;  // bit-exact, -0.0 included
  }
  std::vector<uint16_t> bf16_back(bf16.size()), f16_back(f16.size());
  std::memcpy(bf16_back.data(), got[1].data, got[1].nbytes);
  std::memcpy(f16_back.data(), got[2].data, got[2].nbytes);
  EXPECT_EQ(bf16_back, bf16);
  EXPECT_EQ(f16_back, f16);

  ASSERT_NE((*file)->Find("m.f16"), nullptr);
  EXPECT_EQ((*file)->Find("m.f16")->name, "m.f16");
  EXPECT_EQ((*file)->Find("nope"), nullptr);
  EXPECT_EQ((*file)->Find("__metadata__"), nullptr);
  EXPECT_EQ((*file)->path(), path);
}

TEST_F(SafetensorsTest, WrittenLayoutFollowsTheFormat) {
  std::vector<TensorToWrite> ts(2);
  ts[0] = {"a", DType::kF32, {3}, F32Bytes({1, 2, 3})};
  ts[1] = {"b", DType::kBF16, {1}, U16Bytes({0x3f80})};
  const std::string path = dir_.File("layout.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, ts, {{"format", "pt"}}).ok());
  const std::string bytes = ReadBytes(path);
  std::string header, data;
  SplitSafetensors(bytes, &header, &data);
  EXPECT_EQ(header.size() % 8, 0u) << "header padded to a multiple of 8";
  EXPECT_EQ(data.size(), 14u);
  const size_t last = header.find_last_not_of(' ');
  ASSERT_NE(last, std::string::npos);
  EXPECT_EQ(header[last], '}');
  auto json = ParseJson(header);
  ASSERT_TRUE(json.ok()) << json.status();
  const JsonValue* meta = json->Find("__metadata__");
  ASSERT_NE(meta, nullptr);
  ASSERT_NE(meta->Find("format"), nullptr);
  EXPECT_EQ(meta->Find("format")->string_value(), "pt");
  const JsonValue* b = json->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->Find("dtype")->string_value(), "BF16");
  ASSERT_EQ(b->Find("data_offsets")->array_items().size(), 2u);
  EXPECT_EQ(b->Find("data_offsets")->array_items()[0].int_value(), 12);
  EXPECT_EQ(b->Find("data_offsets")->array_items()[1].int_value(), 14);
  // The data buffer starts 8-byte aligned within the file.
  EXPECT_EQ((8 + header.size()) % 8, 0u);
}

TEST_F(SafetensorsTest, WriterRejectsWrongByteCountAndDuplicates) {
  std::vector<TensorToWrite> ts(1);
  ts[0] = {"w", DType::kF32, {2, 2}, F32Bytes({1, 2, 3})};
  absl::Status s = WriteSafetensors(dir_.File("w.safetensors"), ts);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), AllOf(HasSubstr("\"w\""), HasSubstr("12 bytes given, expected 16")));
  ts[0].bytes = F32Bytes({1, 2, 3, 4});
  ts.push_back(ts[0]);
  s = WriteSafetensors(dir_.File("w.safetensors"), ts);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("\"w\" is given twice"));
}

TEST_F(SafetensorsTest, MetadataAndEmptyHeaderAreAccepted) {
  auto f = OpenRaw(R"({"__metadata__": {"format": "pt"}})", "");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->tensors().empty());
  f = OpenRaw("{}      ", "");
  ASSERT_TRUE(f.ok()) << f.status();
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  auto f = SafetensorsFile::Open(dir_.File("absent.safetensors"));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(f.status()), HasSubstr(dir_.File("absent.safetensors")));
}

TEST_F(SafetensorsTest, FileShorterThanLengthPrefix) {
  const std::string path = dir_.File("short.safetensors");
  WriteBytes(path, std::string("\x05\x00\x00", 3));
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(f.status()),
              AllOf(HasSubstr(path), HasSubstr("3 bytes"), HasSubstr("8-byte header length")));
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFile) {
  const std::string path = dir_.File("long.safetensors");
  std::string bytes = RawSafetensors("{}", "");
  bytes[0] = 100;  // claims a 100-byte header in a 10-byte file
  WriteBytes(path, bytes);
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(f.status()), AllOf(HasSubstr(path), HasSubstr("header length 100"),
                                     HasSubstr("beyond the end of the file (10 bytes)")));
}

TEST_F(SafetensorsTest, AbsurdHeaderLength) {
  const std::string path = dir_.File("absurd.safetensors");
  std::string bytes = RawSafetensors("{}", "");
  bytes[7] = 0x7f;  // ~9e18
  WriteBytes(path, bytes);
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(f.status()), AllOf(HasSubstr(path), HasSubstr("absurd")));
}

TEST_F(SafetensorsTest, HeaderNotJson) {
  ExpectInvalid("{\"a\": ", "", {"header is not valid JSON", "at byte"});
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  ExpectInvalid("[1, 2]", "", {"header must be a JSON object, got array"});
}

TEST_F(SafetensorsTest, MetadataNotAnObject) {
  ExpectInvalid(R"({"__metadata__": 3})", "", {"\"__metadata__\" must be an object"});
}

TEST_F(SafetensorsTest, EntryNotAnObject) {
  ExpectInvalid(R"({"w": [1]})", "", {"tensor \"w\"", "expected an object"});
}

TEST_F(SafetensorsTest, MissingDtype) {
  ExpectInvalid(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0'),
                {"tensor \"w\"", "missing \"dtype\""});
}

TEST_F(SafetensorsTest, MissingShape) {
  ExpectInvalid(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", std::string(4, '\0'),
                {"tensor \"w\"", "missing \"shape\""});
}

TEST_F(SafetensorsTest, MissingDataOffsets) {
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": [1]}})", std::string(4, '\0'),
                {"tensor \"w\"", "missing \"data_offsets\""});
}

TEST_F(SafetensorsTest, UnknownDtype) {
  ExpectInvalid(R"({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})",
                std::string(1, '\0'),
                {"tensor \"w\"", "unknown dtype \"F8_E4M3\"", "supported: F32, BF16, F16"});
}

TEST_F(SafetensorsTest, DtypeNotAString) {
  ExpectInvalid(R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})",
                std::string(4, '\0'), {"tensor \"w\"", "\"dtype\" must be a string"});
}

TEST_F(SafetensorsTest, NegativeDimension) {
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 0]}})", "",
                {"tensor \"w\"", "dimension 1 is negative (-1)"});
}

TEST_F(SafetensorsTest, NonIntegerDimension) {
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 0]}})", "",
                {"tensor \"w\"", "dimension 0 is not an integer"});
}

TEST_F(SafetensorsTest, ShapeNotAnArray) {
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}})",
                std::string(16, '\0'), {"tensor \"w\"", "\"shape\" must be an array"});
}

TEST_F(SafetensorsTest, ElementCountOverflow) {
  ExpectInvalid(
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", "",
      {"tensor \"w\"", "overflows"});
  // numel fits in int64 but numel × 4 bytes does not.
  ExpectInvalid(
      R"({"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", "",
      {"tensor \"w\"", "overflows"});
}

TEST_F(SafetensorsTest, DataOffsetsNotAPair) {
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})",
                std::string(4, '\0'), {"tensor \"w\"", "[begin, end]"});
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})",
                std::string(8, '\0'), {"tensor \"w\"", "[begin, end]"});
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})",
                std::string(4, '\0'), {"tensor \"w\"", "non-negative"});
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}})",
                std::string(4, '\0'), {"tensor \"w\"", "[begin, end]"});
}

TEST_F(SafetensorsTest, DataOffsetsBeginAfterEnd) {
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})",
                std::string(8, '\0'), {"tensor \"w\"", "[8, 4]", "begin is after end"});
}

TEST_F(SafetensorsTest, DataOffsetsEndBeyondBuffer) {
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                std::string(6, '\0'),
                {"tensor \"w\"", "truncated", "end 8 is beyond the data buffer (6 bytes"});
}

TEST_F(SafetensorsTest, DataOffsetsSizeMismatch) {
  ExpectInvalid(R"({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 10]}})",
                std::string(12, '\0'),
                {"tensor \"w\"", "[0, 10] span 10 bytes, expected 12", "[2, 3]", "BF16"});
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  ExpectInvalid(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                std::string(12, '\0'), {"\"a\"", "\"b\"", "overlap"});
  // Listed out of offset order, still detected.
  ExpectInvalid(R"({"b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},)"
                R"( "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}})",
                std::string(12, '\0'), {"\"a\"", "\"b\"", "overlap"});
}

TEST_F(SafetensorsTest, DuplicateTensorNameRejected) {
  ExpectInvalid(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                std::string(8, '\0'), {"duplicate key \"a\""});
}

TEST_F(SafetensorsTest, AdjacentAndEmptyTensorsDoNotOverlap) {
  auto f = OpenRaw(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                   R"( "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},)"
                   R"( "b": {"dtype": "U8", "shape": [], "data_offsets": [8, 9]}})",
                   std::string(9, '\0'));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->tensors().size(), 3u);
  EXPECT_EQ((*f)->Find("b")->numel(), 1);  // a scalar
}

TEST_F(SafetensorsTest, GoldenFixtureOpens) {
  auto f = SafetensorsFile::Open(std::string(HYLA_GOLDEN_DIR) + "/llama/model.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->tensors().size(), 39u);
  EXPECT_EQ((*f)->tensors().front().name, "lm_head.weight");
  const TensorInfo* norm = (*f)->Find("model.norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_THAT(norm->shape, ElementsAre(128));
}

}  // namespace
}  // namespace hyla
