// hyla-context-scaling: how one model's decode cost and per-session memory scale with context on
// one Backend — the CPU reference backend, or the CUDA backend when built with CUDA — for issue
// 5's headline comparison (decode latency per token, memory per session, the most sessions in a
// fixed memory budget and the decode throughput at that batch, at contexts 1K … 128K).
//
// For each context c of --contexts (ascending), with one long-lived "probe" session:
//   1. Fill. The probe is brought to c tokens by real prefill (chunks of --prefill-chunk tokens,
//      LogitsMode::kNone) while c <= --prefill-max, else by a synthetic extension (below).
//   2. Memory per session at c: the StateLayout accounting (slot + KvBytesAt(c, ρ)) and the
//      StateStore's measurement of the probe (its slot and the blocks its tables hold).
//   3. Batch-1 decode: --warmup-steps untimed steps, then --decode-steps timed steps (one token
//      each, --decode-logits rows of logits). The same for a fresh synthetic session at c, as a
//      check that synthetic fill costs what real fill costs (skipped when two sessions do not fit
//      the budget).
//   4. Budget: B = floor(budget / session bytes), the session bytes taken from the accounting at
//      the largest context a session reaches in this measurement (c plus the steps). Then a batch
//      of min(B, --max-batch) sessions at c (the probe plus synthetic sessions) runs
//      --warmup-steps untimed and --batch-steps timed decode steps; throughput = batch × steps /
//      time. The pool usage per session is read from the StateStore (used slot + block bytes).
//
// Synthetic fill: a session's block tables get exactly the entries that a real session of that
// length holds (StateLayout::StreamBlocksAt: every chunk for full attention, the last blocks for a
// sliding window, for NAtS-L an evenly spaced share ρ of the completed chunks plus the current
// one) and its length is set; no model step runs, so contents are whatever the pools hold (a
// fresh slot is zeroed by ResetSlot). Decode reads the same number of bytes either way. ρ is
// --softmax-fraction when given, else the share of NAtS-L chunks that the probe's real prefill
// kept as softmax, else 1 (worst case).
//
//   5. --fixed-batch N (optional): a batch of exactly N sessions at c (the probe plus synthetic
//      sessions, outside the budget logic), timed once per --fixed-batch-logits mode (none: no
//      logits; last: the LM head and the logits copied to the host; sample: the LM head and one
//      token sampled per session, on the device when the backend samples there, as the server
//      does), with the step's roofline: (weight bytes read + state bytes read and written + KV
//      bytes read and written + logits bytes) / the copy bandwidth measured by this program.
//
// Timing: host steady clock around Backend::Step (which returns after the device finished; the
// CUDA backend is also synchronised explicitly). Steps of a batch carry one new token per
// session. All times are reported as mean, p50, p90, min and max over the timed steps.
//
// Output: progress on stderr, a table on stdout, and --json FILE (written also when a step
// fails, with "error" set; the exit status is then 1). Usage: hyla-context-scaling --help.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/types/span.h"
#include "runtime/base/status_macros.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/engine/backend.h"
#include "runtime/engine/sampling.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/config.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"
#include "tools/model_tensors.h"

#ifdef HYLA_HAVE_CUDA_BACKEND
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include "runtime/cuda/cuda_backend.h"
#endif

namespace hyla {
namespace {

constexpr char kHelp[] =
    R"(Usage: hyla-context-scaling --model DIR [flags]

Per context: decode latency per token (batch 1), memory per session (accounting and measured),
the most sessions in a memory budget and the decode throughput at that batch. See the comment at
the top of bench/context_scaling.cc and docs/performance.md.

  --model DIR             checkpoint directory (config.json + model.safetensors)
  --label NAME            name in the output (default: the directory's name)
  --pair ID --role R      carried into the JSON for bench/plot_results.py (e.g. a / hybrid)
  --backend cpu|cuda      default: cuda when built with the CUDA backend, else cpu
  --precision bf16|f32    CUDA weights/KV precision (default bf16); the CPU backend is fp32
  --gemm cublas|skinny    CUDA GEMMs of <= 64 rows: cuBLAS (default) or the skinny tensor-core
                          kernel (CudaBackendOptions::skinny_gemm)
  --threads N             CPU backend threads (default: hardware threads)
  --contexts L            ascending contexts in tokens (default 1024,4096,16384,32768,65536,131072)
  --decode-steps N        timed batch-1 decode steps per context (default 16)
  --batch-steps N         timed decode steps of the budget batch (default 8)
  --warmup-steps N        untimed steps before each timed run (default 2)
  --prefill-chunk N       tokens per prefill step (default 8192)
  --prefill-max N         real prefill up to this context, synthetic beyond (default: no limit;
                          0: synthetic from the start)
  --memory-budget-gib X   state memory budget: slots + KV blocks of all sessions (default 40 on
  --memory-budget-mib X   CUDA, 1 GiB on the CPU); the pools are sized from it
  --max-batch N           most sessions in one decode step (default 256)
  --softmax-fraction R    NAtS-L share of chunks kept as softmax KV in synthetic sessions
                          (default: measured by the probe's prefill, else 1)
  --decode-logits last|none|sample  what decode steps produce (default last: the LM head and
                          its copy to the host are part of the step; sample: one token sampled
                          per session, on the device where the backend can, as hyla-server does)
  --fixed-batch N         also time a batch of exactly N sessions at every context, with its
                          roofline (issue 5's end-to-end target at batch 64; default 0: off)
  --fixed-batch-logits L  modes of the fixed batch, comma-separated (default none,last,sample)
  --copy-gbps X           copy bandwidth (read + write, GB/s) for the roofline instead of
                          measuring it (CUDA: 1 GiB device-to-device; CPU: memcpy of 256 MiB)
  --no-batch              skip the budget batch (step 4)
  --no-synthetic-check    skip the batch-1 synthetic-session check
  --seed S                token ids are drawn uniformly from the vocabulary (default 0)
  --json FILE             write the results as JSON
)";

// ---------------------------------------------------------------------------------------------
// Options.

absl::Status Bad(const std::string& flag, const std::string& what);

// What a decode step produces: no logits, the last row's logits on the host, or one sampled token
// per session (SequenceWork::sampler on a backend that samples on the device, else sampled here
// from the returned logits, as hyla-server's scheduler does).
enum class DecodeLogits { kNone, kLast, kSample };

const char* DecodeLogitsName(DecodeLogits m) {
  switch (m) {
    case DecodeLogits::kNone:
      return "none";
    case DecodeLogits::kLast:
      return "last";
    case DecodeLogits::kSample:
      return "sample";
  }
  return "?";
}

absl::StatusOr<DecodeLogits> ParseDecodeLogits(const std::string& flag, absl::string_view v) {
  if (v == "none") return DecodeLogits::kNone;
  if (v == "last") return DecodeLogits::kLast;
  if (v == "sample") return DecodeLogits::kSample;
  return Bad(flag, absl::StrCat("expected none, last or sample, got ", v));
}

struct Options {
  std::string model_dir;
  std::string label;
  std::string pair;
  std::string role;
  std::string backend;
  std::string precision = "bf16";
  std::string gemm = "cublas";
  int threads = 0;
  std::vector<int64_t> contexts = {1024, 4096, 16384, 32768, 65536, 131072};
  int decode_steps = 16;
  int batch_steps = 8;
  int warmup_steps = 2;
  int64_t prefill_chunk = 8192;
  int64_t prefill_max = -1;  // -1: no limit
  double budget_bytes = 0;   // 0: the backend's default
  int max_batch = 256;
  double softmax_fraction = -1;
  DecodeLogits decode_logits = DecodeLogits::kLast;
  int fixed_batch = 0;  // 0: off
  std::vector<DecodeLogits> fixed_batch_logits = {DecodeLogits::kNone, DecodeLogits::kLast,
                                                  DecodeLogits::kSample};
  double copy_gbps = 0;  // 0: measure
  bool batch = true;
  bool synthetic_check = true;
  uint64_t seed = 0;
  std::string json_path;
};

absl::Status Bad(const std::string& flag, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", what));
}

absl::StatusOr<int64_t> ParseInt64(const std::string& flag, const std::string& v, int64_t lo,
                                   int64_t hi) {
  int64_t x = 0;
  if (!absl::SimpleAtoi(v, &x)) return Bad(flag, absl::StrCat("not an integer: ", v));
  if (x < lo || x > hi) return Bad(flag, absl::StrCat(x, " outside [", lo, ", ", hi, "]"));
  return x;
}

absl::StatusOr<double> ParseDouble(const std::string& flag, const std::string& v) {
  double x = 0;
  if (!absl::SimpleAtod(v, &x) || !std::isfinite(x)) {
    return Bad(flag, absl::StrCat("not a number: ", v));
  }
  return x;
}

// Returns nullopt after printing help.
absl::StatusOr<std::optional<Options>> ParseOptions(int argc, char** argv) {
  Options o;
  const std::vector<std::string> bool_flags = {"no-batch", "no-synthetic-check", "help"};
  std::map<std::string, std::string> values;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) return absl::InvalidArgumentError("unexpected argument " + a);
    a = a.substr(2);
    std::string value;
    const size_t eq = a.find('=');
    const bool is_bool = std::find(bool_flags.begin(), bool_flags.end(), a) != bool_flags.end();
    if (eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else if (!is_bool) {
      if (i + 1 >= argc) return Bad(a, "needs a value");
      value = argv[++i];
    }
    values[a] = value;
  }
  if (values.count("help")) return std::optional<Options>();
  for (const auto& [k, v] : values) {
    if (k == "model") {
      o.model_dir = v;
    } else if (k == "label") {
      o.label = v;
    } else if (k == "pair") {
      o.pair = v;
    } else if (k == "role") {
      o.role = v;
    } else if (k == "backend") {
      if (v != "cpu" && v != "cuda") return Bad(k, "expected cpu or cuda");
      o.backend = v;
    } else if (k == "precision") {
      if (v != "bf16" && v != "f32") return Bad(k, "expected bf16 or f32");
      o.precision = v;
    } else if (k == "gemm") {
      if (v != "skinny" && v != "cublas") return Bad(k, "expected skinny or cublas");
      o.gemm = v;
    } else if (k == "threads") {
      HYLA_ASSIGN_OR_RETURN(const int64_t x, ParseInt64(k, v, 0, 1024));
      o.threads = static_cast<int>(x);
    } else if (k == "contexts") {
      o.contexts.clear();
      for (absl::string_view piece : absl::StrSplit(v, ',', absl::SkipEmpty())) {
        HYLA_ASSIGN_OR_RETURN(const int64_t x,
                              ParseInt64(k, std::string(piece), 1, int64_t{1} << 30));
        if (!o.contexts.empty() && x <= o.contexts.back()) return Bad(k, "must be ascending");
        o.contexts.push_back(x);
      }
      if (o.contexts.empty()) return Bad(k, "no context given");
    } else if (k == "decode-steps") {
      HYLA_ASSIGN_OR_RETURN(const int64_t x, ParseInt64(k, v, 1, 100000));
      o.decode_steps = static_cast<int>(x);
    } else if (k == "batch-steps") {
      HYLA_ASSIGN_OR_RETURN(const int64_t x, ParseInt64(k, v, 1, 100000));
      o.batch_steps = static_cast<int>(x);
    } else if (k == "warmup-steps") {
      HYLA_ASSIGN_OR_RETURN(const int64_t x, ParseInt64(k, v, 0, 100000));
      o.warmup_steps = static_cast<int>(x);
    } else if (k == "prefill-chunk") {
      HYLA_ASSIGN_OR_RETURN(o.prefill_chunk, ParseInt64(k, v, 1, int64_t{1} << 24));
    } else if (k == "prefill-max") {
      HYLA_ASSIGN_OR_RETURN(o.prefill_max, ParseInt64(k, v, 0, int64_t{1} << 40));
    } else if (k == "memory-budget-gib" || k == "memory-budget-mib") {
      HYLA_ASSIGN_OR_RETURN(const double x, ParseDouble(k, v));
      if (x <= 0) return Bad(k, "must be positive");
      o.budget_bytes = x * (k == "memory-budget-gib" ? 1073741824.0 : 1048576.0);
    } else if (k == "max-batch") {
      HYLA_ASSIGN_OR_RETURN(const int64_t x, ParseInt64(k, v, 1, 1 << 20));
      o.max_batch = static_cast<int>(x);
    } else if (k == "softmax-fraction") {
      HYLA_ASSIGN_OR_RETURN(o.softmax_fraction, ParseDouble(k, v));
      if (o.softmax_fraction < 0 || o.softmax_fraction > 1) return Bad(k, "must be in [0, 1]");
    } else if (k == "decode-logits") {
      HYLA_ASSIGN_OR_RETURN(o.decode_logits, ParseDecodeLogits(k, v));
    } else if (k == "fixed-batch") {
      HYLA_ASSIGN_OR_RETURN(const int64_t x, ParseInt64(k, v, 0, 1 << 20));
      o.fixed_batch = static_cast<int>(x);
    } else if (k == "fixed-batch-logits") {
      o.fixed_batch_logits.clear();
      for (absl::string_view piece : absl::StrSplit(v, ',', absl::SkipEmpty())) {
        HYLA_ASSIGN_OR_RETURN(const DecodeLogits m, ParseDecodeLogits(k, piece));
        o.fixed_batch_logits.push_back(m);
      }
      if (o.fixed_batch_logits.empty()) return Bad(k, "no mode given");
    } else if (k == "copy-gbps") {
      HYLA_ASSIGN_OR_RETURN(o.copy_gbps, ParseDouble(k, v));
      if (o.copy_gbps <= 0) return Bad(k, "must be positive");
    } else if (k == "no-batch") {
      o.batch = false;
    } else if (k == "no-synthetic-check") {
      o.synthetic_check = false;
    } else if (k == "seed") {
      HYLA_ASSIGN_OR_RETURN(const int64_t x, ParseInt64(k, v, 0, INT64_MAX));
      o.seed = static_cast<uint64_t>(x);
    } else if (k == "json") {
      o.json_path = v;
    } else {
      return absl::InvalidArgumentError("unknown flag --" + k);
    }
  }
  if (o.model_dir.empty()) return absl::InvalidArgumentError("--model DIR is required");
  if (o.label.empty()) o.label = std::filesystem::path(o.model_dir).filename().string();
  if (o.backend.empty()) {
#ifdef HYLA_HAVE_CUDA_BACKEND
    o.backend = "cuda";
#else
    o.backend = "cpu";
#endif
  }
  if (o.budget_bytes <= 0)
    o.budget_bytes = o.backend == "cuda" ? 40.0 * 1073741824.0 : 1073741824.0;
  if (o.threads <= 0)
    o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::optional<Options>(o);
}

// ---------------------------------------------------------------------------------------------
// JSON output (a small writer: objects and arrays built as strings).

std::string JsonString(absl::string_view s) {
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
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<int>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string JsonNum(double v) {
  if (!std::isfinite(v)) return "null";
  if (v == std::floor(v) && std::fabs(v) < 9e15) return absl::StrFormat("%.0f", v);
  return absl::StrFormat("%.6g", v);
}

class JsonObj {
 public:
  JsonObj& Str(absl::string_view k, absl::string_view v) { return Raw(k, JsonString(v)); }
  JsonObj& Num(absl::string_view k, double v) { return Raw(k, JsonNum(v)); }
  JsonObj& Int(absl::string_view k, int64_t v) { return Raw(k, absl::StrCat(v)); }
  JsonObj& Bool(absl::string_view k, bool v) { return Raw(k, v ? "true" : "false"); }
  JsonObj& Null(absl::string_view k) { return Raw(k, "null"); }
  JsonObj& Obj(absl::string_view k, const JsonObj& v) { return Raw(k, v.Dump()); }
  JsonObj& Raw(absl::string_view k, absl::string_view json) {
    members_.emplace_back(std::string(k), std::string(json));
    return *this;
  }
  std::string Dump() const {
    std::vector<std::string> parts;
    for (const auto& [k, v] : members_) parts.push_back(absl::StrCat(JsonString(k), ": ", v));
    return absl::StrCat("{", absl::StrJoin(parts, ", "), "}");
  }

 private:
  std::vector<std::pair<std::string, std::string>> members_;
};

std::string JsonIntArray(const std::vector<int64_t>& v) {
  return absl::StrCat("[", absl::StrJoin(v, ", "), "]");
}

// ---------------------------------------------------------------------------------------------
// Statistics and progress.

struct Stats {
  int n = 0;
  double mean = 0, p50 = 0, p90 = 0, min = 0, max = 0;
};

// Percentiles interpolate linearly between order statistics (numpy.percentile's default).
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double pos = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(sorted.size() - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

Stats Summarize(std::vector<double> v) {
  Stats s;
  s.n = static_cast<int>(v.size());
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / static_cast<double>(v.size());
  s.p50 = Percentile(v, 50);
  s.p90 = Percentile(v, 90);
  s.min = v.front();
  s.max = v.back();
  return s;
}

JsonObj StatsJson(const Stats& s) {
  JsonObj o;
  o.Int("n", s.n).Num("mean", s.mean).Num("p50", s.p50).Num("p90", s.p90).Num("min", s.min);
  o.Num("max", s.max);
  return o;
}

using Clock = std::chrono::steady_clock;
const Clock::time_point g_start = Clock::now();

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

template <typename... Args>
void Progress(const absl::FormatSpec<Args...>& format, const Args&... args) {
  std::fprintf(stderr, "[context-scaling +%.1fs] %s\n", Seconds(g_start, Clock::now()),
               absl::StrFormat(format, args...).c_str());
  std::fflush(stderr);
}

std::string MiB(double bytes) { return absl::StrFormat("%.2f MiB", bytes / 1048576.0); }

// ---------------------------------------------------------------------------------------------
// The study.

// NAtS-L synthetic routing: chunk j of a routed stream is kept as softmax KV iff
// round((j+1)·ρ) > round(j·ρ), so that chunks 0..F-1 keep exactly round(F·ρ) of them, evenly
// spaced (StateLayout::StreamBlocksAt's count).
bool KeepChunk(int64_t j, double rho) {
  return std::llround(static_cast<double>(j + 1) * rho) >
         std::llround(static_cast<double>(j) * rho);
}

// Grows `seq` to `target` tokens without running the model: the block-table entries a real
// session of that length holds (see the file comment); block contents are left as they are.
absl::Status SyntheticExtend(StateStore* store, SequenceState* seq, int64_t target, double rho) {
  const StateLayout& layout = store->layout();
  const int64_t from = seq->num_tokens;
  if (target <= from) return absl::OkStatus();
  for (int s = 0; s < layout.num_streams(); ++s) {
    const KvStream& ks = layout.streams()[s];
    // The chunk holding position `from`, when `from` is inside a chunk, has its block already.
    int64_t begin = (from + kBlockTokens - 1) / kBlockTokens;
    const int64_t last = (target - 1) / kBlockTokens;
    if (ks.window > 0) {
      begin = std::max(begin, std::max<int64_t>(0, target - ks.window + 1) / kBlockTokens);
    }
    const int64_t complete_end = target / kBlockTokens;  // chunks below it are complete
    std::vector<BlockRef>& table = seq->streams[s];
    if (ks.routed && from % kBlockTokens != 0 && from / kBlockTokens < complete_end &&
        !KeepChunk(from / kBlockTokens, rho) && !table.empty() &&
        table.back().chunk == from / kBlockTokens) {
      // The chunk in progress at `from` completes: routed away like the chunks after it.
      store->DropBlock(seq, s, static_cast<int>(table.size()) - 1);
    }
    for (int64_t chunk = begin; chunk <= last; ++chunk) {
      if (ks.routed && chunk < complete_end && !KeepChunk(chunk, rho)) continue;
      int32_t copy_from = -1;
      HYLA_ASSIGN_OR_RETURN(const int index, store->PrepareAppend(seq, s, chunk, &copy_from));
      (void)index;
      if (copy_from >= 0) {
        return absl::FailedPreconditionError("synthetic extension of a forked sequence");
      }
    }
    if (ks.window > 0) {
      const int64_t first_needed = target - ks.window + 1;
      while (!table.empty() && (table.front().chunk + 1) * kBlockTokens <= first_needed) {
        store->DropBlock(seq, s, 0);
      }
    }
  }
  seq->num_tokens = target;
  return absl::OkStatus();
}

// What the roofline of a decode step needs besides the layout.
struct RooflineInputs {
  int64_t weight_bytes = 0;        // every weight the backend holds (CUDA: on the device)
  int64_t embed_matrix_bytes = 0;  // the embedding table as held (= the LM head when tied)
  int64_t embed_row_bytes = 0;     // one gathered embedding row
  bool tied = false;               // the LM head is the embedding table
  double copy_gbps = 0;            // read + write bytes per ns of a large copy
  std::string copy_method;
};

// The fewest bytes one decode step of `batch` sessions at `context` tokens must move, by the
// accounting (see the file comment): weights the step reads (the LM head only when logits are
// produced; the embedding table only as the gathered rows unless it is the LM head), every
// session's slot read and written once, the KV each stream attends to read and the new token's
// K/V written, and the logits written (and read again by a sampler). The copy of logits to the
// host (PCIe) is not memory traffic of the device and is not counted.
struct StepBytes {
  int64_t weights = 0, state = 0, kv = 0, logits = 0;
  int64_t total() const { return weights + state + kv + logits; }
};

StepBytes RooflineBytes(const StateLayout& layout, const ModelConfig& config,
                        const RooflineInputs& r, int64_t batch, int64_t context, double rho,
                        DecodeLogits mode) {
  StepBytes b;
  const bool head = mode != DecodeLogits::kNone;
  int64_t w = r.weight_bytes;
  if (r.tied) {
    if (!head) w -= r.embed_matrix_bytes;
  } else {
    w -= r.embed_matrix_bytes;             // only gathered rows are read
    if (!head) w -= r.embed_matrix_bytes;  // the LM head has the same shape
  }
  b.weights = std::max<int64_t>(0, w) + batch * r.embed_row_bytes;
  b.state = batch * 2 * layout.slot_bytes();
  int64_t kv_session = 0;
  for (const KvStream& ks : layout.streams()) {
    int64_t tokens = context;
    if (ks.window > 0) tokens = std::min<int64_t>(tokens, ks.window);
    if (ks.routed) {
      tokens =
          std::min<int64_t>(tokens, StateLayout::StreamBlocksAt(ks, context, rho) * kBlockTokens);
    }
    kv_session += (tokens + 1) * ks.token_bytes;  // read the visible keys, write the new one
  }
  b.kv = batch * kv_session;
  const int64_t logit_bytes = batch * int64_t{config.vocab_size} * 4;
  b.logits = mode == DecodeLogits::kNone   ? 0
             : mode == DecodeLogits::kLast ? logit_bytes
                                           : 2 * logit_bytes;
  return b;
}

class Study {
 public:
  Study(const Options& o, Backend* backend, RooflineInputs roofline)
      : o_(o), backend_(backend), roofline_(std::move(roofline)), rng_(o.seed) {}

  absl::Status Sync() {
#ifdef HYLA_HAVE_CUDA_BACKEND
    if (auto* cb = dynamic_cast<cuda::CudaBackend*>(backend_)) return cb->device().Synchronize();
#endif
    return absl::OkStatus();
  }

  int32_t RandomToken() {
    return static_cast<int32_t>(rng_() % static_cast<uint64_t>(backend_->config().vocab_size));
  }

  absl::StatusOr<std::unique_ptr<SequenceState>> NewSession() {
    HYLA_ASSIGN_OR_RETURN(std::unique_ptr<SequenceState> seq, backend_->store().NewSequence());
    backend_->ResetSlot(seq->slot);
    return seq;
  }

  // Real prefill of `seq` up to `target` tokens; returns seconds.
  absl::StatusOr<double> Prefill(SequenceState* seq, int64_t target) {
    std::vector<int32_t> tokens;
    StepOutput out;
    const Clock::time_point t0 = Clock::now();
    while (seq->num_tokens < target) {
      const int64_t n = std::min(o_.prefill_chunk, target - seq->num_tokens);
      tokens.resize(static_cast<size_t>(n));
      for (int32_t& t : tokens) t = RandomToken();
      SequenceWork w;
      w.seq = seq;
      w.tokens = absl::MakeConstSpan(tokens);
      w.logits = LogitsMode::kNone;
      HYLA_RETURN_IF_ERROR(backend_->Step(absl::MakeConstSpan(&w, 1), &out));
      routing_.to_softmax += out.routing.to_softmax;
      routing_.to_gdn += out.routing.to_gdn;
    }
    HYLA_RETURN_IF_ERROR(Sync());
    return Seconds(t0, Clock::now());
  }

  // `warmup` untimed then `steps` timed decode steps of all `seqs` together; step times in ms.
  // kSample: each session has a sampler (default SamplingParams, seeded per session); the token
  // is drawn on the device where the backend samples there, else here from the returned logits
  // (inside the timed region, as hyla-server's scheduler does).
  absl::StatusOr<std::vector<double>> Decode(const std::vector<SequenceState*>& seqs, int warmup,
                                             int steps) {
    return Decode(seqs, warmup, steps, o_.decode_logits);
  }
  absl::StatusOr<std::vector<double>> Decode(const std::vector<SequenceState*>& seqs, int warmup,
                                             int steps, DecodeLogits mode) {
    std::vector<int32_t> tokens(seqs.size());
    std::vector<SequenceWork> work(seqs.size());
    std::vector<std::unique_ptr<Sampler>> samplers;
    const int vocab = backend_->config().vocab_size;
    const bool on_device = backend_->SamplesOnDevice();
    if (mode == DecodeLogits::kSample) {
      for (size_t k = 0; k < seqs.size(); ++k) {
        SamplingParams p;
        p.seed = o_.seed + k;
        samplers.push_back(std::make_unique<Sampler>(p, vocab));
      }
    }
    StepOutput out;
    std::vector<double> ms;
    // HYLA_PROFILE_STEPS=<mode>: the timed steps of that logits mode run between
    // cudaProfilerStart and cudaProfilerStop (for `ncu --profile-from-start off`).
    const char* profile_env = std::getenv("HYLA_PROFILE_STEPS");
    const bool profile =
        profile_env != nullptr && DecodeLogitsName(mode) == std::string(profile_env);
    for (int i = 0; i < warmup + steps; ++i) {
      if (profile && i == warmup) ProfilerStart(true);
      for (size_t k = 0; k < seqs.size(); ++k) {
        tokens[k] = RandomToken();
        work[k].seq = seqs[k];
        work[k].tokens = absl::MakeConstSpan(&tokens[k], 1);
        work[k].logits = mode == DecodeLogits::kNone ? LogitsMode::kNone : LogitsMode::kLast;
        work[k].sampler = mode == DecodeLogits::kSample && on_device ? samplers[k].get() : nullptr;
      }
      const Clock::time_point t0 = Clock::now();
      HYLA_RETURN_IF_ERROR(backend_->Step(work, &out));
      HYLA_RETURN_IF_ERROR(Sync());
      if (mode == DecodeLogits::kSample && !on_device) {
        for (size_t k = 0; k < seqs.size(); ++k) {
          if (out.row_count[k] < 1) return absl::InternalError("no logits row to sample");
          samplers[k]->Sample(absl::MakeConstSpan(
              out.logits.data() + static_cast<size_t>(out.row_offset[k]) * vocab,
              static_cast<size_t>(vocab)));
        }
      }
      const Clock::time_point t1 = Clock::now();
      if (i >= warmup) ms.push_back(1e3 * Seconds(t0, t1));
    }
    if (profile) ProfilerStart(false);
    return ms;
  }

  static void ProfilerStart(bool on) {
#ifdef HYLA_HAVE_CUDA_BACKEND
    (void)(on ? cudaProfilerStart() : cudaProfilerStop());
#else
    (void)on;
#endif
  }

  double Rho() const {
    if (o_.softmax_fraction >= 0) return o_.softmax_fraction;
    const int64_t total = routing_.to_softmax + routing_.to_gdn;
    if (total > 0) return static_cast<double>(routing_.to_softmax) / static_cast<double>(total);
    return 1.0;
  }
  const RoutingCounts& routing() const { return routing_; }

  // Bytes of one session at `context` tokens by the accounting.
  int64_t SessionBytes(int64_t context, double rho) const {
    const StateLayout& l = backend_->layout();
    return l.slot_bytes() + l.KvBytesAt(context, rho);
  }

  // Tokens a session gains beyond c during one context's measurement (the probe's worst case).
  int64_t Headroom() const {
    const int64_t fixed = o_.fixed_batch > 0 ? static_cast<int64_t>(o_.fixed_batch_logits.size()) *
                                                   (o_.warmup_steps + o_.batch_steps)
                                             : 0;
    return 2 * int64_t{o_.warmup_steps} + o_.decode_steps + (o_.batch ? o_.batch_steps : 0) + fixed;
  }

  // Step 5: a batch of exactly o_.fixed_batch sessions at c, timed per mode, with its roofline.
  // A batch that does not fit the pools is reported (JSON "error") without failing the run.
  JsonObj FixedBatch(SequenceState* probe, int64_t c, double rho, std::vector<std::string>* table) {
    StateStore& store = backend_->store();
    const int64_t n = o_.fixed_batch;
    JsonObj fj;
    fj.Int("batch", n)
        .Num("copy_gbps", roofline_.copy_gbps)
        .Str("copy_method", roofline_.copy_method);
    std::vector<std::unique_ptr<SequenceState>> extra;
    std::vector<SequenceState*> seqs = {probe};
    absl::Status st;
    while (st.ok() && static_cast<int64_t>(seqs.size()) < n) {
      absl::StatusOr<std::unique_ptr<SequenceState>> s = NewSession();
      if (!s.ok()) {
        st = s.status();
        break;
      }
      st = SyntheticExtend(&store, s->get(), c, rho);
      extra.push_back(*std::move(s));
      seqs.push_back(extra.back().get());
    }
    std::vector<std::string> modes;
    if (st.ok()) {
      for (const DecodeLogits mode : o_.fixed_batch_logits) {
        // The context the timed steps see on average (each step adds one token).
        const int64_t ctx = seqs.front()->num_tokens + o_.warmup_steps + o_.batch_steps / 2;
        absl::StatusOr<std::vector<double>> t = Decode(seqs, o_.warmup_steps, o_.batch_steps, mode);
        if (!t.ok()) {
          st = t.status();
          break;
        }
        const Stats sb = Summarize(*t);
        const StepBytes b =
            RooflineBytes(backend_->layout(), backend_->config(), roofline_, n, ctx, rho, mode);
        const double roof_ms = static_cast<double>(b.total()) / (roofline_.copy_gbps * 1e6);
        JsonObj m;
        m.Str("logits", DecodeLogitsName(mode));
        m.Bool("sampled_on_device", mode == DecodeLogits::kSample && backend_->SamplesOnDevice());
        m.Obj("step_ms", StatsJson(sb)).Num("tokens_per_s", static_cast<double>(n) * 1e3 / sb.mean);
        m.Int("mean_context", ctx);
        JsonObj bj;
        bj.Int("weights", b.weights).Int("state", b.state).Int("kv", b.kv).Int("logits", b.logits);
        bj.Int("total", b.total());
        m.Obj("roofline_bytes", bj).Num("roofline_ms", roof_ms);
        m.Num("roofline_fraction", roof_ms / sb.mean);
        modes.push_back(m.Dump());
        Progress(
            "%s ctx %d: batch %d, logits %s: %.3f ms/step (p50 %.3f), roofline %.3f ms "
            "(%.1f MB at %.0f GB/s): %.1f%%",
            o_.label, c, n, DecodeLogitsName(mode), sb.mean, sb.p50, roof_ms,
            static_cast<double>(b.total()) / 1e6, roofline_.copy_gbps, 100.0 * roof_ms / sb.mean);
        table->push_back(absl::StrFormat(
            "%9d  fixed batch %d, logits %-6s  step %8.3f ms  roofline %8.3f ms  %5.1f%%", c, n,
            DecodeLogitsName(mode), sb.mean, roof_ms, 100.0 * roof_ms / sb.mean));
      }
    }
    for (auto& s : extra) store.Release(std::move(s));
    fj.Raw("modes", absl::StrCat("[", absl::StrJoin(modes, ", "), "]"));
    if (!st.ok()) {
      Progress("%s ctx %d: fixed batch of %d: %s", o_.label, c, n, st.ToString());
      fj.Str("error", st.ToString());
      table->push_back(absl::StrFormat("%9d  fixed batch %d: %s", c, n, st.ToString()));
    }
    return fj;
  }

  // Runs the whole sweep; appends one JSON object per context to `contexts_json`.
  absl::Status Run(std::vector<std::string>* contexts_json, std::vector<std::string>* table,
                   const std::function<void()>& after_context) {
    StateStore& store = backend_->store();
    const StateLayout& layout = backend_->layout();
    HYLA_ASSIGN_OR_RETURN(std::unique_ptr<SequenceState> probe, NewSession());
    for (const int64_t c : o_.contexts) {
      JsonObj cj;
      cj.Int("context", c);
      // Does one session at c (plus the steps) fit the budget at all?
      const double rho_plan = Rho();
      const int64_t planned = SessionBytes(c + Headroom(), rho_plan);
      if (static_cast<double>(planned) > o_.budget_bytes) {
        Progress("%s ctx %d: one session (%s) exceeds the budget (%s); stopping", o_.label, c,
                 MiB(static_cast<double>(planned)), MiB(o_.budget_bytes));
        cj.Bool("fits", false).Int("session_bytes_planned", planned);
        contexts_json->push_back(cj.Dump());
        table->push_back(absl::StrFormat("%9d  does not fit the budget", c));
        after_context();
        break;
      }
      cj.Bool("fits", true);

      // 1. Fill the probe.
      const int64_t from = probe->num_tokens;
      const bool real = o_.prefill_max < 0 || c <= o_.prefill_max;
      double fill_s = 0;
      if (real) {
        HYLA_ASSIGN_OR_RETURN(fill_s, Prefill(probe.get(), c));
      } else {
        const Clock::time_point t0 = Clock::now();
        HYLA_RETURN_IF_ERROR(SyntheticExtend(&store, probe.get(), c, Rho()));
        fill_s = Seconds(t0, Clock::now());
      }
      const double rho = Rho();
      {
        JsonObj f;
        f.Str("fill", real ? "prefill" : "synthetic").Int("from", from).Int("tokens", c - from);
        f.Num("seconds", fill_s);
        f.Num("tokens_per_s", fill_s > 0 ? static_cast<double>(c - from) / fill_s : NAN);
        cj.Obj("fill", f);
      }
      Progress("%s ctx %d: %s %d tokens in %.2f s", o_.label, c, real ? "prefill" : "synthetic",
               c - from, fill_s);

      // 2. Memory per session at c.
      const SequenceMemory mem = store.MemoryOf(*probe);
      const int64_t acct = SessionBytes(c, rho);
      {
        JsonObj m;
        m.Int("slot_bytes", layout.slot_bytes());
        m.Int("block_bytes", layout.block_bytes());
        m.Num("softmax_fraction", rho);
        m.Int("kv_blocks_accounting", layout.KvBlocksAt(c, rho));
        m.Int("kv_bytes_accounting", layout.KvBytesAt(c, rho));
        m.Int("session_bytes_accounting", acct);
        m.Int("session_bytes_accounting_worst", SessionBytes(c, 1.0));
        m.Int("kv_blocks_measured", mem.kv_blocks);
        m.Int("kv_bytes_measured", mem.kv_bytes);
        m.Int("session_bytes_measured", mem.slot_bytes + mem.kv_bytes);
        m.Int("softmax_equivalent_bytes", layout.SoftmaxEquivalentBytes(c));
        cj.Obj("memory", m);
      }

      // 3. Batch-1 decode on the probe, then on a synthetic session.
      HYLA_ASSIGN_OR_RETURN(const std::vector<double> b1,
                            Decode({probe.get()}, o_.warmup_steps, o_.decode_steps));
      const Stats s1 = Summarize(b1);
      {
        JsonObj d;
        d.Str("session", real ? "prefilled" : "synthetic").Obj("step_ms", StatsJson(s1));
        d.Num("tokens_per_s", 1e3 / s1.mean);
        cj.Obj("decode_b1", d);
      }
      Progress("%s ctx %d: batch-1 decode %.3f ms/token (p50 %.3f)", o_.label, c, s1.mean, s1.p50);
      double synth_mean = NAN;
      const int64_t sessions_fit = static_cast<int64_t>(
          o_.budget_bytes / static_cast<double>(std::max<int64_t>(planned, 1)));
      if (o_.synthetic_check && sessions_fit >= 2) {
        HYLA_ASSIGN_OR_RETURN(std::unique_ptr<SequenceState> syn, NewSession());
        absl::Status st = SyntheticExtend(&store, syn.get(), c, rho);
        absl::StatusOr<std::vector<double>> sv =
            st.ok() ? Decode({syn.get()}, o_.warmup_steps, o_.decode_steps)
                    : absl::StatusOr<std::vector<double>>(st);
        store.Release(std::move(syn));
        if (!sv.ok()) return sv.status();
        const Stats ss = Summarize(*sv);
        synth_mean = ss.mean;
        JsonObj d;
        d.Str("session", "synthetic").Obj("step_ms", StatsJson(ss));
        d.Num("tokens_per_s", 1e3 / ss.mean);
        cj.Obj("decode_b1_synthetic", d);
      } else {
        cj.Null("decode_b1_synthetic");
      }

      // 4. The most sessions in the budget, and a batch of them.
      const int64_t session_planned = SessionBytes(c + Headroom(), rho);
      const int64_t max_sessions = static_cast<int64_t>(
          o_.budget_bytes / static_cast<double>(std::max<int64_t>(session_planned, 1)));
      const int64_t batch = std::min<int64_t>(max_sessions, o_.max_batch);
      JsonObj bj;
      bj.Num("budget_bytes", o_.budget_bytes).Int("session_bytes_planned", session_planned);
      bj.Int("max_sessions", max_sessions).Int("batch", batch).Bool("capped", max_sessions > batch);
      double tput = NAN, step_mean = NAN;
      if (o_.batch && batch >= 1) {
        std::vector<std::unique_ptr<SequenceState>> extra;
        std::vector<SequenceState*> seqs = {probe.get()};
        absl::Status st;
        bool exhausted = false;
        while (static_cast<int64_t>(seqs.size()) < batch) {
          absl::StatusOr<std::unique_ptr<SequenceState>> s = NewSession();
          if (!s.ok()) {
            st = s.status();
            break;
          }
          st = SyntheticExtend(&store, s->get(), c, rho);
          if (!st.ok()) {
            store.Release(*std::move(s));
            break;
          }
          extra.push_back(*std::move(s));
          seqs.push_back(extra.back().get());
        }
        if (absl::IsResourceExhausted(st)) {
          // The accounting said they fit, the pool says no (a NAtS-L probe may hold more blocks
          // than the share ρ predicts): run with the sessions that fit, and say so.
          Progress("%s ctx %d: pool exhausted after %d sessions (%s)", o_.label, c, seqs.size(),
                   st.message());
          exhausted = true;
          st = absl::OkStatus();
        }
        bj.Bool("pool_exhausted", exhausted).Int("batch_run", static_cast<int64_t>(seqs.size()));
        const double n = static_cast<double>(seqs.size());
        const double pool_before =
            static_cast<double>(store.used_slot_bytes() + store.used_kv_bytes()) / n;
        absl::StatusOr<std::vector<double>> bt = st.ok()
                                                     ? Decode(seqs, o_.warmup_steps, o_.batch_steps)
                                                     : absl::StatusOr<std::vector<double>>(st);
        const double pool_after =
            static_cast<double>(store.used_slot_bytes() + store.used_kv_bytes()) / n;
        for (auto& s : extra) store.Release(std::move(s));
        if (!bt.ok()) {
          return absl::Status(bt.status().code(),
                              absl::StrCat("batch of ", batch, " sessions at context ", c, ": ",
                                           bt.status().message()));
        }
        const Stats sb = Summarize(*bt);
        step_mean = sb.mean;
        tput = n * 1e3 / sb.mean;
        bj.Num("pool_bytes_per_session_measured", pool_before);
        bj.Num("pool_bytes_per_session_after_steps", pool_after);
        bj.Obj("step_ms", StatsJson(sb)).Num("tokens_per_s", tput);
        bj.Num("ms_per_token", sb.mean / n);
        Progress("%s ctx %d: %d sessions fit %s; batch %d: %.3f ms/step, %.1f tokens/s", o_.label,
                 c, max_sessions, MiB(o_.budget_bytes), batch, sb.mean, tput);
      }
      cj.Obj("budget", bj);
      table->push_back(
          absl::StrFormat("%9d  %-9s  %12.2f  %12.2f  %10.3f  %10.3f  %8d  %6d  %10.3f  %12.1f", c,
                          real ? "prefill" : "synthetic", static_cast<double>(acct) / 1048576.0,
                          static_cast<double>(mem.slot_bytes + mem.kv_bytes) / 1048576.0, s1.mean,
                          synth_mean, max_sessions, batch, step_mean, tput));
      // 5. The fixed batch and its roofline.
      if (o_.fixed_batch > 0) cj.Obj("fixed_batch", FixedBatch(probe.get(), c, rho, table));
      contexts_json->push_back(cj.Dump());
      after_context();
    }
    store.Release(std::move(probe));
    return absl::OkStatus();
  }

 private:
  const Options& o_;
  Backend* backend_;
  RooflineInputs roofline_;
  std::mt19937_64 rng_;
  RoutingCounts routing_;
};

std::string NowUtc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string HostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

// The copy bandwidth (read + write bytes / s, in GB/s) the roofline divides by, measured like
// kernels_bench: on CUDA the median of 10 device-to-device copies of 1 GiB (256 MiB when 2 GiB
// are not free), on the CPU the median of 5 memcpy calls of 256 MiB (one thread: a dry-run figure,
// not the machine's bandwidth).
absl::StatusOr<double> MeasureCopyGbps(bool cuda, std::string* method) {
  std::vector<double> gbps;
  if (cuda) {
#ifdef HYLA_HAVE_CUDA_BACKEND
    size_t bytes = size_t{1} << 30;
    void* src = nullptr;
    void* dst = nullptr;
    if (cudaMalloc(&src, bytes) != cudaSuccess || cudaMalloc(&dst, bytes) != cudaSuccess) {
      cudaFree(src);
      cudaFree(dst);
      (void)cudaGetLastError();
      src = dst = nullptr;
      bytes = size_t{256} << 20;
      if (cudaMalloc(&src, bytes) != cudaSuccess || cudaMalloc(&dst, bytes) != cudaSuccess) {
        cudaFree(src);
        return absl::ResourceExhaustedError("no device memory for the copy-bandwidth buffers");
      }
    }
    cudaEvent_t a = nullptr, b = nullptr;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaError_t err = cudaMemset(src, 1, bytes);
    for (int i = 0; i < 13 && err == cudaSuccess; ++i) {
      cudaEventRecord(a);
      err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice);
      cudaEventRecord(b);
      if (err == cudaSuccess) err = cudaEventSynchronize(b);
      float ms = 0;
      if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, a, b);
      if (err == cudaSuccess && i >= 3 && ms > 0) gbps.push_back(2.0 * bytes / (ms * 1e6));
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaFree(src);
    cudaFree(dst);
    if (err != cudaSuccess) {
      return absl::InternalError(absl::StrCat("copy bandwidth: ", cudaGetErrorString(err)));
    }
    *method = absl::StrCat("device-to-device copy of ", bytes >> 20, " MiB, median of 10");
#else
    return absl::UnimplementedError("no CUDA backend in this build");
#endif
  } else {
    const size_t bytes = size_t{256} << 20;
    std::vector<char> src(bytes, 1), dst(bytes, 0);
    for (int i = 0; i < 6; ++i) {
      const Clock::time_point t0 = Clock::now();
      std::memcpy(dst.data(), src.data(), bytes);
      const double s = Seconds(t0, Clock::now());
      if (i >= 1 && s > 0) gbps.push_back(2.0 * bytes / (s * 1e9));
    }
    *method = "memcpy of 256 MiB on one CPU thread, median of 5";
  }
  if (gbps.empty()) return absl::InternalError("copy bandwidth: no valid timing");
  std::sort(gbps.begin(), gbps.end());
  return gbps[gbps.size() / 2];
}

// ---------------------------------------------------------------------------------------------

int Main(int argc, char** argv) {
  absl::StatusOr<std::optional<Options>> parsed = ParseOptions(argc, argv);
  if (!parsed.ok()) {
    std::fprintf(stderr, "hyla-context-scaling: %s\nRun 'hyla-context-scaling --help'.\n",
                 std::string(parsed.status().message()).c_str());
    return 2;
  }
  if (!parsed->has_value()) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  const Options& o = **parsed;

  const std::string date = NowUtc();
  std::vector<std::string> contexts_json, table;
  absl::Status status;
  std::string device = "cpu";
  JsonObj model_json, pool_json, device_json, routing_json, copy_json;
  RooflineInputs roofline;
  double load_s = 0;

  // The whole record as it stands; written after every context (a run stopped by a timeout
  // keeps what it measured) and at the end. False when the file cannot be written.
  auto dump = [&]() {
    JsonObj root;
    root.Str("tool", "hyla-context-scaling").Int("schema", 1).Str("date_utc", date);
    root.Str("host", HostName()).Str("label", o.label).Str("pair", o.pair).Str("role", o.role);
    root.Str("backend", o.backend).Obj("routing_prefill", routing_json);
    root.Str("device", device).Str("precision", o.backend == "cuda" ? o.precision : "f32");
    root.Str("gemm", o.backend == "cuda" ? o.gemm : "cpu");
    root.Obj("model", model_json).Obj("pool", pool_json).Obj("device_memory", device_json);
    JsonObj opts;
    opts.Raw("contexts", JsonIntArray(o.contexts)).Int("decode_steps", o.decode_steps);
    opts.Int("batch_steps", o.batch_steps).Int("warmup_steps", o.warmup_steps);
    opts.Int("prefill_chunk", o.prefill_chunk).Int("prefill_max", o.prefill_max);
    opts.Num("memory_budget_bytes", o.budget_bytes).Int("max_batch", o.max_batch);
    opts.Num("softmax_fraction", o.softmax_fraction);
    opts.Str("decode_logits", DecodeLogitsName(o.decode_logits)).Int("fixed_batch", o.fixed_batch);
    std::vector<std::string> fixed_modes;
    for (const DecodeLogits m : o.fixed_batch_logits) fixed_modes.push_back(DecodeLogitsName(m));
    opts.Str("fixed_batch_logits", absl::StrJoin(fixed_modes, ","));
    opts.Int("threads", o.threads).Int("seed", static_cast<int64_t>(o.seed));
    std::vector<std::string> cmd;
    for (int i = 0; i < argc; ++i) cmd.emplace_back(argv[i]);
    opts.Str("command", absl::StrJoin(cmd, " "));
    root.Obj("options", opts).Num("load_seconds", load_s).Obj("copy_bandwidth", copy_json);
    root.Raw("contexts", absl::StrCat("[\n  ", absl::StrJoin(contexts_json, ",\n  "), "\n]"));
    if (!status.ok()) root.Str("error", status.ToString());
    if (o.json_path.empty()) return true;
    const std::string tmp = o.json_path + ".tmp";
    std::ofstream f(tmp, std::ios::trunc);
    f << root.Dump() << "\n";
    f.close();
    std::error_code ec;
    if (f) std::filesystem::rename(tmp, o.json_path, ec);
    return static_cast<bool>(f) && !ec;
  };

  auto run = [&]() -> absl::Status {
    HYLA_ASSIGN_OR_RETURN(const ModelConfig config, Checkpoint::ReadConfig(o.model_dir));
    const bool cuda = o.backend == "cuda";
    const DType kv = cuda && o.precision == "bf16" ? DType::kBF16 : DType::kF32;
    HYLA_ASSIGN_OR_RETURN(const StateLayout layout, StateLayout::Create(config, kv));
    std::vector<std::string> kinds;
    for (const LayerConfig& l : config.layers) kinds.emplace_back(LayerKindName(l.kind));
    model_json.Str("dir", o.model_dir).Str("family", FamilyName(config.family));
    model_json.Int("parameters", tools::CountParameters(config));
    model_json.Str("checkpoint_dtype", DTypeName(config.dtype));
    model_json.Int("num_layers", config.num_layers).Int("hidden_size", config.hidden_size);
    model_json.Int("vocab_size", config.vocab_size);
    model_json.Raw("layer_kinds", absl::StrCat("[\"", absl::StrJoin(kinds, "\", \""), "\"]"));
    model_json.Str("kv_dtype", DTypeName(kv)).Int("slot_bytes", layout.slot_bytes());
    model_json.Int("block_bytes", layout.block_bytes()).Int("num_streams", layout.num_streams());

    // Pools from the budget: every session's slot and blocks must come out of it.
    StateStoreOptions so;
    const double budget = o.budget_bytes;
    int64_t slots = o.max_batch;
    if (layout.slot_bytes() > 0) {
      slots = std::min<int64_t>(
          slots, static_cast<int64_t>(budget / static_cast<double>(layout.slot_bytes())));
    }
    slots = std::max<int64_t>(slots, o.fixed_batch);  // the fixed batch is outside the budget
    so.num_slots = static_cast<int>(std::max<int64_t>(2, slots));
    so.num_blocks = layout.block_bytes() > 0
                        ? static_cast<int64_t>(budget / static_cast<double>(layout.block_bytes()))
                        : 0;
    pool_json.Int("num_slots", so.num_slots).Int("num_blocks", so.num_blocks);
    pool_json.Int("slot_pool_bytes", so.num_slots * layout.slot_bytes());
    pool_json.Int("block_pool_bytes", so.num_blocks * layout.block_bytes());

    Progress("%s: loading %s on %s (%d slots, %d blocks)", o.label, o.model_dir, o.backend,
             so.num_slots, so.num_blocks);
    const Clock::time_point t0 = Clock::now();
    HYLA_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(o.model_dir));
    std::unique_ptr<Backend> backend;
    if (!cuda) {
      cpu::CpuBackendOptions co;
      co.num_threads = o.threads;
      co.store = so;
      HYLA_ASSIGN_OR_RETURN(backend, cpu::CpuBackend::Create(std::move(ckpt), co));
      device = absl::StrCat("cpu (", o.threads, " threads)");
    } else {
      device = "cuda (backend not created)";
#ifdef HYLA_HAVE_CUDA_BACKEND
      cuda::CudaBackendOptions co;
      co.precision = o.precision == "f32" ? cuda::Precision::kF32 : cuda::Precision::kBf16;
      co.store = so;
      co.max_step_tokens = std::max<int64_t>(o.prefill_chunk, std::max(o.max_batch, o.fixed_batch));
      co.max_step_seqs = std::max(std::max(o.max_batch, o.fixed_batch), 1);
      // Decode-graph block tables wide enough for the longest context and its decode steps.
      co.max_context = *std::max_element(o.contexts.begin(), o.contexts.end()) + 4096;
      co.skinny_gemm = o.gemm == "skinny";
      HYLA_ASSIGN_OR_RETURN(backend, cuda::CudaBackend::Create(std::move(ckpt), co));
      auto* cb = static_cast<cuda::CudaBackend*>(backend.get());
      cudaDeviceProp prop{};
      if (cudaGetDeviceProperties(&prop, co.device) == cudaSuccess) device = prop.name;
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
        device_json.Int("total_bytes", static_cast<int64_t>(total_b));
        device_json.Int("used_bytes_after_create", static_cast<int64_t>(total_b - free_b));
      }
      device_json.Int("weight_bytes", cb->weight_bytes());
      roofline.weight_bytes = cb->weight_bytes();
      roofline.embed_matrix_bytes = int64_t{config.vocab_size} * config.hidden_size *
                                    (co.precision == cuda::Precision::kBf16 ? 2 : 4);
      roofline.embed_row_bytes = int64_t{config.hidden_size} * 4;  // gathered, then fp32
      device_json.Int("planned_state_and_scratch_bytes",
                      CudaBackendStateBytes(backend->config(), co));
#else
      return absl::UnimplementedError(
          "--backend cuda: this build has no CUDA backend (configure with -DHYLA_CUDA=ON)");
#endif
    }
    load_s = Seconds(t0, Clock::now());
    if (!cuda) {
      roofline.weight_bytes = tools::CountParameters(config) * 4;  // fp32 on the CPU
      roofline.embed_matrix_bytes = int64_t{config.vocab_size} * config.hidden_size * 4;
      roofline.embed_row_bytes = int64_t{config.hidden_size} * 4;
    }
    roofline.tied = config.tie_word_embeddings;
    if (o.fixed_batch > 0) {
      if (o.copy_gbps > 0) {
        roofline.copy_gbps = o.copy_gbps;
        roofline.copy_method = "--copy-gbps";
      } else {
        HYLA_ASSIGN_OR_RETURN(roofline.copy_gbps, MeasureCopyGbps(cuda, &roofline.copy_method));
      }
      Progress("%s: copy bandwidth %.1f GB/s (read + write; %s)", o.label, roofline.copy_gbps,
               roofline.copy_method);
      copy_json.Num("gbps", roofline.copy_gbps).Str("method", roofline.copy_method);
    }
    if (backend->layout().block_bytes() != layout.block_bytes() ||
        backend->layout().slot_bytes() != layout.slot_bytes()) {
      return absl::InternalError("the backend's state layout differs from the planned one");
    }
    Progress("%s: loaded in %.1f s on %s", o.label, load_s, device);
    Study study(o, backend.get(), roofline);
    auto after_context = [&]() {
      routing_json = JsonObj();
      routing_json.Int("to_softmax", study.routing().to_softmax);
      routing_json.Int("to_gdn", study.routing().to_gdn);
      dump();
    };
    absl::Status st = study.Run(&contexts_json, &table, after_context);
    after_context();
    return st;
  };
  status = run();
  const bool written = dump();

  std::printf("%s on %s (%s)\n", o.label.c_str(), device.c_str(), o.backend.c_str());
  std::printf("%9s  %-9s  %12s  %12s  %10s  %10s  %8s  %6s  %10s  %12s\n", "context", "fill",
              "MiB acct", "MiB meas", "b1 ms/tok", "synth ms", "max sess", "batch", "step ms",
              "batch tok/s");
  for (const std::string& line : table) std::printf("%s\n", line.c_str());
  std::fflush(stdout);

  if (!written) {
    std::fprintf(stderr, "hyla-context-scaling: cannot write %s\n", o.json_path.c_str());
    return 1;
  }
  if (!status.ok()) {
    std::fprintf(stderr, "hyla-context-scaling: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace hyla

int main(int argc, char** argv) { return hyla::Main(argc, argv); }
