// Clock: the engine's only source of time (deadlines, queue time, TTFT, session TTL, stall
// timeout), injectable so that tests control time instead of sleeping.
//
// WaitUntil blocks a scheduler thread on its condition variable until it is signalled or the
// clock reaches `deadline`. RealClock waits in real time; ManualClock only moves when a test calls
// Advance, which wakes every thread waiting on it so that it re-reads the time.
//
// Thread-safety: both implementations are thread-safe.
#ifndef HYLA_RUNTIME_ENGINE_CLOCK_H_
#define HYLA_RUNTIME_ENGINE_CLOCK_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace hyla {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Called with `mu` held; returns with `mu` held after `cv` was signalled, `deadline` passed on
  // this clock, or spuriously. Callers re-check their condition.
  virtual void WaitUntil(absl::CondVar* cv, absl::Mutex* mu, absl::Time deadline) = 0;
};

// Wall-clock time.
class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  void WaitUntil(absl::CondVar* cv, absl::Mutex* mu, absl::Time deadline) override {
    cv->WaitWithDeadline(mu, deadline);
  }
};

// Time that moves only when Advance is called (tests). Starts at `start`.
// Invariant: a thread inside WaitUntil is registered until it returns, and Advance signals every
// registered condition variable while holding that waiter's mutex, so no wake-up is lost.
class ManualClock : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::UnixEpoch() + absl::Hours(24 * 365 * 50));

  absl::Time Now() const override;
  void WaitUntil(absl::CondVar* cv, absl::Mutex* mu, absl::Time deadline) override;

  void Advance(absl::Duration d);
  // Number of threads blocked in WaitUntil now (lets a test wait until the engine is idle).
  int waiters() const;

 private:
  struct Waiter {
    absl::CondVar* cv;
    absl::Mutex* mu;
  };
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  std::vector<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_ENGINE_CLOCK_H_
