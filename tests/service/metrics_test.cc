#include "service/metrics.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace hyla::service {
namespace {

std::shared_ptr<Metrics> Make() {
  BuildInfo b{"1.2.3", "neural_attention_search_linear_attn_gdn", "natsl", "cpu"};
  auto m = Metrics::Create(b, 2048);
  EXPECT_TRUE(m.ok());
  return *m;
}

const prometheus::MetricFamily* FindFamily(const std::vector<prometheus::MetricFamily>& fams,
                                           const std::string& name) {
  for (const auto& f : fams) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

const prometheus::ClientMetric* FindMetric(const prometheus::MetricFamily& f,
                                           const std::map<std::string, std::string>& labels) {
  for (const auto& m : f.metric) {
    bool all = true;
    for (const auto& [k, v] : labels) {
      bool found = false;
      for (const auto& l : m.label) found = found || (l.name == k && l.value == v);
      all = all && found;
    }
    if (all) return &m;
  }
  return nullptr;
}

// Every family of docs/metrics.md, with its type and label names.
TEST(MetricsTest, ContractFamiliesExistFromStart) {
  auto m = Make();
  const auto fams = m->Collect();
  struct Expected {
    const char* name;
    prometheus::MetricType type;
    std::set<std::string> labels;
    size_t series;  // series present from the start
  };
  using T = prometheus::MetricType;
  const Expected expected[] = {
      {"hyla_build_info", T::Gauge, {"version", "model_type", "family", "device"}, 1},
      {"hyla_requests_total", T::Counter, {"method", "code"}, 9 * 17},
      {"hyla_request_duration_seconds", T::Histogram, {"method"}, 9},
      {"hyla_time_to_first_token_seconds", T::Histogram, {}, 1},
      {"hyla_inter_token_latency_seconds", T::Histogram, {}, 1},
      {"hyla_e2e_request_latency_seconds", T::Histogram, {}, 1},
      {"hyla_request_queue_time_seconds", T::Histogram, {}, 1},
      {"hyla_request_prompt_tokens", T::Histogram, {}, 1},
      {"hyla_request_generated_tokens", T::Histogram, {}, 1},
      {"hyla_step_duration_seconds", T::Histogram, {"phase"}, 3},
      {"hyla_step_backend_seconds", T::Histogram, {"phase"}, 3},
      {"hyla_step_host_seconds", T::Histogram, {"part"}, 2},
      {"hyla_batch_size", T::Histogram, {}, 1},
      {"hyla_prompt_tokens_total", T::Counter, {}, 1},
      {"hyla_generated_tokens_total", T::Counter, {}, 1},
      {"hyla_session_reused_tokens_total", T::Counter, {}, 1},
      {"hyla_rejections_total", T::Counter, {"reason"}, 7},
      {"hyla_cancellations_total", T::Counter, {"cause"}, 4},
      {"hyla_session_evictions_total", T::Counter, {"reason"}, 3},
      {"hyla_sessions_created_total", T::Counter, {}, 1},
      {"hyla_sessions_released_total", T::Counter, {}, 1},
      {"hyla_natsl_chunks_routed_total", T::Counter, {"op"}, 2},
      {"hyla_requests_running", T::Gauge, {}, 1},
      {"hyla_requests_waiting", T::Gauge, {}, 1},
      {"hyla_sessions_resident", T::Gauge, {}, 1},
      {"hyla_state_memory_used_bytes", T::Gauge, {"pool"}, 2},
      {"hyla_state_memory_capacity_bytes", T::Gauge, {"pool"}, 2},
      {"hyla_state_memory_utilization_ratio", T::Gauge, {}, 1},
      {"hyla_softmax_equivalent_bytes", T::Gauge, {}, 1},
      {"hyla_session_state_bytes", T::Histogram, {"context_bucket"}, 7},
      {"hyla_session_softmax_equivalent_bytes", T::Histogram, {"context_bucket"}, 7},
  };
  for (const Expected& e : expected) {
    const prometheus::MetricFamily* f = FindFamily(fams, e.name);
    ASSERT_NE(f, nullptr) << e.name;
    EXPECT_EQ(f->type, e.type) << e.name;
    EXPECT_EQ(f->metric.size(), e.series) << e.name;
    for (const auto& metric : f->metric) {
      std::set<std::string> names;
      for (const auto& l : metric.label) names.insert(l.name);
      EXPECT_EQ(names, e.labels) << e.name;
    }
  }
  EXPECT_EQ(fams.size(), sizeof(expected) / sizeof(expected[0]));
  for (const auto& f : fams) EXPECT_EQ(f.name.rfind("hyla_", 0), 0u) << f.name;
}

TEST(MetricsTest, LabelValuesAreTheContractsAndBounded) {
  auto m = Make();
  const auto fams = m->Collect();
  auto values = [&](const char* family, const char* label) {
    std::set<std::string> v;
    for (const auto& metric : FindFamily(fams, family)->metric) {
      for (const auto& l : metric.label) {
        if (l.name == label) v.insert(l.value);
      }
    }
    return v;
  };
  EXPECT_EQ(values("hyla_rejections_total", "reason"),
            (std::set<std::string>{"queue_full", "memory", "draining", "invalid", "too_long",
                                   "quota", "unauthenticated"}));
  EXPECT_EQ(values("hyla_cancellations_total", "cause"),
            (std::set<std::string>{"client", "deadline", "slow_consumer", "shutdown"}));
  EXPECT_EQ(values("hyla_session_evictions_total", "reason"),
            (std::set<std::string>{"ttl", "lru", "capacity"}));
  EXPECT_EQ(values("hyla_step_duration_seconds", "phase"),
            (std::set<std::string>{"prefill", "decode", "mixed"}));
  EXPECT_EQ(values("hyla_state_memory_used_bytes", "pool"),
            (std::set<std::string>{"slots", "kv_blocks"}));
  EXPECT_EQ(values("hyla_natsl_chunks_routed_total", "op"),
            (std::set<std::string>{"softmax", "gdn"}));
  EXPECT_EQ(values("hyla_session_state_bytes", "context_bucket"),
            (std::set<std::string>{"le_1k", "le_4k", "le_16k", "le_32k", "le_64k", "le_128k",
                                   "gt_128k"}));
  EXPECT_EQ(values("hyla_requests_total", "method"),
            (std::set<std::string>{"Generate", "CreateSession", "GetSession", "ForkSession",
                                   "DeleteSession", "ListSessions", "Tokenize", "Detokenize",
                                   "GetModelInfo"}));
}

TEST(MetricsTest, SloThresholdsAreBucketBoundaries) {
  auto m = Make();
  const auto fams = m->Collect();
  auto bounds = [&](const char* family) {
    std::set<double> b;
    for (const auto& bucket : FindFamily(fams, family)->metric[0].histogram.bucket) {
      b.insert(bucket.upper_bound);
    }
    return b;
  };
  const auto ttft = bounds("hyla_time_to_first_token_seconds");
  EXPECT_EQ(ttft.count(0.5), 1u);
  EXPECT_EQ(ttft.count(1.0), 1u);
  EXPECT_EQ(bounds("hyla_inter_token_latency_seconds").count(0.1), 1u);
  // Tokens per request: 1-2-5 steps up to the maximum context (2048) and +Inf.
  const auto tokens = bounds("hyla_request_generated_tokens");
  EXPECT_EQ(tokens.count(1), 1u);
  EXPECT_EQ(tokens.count(1000), 1u);
  EXPECT_EQ(tokens.count(2000), 1u);
  EXPECT_EQ(tokens.count(5000), 0u);
}

TEST(MetricsTest, EdgeAndObserverEventsAreCounted) {
  auto m = Make();
  m->OnRpcFinished(Method::kGenerate, grpc::StatusCode::OK, absl::Milliseconds(30));
  m->OnRpcFinished(Method::kGenerate, grpc::StatusCode::OK, absl::Milliseconds(40));
  m->OnRpcFinished(Method::kTokenize, grpc::StatusCode::INVALID_ARGUMENT, absl::Microseconds(50));
  m->OnServiceReject(ServiceReject::kInvalid);
  m->OnServiceReject(ServiceReject::kUnauthenticated);
  m->OnRejected(RejectReason::kQueueFull);
  m->OnRejected(RejectReason::kMemory);
  m->OnRejected(RejectReason::kMemory);
  m->OnCancelled(CancelCause::kDeadline);
  m->OnGenerateFinished(12, 34, absl::Seconds(2));
  m->OnFirstToken(absl::Milliseconds(300));
  m->OnInterToken(absl::Milliseconds(20));
  m->OnAdmitted(absl::Milliseconds(5));
  StepObservation step;
  step.phase = StepPhase::kMixed;
  step.batch_size = 3;
  step.duration = absl::Milliseconds(7);
  step.backend = absl::Milliseconds(6);
  step.host_before = absl::Microseconds(30);
  step.host_after = absl::Microseconds(120);
  m->OnStep(step);
  RequestObservation req;
  req.usage.state.slot_bytes = 100000;
  req.usage.state.kv_bytes = 50000;
  req.usage.state.softmax_equivalent_bytes = 900000;
  req.usage.state.context_tokens = 3000;
  m->OnRequestFinished(req);
  m->OnSessionEvicted(EvictReason::kTtl);

  const auto fams = m->Collect();
  auto counter = [&](const char* family, const std::map<std::string, std::string>& labels) {
    const auto* metric = FindMetric(*FindFamily(fams, family), labels);
    return metric == nullptr ? -1.0 : metric->counter.value;
  };
  auto count = [&](const char* family, const std::map<std::string, std::string>& labels) {
    const auto* metric = FindMetric(*FindFamily(fams, family), labels);
    return metric == nullptr ? -1.0 : static_cast<double>(metric->histogram.sample_count);
  };
  EXPECT_EQ(counter("hyla_requests_total", {{"method", "Generate"}, {"code", "OK"}}), 2);
  EXPECT_EQ(counter("hyla_requests_total", {{"method", "Tokenize"}, {"code", "INVALID_ARGUMENT"}}),
            1);
  EXPECT_EQ(counter("hyla_requests_total", {{"method", "Generate"}, {"code", "UNAVAILABLE"}}), 0);
  EXPECT_EQ(count("hyla_request_duration_seconds", {{"method", "Generate"}}), 2);
  EXPECT_EQ(counter("hyla_rejections_total", {{"reason", "invalid"}}), 1);
  EXPECT_EQ(counter("hyla_rejections_total", {{"reason", "unauthenticated"}}), 1);
  EXPECT_EQ(counter("hyla_rejections_total", {{"reason", "queue_full"}}), 1);
  EXPECT_EQ(counter("hyla_rejections_total", {{"reason", "memory"}}), 2);
  EXPECT_EQ(counter("hyla_cancellations_total", {{"cause", "deadline"}}), 1);
  EXPECT_EQ(counter("hyla_session_evictions_total", {{"reason", "ttl"}}), 1);
  EXPECT_EQ(count("hyla_request_generated_tokens", {}), 1);
  EXPECT_EQ(
      FindMetric(*FindFamily(fams, "hyla_request_generated_tokens"), {})->histogram.sample_sum, 34);
  EXPECT_EQ(FindMetric(*FindFamily(fams, "hyla_request_prompt_tokens"), {})->histogram.sample_sum,
            12);
  EXPECT_EQ(count("hyla_e2e_request_latency_seconds", {}), 1);
  EXPECT_EQ(count("hyla_time_to_first_token_seconds", {}), 1);
  EXPECT_EQ(count("hyla_inter_token_latency_seconds", {}), 1);
  EXPECT_EQ(count("hyla_request_queue_time_seconds", {}), 1);
  EXPECT_EQ(count("hyla_step_duration_seconds", {{"phase", "mixed"}}), 1);
  EXPECT_EQ(count("hyla_step_duration_seconds", {{"phase", "decode"}}), 0);
  EXPECT_EQ(count("hyla_step_backend_seconds", {{"phase", "mixed"}}), 1);
  EXPECT_DOUBLE_EQ(FindMetric(*FindFamily(fams, "hyla_step_backend_seconds"), {{"phase", "mixed"}})
                       ->histogram.sample_sum,
                   0.006);
  EXPECT_EQ(count("hyla_step_backend_seconds", {{"phase", "decode"}}), 0);
  EXPECT_DOUBLE_EQ(FindMetric(*FindFamily(fams, "hyla_step_host_seconds"), {{"part", "schedule"}})
                       ->histogram.sample_sum,
                   0.00003);
  EXPECT_DOUBLE_EQ(FindMetric(*FindFamily(fams, "hyla_step_host_seconds"), {{"part", "tokens"}})
                       ->histogram.sample_sum,
                   0.00012);
  EXPECT_EQ(count("hyla_batch_size", {}), 1);
  EXPECT_EQ(count("hyla_session_state_bytes", {{"context_bucket", "le_4k"}}), 1);
  EXPECT_EQ(FindMetric(*FindFamily(fams, "hyla_session_state_bytes"), {{"context_bucket", "le_4k"}})
                ->histogram.sample_sum,
            150000);
  EXPECT_EQ(FindMetric(*FindFamily(fams, "hyla_session_softmax_equivalent_bytes"),
                       {{"context_bucket", "le_4k"}})
                ->histogram.sample_sum,
            900000);
  EXPECT_EQ(count("hyla_session_state_bytes", {{"context_bucket", "le_1k"}}), 0);
}

TEST(MetricsTest, StatsAreReadAtScrapeTime) {
  auto m = Make();
  EngineStats s;
  s.running = 3;
  s.waiting = 2;
  s.sessions = 4;
  s.slot_bytes_used = 300;
  s.slot_bytes_capacity = 1000;
  s.kv_bytes_used = 100;
  s.kv_bytes_capacity = 1000;
  s.softmax_equivalent_bytes = 5000;
  s.prompt_tokens = 10;
  s.generated_tokens = 20;
  s.reused_tokens = 5;
  s.sessions_created = 6;
  s.sessions_released = 2;
  s.routed_to_softmax = 7;
  s.routed_to_gdn = 9;
  m->SetStatsSource([&s] { return s; });
  auto value = [&](const std::vector<prometheus::MetricFamily>& fams, const char* family,
                   const std::map<std::string, std::string>& labels = {}) {
    const auto* f = FindFamily(fams, family);
    const auto* metric = FindMetric(*f, labels);
    return f->type == prometheus::MetricType::Counter ? metric->counter.value : metric->gauge.value;
  };
  auto fams = m->Collect();
  EXPECT_EQ(value(fams, "hyla_requests_running"), 3);
  EXPECT_EQ(value(fams, "hyla_requests_waiting"), 2);
  EXPECT_EQ(value(fams, "hyla_sessions_resident"), 4);
  EXPECT_EQ(value(fams, "hyla_state_memory_used_bytes", {{"pool", "slots"}}), 300);
  EXPECT_EQ(value(fams, "hyla_state_memory_used_bytes", {{"pool", "kv_blocks"}}), 100);
  EXPECT_EQ(value(fams, "hyla_state_memory_capacity_bytes", {{"pool", "kv_blocks"}}), 1000);
  EXPECT_DOUBLE_EQ(value(fams, "hyla_state_memory_utilization_ratio"), 0.2);
  EXPECT_EQ(value(fams, "hyla_softmax_equivalent_bytes"), 5000);
  EXPECT_EQ(value(fams, "hyla_prompt_tokens_total"), 10);
  EXPECT_EQ(value(fams, "hyla_generated_tokens_total"), 20);
  EXPECT_EQ(value(fams, "hyla_session_reused_tokens_total"), 5);
  EXPECT_EQ(value(fams, "hyla_sessions_created_total"), 6);
  EXPECT_EQ(value(fams, "hyla_sessions_released_total"), 2);
  EXPECT_EQ(value(fams, "hyla_natsl_chunks_routed_total", {{"op", "softmax"}}), 7);
  EXPECT_EQ(value(fams, "hyla_natsl_chunks_routed_total", {{"op", "gdn"}}), 9);
  // Counters advance by the stats' deltas; a second scrape of the same stats adds nothing.
  s.generated_tokens = 25;
  s.running = 0;
  fams = m->Collect();
  EXPECT_EQ(value(fams, "hyla_generated_tokens_total"), 25);
  EXPECT_EQ(value(fams, "hyla_requests_running"), 0);
  fams = m->Collect();
  EXPECT_EQ(value(fams, "hyla_generated_tokens_total"), 25);
}

TEST(MetricsTest, ContextBuckets) {
  EXPECT_STREQ(Metrics::ContextBucket(0), "le_1k");
  EXPECT_STREQ(Metrics::ContextBucket(1024), "le_1k");
  EXPECT_STREQ(Metrics::ContextBucket(1025), "le_4k");
  EXPECT_STREQ(Metrics::ContextBucket(131072), "le_128k");
  EXPECT_STREQ(Metrics::ContextBucket(131073), "gt_128k");
}

TEST(MetricsTest, SerializesToTextFormat) {
  auto m = Make();
  const std::string text = prometheus::TextSerializer().Serialize(m->Collect());
  EXPECT_NE(text.find("# TYPE hyla_requests_total counter"), std::string::npos);
  EXPECT_NE(text.find("hyla_build_info{"), std::string::npos);
  EXPECT_NE(text.find("hyla_time_to_first_token_seconds_bucket{le=\"0.5\"} 0"), std::string::npos);
}

}  // namespace
}  // namespace hyla::service

namespace hyla::service {
namespace {

// docs/metrics.md lists every histogram's bucket bounds; they must be the exported ones.
TEST(MetricsTest, DocsListTheBucketBoundaries) {
  const std::string path = std::string(HYLA_SOURCE_DIR) + "/docs/metrics.md";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  // "| `a`, `b` | 0.1 0.2 ... |" rows of the bucket table.
  std::map<std::string, std::vector<double>> documented;
  std::map<std::string, bool> token_rule;  // rows that state the 1-2-5 rule
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("| `hyla_", 0) != 0) continue;
    const size_t bar = line.find('|', 1);
    const size_t end = line.find('|', bar + 1);
    if (bar == std::string::npos || end == std::string::npos) continue;
    const std::string names = line.substr(1, bar - 1);
    const std::string cell = line.substr(bar + 1, end - bar - 1);
    std::vector<double> bounds;
    std::istringstream words(cell);
    std::string w;
    while (words >> w) {
      char* stop = nullptr;
      const double v = std::strtod(w.c_str(), &stop);
      if (stop == w.c_str() || *stop != '\0') break;  // the prose after the numbers
      bounds.push_back(v);
    }
    if (bounds.empty()) continue;  // the metric table, not the bucket table
    for (size_t at = names.find('`'); at != std::string::npos; at = names.find('`', at + 1)) {
      const size_t close = names.find('`', at + 1);
      const std::string name = names.substr(at + 1, close - at - 1);
      documented[name] = bounds;
      token_rule[name] = cell.find("1-2-5 steps") != std::string::npos;
      at = close;
    }
  }
  ASSERT_FALSE(documented.empty()) << "no bucket table in " << path;

  auto m = Make();  // maximum context 2048
  int histograms = 0;
  for (const prometheus::MetricFamily& f : m->Collect()) {
    if (f.type != prometheus::MetricType::Histogram) continue;
    ++histograms;
    ASSERT_FALSE(f.metric.empty()) << f.name;
    std::vector<double> exported;
    for (const auto& b : f.metric.front().histogram.bucket) {
      if (!std::isinf(b.upper_bound)) exported.push_back(b.upper_bound);
    }
    auto it = documented.find(f.name);
    ASSERT_NE(it, documented.end()) << f.name << " has no row in the bucket table";
    std::vector<double> want = it->second;
    if (token_rule[f.name]) {  // documented as "1 2 5 ... 10000 ... while <= max context"
      want.clear();
      for (double v : it->second) {
        if (v <= 2048) want.push_back(v);
      }
    }
    EXPECT_EQ(exported, want) << f.name;
  }
  EXPECT_EQ(histograms, 13);  // 11 + hyla_step_backend_seconds, hyla_step_host_seconds
  EXPECT_EQ(documented.size(), 13u);
}

}  // namespace
}  // namespace hyla::service
