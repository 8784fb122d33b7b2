// End-to-end tests of the hyla-model binary (HYLA_MODEL_BIN): exit codes, `info --json`,
// `logits` against RunSequenceLogits, `generate` determinism, streaming UTF-8 and the default
// model lookup, `generate-model`.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/engine/sequence_runner.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/json.h"
#include "runtime/model/tokenizer.h"
#include "tools/model_generator.h"

namespace hyla::tools {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
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
  std::string out;
  std::string err;
};

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "/hyla_cli_", getpid()));
    fs::create_directories(*dir_);
    // The model the tests run: the tiny NAtS-L shape (also the default model's).
    GeneratorOptions o;
    o.shape = *PresetShape(Family::kNatsl, "tiny");
    o.seed = 5;
    const absl::Status st = GenerateModel(o, Model());
    ASSERT_TRUE(st.ok()) << st;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static std::string Model() { return *dir_ + "/model"; }
  static std::string Path(const std::string& name) { return *dir_ + "/" + name; }

  // Runs hyla-model with `args` (and `env` assignments, e.g. "HYLA_DEFAULT_MODEL=..."), capturing
  // stdout and stderr.
  static RunResult Run(const std::vector<std::string>& args, const std::string& env = "") {
    std::vector<std::string> quoted;
    for (const std::string& a : args) quoted.push_back(ShellQuote(a));
    const std::string out = Path("stdout"), err = Path("stderr");
    const std::string cmd = absl::StrCat(env.empty() ? "" : env + " ", ShellQuote(HYLA_MODEL_BIN),
                                         " ", absl::StrJoin(quoted, " "), " >", ShellQuote(out),
                                         " 2>", ShellQuote(err), " </dev/null");
    RunResult r;
    const int status = std::system(cmd.c_str());
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = ReadFile(out);
    r.err = ReadFile(err);
    return r;
  }

  static std::string* dir_;
};
std::string* CliTest::dir_ = nullptr;

// --- exit codes and help -------------------------------------------------------------------

TEST_F(CliTest, UsageErrorsExitWith2AndRuntimeErrorsWith1) {
  EXPECT_EQ(Run({}).exit_code, 2);
  EXPECT_EQ(Run({"frobnicate"}).exit_code, 2);
  RunResult r = Run({"info"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, ::testing::HasSubstr("--model"));
  r = Run({"info", "--model", Model(), "--bogus"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, ::testing::HasSubstr("--bogus"));
  EXPECT_EQ(Run({"info", "--model", Model(), "--context", "12,x"}).exit_code, 2);
  EXPECT_EQ(Run({"info", "--model", Model(), "--softmax-fraction", "1.5"}).exit_code, 2);
  EXPECT_EQ(Run({"info", "--model", Model(), "--kv-dtype", "int8"}).exit_code, 2);
  EXPECT_EQ(Run({"logits", "--model", Model(), "--ids", "1,2,3", "--chunks", "1,1", "--out",
                 Path("x.npy")})
                .exit_code,
            2);
  EXPECT_EQ(Run({"generate", "--model", Model()}).exit_code, 2);  // no prompt
  EXPECT_EQ(Run({"generate", "--model", Model(), "--top-p", "0", "hi"}).exit_code, 2);
  EXPECT_EQ(Run({"generate-model", "--family", "natsl", "--preset", "huge", "--out", Path("g")})
                .exit_code,
            2);
  EXPECT_EQ(
      Run({"generate-model", "--family", "natsl", "--num-attn-heads", "3", "--out", Path("g")})
          .exit_code,
      2);

  r = Run({"info", "--model", Path("does-not-exist")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, ::testing::HasSubstr("does-not-exist"));
  // Token id outside the vocabulary: the backend refuses it at run time.
  EXPECT_EQ(Run({"logits", "--model", Model(), "--ids", "1,999", "--out", Path("x.npy")}).exit_code,
            1);
  // --device / --precision of logits and generate.
  r = Run(
      {"logits", "--model", Model(), "--ids", "1,2", "--out", Path("x.npy"), "--device", "tpu"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, ::testing::HasSubstr("--device"));
  r = Run({"generate", "--model", Model(), "--precision", "bf16", "hi"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, ::testing::HasSubstr("--device cuda"));
  r = Run({"generate", "--model", Model(), "--device", "cuda", "--precision", "fp16", "hi"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, ::testing::HasSubstr("--precision"));
}

TEST_F(CliTest, EveryCommandHasHelp) {
  RunResult r = Run({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, ::testing::HasSubstr("generate-model"));
  for (const char* cmd : {"info", "logits", "generate", "generate-model"}) {
    r = Run({cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd;
    EXPECT_THAT(r.out, ::testing::HasSubstr(absl::StrCat("Usage: hyla-model ", cmd))) << cmd;
  }
}

// --- info ----------------------------------------------------------------------------------

int64_t IntKey(const JsonValue& obj, const char* key) {
  const JsonValue* v = obj.Find(key);
  EXPECT_NE(v, nullptr) << key;
  if (v == nullptr) return -1;
  EXPECT_TRUE(v->is_integer()) << key;
  return v->int_value();
}

TEST_F(CliTest, InfoJsonHasTheTinyModelsNumbers) {
  const RunResult r = Run({"info", "--model", Model(), "--context", "0,1,64,1000,4096", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<JsonValue> j = ParseJson(r.out);
  ASSERT_TRUE(j.ok()) << j.status() << "\n" << r.out;

  // Tiny NAtS-L: vocab 256, hidden 64, 4 layers (GDN at 0 and 2), H = 2 GDN heads dk 32 / dv 64
  // (key_dim 64, value_dim 128), Ha = 4 softmax heads d_ak 16 / d_av 32 (G = 2), MLP 128, fp32.
  const int64_t d = 64, kd = 64, vd = 128, h = 2, inter = 128, vocab = 256;
  const int64_t gdn_mixer = 2 * kd * d + vd * d + 2 * h * d + 2 * h + (2 * kd + vd) * 4 + vd * d +
                            64 /*o_norm over dv*/ + d * vd;
  const int64_t natsl_mixer = gdn_mixer - 64 + 2 * 16 /*q,k norm*/ + 2 * h * d /*router*/ +
                              2 * 4 * kd /*mixing weights*/ + 2 * 32 /*two o_norms*/;
  const int64_t block = 2 * d + 3 * inter * d;
  EXPECT_EQ(IntKey(*j, "parameters"),
            2 * vocab * d + d + 2 * (gdn_mixer + block) + 2 * (natsl_mixer + block));
  EXPECT_EQ(IntKey(*j, "parameters"), 269712);

  const int64_t conv = 3 * (2 * kd + vd) * 4, s = h * 32 * 64 * 4;
  const int64_t slot = 2 * (conv + s) + 2 * (conv + 2 * s + 64 /*Σg, padded*/ + d * 4 /*Σx*/);
  EXPECT_EQ(IntKey(*j, "slot_bytes"), slot);
  const int64_t token = 2 /*G*/ * (16 + 32) * 4;  // one stream, one token, fp32
  EXPECT_EQ(IntKey(*j, "kv_block_bytes"), 64 * token);
  EXPECT_EQ(IntKey(*j, "kv_streams"), 2 * h);
  EXPECT_EQ(IntKey(*j, "kv_block_tokens"), 64);
  EXPECT_EQ(IntKey(*j, "vocab_size"), 256);
  EXPECT_EQ(j->Find("family")->string_value(), "natsl");
  EXPECT_EQ(j->Find("model_type")->string_value(), "neural_attention_search_linear_attn_gdn");
  EXPECT_EQ(j->Find("kv_dtype")->string_value(), "F32");  // default: the checkpoint's dtype
  EXPECT_EQ(j->Find("softmax_fraction")->number_value(), 1.0);
  EXPECT_TRUE(j->Find("softmax_fraction_applies")->bool_value());
  const JsonValue* layers = j->Find("layers");
  ASSERT_NE(layers, nullptr);
  ASSERT_EQ(layers->array_items().size(), 4u);
  EXPECT_EQ(layers->array_items()[0].string_value(), "gdn");
  EXPECT_EQ(layers->array_items()[1].string_value(), "natsl");

  const JsonValue* contexts = j->Find("contexts");
  ASSERT_NE(contexts, nullptr);
  ASSERT_EQ(contexts->array_items().size(), 5u);
  const int64_t streams = 2 * h;
  const int64_t equiv_token = 2 * (kd + vd) * 4 + 2 * 4 * (16 + 32) * 4;
  struct Expect {
    int64_t context, blocks_per_stream;
  };
  const std::vector<Expect> expect = {{0, 0}, {1, 1}, {64, 1}, {1000, 16}, {4096, 64}};
  for (size_t i = 0; i < expect.size(); ++i) {
    const JsonValue& c = contexts->array_items()[i];
    EXPECT_EQ(IntKey(c, "context"), expect[i].context);
    EXPECT_EQ(IntKey(c, "slot_bytes"), slot);
    EXPECT_EQ(IntKey(c, "kv_blocks"), streams * expect[i].blocks_per_stream) << i;
    EXPECT_EQ(IntKey(c, "kv_bytes"), streams * expect[i].blocks_per_stream * 64 * token) << i;
    EXPECT_EQ(IntKey(c, "total_bytes"), slot + IntKey(c, "kv_bytes"));
    EXPECT_EQ(IntKey(c, "softmax_equivalent_bytes"), expect[i].context * equiv_token);
  }
}

TEST_F(CliTest, InfoSoftmaxFractionAndKvDtype) {
  const RunResult r = Run({"info", "--model", Model(), "--context", "4096", "--json",
                           "--softmax-fraction", "0.25", "--kv-dtype", "bf16"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<JsonValue> j = ParseJson(r.out);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->Find("kv_dtype")->string_value(), "BF16");
  const JsonValue& c = j->Find("contexts")->array_items().at(0);
  // 4096 tokens = 64 complete chunks; ρ = 0.25 keeps 16 per stream; bf16 tokens of 2·48 values.
  EXPECT_EQ(IntKey(c, "kv_blocks"), 4 * 16);
  EXPECT_EQ(IntKey(c, "kv_bytes"), 4 * 16 * 64 * 2 * 48 * 2);

  const RunResult text = Run({"info", "--model", Model()});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_THAT(text.out, ::testing::HasSubstr("worst case"));
  EXPECT_THAT(text.out, ::testing::HasSubstr("131072"));
}

// --- logits --------------------------------------------------------------------------------

// Parses a float32 .npy v1.0 file; checks the header fields and alignment.
std::vector<float> ReadNpy(const std::string& path, std::vector<int64_t>* shape) {
  const std::string bytes = ReadFile(path);
  EXPECT_GE(bytes.size(), 10u);
  if (bytes.size() < 10) return {};
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const size_t header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
  const std::string header = bytes.substr(10, header_len);
  EXPECT_EQ((10 + header_len) % 64, 0u);
  EXPECT_EQ(header.back(), '\n');
  EXPECT_THAT(header, ::testing::HasSubstr("'descr': '<f4'"));
  EXPECT_THAT(header, ::testing::HasSubstr("'fortran_order': False"));
  const size_t open = header.find("'shape': (");
  EXPECT_NE(open, std::string::npos);
  const size_t close = header.find(')', open);
  shape->clear();
  std::stringstream dims(header.substr(open + 10, close - open - 10));
  std::string item;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(' ') != std::string::npos) shape->push_back(std::stoll(item));
  }
  std::vector<float> data((bytes.size() - 10 - header_len) / 4);
  std::memcpy(data.data(), bytes.data() + 10 + header_len, data.size() * 4);
  return data;
}

TEST_F(CliTest, LogitsNpyEqualsRunSequenceLogits) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 130; ++i) ids.push_back((i * 53 + 7) % 256);
  const std::vector<int64_t> chunks = {64, 1, 1, 30, 34};
  const std::string out = Path("logits.npy");
  const RunResult r = Run({"logits", "--model", Model(), "--ids", absl::StrJoin(ids, ","),
                           "--chunks", absl::StrJoin(chunks, ","), "--out", out, "--threads", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<int64_t> shape;
  const std::vector<float> got = ReadNpy(out, &shape);
  EXPECT_THAT(shape, ::testing::ElementsAre(130, 256));

  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(Model());
  ASSERT_TRUE(ck.ok()) << ck.status();
  cpu::CpuBackendOptions o;
  o.num_threads = 2;
  o.store.num_slots = 1;
  o.store.num_blocks = 64;
  absl::StatusOr<std::unique_ptr<cpu::CpuBackend>> backend =
      cpu::CpuBackend::Create(std::move(ck).value(), o);
  ASSERT_TRUE(backend.ok()) << backend.status();
  absl::StatusOr<std::vector<float>> want = RunSequenceLogits(**backend, ids, chunks);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_EQ(got.size(), want->size());
  // Bitwise: the same computation (the CPU backend's results do not depend on thread split).
  EXPECT_EQ(std::memcmp(got.data(), want->data(), got.size() * 4), 0);
}

// --- generate ------------------------------------------------------------------------------

bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t b = static_cast<uint8_t>(s[i]);
    int n = 0;
    uint32_t cp = 0;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      n = 1;
      cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      n = 2;
      cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      n = 3;
      cp = b & 0x07;
    } else {
      return false;
    }
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const uint8_t c = static_cast<uint8_t>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

TEST_F(CliTest, GenerateIsDeterministicForASeedAndStreamsValidUtf8) {
  const std::vector<std::string> args = {
      "generate", "--model", Model(),         "--max-tokens", "48",
      "--seed",   "11",      "--temperature", "1.0",          "h\xC3\xA9llo \xE2\x82\xAC"};
  const RunResult a = Run(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const RunResult b = Run(args);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_TRUE(IsValidUtf8(a.out));
  EXPECT_FALSE(a.out.empty());
  std::vector<std::string> other = args;
  other[5] = "12";
  const RunResult c = Run(other);
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_TRUE(IsValidUtf8(c.out));
  EXPECT_NE(a.out, c.out);  // 48 near-uniform draws over 256 bytes: a collision is negligible
}

// Greedy decoding equals the argmax continuation computed here by re-running the whole sequence
// each step (no incremental state), decoded with Python's bytes.decode("utf-8", "replace") rule.
TEST_F(CliTest, GreedyGenerateMatchesTheArgmaxContinuation) {
  const std::string prompt = "The quick brown fox";
  const int kTokens = 24;
  const RunResult r = Run({"generate", "--model", Model(), "--max-tokens", absl::StrCat(kTokens),
                           "--temperature", "0", prompt});
  ASSERT_EQ(r.exit_code, 0) << r.err;

  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(Model());
  ASSERT_TRUE(ck.ok());
  cpu::CpuBackendOptions o;
  o.store.num_slots = 1;
  o.store.num_blocks = 64;
  auto backend = cpu::CpuBackend::Create(std::move(ck).value(), o);
  ASSERT_TRUE(backend.ok()) << backend.status();
  std::vector<int32_t> ids;
  for (char ch : prompt) ids.push_back(static_cast<uint8_t>(ch));
  std::string bytes;
  for (int step = 0; step < kTokens; ++step) {
    absl::StatusOr<std::vector<float>> logits = RunSequenceLogits(**backend, ids, {});
    ASSERT_TRUE(logits.ok()) << logits.status();
    const float* last = logits->data() + (ids.size() - 1) * 256;
    int best = 0;
    for (int v = 1; v < 256; ++v) {
      if (last[v] > last[best]) best = v;
    }
    if (best == 2) break;  // eos_token_id
    ids.push_back(best);
    bytes += static_cast<char>(best);
  }
  if (IsValidUtf8(bytes)) {
    EXPECT_EQ(r.out, bytes);
  }
  // Ill-formed parts become U+FFFD (the tokenizer tests pin that rule down).
  const std::vector<int32_t> generated(ids.begin() + static_cast<long>(prompt.size()), ids.end());
  EXPECT_EQ(r.out, ByteTokenizer(1, 2).Decode(generated));
  EXPECT_TRUE(IsValidUtf8(r.out));
}

TEST_F(CliTest, GenerateFindsTheDefaultModel) {
  // $HYLA_DEFAULT_MODEL wins.
  RunResult r = Run({"generate", "--max-tokens", "8", "--seed", "1", "hi"},
                    "HYLA_DEFAULT_MODEL=" + ShellQuote(Model()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const RunResult explicit_model =
      Run({"generate", "--model", Model(), "--max-tokens", "8", "--seed", "1", "hi"});
  EXPECT_EQ(r.out, explicit_model.out);
  // An explicit setting that names no model is an error, not silently ignored.
  r = Run({"generate", "--max-tokens", "8", "hi"},
          "HYLA_DEFAULT_MODEL=" + ShellQuote(Path("nothing-here")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, ::testing::HasSubstr("HYLA_DEFAULT_MODEL"));
  // Without it: the embedded model of the source tree (models/default).
  r = Run({"generate", "--max-tokens", "16", "--seed", "3", "hello"}, "env -u HYLA_DEFAULT_MODEL");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(IsValidUtf8(r.out));
}

// An installed tree: <prefix>/bin/hyla-model finds <prefix>/share/hyla/models/default before the
// source tree's model.
TEST_F(CliTest, InstalledBinaryFindsTheInstalledDefaultModel) {
  const std::string prefix = Path("prefix");
  fs::create_directories(prefix + "/bin");
  fs::copy_file(HYLA_MODEL_BIN, prefix + "/bin/hyla-model", fs::copy_options::overwrite_existing);
  GeneratorOptions o;
  o.shape = *PresetShape(Family::kGdn, "tiny");
  o.seed = 99;
  const std::string installed = prefix + "/share/hyla/models/default";
  ASSERT_TRUE(GenerateModel(o, installed).ok());

  const std::string out = Path("installed.out");
  const std::string cmd = absl::StrCat(
      "env -u HYLA_DEFAULT_MODEL ", ShellQuote(prefix + "/bin/hyla-model"),
      " generate --max-tokens 24 --seed 4 --temperature 0 abc >", ShellQuote(out), " 2>/dev/null");
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  const RunResult want = Run({"generate", "--model", installed, "--max-tokens", "24", "--seed", "4",
                              "--temperature", "0", "abc"});
  ASSERT_EQ(want.exit_code, 0) << want.err;
  EXPECT_EQ(ReadFile(out), want.out);
  const RunResult source_default =
      Run({"generate", "--max-tokens", "24", "--seed", "4", "--temperature", "0", "abc"},
          "env -u HYLA_DEFAULT_MODEL");
  ASSERT_EQ(source_default.exit_code, 0) << source_default.err;
  EXPECT_NE(source_default.out, want.out) << "the two default models should differ";
}

TEST_F(CliTest, EmbeddedDefaultModelLoads) {
  const std::string dir = std::string(HYLA_SOURCE_DIR) + "/models/default";
  ASSERT_TRUE(fs::exists(dir + "/config.json"));
  ASSERT_TRUE(fs::exists(dir + "/model.safetensors"));
  EXPECT_LE(fs::file_size(dir + "/model.safetensors"), 30u * 1000 * 1000);  // issue 6: <= 30 MB
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ((*ck)->config().vocab_size, 256);
  auto backend = cpu::CpuBackend::Create(std::move(ck).value(), cpu::CpuBackendOptions());
  ASSERT_TRUE(backend.ok()) << backend.status();
}

// --- generate-model ------------------------------------------------------------------------

TEST_F(CliTest, GenerateModelWritesWhatTheLibraryWrites) {
  const std::string cli_dir = Path("cli-gen"), lib_dir = Path("lib-gen");
  const RunResult r = Run({"generate-model", "--family", "gdn", "--preset", "tiny-hybrid", "--seed",
                           "17", "--dtype", "bf16", "--out", cli_dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  GeneratorOptions o;
  o.shape = *PresetShape(Family::kGdn, "tiny-hybrid");
  o.shape.dtype = DType::kBF16;
  o.seed = 17;
  o.preset = "tiny-hybrid";
  ASSERT_TRUE(GenerateModel(o, lib_dir).ok());
  EXPECT_EQ(ReadFile(cli_dir + "/config.json"), ReadFile(lib_dir + "/config.json"));
  EXPECT_EQ(ReadFile(cli_dir + "/model.safetensors"), ReadFile(lib_dir + "/model.safetensors"));

  // Overrides and --config-only.
  const std::string big = Path("cli-big");
  const RunResult c = Run({"generate-model", "--family", "llama", "--preset", "llama3-8b",
                           "--num-layers", "2", "--config-only", "--out", big});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_FALSE(fs::exists(big + "/model.safetensors"));
  absl::StatusOr<ModelConfig> config = Checkpoint::ReadConfig(big);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_layers, 2);
  EXPECT_EQ(config->hidden_size, 4096);
}

}  // namespace
}  // namespace hyla::tools
