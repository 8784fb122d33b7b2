// FakeBackend: a deterministic stand-in for a model, for the engine's scheduling tests. It keeps
// the real StateStore bookkeeping (a slot per sequence, one KV block per 64 tokens of its one
// attention stream, copy-on-write on forks) so that memory accounting is real, while its "model"
// is a hash of every token folded into the sequence:
//   logits[v] = noise(hash, v) in [0, 1), plus `peak` on (last token + 1) % vocab.
// With peak > 1 greedy decoding counts up from the last token ('a' → "bcd..."): predictable
// text for stop-string tests. With peak 0 the next token depends on the whole history, so
// continuation and fork tests detect any lost or duplicated token.
//
// Test controls: a gate that holds Step until the test allows it (so a test can keep requests
// queued or running without sleeping), and a log of every step's batch.
//
// Thread-safety: Step/ResetSlot/CopySlot run on the engine's worker thread; the controls and the
// log are thread-safe.
#ifndef HYLA_TESTS_ENGINE_FAKE_BACKEND_H_
#define HYLA_TESTS_ENGINE_FAKE_BACKEND_H_

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "runtime/base/check.h"
#include "runtime/engine/backend.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"

namespace hyla::testing {

struct FakeBackendOptions {
  int vocab = 256;
  int num_slots = 8;
  int64_t num_blocks = 256;
  float peak = 5.0f;
  int32_t eos = 2;
  int max_position_embeddings = 4096;
  // SamplesOnDevice(): items with a sampler are sampled inside Step (as the CUDA backend does),
  // through a copy of the request's Sampler and Sampler::RecordExternal.
  bool device_sampling = false;
};

// One sequence's part of a step, as the backend saw it.
struct FakeWork {
  int32_t slot = -1;
  int64_t tokens = 0;
  int64_t position = 0;  // num_tokens before the step
};

class FakeBackend : public Backend {
 public:
  static std::unique_ptr<FakeBackend> Create(const FakeBackendOptions& o) {
    ModelConfig c;
    c.family = Family::kGdn;
    c.model_type = "fake";
    c.vocab_size = o.vocab;
    c.hidden_size = 8;
    c.num_layers = 2;
    c.intermediate_size = 8;
    c.eos_token_id = o.eos;
    c.bos_token_id = 1;
    c.max_position_embeddings = o.max_position_embeddings;
    LayerConfig gdn;
    gdn.kind = LayerKind::kGdn;
    gdn.gdn.num_heads = 1;
    gdn.gdn.num_v_heads = 1;
    gdn.gdn.head_k_dim = 4;
    gdn.gdn.head_v_dim = 4;
    LayerConfig attn;
    attn.kind = LayerKind::kAttention;
    attn.attention.num_heads = 1;
    attn.attention.num_kv_heads = 1;
    attn.attention.head_dim = 4;
    attn.attention.rotary_dim = 4;
    c.layers = {gdn, attn};
    auto layout = StateLayout::Create(c, DType::kF32);
    HYLA_CHECK(layout.ok());
    StateStoreOptions so;
    so.num_slots = o.num_slots;
    so.num_blocks = o.num_blocks;
    auto store = StateStore::Create(*layout, so);
    HYLA_CHECK(store.ok());
    return std::unique_ptr<FakeBackend>(new FakeBackend(o, c, *layout, std::move(store).value()));
  }

  const ModelConfig& config() const override { return config_; }
  const StateLayout& layout() const override { return layout_; }
  StateStore& store() override { return *store_; }
  void ResetSlot(int32_t slot) override { slots_[slot] = SlotState(); }
  void CopySlot(int32_t src, int32_t dst) override { slots_[dst] = slots_[src]; }
  bool SamplesOnDevice() const override { return options_.device_sampling; }
  int64_t device_sampled() const { return device_sampled_.load(); }

  absl::Status Step(absl::Span<const SequenceWork> batch, StepOutput* out) override {
    {
      absl::MutexLock lock(&mu_);
      ++entered_;
      cv_.SignalAll();
      while (gated_ && permits_ == 0) cv_.Wait(&mu_);
      if (gated_) --permits_;
    }
    std::vector<FakeWork> log;
    out->logits.clear();
    out->row_offset.clear();
    out->row_count.clear();
    int64_t rows = 0;
    for (const SequenceWork& w : batch) {
      HYLA_CHECK(!w.tokens.empty());
      log.push_back(
          FakeWork{w.seq->slot, static_cast<int64_t>(w.tokens.size()), w.seq->num_tokens});
      SlotState& s = slots_[w.seq->slot];
      out->row_offset.push_back(rows);
      int64_t count = 0;
      for (size_t i = 0; i < w.tokens.size(); ++i) {
        const int32_t t = w.tokens[i];
        if (t < 0 || t >= config_.vocab_size) {
          return absl::InvalidArgumentError("fake backend: token id outside the vocabulary");
        }
        int32_t copy_from = -1;
        auto entry = store_->PrepareAppend(w.seq, 0, w.seq->num_tokens / kBlockTokens, &copy_from);
        if (!entry.ok()) return entry.status();
        s.hash = Mix(s.hash, static_cast<uint64_t>(t) + 1);
        s.last = t;
        ++w.seq->num_tokens;
        const bool want = w.logits == LogitsMode::kAll ||
                          (w.logits == LogitsMode::kLast && i + 1 == w.tokens.size());
        if (want) {
          AppendRow(s, &out->logits);
          ++count;
        }
      }
      out->row_count.push_back(count);
      rows += count;
    }
    out->sampled.clear();
    for (size_t b = 0; b < batch.size(); ++b) {
      const SequenceWork& w = batch[b];
      if (w.sampler == nullptr || !options_.device_sampling || w.logits != LogitsMode::kLast) {
        continue;
      }
      // "Device" sampling: the row's logits never leave the backend.
      if (out->sampled.empty()) out->sampled.assign(batch.size(), BackendSample());
      std::vector<float> row(out->logits.begin() + out->row_offset[b] * config_.vocab_size,
                             out->logits.begin() + (out->row_offset[b] + 1) * config_.vocab_size);
      for (int32_t id : w.suppressed) row[id] = -std::numeric_limits<float>::infinity();
      Sampler shadow = *w.sampler;
      const SampledToken tok = shadow.Sample(row);
      const bool used_uniform = w.sampler->params().temperature > 0.0f &&
                                tok.logprob != -std::numeric_limits<float>::infinity();
      std::vector<SampledToken> top = shadow.TopAlternatives(w.num_top);
      w.sampler->RecordExternal(tok, used_uniform, top);
      out->sampled[b] = BackendSample{true, tok, std::move(top)};
      out->row_count[b] = 0;
      ++device_sampled_;
    }
    out->routing = RoutingCounts();
    absl::MutexLock lock(&mu_);
    steps_.push_back(std::move(log));
    cv_.SignalAll();
    return absl::OkStatus();
  }

  // ---- test controls ----
  // Closed: each Step waits for a permit (Allow). Open: steps run freely.
  void SetGated(bool gated) {
    absl::MutexLock lock(&mu_);
    gated_ = gated;
    cv_.SignalAll();
  }
  void Allow(int steps) {
    absl::MutexLock lock(&mu_);
    permits_ += steps;
    cv_.SignalAll();
  }
  // Blocks until `n` Step calls have begun (entered the gate).
  void AwaitEntered(int64_t n) {
    absl::MutexLock lock(&mu_);
    while (entered_ < n) cv_.Wait(&mu_);
  }
  int64_t entered() const {
    absl::MutexLock lock(&mu_);
    return entered_;
  }
  std::vector<std::vector<FakeWork>> steps() const {
    absl::MutexLock lock(&mu_);
    return steps_;
  }

  // The reference model, for expected values computed independently of the engine: the greedy
  // continuation of `tokens` (peak 0 or not), `n` tokens.
  static std::vector<int32_t> Greedy(const FakeBackendOptions& o,
                                     const std::vector<int32_t>& tokens, int n) {
    SlotState s;
    for (int32_t t : tokens) {
      s.hash = Mix(s.hash, static_cast<uint64_t>(t) + 1);
      s.last = t;
    }
    std::vector<int32_t> out;
    for (int i = 0; i < n; ++i) {
      int32_t best = 0;
      float best_v = -1.0f;
      for (int v = 0; v < o.vocab; ++v) {
        const float x = Logit(s, v, o.vocab, o.peak);
        if (x > best_v) {
          best_v = x;
          best = v;
        }
      }
      out.push_back(best);
      s.hash = Mix(s.hash, static_cast<uint64_t>(best) + 1);
      s.last = best;
    }
    return out;
  }

 private:
  struct SlotState {
    uint64_t hash = 0x9E3779B97F4A7C15ull;
    int32_t last = -1;
  };

  FakeBackend(const FakeBackendOptions& o, ModelConfig c, StateLayout layout,
              std::unique_ptr<StateStore> store)
      : options_(o),
        config_(std::move(c)),
        layout_(std::move(layout)),
        store_(std::move(store)),
        slots_(static_cast<size_t>(o.num_slots)) {}

  static uint64_t Mix(uint64_t h, uint64_t x) {
    h ^= x + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
  }
  static float Logit(const SlotState& s, int v, int vocab, float peak) {
    const float noise =
        static_cast<float>(Mix(s.hash, static_cast<uint64_t>(v) + 7) % 1000) / 1000.0f;
    const bool is_next = s.last >= 0 && v == (s.last + 1) % vocab;
    return noise + (is_next ? peak : 0.0f);
  }
  void AppendRow(const SlotState& s, std::vector<float>* logits) const {
    for (int v = 0; v < config_.vocab_size; ++v) {
      logits->push_back(Logit(s, v, config_.vocab_size, options_.peak));
    }
  }

  FakeBackendOptions options_;
  std::atomic<int64_t> device_sampled_{0};
  ModelConfig config_;
  StateLayout layout_;
  std::unique_ptr<StateStore> store_;
  std::vector<SlotState> slots_;  // [num_slots]

  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  bool gated_ = false;
  int64_t permits_ = 0;
  int64_t entered_ = 0;
  std::vector<std::vector<FakeWork>> steps_;
};

}  // namespace hyla::testing

#endif  // HYLA_TESTS_ENGINE_FAKE_BACKEND_H_
