// Tests of the strict JSON reader (runtime/model/json.h): valid documents, escapes, surrogate
// pairs, numbers, the NaN/Infinity literals Python writes, and every error kind.
#include "runtime/model/json.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hyla {
namespace {

using ::testing::HasSubstr;

JsonValue ParseOk(const std::string& text) {
  absl::StatusOr<JsonValue> v = ParseJson(text);
  EXPECT_TRUE(v.ok()) << text << ": " << v.status();
  return v.ok() ? *v : JsonValue();
}

// Asserts that `text` is rejected with InvalidArgument mentioning `what` and "at byte".
void ExpectError(const std::string& text, const std::string& what) {
  absl::StatusOr<JsonValue> v = ParseJson(text);
  ASSERT_FALSE(v.ok()) << "accepted: " << text;
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << text;
  EXPECT_THAT(std::string(v.status().message()), HasSubstr(what)) << text;
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("at byte")) << text;
}

TEST(JsonTest, ScalarsAtTopLevel) {
  EXPECT_TRUE(ParseOk("null").is_null());
  EXPECT_TRUE(ParseOk("true").is_bool());
  EXPECT_TRUE(ParseOk("true").bool_value());
  EXPECT_FALSE(ParseOk("false").bool_value());
  EXPECT_EQ(ParseOk("\"hi\"").string_value(), "hi");
  EXPECT_EQ(ParseOk("  \t\r\n 42 \n").int_value(), 42);
}

TEST(JsonTest, ObjectKeepsMemberOrderAndFinds) {
  const JsonValue v = ParseOk(R"({"b": 1, "a": [true, null, "x"], "c": {"d": {}}, "e": []})");
  ASSERT_TRUE(v.is_object());
  ASSERT_EQ(v.object_members().size(), 4u);
  EXPECT_EQ(v.object_members()[0].first, "b");
  EXPECT_EQ(v.object_members()[1].first, "a");
  EXPECT_EQ(v.object_members()[2].first, "c");
  EXPECT_EQ(v.object_members()[3].first, "e");
  const JsonValue* a = v.Find("a");
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(a->is_array());
  ASSERT_EQ(a->array_items().size(), 3u);
  EXPECT_TRUE(a->array_items()[0].bool_value());
  EXPECT_TRUE(a->array_items()[1].is_null());
  EXPECT_EQ(a->array_items()[2].string_value(), "x");
  const JsonValue* c = v.Find("c");
  ASSERT_NE(c, nullptr);
  ASSERT_NE(c->Find("d"), nullptr);
  EXPECT_TRUE(c->Find("d")->is_object());
  EXPECT_TRUE(c->Find("d")->object_members().empty());
  EXPECT_TRUE(v.Find("e")->is_array());
  EXPECT_TRUE(v.Find("e")->array_items().empty());
  EXPECT_EQ(v.Find("zz"), nullptr);
  EXPECT_EQ(a->Find("b"), nullptr);  // Find on a non-object
}

TEST(JsonTest, TypeNames) {
  EXPECT_STREQ(JsonValue::TypeName(JsonValue::Type::kNull), "null");
  EXPECT_STREQ(JsonValue::TypeName(JsonValue::Type::kBool), "bool");
  EXPECT_STREQ(JsonValue::TypeName(JsonValue::Type::kNumber), "number");
  EXPECT_STREQ(JsonValue::TypeName(JsonValue::Type::kString), "string");
  EXPECT_STREQ(JsonValue::TypeName(JsonValue::Type::kArray), "array");
  EXPECT_STREQ(JsonValue::TypeName(JsonValue::Type::kObject), "object");
}

TEST(JsonTest, SimpleEscapes) {
  EXPECT_EQ(ParseOk(R"("a\"b\\c\/d\be\ff\ng\rh\ti")").string_value(),
            std::string("a\"b\\c/d\be\ff\ng\rh\ti"));
}

TEST(JsonTest, UnicodeEscapesBecomeUtf8) {
  EXPECT_EQ(ParseOk(R"("\u0041")").string_value(), "A");
  EXPECT_EQ(ParseOk(R"("\u00e9")").string_value(), "\xc3\xa9");      // é, 2 bytes
  EXPECT_EQ(ParseOk(R"("\u20AC")").string_value(), "\xe2\x82\xac");  // €, 3 bytes
  EXPECT_EQ(ParseOk(R"("\uffff")").string_value(), "\xef\xbf\xbf");
  EXPECT_EQ(ParseOk(R"("\u0000")").string_value(), std::string(1, '\0'));
}

TEST(JsonTest, SurrogatePairs) {
  EXPECT_EQ(ParseOk(R"("\ud83d\ude00")").string_value(), "\xf0\x9f\x98\x80");  // U+1F600
  EXPECT_EQ(ParseOk(R"("\uD800\uDC00")").string_value(), "\xf0\x90\x80\x80");  // U+10000
  EXPECT_EQ(ParseOk(R"("\udbff\udfff")").string_value(), "\xf4\x8f\xbf\xbf");  // U+10FFFF
}

TEST(JsonTest, RawUtf8PassesThrough) {
  EXPECT_EQ(ParseOk("\"h\xc3\xa9llo\"").string_value(), "h\xc3\xa9llo");
}

TEST(JsonTest, Integers) {
  JsonValue v = ParseOk("0");
  EXPECT_TRUE(v.is_integer());
  EXPECT_EQ(v.int_value(), 0);
  v = ParseOk("-45");
  EXPECT_TRUE(v.is_integer());
  EXPECT_EQ(v.int_value(), -45);
  EXPECT_EQ(v.number_value(), -45.0);
  v = ParseOk("9223372036854775807");
  EXPECT_TRUE(v.is_integer());
  EXPECT_EQ(v.int_value(), std::numeric_limits<int64_t>::max());
  v = ParseOk("-9223372036854775808");
  EXPECT_TRUE(v.is_integer());
  EXPECT_EQ(v.int_value(), std::numeric_limits<int64_t>::min());
}

TEST(JsonTest, IntegerOutOfInt64RangeIsANumberButNotAnInteger) {
  const JsonValue v = ParseOk("9223372036854775808");
  EXPECT_TRUE(v.is_number());
  EXPECT_FALSE(v.is_integer());
  EXPECT_EQ(v.number_value(), 9223372036854775808.0);
}

TEST(JsonTest, FractionsAndExponentsAreNotIntegers) {
  JsonValue v = ParseOk("1.5");
  EXPECT_FALSE(v.is_integer());
  EXPECT_EQ(v.number_value(), 1.5);
  v = ParseOk("2.0");
  EXPECT_FALSE(v.is_integer());
  EXPECT_EQ(v.number_value(), 2.0);
  v = ParseOk("1e3");
  EXPECT_FALSE(v.is_integer());
  EXPECT_EQ(v.number_value(), 1000.0);
  EXPECT_EQ(ParseOk("1E-2").number_value(), 0.01);
  EXPECT_EQ(ParseOk("-2.5e+1").number_value(), -25.0);
  EXPECT_EQ(ParseOk("1e-06").number_value(), 1e-6);
  EXPECT_EQ(ParseOk("10000.0").number_value(), 10000.0);
}

TEST(JsonTest, PythonNonFiniteLiterals) {
  JsonValue v = ParseOk("NaN");
  EXPECT_TRUE(v.is_number());
  EXPECT_FALSE(v.is_integer());
  EXPECT_TRUE(std::isnan(v.number_value()));
  v = ParseOk("Infinity");
  EXPECT_TRUE(v.is_number());
  EXPECT_TRUE(std::isinf(v.number_value()));
  EXPECT_GT(v.number_value(), 0);
  v = ParseOk("-Infinity");
  EXPECT_TRUE(std::isinf(v.number_value()));
  EXPECT_LT(v.number_value(), 0);
  const JsonValue o = ParseOk(R"({"a": NaN, "b": [Infinity, -Infinity]})");
  EXPECT_TRUE(std::isnan(o.Find("a")->number_value()));
  EXPECT_TRUE(std::isinf(o.Find("b")->array_items()[1].number_value()));
}

TEST(JsonTest, ErrorEmptyInput) {
  ExpectError("", "unexpected end of input");
  ExpectError("   ", "unexpected end of input");
}
TEST(JsonTest, ErrorTrailingCharacters) {
  ExpectError("{} x", "trailing characters");
  ExpectError("1 2", "trailing characters");
}
TEST(JsonTest, ErrorUnexpectedCharacter) {
  ExpectError("@", "unexpected character '@'");
  ExpectError("[tru]", "unexpected character 't'");
  ExpectError("+1", "unexpected character '+'");
  ExpectError(".5", "unexpected character '.'");
  ExpectError("'a'", "unexpected character");
  ExpectError("Inf", "unexpected character 'I'");
}
TEST(JsonTest, ErrorBadNumber) {
  ExpectError("-", "bad number");
  ExpectError("-x", "bad number");
  ExpectError("1.", "bad number");
  ExpectError("1.e5", "bad number");
  ExpectError("1e", "bad number");
  ExpectError("1e+", "bad number");
}
TEST(JsonTest, ErrorLeadingZeros) {
  // RFC 8259: a number has no leading zeros ("01" is not JSON; Python's json rejects it).
  EXPECT_FALSE(ParseJson("01").ok());
  EXPECT_FALSE(ParseJson("-01").ok());
  EXPECT_FALSE(ParseJson(R"({"num_heads": 08})").ok());
  EXPECT_TRUE(ParseJson("0.5").ok());
  EXPECT_TRUE(ParseJson("-0").ok());
}
TEST(JsonTest, ErrorStrings) {
  ExpectError(R"("abc)", "unterminated string");
  ExpectError("\"a\x01\"", "control character in string");
  ExpectError("\"a\nb\"", "control character in string");
  ExpectError("\"abc\\", "unterminated escape");
  ExpectError(R"("\x")", "bad escape");
  ExpectError(R"("\u12")", "truncated \\u escape");
  ExpectError(R"("\u12G4")", "bad \\u escape");
}
TEST(JsonTest, ErrorSurrogates) {
  ExpectError(R"("\ud83d")", "lone high surrogate");
  ExpectError(R"("\ud83dx")", "lone high surrogate");
  ExpectError(R"("\ud83d\u0041")", "bad low surrogate");
  ExpectError(R"("\ud83d\ud83d")", "bad low surrogate");
  ExpectError(R"("\ude00")", "lone low surrogate");
}
TEST(JsonTest, ErrorArrays) {
  ExpectError("[1, 2", "unterminated array");
  ExpectError("[1 2]", "expected ',' or ']'");
  ExpectError("[1,]", "unexpected character ']'");
}
TEST(JsonTest, ErrorObjects) {
  ExpectError("{1: 2}", "expected a string key");
  ExpectError(R"({"a": 1,})", "expected a string key");
  ExpectError(R"({"a" 1})", "expected ':'");
  ExpectError(R"({"a": 1)", "unterminated object");
  ExpectError(R"({"a": 1 "b": 2})", "expected ',' or '}'");
  ExpectError(R"({"a": })", "unexpected character '}'");
}
TEST(JsonTest, ErrorDuplicateKeys) {
  ExpectError(R"({"a": 1, "b": 2, "a": 3})", "duplicate key \"a\"");
  // Nested objects have their own key space.
  EXPECT_TRUE(ParseJson(R"({"a": {"a": 1}, "b": {"a": 2}})").ok());
}
TEST(JsonTest, ErrorByteOffsetPointsAtTheProblem) {
  absl::StatusOr<JsonValue> v = ParseJson("[1, 2, @]");
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("at byte 7"));
}

TEST(JsonTest, DepthLimit) {
  const auto nested = [](int depth) {
    return std::string(static_cast<size_t>(depth), '[') + "1" +
           std::string(static_cast<size_t>(depth), ']');
  };
  EXPECT_TRUE(ParseJson(nested(200)).ok());
  ExpectError(nested(300), "nesting too deep");
  // Very deep input fails cleanly (no stack overflow).
  ExpectError(nested(100000), "nesting too deep");
  std::string objects;
  for (int i = 0; i < 300; ++i) objects += "{\"a\":";
  objects += "1" + std::string(300, '}');
  ExpectError(objects, "nesting too deep");
}

}  // namespace
}  // namespace hyla
