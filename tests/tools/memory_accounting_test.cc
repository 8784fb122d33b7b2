// Memory-accounting acceptance: for the paper-scale shapes (config.json only, written by the
// generator and read back as any checkpoint is), StateLayout's slot, KV and softmax-equivalent
// bytes equal the arithmetic of shared/reference/models.md, written out here independently
// (§1.6-1.7 NAtS-L, §2.6 NHA, §3.6 GDN hybrids, Llama's 128 KiB/token).
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/model/checkpoint.h"
#include "runtime/state/state_layout.h"
#include "tools/model_generator.h"

namespace hyla::tools {
namespace {

namespace fs = std::filesystem;

constexpr int64_t KiB = 1024;
constexpr int64_t kF32 = 4;   // recurrent state is always fp32
constexpr int64_t kBf16 = 2;  // KV and window rings in the checkpoints' dtype (bf16)
const std::vector<int64_t> kContexts = {1024, 32768, 131072};

class MemoryAccountingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "/hyla_memory_", getpid()));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  // The preset's config.json, generated and parsed back; its layout with the checkpoint dtype.
  static StateLayout Layout(Family family, const std::string& preset, ModelConfig* config_out) {
    GeneratorOptions o;
    absl::StatusOr<ModelShape> shape = PresetShape(family, preset);
    EXPECT_TRUE(shape.ok()) << shape.status();
    o.shape = *shape;
    o.config_only = true;
    const std::string dir = *dir_ + "/" + preset;
    absl::Status st = GenerateModel(o, dir);
    EXPECT_TRUE(st.ok()) << st;
    absl::StatusOr<ModelConfig> config = Checkpoint::ReadConfig(dir);
    EXPECT_TRUE(config.ok()) << config.status();
    if (!config.ok()) return StateLayout();
    EXPECT_EQ(config->dtype, DType::kBF16) << preset;
    absl::StatusOr<StateLayout> layout = StateLayout::Create(*config, config->dtype);
    EXPECT_TRUE(layout.ok()) << layout.status();
    if (config_out != nullptr) *config_out = *config;
    return layout.ok() ? *layout : StateLayout();
  }

  static std::string* dir_;
};
std::string* MemoryAccountingTest::dir_ = nullptr;

// NHA-Llama3-8B shape: 32 NHA layers, Hkv = 8, dk = dv = 128, M = 64 slots, W = 64 window.
// Constant in context: slots Hkv·M·(dk+dv)·4 B plus the ring of W tokens of pre-RoPE k, v and
// the M log-gates, W·Hkv·(dk+dv+M)·2 B, per layer; no KV at all.
TEST_F(MemoryAccountingTest, NhaLlama3_8bIsConstantInContext) {
  const StateLayout L = Layout(Family::kNha, "nha-llama3-8b", nullptr);
  const int64_t layers = 32, hkv = 8, dk = 128, dv = 128, m = 64, w = 64;
  const int64_t slots = hkv * m * (dk + dv) * kF32;  // H_K [Hkv,dk,M] + H_V [Hkv,M,dv]
  const int64_t ring = w * hkv * (dk + dv + m) * kBf16;
  EXPECT_EQ(slots, 512 * KiB);  // models.md §2.6
  EXPECT_EQ(ring, 320 * KiB);
  EXPECT_EQ(L.slot_bytes(), layers * (slots + ring));
  EXPECT_EQ(L.slot_bytes(), 26 * 1024 * KiB);  // ≈ 26 MiB for the all-NHA stack
  EXPECT_EQ(L.num_streams(), 0);
  for (int64_t t : {int64_t{1}, int64_t{1000}, int64_t{1024}, int64_t{32768}, int64_t{131072}}) {
    EXPECT_EQ(L.KvBlocksAt(t, 1.0), 0) << t;
    EXPECT_EQ(L.KvBytesAt(t, 1.0), 0) << t;
    // The full-attention comparison: Llama3-8B's 128 KiB per token.
    EXPECT_EQ(L.SoftmaxEquivalentBytes(t), t * layers * hkv * (dk + dv) * kBf16) << t;
    EXPECT_EQ(L.SoftmaxEquivalentBytes(t), t * 128 * KiB) << t;
  }
}

// Llama3-8B: every token of every layer, K and V of 8 heads × 128 in bf16 = 128 KiB per token,
// exactly, at multiples of the 64-token block; no slot state.
TEST_F(MemoryAccountingTest, Llama3_8bIs128KiBPerToken) {
  const StateLayout L = Layout(Family::kLlama, "llama3-8b", nullptr);
  EXPECT_EQ(L.slot_bytes(), 0);
  EXPECT_EQ(L.num_streams(), 32);
  EXPECT_EQ(L.block_bytes(), 64 * 8 * (128 + 128) * kBf16);
  for (int64_t t : kContexts) {
    EXPECT_EQ(L.KvBytesAt(t, 1.0), t * 128 * KiB) << t;
    EXPECT_EQ(L.KvBlocksAt(t, 1.0), 32 * t / 64) << t;
    EXPECT_EQ(L.KvBytesAt(t, 0.0), t * 128 * KiB) << "no routing in llama";
    EXPECT_EQ(L.SoftmaxEquivalentBytes(t), t * 128 * KiB) << t;
  }
  // Between multiples of 64 a partly filled block is held whole.
  EXPECT_EQ(L.KvBytesAt(1000, 1.0), 1024 * 128 * KiB);
  EXPECT_EQ(L.KvBytesAt(1025, 1.0), 1088 * 128 * KiB);
  // KV dtype follows the flag: fp32 doubles it.
  ModelConfig config;
  Layout(Family::kLlama, "llama3-8b", &config);
  absl::StatusOr<StateLayout> f32 = StateLayout::Create(config, DType::kF32);
  ASSERT_TRUE(f32.ok());
  EXPECT_EQ(f32->KvBytesAt(32768, 1.0), 32768 * 256 * KiB);
}

// NAtS-L 340M (§1.3, §1.6-1.7): 15 GDN layers, 6 NAtS-L layers (3,7,11,15,19,20); H = 6 GDN heads
// dk 128 / dv 256; Ha = 12 softmax heads d_ak 64 / d_av 128, G = 2 per decision head.
TEST_F(MemoryAccountingTest, Natsl340mKvIsProportionalToKeptChunks) {
  const StateLayout L = Layout(Family::kNatsl, "natsl-340m", nullptr);
  const int64_t d = 1024, h = 6, dk = 128, dv = 256, ha = 12, dak = 64, dav = 128, g = 2;
  const int64_t conv = 3 * (h * dk + h * dk + h * dv) * kF32;  // q, k, v tails of 3 inputs
  const int64_t s = h * dk * dv * kF32;
  EXPECT_EQ(s, 768 * KiB);  // models.md §1.7
  const int64_t gdn_layer = conv + s;
  // NAtS-L: running S + committed S, Σg per head (24 B, padded to the 64-byte component
  // alignment), Σx over the current chunk (the chunk mean for the router).
  const int64_t natsl_layer = conv + 2 * s + 64 + d * kF32;
  EXPECT_EQ(L.slot_bytes(), 15 * gdn_layer + 6 * natsl_layer);

  // One KV stream per (NAtS-L layer, decision head); a kept chunk costs 64 tokens of G heads.
  EXPECT_EQ(L.num_streams(), 6 * h);
  const int64_t chunk_bytes_per_head = 64 * g * (dak + dav) * kBf16;
  EXPECT_EQ(L.block_bytes(), chunk_bytes_per_head);
  EXPECT_EQ(h * chunk_bytes_per_head, 288 * KiB);  // per kept chunk per layer, §1.7
  // Ha·(d_ak+d_av)·2 B = 4.5 KiB per token per layer; 6 layers: 27 KiB·ρ per context token.
  EXPECT_EQ(ha * (dak + dav) * kBf16, 4608);
  for (double rho : {0.0, 0.25, 0.5, 1.0}) {
    for (int64_t t : kContexts) {
      const int64_t kept_chunks = static_cast<int64_t>(rho * static_cast<double>(t / 64));
      EXPECT_EQ(L.KvBlocksAt(t, rho), 6 * h * kept_chunks) << t << " rho " << rho;
      EXPECT_EQ(L.KvBytesAt(t, rho), 6 * h * kept_chunks * chunk_bytes_per_head);
      EXPECT_EQ(L.KvBytesAt(t, rho), static_cast<int64_t>(rho * t * 27 * KiB)) << t;
    }
  }
  // The current, incomplete chunk is always held (both ops see it): 1000 tokens = 15 complete
  // chunks (ρ = 0.2 keeps 3) + 1 partial chunk, per stream.
  EXPECT_EQ(L.KvBlocksAt(1000, 0.2), 6 * h * (3 + 1));
  EXPECT_EQ(L.KvBlocksAt(1000, 0.0), 6 * h * 1);
  // Softmax-equivalent: every layer keeps K, V of every token with its attention shape: GDN
  // layers H·dk + H·dv, NAtS-L layers Ha·(d_ak + d_av) — both 2304 channels here.
  for (int64_t t : kContexts) {
    EXPECT_EQ(L.SoftmaxEquivalentBytes(t),
              t * (15 * (h * dk + h * dv) + 6 * ha * (dak + dav)) * kBf16);
  }
}

TEST_F(MemoryAccountingTest, Natsl760m) {
  const StateLayout L = Layout(Family::kNatsl, "natsl-760m", nullptr);
  const int64_t d = 1536, h = 6, dk = 192, dv = 384, ha = 18, dak = 64, dav = 128, g = 3;
  const int64_t conv = 3 * (2 * h * dk + h * dv) * kF32;
  const int64_t s = h * dk * dv * kF32;
  EXPECT_EQ(L.slot_bytes(), 15 * (conv + s) + 6 * (conv + 2 * s + 64 + d * kF32));
  const int64_t chunk_bytes_per_head = 64 * g * (dak + dav) * kBf16;
  EXPECT_EQ(L.block_bytes(), chunk_bytes_per_head);
  for (double rho : {0.125, 0.5, 1.0}) {
    for (int64_t t : kContexts) {
      const int64_t kept = static_cast<int64_t>(rho * static_cast<double>(t / 64));
      EXPECT_EQ(L.KvBytesAt(t, rho), 6 * h * kept * chunk_bytes_per_head) << t << " " << rho;
      // ρ·T·(6 layers · Ha·(d_ak+d_av)·2 B).
      EXPECT_EQ(L.KvBytesAt(t, rho), static_cast<int64_t>(rho * t * 6 * ha * (dak + dav) * kBf16));
    }
  }
}

// Qwen3-Next-style GDN hybrid: 24 layers, attention at 3, 7, ..., 23 (6 layers, 2 KV heads of
// 128), GDN elsewhere (18 layers: 16 q/k heads × 128, 32 value heads × 128, conv 4). Constant GDN
// state (S [32,128,128] fp32 = 2 MiB per layer, §3.6) plus the KV of the attention layers.
TEST_F(MemoryAccountingTest, Qwen3NextStyleHybridIsConstantStatePlusAttentionKv) {
  const StateLayout L = Layout(Family::kGdn, "qwen3next-1b", nullptr);
  const int64_t hk = 16, hv = 32, dk = 128, dv = 128;
  const int64_t conv = 3 * (hk * dk + hk * dk + hv * dv) * kF32;
  const int64_t s = hv * dk * dv * kF32;
  EXPECT_EQ(s, 2 * 1024 * KiB);
  EXPECT_EQ(L.slot_bytes(), 18 * (conv + s));
  const int64_t attn_token = 2 * 128 * 2 * kBf16;  // 2 KV heads × 128 × (K, V) per layer
  EXPECT_EQ(L.num_streams(), 6);
  for (int64_t t : kContexts) {
    EXPECT_EQ(L.KvBytesAt(t, 1.0), 6 * t * attn_token) << t;
    EXPECT_EQ(L.KvBytesAt(t, 1.0) + L.slot_bytes(), 18 * (conv + s) + t * 6 * KiB) << t;
    EXPECT_EQ(L.SoftmaxEquivalentBytes(t), t * (18 * (hk * dk + hv * dv) * kBf16 + 6 * attn_token));
  }
  EXPECT_EQ(L.KvBytesAt(100, 1.0), 6 * 128 * attn_token);  // two blocks per layer
}

}  // namespace
}  // namespace hyla::tools
