// Helpers for Engine tests: collecting a stream, synchronous session calls, an observer that
// records what the engine reports.
#ifndef HYLA_TESTS_ENGINE_ENGINE_TEST_UTIL_H_
#define HYLA_TESTS_ENGINE_ENGINE_TEST_UTIL_H_

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "runtime/engine/engine.h"

namespace hyla::testing {

// Everything a request's stream delivered.
struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<TokenLogprob> logprobs;
  Finish finish;
  int events = 0;
};

inline Collected Collect(RequestHandle& h) {
  Collected c;
  for (;;) {
    StreamEvent e = h.Next();
    ++c.events;
    c.tokens.insert(c.tokens.end(), e.token_ids.begin(), e.token_ids.end());
    c.text += e.text;
    for (auto& lp : e.logprobs) c.logprobs.push_back(lp);
    if (e.finish.has_value()) {
      c.finish = *e.finish;
      return c;
    }
  }
}

inline absl::StatusOr<SessionInfo> CreateSessionSync(Engine& engine, std::string id,
                                                     std::vector<int32_t> prefix,
                                                     absl::Time deadline = absl::InfiniteFuture()) {
  absl::Notification done;
  absl::StatusOr<SessionInfo> result = absl::UnknownError("not called");
  absl::Status st = engine.CreateSession(std::move(id), std::move(prefix), deadline,
                                         [&](absl::StatusOr<SessionInfo> r) {
                                           result = std::move(r);
                                           done.Notify();
                                         });
  if (!st.ok()) return st;
  done.WaitForNotification();
  return result;
}

inline absl::StatusOr<SessionInfo> ForkSessionSync(Engine& engine, const std::string& parent,
                                                   std::string child = "") {
  absl::Notification done;
  absl::StatusOr<SessionInfo> result = absl::UnknownError("not called");
  absl::Status st =
      engine.ForkSession(parent, std::move(child), [&](absl::StatusOr<SessionInfo> r) {
        result = std::move(r);
        done.Notify();
      });
  if (!st.ok()) return st;
  done.WaitForNotification();
  return result;
}

// Records observations; lets a test wait for an eviction without sleeping.
class RecordingObserver : public EngineObserver {
 public:
  void OnStep(const StepObservation& s) override {
    absl::MutexLock lock(&mu_);
    steps_.push_back(s);
    cv_.SignalAll();
  }
  // Blocks until `n` steps were observed (a step is observed after its events were pushed).
  void AwaitSteps(size_t n) {
    absl::MutexLock lock(&mu_);
    while (steps_.size() < n) cv_.Wait(&mu_);
  }
  void OnFirstToken(absl::Duration) override {
    absl::MutexLock lock(&mu_);
    ++first_tokens_;
  }
  void OnInterToken(absl::Duration) override {
    absl::MutexLock lock(&mu_);
    ++inter_tokens_;
  }
  void OnRequestFinished(const RequestObservation& r) override {
    absl::MutexLock lock(&mu_);
    finished_.push_back(r);
    cv_.SignalAll();
  }
  void OnRejected(RejectReason r) override {
    absl::MutexLock lock(&mu_);
    rejected_.push_back(r);
  }
  void OnSessionEvicted(EvictReason r) override {
    absl::MutexLock lock(&mu_);
    evicted_.push_back(r);
    cv_.SignalAll();
  }
  // Blocks until `n` sessions were evicted.
  void AwaitEvictions(size_t n) {
    absl::MutexLock lock(&mu_);
    while (evicted_.size() < n) cv_.Wait(&mu_);
  }
  // Blocks until a request finished with `reason`.
  void AwaitFinished(FinishReason reason) {
    absl::MutexLock lock(&mu_);
    for (;;) {
      for (const RequestObservation& r : finished_) {
        if (r.reason == reason) return;
      }
      cv_.Wait(&mu_);
    }
  }
  std::vector<EvictReason> evicted() const {
    absl::MutexLock lock(&mu_);
    return evicted_;
  }
  std::vector<StepObservation> steps() const {
    absl::MutexLock lock(&mu_);
    return steps_;
  }
  std::vector<RequestObservation> finished() const {
    absl::MutexLock lock(&mu_);
    return finished_;
  }
  std::vector<RejectReason> rejected() const {
    absl::MutexLock lock(&mu_);
    return rejected_;
  }
  int first_tokens() const {
    absl::MutexLock lock(&mu_);
    return first_tokens_;
  }
  int inter_tokens() const {
    absl::MutexLock lock(&mu_);
    return inter_tokens_;
  }

 private:
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<StepObservation> steps_;
  std::vector<RequestObservation> finished_;
  std::vector<RejectReason> rejected_;
  std::vector<EvictReason> evicted_;
  int first_tokens_ = 0;
  int inter_tokens_ = 0;
};

}  // namespace hyla::testing

#endif  // HYLA_TESTS_ENGINE_ENGINE_TEST_UTIL_H_
