// StateLayout accounting on small hand-built configs; every expected number is worked out by
// hand in the comments from the layer shapes (fp32 recurrent state, kv_dtype for KV and rings,
// components 64-byte aligned, 64-token blocks).
#include "runtime/state/state_layout.h"

#include <cstdint>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hyla {
namespace {

using ::testing::HasSubstr;

LayerConfig Gdn(int heads, int v_heads, int dk, int dv, bool conv, int conv_size = 4) {
  LayerConfig l;
  l.kind = LayerKind::kGdn;
  l.gdn.num_heads = heads;
  l.gdn.num_v_heads = v_heads;
  l.gdn.head_k_dim = dk;
  l.gdn.head_v_dim = dv;
  l.gdn.use_short_conv = conv;
  l.gdn.conv_size = conv_size;
  return l;
}

LayerConfig Attention(int heads, int kv_heads, int head_dim, int window) {
  LayerConfig l;
  l.kind = LayerKind::kAttention;
  l.attention.num_heads = heads;
  l.attention.num_kv_heads = kv_heads;
  l.attention.head_dim = head_dim;
  l.attention.rotary_dim = head_dim;
  l.attention.window_size = window;
  return l;
}

ModelConfig Model(int hidden, std::vector<LayerConfig> layers) {
  ModelConfig c;
  c.vocab_size = 16;
  c.hidden_size = hidden;
  c.intermediate_size = 2 * hidden;
  c.num_layers = static_cast<int>(layers.size());
  c.layers = std::move(layers);
  return c;
}

TEST(StateLayoutTest, SingleGdnLayer) {
  // H=2, HV=4, dk=8, dv=16: key_dim 16, value_dim 64.
  // conv tail: (4-1) * (2*16 + 64) channels * 4 B = 1152 (a multiple of 64).
  // S: 4 * 8 * 16 * 4 B = 2048.
  auto layout = StateLayout::Create(Model(32, {Gdn(2, 4, 8, 16, true)}), DType::kF32);
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ(layout->components().size(), 2u);
  const StateComponent& conv = layout->Component(0, "conv");
  EXPECT_EQ(conv.offset, 0);
  EXPECT_EQ(conv.bytes, 1152);
  const StateComponent& s = layout->Component(0, "S");
  EXPECT_EQ(s.offset, 1152);
  EXPECT_EQ(s.bytes, 2048);
  EXPECT_EQ(layout->slot_bytes(), 3200);
  // No softmax cache at all.
  EXPECT_EQ(layout->num_streams(), 0);
  EXPECT_EQ(layout->block_bytes(), 0);
  EXPECT_EQ(layout->first_stream(0), -1);
  EXPECT_EQ(layout->KvBlocksAt(100000, 1.0), 0);
  EXPECT_EQ(layout->KvBytesAt(100000, 1.0), 0);
  // Softmax equivalent: (key_dim + value_dim) * 4 B = 320 B per token.
  EXPECT_EQ(layout->SoftmaxEquivalentBytes(100), 32000);
  EXPECT_EQ(layout->SoftmaxEquivalentBytes(0), 0);
  EXPECT_EQ(layout->FindComponent(0, "S_committed"), nullptr);
  EXPECT_EQ(layout->FindComponent(1, "S"), nullptr);
}

TEST(StateLayoutTest, GdnWithoutConvAndUnalignedSizes) {
  // H=1, HV=1, dk=3, dv=5, conv 3 on: conv = 2 * (2*3 + 5) * 4 = 88 -> next offset 128.
  // S = 3 * 5 * 4 = 60 -> slot = 128 + 60 = 188 -> aligned up to 192.
  auto layout = StateLayout::Create(Model(8, {Gdn(1, 1, 3, 5, true, 3)}), DType::kF32);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->Component(0, "conv").bytes, 88);
  EXPECT_EQ(layout->Component(0, "S").offset, 128);
  EXPECT_EQ(layout->Component(0, "S").bytes, 60);
  EXPECT_EQ(layout->slot_bytes(), 192);
  EXPECT_EQ(layout->slot_bytes() % 64, 0);
  // Without the short conv there is no conv component.
  auto no_conv = StateLayout::Create(Model(8, {Gdn(1, 1, 3, 5, false)}), DType::kF32);
  ASSERT_TRUE(no_conv.ok());
  EXPECT_EQ(no_conv->FindComponent(0, "conv"), nullptr);
  EXPECT_EQ(no_conv->Component(0, "S").offset, 0);
  EXPECT_EQ(no_conv->slot_bytes(), 64);
}

// A hybrid of every layer kind:
//   layer 0: full attention, 4 heads, 2 KV heads, head_dim 8
//   layer 1: sliding-window attention, same shape, window 100
//   layer 2: NHA, 4 heads, 2 KV heads, dk = dv = 8, 4 slots, window 16, no conv
//   layer 3: NAtS-L, GDN H=2 HV=2 dk=16 dv=32 conv 4, Ha=4 (G=2, d_ak=8, d_av=16); hidden 32
ModelConfig Hybrid() {
  LayerConfig nha;
  nha.kind = LayerKind::kNha;
  nha.nha.num_heads = 4;
  nha.nha.num_kv_heads = 2;
  nha.nha.head_k_dim = 8;
  nha.nha.head_v_dim = 8;
  nha.nha.num_slots = 4;
  nha.nha.window_size = 16;
  nha.nha.kv_shift = 0;
  nha.nha.use_short_conv = false;
  LayerConfig natsl;
  natsl.kind = LayerKind::kNatsl;
  natsl.natsl.gdn = Gdn(2, 2, 16, 32, true).gdn;
  natsl.natsl.num_attn_heads = 4;
  natsl.natsl.attn_head_k_dim = 8;
  natsl.natsl.attn_head_v_dim = 16;
  return Model(32, {Attention(4, 2, 8, 0), Attention(4, 2, 8, 100), nha, natsl});
}

TEST(StateLayoutTest, HybridSlotComponents) {
  auto layout = StateLayout::Create(Hybrid(), DType::kF32);
  ASSERT_TRUE(layout.ok()) << layout.status();
  // Attention layers keep nothing in the slot.
  EXPECT_EQ(layout->FindComponent(0, "S"), nullptr);
  EXPECT_EQ(layout->FindComponent(1, "ring"), nullptr);
  // NHA: H_K = 2 * 8 * 4 * 4 = 256 at 0; H_V = 2 * 4 * 8 * 4 = 256 at 256;
  // ring = W 16 * 2 KV heads * (dk 8 + dv 8 + 4 slot gates) * 4 B = 2560 at 512.
  EXPECT_EQ(layout->Component(2, "H_K").offset, 0);
  EXPECT_EQ(layout->Component(2, "H_K").bytes, 256);
  EXPECT_EQ(layout->Component(2, "H_V").offset, 256);
  EXPECT_EQ(layout->Component(2, "H_V").bytes, 256);
  EXPECT_EQ(layout->Component(2, "ring").offset, 512);
  EXPECT_EQ(layout->Component(2, "ring").bytes, 2560);
  // NAtS-L: conv = 3 * (2*32 + 64) * 4 = 1536 at 3072; S = 2*16*32*4 = 4096 at 4608;
  // S_committed 4096 at 8704; g_sum = 2 * 4 = 8 at 12800; x_sum = 32 * 4 = 128 at 12864.
  EXPECT_EQ(layout->Component(3, "conv").offset, 3072);
  EXPECT_EQ(layout->Component(3, "conv").bytes, 1536);
  EXPECT_EQ(layout->Component(3, "S").offset, 4608);
  EXPECT_EQ(layout->Component(3, "S").bytes, 4096);
  EXPECT_EQ(layout->Component(3, "S_committed").offset, 8704);
  EXPECT_EQ(layout->Component(3, "g_sum").offset, 12800);
  EXPECT_EQ(layout->Component(3, "g_sum").bytes, 8);
  EXPECT_EQ(layout->Component(3, "x_sum").offset, 12864);
  EXPECT_EQ(layout->Component(3, "x_sum").bytes, 128);
  EXPECT_EQ(layout->slot_bytes(), 12992);
  for (const StateComponent& c : layout->components()) EXPECT_EQ(c.offset % 64, 0) << c.name;
}

TEST(StateLayoutTest, HybridStreams) {
  auto layout = StateLayout::Create(Hybrid(), DType::kF32);
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ(layout->num_streams(), 4);
  const auto& s = layout->streams();
  // Attention: 2 KV heads * (8 + 8) * 4 B = 128 B per token.
  EXPECT_EQ(s[0].layer, 0);
  EXPECT_EQ(s[0].heads, 2);
  EXPECT_EQ(s[0].token_bytes, 128);
  EXPECT_EQ(s[0].window, 0);
  EXPECT_FALSE(s[0].routed);
  EXPECT_EQ(s[1].layer, 1);
  EXPECT_EQ(s[1].window, 100);
  // NAtS-L: one stream per decision head, G=2 heads * (8 + 16) * 4 B = 192 B per token.
  for (int h = 0; h < 2; ++h) {
    EXPECT_EQ(s[2 + h].layer, 3);
    EXPECT_EQ(s[2 + h].index_in_layer, h);
    EXPECT_EQ(s[2 + h].heads, 2);
    EXPECT_EQ(s[2 + h].key_dim, 8);
    EXPECT_EQ(s[2 + h].value_dim, 16);
    EXPECT_EQ(s[2 + h].token_bytes, 192);
    EXPECT_TRUE(s[2 + h].routed);
  }
  EXPECT_EQ(layout->first_stream(0), 0);
  EXPECT_EQ(layout->first_stream(1), 1);
  EXPECT_EQ(layout->first_stream(2), -1);
  EXPECT_EQ(layout->first_stream(3), 2);
  // Blocks hold 64 tokens of the widest stream: 64 * 192 = 12288.
  EXPECT_EQ(layout->block_bytes(), 12288);
}

TEST(StateLayoutTest, HybridKvAccounting) {
  auto layout = StateLayout::Create(Hybrid(), DType::kF32);
  ASSERT_TRUE(layout.ok()) << layout.status();
  // 200 tokens = 3 full chunks + a partial one.
  //   full attention: 4 blocks
  //   window 100: the next query needs keys 101..199 -> blocks 1..3 -> 3 blocks
  //   NAtS-L at rho 0.5: round(1.5) = 2 kept chunks + the partial one = 3, per decision head
  EXPECT_EQ(layout->KvBlocksAt(200, 0.5), 4 + 3 + 2 * 3);
  EXPECT_EQ(layout->KvBytesAt(200, 0.5), 13 * 12288);
  EXPECT_EQ(layout->KvBlocksAt(200, 1.0), 4 + 3 + 2 * 4);
  EXPECT_EQ(layout->KvBlocksAt(200, 0.0), 4 + 3 + 2 * 1);
  // Out-of-range fractions are clamped.
  EXPECT_EQ(layout->KvBlocksAt(200, 7.0), layout->KvBlocksAt(200, 1.0));
  EXPECT_EQ(layout->KvBlocksAt(200, -1.0), layout->KvBlocksAt(200, 0.0));
  // 128 tokens = exactly 2 chunks: full 2; window: keys 29..127 -> blocks 0..1 = 2; NAtS-L 2 each.
  EXPECT_EQ(layout->KvBlocksAt(128, 1.0), 2 + 2 + 2 * 2);
  // 1 token.
  EXPECT_EQ(layout->KvBlocksAt(1, 1.0), 1 + 1 + 2 * 1);
  EXPECT_EQ(layout->KvBlocksAt(0, 1.0), 0);
  // Long context: the window layer stays bounded (keys 9901..9999 -> blocks 154..156 = 3).
  EXPECT_EQ(StateLayout::StreamBlocksAt(layout->streams()[1], 10000, 1.0), 3);
  EXPECT_EQ(StateLayout::StreamBlocksAt(layout->streams()[0], 10000, 1.0), 157);
  // Softmax equivalent per token: attention 128 + 128, NHA 2*(8+8)*4 = 128,
  // NAtS-L Ha 4 * (8 + 16) * 4 = 384 -> 768 B.
  EXPECT_EQ(layout->SoftmaxEquivalentBytes(200), 200 * 768);
}

TEST(StateLayoutTest, KvDtypeScalesKvAndRingsButNotRecurrentState) {
  auto f32 = StateLayout::Create(Hybrid(), DType::kF32);
  auto bf16 = StateLayout::Create(Hybrid(), DType::kBF16);
  ASSERT_TRUE(f32.ok());
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(bf16->kv_dtype(), DType::kBF16);
  EXPECT_EQ(bf16->streams()[0].token_bytes, 64);
  EXPECT_EQ(bf16->block_bytes(), 6144);
  EXPECT_EQ(bf16->Component(2, "ring").bytes, 1280);
  EXPECT_EQ(bf16->Component(3, "S").bytes, 4096);  // recurrent state stays fp32
  EXPECT_EQ(bf16->SoftmaxEquivalentBytes(200), 200 * 384);
  auto f16 = StateLayout::Create(Hybrid(), DType::kF16);
  ASSERT_TRUE(f16.ok());
  EXPECT_EQ(f16->block_bytes(), 6144);
}

TEST(StateLayoutTest, RejectsNonFloatKvDtype) {
  auto layout = StateLayout::Create(Hybrid(), DType::kI8);
  ASSERT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(layout.status().message()), HasSubstr("I8"));
}

TEST(StateLayoutTest, NhaRingCoversKvShift) {
  // With kv_shift > window the ring holds kv_shift tokens: 24 * 1 * (4 + 4 + 2) * 4 = 960.
  LayerConfig nha;
  nha.kind = LayerKind::kNha;
  nha.nha.num_heads = 1;
  nha.nha.num_kv_heads = 1;
  nha.nha.head_k_dim = 4;
  nha.nha.head_v_dim = 4;
  nha.nha.num_slots = 2;
  nha.nha.window_size = 8;
  nha.nha.kv_shift = 24;
  auto layout = StateLayout::Create(Model(8, {nha}), DType::kF32);
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->Component(0, "ring").bytes, 960);
}

}  // namespace
}  // namespace hyla
