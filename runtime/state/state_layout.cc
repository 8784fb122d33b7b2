#include "runtime/state/state_layout.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/base/check.h"

namespace hyla {
namespace {

constexpr int64_t kAlign = 64;
int64_t AlignUp(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

class Builder {
 public:
  void Add(int layer, std::string name, int64_t bytes) {
    if (bytes <= 0) return;
    StateComponent c;
    c.layer = layer;
    c.name = std::move(name);
    c.offset = offset_;
    c.bytes = bytes;
    offset_ = AlignUp(offset_ + bytes);
    components.push_back(std::move(c));
  }
  int64_t size() const { return offset_; }
  std::vector<StateComponent> components;

 private:
  int64_t offset_ = 0;
};

constexpr int64_t kF32 = 4;

// Conv tails of a short causal conv: (conv_size - 1) past inputs per channel, fp32.
int64_t ConvTailBytes(int conv_size, int64_t channels) {
  return static_cast<int64_t>(conv_size - 1) * channels * kF32;
}

}  // namespace

absl::StatusOr<StateLayout> StateLayout::Create(const ModelConfig& config, DType kv_dtype) {
  if (kv_dtype != DType::kF32 && kv_dtype != DType::kBF16 && kv_dtype != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("state layout: KV dtype must be F32, BF16 or F16, got ", DTypeName(kv_dtype)));
  }
  StateLayout L;
  L.kv_dtype_ = kv_dtype;
  const int64_t kv = DTypeSize(kv_dtype);
  Builder b;
  L.first_stream_.assign(config.layers.size(), -1);
  for (size_t i = 0; i < config.layers.size(); ++i) {
    const int layer = static_cast<int>(i);
    const LayerConfig& lc = config.layers[i];
    switch (lc.kind) {
      case LayerKind::kGdn: {
        const GdnLayerConfig& g = lc.gdn;
        if (g.use_short_conv) {
          b.Add(layer, "conv", ConvTailBytes(g.conv_size, 2LL * g.key_dim() + g.value_dim()));
        }
        b.Add(layer, "S", int64_t{g.num_v_heads} * g.head_k_dim * g.head_v_dim * kF32);
        L.softmax_equivalent_token_bytes_ += (int64_t{g.key_dim()} + g.value_dim()) * kv;
        break;
      }
      case LayerKind::kNatsl: {
        const NatslLayerConfig& n = lc.natsl;
        const GdnLayerConfig& g = n.gdn;
        if (g.use_short_conv) {
          b.Add(layer, "conv", ConvTailBytes(g.conv_size, 2LL * g.key_dim() + g.value_dim()));
        }
        const int64_t s_bytes = int64_t{g.num_v_heads} * g.head_k_dim * g.head_v_dim * kF32;
        b.Add(layer, "S", s_bytes);            // running state (includes the current chunk)
        b.Add(layer, "S_committed", s_bytes);  // state at the start of the current chunk
        b.Add(layer, "g_sum", int64_t{g.num_v_heads} * kF32);       // Σg over the current chunk
        b.Add(layer, "x_sum", int64_t{config.hidden_size} * kF32);  // Σx over the current chunk
        L.first_stream_[i] = static_cast<int>(L.streams_.size());
        for (int h = 0; h < g.num_heads; ++h) {
          KvStream s;
          s.layer = layer;
          s.index_in_layer = h;
          s.heads = n.groups();
          s.key_dim = n.attn_head_k_dim;
          s.value_dim = n.attn_head_v_dim;
          s.token_bytes = int64_t{s.heads} * (s.key_dim + s.value_dim) * kv;
          s.routed = true;
          L.streams_.push_back(s);
        }
        L.softmax_equivalent_token_bytes_ +=
            int64_t{n.num_attn_heads} * (n.attn_head_k_dim + n.attn_head_v_dim) * kv;
        break;
      }
      case LayerKind::kNha: {
        const NhaLayerConfig& n = lc.nha;
        if (n.use_short_conv) {
          b.Add(layer, "conv",
                ConvTailBytes(n.conv_size,
                              int64_t{n.num_heads} * n.head_k_dim +
                                  int64_t{n.num_kv_heads} * (n.head_k_dim + n.head_v_dim)));
        }
        b.Add(layer, "H_K", int64_t{n.num_kv_heads} * n.head_k_dim * n.num_slots * kF32);
        b.Add(layer, "H_V", int64_t{n.num_kv_heads} * n.num_slots * n.head_v_dim * kF32);
        // Ring of the last W' = max(window, kv_shift) tokens: pre-RoPE k, v and the log-gate
        // (needed when the slots consume a token as it leaves the window).
        const int64_t ring_tokens = std::max(n.window_size, n.kv_shift);
        b.Add(layer, "ring",
              ring_tokens * n.num_kv_heads * (int64_t{n.head_k_dim} + n.head_v_dim + n.num_slots) *
                  kv);
        L.softmax_equivalent_token_bytes_ +=
            int64_t{n.num_kv_heads} * (n.head_k_dim + n.head_v_dim) * kv;
        break;
      }
      case LayerKind::kAttention: {
        const AttentionLayerConfig& a = lc.attention;
        L.first_stream_[i] = static_cast<int>(L.streams_.size());
        KvStream s;
        s.layer = layer;
        s.heads = a.num_kv_heads;
        s.key_dim = a.head_dim;
        s.value_dim = a.head_dim;
        s.token_bytes = int64_t{s.heads} * (s.key_dim + s.value_dim) * kv;
        s.window = a.window_size;
        L.streams_.push_back(s);
        L.softmax_equivalent_token_bytes_ += s.token_bytes;
        break;
      }
    }
  }
  L.components_ = std::move(b.components);
  L.slot_bytes_ = b.size();
  for (const KvStream& s : L.streams_) {
    L.block_bytes_ = std::max(L.block_bytes_, s.token_bytes * kBlockTokens);
  }
  return L;
}

const StateComponent* StateLayout::FindComponent(int layer, absl::string_view name) const {
  for (const StateComponent& c : components_) {
    if (c.layer == layer && c.name == name) return &c;
  }
  return nullptr;
}

const StateComponent& StateLayout::Component(int layer, absl::string_view name) const {
  const StateComponent* c = FindComponent(layer, name);
  HYLA_CHECK_MSG(c != nullptr, std::string(name).c_str());
  return *c;
}

int64_t StateLayout::StreamBlocksAt(const KvStream& s, int64_t context, double softmax_fraction) {
  if (context <= 0) return 0;
  const int64_t full_chunks = context / kBlockTokens;
  const bool partial = context % kBlockTokens != 0;
  if (s.routed) {
    const double rho = std::min(1.0, std::max(0.0, softmax_fraction));
    return static_cast<int64_t>(std::llround(rho * static_cast<double>(full_chunks))) +
           (partial ? 1 : 0);
  }
  if (s.window > 0) {
    // The next query (position `context`) sees keys [context - window + 1, context - 1] from the
    // cache; blocks before the one holding the first of them are freed.
    const int64_t first_pos = std::max<int64_t>(0, context - s.window + 1);
    const int64_t first_block = first_pos / kBlockTokens;
    const int64_t last_block = (context - 1) / kBlockTokens;
    return last_block - first_block + 1;
  }
  return full_chunks + (partial ? 1 : 0);
}

int64_t StateLayout::KvBlocksAt(int64_t context, double softmax_fraction) const {
  int64_t blocks = 0;
  for (const KvStream& s : streams_) blocks += StreamBlocksAt(s, context, softmax_fraction);
  return blocks;
}

int64_t StateLayout::SoftmaxEquivalentBytes(int64_t context) const {
  return std::max<int64_t>(context, 0) * softmax_equivalent_token_bytes_;
}

}  // namespace hyla
