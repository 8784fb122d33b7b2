// Tests of the bf16 / fp16 <-> fp32 conversions (runtime/base/float16.h): exact values, round to
// nearest even, subnormals, overflow, infinities and NaN. Expected bit patterns are by hand.
#include "runtime/base/float16.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace hyla {
namespace {

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}
uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}
bool IsBf16NaN(uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x007fu) != 0; }
bool IsFp16NaN(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0; }

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(Bf16Test, ToFloatExactValues) {
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xc000), -2.0f);
  EXPECT_EQ(Bf16ToFloat(0x3e20), 0.15625f);
  EXPECT_EQ(Bf16ToFloat(0x7f7f), 3.38953139e38f);          // largest finite bf16
  EXPECT_EQ(Bf16ToFloat(0x0080), std::ldexp(1.0f, -126));  // smallest normal
  EXPECT_EQ(Bf16ToFloat(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
  EXPECT_EQ(Bits(Bf16ToFloat(0x8000)), 0x80000000u);       // -0.0
  EXPECT_EQ(Bf16ToFloat(0x7f80), kInf);
  EXPECT_EQ(Bf16ToFloat(0xff80), -kInf);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7fc0)));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0xff81)));
}

TEST(Bf16Test, FromFloatExactValues) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToBf16(0.0f), 0x0000);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBf16(kInf), 0x7f80);
  EXPECT_EQ(FloatToBf16(-kInf), 0xff80);
}

TEST(Bf16Test, RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between 1 (0x3f80, even) and 1 + 2^-7 (0x3f81): ties go to even.
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808000u)), 0x3f80);
  // 1 + 3*2^-8 is halfway between 0x3f81 (odd) and 0x3f82 (even).
  EXPECT_EQ(FloatToBf16(FromBits(0x3f818000u)), 0x3f82);
  // Just above and just below the halfway point.
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(FloatToBf16(FromBits(0x3f807fffu)), 0x3f80);
  // Negative values round the magnitude the same way.
  EXPECT_EQ(FloatToBf16(FromBits(0xbf818000u)), 0xbf82);
  // A carry from the mantissa into the exponent: (2 - 2^-23) rounds up to 2.0.
  EXPECT_EQ(FloatToBf16(FromBits(0x3fffffffu)), 0x4000);
}

TEST(Bf16Test, OverflowRoundsToInfinity) {
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::max()), 0xff80);
  // The largest float that still rounds to the largest finite bf16.
  EXPECT_EQ(FloatToBf16(FromBits(0x7f7f7fffu)), 0x7f7f);
}

TEST(Bf16Test, Subnormals) {
  EXPECT_EQ(FloatToBf16(FromBits(0x00010000u)), 0x0001);
  EXPECT_EQ(FloatToBf16(FromBits(0x00008000u)), 0x0000);  // tie to even (0)
  EXPECT_EQ(FloatToBf16(FromBits(0x00018000u)), 0x0002);  // tie to even (2)
  EXPECT_EQ(FloatToBf16(FromBits(0x00008001u)), 0x0001);
  EXPECT_EQ(FloatToBf16(FromBits(0x80010000u)), 0x8001);
}

TEST(Bf16Test, NaNStaysNaN) {
  EXPECT_TRUE(IsBf16NaN(FloatToBf16(std::numeric_limits<float>::quiet_NaN())));
  // A NaN whose payload is only in the low 16 bits must not become infinity.
  EXPECT_TRUE(IsBf16NaN(FloatToBf16(FromBits(0x7f800001u))));
  EXPECT_TRUE(IsBf16NaN(FloatToBf16(FromBits(0xff800001u))));
  EXPECT_EQ(FloatToBf16(FromBits(0xff800001u)) & 0x8000, 0x8000);  // sign kept
}

TEST(Bf16Test, EveryBf16RoundTrips) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const uint16_t b = static_cast<uint16_t>(h);
    const float f = Bf16ToFloat(b);
    EXPECT_EQ(Bits(f) & 0xffffu, 0u) << h;  // widening only appends zero bits
    if (IsBf16NaN(b)) {
      EXPECT_TRUE(std::isnan(f)) << h;
      EXPECT_TRUE(IsBf16NaN(FloatToBf16(f))) << h;
    } else {
      EXPECT_EQ(FloatToBf16(f), b) << h;
    }
  }
}

TEST(Fp16Test, ToFloatExactValues) {
  EXPECT_EQ(Fp16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(Fp16ToFloat(0xc000), -2.0f);
  EXPECT_EQ(Fp16ToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(Fp16ToFloat(0x7bff), 65504.0f);                         // largest finite
  EXPECT_EQ(Fp16ToFloat(0x0400), std::ldexp(1.0f, -14));            // smallest normal
  EXPECT_EQ(Fp16ToFloat(0x03ff), 1023.0f * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(Fp16ToFloat(0x0200), std::ldexp(1.0f, -15));
  EXPECT_EQ(Fp16ToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(Fp16ToFloat(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(Bits(Fp16ToFloat(0x8000)), 0x80000000u);  // -0.0
  EXPECT_EQ(Bits(Fp16ToFloat(0x0000)), 0x00000000u);
  EXPECT_EQ(Fp16ToFloat(0x7c00), kInf);
  EXPECT_EQ(Fp16ToFloat(0xfc00), -kInf);
  EXPECT_TRUE(std::isnan(Fp16ToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(Fp16ToFloat(0x7c01)));
  EXPECT_TRUE(std::isnan(Fp16ToFloat(0xfe00)));
}

TEST(Fp16Test, FromFloatExactValues) {
  EXPECT_EQ(FloatToFp16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToFp16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToFp16(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(FloatToFp16(0.0f), 0x0000);
  EXPECT_EQ(FloatToFp16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToFp16(kInf), 0x7c00);
  EXPECT_EQ(FloatToFp16(-kInf), 0xfc00);
  EXPECT_EQ(FloatToFp16(0.1f), 0x2e66);  // 0.0999755859375
  EXPECT_EQ(FloatToFp16(1.0f / 3), 0x3555);
}

TEST(Fp16Test, RoundsToNearestEven) {
  const float ulp = std::ldexp(1.0f, -10);                      // fp16 ulp at 1.0
  EXPECT_EQ(FloatToFp16(1.0f + ulp / 2), 0x3c00);               // tie -> even (0x3c00)
  EXPECT_EQ(FloatToFp16(1.0f + 3 * ulp / 2), 0x3c02);           // tie -> even (0x3c02)
  EXPECT_EQ(FloatToFp16(1.0f + ulp / 2 + ulp / 1024), 0x3c01);  // above the tie
  EXPECT_EQ(FloatToFp16(1.0f + ulp / 2 - ulp / 1024), 0x3c00);  // below the tie
  EXPECT_EQ(FloatToFp16(-(1.0f + 3 * ulp / 2)), 0xbc02);
  // Mantissa carry into the exponent: 2 - 2^-12 rounds to 2.0.
  EXPECT_EQ(FloatToFp16(2.0f - std::ldexp(1.0f, -12)), 0x4000);
}

TEST(Fp16Test, OverflowRoundsToInfinity) {
  EXPECT_EQ(FloatToFp16(65519.0f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(FloatToFp16(65520.0f), 0x7c00);  // halfway: ties to even = infinity
  EXPECT_EQ(FloatToFp16(1e6f), 0x7c00);
  EXPECT_EQ(FloatToFp16(-1e6f), 0xfc00);
  EXPECT_EQ(FloatToFp16(std::numeric_limits<float>::max()), 0x7c00);
}

TEST(Fp16Test, Subnormals) {
  const float tiny = std::ldexp(1.0f, -24);  // smallest fp16 subnormal
  EXPECT_EQ(FloatToFp16(tiny), 0x0001);
  EXPECT_EQ(FloatToFp16(-tiny), 0x8001);
  EXPECT_EQ(FloatToFp16(tiny / 2), 0x0000);      // tie -> even (0)
  EXPECT_EQ(FloatToFp16(tiny * 0.75f), 0x0001);  // above the tie
  EXPECT_EQ(FloatToFp16(tiny * 1.5f), 0x0002);   // tie -> even (2)
  EXPECT_EQ(FloatToFp16(tiny * 2.5f), 0x0002);   // tie -> even (2)
  EXPECT_EQ(FloatToFp16(tiny / 4), 0x0000);
  EXPECT_EQ(FloatToFp16(-tiny / 4), 0x8000);  // underflow keeps the sign
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -40)), 0x0000);
  EXPECT_EQ(FloatToFp16(1023.0f * tiny), 0x03ff);
  EXPECT_EQ(FloatToFp16(1023.5f * tiny), 0x0400);  // tie between 0x03ff and 0x0400 -> even
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -15)), 0x0200);
  // fp32 subnormals are far below fp16 range.
  EXPECT_EQ(FloatToFp16(FromBits(0x00000001u)), 0x0000);
}

TEST(Fp16Test, NaNStaysNaN) {
  EXPECT_TRUE(IsFp16NaN(FloatToFp16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(IsFp16NaN(FloatToFp16(FromBits(0x7f800001u))));  // payload below fp16 precision
  EXPECT_TRUE(IsFp16NaN(FloatToFp16(FromBits(0xffc00000u))));
  EXPECT_EQ(FloatToFp16(FromBits(0xffc00000u)) & 0x8000, 0x8000);
}

TEST(Fp16Test, EveryFp16RoundTripsAndIsOrdered) {
  float prev = -1.0f;
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const uint16_t b = static_cast<uint16_t>(h);
    const float f = Fp16ToFloat(b);
    if (IsFp16NaN(b)) {
      EXPECT_TRUE(std::isnan(f)) << h;
      EXPECT_TRUE(IsFp16NaN(FloatToFp16(f))) << h;
      continue;
    }
    EXPECT_EQ(FloatToFp16(f), b) << h;
    if (h <= 0x7c00) {  // positive values, increasing with the bit pattern
      if (h > 0) {
        EXPECT_GT(f, prev) << h;
      }
      prev = f;
    }
    if (h >= 0x8000) {
      EXPECT_EQ(f, -Fp16ToFloat(static_cast<uint16_t>(h - 0x8000))) << h;
    }
  }
}

}  // namespace
}  // namespace hyla
