// Tests of ThreadPool::ParallelFor: every index runs exactly once for many (n, grain, threads),
// pieces respect the grain, boundaries do not depend on the number of threads, and the call
// returns only after all work is done.
#include "runtime/base/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace hyla {
namespace {

// The pieces one ParallelFor call handed out, sorted.
std::vector<std::pair<int64_t, int64_t>> Pieces(ThreadPool* pool, int64_t n, int64_t grain,
                                                std::vector<int>* hits) {
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> pieces;
  std::unique_ptr<std::atomic<int>[]> counts(new std::atomic<int>[static_cast<size_t>(n + 1)]);
  for (int64_t i = 0; i <= n; ++i) counts[i].store(0);
  pool->ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end && i >= 0 && i < n; ++i) counts[i].fetch_add(1);
    std::lock_guard<std::mutex> lock(mu);
    pieces.emplace_back(begin, end);
  });
  hits->assign(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) (*hits)[i] = counts[i].load();
  std::sort(pieces.begin(), pieces.end());
  return pieces;
}

TEST(ThreadPoolTest, NumThreads) {
  EXPECT_EQ(ThreadPool(0).num_threads(), 1);
  EXPECT_EQ(ThreadPool(1).num_threads(), 1);
  EXPECT_EQ(ThreadPool(3).num_threads(), 3);
}

TEST(ThreadPoolTest, EveryIndexExactlyOnce) {
  const int64_t sizes[] = {0, 1, 2, 3, 5, 7, 16, 63, 64, 65, 100, 257, 1000, 4097, 20000};
  const int64_t grains[] = {0, 1, 2, 3, 7, 16, 64, 100, 1000, 100000};
  for (int threads : {1, 2, 3, 4, 8}) {
    ThreadPool pool(threads);
    for (int64_t n : sizes) {
      for (int64_t grain : grains) {
        SCOPED_TRACE(testing::Message()
                     << "threads=" << threads << " n=" << n << " grain=" << grain);
        std::vector<int> hits;
        const auto pieces = Pieces(&pool, n, grain, &hits);
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i], 1) << "index " << i;
        // Pieces are non-empty, inside [0, n), disjoint and cover [0, n).
        int64_t next = 0;
        for (const auto& [b, e] : pieces) {
          ASSERT_EQ(b, next);
          ASSERT_LT(b, e);
          ASSERT_LE(e, n);
          // At least `grain` items, except the last piece.
          if (e != n) {
            ASSERT_GE(e - b, std::max<int64_t>(grain, 1));
          }
          next = e;
        }
        ASSERT_EQ(next, n);
        if (n == 0) {
          ASSERT_TRUE(pieces.empty());
        }
      }
    }
  }
}

TEST(ThreadPoolTest, ReturnsOnlyAfterAllWorkAndIsReusable) {
  ThreadPool pool(4);
  std::vector<int64_t> out(10007);
  for (int round = 0; round < 300; ++round) {
    pool.ParallelFor(static_cast<int64_t>(out.size()), 13, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[static_cast<size_t>(i)] = i * 3 + round;
    });
    // Plain (non-atomic) writes must all be visible once ParallelFor returns.
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_EQ(out[i], static_cast<int64_t>(i) * 3 + round) << "round " << round << " i " << i;
    }
  }
}

TEST(ThreadPoolTest, PoolOfOneRunsOnTheCallingThread) {
  ThreadPool pool(1);
  const std::thread::id me = std::this_thread::get_id();
  bool same = true;
  pool.ParallelFor(1000, 1,
                   [&](int64_t, int64_t) { same = same && std::this_thread::get_id() == me; });
  EXPECT_TRUE(same);
}

}  // namespace
}  // namespace hyla
