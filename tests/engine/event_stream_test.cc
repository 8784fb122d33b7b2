// RequestStream (merging for slow readers, readiness notification, cancellation), EventNotifier
// (on_ready off the pushing thread, in order; Hold / Release; Stop), ManualClock
// and SessionManager (ids, pinning, LRU capacity eviction) in isolation.
#include "runtime/engine/event_stream.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/engine/clock.h"
#include "runtime/engine/session_manager.h"

namespace hyla {
namespace {

StreamEvent Token(int32_t id, const std::string& text) {
  StreamEvent e;
  e.token_ids.push_back(id);
  e.text = text;
  TokenLogprob lp;
  lp.id = id;
  lp.logprob = -1.0f * static_cast<float>(id);
  e.logprobs.push_back(lp);
  return e;
}

TEST(RequestStreamTest, MergesTokensBeyondThePendingCap) {
  RequestStream s(1, 2, nullptr, nullptr);
  s.Push(Token(1, "a"));
  s.Push(Token(2, "b"));
  s.Push(Token(3, "c"));
  StreamEvent last = Token(4, "d");
  last.finish = Finish();
  s.Push(std::move(last));
  EXPECT_EQ(s.pending(), 2u);
  EXPECT_EQ(s.merged(), 2u);
  auto first = s.TryNext();
  ASSERT_TRUE(first.has_value());
  EXPECT_THAT(first->token_ids, ::testing::ElementsAre(1));
  auto second = s.TryNext();
  ASSERT_TRUE(second.has_value());
  EXPECT_THAT(second->token_ids, ::testing::ElementsAre(2, 3, 4));
  EXPECT_EQ(second->text, "bcd");
  ASSERT_EQ(second->logprobs.size(), 3u);
  EXPECT_EQ(second->logprobs[2].id, 4);
  EXPECT_TRUE(second->finish.has_value());
  EXPECT_TRUE(s.done());
  EXPECT_EQ(s.taken(), 2u);
  EXPECT_FALSE(s.TryNext().has_value());
}

TEST(RequestStreamTest, OnReadyFiresWhenTheConsumerWaits) {
  std::atomic<int> ready{0};
  RequestStream s(
      1, 8, [&ready] { ++ready; }, nullptr);
  s.Push(Token(1, "a"));
  EXPECT_EQ(ready.load(), 1);  // the consumer had not read yet
  s.Push(Token(2, "b"));
  EXPECT_EQ(ready.load(), 1);  // not re-armed: the consumer has not drained the stream
  ASSERT_TRUE(s.TryNext().has_value());
  ASSERT_TRUE(s.TryNext().has_value());
  EXPECT_FALSE(s.TryNext().has_value());  // re-arms
  s.Push(Token(3, "c"));
  EXPECT_EQ(ready.load(), 2);
}

TEST(RequestStreamTest, CancelWakesTheWorkerOnce) {
  int wakes = 0;
  RequestStream s(1, 8, nullptr, [&wakes] { ++wakes; });
  EXPECT_FALSE(s.cancelled());
  s.Cancel();
  s.Cancel();
  EXPECT_TRUE(s.cancelled());
  EXPECT_EQ(wakes, 1);
}

TEST(RequestStreamTest, NextBlocksUntilAnEventArrives) {
  auto s = std::make_shared<RequestStream>(1, 8, nullptr, nullptr);
  std::thread producer([s] {
    StreamEvent e = Token(7, "x");
    e.finish = Finish();
    s->Push(std::move(e));
  });
  const StreamEvent e = s->Next();
  producer.join();
  EXPECT_THAT(e.token_ids, ::testing::ElementsAre(7));
  EXPECT_TRUE(e.finish.has_value());
}

TEST(RequestStreamTest, TryNextMergedTakesEveryPendingEvent) {
  RequestStream s(1, 8, nullptr, nullptr);
  s.Push(Token(1, "a"));
  s.Push(Token(2, "b"));
  StreamEvent last = Token(3, "c");
  last.finish = Finish();
  s.Push(std::move(last));
  auto e = s.TryNextMerged();
  ASSERT_TRUE(e.has_value());
  EXPECT_THAT(e->token_ids, ::testing::ElementsAre(1, 2, 3));
  EXPECT_EQ(e->text, "abc");
  ASSERT_EQ(e->logprobs.size(), 3u);
  EXPECT_EQ(e->logprobs[1].id, 2);
  EXPECT_TRUE(e->finish.has_value());
  EXPECT_TRUE(s.done());
  EXPECT_EQ(s.taken(), 3u);  // every event counts as taken (the slow-consumer check)
  EXPECT_EQ(s.pending(), 0u);
  EXPECT_FALSE(s.TryNextMerged().has_value());
}

TEST(RequestStreamTest, TryNextMergedReArmsOnReadyWhenEmpty) {
  std::atomic<int> ready{0};
  RequestStream s(
      1, 8, [&ready] { ++ready; }, nullptr);
  EXPECT_FALSE(s.TryNextMerged().has_value());
  s.Push(Token(1, "a"));
  EXPECT_EQ(ready.load(), 1);
  ASSERT_TRUE(s.TryNextMerged().has_value());
  s.Push(Token(2, "b"));
  EXPECT_EQ(ready.load(), 1);  // not drained to empty yet: not re-armed
  ASSERT_TRUE(s.TryNextMerged().has_value());
  EXPECT_FALSE(s.TryNextMerged().has_value());  // re-arms
  s.Push(Token(3, "c"));
  EXPECT_EQ(ready.load(), 2);
}

// Records the threads and order in which on_ready callbacks ran.
struct ReadyLog {
  absl::Mutex mu;
  std::vector<std::pair<uint64_t, std::thread::id>> calls ABSL_GUARDED_BY(mu);
  void Add(uint64_t id) {
    absl::MutexLock lock(&mu);
    calls.emplace_back(id, std::this_thread::get_id());
  }
  bool AwaitCount(size_t n) {
    absl::MutexLock lock(&mu);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return calls.size() >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  }
  size_t size() {
    absl::MutexLock lock(&mu);
    return calls.size();
  }
};

TEST(EventNotifierTest, RunsOnReadyOffThePushingThreadInPostingOrder) {
  EventNotifier notifier;
  ReadyLog log;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (uint64_t id = 1; id <= 5; ++id) {
    streams.push_back(std::make_shared<RequestStream>(
        id, 8, [&log, id] { log.Add(id); }, nullptr, &notifier));
  }
  for (auto& s : streams) s->Push(Token(1, "a"));
  ASSERT_TRUE(log.AwaitCount(5));
  absl::MutexLock lock(&log.mu);
  ASSERT_EQ(log.calls.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(log.calls[i].first, i + 1);
    EXPECT_NE(log.calls[i].second, std::this_thread::get_id());
  }
}

TEST(EventNotifierTest, HoldDefersTheWakeUpUntilRelease) {
  EventNotifier notifier;
  ReadyLog log;
  auto s = std::make_shared<RequestStream>(
      1, 8, [&log] { log.Add(1); }, nullptr, &notifier);
  auto t = std::make_shared<RequestStream>(
      2, 8, [&log] { log.Add(2); }, nullptr, &notifier);
  // Let the notifier go to sleep first: a hold only defers waking a sleeping thread.
  s->Push(Token(1, "a"));
  ASSERT_TRUE(log.AwaitCount(1));
  ASSERT_TRUE(s->TryNext().has_value());
  EXPECT_FALSE(s->TryNext().has_value());  // re-arms
  absl::SleepFor(absl::Milliseconds(20));
  notifier.Hold();
  s->Push(Token(2, "b"));
  t->Push(Token(1, "x"));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(log.size(), 1u);  // queued, not delivered while held
  notifier.Release();
  ASSERT_TRUE(log.AwaitCount(3));
  absl::MutexLock lock(&log.mu);
  EXPECT_EQ(log.calls[1].first, 1u);
  EXPECT_EQ(log.calls[2].first, 2u);
}

TEST(EventNotifierTest, StopDeliversWhatIsQueuedAndLaterPostsRunInline) {
  ReadyLog log;
  auto notifier = std::make_unique<EventNotifier>();
  auto s = std::make_shared<RequestStream>(
      1, 8, [&log] { log.Add(1); }, nullptr, notifier.get());
  notifier->Hold();  // keep it queued until Stop
  s->Push(Token(1, "a"));
  notifier->Stop();
  EXPECT_EQ(log.size(), 1u);
  ASSERT_TRUE(s->TryNext().has_value());
  EXPECT_FALSE(s->TryNext().has_value());
  s->Push(Token(2, "b"));  // after Stop: on the pushing thread, at once
  absl::MutexLock lock(&log.mu);
  ASSERT_EQ(log.calls.size(), 2u);
  EXPECT_EQ(log.calls[1].second, std::this_thread::get_id());
}

TEST(RequestHandleTest, DestroyingAnUnfinishedHandleCancels) {
  int wakes = 0;
  auto s = std::make_shared<RequestStream>(1, 8, nullptr, [&wakes] { ++wakes; });
  { RequestHandle h(s); }
  EXPECT_TRUE(s->cancelled());
  auto t = std::make_shared<RequestStream>(2, 8, nullptr, [&wakes] { ++wakes; });
  {
    RequestHandle h(t);
    StreamEvent e;
    e.finish = Finish();
    t->Push(std::move(e));
    h.Next();
  }
  EXPECT_FALSE(t->cancelled());
  EXPECT_EQ(wakes, 1);
}

TEST(ManualClockTest, AdvanceWakesAWaiterPastItsDeadline) {
  ManualClock clock;
  absl::Mutex mu;
  absl::CondVar cv;
  const absl::Time deadline = clock.Now() + absl::Seconds(10);
  std::atomic<bool> woke{false};
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    while (clock.Now() < deadline) clock.WaitUntil(&cv, &mu, deadline);
    woke = true;
  });
  // Advance in steps until the waiter has seen the deadline; each step wakes it.
  clock.Advance(absl::Seconds(4));
  clock.Advance(absl::Seconds(7));
  waiter.join();
  EXPECT_TRUE(woke.load());
  EXPECT_EQ(clock.waiters(), 0);
  // A deadline already passed returns at once.
  absl::MutexLock lock(&mu);
  clock.WaitUntil(&cv, &mu, clock.Now());
}

TEST(SessionManagerTest, IdsArePinnedAndRemovedOnlyWhenIdle) {
  SessionManager m(4, 1);
  const absl::Time t0 = absl::FromUnixSeconds(100);
  std::string id;
  std::optional<EvictedSession> evicted;
  ASSERT_TRUE(m.Reserve(&id, 0, t0, &evicted).ok());
  EXPECT_THAT(id, ::testing::StartsWith("s-"));
  EXPECT_FALSE(evicted.has_value());
  EXPECT_TRUE(m.Get(id)->busy);  // creating
  EXPECT_EQ(m.Pin(id).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(m.Remove(id).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(m.TryEvict(id));
  StateMemory mem;
  mem.context_tokens = 12;
  m.Unpin(id, mem, t0 + absl::Seconds(1));
  EXPECT_EQ(m.Get(id)->state.context_tokens, 12);
  EXPECT_EQ(m.Get(id)->last_use, t0 + absl::Seconds(1));
  auto worker = m.Pin(id);
  ASSERT_TRUE(worker.ok());
  EXPECT_EQ(*worker, 0);
  m.Unpin(id, mem, t0 + absl::Seconds(2));
  EXPECT_TRUE(m.Remove(id).ok());
  EXPECT_EQ(m.Get(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m.Pin(id).status().code(), absl::StatusCode::kNotFound);
}

TEST(SessionManagerTest, CapacityEvictsTheLeastRecentlyUsedIdleSession) {
  SessionManager m(2, 1);
  const absl::Time t0 = absl::FromUnixSeconds(100);
  std::optional<EvictedSession> evicted;
  std::string a = "a", b = "b", c = "c", d = "d";
  ASSERT_TRUE(m.Reserve(&a, 0, t0, &evicted).ok());
  ASSERT_TRUE(m.Reserve(&b, 1, t0, &evicted).ok());
  m.Unpin("a", StateMemory(), t0 + absl::Seconds(5));
  m.Unpin("b", StateMemory(), t0 + absl::Seconds(3));
  EXPECT_EQ(m.Reserve(&a, 0, t0, &evicted).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(m.Reserve(&c, 0, t0 + absl::Seconds(6), &evicted).ok());
  ASSERT_TRUE(evicted.has_value());
  EXPECT_EQ(evicted->id, "b");
  EXPECT_EQ(evicted->worker, 1);
  // "a" idle, "c" busy: "a" goes; then both busy: Unavailable.
  ASSERT_TRUE(m.Reserve(&d, 0, t0 + absl::Seconds(7), &evicted).ok());
  EXPECT_EQ(evicted->id, "a");
  std::string e = "e";
  EXPECT_EQ(m.Reserve(&e, 0, t0, &evicted).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(m.size(), 2);
  std::vector<std::string> ids;
  for (const SessionInfo& s : m.List()) ids.push_back(s.id);
  EXPECT_THAT(ids, ::testing::ElementsAre("c", "d"));
}

TEST(SessionManagerTest, ValidatesIds) {
  EXPECT_TRUE(SessionManager::ValidateId("Az09._-", "session_id").ok());
  EXPECT_EQ(SessionManager::ValidateId("", "session_id").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SessionManager::ValidateId(std::string(129, 'a'), "session_id").code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status st = SessionManager::ValidateId("a/b", "new_session_id");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), ::testing::StartsWith("new_session_id"));
}

}  // namespace
}  // namespace hyla
