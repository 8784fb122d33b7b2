// SessionManager: the engine-wide registry of persistent sessions — which sessions exist, on which
// worker each one's state lives, whether a request is using it (busy: pinned), and the metadata
// that GetSession/ListSessions report (context length, memory by kind, last use). The state
// itself (slot, KV blocks, token history) belongs to the worker that holds it; only that worker's
// scheduler thread touches it. The registry is where the two sides agree: a caller pins a session
// here before sending it a request, and a worker evicts an idle session only through TryEvict,
// which fails when the session was pinned meanwhile. So a running session is never evicted.
//
// Policies: ids are client-chosen ([A-Za-z0-9._-], 1..128 characters) or generated; at most
// `max_sessions` exist; creating one more evicts the least recently used idle session (reason
// "capacity"), or fails with Unavailable when every session is busy. Workers evict idle sessions
// past the TTL and, LRU first, when a queued request needs their memory.
//
// Thread-safety: thread-safe (one mutex; no callbacks under it).
// Invariants: a busy session is never removed except by Drop (its worker lost it); ids are unique.
#ifndef HYLA_RUNTIME_ENGINE_SESSION_MANAGER_H_
#define HYLA_RUNTIME_ENGINE_SESSION_MANAGER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/engine/request.h"

namespace hyla {

struct SessionInfo {
  std::string id;
  int worker = 0;     // the worker holding its state
  StateMemory state;  // context_tokens: tokens of the session (folded or about to be)
  absl::Time created;
  absl::Time last_use;  // when the last request on it ended (or it was created)
  bool busy = false;    // a request (or a fork) is using it
};

// An idle session chosen for eviction; the caller tells its worker to release the state.
struct EvictedSession {
  std::string id;
  int worker = 0;
};

class SessionManager {
 public:
  explicit SessionManager(int max_sessions, uint64_t id_seed);

  // InvalidArgument naming `field` unless `id` is 1..128 characters of [A-Za-z0-9._-].
  static absl::Status ValidateId(const std::string& id, const char* field);

  // Registers a new, busy session on `worker`. An empty *id is replaced by a generated one.
  // AlreadyExists for a taken id; when max_sessions exist, the least recently used idle session
  // is removed and returned in *evicted (its worker must release it), or Unavailable when all are
  // busy.
  absl::Status Reserve(std::string* id, int worker, absl::Time now,
                       std::optional<EvictedSession>* evicted);
  // Pins an existing session for a request or fork: NotFound, FailedPrecondition when busy.
  // Returns its worker.
  absl::StatusOr<int> Pin(const std::string& id);
  // Unpins after a request, fork or creation, recording the session's state and last use.
  void Unpin(const std::string& id, const StateMemory& state, absl::Time now);
  // Removes an idle session for DeleteSession: NotFound, FailedPrecondition when busy. Returns its
  // worker (which must release the state).
  absl::StatusOr<int> Remove(const std::string& id);
  // Removes an idle session chosen by a worker (TTL, memory); false when it is busy or gone.
  bool TryEvict(const std::string& id);
  // Removes a session whatever its state (its creation failed or its state was lost).
  void Drop(const std::string& id);

  absl::StatusOr<SessionInfo> Get(const std::string& id) const;
  std::vector<SessionInfo> List() const;  // by id
  int size() const;
  int max_sessions() const { return max_sessions_; }

 private:
  const int max_sessions_;
  mutable absl::Mutex mu_;
  std::map<std::string, SessionInfo> sessions_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 id_rng_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_SESSION_MANAGER_H_
