#include "tools/model_generator.h"

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/base/float16.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/engine/sequence_runner.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/json.h"
#include "runtime/model/safetensors.h"
#include "tools/model_tensors.h"

namespace hyla::tools {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Sanitize(std::string s) {
  for (char& c : s) {
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

// A fresh directory under the test temp dir, removed at the end of the test.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ =
        absl::StrCat(::testing::TempDir(), "/hyla_gen_", getpid(), "_",
                     Sanitize(absl::StrCat(info->test_suite_name(), "_", info->name(), "_", tag)));
    fs::remove_all(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Deep JSON equality; numbers compare by value (1e-06 == 0.000001).
void ExpectJsonEqual(const JsonValue& a, const JsonValue& b, const std::string& where) {
  ASSERT_EQ(a.type(), b.type()) << where;
  switch (a.type()) {
    case JsonValue::Type::kNull:
      break;
    case JsonValue::Type::kBool:
      EXPECT_EQ(a.bool_value(), b.bool_value()) << where;
      break;
    case JsonValue::Type::kNumber:
      EXPECT_EQ(a.number_value(), b.number_value()) << where;
      EXPECT_EQ(a.is_integer(), b.is_integer()) << where << " (int vs float literal)";
      break;
    case JsonValue::Type::kString:
      EXPECT_EQ(a.string_value(), b.string_value()) << where;
      break;
    case JsonValue::Type::kArray:
      ASSERT_EQ(a.array_items().size(), b.array_items().size()) << where;
      for (size_t i = 0; i < a.array_items().size(); ++i) {
        ExpectJsonEqual(a.array_items()[i], b.array_items()[i], absl::StrCat(where, "[", i, "]"));
      }
      break;
    case JsonValue::Type::kObject: {
      std::map<std::string, const JsonValue*> ma, mb;
      for (const auto& [k, v] : a.object_members()) ma[k] = &v;
      for (const auto& [k, v] : b.object_members()) mb[k] = &v;
      for (const auto& [k, v] : ma) {
        EXPECT_TRUE(mb.count(k)) << where << "." << k << " only in the generated config";
      }
      for (const auto& [k, v] : mb) {
        if (!ma.count(k)) {
          ADD_FAILURE() << where << "." << k << " missing from the generated config";
          continue;
        }
        ExpectJsonEqual(*ma[k], *v, where + "." + k);
      }
      break;
    }
  }
}

absl::StatusOr<ModelShape> Preset(Family f, const std::string& p) { return PresetShape(f, p); }

// The "small" presets are the golden fixtures' shapes: their config.json must be the authors'
// saved config, key for key and value for value (this needs no config parser).
class SmallPresetConfigTest : public ::testing::TestWithParam<std::pair<Family, const char*>> {};

TEST_P(SmallPresetConfigTest, EqualsTheGoldenConfig) {
  const auto [family, dir] = GetParam();
  absl::StatusOr<ModelShape> shape = Preset(family, "small");
  ASSERT_TRUE(shape.ok()) << shape.status();
  absl::StatusOr<std::string> text = ConfigJsonFor(*shape);
  ASSERT_TRUE(text.ok()) << text.status();
  absl::StatusOr<JsonValue> ours = ParseJson(*text);
  ASSERT_TRUE(ours.ok()) << ours.status() << "\n" << *text;
  const std::string golden_text =
      ReadFile(std::string(HYLA_GOLDEN_DIR) + "/" + dir + "/config.json");
  ASSERT_FALSE(golden_text.empty()) << "golden config missing for " << dir;
  absl::StatusOr<JsonValue> golden = ParseJson(golden_text);
  ASSERT_TRUE(golden.ok()) << golden.status();
  ExpectJsonEqual(*ours, *golden, dir);
  // Same layout as transformers' save_pretrained (sorted keys, indent 2).
  EXPECT_EQ(*text, golden_text + (golden_text.back() == '\n' ? "" : "\n"));
}

INSTANTIATE_TEST_SUITE_P(Families, SmallPresetConfigTest,
                         ::testing::Values(std::make_pair(Family::kNatsl, "natsl"),
                                           std::make_pair(Family::kNha, "nha"),
                                           std::make_pair(Family::kGdn, "gdn"),
                                           std::make_pair(Family::kLlama, "llama")));

// Round trip: generate a tiny model, load it with the CPU backend (every tensor taken, none
// missing), and run it.
struct RoundTrip {
  Family family;
  const char* preset;
  DType dtype;
};

class GeneratorRoundTripTest : public ::testing::TestWithParam<RoundTrip> {};

TEST_P(GeneratorRoundTripTest, LoadsAndRuns) {
  const RoundTrip rt = GetParam();
  TempDir dir(Sanitize(absl::StrCat(FamilyName(rt.family), rt.preset)));
  GeneratorOptions o;
  absl::StatusOr<ModelShape> shape = Preset(rt.family, rt.preset);
  ASSERT_TRUE(shape.ok()) << shape.status();
  o.shape = *shape;
  o.shape.dtype = rt.dtype;
  o.seed = 3;
  o.preset = rt.preset;
  ASSERT_TRUE(GenerateModel(o, dir.path()).ok()) << GenerateModel(o, dir.path());

  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status();
  const ModelConfig config = (*ck)->config();
  EXPECT_EQ(config.family, rt.family);
  EXPECT_EQ(config.hidden_size, o.shape.hidden_size);
  EXPECT_EQ(config.num_layers, o.shape.num_layers);
  EXPECT_EQ(config.dtype, rt.dtype);
  for (const TensorSpec& t : ListModelTensors(config)) {
    const TensorInfo* info = (*ck)->Find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->shape, t.shape) << t.name;
    EXPECT_EQ(info->dtype, rt.dtype) << t.name;
  }
  cpu::CpuBackendOptions bo;
  bo.store.num_slots = 1;
  bo.store.num_blocks = 64;
  absl::StatusOr<std::unique_ptr<cpu::CpuBackend>> backend =
      cpu::CpuBackend::Create(std::move(ck).value(), bo);
  ASSERT_TRUE(backend.ok()) << backend.status();
  std::vector<int32_t> ids;
  for (int i = 0; i < 150; ++i) ids.push_back((i * 37 + 11) % o.shape.vocab_size);
  absl::StatusOr<std::vector<float>> logits = RunSequenceLogits(**backend, ids, {70, 1, 79});
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->size(), ids.size() * static_cast<size_t>(o.shape.vocab_size));
  float max_abs = 0;
  for (float v : *logits) {
    ASSERT_TRUE(std::isfinite(v));
    max_abs = std::max(max_abs, std::fabs(v));
  }
  EXPECT_GT(max_abs, 0.0f);  // not a degenerate all-zero model
}

INSTANTIATE_TEST_SUITE_P(Families, GeneratorRoundTripTest,
                         ::testing::Values(RoundTrip{Family::kNatsl, "tiny", DType::kF32},
                                           RoundTrip{Family::kNatsl, "tiny", DType::kBF16},
                                           RoundTrip{Family::kNha, "tiny", DType::kF32},
                                           RoundTrip{Family::kNha, "small", DType::kF32},
                                           RoundTrip{Family::kGdn, "tiny", DType::kF32},
                                           RoundTrip{Family::kGdn, "tiny-hybrid", DType::kF32},
                                           RoundTrip{Family::kGdn, "tiny-hybrid", DType::kF16},
                                           RoundTrip{Family::kLlama, "tiny", DType::kF32},
                                           RoundTrip{Family::kLlama, "small", DType::kBF16}),
                         [](const ::testing::TestParamInfo<RoundTrip>& info) {
                           return Sanitize(absl::StrCat(FamilyName(info.param.family), "_",
                                                        info.param.preset, "_",
                                                        DTypeName(info.param.dtype)));
                         });

std::map<std::string, std::vector<float>> ReadAllF32(const std::string& path) {
  std::map<std::string, std::vector<float>> out;
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  if (!f.ok()) return out;
  for (const TensorInfo& t : (*f)->tensors()) {
    std::vector<float> v(static_cast<size_t>(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (t.dtype == DType::kF32) {
        std::memcpy(&v[i], t.data + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        v[i] = t.dtype == DType::kBF16 ? Bf16ToFloat(h) : Fp16ToFloat(h);
      }
    }
    out[t.name] = std::move(v);
  }
  return out;
}

TEST(GeneratorTest, SameSeedSameBytesOtherSeedOtherValues) {
  TempDir a("a"), b("b"), c("c");
  GeneratorOptions o;
  o.shape = *Preset(Family::kNatsl, "tiny");
  o.seed = 42;
  ASSERT_TRUE(GenerateModel(o, a.path()).ok());
  ASSERT_TRUE(GenerateModel(o, b.path()).ok());
  o.seed = 43;
  ASSERT_TRUE(GenerateModel(o, c.path()).ok());
  const std::string wa = ReadFile(a.path() + "/model.safetensors");
  ASSERT_FALSE(wa.empty());
  EXPECT_EQ(wa, ReadFile(b.path() + "/model.safetensors"));
  EXPECT_EQ(ReadFile(a.path() + "/config.json"), ReadFile(c.path() + "/config.json"));
  const auto ta = ReadAllF32(a.path() + "/model.safetensors");
  const auto tc = ReadAllF32(c.path() + "/model.safetensors");
  EXPECT_NE(ta.at("model.embeddings.weight"), tc.at("model.embeddings.weight"));
  EXPECT_NE(ta.at("model.layers.1.attn.A_log"), tc.at("model.layers.1.attn.A_log"));
  EXPECT_EQ(ta.at("model.norm.weight"), tc.at("model.norm.weight"));  // ones either way
}

TEST(GeneratorTest, Bf16IsTheRoundedF32Model) {
  TempDir a("f32"), b("bf16");
  GeneratorOptions o;
  o.shape = *Preset(Family::kGdn, "tiny");
  o.seed = 9;
  ASSERT_TRUE(GenerateModel(o, a.path()).ok());
  o.shape.dtype = DType::kBF16;
  ASSERT_TRUE(GenerateModel(o, b.path()).ok());
  const auto f32 = ReadAllF32(a.path() + "/model.safetensors");
  const auto bf16 = ReadAllF32(b.path() + "/model.safetensors");
  ASSERT_EQ(f32.size(), bf16.size());
  for (const auto& [name, v] : f32) {
    const std::vector<float>& w = bf16.at(name);
    ASSERT_EQ(v.size(), w.size());
    for (size_t i = 0; i < v.size(); ++i) {
      ASSERT_EQ(Bf16ToFloat(FloatToBf16(v[i])), w[i]) << name << "[" << i << "]";
    }
  }
  EXPECT_THAT(ReadFile(b.path() + "/config.json"), ::testing::HasSubstr("\"dtype\": \"bfloat16\""));
}

double Mean(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  return s / static_cast<double>(v.size());
}
double Std(const std::vector<float>& v) {
  const double m = Mean(v);
  double s = 0;
  for (float x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size()));
}

TEST(GeneratorTest, ValuesFollowTheReferenceInitialisation) {
  TempDir dir("init");
  GeneratorOptions o;
  o.shape = *Preset(Family::kNatsl, "small");
  o.seed = 1;
  ASSERT_TRUE(GenerateModel(o, dir.path()).ok());
  const auto t = ReadAllF32(dir.path() + "/model.safetensors");
  // Projections N(0, 0.02²): 256·128 and 256·128 samples give the std to within a few percent.
  for (const char* name :
       {"model.embeddings.weight", "lm_head.weight", "model.layers.1.attn.v_proj.weight",
        "model.layers.0.mlp.up_proj.weight"}) {
    EXPECT_NEAR(Std(t.at(name)), 0.02, 0.001) << name;
    EXPECT_NEAR(Mean(t.at(name)), 0.0, 0.001) << name;
  }
  EXPECT_NEAR(Std(t.at("model.layers.1.attn.nats_layer.weight")), 0.5, 0.05);
  for (const char* name :
       {"model.norm.weight", "model.layers.1.attn_norm.weight",
        "model.layers.1.attn.o_norm.weight1", "model.layers.1.attn.q_norm.weight",
        "model.layers.0.attn.o_norm.weight"}) {
    for (float x : t.at(name)) ASSERT_EQ(x, 1.0f) << name;
  }
  // A_log = log U(1, 16); dt_bias = softplus⁻¹(dt), dt ∈ [1e-3, 0.1].
  const double lo = std::log(std::expm1(1e-3)), hi = std::log(std::expm1(0.1));
  for (int layer = 0; layer < 4; ++layer) {
    const std::string p = absl::StrCat("model.layers.", layer, ".attn.");
    for (float x : t.at(p + "A_log")) {
      EXPECT_GE(x, 0.0f);
      EXPECT_LE(x, std::log(16.0f) + 1e-6f);
    }
    for (float x : t.at(p + "dt_bias")) {
      EXPECT_GE(x, lo - 1e-4);
      EXPECT_LE(x, hi + 1e-4);
      const double dt = std::log1p(std::exp(static_cast<double>(x)));  // softplus
      EXPECT_GE(dt, 1e-3 * (1 - 1e-4));
      EXPECT_LE(dt, 0.1 * (1 + 1e-4));
    }
  }
}

TEST(GeneratorTest, ConfigOnlyWritesNoWeights) {
  TempDir dir("cfg");
  GeneratorOptions o;
  o.shape = *Preset(Family::kLlama, "llama3-8b");
  o.config_only = true;
  ASSERT_TRUE(GenerateModel(o, dir.path()).ok());
  EXPECT_TRUE(fs::exists(dir.path() + "/config.json"));
  EXPECT_FALSE(fs::exists(dir.path() + "/model.safetensors"));
}

// Paper-scale presets: the config parses to the published shapes, and the parameter counts
// agree with arithmetic written out here.
TEST(GeneratorTest, PaperScalePresetsHaveThePublishedShapes) {
  TempDir dir("paper");
  GeneratorOptions o;
  o.config_only = true;

  o.shape = *Preset(Family::kLlama, "llama3-8b");
  ASSERT_TRUE(GenerateModel(o, dir.path() + "/llama").ok());
  absl::StatusOr<ModelConfig> llama = Checkpoint::ReadConfig(dir.path() + "/llama");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->dtype, DType::kBF16);
  EXPECT_EQ(llama->layers[0].attention.num_kv_heads, 8);
  EXPECT_EQ(llama->layers[0].attention.head_dim, 128);
  EXPECT_FLOAT_EQ(llama->layers[0].attention.rope_theta, 500000.0f);
  // Meta-Llama-3-8B: 8,030,261,248 parameters.
  EXPECT_EQ(CountParameters(*llama), int64_t{8030261248});

  o.shape = *Preset(Family::kNatsl, "natsl-340m");
  ASSERT_TRUE(GenerateModel(o, dir.path() + "/natsl").ok());
  absl::StatusOr<ModelConfig> natsl = Checkpoint::ReadConfig(dir.path() + "/natsl");
  ASSERT_TRUE(natsl.ok()) << natsl.status();
  std::vector<int> natsl_layers;
  for (int i = 0; i < natsl->num_layers; ++i) {
    if (natsl->layers[i].kind == LayerKind::kNatsl) natsl_layers.push_back(i);
  }
  EXPECT_THAT(natsl_layers, ::testing::ElementsAre(3, 7, 11, 15, 19, 20));
  EXPECT_EQ(natsl->intermediate_size, 2816);  // 256-aligned int(1024·4·2/3) = 2730
  const NatslLayerConfig& n = natsl->layers[3].natsl;
  EXPECT_EQ(n.gdn.num_heads, 6);
  EXPECT_EQ(n.gdn.head_k_dim, 128);
  EXPECT_EQ(n.gdn.head_v_dim, 256);
  EXPECT_EQ(n.num_attn_heads, 12);
  EXPECT_EQ(n.attn_head_k_dim, 64);
  EXPECT_EQ(n.attn_head_v_dim, 128);
  {
    const int64_t d = 1024, kd = 768, vd = 1536, inter = 2816, vocab = 32000;
    const int64_t gdn_mixer =
        2 * kd * d + vd * d + 2 * 6 * d + 2 * 6 + (2 * kd + vd) * 4 + vd * d + 256 + d * vd;
    const int64_t natsl_mixer = gdn_mixer - 256 + 2 * 64 + 12 * d + 24 * kd + 2 * 128;
    const int64_t block = 2 * d + 3 * inter * d;
    EXPECT_EQ(CountParameters(*natsl),
              2 * vocab * d + d + 15 * (gdn_mixer + block) + 6 * (natsl_mixer + block));
  }

  o.shape = *Preset(Family::kNha, "nha-llama3-8b");
  ASSERT_TRUE(GenerateModel(o, dir.path() + "/nha").ok());
  absl::StatusOr<ModelConfig> nha = Checkpoint::ReadConfig(dir.path() + "/nha");
  ASSERT_TRUE(nha.ok()) << nha.status();
  const NhaLayerConfig& h = nha->layers[31].nha;
  EXPECT_EQ(h.num_heads, 32);
  EXPECT_EQ(h.num_kv_heads, 8);
  EXPECT_EQ(h.head_k_dim, 128);
  EXPECT_EQ(h.head_v_dim, 128);
  EXPECT_EQ(h.num_slots, 64);
  EXPECT_EQ(h.window_size, 64);
  // Llama3-8B plus f_proj (8·64 rows) per layer, minus nothing: same q/k/v/o/MLP shapes, and
  // g_norm (4096) per layer.
  EXPECT_EQ(CountParameters(*nha), int64_t{8030261248} + 32 * (512 * 4096 + 4096));

  o.shape = *Preset(Family::kGdn, "qwen3next-1b");
  ASSERT_TRUE(GenerateModel(o, dir.path() + "/gdn").ok());
  absl::StatusOr<ModelConfig> gdn = Checkpoint::ReadConfig(dir.path() + "/gdn");
  ASSERT_TRUE(gdn.ok()) << gdn.status();
  ASSERT_EQ(gdn->num_layers, 24);
  for (int i = 0; i < 24; ++i) {
    EXPECT_EQ(gdn->layers[i].kind, (i + 1) % 4 == 0 ? LayerKind::kAttention : LayerKind::kGdn) << i;
  }
  EXPECT_EQ(gdn->layers[0].gdn.num_heads, 16);
  EXPECT_EQ(gdn->layers[0].gdn.num_v_heads, 32);
  EXPECT_EQ(gdn->layers[0].gdn.head_k_dim, 128);
  EXPECT_EQ(gdn->layers[0].gdn.head_v_dim, 128);
  EXPECT_EQ(gdn->layers[3].attention.num_heads, 16);
  EXPECT_EQ(gdn->layers[3].attention.num_kv_heads, 2);
  EXPECT_EQ(gdn->layers[3].attention.head_dim, 128);
  EXPECT_EQ(gdn->intermediate_size, 2816);
  EXPECT_GT(CountParameters(*gdn), int64_t{1000000000});
  EXPECT_LT(CountParameters(*gdn), int64_t{1300000000});
}

TEST(GeneratorTest, RejectsInconsistentShapesNamingTheField) {
  ModelShape s = *Preset(Family::kNatsl, "tiny");
  s.num_attn_heads = 3;
  absl::StatusOr<std::string> r = ConfigJsonFor(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr("num_attn_heads"));

  s = *Preset(Family::kNatsl, "tiny");
  s.gdn_layers = {0, 4};
  EXPECT_THAT(ConfigJsonFor(s).status().message(), ::testing::HasSubstr("gdn_layers"));

  s = *Preset(Family::kGdn, "tiny-hybrid");
  s.attn_num_heads = 3;  // does not divide hidden 64
  EXPECT_THAT(ConfigJsonFor(s).status().message(), ::testing::HasSubstr("attn_num_heads"));

  s = *Preset(Family::kLlama, "tiny");
  s.intermediate_size = 0;
  EXPECT_THAT(ConfigJsonFor(s).status().message(), ::testing::HasSubstr("intermediate_size"));
}

TEST(GeneratorTest, UnknownPresetAndFamilyAreReported) {
  absl::StatusOr<ModelShape> s = PresetShape(Family::kGdn, "huge");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), ::testing::HasSubstr("qwen3next-1b"));
  EXPECT_FALSE(ParseFamilyName("mamba").ok());
  EXPECT_EQ(*ParseFamilyName("nha"), Family::kNha);
  for (Family f : {Family::kNatsl, Family::kNha, Family::kGdn, Family::kLlama}) {
    for (const std::string& p : PresetNames(f)) {
      absl::StatusOr<ModelShape> shape = PresetShape(f, p);
      ASSERT_TRUE(shape.ok()) << p;
      EXPECT_TRUE(ConfigJsonFor(*shape).ok()) << p;
    }
  }
}

}  // namespace
}  // namespace hyla::tools
