// StateLayout: the exact per-sequence memory of a model — the fixed-size state slot (recurrent
// states, conv tails, NHA slots and window rings, NAtS-L committed states and chunk buffers) and
// the KV streams that grow in 64-token blocks — derived from the ModelConfig alone, so that
// `hyla-model info`, admission control, metrics and both backends use the same numbers.
//
// Slot: one contiguous byte range per sequence; each (layer, component) has a fixed offset
// (64-byte aligned). Recurrent state is always fp32; window rings and KV use `kv_dtype`.
// KV streams: an independent block table per stream. A stream is one softmax attention layer
// (all its KV heads), or one (NAtS-L layer, decision head) with its G softmax heads, so that a
// NAtS-L routing decision is "keep or free this block".
//
// Thread-safety: immutable after Create.
#ifndef HYLA_RUNTIME_STATE_STATE_LAYOUT_H_
#define HYLA_RUNTIME_STATE_STATE_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/model/config.h"
#include "runtime/model/dtype.h"

namespace hyla {

inline constexpr int kBlockTokens = 64;  // KV block size = NAtS-L chunk size

struct StateComponent {
  int layer = 0;
  std::string name;    // e.g. "conv", "S", "S_committed", "g_sum", "x_sum", "H_K", "H_V", "ring"
  int64_t offset = 0;  // bytes from the slot start (64-byte aligned)
  int64_t bytes = 0;
};

struct KvStream {
  int layer = 0;
  int index_in_layer = 0;   // NAtS-L decision head, else 0
  int heads = 0;            // softmax heads stored in this stream
  int key_dim = 0;          // per head
  int value_dim = 0;        // per head
  int64_t token_bytes = 0;  // heads * (key_dim + value_dim) * sizeof(kv_dtype)
  int window = 0;           // > 0: sliding window (blocks wholly outside it are freed)
  bool routed = false;      // NAtS-L: completed chunks are kept only when routed to softmax
};

class StateLayout {
 public:
  static absl::StatusOr<StateLayout> Create(const ModelConfig& config, DType kv_dtype);

  DType kv_dtype() const { return kv_dtype_; }
  int64_t slot_bytes() const { return slot_bytes_; }
  const std::vector<StateComponent>& components() const { return components_; }
  // The component of `layer` named `name`; aborts when absent (a layout/backend mismatch is a bug).
  const StateComponent& Component(int layer, absl::string_view name) const;
  const StateComponent* FindComponent(int layer, absl::string_view name) const;

  const std::vector<KvStream>& streams() const { return streams_; }
  int num_streams() const { return static_cast<int>(streams_.size()); }
  // First stream of `layer` (-1 when the layer has none); streams of a layer are contiguous.
  int first_stream(int layer) const { return first_stream_[layer]; }
  // Bytes of one block: kBlockTokens tokens of the widest stream (0 when there are no streams).
  int64_t block_bytes() const { return block_bytes_; }

  // Accounting at `context` tokens, for capacity planning and `hyla-model info`.
  // softmax_fraction: the share of completed chunks NAtS-L keeps as softmax KV (ρ; 1 = worst).
  int64_t KvBlocksAt(int64_t context, double softmax_fraction) const;
  int64_t KvBytesAt(int64_t context, double softmax_fraction) const {
    return KvBlocksAt(context, softmax_fraction) * block_bytes_;
  }
  // What a full-softmax model with the same attention shapes would hold at `context` tokens:
  // every layer keeps K and V of every token, with its attention shape (GDN: H×dk + HV×dv,
  // NAtS-L: Ha×(d_ak+d_av), NHA and attention: Hkv×(dk+dv)), in kv_dtype.
  int64_t SoftmaxEquivalentBytes(int64_t context) const;
  // Blocks one stream holds after `context` tokens (NAtS-L: at softmax_fraction of chunks).
  static int64_t StreamBlocksAt(const KvStream& s, int64_t context, double softmax_fraction);

 private:
  DType kv_dtype_ = DType::kF32;
  int64_t slot_bytes_ = 0;
  int64_t block_bytes_ = 0;
  int64_t softmax_equivalent_token_bytes_ = 0;
  std::vector<StateComponent> components_;
  std::vector<KvStream> streams_;
  std::vector<int> first_stream_;
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_STATE_STATE_LAYOUT_H_
