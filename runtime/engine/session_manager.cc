#include "runtime/engine/session_manager.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hyla {

SessionManager::SessionManager(int max_sessions, uint64_t id_seed)
    : max_sessions_(max_sessions), id_rng_(id_seed) {}

absl::Status SessionManager::ValidateId(const std::string& id, const char* field) {
  if (id.empty() || id.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be 1 to 128 characters, got ", id.size()));
  }
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(field, " may contain only [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

absl::Status SessionManager::Reserve(std::string* id, int worker, absl::Time now,
                                     std::optional<EvictedSession>* evicted) {
  evicted->reset();
  absl::MutexLock lock(&mu_);
  if (id->empty()) {
    do {
      *id = absl::StrFormat("s-%016x", id_rng_());
    } while (sessions_.count(*id) != 0);
  } else if (sessions_.count(*id) != 0) {
    return absl::AlreadyExistsError(absl::StrCat("session_id \"", *id, "\" already exists"));
  }
  if (static_cast<int>(sessions_.size()) >= max_sessions_) {
    auto victim = sessions_.end();
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
      if (it->second.busy) continue;
      if (victim == sessions_.end() || it->second.last_use < victim->second.last_use) victim = it;
    }
    if (victim == sessions_.end()) {
      return absl::UnavailableError(absl::StrCat("overloaded: session limit of ", max_sessions_,
                                                 " reached and every session is busy"));
    }
    *evicted = EvictedSession{victim->first, victim->second.worker};
    sessions_.erase(victim);
  }
  SessionInfo info;
  info.id = *id;
  info.worker = worker;
  info.created = now;
  info.last_use = now;
  info.busy = true;
  sessions_.emplace(*id, std::move(info));
  return absl::OkStatus();
}

absl::StatusOr<int> SessionManager::Pin(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session \"", id, "\" not found"));
  }
  if (it->second.busy) {
    return absl::FailedPreconditionError(
        absl::StrCat("session \"", id, "\" is busy with another request"));
  }
  it->second.busy = true;
  return it->second.worker;
}

void SessionManager::Unpin(const std::string& id, const StateMemory& state, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  it->second.busy = false;
  it->second.state = state;
  it->second.last_use = now;
}

absl::StatusOr<int> SessionManager::Remove(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session \"", id, "\" not found"));
  }
  if (it->second.busy) {
    return absl::FailedPreconditionError(
        absl::StrCat("session \"", id, "\" is busy with another request"));
  }
  const int worker = it->second.worker;
  sessions_.erase(it);
  return worker;
}

bool SessionManager::TryEvict(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.busy) return false;
  sessions_.erase(it);
  return true;
}

void SessionManager::Drop(const std::string& id) {
  absl::MutexLock lock(&mu_);
  sessions_.erase(id);
}

absl::StatusOr<SessionInfo> SessionManager::Get(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session \"", id, "\" not found"));
  }
  return it->second;
}

std::vector<SessionInfo> SessionManager::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<SessionInfo> out;
  out.reserve(sessions_.size());
  for (const auto& [id, info] : sessions_) out.push_back(info);
  return out;
}

int SessionManager::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(sessions_.size());
}

}  // namespace hyla
