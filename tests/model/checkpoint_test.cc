// Tests of Checkpoint: loading a Hugging Face style directory (single file or sharded), the
// TakeF32 / CheckAllTaken protocol, dtype conversion, and one test per malformed-checkpoint case,
// each asserting the error code and that the message names the file, the tensor or key and what
// was expected. Malformed checkpoints are copies of the golden fixtures, corrupted.
#include "runtime/model/checkpoint.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/safetensors.h"
#include "tests/model/model_test_util.h"

namespace hyla {
namespace {

namespace fs = std::filesystem;
using ::hyla::testing::CopyGolden;
using ::hyla::testing::F32Bytes;
using ::hyla::testing::RawSafetensors;
using ::hyla::testing::ReadBytes;
using ::hyla::testing::ReplaceOnce;
using ::hyla::testing::SplitSafetensors;
using ::hyla::testing::TempDir;
using ::hyla::testing::U16Bytes;
using ::hyla::testing::WriteBytes;
using ::testing::AllOf;
using ::testing::ContainsRegex;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// The tensors of the golden llama fixture with the shapes its config implies (written by hand:
// vocab 256, hidden 128, 4 layers, 4 heads x 32, 2 KV heads, intermediate 256, untied head).
std::vector<std::pair<std::string, std::vector<int64_t>>> LlamaTensors() {
  std::vector<std::pair<std::string, std::vector<int64_t>>> t = {
      {"model.embed_tokens.weight", {256, 128}},
      {"model.norm.weight", {128}},
      {"lm_head.weight", {256, 128}},
  };
  for (int l = 0; l < 4; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    t.push_back({p + "input_layernorm.weight", {128}});
    t.push_back({p + "post_attention_layernorm.weight", {128}});
    t.push_back({p + "self_attn.q_proj.weight", {128, 128}});
    t.push_back({p + "self_attn.k_proj.weight", {64, 128}});
    t.push_back({p + "self_attn.v_proj.weight", {64, 128}});
    t.push_back({p + "self_attn.o_proj.weight", {128, 128}});
    t.push_back({p + "mlp.gate_proj.weight", {256, 128}});
    t.push_back({p + "mlp.up_proj.weight", {256, 128}});
    t.push_back({p + "mlp.down_proj.weight", {128, 256}});
  }
  return t;
}

// Takes every llama tensor except `skip`; returns the first error.
absl::Status TakeAllLlama(Checkpoint* ckpt, const std::string& skip = "") {
  for (const auto& [name, shape] : LlamaTensors()) {
    if (name == skip) continue;
    absl::StatusOr<F32Tensor> t = ckpt->TakeF32(name, shape);
    if (!t.ok()) return t.status();
  }
  return absl::OkStatus();
}

// The tensors of a golden fixture's model.safetensors, as TensorToWrite, in file order.
std::vector<TensorToWrite> GoldenTensors(const std::string& family) {
  auto file =
      SafetensorsFile::Open(std::string(HYLA_GOLDEN_DIR) + "/" + family + "/model.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  std::vector<TensorToWrite> out;
  if (!file.ok()) return out;
  for (const TensorInfo& t : (*file)->tensors()) {
    out.push_back({t.name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
  }
  return out;
}

TensorToWrite* FindTensor(std::vector<TensorToWrite>* ts, const std::string& name) {
  for (TensorToWrite& t : *ts) {
    if (t.name == name) return &t;
  }
  ADD_FAILURE() << "no tensor " << name;
  return nullptr;
}

class CheckpointTest : public ::testing::Test {
 protected:
  const std::string& dir() const { return tmp_.path(); }
  std::string WeightsPath() const { return tmp_.File("model.safetensors"); }
  std::string ConfigPath() const { return tmp_.File("config.json"); }

  void CopyLlama() { ASSERT_NO_FATAL_FAILURE(CopyGolden("llama", dir())); }

  // Rewrites model.safetensors from the golden tensors after `edit`.
  void RewriteWeights(const std::string& family,
                      const std::function<void(std::vector<TensorToWrite>*)>& edit) {
    std::vector<TensorToWrite> ts = GoldenTensors(family);
    ASSERT_FALSE(ts.empty());
    edit(&ts);
    ASSERT_TRUE(WriteSafetensors(WeightsPath(), ts, {{"format", "pt"}}).ok());
  }

  // Byte surgery on model.safetensors: `edit` changes the header text; the length prefix is
  // rewritten to match and the data buffer is kept as it is.
  void EditHeader(const std::function<void(std::string*)>& edit) {
    std::string header, data;
    SplitSafetensors(ReadBytes(WeightsPath()), &header, &data);
    edit(&header);
    WriteBytes(WeightsPath(), RawSafetensors(header, data));
  }

  void EditConfig(const std::string& from, const std::string& to) {
    std::string text = ReadBytes(ConfigPath());
    ReplaceOnce(&text, from, to);
    WriteBytes(ConfigPath(), text);
  }

  // Opens the directory expecting failure with `code`; returns the message.
  std::string OpenFails(absl::StatusCode code) {
    auto ckpt = Checkpoint::Open(dir());
    EXPECT_FALSE(ckpt.ok()) << "opened a malformed checkpoint";
    if (ckpt.ok()) return "";
    EXPECT_EQ(ckpt.status().code(), code) << ckpt.status();
    return Msg(ckpt.status());
  }

  std::unique_ptr<Checkpoint> OpenOk() {
    auto ckpt = Checkpoint::Open(dir());
    EXPECT_TRUE(ckpt.ok()) << ckpt.status();
    return ckpt.ok() ? std::move(ckpt).value() : nullptr;
  }

  TempDir tmp_;
};

// ---------------------------------------------------------------------------------------------
// Loading that works.

TEST_F(CheckpointTest, GoldenLlamaLoadsWithZeroCopyViews) {
  CopyLlama();
  std::unique_ptr<Checkpoint> ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  EXPECT_EQ(ckpt->dir(), dir());
  EXPECT_EQ(ckpt->config().model_type, "llama");
  EXPECT_EQ(ckpt->config().num_layers, 4);
  EXPECT_TRUE(ckpt->Has("model.norm.weight"));
  EXPECT_FALSE(ckpt->Has("model.norm.bias"));

  const TensorInfo* info = ckpt->Find("model.layers.1.self_attn.k_proj.weight");
  ASSERT_NE(info, nullptr);
  absl::StatusOr<F32Tensor> k = ckpt->TakeF32("model.layers.1.self_attn.k_proj.weight", {64, 128});
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_THAT(k->shape(), ElementsAre(64, 128));
  EXPECT_EQ(k->numel(), 64 * 128);
  EXPECT_FALSE(k->empty());
  // fp32 and aligned (WriteSafetensors/torch pad the header): a view into the mapping.
  EXPECT_EQ(static_cast<const void*>(k->data()), static_cast<const void*>(info->data));
  // The values are the file's bytes.
  const std::string raw = ReadBytes(WeightsPath());
  std::string header, data;
  SplitSafetensors(raw, &header, &data);
  EXPECT_EQ(std::memcmp(k->data(), info->data, info->nbytes), 0);

  ASSERT_TRUE(TakeAllLlama(ckpt.get()).ok());
  EXPECT_TRUE(ckpt->CheckAllTaken().ok());
}

TEST_F(CheckpointTest, TakingTheSameTensorTwiceIsAllowed) {
  // Tied embeddings take one tensor for two roles.
  CopyLlama();
  std::unique_ptr<Checkpoint> ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  EXPECT_TRUE(ckpt->TakeF32("model.embed_tokens.weight", {256, 128}).ok());
  EXPECT_TRUE(ckpt->TakeF32("model.embed_tokens.weight", {256, 128}).ok());
}

TEST_F(CheckpointTest, CheckAllTakenNamesTheFirstTensorNotTaken) {
  CopyLlama();
  std::unique_ptr<Checkpoint> ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  ASSERT_TRUE(TakeAllLlama(ckpt.get(), "model.layers.2.mlp.up_proj.weight").ok());
  const absl::Status s = ckpt->CheckAllTaken();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), AllOf(HasSubstr(WeightsPath()),
                            HasSubstr("unexpected tensor \"model.layers.2.mlp.up_proj.weight\""),
                            HasSubstr("not used by a llama model")));
}

TEST_F(CheckpointTest, ReadConfigNeedsNoWeights) {
  std::error_code ec;
  fs::copy_file(std::string(HYLA_GOLDEN_DIR) + "/llama/config.json", ConfigPath(), ec);
  ASSERT_FALSE(ec) << ec.message();
  absl::StatusOr<ModelConfig> config = Checkpoint::ReadConfig(dir());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->hidden_size, 128);
}

TEST_F(CheckpointTest, Bf16AndF16AreConvertedExactly) {
  CopyLlama();
  // Values exactly representable in bf16 and fp16; bit patterns written by hand.
  // bf16: 1.0 = 0x3f80, -2.5 = 0xc020, 0.15625 = 0x3e20, -0.0 = 0x8000.
  // fp16: 1.0 = 0x3c00, -2.5 = 0xc100, 65504 = 0x7bff, 2^-24 = 0x0001 (subnormal).
  std::vector<uint16_t> bf16(128), f16(128);
  std::vector<float> want_bf16(128), want_f16(128);
  const uint16_t bf16_bits[] = {0x3f80, 0xc020, 0x3e20, 0x8000};
  const float bf16_vals[] = {1.0f, -2.5f, 0.15625f, -0.0f};
  const uint16_t f16_bits[] = {0x3c00, 0xc100, 0x7bff, 0x0001};
  const float f16_vals[] = {1.0f, -2.5f, 65504.0f, 5.9604644775390625e-08f};
  for (int i = 0; i < 128; ++i) {
    bf16[i] = bf16_bits[i % 4];
    want_bf16[i] = bf16_vals[i % 4];
    f16[i] = f16_bits[i % 4];
    want_f16[i] = f16_vals[i % 4];
  }
  RewriteWeights("llama", [&](std::vector<TensorToWrite>* ts) {
    TensorToWrite* a = FindTensor(ts, "model.norm.weight");
    a->dtype = DType::kBF16;
    a->bytes = U16Bytes(bf16);
    TensorToWrite* b = FindTensor(ts, "model.layers.0.input_layernorm.weight");
    b->dtype = DType::kF16;
    b->bytes = U16Bytes(f16);
  });
  std::unique_ptr<Checkpoint> ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  absl::StatusOr<F32Tensor> a = ckpt->TakeF32("model.norm.weight", {128});
  absl::StatusOr<F32Tensor> b = ckpt->TakeF32("model.layers.0.input_layernorm.weight", {128});
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  for (int i = 0; i < 128; ++i) {
    EXPECT_EQ(a->data()[i], want_bf16[i]) << i;
    EXPECT_EQ(std::signbit(a->data()[i]), std::signbit(want_bf16[i])) << i;
    EXPECT_EQ(b->data()[i], want_f16[i]) << i;
  }
  // Converted tensors own their storage (not the 2-byte data in the mapping).
  EXPECT_NE(static_cast<const void*>(a->data()),
            static_cast<const void*>(ckpt->Find("model.norm.weight")->data));
  // Ownership survives a move.
  F32Tensor moved = std::move(a).value();
  EXPECT_EQ(moved.data()[1], -2.5f);
  EXPECT_THAT(moved.shape(), ElementsAre(128));
  ASSERT_TRUE(TakeAllLlama(ckpt.get()).ok());
  EXPECT_TRUE(ckpt->CheckAllTaken().ok());
}

TEST_F(CheckpointTest, UnalignedF32IsCopied) {
  CopyLlama();
  // Two more header bytes put the data buffer at an offset that is 2 mod 4.
  EditHeader([](std::string* h) { *h += "  "; });
  std::unique_ptr<Checkpoint> ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  const TensorInfo* info = ckpt->Find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_NE(info, nullptr);
  ASSERT_NE(reinterpret_cast<uintptr_t>(info->data) % 4, 0u);
  absl::StatusOr<F32Tensor> q = ckpt->TakeF32("model.layers.0.self_attn.q_proj.weight", {128, 128});
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_NE(static_cast<const void*>(q->data()), static_cast<const void*>(info->data));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(q->data()) % alignof(float), 0u);
  EXPECT_EQ(std::memcmp(q->data(), info->data, info->nbytes), 0);
}

TEST_F(CheckpointTest, ShardedCheckpointLoads) {
  std::error_code ec;
  fs::copy_file(std::string(HYLA_GOLDEN_DIR) + "/llama/config.json", ConfigPath(), ec);
  ASSERT_FALSE(ec);
  std::vector<TensorToWrite> ts = GoldenTensors("llama");
  ASSERT_EQ(ts.size(), 39u);
  std::vector<TensorToWrite> a(ts.begin(), ts.begin() + 20), b(ts.begin() + 20, ts.end());
  ASSERT_TRUE(WriteSafetensors(tmp_.File("model-00001-of-00002.safetensors"), a).ok());
  ASSERT_TRUE(WriteSafetensors(tmp_.File("model-00002-of-00002.safetensors"), b).ok());
  std::string index = "{\"metadata\": {\"total_size\": 2626048}, \"weight_map\": {";
  for (size_t i = 0; i < ts.size(); ++i) {
    index += absl::StrCat(i ? ", " : "", "\"", ts[i].name, "\": \"model-0000", i < 20 ? 1 : 2,
                          "-of-00002.safetensors\"");
  }
  index += "}}";
  WriteBytes(tmp_.File("model.safetensors.index.json"), index);
  std::unique_ptr<Checkpoint> ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  const TensorInfo* last = ckpt->Find("model.norm.weight");
  ASSERT_NE(last, nullptr);
  EXPECT_EQ(last->file, tmp_.File("model-00002-of-00002.safetensors"));
  ASSERT_TRUE(TakeAllLlama(ckpt.get()).ok());
  EXPECT_TRUE(ckpt->CheckAllTaken().ok());
}

// ---------------------------------------------------------------------------------------------
// Malformed checkpoints: one test per case.

TEST_F(CheckpointTest, MissingTensor) {
  CopyLlama();
  RewriteWeights("llama", [](std::vector<TensorToWrite>* ts) {
    ts->erase(ts->begin() + (FindTensor(ts, "model.layers.1.mlp.up_proj.weight") - ts->data()));
  });
  std::unique_ptr<Checkpoint> ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  absl::StatusOr<F32Tensor> t = ckpt->TakeF32("model.layers.1.mlp.up_proj.weight", {256, 128});
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Msg(t.status()),
            dir() +
                ": tensor \"model.layers.1.mlp.up_proj.weight\" missing (expected shape "
                "[256, 128])");
}

TEST_F(CheckpointTest, UnexpectedExtraTensor) {
  CopyLlama();
  RewriteWeights("llama", [](std::vector<TensorToWrite>* ts) {
    ts->push_back({"model.layers.0.self_attn.q_norm.weight",
                   DType::kF32,
                   {32},
                   F32Bytes(std::vector<float>(32, 1.0f))});
  });
  std::unique_ptr<Checkpoint> ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  ASSERT_TRUE(TakeAllLlama(ckpt.get()).ok());
  const absl::Status s = ckpt->CheckAllTaken();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(s), WeightsPath() +
                        ": unexpected tensor \"model.layers.0.self_attn.q_norm.weight\" (not used "
                        "by a llama model)");
}

TEST_F(CheckpointTest, WrongShape) {
  CopyLlama();
  RewriteWeights("llama", [](std::vector<TensorToWrite>* ts) {
    FindTensor(ts, "model.layers.3.self_attn.k_proj.weight")->shape = {128, 64};
  });
  std::unique_ptr<Checkpoint> ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  absl::StatusOr<F32Tensor> t = ckpt->TakeF32("model.layers.3.self_attn.k_proj.weight", {64, 128});
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(t.status()), WeightsPath() +
                                 ": tensor \"model.layers.3.self_attn.k_proj.weight\": expected "
                                 "shape [64, 128], got [128, 64]");
}

TEST_F(CheckpointTest, WrongDtype) {
  CopyLlama();
  RewriteWeights("llama", [](std::vector<TensorToWrite>* ts) {
    TensorToWrite* t = FindTensor(ts, "model.layers.2.post_attention_layernorm.weight");
    t->dtype = DType::kI64;
    t->bytes.assign(128 * 8, 0);
  });
  std::unique_ptr<Checkpoint> ckpt = OpenOk();
  ASSERT_NE(ckpt, nullptr);
  absl::StatusOr<F32Tensor> t =
      ckpt->TakeF32("model.layers.2.post_attention_layernorm.weight", {128});
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(t.status()),
              AllOf(HasSubstr(WeightsPath()),
                    HasSubstr("tensor \"model.layers.2.post_attention_layernorm.weight\""),
                    HasSubstr("dtype I64"), HasSubstr("expected F32, BF16 or F16")));
}

TEST_F(CheckpointTest, TruncatedFile) {
  CopyLlama();
  std::string bytes = ReadBytes(WeightsPath());
  bytes.resize(bytes.size() - 100);  // cuts into model.norm.weight, the last tensor
  WriteBytes(WeightsPath(), bytes);
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(WeightsPath()), HasSubstr("tensor \"model.norm.weight\""),
                       HasSubstr("truncated"),
                       HasSubstr("end 2626048 is beyond the data buffer (2625948 bytes")));
}

TEST_F(CheckpointTest, HeaderOffsetEndBeyondBuffer) {
  CopyLlama();
  EditHeader([](std::string* h) { ReplaceOnce(h, "[2625536,2626048]", "[2626048,2626560]"); });
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(WeightsPath()), HasSubstr("tensor \"model.norm.weight\""),
                       HasSubstr("end 2626560 is beyond the data buffer (2626048 bytes")));
}

TEST_F(CheckpointTest, HeaderOffsetsSizeMismatch) {
  CopyLlama();
  EditHeader([](std::string* h) { ReplaceOnce(h, "[0,131072]", "[0,131068]"); });
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      m, AllOf(HasSubstr(WeightsPath()), HasSubstr("tensor \"lm_head.weight\""),
               HasSubstr("span 131068 bytes, expected 131072"), HasSubstr("shape [256, 128]")));
}

TEST_F(CheckpointTest, HeaderOffsetsOverlap) {
  CopyLlama();
  // embed_tokens moved 4 bytes back: right size, but it now overlaps lm_head.
  EditHeader([](std::string* h) { ReplaceOnce(h, "[131072,262144]", "[131068,262140]"); });
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(WeightsPath()), HasSubstr("\"lm_head.weight\""),
                       HasSubstr("\"model.embed_tokens.weight\""), HasSubstr("overlap")));
}

TEST_F(CheckpointTest, HeaderLengthBeyondFile) {
  CopyLlama();
  std::string bytes = ReadBytes(WeightsPath());
  const uint64_t n = bytes.size();  // header "as long as the whole file"
  for (int i = 0; i < 8; ++i)
    bytes[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  WriteBytes(WeightsPath(), bytes);
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(WeightsPath()), HasSubstr(absl::StrCat("header length ", n)),
                       HasSubstr(absl::StrCat("beyond the end of the file (", n, " bytes)"))));
}

TEST_F(CheckpointTest, UnknownModelType) {
  CopyLlama();
  EditConfig("\"model_type\": \"llama\"", "\"model_type\": \"mamba2\"");
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(ConfigPath()), HasSubstr("key \"model_type\""),
                       HasSubstr("unknown model type \"mamba2\""), HasSubstr("supported:"),
                       HasSubstr("llama")));
}

TEST_F(CheckpointTest, InconsistentAttentionHeads) {
  CopyLlama();
  EditConfig("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(ConfigPath()), ContainsRegex("num_attention_heads[ =(]*4"),
                       HasSubstr("multiple of num_key_value_heads"),
                       ContainsRegex("num_key_value_heads[ =(]*3")));
}

TEST_F(CheckpointTest, InconsistentGdnValueHeads) {
  ASSERT_NO_FATAL_FAILURE(CopyGolden("gdn", dir()));
  EditConfig("\"num_v_heads\": null", "\"num_v_heads\": 3");
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  // The gdn parser or the shared validation may word it; both name the key and both values.
  EXPECT_THAT(m, AllOf(HasSubstr(ConfigPath()), HasSubstr("num_v_heads"),
                       ContainsRegex("num_v_heads[ =(]*3"), HasSubstr("multiple of num_heads"),
                       ContainsRegex("num_heads[ =(]*2")));
}

TEST_F(CheckpointTest, ZeroLayers) {
  CopyLlama();
  EditConfig("\"num_hidden_layers\": 4", "\"num_hidden_layers\": 0");
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(ConfigPath()), HasSubstr("num_hidden_layers"),
                       HasSubstr("must be positive, got 0")));
}

TEST_F(CheckpointTest, NormEpsNaN) {
  CopyLlama();
  EditConfig("\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": NaN");
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(ConfigPath()), HasSubstr("rms_norm_eps"), HasSubstr("finite")));
}

TEST_F(CheckpointTest, RopeThetaInfinity) {
  CopyLlama();
  EditConfig("\"rope_theta\": 10000.0", "\"rope_theta\": Infinity");
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(ConfigPath()), HasSubstr("rope_theta"), HasSubstr("finite")));
}

TEST_F(CheckpointTest, MissingConfigJson) {
  CopyLlama();
  ASSERT_TRUE(fs::remove(ConfigPath()));
  const std::string m = OpenFails(absl::StatusCode::kNotFound);
  EXPECT_THAT(m, AllOf(HasSubstr(ConfigPath()), HasSubstr("missing")));
  absl::StatusOr<ModelConfig> c = Checkpoint::ReadConfig(dir());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointTest, InvalidJsonInConfig) {
  CopyLlama();
  EditConfig("\"head_dim\": 32,", "\"head_dim\": 32");  // drop a comma
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(ConfigPath()), HasSubstr("JSON"), HasSubstr("expected ',' or '}'"),
                       HasSubstr("at byte")));
}

TEST_F(CheckpointTest, MissingDirectory) {
  const std::string absent = dir() + "/nope";
  auto ckpt = Checkpoint::Open(absent);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(ckpt.status()),
              AllOf(HasSubstr(absent), HasSubstr("not a checkpoint directory")));
}

TEST_F(CheckpointTest, NoWeightFiles) {
  CopyLlama();
  ASSERT_TRUE(fs::remove(WeightsPath()));
  const std::string m = OpenFails(absl::StatusCode::kNotFound);
  EXPECT_THAT(m, AllOf(HasSubstr(dir()), HasSubstr("model.safetensors"),
                       HasSubstr("model.safetensors.index.json")));
}

// Sharded checkpoints: llama split in two shards (first 20 tensors, then the rest) with an index
// that `edit_index` may change.
class ShardedCheckpointTest : public CheckpointTest {
 protected:
  static constexpr char kShard1[] = "model-00001-of-00002.safetensors";
  static constexpr char kShard2[] = "model-00002-of-00002.safetensors";

  void SetUp() override {
    std::error_code ec;
    fs::copy_file(std::string(HYLA_GOLDEN_DIR) + "/llama/config.json", ConfigPath(), ec);
    ASSERT_FALSE(ec) << ec.message();
    tensors_ = GoldenTensors("llama");
    ASSERT_EQ(tensors_.size(), 39u);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      weight_map_.emplace_back(tensors_[i].name, i < 20 ? kShard1 : kShard2);
    }
  }
  void WriteShards(const std::vector<TensorToWrite>& shard1,
                   const std::vector<TensorToWrite>& shard2) {
    ASSERT_TRUE(WriteSafetensors(tmp_.File(kShard1), shard1).ok());
    ASSERT_TRUE(WriteSafetensors(tmp_.File(kShard2), shard2).ok());
  }
  void WriteShards() {
    WriteShards({tensors_.begin(), tensors_.begin() + 20}, {tensors_.begin() + 20, tensors_.end()});
  }
  void WriteIndex() {
    std::string index = "{\"metadata\": {\"total_size\": 2626048},\n \"weight_map\": {";
    for (size_t i = 0; i < weight_map_.size(); ++i) {
      index += absl::StrCat(i ? ",\n  " : "\n  ", "\"", weight_map_[i].first, "\": \"",
                            weight_map_[i].second, "\"");
    }
    index += "}}";
    WriteBytes(IndexPath(), index);
  }
  std::string IndexPath() const { return tmp_.File("model.safetensors.index.json"); }

  std::vector<TensorToWrite> tensors_;
  std::vector<std::pair<std::string, std::string>> weight_map_;
};

TEST_F(ShardedCheckpointTest, IndexNamesMissingShard) {
  WriteShards();
  WriteIndex();
  ASSERT_TRUE(fs::remove(tmp_.File(kShard2)));
  const std::string m = OpenFails(absl::StatusCode::kNotFound);
  EXPECT_THAT(m, AllOf(HasSubstr(IndexPath()), HasSubstr(absl::StrCat("shard \"", kShard2, "\"")),
                       HasSubstr("does not exist"), HasSubstr(tmp_.File(kShard2))));
}

TEST_F(ShardedCheckpointTest, IndexTensorNotInItsShard) {
  // The index says model.norm.weight lives in shard 1; it is in shard 2.
  WriteShards();
  for (auto& [name, shard] : weight_map_) {
    if (name == "model.norm.weight") shard = kShard1;
  }
  WriteIndex();
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(tmp_.File(kShard2)), HasSubstr("tensor \"model.norm.weight\""),
                       HasSubstr(absl::StrCat("mapped to shard \"", kShard1, "\"")),
                       HasSubstr(IndexPath())));
}

TEST_F(ShardedCheckpointTest, IndexTensorInNoShard) {
  WriteShards();
  weight_map_.emplace_back("model.layers.9.mlp.up_proj.weight", kShard2);
  WriteIndex();
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      m, AllOf(HasSubstr(IndexPath()), HasSubstr("tensor \"model.layers.9.mlp.up_proj.weight\""),
               HasSubstr(absl::StrCat(tmp_.File(kShard2), " does not contain it"))));
}

TEST_F(ShardedCheckpointTest, ShardTensorNotInWeightMap) {
  WriteShards();
  weight_map_.pop_back();  // model.norm.weight is in shard 2 but not in the index
  WriteIndex();
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(tmp_.File(kShard2)), HasSubstr("tensor \"model.norm.weight\""),
                       HasSubstr("not listed in the weight_map of"), HasSubstr(IndexPath())));
}

TEST_F(ShardedCheckpointTest, TensorInTwoShards) {
  std::vector<TensorToWrite> shard1(tensors_.begin(), tensors_.begin() + 20);
  std::vector<TensorToWrite> shard2(tensors_.begin() + 20, tensors_.end());
  shard2.push_back(shard1.front());  // lm_head.weight in both
  WriteShards(shard1, shard2);
  WriteIndex();
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr("tensor \"lm_head.weight\" is present in two shards"),
                       HasSubstr(tmp_.File(kShard1)), HasSubstr(tmp_.File(kShard2))));
}

TEST_F(ShardedCheckpointTest, IndexWithoutWeightMap) {
  WriteShards();
  WriteBytes(IndexPath(), "{\"metadata\": {}}");
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(IndexPath()), HasSubstr("key \"weight_map\": missing")));
}

TEST_F(ShardedCheckpointTest, IndexNotJson) {
  WriteShards();
  WriteBytes(IndexPath(), "{\"weight_map\": {\"a\": }");
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(IndexPath()), HasSubstr("JSON"), HasSubstr("at byte")));
}

TEST_F(ShardedCheckpointTest, IndexShardOutsideDirectory) {
  WriteShards();
  weight_map_.back().second = "../elsewhere.safetensors";
  WriteIndex();
  const std::string m = OpenFails(absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m, AllOf(HasSubstr(IndexPath()), HasSubstr("tensor \"model.norm.weight\""),
                       HasSubstr("relative to the checkpoint directory")));
}

}  // namespace
}  // namespace hyla
