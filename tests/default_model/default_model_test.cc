// The embedded default model (models/default, trained by tools/train/train.py) through
// Checkpoint::Open and the CPU backend:
//   * it is the trained NAtS-L model the card describes (shape, size);
//   * the backend reproduces the logits the training program exported for a held-out passage
//     (tests/default_model/golden.safetensors), through one prefill, prefill + token-by-token
//     decode, and random step splits, with the same routing decisions;
//   * the validation bits per byte the C++ engine computes over the exported held-out slice
//     is within 1% of the figure in the model card, and far below a unigram byte model;
//   * `hyla-model generate "The" --temperature 0.8` without --model prints English-looking text.
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "runtime/engine/backend.h"
#include "runtime/engine/sequence_runner.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/json.h"
#include "runtime/model/safetensors.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

namespace fs = std::filesystem;
using testing::LoadCpuBackend;
using testing::MaxAbsDiff;
using testing::PrefillThenDecode;
using testing::RandomSplit;

constexpr int kChunk = 64;
constexpr int kVocab = 256;
constexpr int kHeads = 3;                       // decision heads (config num_heads)
constexpr int kNatslLayers[3] = {1, 3, 5};      // config gdn_layers = [0, 2, 4]
constexpr int64_t kSliceWindow = 1024;          // train_log.json slice.seq_len
constexpr double kBpbRelativeTolerance = 0.01;  // the issue: within 1% of the card's figure

std::string ModelDir() { return std::string(HYLA_SOURCE_DIR) + "/models/default"; }
std::string TestDir() { return std::string(HYLA_SOURCE_DIR) + "/tests/default_model"; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The training program's exports for the C++ side (tests/default_model/golden.safetensors).
struct Golden {
  std::vector<int32_t> ids;        // [T] held-out validation passage
  std::vector<float> logits;       // [T, 256] fp32 forward of the exported weights
  std::vector<int32_t> routing;    // [3, N, 3]: 0 softmax, 1 GDN, -1 incomplete chunk
  int64_t chunks = 0;              // N
  std::vector<int32_t> slice_ids;  // [S] held-out slice scored for bits per byte
};

absl::StatusOr<Golden> LoadGolden() {
  auto file = SafetensorsFile::Open(TestDir() + "/golden.safetensors");
  if (!file.ok()) return file.status();
  Golden g;
  auto i32 = [&](const char* name, std::vector<int32_t>* out,
                 std::vector<int64_t>* shape) -> absl::Status {
    const TensorInfo* t = (*file)->Find(name);
    if (t == nullptr || t->dtype != DType::kI32) {
      return absl::NotFoundError(absl::StrCat("golden tensor ", name, " (I32) missing"));
    }
    out->resize(static_cast<size_t>(t->numel()));
    std::memcpy(out->data(), t->data, t->nbytes);
    *shape = t->shape;
    return absl::OkStatus();
  };
  std::vector<int64_t> shape;
  if (absl::Status s = i32("input_ids", &g.ids, &shape); !s.ok()) return s;
  if (absl::Status s = i32("bpb_slice_ids", &g.slice_ids, &shape); !s.ok()) return s;
  if (absl::Status s = i32("routing", &g.routing, &shape); !s.ok()) return s;
  if (shape.size() != 3 || shape[0] != 3 || shape[2] != kHeads) {
    return absl::InvalidArgumentError("routing is not [3, N, 3]");
  }
  g.chunks = shape[1];
  const TensorInfo* t = (*file)->Find("logits");
  if (t == nullptr || t->dtype != DType::kF32) return absl::NotFoundError("logits (F32) missing");
  g.logits.resize(static_cast<size_t>(t->numel()));
  std::memcpy(g.logits.data(), t->data, t->nbytes);
  if (g.logits.size() != g.ids.size() * kVocab) {
    return absl::InvalidArgumentError("logits is not [T, 256]");
  }
  return g;
}

// A number of models/default/train_log.json by its path of keys.
double LogNumber(const JsonValue& root, std::initializer_list<const char*> path) {
  const JsonValue* v = &root;
  for (const char* key : path) {
    v = v->Find(key);
    if (v == nullptr) {
      ADD_FAILURE() << "train_log.json has no " << key;
      return NAN;
    }
  }
  EXPECT_TRUE(v->is_number());
  return v->number_value();
}

// -log2 p(ids[t] | ids[<t]) summed over t = 1.. of one window, from [T, 256] logits.
double WindowBits(const std::vector<float>& logits, absl::Span<const int32_t> ids) {
  double bits = 0.0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = logits.data() + t * kVocab;
    double m = row[0];
    for (int v = 1; v < kVocab; ++v) m = std::max(m, static_cast<double>(row[v]));
    double sum = 0.0;
    for (int v = 0; v < kVocab; ++v) sum += std::exp(static_cast<double>(row[v]) - m);
    const double logp = static_cast<double>(row[ids[t + 1]]) - m - std::log(sum);
    bits -= logp / std::log(2.0);
  }
  return bits;
}

bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80           ? 0
                  : (c >> 5) == 0x6  ? 1
                  : (c >> 4) == 0xE  ? 2
                  : (c >> 3) == 0x1E ? 3
                                     : -1;
    if (n < 0) return false;
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size() || (static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += static_cast<size_t>(n) + 1;
  }
  return true;
}

class DefaultModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto golden = LoadGolden();
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = std::move(golden).value();
    auto backend = LoadCpuBackend(ModelDir());
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(backend).value();
  }

  // Max |logit| of the golden passage scales the fp32 tolerance: the fixtures' 1e-4 bound is
  // for logits of magnitude ~1, and fp32 rounding differences between two correct
  // implementations (different summation orders, chunked vs recurrent delta rule) grow with the
  // magnitude of the activations. The trained model's logits reach ~20.
  float Tolerance() const {
    float m = 0.0f;
    for (float x : golden_.logits) m = std::max(m, std::fabs(x));
    return 1e-4f * std::max(1.0f, m);
  }

  std::vector<float> Run(absl::Span<const int32_t> ids, const std::vector<int64_t>& chunks) {
    auto logits = RunSequenceLogits(*backend_, ids, chunks);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : std::vector<float>();
  }

  Golden golden_;
  std::unique_ptr<cpu::CpuBackend> backend_;
};

TEST_F(DefaultModelTest, IsTheTrainedNatslModel) {
  const ModelConfig& c = backend_->config();
  EXPECT_EQ(c.family, Family::kNatsl);
  EXPECT_EQ(c.vocab_size, kVocab);
  EXPECT_EQ(c.hidden_size, 256);
  ASSERT_EQ(c.num_layers, 6);
  for (int l = 0; l < c.num_layers; ++l) {
    EXPECT_EQ(c.layers[l].kind, l % 2 == 1 ? LayerKind::kNatsl : LayerKind::kGdn) << l;
  }
  const uintmax_t bytes = fs::file_size(ModelDir() + "/model.safetensors");
  EXPECT_LE(bytes, 30u * 1000 * 1000) << "the issue's size limit";
  EXPECT_GE(bytes, 5u * 1000 * 1000 * 4) << "5M fp32 parameters at least";
}

TEST_F(DefaultModelTest, ReproducesTrainingLogitsInOnePrefill) {
  const std::vector<float> got = Run(golden_.ids, {});
  const float diff = MaxAbsDiff(got, golden_.logits);
  std::printf("default model golden logits (prefill): max|diff| %.3g, tolerance %.3g\n", diff,
              Tolerance());
  EXPECT_LE(diff, Tolerance());
}

TEST_F(DefaultModelTest, ReproducesTrainingLogitsThroughDecode) {
  const int64_t t = static_cast<int64_t>(golden_.ids.size());
  const std::vector<float> decode = Run(golden_.ids, PrefillThenDecode(t, 70));
  const float diff = MaxAbsDiff(decode, golden_.logits);
  std::printf("default model golden logits (prefill 70 + decode): max|diff| %.3g\n", diff);
  EXPECT_LE(diff, Tolerance());
  for (uint32_t seed : {1u, 2u}) {
    EXPECT_LE(MaxAbsDiff(Run(golden_.ids, RandomSplit(t, 90, seed)), golden_.logits), Tolerance())
        << "split seed " << seed;
  }
}

// After the passage, every NAtS-L KV stream holds exactly the complete chunks that the training
// program routed to softmax (routing == 0) for that layer and head, then the current chunk.
TEST_F(DefaultModelTest, RoutesChunksAsTheTrainingProgram) {
  auto seq = backend_->store().NewSequence();
  ASSERT_TRUE(seq.ok()) << seq.status();
  backend_->ResetSlot((*seq)->slot);
  SequenceWork w;
  w.seq = seq->get();
  w.tokens = golden_.ids;
  w.logits = LogitsMode::kLast;
  StepOutput out;
  ASSERT_TRUE(backend_->Step({w}, &out).ok());
  const int64_t complete = static_cast<int64_t>(golden_.ids.size()) / kChunk;
  ASSERT_EQ(golden_.chunks, complete + 1) << "the golden passage ends in an incomplete chunk";
  int64_t to_softmax = 0, to_gdn = 0;
  bool both_ops = false;
  for (int i = 0; i < 3; ++i) {
    for (int h = 0; h < kHeads; ++h) {
      std::vector<int64_t> expected;
      for (int64_t c = 0; c < complete; ++c) {
        const int op = golden_.routing[(i * golden_.chunks + c) * kHeads + h];
        ASSERT_NE(op, -1);
        if (op == 0) {
          expected.push_back(c);
          ++to_softmax;
        } else {
          ++to_gdn;
        }
      }
      expected.push_back(complete);
      std::vector<int64_t> actual;
      const int stream = backend_->layout().first_stream(kNatslLayers[i]) + h;
      for (const BlockRef& ref : (*seq)->streams[stream]) actual.push_back(ref.chunk);
      EXPECT_EQ(actual, expected) << "layer " << kNatslLayers[i] << " head " << h;
    }
  }
  both_ops = to_softmax > 0 && to_gdn > 0;
  EXPECT_TRUE(both_ops) << "the passage should exercise both ops";
  EXPECT_EQ(out.routing.to_softmax, to_softmax);
  EXPECT_EQ(out.routing.to_gdn, to_gdn);
  backend_->store().Release(std::move(seq).value());
}

// Bits per byte over the held-out slice: consecutive windows of 1024 bytes, each a fresh
// sequence without BOS, bytes 1.. of each window scored (train.py's evaluation rule).
TEST_F(DefaultModelTest, ValidationBitsPerByteMatchesTheModelCard) {
  auto log = ParseJson(ReadFile(ModelDir() + "/train_log.json"));
  ASSERT_TRUE(log.ok()) << log.status();
  const double card = LogNumber(*log, {"slice", "bpb"});
  ASSERT_EQ(LogNumber(*log, {"slice", "seq_len"}), kSliceWindow);
  ASSERT_EQ(LogNumber(*log, {"slice", "bytes"}), static_cast<double>(golden_.slice_ids.size()));
  // The model card states the same figure.
  const std::string readme = ReadFile(ModelDir() + "/README.md");
  EXPECT_NE(readme.find(absl::StrFormat("%.4f", card)), std::string::npos)
      << "models/default/README.md does not state the slice figure " << card;

  double bits = 0.0;
  int64_t scored = 0;
  const absl::Span<const int32_t> slice(golden_.slice_ids);
  for (size_t begin = 0; begin < slice.size(); begin += kSliceWindow) {
    const absl::Span<const int32_t> win = slice.subspan(begin, kSliceWindow);
    bits += WindowBits(Run(win, {}), win);
    scored += static_cast<int64_t>(win.size()) - 1;
  }
  const double bpb = bits / static_cast<double>(scored);
  ASSERT_EQ(static_cast<double>(scored), LogNumber(*log, {"slice", "scored"}));

  // The slice's own unigram byte entropy: the best any unigram byte model can do on it.
  std::vector<int64_t> counts(kVocab, 0);
  for (int32_t b : slice) ++counts[b];
  double unigram = 0.0;
  for (int64_t c : counts) {
    if (c > 0) {
      const double p = static_cast<double>(c) / static_cast<double>(slice.size());
      unigram -= p * std::log2(p);
    }
  }
  std::printf(
      "default model: %.4f bits/byte on the %zu-byte held-out slice (card %.4f, "
      "unigram entropy %.4f)\n",
      bpb, slice.size(), card, unigram);
  EXPECT_NEAR(bpb, card, kBpbRelativeTolerance * card);
  EXPECT_LT(bpb, unigram - 1.5);
}

// The acceptance: `hyla-model generate "The"` (temperature 0.8) without --model prints
// English-looking text. Checked over three seeds: valid UTF-8, almost only printable ASCII and
// whitespace, spaces at a prose-like rate, and most letter runs ([a-z]+, lower-cased) among the
// 5000 most frequent words of the training text (random letters score about 20% on this list).
TEST(DefaultModelGenerateTest, PrintsEnglishLookingText) {
  std::set<std::string> words;
  {
    std::istringstream in(ReadFile(TestDir() + "/words.txt"));
    for (std::string w; std::getline(in, w);) words.insert(w);
  }
  ASSERT_EQ(words.size(), 5000u);
  for (int seed : {0, 1, 2}) {
    const std::string out_path =
        absl::StrCat(::testing::TempDir(), "/default_model_generate_", getpid(), "_", seed);
    const std::string cmd = absl::StrCat("env -u HYLA_DEFAULT_MODEL '", HYLA_MODEL_BIN,
                                         "' generate --temperature 0.8 --max-tokens 300 --seed ",
                                         seed, " The >'", out_path, "' 2>/dev/null");
    const int status = std::system(cmd.c_str());
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd;
    const std::string text = "The" + ReadFile(out_path);
    fs::remove(out_path);
    ASSERT_GE(text.size(), 250u) << text;
    EXPECT_TRUE(IsValidUtf8(text)) << text;
    int64_t plain = 0, spaces = 0;
    for (char ch : text) {
      const unsigned char c = static_cast<unsigned char>(ch);
      plain += (c >= 0x20 && c < 0x7F) || c == '\n' || c == '\t';
      spaces += c == ' ';
    }
    const double n = static_cast<double>(text.size());
    int64_t known = 0, total = 0;
    std::string word;
    for (size_t i = 0; i <= text.size(); ++i) {
      const char c = i < text.size() ? text[i] : ' ';
      if (std::isalpha(static_cast<unsigned char>(c))) {
        word += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      } else if (!word.empty()) {
        known += words.count(word) > 0;
        ++total;
        word.clear();
      }
    }
    std::printf("seed %d: %lld/%lld words known, %.1f%% spaces\n%s\n", seed,
                static_cast<long long>(known), static_cast<long long>(total), 100.0 * spaces / n,
                text.c_str());
    EXPECT_GE(plain / n, 0.97) << text;
    EXPECT_GE(spaces / n, 0.08) << text;
    EXPECT_LE(spaces / n, 0.30) << text;
    ASSERT_GE(total, 30) << text;
    EXPECT_GE(static_cast<double>(known) / static_cast<double>(total), 0.7) << text;
  }
}

}  // namespace
}  // namespace hyla
