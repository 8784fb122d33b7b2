#include "bench/hyla_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpcpp/grpcpp.h"
#include "hyla/v1/hyla.grpc.pb.h"
#include "service/status_mapping.h"

namespace hyla::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Shared state of one run: the records, the number of calls still running, and (closed loop) the
// next request index to start.
struct RunState {
  hyla::v1::Hyla::Stub* stub = nullptr;
  const BenchOptions* options = nullptr;
  Clock::time_point start;
  std::vector<hyla::v1::GenerateRequest> requests;
  std::vector<RequestRecord> records;  // one per request; each written only by its own call
  std::mutex mu;
  std::condition_variable cv;
  int next = 0;         // guarded by mu (closed loop)
  int outstanding = 0;  // guarded by mu: calls started and not done
  bool closed_loop = true;

  double Now() const { return std::chrono::duration<double>(Clock::now() - start).count(); }
  void Launch(int index);
};

// One streaming Generate call. Deletes itself in OnDone; in closed loop it starts the next request.
class GenerateCall : public grpc::ClientReadReactor<hyla::v1::GenerateResponse> {
 public:
  GenerateCall(RunState* run, int index) : run_(run), index_(index) {
    context_.set_deadline(
        std::chrono::system_clock::now() +
        std::chrono::milliseconds(static_cast<int64_t>(run->options->timeout_s * 1000)));
  }

  void Start() {
    RequestRecord& r = run_->records[index_];
    r.sent = run_->Now();
    run_->stub->async()->Generate(&context_, &run_->requests[index_], this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    const double t = run_->Now();
    RequestRecord& r = run_->records[index_];
    for (int i = 0; i < response_.token_ids_size(); ++i) r.token_times.push_back(t);
    response_.Clear();
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    RequestRecord& r = run_->records[index_];
    const double end = run_->Now();
    r.ok = status.ok();
    r.status = std::string(service::GrpcCodeName(status.error_code()));
    r.e2e = end - r.sent;
    r.ttft = r.token_times.empty() ? r.e2e : r.token_times.front() - r.sent;
    RunState* run = run_;
    delete this;
    int launch = -1;
    {
      std::lock_guard<std::mutex> lock(run->mu);
      if (run->closed_loop && run->next < static_cast<int>(run->requests.size())) {
        launch = run->next++;
        ++run->outstanding;
      }
      --run->outstanding;
      // Notified under the lock: once it is released the waiter may destroy `run`.
      run->cv.notify_all();
    }
    if (launch >= 0) run->Launch(launch);
  }

 private:
  RunState* run_;
  int index_;
  grpc::ClientContext context_;
  hyla::v1::GenerateResponse response_;
};

void RunState::Launch(int index) { (new GenerateCall(this, index))->Start(); }

int Draw(const LengthDist& d, std::mt19937_64& rng) {
  if (d.lo == d.hi) return d.lo;
  return std::uniform_int_distribution<int>(d.lo, d.hi)(rng);
}

std::string Num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

std::string SummaryJson(const Summary& s) {
  return absl::StrCat("{\"count\": ", s.count, ", \"mean\": ", Num(s.mean),
                      ", \"p50\": ", Num(s.p50), ", \"p90\": ", Num(s.p90),
                      ", \"p99\": ", Num(s.p99), "}");
}

}  // namespace

absl::StatusOr<LengthDist> ParseLengthDist(const std::string& text) {
  LengthDist d;
  if (absl::StartsWith(text, "uniform:")) {
    std::vector<std::string> parts = absl::StrSplit(text.substr(8), ':');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &d.lo) ||
        !absl::SimpleAtoi(parts[1], &d.hi)) {
      return absl::InvalidArgumentError(absl::StrCat("bad length distribution: ", text));
    }
  } else {
    if (!absl::SimpleAtoi(text, &d.lo)) {
      return absl::InvalidArgumentError(absl::StrCat("bad length: ", text));
    }
    d.hi = d.lo;
  }
  if (d.lo < 1 || d.hi < d.lo) {
    return absl::InvalidArgumentError(absl::StrCat("length out of range (1 <= A <= B): ", text));
  }
  return d;
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double pos = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

Summary Summarize(std::vector<double> values) {
  Summary s;
  s.count = static_cast<int>(values.size());
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  s.p50 = Percentile(values, 50);
  s.p90 = Percentile(values, 90);
  s.p99 = Percentile(values, 99);
  return s;
}

BenchReport ComputeReport(const BenchOptions& options, std::vector<RequestRecord> records) {
  BenchReport rep;
  rep.requested = static_cast<int>(records.size());
  std::vector<double> ttft, tpot, itl, e2e;
  double first = 0, last = 0;
  bool any = false;
  int good = 0;
  for (const RequestRecord& r : records) {
    if (!any || r.sent < first) first = r.sent;
    if (!any || r.sent + r.e2e > last) last = r.sent + r.e2e;
    any = true;
    if (!r.ok) {
      ++rep.failed[r.status];
      continue;
    }
    ++rep.completed;
    const int out = static_cast<int>(r.token_times.size());
    rep.total_input_tokens += r.input_len;
    rep.total_output_tokens += out;
    ttft.push_back(r.ttft * 1e3);
    e2e.push_back(r.e2e * 1e3);
    double req_tpot = 0;
    if (out > 1) {
      req_tpot = (r.e2e - r.ttft) / (out - 1) * 1e3;
      tpot.push_back(req_tpot);
    }
    for (int i = 1; i < out; ++i) itl.push_back((r.token_times[i] - r.token_times[i - 1]) * 1e3);
    const bool ttft_ok = options.slo_ttft_ms <= 0 || r.ttft * 1e3 <= options.slo_ttft_ms;
    const bool tpot_ok = options.slo_tpot_ms <= 0 || req_tpot <= options.slo_tpot_ms;
    if (ttft_ok && tpot_ok) ++good;
  }
  rep.duration_s = any ? last - first : 0;
  if (rep.duration_s > 0) {
    rep.request_throughput = rep.completed / rep.duration_s;
    rep.output_throughput = static_cast<double>(rep.total_output_tokens) / rep.duration_s;
    rep.total_token_throughput =
        static_cast<double>(rep.total_input_tokens + rep.total_output_tokens) / rep.duration_s;
    rep.goodput = good / rep.duration_s;
  }
  rep.ttft_ms = Summarize(std::move(ttft));
  rep.tpot_ms = Summarize(std::move(tpot));
  rep.itl_ms = Summarize(std::move(itl));
  rep.e2e_ms = Summarize(std::move(e2e));
  rep.requests = std::move(records);
  return rep;
}

absl::StatusOr<BenchReport> RunBenchmark(const BenchOptions& options) {
  if (options.num_requests < 1) return absl::InvalidArgumentError("--num-requests must be >= 1");
  if (options.concurrency < 1) return absl::InvalidArgumentError("--concurrency must be >= 1");
  if (options.request_rate < 0) return absl::InvalidArgumentError("--request-rate must be >= 0");
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(options.server, grpc::InsecureChannelCredentials());
  std::unique_ptr<hyla::v1::Hyla::Stub> stub = hyla::v1::Hyla::NewStub(channel);

  hyla::v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::Status st = stub->GetModelInfo(&ctx, hyla::v1::GetModelInfoRequest(), &info);
    if (!st.ok()) {
      return absl::UnavailableError(absl::StrCat("GetModelInfo on ", options.server, ": ",
                                                 service::GrpcCodeName(st.error_code()), " ",
                                                 st.error_message()));
    }
  }
  if (info.vocab_size() < 1) return absl::FailedPreconditionError("the model has no vocabulary");

  RunState run;
  run.stub = stub.get();
  run.options = &options;
  run.closed_loop = options.request_rate <= 0;
  std::mt19937_64 rng(options.seed);
  std::uniform_int_distribution<int> token(0, info.vocab_size() - 1);
  run.records.resize(options.num_requests);
  for (int i = 0; i < options.num_requests; ++i) {
    hyla::v1::GenerateRequest req;
    const int in = Draw(options.input_len, rng);
    const int out = Draw(options.output_len, rng);
    for (int k = 0; k < in; ++k) req.mutable_token_ids()->add_ids(token(rng));
    req.mutable_stopping()->set_max_new_tokens(out);
    req.mutable_stopping()->set_ignore_eos(true);
    req.mutable_sampling()->set_seed(options.seed + static_cast<uint64_t>(i));
    run.requests.push_back(std::move(req));
    run.records[i].input_len = in;
    run.records[i].requested_output_len = out;
  }

  run.start = Clock::now();
  if (run.closed_loop) {
    const int first = std::min(options.concurrency, options.num_requests);
    {
      std::lock_guard<std::mutex> lock(run.mu);
      run.next = first;
      run.outstanding = first;
    }
    for (int i = 0; i < first; ++i) run.Launch(i);
  } else {
    std::exponential_distribution<double> gap(options.request_rate);
    double at = 0;
    for (int i = 0; i < options.num_requests; ++i) {
      if (i > 0) at += gap(rng);
      std::this_thread::sleep_until(run.start + std::chrono::duration_cast<Clock::duration>(
                                                    std::chrono::duration<double>(at)));
      {
        std::lock_guard<std::mutex> lock(run.mu);
        ++run.outstanding;
      }
      run.Launch(i);
    }
  }
  {
    std::unique_lock<std::mutex> lock(run.mu);
    run.cv.wait(lock, [&run] {
      return run.outstanding == 0 &&
             (!run.closed_loop || run.next == static_cast<int>(run.requests.size()));
    });
  }
  BenchReport report = ComputeReport(options, std::move(run.records));
  report.model = absl::StrCat(info.family(), " (", info.parameters(), " parameters, ",
                              info.layer_kinds_size(), " layers) on ", info.device());
  return report;
}

void PrintTable(const BenchOptions& options, const BenchReport& rep, std::ostream& out) {
  char line[160];
  auto row = [&](const char* name, const std::string& value) {
    std::snprintf(line, sizeof(line), "%-40s %s\n", name, value.c_str());
    out << line;
  };
  out << "============ hyla-bench result ============\n";
  row("Server:", options.server);
  row("Model:", rep.model);
  row("Mode:", options.request_rate > 0
                   ? absl::StrCat("open loop, Poisson ", options.request_rate, " req/s")
                   : absl::StrCat("closed loop, concurrency ", options.concurrency));
  row("Requests (completed/requested):", absl::StrCat(rep.completed, "/", rep.requested));
  for (const auto& [code, n] : rep.failed) row(("Failed " + code + ":").c_str(), absl::StrCat(n));
  row("Benchmark duration (s):", Num(rep.duration_s));
  row("Total input tokens:", absl::StrCat(rep.total_input_tokens));
  row("Total generated tokens:", absl::StrCat(rep.total_output_tokens));
  row("Request throughput (req/s):", Num(rep.request_throughput));
  row("Output token throughput (tok/s):", Num(rep.output_throughput));
  row("Total token throughput (tok/s):", Num(rep.total_token_throughput));
  if (options.slo_ttft_ms > 0 || options.slo_tpot_ms > 0) {
    row("Request goodput (req/s):", Num(rep.goodput));
  }
  std::snprintf(line, sizeof(line), "%-14s %10s %10s %10s %10s\n", "metric (ms)", "mean", "p50",
                "p90", "p99");
  out << line;
  auto srow = [&](const char* name, const Summary& s) {
    std::snprintf(line, sizeof(line), "%-14s %10.3f %10.3f %10.3f %10.3f\n", name, s.mean, s.p50,
                  s.p90, s.p99);
    out << line;
  };
  srow("TTFT", rep.ttft_ms);
  srow("TPOT", rep.tpot_ms);
  srow("ITL", rep.itl_ms);
  srow("E2E latency", rep.e2e_ms);
}

std::string ReportJson(const BenchOptions& options, const BenchReport& rep) {
  std::ostringstream o;
  o << "{\n  \"server\": \"" << options.server << "\",\n";
  o << "  \"model\": \"" << rep.model << "\",\n";
  o << "  \"mode\": \"" << (options.request_rate > 0 ? "open" : "closed") << "\",\n";
  o << "  \"concurrency\": " << options.concurrency << ",\n";
  o << "  \"request_rate\": " << Num(options.request_rate) << ",\n";
  o << "  \"seed\": " << options.seed << ",\n";
  o << "  \"requested\": " << rep.requested << ",\n";
  o << "  \"completed\": " << rep.completed << ",\n";
  o << "  \"failed\": {";
  bool first = true;
  for (const auto& [code, n] : rep.failed) {
    o << (first ? "" : ", ") << "\"" << code << "\": " << n;
    first = false;
  }
  o << "},\n";
  o << "  \"duration_s\": " << Num(rep.duration_s) << ",\n";
  o << "  \"total_input_tokens\": " << rep.total_input_tokens << ",\n";
  o << "  \"total_output_tokens\": " << rep.total_output_tokens << ",\n";
  o << "  \"request_throughput\": " << Num(rep.request_throughput) << ",\n";
  o << "  \"output_throughput\": " << Num(rep.output_throughput) << ",\n";
  o << "  \"total_token_throughput\": " << Num(rep.total_token_throughput) << ",\n";
  o << "  \"slo_ttft_ms\": " << Num(options.slo_ttft_ms) << ",\n";
  o << "  \"slo_tpot_ms\": " << Num(options.slo_tpot_ms) << ",\n";
  o << "  \"goodput\": " << Num(rep.goodput) << ",\n";
  o << "  \"ttft_ms\": " << SummaryJson(rep.ttft_ms) << ",\n";
  o << "  \"tpot_ms\": " << SummaryJson(rep.tpot_ms) << ",\n";
  o << "  \"itl_ms\": " << SummaryJson(rep.itl_ms) << ",\n";
  o << "  \"e2e_ms\": " << SummaryJson(rep.e2e_ms) << ",\n";
  o << "  \"requests\": [";
  for (size_t i = 0; i < rep.requests.size(); ++i) {
    const RequestRecord& r = rep.requests[i];
    o << (i ? ",\n    " : "\n    ") << "{\"status\": \"" << r.status
      << "\", \"input_len\": " << r.input_len
      << ", \"requested_output_len\": " << r.requested_output_len
      << ", \"output_len\": " << r.token_times.size() << ", \"sent_s\": " << Num(r.sent)
      << ", \"ttft_ms\": " << Num(r.ttft * 1e3) << ", \"e2e_ms\": " << Num(r.e2e * 1e3) << "}";
  }
  o << "\n  ]\n}\n";
  return o.str();
}

std::string BenchUsage() {
  return "usage: hyla-bench [--server HOST:PORT] [--concurrency N] [--num-requests M]\n"
         "                  [--request-rate R] [--input-len N | --input-len-dist uniform:A:B]\n"
         "                  [--output-len N | --output-len-dist uniform:A:B] [--seed S]\n"
         "                  [--slo-ttft-ms MS] [--slo-tpot-ms MS] [--timeout-s S] [--json FILE]\n"
         "  --request-rate R > 0 selects the open loop (Poisson arrivals); otherwise the closed\n"
         "  loop keeps --concurrency requests in flight.\n";
}

int RunBenchMain(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  BenchOptions o;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    std::string value;
    const size_t eq = flag.find('=');
    if (eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    } else if (flag == "--help" || flag == "-h") {
      out << BenchUsage();
      return 0;
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      err << "missing value for " << flag << "\n" << BenchUsage();
      return 2;
    }
    bool ok = true;
    if (flag == "--server") {
      o.server = value;
    } else if (flag == "--concurrency") {
      ok = absl::SimpleAtoi(value, &o.concurrency);
    } else if (flag == "--num-requests") {
      ok = absl::SimpleAtoi(value, &o.num_requests);
    } else if (flag == "--request-rate") {
      ok = absl::SimpleAtod(value, &o.request_rate);
    } else if (flag == "--input-len" || flag == "--input-len-dist" || flag == "--output-len" ||
               flag == "--output-len-dist") {
      absl::StatusOr<LengthDist> d = ParseLengthDist(value);
      if (!d.ok()) {
        err << flag << ": " << d.status().message() << "\n";
        return 2;
      }
      (absl::StartsWith(flag, "--input") ? o.input_len : o.output_len) = *d;
    } else if (flag == "--seed") {
      ok = absl::SimpleAtoi(value, &o.seed);
    } else if (flag == "--slo-ttft-ms") {
      ok = absl::SimpleAtod(value, &o.slo_ttft_ms);
    } else if (flag == "--slo-tpot-ms") {
      ok = absl::SimpleAtod(value, &o.slo_tpot_ms);
    } else if (flag == "--timeout-s") {
      ok = absl::SimpleAtod(value, &o.timeout_s);
    } else if (flag == "--json") {
      o.json_path = value;
    } else {
      err << "unknown flag " << flag << "\n" << BenchUsage();
      return 2;
    }
    if (!ok) {
      err << "bad value for " << flag << ": " << value << "\n";
      return 2;
    }
  }
  absl::StatusOr<BenchReport> rep = RunBenchmark(o);
  if (!rep.ok()) {
    err << "hyla-bench: " << rep.status().ToString() << "\n";
    return rep.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  PrintTable(o, *rep, out);
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << ReportJson(o, *rep);
    if (!f.good()) {
      err << "hyla-bench: cannot write " << o.json_path << "\n";
      return 1;
    }
  }
  return rep->failed.empty() ? 0 : 1;
}

}  // namespace hyla::bench
