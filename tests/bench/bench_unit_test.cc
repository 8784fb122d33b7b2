// The metric arithmetic of hyla-bench on hand-made records (expected values worked out by hand).
#include <vector>

#include "bench/hyla_bench.h"
#include "gtest/gtest.h"

namespace hyla::bench {
namespace {

TEST(BenchMetrics, PercentileInterpolatesLikeNumpy) {
  const std::vector<double> v = {1, 2, 3, 4, 5};
  EXPECT_DOUBLE_EQ(Percentile(v, 50), 3);
  EXPECT_DOUBLE_EQ(Percentile(v, 90), 4.6);  // numpy.percentile([1..5], 90)
  EXPECT_DOUBLE_EQ(Percentile(v, 99), 4.96);
  const Summary s = Summarize({5, 1, 4, 2, 3});
  EXPECT_EQ(s.count, 5);
  EXPECT_DOUBLE_EQ(s.mean, 3);
  EXPECT_DOUBLE_EQ(s.p50, 3);
}

TEST(BenchMetrics, ParseLengthDist) {
  EXPECT_EQ(ParseLengthDist("16")->lo, 16);
  EXPECT_EQ(ParseLengthDist("16")->hi, 16);
  EXPECT_EQ(ParseLengthDist("uniform:4:9")->lo, 4);
  EXPECT_EQ(ParseLengthDist("uniform:4:9")->hi, 9);
  EXPECT_FALSE(ParseLengthDist("uniform:9:4").ok());
  EXPECT_FALSE(ParseLengthDist("0").ok());
  EXPECT_FALSE(ParseLengthDist("x").ok());
}

TEST(BenchMetrics, ReportFollowsVllmDefinitions) {
  // Request A: sent 0, tokens at 0.1, 0.2, 0.4 -> TTFT 100 ms, ITL 100 and 200 ms, e2e 400 ms,
  // TPOT (400-100)/2 = 150 ms. Request B: sent 0.2, tokens at 0.5, 0.6 -> TTFT 300 ms, ITL 100,
  // e2e 400 ms, TPOT 100 ms. Request C failed with UNAVAILABLE. Duration 0 -> 0.6 s.
  RequestRecord a{10, 3, true, "OK", 0.0, 0.1, 0.4, {0.1, 0.2, 0.4}};
  RequestRecord b{20, 2, true, "OK", 0.2, 0.3, 0.4, {0.5, 0.6}};
  RequestRecord c{30, 2, false, "UNAVAILABLE", 0.1, 0.05, 0.05, {}};
  BenchOptions o;
  o.slo_ttft_ms = 200;  // only A meets it
  const BenchReport r = ComputeReport(o, {a, b, c});
  EXPECT_EQ(r.requested, 3);
  EXPECT_EQ(r.completed, 2);
  ASSERT_EQ(r.failed.size(), 1u);
  EXPECT_EQ(r.failed.at("UNAVAILABLE"), 1);
  EXPECT_NEAR(r.duration_s, 0.6, 1e-12);
  EXPECT_EQ(r.total_input_tokens, 30);
  EXPECT_EQ(r.total_output_tokens, 5);
  EXPECT_NEAR(r.request_throughput, 2 / 0.6, 1e-9);
  EXPECT_NEAR(r.output_throughput, 5 / 0.6, 1e-9);
  EXPECT_NEAR(r.total_token_throughput, 35 / 0.6, 1e-9);
  EXPECT_NEAR(r.goodput, 1 / 0.6, 1e-9);
  EXPECT_NEAR(r.ttft_ms.mean, 200, 1e-9);
  EXPECT_NEAR(r.tpot_ms.mean, 125, 1e-9);
  EXPECT_EQ(r.itl_ms.count, 3);
  EXPECT_NEAR(r.itl_ms.mean, 400.0 / 3, 1e-9);
  EXPECT_NEAR(r.itl_ms.p50, 100, 1e-9);
  EXPECT_NEAR(r.e2e_ms.mean, 400, 1e-9);
}

}  // namespace
}  // namespace hyla::bench
