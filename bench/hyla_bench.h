// hyla-bench: a gRPC load generator for hyla-server that reports the metrics of vLLM's
// `bench serve` (TTFT, ITL, TPOT, end-to-end latency, throughput, goodput under SLOs).
//
// Load: closed loop (`concurrency` requests in flight until `num_requests` have been sent) or open
// loop (Poisson arrivals at `request_rate` requests/s, seeded). Prompts are random token ids drawn
// from a seed; every request sets ignore_eos and max_new_tokens = its output length, so the
// lengths are exact. The client uses the gRPC callback API: its reactors run on gRPC's own bounded
// thread pool, and one scheduling thread (the caller) starts requests.
//
// Thread-safety: RunBenchmark is reentrant (it owns its channel); the pure functions are too.
#ifndef HYLA_BENCH_HYLA_BENCH_H_
#define HYLA_BENCH_HYLA_BENCH_H_

#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hyla::bench {

// A length: fixed (lo == hi) or uniform on [lo, hi].
struct LengthDist {
  int lo = 0;
  int hi = 0;
};
// "N" or "uniform:A:B" (1 <= A <= B).
absl::StatusOr<LengthDist> ParseLengthDist(const std::string& text);

struct BenchOptions {
  std::string server = "localhost:50051";
  int concurrency = 1;      // closed loop: requests in flight
  int num_requests = 16;    // requests sent in all
  double request_rate = 0;  // > 0: open loop (Poisson arrivals, requests/s)
  LengthDist input_len{32, 32};
  LengthDist output_len{32, 32};
  uint64_t seed = 0;       // prompts, lengths and arrival times
  double slo_ttft_ms = 0;  // 0 = no SLO
  double slo_tpot_ms = 0;  // 0 = no SLO
  double timeout_s = 600;  // per request deadline
  std::string json_path;   // write the report as JSON here when not empty
};

// What one request saw. Times are seconds since the benchmark start.
struct RequestRecord {
  int input_len = 0;
  int requested_output_len = 0;
  bool ok = false;
  std::string status;  // gRPC status code name ("OK", "RESOURCE_EXHAUSTED", ...)
  double sent = 0;
  double ttft = 0;                  // first token arrival - sent
  double e2e = 0;                   // end - sent
  std::vector<double> token_times;  // arrival of every output token (absolute)
};

// mean, p50, p90, p99 (linear interpolation between order statistics, as numpy.percentile).
struct Summary {
  int count = 0;
  double mean = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
};
Summary Summarize(std::vector<double> values);
double Percentile(const std::vector<double>& sorted, double p);  // p in [0, 100]

struct BenchReport {
  std::string model;  // from GetModelInfo: family, parameters, device
  int requested = 0;
  int completed = 0;
  std::map<std::string, int> failed;  // by status code name
  double duration_s = 0;              // first send -> last completion
  int64_t total_input_tokens = 0;
  int64_t total_output_tokens = 0;
  double request_throughput = 0;      // completed / duration
  double output_throughput = 0;       // output tokens / duration
  double total_token_throughput = 0;  // (input + output tokens of completed) / duration
  double goodput = 0;                 // requests meeting all SLOs / duration
  Summary ttft_ms, tpot_ms, itl_ms, e2e_ms;
  std::vector<RequestRecord> requests;
};

// Computes the report from the records (pure; used by RunBenchmark and by tests).
BenchReport ComputeReport(const BenchOptions& options, std::vector<RequestRecord> records);

// Runs the benchmark against options.server.
absl::StatusOr<BenchReport> RunBenchmark(const BenchOptions& options);

void PrintTable(const BenchOptions& options, const BenchReport& report, std::ostream& out);
std::string ReportJson(const BenchOptions& options, const BenchReport& report);

// The command line: flags described by BenchUsage(). Exit 0 success, 1 failure, 2 usage.
int RunBenchMain(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
std::string BenchUsage();

}  // namespace hyla::bench

#endif  // HYLA_BENCH_HYLA_BENCH_H_
