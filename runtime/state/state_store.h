// StateStore: the bookkeeping of per-sequence state memory — which state slots and KV blocks are
// free, which sequence holds them, the per-sequence softmax-cache cap and its policy, and the
// byte accounting that admission control and metrics read. It owns no tensor memory: a backend
// allocates `num_slots` slots of layout.slot_bytes() and `num_blocks` blocks of
// layout.block_bytes() (host memory for the CPU backend, device memory for CUDA) and addresses
// them by the indices handed out here.
//
// Blocks are reference counted so that a forked sequence shares its parent's blocks
// copy-on-write: only the last, partially filled block of a stream is ever written, and
// PrepareAppend gives a writer a private copy first.
//
// Thread-safety: not thread-safe. Each worker's scheduler thread owns its StateStore; other
// threads read the published counters (atomics) only.
// Invariants: a block's refcount equals the number of block-table entries naming it; a slot is
// held by at most one SequenceState.
#ifndef HYLA_RUNTIME_STATE_STATE_STORE_H_
#define HYLA_RUNTIME_STATE_STATE_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/state/state_layout.h"

namespace hyla {

// A block-table entry: which block holds chunk `chunk` (tokens [chunk*64, chunk*64+64)).
struct BlockRef {
  int32_t block = -1;
  int64_t chunk = 0;
};

// What to do when a stream would exceed the per-sequence softmax-cache cap.
enum class KvCapPolicy {
  kReject,       // the step fails with RESOURCE_EXHAUSTED naming the cap
  kEvictOldest,  // free the oldest kept block of that stream (its tokens become invisible)
};

// The state of one sequence (a request or a session): its slot, its block tables and length.
struct SequenceState {
  // Unique among the sequences a StateStore ever created (NewSequence and Fork number them from
  // 1; never reused), so that a backend can tell a sequence from a later one in the same slot.
  uint64_t uid = 0;
  int32_t slot = -1;
  int64_t num_tokens = 0;                      // tokens already folded into the state
  std::vector<std::vector<BlockRef>> streams;  // [num_streams] block tables, oldest first
  int64_t evicted_blocks = 0;                  // blocks dropped by kEvictOldest
};

struct StateStoreOptions {
  int num_slots = 16;
  int64_t num_blocks = 1024;
  // Cap on the softmax-cache tokens of one stream of one sequence (0: no cap beyond the pool).
  int64_t max_kv_tokens_per_stream = 0;
  KvCapPolicy cap_policy = KvCapPolicy::kReject;
};

// Memory a sequence holds, by kind.
struct SequenceMemory {
  int64_t slot_bytes = 0;
  int64_t kv_bytes = 0;
  int64_t kv_blocks = 0;
  int64_t softmax_equivalent_bytes = 0;
};

class StateStore {
 public:
  static absl::StatusOr<std::unique_ptr<StateStore>> Create(const StateLayout& layout,
                                                            const StateStoreOptions& options);

  const StateLayout& layout() const { return layout_; }
  const StateStoreOptions& options() const { return options_; }

  // Takes a free slot for a new, empty sequence. The backend must reset the slot's memory
  // (Backend::ResetSlot). ResourceExhausted when no slot is free.
  absl::StatusOr<std::unique_ptr<SequenceState>> NewSequence();
  // A copy of `parent` in a new slot, sharing all blocks (the caller copies the slot memory).
  absl::StatusOr<std::unique_ptr<SequenceState>> Fork(const SequenceState& parent);
  // Returns the slot and all block references.
  void Release(std::unique_ptr<SequenceState> seq);

  // Makes the block for chunk `chunk` of `stream` writable and returns its entry index. Starts a
  // new block when the chunk has none (applying the cap policy first), or, when the last block is
  // shared, replaces it with a private copy: then *copy_from is the block to copy contents from
  // (else -1). ResourceExhausted when the pool or the cap (kReject) is exhausted.
  absl::StatusOr<int> PrepareAppend(SequenceState* seq, int stream, int64_t chunk,
                                    int32_t* copy_from);
  // Drops entry `index` of `stream` (NAtS-L routed a chunk to GDN; a window slid past it).
  void DropBlock(SequenceState* seq, int stream, int index);

  // Blocks a step of `new_tokens` tokens might need at most (new chunks in every stream, plus
  // copy-on-write of shared last blocks). Admission reserves this many before a step.
  int64_t WorstCaseNewBlocks(const SequenceState& seq, int64_t new_tokens) const;

  SequenceMemory MemoryOf(const SequenceState& seq) const;

  int num_slots() const { return options_.num_slots; }
  int64_t num_blocks() const { return options_.num_blocks; }
  int free_slots() const { return static_cast<int>(free_slots_.size()); }
  int64_t free_blocks() const { return static_cast<int64_t>(free_blocks_.size()); }
  int64_t used_slot_bytes() const { return (num_slots() - free_slots()) * layout_.slot_bytes(); }
  int64_t used_kv_bytes() const { return (num_blocks() - free_blocks()) * layout_.block_bytes(); }
  int32_t refcount(int32_t block) const { return refcount_[block]; }

 private:
  StateStore(const StateLayout& layout, const StateStoreOptions& options);
  void Unref(int32_t block);

  StateLayout layout_;
  StateStoreOptions options_;
  std::vector<int32_t> free_slots_;
  std::vector<int32_t> free_blocks_;
  std::vector<int32_t> refcount_;
  uint64_t last_uid_ = 0;
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_STATE_STATE_STORE_H_
