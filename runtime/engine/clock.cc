#include "runtime/engine/clock.h"

#include <algorithm>

namespace hyla {

ManualClock::ManualClock(absl::Time start) : now_(start) {}

absl::Time ManualClock::Now() const {
  absl::MutexLock lock(&mu_);
  return now_;
}

void ManualClock::WaitUntil(absl::CondVar* cv, absl::Mutex* mu, absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    if (now_ >= deadline) return;
    waiters_.push_back(Waiter{cv, mu});
  }
  cv->Wait(mu);
  absl::MutexLock lock(&mu_);
  auto it = std::find_if(waiters_.begin(), waiters_.end(),
                         [cv, mu](const Waiter& w) { return w.cv == cv && w.mu == mu; });
  if (it != waiters_.end()) waiters_.erase(it);
}

void ManualClock::Advance(absl::Duration d) {
  std::vector<Waiter> waiters;
  {
    absl::MutexLock lock(&mu_);
    now_ += d;
    waiters = waiters_;
  }
  for (const Waiter& w : waiters) {
    absl::MutexLock lock(w.mu);
    w.cv->SignalAll();
  }
}

int ManualClock::waiters() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiters_.size());
}

}  // namespace hyla
