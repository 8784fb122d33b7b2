// hyla-serving-overhead: measures what serving adds to a decode step, without a model or a GPU.
//
// The issue-5 target "serving overhead (gRPC + scheduling) <= 10% of the decode step at batch
// 64" compares hyla-bench's ITL p50 with the backend's step p50. Here the backend is a stand-in
// whose Step takes a fixed, known time (--step-ms, slept or spun) and returns one token per
// sequence as if sampled on the device (Backend::SamplesOnDevice, StepOutput::sampled: the CUDA
// backend's serving path), while everything else is the real thing, in one process: the Engine
// and its worker (scheduler, stop checks, event streams), the Prometheus Metrics observer,
// HylaService on a gRPC server on 127.0.0.1, and hyla-bench's streaming client (RunBenchmark,
// --concurrency streams over one channel). What the client sees above the step time is the
// serving overhead.
//
// Report: the client's ITL (every gap between two tokens of a stream) against the step time
// measured inside the backend (p50 over decode steps at full batch), and a breakdown of the
// scheduler thread's cycle from StepObservation: host_before (inbox, reaping, planning,
// admission, batch assembly), backend, host_after (stop checks, detokenisation, events) and its
// emit part (handing events to the streams), and the gap between two Backend::Step calls as the
// backend saw it. The gRPC writer side (event -> protobuf -> HTTP/2 write, the client's read) is
// what remains: ITL p50 - step p50 - host gap p50.
//
// Usage: hyla-serving-overhead [--step-ms 4] [--concurrency 64] [--num-requests 128]
//          [--input-len 32] [--output-len 128] [--wait sleep|spin] [--vocab 32000]
//          [--max-pending 16] [--notify thread|inline] [--notify-threads 1]
//          [--deadlock-detection off|on] [--idle-sessions 0] [--session-tokens 1024]
//          [--json PATH]
// --notify inline and --deadlock-detection on reproduce the serving path before the fixes of
// issue 5 (stream notifications and gRPC writes on the scheduler thread; absl's lock-order
// checks on every lock), for an A/B in one binary.
// Exit 0 on success, 1 on failure, 2 on a usage error.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "bench/hyla_bench.h"
#include "grpcpp/grpcpp.h"
#include "runtime/base/check.h"
#include "runtime/base/status_macros.h"
#include "runtime/engine/backend.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/engine_stats.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"
#include "service/hyla_service.h"
#include "service/metrics.h"

namespace hyla::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

double Ms(SteadyClock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }
double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

struct Flags {
  double step_ms = 4.0;
  int concurrency = 64;
  int num_requests = 128;
  int input_len = 32;
  int output_len = 128;
  bool spin = false;
  int vocab = 32000;  // qwen3next-1b's, as served in the H100 run
  int max_pending = 16;
  std::string json_path;
  bool deadlock_detection = false;  // absl::Mutex lock-order checks (off in hyla-server)
  bool notify_inline = false;       // on_ready on the scheduler thread (the old path)
  int notify_threads = 1;           // EngineOptions::notify_threads
  int idle_sessions = 0;            // resident idle sessions during the run
  int session_tokens = 1024;        // each one's context
};

// ---------------------------------------------------------------------------------------------
// The backend: real StateStore bookkeeping (a slot per sequence, KV blocks of one attention
// stream), a fixed step time, token (last + 1) % vocab "sampled on the device".

class FixedStepBackend : public Backend {
 public:
  static std::unique_ptr<FixedStepBackend> Create(int vocab, int num_slots, int64_t num_blocks,
                                                  SteadyClock::duration step, bool spin) {
    ModelConfig c;
    c.family = Family::kGdn;
    c.model_type = "fixed-step";
    c.vocab_size = vocab;
    c.hidden_size = 8;
    c.num_layers = 2;
    c.intermediate_size = 8;
    c.eos_token_id = 2;
    c.bos_token_id = 1;
    c.max_position_embeddings = 1 << 20;
    LayerConfig gdn;
    gdn.kind = LayerKind::kGdn;
    gdn.gdn.num_heads = 1;
    gdn.gdn.num_v_heads = 1;
    gdn.gdn.head_k_dim = 4;
    gdn.gdn.head_v_dim = 4;
    LayerConfig attn;
    attn.kind = LayerKind::kAttention;
    attn.attention.num_heads = 1;
    attn.attention.num_kv_heads = 1;
    attn.attention.head_dim = 4;
    attn.attention.rotary_dim = 4;
    c.layers = {gdn, attn};
    auto layout = StateLayout::Create(c, DType::kF32);
    HYLA_CHECK(layout.ok());
    StateStoreOptions so;
    so.num_slots = num_slots;
    so.num_blocks = num_blocks;
    auto store = StateStore::Create(*layout, so);
    HYLA_CHECK(store.ok());
    return std::unique_ptr<FixedStepBackend>(
        new FixedStepBackend(std::move(c), *layout, std::move(store).value(), step, spin));
  }

  const ModelConfig& config() const override { return config_; }
  const StateLayout& layout() const override { return layout_; }
  StateStore& store() override { return *store_; }
  void ResetSlot(int32_t slot) override { last_[static_cast<size_t>(slot)] = 0; }
  void CopySlot(int32_t src, int32_t dst) override {
    last_[static_cast<size_t>(dst)] = last_[static_cast<size_t>(src)];
  }
  bool SamplesOnDevice() const override { return true; }

  absl::Status Step(absl::Span<const SequenceWork> batch, StepOutput* out) override {
    const SteadyClock::time_point t0 = SteadyClock::now();
    HYLA_RETURN_IF_ERROR(ValidateStepBatch(batch, store_->num_slots(), config_.vocab_size));
    out->logits.clear();
    out->row_offset.assign(batch.size(), 0);
    out->row_count.assign(batch.size(), 0);
    out->sampled.assign(batch.size(), BackendSample());
    out->routing = RoutingCounts();
    int64_t decode = 0;
    for (size_t b = 0; b < batch.size(); ++b) {
      const SequenceWork& w = batch[b];
      for (size_t i = 0; i < w.tokens.size(); ++i) {
        int32_t copy_from = -1;
        auto entry = store_->PrepareAppend(w.seq, 0, w.seq->num_tokens / kBlockTokens, &copy_from);
        if (!entry.ok()) return entry.status();
        ++w.seq->num_tokens;
      }
      last_[static_cast<size_t>(w.seq->slot)] = w.tokens.back();
      if (w.tokens.size() == 1) ++decode;
      if (w.logits == LogitsMode::kNone) continue;
      if (w.logits != LogitsMode::kLast || w.sampler == nullptr) {
        return absl::InternalError("fixed-step backend: only device-sampled rows are supported");
      }
      SampledToken tok;
      tok.id = (w.tokens.back() + 1) % config_.vocab_size;
      tok.logprob = -1.0f;
      w.sampler->RecordExternal(tok, /*used_uniform=*/false, {});
      out->sampled[b] = BackendSample{true, tok, {}};
    }
    const SteadyClock::time_point until = t0 + step_;
    if (spin_) {
      while (SteadyClock::now() < until) {
      }
    } else {
      std::this_thread::sleep_until(until);
    }
    const SteadyClock::time_point t1 = SteadyClock::now();
    absl::MutexLock lock(&mu_);
    StepRecord rec;
    rec.batch = static_cast<int>(batch.size());
    rec.decode_only = decode == static_cast<int64_t>(batch.size());
    rec.duration = t1 - t0;
    rec.gap = have_last_ ? t0 - last_end_ : SteadyClock::duration::zero();
    rec.has_gap = have_last_;
    records_.push_back(rec);
    have_last_ = true;
    last_end_ = t1;
    return absl::OkStatus();
  }

  struct StepRecord {
    int batch = 0;
    bool decode_only = false;
    SteadyClock::duration duration{};
    SteadyClock::duration gap{};  // since the previous Step returned
    bool has_gap = false;
  };
  std::vector<StepRecord> TakeRecords() {
    absl::MutexLock lock(&mu_);
    std::vector<StepRecord> r = std::move(records_);
    records_.clear();
    have_last_ = false;
    return r;
  }

 private:
  FixedStepBackend(ModelConfig c, StateLayout layout, std::unique_ptr<StateStore> store,
                   SteadyClock::duration step, bool spin)
      : config_(std::move(c)),
        layout_(std::move(layout)),
        store_(std::move(store)),
        step_(step),
        spin_(spin),
        last_(static_cast<size_t>(store_->num_slots()), 0) {}

  ModelConfig config_;
  StateLayout layout_;
  std::unique_ptr<StateStore> store_;
  const SteadyClock::duration step_;
  const bool spin_;
  std::vector<int32_t> last_;  // [slot] last token folded

  absl::Mutex mu_;
  std::vector<StepRecord> records_ ABSL_GUARDED_BY(mu_);
  bool have_last_ ABSL_GUARDED_BY(mu_) = false;
  SteadyClock::time_point last_end_ ABSL_GUARDED_BY(mu_);
};

// Forwards to the server's Metrics and keeps every step observation.
class RecordingObserver : public EngineObserver {
 public:
  explicit RecordingObserver(std::shared_ptr<service::Metrics> metrics)
      : metrics_(std::move(metrics)) {}
  void OnStep(const StepObservation& s) override {
    metrics_->OnStep(s);
    absl::MutexLock lock(&mu_);
    steps_.push_back(s);
  }
  void OnAdmitted(absl::Duration d) override { metrics_->OnAdmitted(d); }
  void OnFirstToken(absl::Duration d) override { metrics_->OnFirstToken(d); }
  void OnInterToken(absl::Duration d) override { metrics_->OnInterToken(d); }
  void OnRequestFinished(const RequestObservation& r) override { metrics_->OnRequestFinished(r); }
  void OnRejected(RejectReason r) override { metrics_->OnRejected(r); }
  void OnSessionEvicted(EvictReason r) override { metrics_->OnSessionEvicted(r); }
  std::vector<StepObservation> Take() {
    absl::MutexLock lock(&mu_);
    std::vector<StepObservation> s = std::move(steps_);
    steps_.clear();
    return s;
  }

 private:
  std::shared_ptr<service::Metrics> metrics_;
  absl::Mutex mu_;
  std::vector<StepObservation> steps_ ABSL_GUARDED_BY(mu_);
};

int Usage(std::ostream& err, const std::string& msg) {
  err << "hyla-serving-overhead: " << msg << "\n"
      << "usage: hyla-serving-overhead [--step-ms 4] [--concurrency 64] [--num-requests 128]\n"
         "         [--input-len 32] [--output-len 128] [--wait sleep|spin] [--vocab 32000]\n"
         "         [--max-pending 16] [--notify thread|inline] [--notify-threads 1]\n"
         "         [--deadlock-detection off|on] [--idle-sessions 0] [--session-tokens 1024]\n"
         "         [--json PATH]\n";
  return 2;
}

int ParseFlags(const std::vector<std::string>& args, Flags* f, std::ostream& err) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") return Usage(err, "measures the serving overhead");
    if (i + 1 >= args.size()) return Usage(err, a + ": missing value");
    const std::string& v = args[++i];
    bool ok = true;
    if (a == "--step-ms") {
      ok = absl::SimpleAtod(v, &f->step_ms) && f->step_ms >= 0;
    } else if (a == "--concurrency") {
      ok = absl::SimpleAtoi(v, &f->concurrency) && f->concurrency >= 1;
    } else if (a == "--num-requests") {
      ok = absl::SimpleAtoi(v, &f->num_requests) && f->num_requests >= 1;
    } else if (a == "--input-len") {
      ok = absl::SimpleAtoi(v, &f->input_len) && f->input_len >= 1;
    } else if (a == "--output-len") {
      ok = absl::SimpleAtoi(v, &f->output_len) && f->output_len >= 2;
    } else if (a == "--wait") {
      ok = v == "sleep" || v == "spin";
      f->spin = v == "spin";
    } else if (a == "--vocab") {
      ok = absl::SimpleAtoi(v, &f->vocab) && f->vocab >= 16;
    } else if (a == "--max-pending") {
      ok = absl::SimpleAtoi(v, &f->max_pending) && f->max_pending >= 1;
    } else if (a == "--deadlock-detection") {
      ok = v == "on" || v == "off";
      f->deadlock_detection = v == "on";
    } else if (a == "--idle-sessions") {
      ok = absl::SimpleAtoi(v, &f->idle_sessions) && f->idle_sessions >= 0 &&
           f->idle_sessions <= 100000;
    } else if (a == "--session-tokens") {
      ok = absl::SimpleAtoi(v, &f->session_tokens) && f->session_tokens >= 1;
    } else if (a == "--notify-threads") {
      ok = absl::SimpleAtoi(v, &f->notify_threads) && f->notify_threads >= 1 &&
           f->notify_threads <= 64;
    } else if (a == "--notify") {
      ok = v == "thread" || v == "inline";
      f->notify_inline = v == "inline";
    } else if (a == "--json") {
      f->json_path = v;
    } else {
      return Usage(err, "unknown flag " + a);
    }
    if (!ok) return Usage(err, a + ": bad value \"" + v + "\"");
  }
  return 0;
}

struct Stat {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;
};
Stat StatOf(std::vector<double> v) {
  Stat s;
  if (v.empty()) return s;
  const Summary x = Summarize(std::move(v));
  s.mean = x.mean;
  s.p50 = x.p50;
  s.p90 = x.p90;
  s.p99 = x.p99;
  return s;
}

int Run(const Flags& f, std::ostream& out, std::ostream& err) {
  const int slots = f.concurrency + 8 + f.idle_sessions;
  const int64_t max_context =
      std::max<int64_t>(f.input_len + f.output_len, f.session_tokens + 1) + 64;
  const int64_t blocks = static_cast<int64_t>(slots) * (max_context / kBlockTokens + 2);
  const auto step = std::chrono::duration_cast<SteadyClock::duration>(
      std::chrono::duration<double, std::milli>(f.step_ms));

  service::BuildInfo build;
  build.version = "bench";
  build.model_type = "fixed-step";
  build.family = "gdn";
  build.device = "fake";
  auto metrics = service::Metrics::Create(build, max_context);
  if (!metrics.ok()) {
    err << "hyla-serving-overhead: " << metrics.status() << "\n";
    return 1;
  }
  auto observer = std::make_shared<RecordingObserver>(*metrics);

  FixedStepBackend* backend = nullptr;
  EngineOptions eo;
  eo.num_workers = 1;
  eo.max_queued = std::max(64, f.num_requests);
  eo.max_batch = f.concurrency;
  eo.prefill_chunk_tokens = 1024;
  eo.token_budget = f.concurrency - 1 + 1024 + 1024;
  eo.max_context = max_context;
  eo.max_pending_events = f.max_pending;
  eo.session_ttl = absl::Minutes(30);  // hyla-server's default
  eo.max_sessions = std::max(16, f.idle_sessions);
  eo.observer = observer;
  eo.notify_on_worker_thread = f.notify_inline;
  eo.notify_threads = f.notify_threads;
  auto engine = Engine::Create(eo, [&](int) -> absl::StatusOr<std::unique_ptr<Backend>> {
    auto b = FixedStepBackend::Create(f.vocab, slots, blocks, step, f.spin);
    backend = b.get();
    return std::unique_ptr<Backend>(std::move(b));
  });
  if (!engine.ok()) {
    err << "hyla-serving-overhead: " << engine.status() << "\n";
    return 1;
  }
  Engine* engine_ptr = engine->get();
  (*metrics)->SetStatsSource([engine_ptr] { return engine_ptr->Stats(); });

  service::HylaServiceOptions so;
  so.device = "fake";
  service::HylaService svc(engine_ptr, *metrics, so);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&svc);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    err << "hyla-serving-overhead: could not start the gRPC server on 127.0.0.1\n";
    return 1;
  }

  BenchOptions bo;
  bo.server = absl::StrCat("127.0.0.1:", port);
  bo.concurrency = f.concurrency;
  // Warm-up: one wave of short requests (connection, threads, allocator).
  bo.num_requests = f.concurrency;
  bo.input_len = {8, 8};
  bo.output_len = {8, 8};
  if (auto warm = RunBenchmark(bo); !warm.ok()) {
    err << "hyla-serving-overhead: warm-up: " << warm.status() << "\n";
    return 1;
  }
  // Idle sessions (resident state the worker walks while it publishes its load).
  if (f.idle_sessions > 0) {
    absl::Mutex mu;
    int done = 0;
    absl::Status first_error;
    for (int i = 0; i < f.idle_sessions; ++i) {
      std::vector<int32_t> prefix(static_cast<size_t>(f.session_tokens));
      for (int t = 0; t < f.session_tokens; ++t) prefix[static_cast<size_t>(t)] = (i + t) % 97 + 3;
      absl::Status st =
          engine_ptr->CreateSession(absl::StrCat("idle-", i), std::move(prefix),
                                    absl::InfiniteFuture(), [&](absl::StatusOr<SessionInfo> info) {
                                      absl::MutexLock lock(&mu);
                                      if (!info.ok() && first_error.ok())
                                        first_error = info.status();
                                      ++done;
                                    });
      if (!st.ok()) {
        err << "hyla-serving-overhead: CreateSession: " << st << "\n";
        return 1;
      }
      // Keep the queue short (the engine bounds it).
      absl::MutexLock lock(&mu);
      auto caught_up = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done >= i + 1 - 16; };
      mu.Await(absl::Condition(&caught_up));
    }
    absl::MutexLock lock(&mu);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done == f.idle_sessions; };
    mu.Await(absl::Condition(&all));
    if (!first_error.ok()) {
      err << "hyla-serving-overhead: CreateSession: " << first_error << "\n";
      return 1;
    }
  }
  backend->TakeRecords();
  observer->Take();

  bo.num_requests = f.num_requests;
  bo.input_len = {f.input_len, f.input_len};
  bo.output_len = {f.output_len, f.output_len};
  absl::StatusOr<BenchReport> rep = RunBenchmark(bo);
  if (!rep.ok()) {
    err << "hyla-serving-overhead: " << rep.status() << "\n";
    return 1;
  }
  const std::vector<FixedStepBackend::StepRecord> records = backend->TakeRecords();
  const std::vector<StepObservation> steps = observer->Take();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server.reset();

  // Full decode steps only: batch == concurrency, one token each (the target's medians).
  std::vector<double> step_ms, gap_ms;
  for (const auto& r : records) {
    if (!r.decode_only || r.batch != f.concurrency) continue;
    step_ms.push_back(Ms(r.duration));
    if (r.has_gap) gap_ms.push_back(Ms(r.gap));
  }
  std::vector<double> before, schedule, backend_ms, after, emit, cycle;
  for (const StepObservation& s : steps) {
    if (s.phase != StepPhase::kDecode || s.batch_size != f.concurrency) continue;
    before.push_back(Ms(s.host_before));
    schedule.push_back(Ms(s.schedule));
    backend_ms.push_back(Ms(s.backend));
    after.push_back(Ms(s.host_after));
    emit.push_back(Ms(s.emit));
    cycle.push_back(Ms(s.host_before + s.backend + s.host_after));
  }
  const Stat st = StatOf(step_ms);
  const Stat gap = StatOf(gap_ms);
  const Stat itl{rep->itl_ms.mean, rep->itl_ms.p50, rep->itl_ms.p90, rep->itl_ms.p99};
  const double overhead = st.p50 > 0 ? itl.p50 / st.p50 - 1 : 0;

  char line[200];
  out << "============ hyla-serving-overhead ============\n";
  std::snprintf(line, sizeof(line),
                "step %.3f ms (%s), concurrency %d, %d requests of %d prompt + %d output tokens\n",
                f.step_ms, f.spin ? "spin" : "sleep", f.concurrency, f.num_requests, f.input_len,
                f.output_len);
  out << line;
  if (f.idle_sessions > 0) {
    std::snprintf(line, sizeof(line), "%d idle sessions of %d tokens resident\n", f.idle_sessions,
                  f.session_tokens);
    out << line;
  }
  std::snprintf(line, sizeof(line), "notify %s, deadlock detection %s\n",
                f.notify_inline ? "inline on the scheduler thread"
                                : absl::StrCat(f.notify_threads, " notifier thread(s)").c_str(),
                f.deadlock_detection ? "on" : "off");
  out << line;
  std::snprintf(line, sizeof(line),
                "completed %d/%d, %.0f output tokens/s, %zu full decode steps\n", rep->completed,
                rep->requested, rep->output_throughput, step_ms.size());
  out << line;
  std::snprintf(line, sizeof(line), "%-44s %9s %9s %9s %9s\n", "metric (ms)", "mean", "p50", "p90",
                "p99");
  out << line;
  auto row = [&](const char* name, const Stat& s) {
    std::snprintf(line, sizeof(line), "%-44s %9.3f %9.3f %9.3f %9.3f\n", name, s.mean, s.p50, s.p90,
                  s.p99);
    out << line;
  };
  row("client ITL", itl);
  row("backend step (inside Backend::Step)", st);
  row("gap between steps (Step return -> next call)", gap);
  row("worker cycle (before + backend + after)", StatOf(cycle));
  row("  host_before (inbox, reap, plan, assemble)", StatOf(before));
  row("    schedule (plan, admit, assemble)", StatOf(schedule));
  row("  backend (as the worker timed it)", StatOf(backend_ms));
  row("  host_after (stop checks, events)", StatOf(after));
  row("    emit (RequestStream::Push + wake-ups)", StatOf(emit));
  std::snprintf(line, sizeof(line),
                "overhead: ITL p50 / step p50 - 1 = %.3f / %.3f - 1 = %+.1f%% (%.3f ms per step; "
                "worker gap p50 %.3f ms, rest %.3f ms)\n",
                itl.p50, st.p50, overhead * 100, itl.p50 - st.p50, gap.p50,
                itl.p50 - st.p50 - gap.p50);
  out << line;

  if (!f.json_path.empty()) {
    std::ofstream j(f.json_path);
    auto js = [](const Stat& s) {
      return absl::StrCat("{\"mean\": ", s.mean, ", \"p50\": ", s.p50, ", \"p90\": ", s.p90,
                          ", \"p99\": ", s.p99, "}");
    };
    j << "{\n  \"step_ms\": " << f.step_ms << ",\n  \"notify\": \""
      << (f.notify_inline ? "inline" : "thread")
      << "\",\n  \"notify_threads\": " << f.notify_threads
      << ",\n  \"deadlock_detection\": " << (f.deadlock_detection ? "true" : "false")
      << ",\n  \"wait\": \"" << (f.spin ? "spin" : "sleep")
      << "\",\n  \"concurrency\": " << f.concurrency << ",\n  \"num_requests\": " << f.num_requests
      << ",\n  \"input_len\": " << f.input_len << ",\n  \"output_len\": " << f.output_len
      << ",\n  \"completed\": " << rep->completed << ",\n  \"itl_ms\": " << js(itl)
      << ",\n  \"backend_step_ms\": " << js(st) << ",\n  \"step_gap_ms\": " << js(gap)
      << ",\n  \"host_before_ms\": " << js(StatOf(before))
      << ",\n  \"schedule_ms\": " << js(StatOf(schedule))
      << ",\n  \"host_after_ms\": " << js(StatOf(after)) << ",\n  \"emit_ms\": " << js(StatOf(emit))
      << ",\n  \"overhead\": " << overhead << "\n}\n";
    if (!j) {
      err << "hyla-serving-overhead: cannot write " << f.json_path << "\n";
      return 1;
    }
  }
  return rep->completed == rep->requested ? 0 : 1;
}

}  // namespace
}  // namespace hyla::bench

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  hyla::bench::Flags f;
  if (int rc = hyla::bench::ParseFlags(args, &f, std::cerr); rc != 0) return rc;
  // As hyla-server does (service/server_main.cc), unless --deadlock-detection on.
  if (!f.deadlock_detection) {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  }
  return hyla::bench::Run(f, std::cout, std::cerr);
}
