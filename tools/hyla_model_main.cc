// hyla-model: offline model tooling.
//
//   hyla-model info           memory plan of a checkpoint from its config.json alone
//   hyla-model logits         logits of a token sequence (CPU backend) as a .npy file
//   hyla-model generate       stream a sampled continuation of a prompt to stdout
//   hyla-model generate-model write a random checkpoint (or its config.json) of any family
//
// Exit codes: 0 success, 1 runtime failure (bad checkpoint, I/O, model error), 2 usage error.
// Flags are "--name value" or "--name=value"; "--" ends the flags.
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
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
#include "runtime/base/status_macros.h"
#include "runtime/cpu/cpu_backend.h"
#ifdef HYLA_HAVE_CUDA_BACKEND
#include "runtime/cuda/cuda_backend.h"
#endif
#include "runtime/engine/sampling.h"
#include "runtime/engine/sequence_runner.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/config.h"
#include "runtime/model/tokenizer.h"
#include "runtime/state/state_layout.h"
#include "tools/default_model.h"
#include "tools/model_generator.h"
#include "tools/model_tensors.h"

namespace hyla::tools {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

// ---------------------------------------------------------------------------------------------
// Flag parsing.

struct FlagSpec {
  const char* name;  // without the leading "--"
  bool takes_value;
};

struct Args {
  std::map<std::string, std::string> values;  // flags with a value
  std::set<std::string> switches;             // flags without one
  std::vector<std::string> positional;

  bool Has(const std::string& name) const { return values.count(name) || switches.count(name); }
  std::optional<std::string> Get(const std::string& name) const {
    auto it = values.find(name);
    if (it == values.end()) return std::nullopt;
    return it->second;
  }
};

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv,
                               const std::vector<FlagSpec>& specs) {
  Args args;
  bool flags_done = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (flags_done || a.size() < 2 || a.compare(0, 2, "--") != 0) {
      args.positional.push_back(a);
      continue;
    }
    if (a == "--") {
      flags_done = true;
      continue;
    }
    std::string name = a.substr(2);
    std::optional<std::string> inline_value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& s : specs) {
      if (name == s.name) spec = &s;
    }
    if (spec == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (args.Has(name)) return absl::InvalidArgumentError(absl::StrCat("--", name, " given twice"));
    if (!spec->takes_value) {
      if (inline_value.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      }
      args.switches.insert(name);
      continue;
    }
    if (inline_value.has_value()) {
      args.values[name] = *inline_value;
    } else if (i + 1 < argv.size()) {
      args.values[name] = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
    }
  }
  return args;
}

absl::StatusOr<int64_t> ParseInt(const std::string& flag, const std::string& text) {
  int64_t v;
  if (!absl::SimpleAtoi(text, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": \"", text, "\" is not an integer"));
  }
  return v;
}

absl::StatusOr<double> ParseDouble(const std::string& flag, const std::string& text) {
  double v;
  if (!absl::SimpleAtod(text, &v) || !std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": \"", text, "\" is not a number"));
  }
  return v;
}

absl::StatusOr<std::vector<int64_t>> ParseIntList(const std::string& flag,
                                                  const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int64_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": \"", part, "\" is not an integer (expected N,N,...)"));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<DType> ParseDTypeFlag(const std::string& flag, const std::string& text) {
  if (text == "f32" || text == "float32") return DType::kF32;
  if (text == "bf16" || text == "bfloat16") return DType::kBF16;
  if (text == "f16" || text == "float16") return DType::kF16;
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag, ": \"", text, "\" is not a dtype (expected f32, bf16 or f16)"));
}

// Prints `message` for a usage error and returns 2.
int Usage(const char* command, absl::string_view message) {
  std::fprintf(stderr, "hyla-model %s: %.*s\nRun 'hyla-model %s --help' for usage.\n", command,
               static_cast<int>(message.size()), message.data(), command);
  return kExitUsage;
}

int Failure(const char* command, const absl::Status& status) {
  const std::string s = status.ToString();
  std::fprintf(stderr, "hyla-model %s: %s\n", command, s.c_str());
  return kExitFailure;
}

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
      case '\r':
        out += "\\r";
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

// Shortest text that reads back as `v`, always with a fraction or exponent ("1.0", "0.3").
std::string JsonDouble(double v) {
  std::string s;
  for (int digits = 1; digits <= 17; ++digits) {
    s = absl::StrFormat("%.*g", digits, v);
    if (std::strtod(s.c_str(), nullptr) == v) break;
  }
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string HumanBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  if (b < 1024.0 * 1024) return absl::StrFormat("%.2f KiB", b / 1024);
  if (b < 1024.0 * 1024 * 1024) return absl::StrFormat("%.2f MiB", b / (1024.0 * 1024));
  return absl::StrFormat("%.2f GiB", b / (1024.0 * 1024 * 1024));
}

std::string Grouped(int64_t n) {  // 1234567 -> "1,234,567"
  std::string digits = absl::StrCat(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

int DefaultThreads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 2 : static_cast<int>(std::min(n, 16u));
}

// --threads of the logits and generate commands: [1, 256], default DefaultThreads().
absl::StatusOr<int> ParseThreads(const Args& args) {
  if (auto t = args.Get("threads")) {
    absl::StatusOr<int64_t> parsed = ParseInt("threads", *t);
    if (!parsed.ok()) return parsed.status();
    if (*parsed < 1 || *parsed > 256) {
      return absl::InvalidArgumentError("--threads must be in [1, 256]");
    }
    return static_cast<int>(*parsed);
  }
  return DefaultThreads();
}

// --device and --precision of the logits and generate commands.
struct DeviceChoice {
  std::string device = "cpu";      // cpu | cuda
  std::string precision = "fp32";  // cuda: fp32 | bf16
};

absl::StatusOr<DeviceChoice> ParseDeviceChoice(const Args& args) {
  DeviceChoice c;
  if (auto d = args.Get("device")) c.device = std::string(*d);
  if (auto p = args.Get("precision")) c.precision = std::string(*p);
  if (c.device != "cpu" && c.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device: \"", c.device, "\" is not a device (expected cpu or cuda)"));
  }
  if (c.precision != "fp32" && c.precision != "bf16") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--precision: \"", c.precision, "\" is not a precision (expected fp32 or bf16)"));
  }
  if (c.device == "cpu" && c.precision != "fp32") {
    return absl::InvalidArgumentError("--precision bf16 needs --device cuda (the CPU is fp32)");
  }
  return c;
}

// A backend over `dir` with one sequence slot and enough KV blocks for `max_tokens`: the CPU
// reference, or with --device cuda the CUDA backend on GPU 0.
absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(const std::string& dir, int64_t max_tokens,
                                                     int threads, const DeviceChoice& device) {
  HYLA_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ck, Checkpoint::Open(dir));
  HYLA_ASSIGN_OR_RETURN(StateLayout layout, StateLayout::Create(ck->config(), DType::kF32));
  StateStoreOptions store;
  store.num_slots = 1;
  // Every stream may hold one extra block while a window slides or a chunk is being decided.
  store.num_blocks =
      std::max<int64_t>(1, layout.KvBlocksAt(max_tokens, 1.0) + 2 * layout.num_streams());
  if (device.device == "cuda") {
#ifdef HYLA_HAVE_CUDA_BACKEND
    cuda::CudaBackendOptions o;
    o.precision = device.precision == "bf16" ? cuda::Precision::kBf16 : cuda::Precision::kF32;
    o.store = store;
    o.max_step_tokens = std::max<int64_t>(64, max_tokens);
    o.max_step_seqs = 1;
    HYLA_ASSIGN_OR_RETURN(std::unique_ptr<cuda::CudaBackend> b,
                          cuda::CudaBackend::Create(std::move(ck), o));
    return std::unique_ptr<Backend>(std::move(b));
#else
    return absl::FailedPreconditionError(
        "--device cuda: this build has no CUDA backend (nvcc was not found at build time)");
#endif
  }
  cpu::CpuBackendOptions o;
  o.num_threads = threads;
  o.store = store;
  HYLA_ASSIGN_OR_RETURN(std::unique_ptr<cpu::CpuBackend> b,
                        cpu::CpuBackend::Create(std::move(ck), o));
  return std::unique_ptr<Backend>(std::move(b));
}

// ---------------------------------------------------------------------------------------------
// info

constexpr char kInfoHelp[] = R"(Usage: hyla-model info --model DIR [--context N[,N...]] [--json]
                       [--kv-dtype f32|bf16|f16] [--softmax-fraction R]

Prints what a checkpoint costs to serve, from its config.json alone (no weights are read):
family, model type, per-layer kinds, parameter count (from the config's tensor shapes), the
per-sequence state slot (constant in context), the KV block size, and for each context length
the KV blocks and bytes a sequence holds, the total, and the "softmax-equivalent" bytes a
full-attention model with the same attention shapes would hold.

  --model DIR            checkpoint directory (config.json)
  --context N[,N...]     context lengths in tokens (default 1024,32768,131072)
  --json                 machine-readable output (below)
  --kv-dtype D           KV/window storage dtype (default: the checkpoint's dtype)
  --softmax-fraction R   NAtS-L only: share ρ in [0, 1] of completed 64-token chunks kept as
                         softmax KV (default 1.0 = the worst case, every chunk kept)

JSON output: one object {"model", "family", "model_type", "dtype", "kv_dtype", "parameters",
"vocab_size", "hidden_size", "num_layers", "layers": [kind per layer], "slot_bytes",
"kv_block_tokens", "kv_block_bytes", "kv_streams", "softmax_fraction",
"softmax_fraction_applies", "contexts": [{"context", "slot_bytes", "kv_blocks", "kv_bytes",
"total_bytes", "softmax_equivalent_bytes"}, ...]}; all byte counts are integers.
)";

int RunInfo(const std::vector<std::string>& argv) {
  const char* kCmd = "info";
  absl::StatusOr<Args> args = ParseArgs(argv, {{"model", true},
                                               {"context", true},
                                               {"json", false},
                                               {"kv-dtype", true},
                                               {"softmax-fraction", true},
                                               {"help", false}});
  if (!args.ok()) return Usage(kCmd, args.status().message());
  if (args->Has("help")) {
    std::fputs(kInfoHelp, stdout);
    return kExitOk;
  }
  if (!args->positional.empty()) return Usage(kCmd, "unexpected argument " + args->positional[0]);
  if (!args->Get("model")) return Usage(kCmd, "--model DIR is required");
  const std::string dir = *args->Get("model");

  std::vector<int64_t> contexts = {1024, 32768, 131072};
  if (auto c = args->Get("context")) {
    absl::StatusOr<std::vector<int64_t>> parsed = ParseIntList("context", *c);
    if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
    for (int64_t n : *parsed) {
      if (n < 0) return Usage(kCmd, absl::StrCat("--context: ", n, " is negative"));
    }
    contexts = *parsed;
  }
  double rho = 1.0;
  if (auto r = args->Get("softmax-fraction")) {
    absl::StatusOr<double> parsed = ParseDouble("softmax-fraction", *r);
    if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
    if (*parsed < 0 || *parsed > 1) return Usage(kCmd, "--softmax-fraction must be in [0, 1]");
    rho = *parsed;
  }
  std::optional<DType> kv_dtype;
  if (auto d = args->Get("kv-dtype")) {
    absl::StatusOr<DType> parsed = ParseDTypeFlag("kv-dtype", *d);
    if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
    kv_dtype = *parsed;
  }

  absl::StatusOr<ModelConfig> config = Checkpoint::ReadConfig(dir);
  if (!config.ok()) return Failure(kCmd, config.status());
  const DType kv = kv_dtype.value_or(config->dtype);
  absl::StatusOr<StateLayout> layout = StateLayout::Create(*config, kv);
  if (!layout.ok()) return Failure(kCmd, layout.status());
  const int64_t params = CountParameters(*config);
  bool routed = false;
  for (const KvStream& s : layout->streams()) routed |= s.routed;

  struct Row {
    int64_t context, kv_blocks, kv_bytes, total, softmax_equivalent;
  };
  std::vector<Row> rows;
  for (int64_t n : contexts) {
    Row r;
    r.context = n;
    r.kv_blocks = layout->KvBlocksAt(n, rho);
    r.kv_bytes = layout->KvBytesAt(n, rho);
    r.total = layout->slot_bytes() + r.kv_bytes;
    r.softmax_equivalent = layout->SoftmaxEquivalentBytes(n);
    rows.push_back(r);
  }

  if (args->Has("json")) {
    std::vector<std::string> kinds, ctx;
    for (const LayerConfig& l : config->layers) {
      kinds.push_back(JsonString(LayerKindName(l.kind)));
    }
    for (const Row& r : rows) {
      ctx.push_back(absl::StrFormat(
          "    {\"context\": %d, \"slot_bytes\": %d, \"kv_blocks\": %d, \"kv_bytes\": %d, "
          "\"total_bytes\": %d, \"softmax_equivalent_bytes\": %d}",
          r.context, layout->slot_bytes(), r.kv_blocks, r.kv_bytes, r.total, r.softmax_equivalent));
    }
    std::string out = "{\n";
    absl::StrAppend(&out, "  \"model\": ", JsonString(dir), ",\n");
    absl::StrAppend(&out, "  \"family\": ", JsonString(FamilyName(config->family)), ",\n");
    absl::StrAppend(&out, "  \"model_type\": ", JsonString(config->model_type), ",\n");
    absl::StrAppend(&out, "  \"dtype\": ", JsonString(DTypeName(config->dtype)), ",\n");
    absl::StrAppend(&out, "  \"kv_dtype\": ", JsonString(DTypeName(kv)), ",\n");
    absl::StrAppend(&out, "  \"parameters\": ", params, ",\n");
    absl::StrAppend(&out, "  \"vocab_size\": ", config->vocab_size, ",\n");
    absl::StrAppend(&out, "  \"hidden_size\": ", config->hidden_size, ",\n");
    absl::StrAppend(&out, "  \"num_layers\": ", config->num_layers, ",\n");
    absl::StrAppend(&out, "  \"layers\": [", absl::StrJoin(kinds, ", "), "],\n");
    absl::StrAppend(&out, "  \"slot_bytes\": ", layout->slot_bytes(), ",\n");
    absl::StrAppend(&out, "  \"kv_block_tokens\": ", kBlockTokens, ",\n");
    absl::StrAppend(&out, "  \"kv_block_bytes\": ", layout->block_bytes(), ",\n");
    absl::StrAppend(&out, "  \"kv_streams\": ", layout->num_streams(), ",\n");
    absl::StrAppend(&out, "  \"softmax_fraction\": ", JsonDouble(rho), ",\n");
    absl::StrAppend(&out, "  \"softmax_fraction_applies\": ", routed ? "true" : "false", ",\n");
    absl::StrAppend(&out, "  \"contexts\": [\n", absl::StrJoin(ctx, ",\n"), "\n  ]\n}\n");
    std::fputs(out.c_str(), stdout);
    return kExitOk;
  }

  // Layer kinds: "gdn ×15 (0,1,2,4,...), natsl ×6 (3,7,...)".
  std::vector<std::string> kind_text;
  for (LayerKind k : {LayerKind::kGdn, LayerKind::kNatsl, LayerKind::kNha, LayerKind::kAttention}) {
    std::vector<int> idx;
    for (size_t i = 0; i < config->layers.size(); ++i) {
      if (config->layers[i].kind == k) idx.push_back(static_cast<int>(i));
    }
    if (!idx.empty()) {
      kind_text.push_back(
          absl::StrCat(LayerKindName(k), " x", idx.size(), " [", absl::StrJoin(idx, ","), "]"));
    }
  }
  std::string out;
  absl::StrAppend(&out, "model              ", dir, "\n");
  absl::StrAppend(&out, "family             ", FamilyName(config->family), " (model_type ",
                  config->model_type, ")\n");
  absl::StrAppend(&out, "parameters         ", Grouped(params), " (", DTypeName(config->dtype),
                  " weights: ", HumanBytes(params * DTypeSize(config->dtype)), ")\n");
  absl::StrAppend(&out, "vocab / hidden     ", config->vocab_size, " / ", config->hidden_size,
                  "\n");
  absl::StrAppend(&out, "layers             ", config->num_layers, ": ",
                  absl::StrJoin(kind_text, ", "), "\n");
  absl::StrAppend(&out, "kv dtype           ", DTypeName(kv),
                  kv_dtype.has_value() ? "\n" : " (the checkpoint's dtype)\n");
  absl::StrAppend(&out, "state slot         ", Grouped(layout->slot_bytes()), " bytes (",
                  HumanBytes(layout->slot_bytes()), ") per sequence, constant in context\n");
  absl::StrAppend(&out, "kv streams         ", layout->num_streams(), "; block of ", kBlockTokens,
                  " tokens = ", Grouped(layout->block_bytes()), " bytes\n");
  if (routed) {
    absl::StrAppend(&out, "softmax fraction   ", absl::StrFormat("%g", rho),
                    rho == 1.0 ? " (worst case: every completed NAtS-L chunk kept as softmax KV; "
                                 "set --softmax-fraction for the measured share)\n"
                               : " (share of completed NAtS-L chunks kept as softmax KV)\n");
  }
  absl::StrAppend(&out, "\n",
                  absl::StrFormat("%10s %10s %14s %14s %14s %16s\n", "context", "kv_blocks", "kv",
                                  "slot", "total", "softmax_equiv"));
  for (const Row& r : rows) {
    absl::StrAppend(&out, absl::StrFormat("%10d %10d %14s %14s %14s %16s\n", r.context, r.kv_blocks,
                                          HumanBytes(r.kv_bytes), HumanBytes(layout->slot_bytes()),
                                          HumanBytes(r.total), HumanBytes(r.softmax_equivalent)));
  }
  std::fputs(out.c_str(), stdout);
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// logits

constexpr char kLogitsHelp[] =
    R"(Usage: hyla-model logits --model DIR --ids I,J,K [--chunks A,B,...] --out FILE.npy
                         [--threads N] [--device cpu|cuda] [--precision fp32|bf16]

Runs the CPU backend (or with --device cuda the CUDA backend) over the token ids (one fresh sequence) and writes the logits of every
position as a float32 NumPy array (.npy format 1.0) of shape [T, vocab_size].

  --model DIR      checkpoint directory
  --ids I,J,K      token ids
  --chunks A,B     feed the ids in calls of these sizes (must sum to T; default: one call)
  --out FILE.npy   output file
  --threads N      CPU threads (default: the machine's cores, at most 16)
  --device D       cpu (the reference, default) or cuda (GPU 0)
  --precision P    with --device cuda: fp32 (default, exact) or bf16 (weights and KV)
)";

absl::Status WriteNpyF32(const std::string& path, const std::vector<float>& data, int64_t rows,
                         int64_t cols) {
  std::string header =
      absl::StrFormat("{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols);
  // Magic (6) + version (2) + header length (2) + header, padded with spaces and ended by '\n'
  // so that the data starts 64-byte aligned (as NumPy writes it).
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  out += header;
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return absl::InternalError(absl::StrCat(path, ": cannot open for writing"));
  f.write(out.data(), static_cast<std::streamsize>(out.size()));
  // float32 little-endian: the host layout on every platform hyla builds for (x86-64, aarch64).
  f.write(reinterpret_cast<const char*>(data.data()),
          static_cast<std::streamsize>(data.size() * sizeof(float)));
  f.close();
  if (!f) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

int RunLogits(const std::vector<std::string>& argv) {
  const char* kCmd = "logits";
  absl::StatusOr<Args> args = ParseArgs(argv, {{"model", true},
                                               {"ids", true},
                                               {"chunks", true},
                                               {"out", true},
                                               {"threads", true},
                                               {"device", true},
                                               {"precision", true},
                                               {"help", false}});
  if (!args.ok()) return Usage(kCmd, args.status().message());
  if (args->Has("help")) {
    std::fputs(kLogitsHelp, stdout);
    return kExitOk;
  }
  if (!args->positional.empty()) return Usage(kCmd, "unexpected argument " + args->positional[0]);
  for (const char* required : {"model", "ids", "out"}) {
    if (!args->Get(required)) return Usage(kCmd, absl::StrCat("--", required, " is required"));
  }
  absl::StatusOr<std::vector<int64_t>> ids64 = ParseIntList("ids", *args->Get("ids"));
  if (!ids64.ok()) return Usage(kCmd, ids64.status().message());
  std::vector<int32_t> ids;
  for (int64_t v : *ids64) {
    if (v < 0 || v > INT32_MAX)
      return Usage(kCmd, absl::StrCat("--ids: ", v, " is not a token id"));
    ids.push_back(static_cast<int32_t>(v));
  }
  std::vector<int64_t> chunks;
  if (auto c = args->Get("chunks")) {
    absl::StatusOr<std::vector<int64_t>> parsed = ParseIntList("chunks", *c);
    if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
    int64_t sum = 0;
    for (int64_t n : *parsed) {
      if (n <= 0) return Usage(kCmd, absl::StrCat("--chunks: sizes must be positive, got ", n));
      sum += n;
    }
    if (sum != static_cast<int64_t>(ids.size())) {
      return Usage(kCmd,
                   absl::StrCat("--chunks sum to ", sum, " but --ids has ", ids.size(), " ids"));
    }
    chunks = *parsed;
  }
  absl::StatusOr<int> threads = ParseThreads(*args);
  if (!threads.ok()) return Usage(kCmd, threads.status().message());

  absl::StatusOr<DeviceChoice> device = ParseDeviceChoice(*args);
  if (!device.ok()) return Usage(kCmd, device.status().message());
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      OpenBackend(*args->Get("model"), static_cast<int64_t>(ids.size()), *threads, *device);
  if (!backend.ok()) return Failure(kCmd, backend.status());
  absl::StatusOr<std::vector<float>> logits = RunSequenceLogits(**backend, ids, chunks);
  if (!logits.ok()) return Failure(kCmd, logits.status());
  const int64_t vocab = (*backend)->config().vocab_size;
  absl::Status st =
      WriteNpyF32(*args->Get("out"), *logits, static_cast<int64_t>(ids.size()), vocab);
  if (!st.ok()) return Failure(kCmd, st);
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// generate

constexpr char kGenerateHelp[] =
    R"(Usage: hyla-model generate [--model DIR] [--max-tokens N] [--temperature T]
                           [--top-p P] [--top-k K] [--min-p P] [--repetition-penalty R]
                           [--seed S] [--add-bos] [--ignore-eos] [--threads N]
                           [--device cpu|cuda] [--precision fp32|bf16] PROMPT

Streams a sampled continuation of PROMPT to stdout, token by token (flushed per token, always
valid UTF-8: a character split across tokens is printed once it is complete, ill-formed bytes as
U+FFFD). The prompt is prefilled in one step, then one token is decoded per step.

  --model DIR              checkpoint directory (default: the embedded default model, found
                           through $HYLA_DEFAULT_MODEL, <bin>/../share/hyla/models/default, or
                           the source tree's models/default)
  --max-tokens N           tokens to generate at most (default 64)
  --temperature T          0 = greedy (default 1.0)
  --top-p P, --top-k K, --min-p P, --repetition-penalty R
                           sampling filters (defaults 1.0, 0 = off, 0.0, 1.0)
  --seed S                 sampling seed (default 0); a fixed seed gives the same text
  --add-bos                prepend the model's bos_token_id (default: no BOS, as fla byte-level
                           models are fed raw bytes)
  --ignore-eos             do not stop at the model's eos_token_id
  --threads N              CPU threads (default: the machine's cores, at most 16)
  --device D               cpu (the reference, default) or cuda (GPU 0)
  --precision P            with --device cuda: fp32 (default, exact) or bf16 (weights and KV)

End of sequence: generation stops after --max-tokens, or when the model samples its
eos_token_id (not printed). For the byte-level models (vocab 256) that id is the control byte
STX (2), which never occurs in ordinary text: a model trained with STX as its end-of-document
marker stops there, and a byte model without one just runs to --max-tokens.
)";

int RunGenerate(const std::vector<std::string>& argv) {
  const char* kCmd = "generate";
  absl::StatusOr<Args> args = ParseArgs(argv, {{"model", true},
                                               {"max-tokens", true},
                                               {"temperature", true},
                                               {"top-p", true},
                                               {"top-k", true},
                                               {"min-p", true},
                                               {"repetition-penalty", true},
                                               {"seed", true},
                                               {"add-bos", false},
                                               {"ignore-eos", false},
                                               {"threads", true},
                                               {"device", true},
                                               {"precision", true},
                                               {"help", false}});
  if (!args.ok()) return Usage(kCmd, args.status().message());
  if (args->Has("help")) {
    std::fputs(kGenerateHelp, stdout);
    return kExitOk;
  }
  if (args->positional.empty()) return Usage(kCmd, "PROMPT is required");
  const std::string prompt = absl::StrJoin(args->positional, " ");

  int64_t max_tokens = 64;
  if (auto v = args->Get("max-tokens")) {
    absl::StatusOr<int64_t> parsed = ParseInt("max-tokens", *v);
    if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
    if (*parsed < 0 || *parsed > (int64_t{1} << 24)) {
      return Usage(kCmd, "--max-tokens must be in [0, 16777216]");
    }
    max_tokens = *parsed;
  }
  SamplingParams sp;
  struct FloatFlag {
    const char* name;
    float* field;
  };
  for (const FloatFlag& f :
       {FloatFlag{"temperature", &sp.temperature}, FloatFlag{"top-p", &sp.top_p},
        FloatFlag{"min-p", &sp.min_p}, FloatFlag{"repetition-penalty", &sp.repetition_penalty}}) {
    if (auto v = args->Get(f.name)) {
      absl::StatusOr<double> parsed = ParseDouble(f.name, *v);
      if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
      *f.field = static_cast<float>(*parsed);
    }
  }
  if (auto v = args->Get("top-k")) {
    absl::StatusOr<int64_t> parsed = ParseInt("top-k", *v);
    if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
    if (*parsed < 0 || *parsed > INT32_MAX) return Usage(kCmd, "--top-k must not be negative");
    sp.top_k = static_cast<int>(*parsed);
  }
  if (auto v = args->Get("seed")) {
    uint64_t seed;
    if (!absl::SimpleAtoi(*v, &seed)) return Usage(kCmd, "--seed: not a non-negative integer");
    sp.seed = seed;
  }
  if (absl::Status st = ValidateSamplingParams(sp); !st.ok()) return Usage(kCmd, st.message());
  absl::StatusOr<int> threads = ParseThreads(*args);
  if (!threads.ok()) return Usage(kCmd, threads.status().message());

  std::string dir;
  if (auto m = args->Get("model")) {
    dir = *m;
  } else {
    absl::StatusOr<std::string> found = FindDefaultModelDir();
    if (!found.ok()) return Failure(kCmd, found.status());
    dir = *found;
  }
  absl::StatusOr<ModelConfig> config = Checkpoint::ReadConfig(dir);
  if (!config.ok()) return Failure(kCmd, config.status());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = CreateTokenizerForModel(dir, *config);
  if (!tokenizer.ok()) return Failure(kCmd, tokenizer.status());
  absl::StatusOr<std::vector<int32_t>> prompt_ids = (*tokenizer)->Encode(prompt);
  if (!prompt_ids.ok()) return Failure(kCmd, prompt_ids.status());
  if (args->Has("add-bos")) {
    if ((*tokenizer)->bos_id() < 0)
      return Failure(kCmd, absl::FailedPreconditionError("--add-bos: the model has no BOS id"));
    prompt_ids->insert(prompt_ids->begin(), (*tokenizer)->bos_id());
  }
  if (prompt_ids->empty()) return Usage(kCmd, "PROMPT is empty (give text, or --add-bos)");
  const int32_t eos = args->Has("ignore-eos") ? -1 : (*tokenizer)->eos_id();

  absl::StatusOr<DeviceChoice> device = ParseDeviceChoice(*args);
  if (!device.ok()) return Usage(kCmd, device.status().message());
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      OpenBackend(dir, static_cast<int64_t>(prompt_ids->size()) + max_tokens, *threads, *device);
  if (!backend.ok()) return Failure(kCmd, backend.status());
  Backend& be = **backend;
  absl::StatusOr<std::unique_ptr<SequenceState>> seq = be.store().NewSequence();
  if (!seq.ok()) return Failure(kCmd, seq.status());
  be.ResetSlot((*seq)->slot);

  Sampler sampler(sp, be.config().vocab_size);
  sampler.AddPrompt(*prompt_ids);
  Detokenizer detok(**tokenizer);
  const bool tty = isatty(fileno(stdout)) != 0;
  absl::Status status;
  StepOutput out;
  std::vector<int32_t> feed = *prompt_ids;
  for (int64_t n = 0; n < max_tokens; ++n) {
    SequenceWork w;
    w.seq = seq->get();
    w.tokens = feed;
    w.logits = LogitsMode::kLast;
    status = be.Step(absl::MakeConstSpan(&w, 1), &out);
    if (!status.ok()) break;
    const SampledToken tok = sampler.Sample(
        absl::MakeConstSpan(out.logits.data() + out.row_offset[0] * be.config().vocab_size,
                            static_cast<size_t>(be.config().vocab_size)));
    if (tok.id == eos) break;
    const std::string text = detok.Add(tok.id);
    if (!text.empty()) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    }
    feed.assign(1, tok.id);
  }
  const std::string rest = detok.Flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  if (tty) std::fputc('\n', stdout);
  std::fflush(stdout);
  be.store().Release(std::move(*seq));
  if (!status.ok()) return Failure(kCmd, status);
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// generate-model

constexpr char kGenerateModelHelp[] =
    R"(Usage: hyla-model generate-model --family F [--preset P] [--seed S]
                                 [--dtype f32|bf16|f16] [--config-only] --out DIR
                                 [dimension overrides]

Writes a random checkpoint (config.json + model.safetensors) with the config keys and tensor
names of the authors' code, initialised like the reference (normal std 0.02 projections, A_log =
log U(1,16), dt_bias = softplus⁻¹(logU(1e-3, 0.1)), norms 1), from a fixed seed.

  --family F        natsl | nha | gdn | llama
  --preset P        shape (default tiny):
                      natsl: tiny, small, natsl-340m, natsl-760m
                      nha:   tiny, small, nha-llama3-8b
                      gdn:   tiny, small, tiny-hybrid, qwen3next-1b, qwen3next-1b-twin
                      llama: tiny, small, llama3-8b, natsl-760m-twin
                    tiny/small are byte-vocabulary test models (small = the golden fixtures'
                    shapes); the others are paper-scale (bf16, GBs of weights: use --config-only)
                    (the -twin presets are the all-softmax baselines of issue 5's comparison)
  --seed S          RNG seed (default 0)
  --dtype D         weight dtype (default: the preset's; f32 for tiny/small)
  --config-only     write config.json only
  --threads N       threads drawing the values (default 1; 0: one per hardware thread); the
                    bytes written are the same for any N
  --out DIR         output directory (created)

Dimension overrides (applied to the preset): --vocab-size, --hidden-size, --num-layers,
--intermediate-size, --num-heads, --num-kv-heads, --num-v-heads, --head-dim,
--num-attn-heads (natsl), --gdn-layers L,L,... (natsl), --attn-layers L,L,... (gdn),
--num-slots, --window-size (nha).
)";

int RunGenerateModel(const std::vector<std::string>& argv) {
  const char* kCmd = "generate-model";
  const std::vector<std::string> int_flags = {"vocab-size",        "hidden-size", "num-layers",
                                              "intermediate-size", "num-heads",   "num-kv-heads",
                                              "num-v-heads",       "head-dim",    "num-attn-heads",
                                              "num-slots",         "window-size"};
  std::vector<FlagSpec> specs = {{"family", true},     {"preset", true},       {"seed", true},
                                 {"dtype", true},      {"config-only", false}, {"out", true},
                                 {"gdn-layers", true}, {"attn-layers", true},  {"help", false},
                                 {"threads", true}};
  for (const std::string& f : int_flags) specs.push_back({f.c_str(), true});
  absl::StatusOr<Args> args = ParseArgs(argv, specs);
  if (!args.ok()) return Usage(kCmd, args.status().message());
  if (args->Has("help")) {
    std::fputs(kGenerateModelHelp, stdout);
    return kExitOk;
  }
  if (!args->positional.empty()) return Usage(kCmd, "unexpected argument " + args->positional[0]);
  if (!args->Get("family")) return Usage(kCmd, "--family is required");
  if (!args->Get("out")) return Usage(kCmd, "--out DIR is required");
  absl::StatusOr<Family> family = ParseFamilyName(*args->Get("family"));
  if (!family.ok()) return Usage(kCmd, family.status().message());
  GeneratorOptions o;
  o.preset = args->Get("preset").value_or("tiny");
  absl::StatusOr<ModelShape> shape = PresetShape(*family, o.preset);
  if (!shape.ok()) return Usage(kCmd, shape.status().message());
  o.shape = *shape;
  if (auto v = args->Get("seed")) {
    if (!absl::SimpleAtoi(*v, &o.seed)) return Usage(kCmd, "--seed: not a non-negative integer");
  }
  if (auto v = args->Get("dtype")) {
    absl::StatusOr<DType> parsed = ParseDTypeFlag("dtype", *v);
    if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
    o.shape.dtype = *parsed;
  }
  o.config_only = args->Has("config-only");
  if (auto v = args->Get("threads")) {
    absl::StatusOr<int64_t> parsed = ParseInt("threads", *v);
    if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
    if (*parsed < 0 || *parsed > 1024) return Usage(kCmd, "--threads out of range [0, 1024]");
    o.threads = static_cast<int>(*parsed);
  }
  const std::map<std::string, int*> fields = {{"vocab-size", &o.shape.vocab_size},
                                              {"hidden-size", &o.shape.hidden_size},
                                              {"num-layers", &o.shape.num_layers},
                                              {"intermediate-size", &o.shape.intermediate_size},
                                              {"num-heads", &o.shape.num_heads},
                                              {"num-kv-heads", &o.shape.num_kv_heads},
                                              {"num-v-heads", &o.shape.num_v_heads},
                                              {"head-dim", &o.shape.head_dim},
                                              {"num-attn-heads", &o.shape.num_attn_heads},
                                              {"num-slots", &o.shape.num_slots},
                                              {"window-size", &o.shape.window_size}};
  for (const auto& [name, field] : fields) {
    if (auto v = args->Get(name)) {
      absl::StatusOr<int64_t> parsed = ParseInt(name, *v);
      if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
      if (*parsed < 0 || *parsed > INT32_MAX) return Usage(kCmd, "--" + name + " out of range");
      *field = static_cast<int>(*parsed);
    }
  }
  for (const auto& [name, field] : std::vector<std::pair<std::string, std::vector<int>*>>{
           {"gdn-layers", &o.shape.gdn_layers}, {"attn-layers", &o.shape.attn_layers}}) {
    if (auto v = args->Get(name)) {
      field->clear();
      if (!v->empty()) {
        absl::StatusOr<std::vector<int64_t>> parsed = ParseIntList(name, *v);
        if (!parsed.ok()) return Usage(kCmd, parsed.status().message());
        for (int64_t l : *parsed) field->push_back(static_cast<int>(l));
      }
    }
  }
  if (absl::StatusOr<std::string> cfg = ConfigJsonFor(o.shape); !cfg.ok()) {
    return Usage(kCmd, cfg.status().message());
  }
  absl::Status st = GenerateModel(o, *args->Get("out"));
  if (!st.ok()) return Failure(kCmd, st);
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------

constexpr char kMainHelp[] = R"(Usage: hyla-model COMMAND [flags]

Commands:
  info            memory plan of a checkpoint from its config.json (state slot, KV per context)
  logits          logits of a token sequence on the CPU backend, written as .npy
  generate        stream a sampled continuation of a prompt (default: the embedded model)
  generate-model  write a random checkpoint (or config.json only) of any family and shape

Run 'hyla-model COMMAND --help' for the flags of a command.
Exit codes: 0 success, 1 runtime failure, 2 usage error.
)";

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kMainHelp, stderr);
    return kExitUsage;
  }
  const std::string cmd = argv[1];
  const std::vector<std::string> rest(argv + 2, argv + argc);
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::fputs(kMainHelp, stdout);
    return kExitOk;
  }
  if (cmd == "info") return RunInfo(rest);
  if (cmd == "logits") return RunLogits(rest);
  if (cmd == "generate") return RunGenerate(rest);
  if (cmd == "generate-model") return RunGenerateModel(rest);
  std::fprintf(stderr, "hyla-model: unknown command \"%s\"\n%s", cmd.c_str(), kMainHelp);
  return kExitUsage;
}

}  // namespace
}  // namespace hyla::tools

int main(int argc, char** argv) { return hyla::tools::Main(argc, argv); }
