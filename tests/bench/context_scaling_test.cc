// hyla-context-scaling on the CPU backend with generated tiny models: the JSON it writes, the
// memory a session holds as context grows (constant for recurrent models, growing for softmax,
// bounded for a sliding window), synthetic fill against the StateLayout accounting, and the
// budget arithmetic. Runs the real binary (HYLA_CONTEXT_SCALING_BIN) as a subprocess.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/json.h"
#include "runtime/state/state_layout.h"
#include "tools/model_generator.h"

namespace hyla {
namespace {

namespace fs = std::filesystem;
using tools::GenerateModel;
using tools::GeneratorOptions;
using tools::PresetShape;

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

struct RunResult {
  int exit_code = -1;
  std::string out, err;
  JsonValue json;  // null when no JSON was written
};

class ContextScalingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "/hyla_context_scaling_", getpid()));
    fs::create_directories(*dir_);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  // Generates (once per suite) a model of `family`/`preset`, optionally with a softmax window.
  static std::string Model(Family family, const std::string& preset, int attn_window = 0) {
    const std::string dir =
        absl::StrCat(*dir_, "/", FamilyName(family), "-", preset, "-w", attn_window);
    if (fs::exists(dir + "/model.safetensors")) return dir;
    GeneratorOptions o;
    o.shape = *PresetShape(family, preset);
    o.shape.attn_window_size = attn_window;
    o.seed = 3;
    const absl::Status st = GenerateModel(o, dir);
    EXPECT_TRUE(st.ok()) << st;
    return dir;
  }

  static RunResult Run(const std::vector<std::string>& args) {
    static int counter = 0;
    const std::string base = absl::StrCat(*dir_, "/run", ++counter);
    std::vector<std::string> quoted = {ShellQuote(HYLA_CONTEXT_SCALING_BIN)};
    for (const std::string& a : args) quoted.push_back(ShellQuote(a));
    quoted.push_back("--json");
    quoted.push_back(ShellQuote(base + ".json"));
    const std::string cmd =
        absl::StrCat(absl::StrJoin(quoted, " "), " >", ShellQuote(base + ".out"), " 2>",
                     ShellQuote(base + ".err"), " </dev/null");
    RunResult r;
    const int status = std::system(cmd.c_str());
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = ReadFile(base + ".out");
    r.err = ReadFile(base + ".err");
    if (fs::exists(base + ".json")) {
      absl::StatusOr<JsonValue> j = ParseJson(ReadFile(base + ".json"));
      EXPECT_TRUE(j.ok()) << j.status();
      if (j.ok()) r.json = *j;
    }
    return r;
  }

  // The common flags: the CPU backend (also in CUDA builds, whose default is cuda), small
  // contexts, a small budget, few steps, 2 threads.
  static std::vector<std::string> Args(const std::string& model, const std::string& contexts,
                                       std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {
        "--model",        model, "--contexts",     contexts, "--memory-budget-mib", "4",
        "--max-batch",    "8",   "--decode-steps", "3",      "--batch-steps",       "2",
        "--warmup-steps", "1",   "--threads",      "2",      "--backend",           "cpu"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  static std::string* dir_;
};
std::string* ContextScalingTest::dir_ = nullptr;

const JsonValue& Get(const JsonValue& v, const std::string& path) {
  const JsonValue* cur = &v;
  for (absl::string_view key : absl::StrSplit(path, '.')) {
    const JsonValue* next = cur->Find(key);
    if (next == nullptr) {
      ADD_FAILURE() << "missing JSON field " << path;
      static const JsonValue kNull;
      return kNull;
    }
    cur = next;
  }
  return *cur;
}

int64_t Int(const JsonValue& v, const std::string& path) {
  const JsonValue& x = Get(v, path);
  EXPECT_TRUE(x.is_number()) << path;
  return static_cast<int64_t>(x.number_value());
}

double Num(const JsonValue& v, const std::string& path) { return Get(v, path).number_value(); }

const std::vector<JsonValue>& Contexts(const RunResult& r) {
  return Get(r.json, "contexts").array_items();
}

// Every field the plots and docs/performance.md read, on every measured context.
void ExpectCompleteRecord(const RunResult& r, int max_batch) {
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(r.json.is_object()) << r.err;
  EXPECT_EQ(Get(r.json, "tool").string_value(), "hyla-context-scaling");
  EXPECT_EQ(Int(r.json, "schema"), 1);
  EXPECT_EQ(Get(r.json, "backend").string_value(), "cpu");
  EXPECT_EQ(r.json.Find("error"), nullptr);
  EXPECT_FALSE(Get(r.json, "date_utc").string_value().empty());
  EXPECT_GT(Int(r.json, "model.parameters"), 0);
  EXPECT_FALSE(Get(r.json, "options.command").string_value().empty());
  const double budget = Num(r.json, "options.memory_budget_bytes");
  EXPECT_EQ(budget, 4.0 * 1048576.0);
  for (const JsonValue& c : Contexts(r)) {
    SCOPED_TRACE(Int(c, "context"));
    ASSERT_TRUE(Get(c, "fits").bool_value());
    EXPECT_GT(Num(c, "decode_b1.step_ms.mean"), 0);
    EXPECT_EQ(Int(c, "decode_b1.step_ms.n"), 3);
    EXPECT_LE(Num(c, "decode_b1.step_ms.min"), Num(c, "decode_b1.step_ms.p50"));
    EXPECT_LE(Num(c, "decode_b1.step_ms.p50"), Num(c, "decode_b1.step_ms.p90"));
    EXPECT_LE(Num(c, "decode_b1.step_ms.p90"), Num(c, "decode_b1.step_ms.max"));
    EXPECT_GT(Num(c, "decode_b1.tokens_per_s"), 0);
    EXPECT_EQ(Int(c, "memory.session_bytes_measured"),
              Int(c, "memory.slot_bytes") + Int(c, "memory.kv_bytes_measured"));
    const int64_t planned = Int(c, "budget.session_bytes_planned");
    const int64_t max_sessions = Int(c, "budget.max_sessions");
    const int64_t batch = Int(c, "budget.batch");
    // The most sessions: the largest count whose planned bytes fit the budget.
    EXPECT_LE(static_cast<double>(max_sessions * planned), budget);
    EXPECT_GT(static_cast<double>((max_sessions + 1) * planned), budget);
    EXPECT_EQ(batch, std::min<int64_t>(max_sessions, max_batch));
    EXPECT_EQ(Get(c, "budget.capped").bool_value(), max_sessions > max_batch);
    EXPECT_FALSE(Get(c, "budget.pool_exhausted").bool_value());
    EXPECT_EQ(Int(c, "budget.batch_run"), batch);
    EXPECT_EQ(Int(c, "budget.step_ms.n"), 2);
    EXPECT_NEAR(Num(c, "budget.tokens_per_s"), batch * 1e3 / Num(c, "budget.step_ms.mean"),
                1e-3 * Num(c, "budget.tokens_per_s"));
    // What the pool really holds per session fits the budget too.
    EXPECT_LE(Num(c, "budget.pool_bytes_per_session_after_steps") * static_cast<double>(batch),
              budget);
    if (max_sessions >= 2) {
      EXPECT_GT(Num(c, "decode_b1_synthetic.step_ms.mean"), 0);
    }
  }
}

TEST_F(ContextScalingTest, RecurrentMemoryIsConstantSoftmaxMemoryGrows) {
  const std::string contexts = "64,256,1024";
  const RunResult nha = Run(Args(Model(Family::kNha, "tiny"), contexts));
  const RunResult gdn = Run(Args(Model(Family::kGdn, "tiny"), contexts));
  const RunResult llama = Run(Args(Model(Family::kLlama, "tiny"), contexts));
  ExpectCompleteRecord(nha, 8);
  ExpectCompleteRecord(gdn, 8);
  ExpectCompleteRecord(llama, 8);
  ASSERT_EQ(Contexts(nha).size(), 3u);
  ASSERT_EQ(Contexts(gdn).size(), 3u);
  ASSERT_EQ(Contexts(llama).size(), 3u);

  for (const RunResult* r : {&nha, &gdn}) {
    const int64_t slot = Int(r->json, "model.slot_bytes");
    EXPECT_GT(slot, 0);
    for (const JsonValue& c : Contexts(*r)) {
      EXPECT_EQ(Get(c, "fill.fill").string_value(), "prefill");
      EXPECT_EQ(Int(c, "memory.kv_blocks_measured"), 0);
      EXPECT_EQ(Int(c, "memory.session_bytes_measured"), slot);  // the same at every context
      EXPECT_EQ(Int(c, "memory.session_bytes_accounting"), slot);
      EXPECT_EQ(Int(c, "budget.max_sessions"), Int(Contexts(*r)[0], "budget.max_sessions"));
    }
  }

  // Llama: one block per 64 tokens in each of its 4 layers, measured = accounting, growing.
  const int64_t block = Int(llama.json, "model.block_bytes");
  ASSERT_GT(block, 0);
  int64_t prev_bytes = 0, prev_sessions = INT64_MAX;
  for (const JsonValue& c : Contexts(llama)) {
    const int64_t ctx = Int(c, "context");
    EXPECT_EQ(Int(c, "memory.kv_blocks_measured"), 4 * ((ctx + 63) / 64));
    EXPECT_EQ(Int(c, "memory.session_bytes_measured"), Int(c, "memory.session_bytes_accounting"));
    EXPECT_GT(Int(c, "memory.session_bytes_measured"), prev_bytes);
    EXPECT_LE(Int(c, "budget.max_sessions"), prev_sessions);
    prev_bytes = Int(c, "memory.session_bytes_measured");
    prev_sessions = Int(c, "budget.max_sessions");
  }
  EXPECT_LT(Int(Contexts(llama)[2], "budget.max_sessions"),
            Int(Contexts(llama)[0], "budget.max_sessions"));
}

TEST_F(ContextScalingTest, SyntheticFillMatchesTheAccounting) {
  // A GDN hybrid whose softmax layer has a 128-token window: real prefill to 256, synthetic
  // beyond; the window bounds the KV, so the session stops growing once past it.
  const RunResult w = Run(
      Args(Model(Family::kGdn, "tiny-hybrid", 128), "64,256,1024,4096", {"--prefill-max", "256"}));
  ExpectCompleteRecord(w, 8);
  const std::vector<JsonValue>& c = Contexts(w);
  ASSERT_EQ(c.size(), 4u);
  EXPECT_EQ(Get(c[1], "fill.fill").string_value(), "prefill");
  EXPECT_EQ(Get(c[2], "fill.fill").string_value(), "synthetic");
  EXPECT_EQ(Get(c[3], "fill.fill").string_value(), "synthetic");
  EXPECT_EQ(Get(c[3], "decode_b1.session").string_value(), "synthetic");
  for (const JsonValue& x : c) {
    EXPECT_EQ(Int(x, "memory.kv_blocks_measured"), Int(x, "memory.kv_blocks_accounting"));
  }
  EXPECT_EQ(Int(c[2], "memory.session_bytes_measured"), Int(c[3], "memory.session_bytes_measured"));
  EXPECT_LT(Int(c[2], "memory.session_bytes_measured"),
            Int(c[2], "memory.softmax_equivalent_bytes"));

  // NAtS-L, synthetic from the start with ρ = 0.25: exactly the accounting's blocks; the
  // pool's per-session bytes in the batch equal the planned session bytes.
  const RunResult n = Run(Args(Model(Family::kNatsl, "tiny"), "256,1024,4096",
                               {"--prefill-max", "0", "--softmax-fraction", "0.25"}));
  ExpectCompleteRecord(n, 8);
  int64_t prev = 0;
  for (const JsonValue& x : Contexts(n)) {
    EXPECT_EQ(Get(x, "fill.fill").string_value(), "synthetic");
    EXPECT_EQ(Num(x, "memory.softmax_fraction"), 0.25);
    EXPECT_EQ(Int(x, "memory.kv_blocks_measured"), Int(x, "memory.kv_blocks_accounting"));
    EXPECT_LT(Int(x, "memory.kv_bytes_measured"), Int(x, "memory.softmax_equivalent_bytes"));
    EXPECT_GT(Int(x, "memory.session_bytes_measured"), prev);  // ρ > 0: grows with context
    prev = Int(x, "memory.session_bytes_measured");
  }
}

TEST_F(ContextScalingTest, NatslRealPrefillMeasuresItsRouting) {
  const RunResult r = Run(Args(Model(Family::kNatsl, "tiny"), "256,1024"));
  ExpectCompleteRecord(r, 8);
  const int64_t routed =
      Int(r.json, "routing_prefill.to_softmax") + Int(r.json, "routing_prefill.to_gdn");
  EXPECT_GT(routed, 0);
  const double rho =
      static_cast<double>(Int(r.json, "routing_prefill.to_softmax")) / static_cast<double>(routed);
  EXPECT_DOUBLE_EQ(Num(Contexts(r)[1], "memory.softmax_fraction"), rho);
}

TEST_F(ContextScalingTest, StopsWhereOneSessionExceedsTheBudget) {
  // Llama tiny holds 4 × 16 KiB per 64 tokens (fp32): 4096 tokens = 4 MiB > the 4 MiB budget.
  const RunResult r = Run(Args(Model(Family::kLlama, "tiny"), "256,4096,8192"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<JsonValue>& c = Contexts(r);
  ASSERT_EQ(c.size(), 2u);  // 8192 is not tried
  EXPECT_TRUE(Get(c[0], "fits").bool_value());
  EXPECT_FALSE(Get(c[1], "fits").bool_value());
  EXPECT_GT(static_cast<double>(Int(c[1], "session_bytes_planned")), 4.0 * 1048576.0);
}

// --fixed-batch: a batch of exactly N sessions per context and logits mode, with the roofline
// bytes of the step recomputed here from the StateLayout accounting and the model's shape.
TEST_F(ContextScalingTest, FixedBatchRooflineFollowsTheAccounting) {
  const std::string model = Model(Family::kGdn, "tiny-hybrid");
  const RunResult r = Run(Args(model, "100,300",
                               {"--fixed-batch", "5", "--no-batch", "--copy-gbps", "10",
                                "--prefill-max", "0", "--fixed-batch-logits", "none,last,sample"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(r.json.is_object()) << r.err;
  EXPECT_EQ(Num(r.json, "copy_bandwidth.gbps"), 10.0);
  absl::StatusOr<ModelConfig> config = Checkpoint::ReadConfig(model);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<StateLayout> layout = StateLayout::Create(*config, DType::kF32);
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_GT(layout->num_streams(), 0);
  ASSERT_FALSE(config->tie_word_embeddings);
  const int64_t n = 5;
  const int64_t params = Int(r.json, "model.parameters");
  const int64_t embed = int64_t{config->vocab_size} * config->hidden_size * 4;
  ASSERT_EQ(Contexts(r).size(), 2u);
  for (const JsonValue& c : Contexts(r)) {
    SCOPED_TRACE(Int(c, "context"));
    EXPECT_EQ(Int(c, "fixed_batch.batch"), n);
    EXPECT_EQ(c.Find("fixed_batch")->Find("error"), nullptr);
    const std::vector<JsonValue>& modes = Get(c, "fixed_batch.modes").array_items();
    ASSERT_EQ(modes.size(), 3u);
    const char* names[] = {"none", "last", "sample"};
    for (int i = 0; i < 3; ++i) {
      SCOPED_TRACE(names[i]);
      const JsonValue& m = modes[static_cast<size_t>(i)];
      EXPECT_EQ(Get(m, "logits").string_value(), names[i]);
      EXPECT_FALSE(Get(m, "sampled_on_device").bool_value());  // the CPU backend
      EXPECT_EQ(Int(m, "step_ms.n"), 2);
      const double mean = Num(m, "step_ms.mean");
      ASSERT_GT(mean, 0);
      EXPECT_NEAR(Num(m, "tokens_per_s"), n * 1e3 / mean, 1e-3 * Num(m, "tokens_per_s"));
      const int64_t ctx = Int(m, "mean_context");
      EXPECT_GE(ctx, Int(c, "context"));
      // Weights: all but the embedding table (gathered rows only) and, without logits, the LM
      // head; slots read and written; every visible key read and the new one written.
      const int64_t weights =
          params * 4 - embed - (i == 0 ? embed : 0) + n * int64_t{config->hidden_size} * 4;
      int64_t kv = 0;
      for (const KvStream& ks : layout->streams()) kv += (ctx + 1) * ks.token_bytes;
      const int64_t logits = i == 0 ? 0 : (i == 1 ? 1 : 2) * n * config->vocab_size * 4;
      EXPECT_EQ(Int(m, "roofline_bytes.weights"), weights);
      EXPECT_EQ(Int(m, "roofline_bytes.state"), n * 2 * layout->slot_bytes());
      EXPECT_EQ(Int(m, "roofline_bytes.kv"), n * kv);
      EXPECT_EQ(Int(m, "roofline_bytes.logits"), logits);
      const int64_t total = weights + n * 2 * layout->slot_bytes() + n * kv + logits;
      EXPECT_EQ(Int(m, "roofline_bytes.total"), total);
      EXPECT_NEAR(Num(m, "roofline_ms"), static_cast<double>(total) / 1e7, 1e-6);
      EXPECT_NEAR(Num(m, "roofline_fraction"), Num(m, "roofline_ms") / mean, 1e-4);
    }
  }
  // Without --copy-gbps the bandwidth is measured (a memcpy on the CPU).
  const RunResult measured = Run(Args(model, "64", {"--fixed-batch", "2", "--no-batch"}));
  ASSERT_EQ(measured.exit_code, 0) << measured.err;
  EXPECT_GT(Num(measured.json, "copy_bandwidth.gbps"), 0);
  EXPECT_EQ(Get(Contexts(measured)[0], "fixed_batch.modes").array_items().size(), 3u);
}

TEST_F(ContextScalingTest, UsageErrors) {
  const std::string m = Model(Family::kGdn, "tiny");
  EXPECT_EQ(Run({"--model", m, "--bogus", "1"}).exit_code, 2);
  EXPECT_EQ(Run({"--model", m, "--backend", "tpu"}).exit_code, 2);
  EXPECT_EQ(Run({"--contexts", "64"}).exit_code, 2);  // no --model
  EXPECT_EQ(Run({"--model", m, "--contexts", "256,64"}).exit_code, 2);
  EXPECT_EQ(Run({"--model", m, "--softmax-fraction", "2"}).exit_code, 2);
  EXPECT_EQ(Run({"--model", m, "--decode-logits", "all"}).exit_code, 2);
  EXPECT_EQ(Run({"--model", m, "--fixed-batch-logits", "none,bogus"}).exit_code, 2);
  EXPECT_EQ(Run({"--model", m, "--copy-gbps", "0"}).exit_code, 2);
  EXPECT_EQ(Run({"--model", m, "--fixed-batch", "-1"}).exit_code, 2);
  const RunResult missing = Run({"--model", *dir_ + "/no-such-model", "--backend", "cpu"});
  EXPECT_EQ(missing.exit_code, 1);
  ASSERT_TRUE(missing.json.is_object());  // the JSON is written with the error
  EXPECT_NE(missing.json.Find("error"), nullptr);
#if !HYLA_CONTEXT_SCALING_HAS_CUDA
  const RunResult cuda = Run({"--model", m, "--backend", "cuda", "--contexts", "64"});
  EXPECT_EQ(cuda.exit_code, 1);
  EXPECT_THAT(cuda.err, ::testing::HasSubstr("no CUDA backend"));
#endif
}

// The generator's --threads (added for the device runs' 8B models) writes the same bytes.
TEST_F(ContextScalingTest, GeneratorThreadsWriteTheSameBytes) {
  for (const auto& [family, preset] : std::vector<std::pair<Family, std::string>>{
           {Family::kNatsl, "tiny"}, {Family::kGdn, "tiny-hybrid"}}) {
    std::vector<std::string> files;
    for (int threads : {1, 4}) {
      GeneratorOptions o;
      o.shape = *PresetShape(family, preset);
      o.shape.dtype = DType::kBF16;
      o.seed = 11;
      o.threads = threads;
      const std::string dir = absl::StrCat(*dir_, "/gen-", preset, "-t", threads);
      ASSERT_TRUE(GenerateModel(o, dir).ok());
      files.push_back(ReadFile(dir + "/model.safetensors"));
    }
    EXPECT_GT(files[0].size(), 1000u);
    EXPECT_TRUE(files[0] == files[1]) << preset;
  }
}

}  // namespace
}  // namespace hyla
