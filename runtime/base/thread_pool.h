// ThreadPool: a fixed set of worker threads for data-parallel loops in the CPU backend.
//
// Thread-safety: ParallelFor may be called from one thread at a time per pool (the worker's
// scheduler thread owns its backend and its pool). Work items must not call ParallelFor on the
// same pool (no nesting).
// Invariant: ParallelFor returns only after every item ran exactly once. How [0, n) is cut into
// pieces depends on the number of threads, so callers must compute each item independently of
// the piece it falls in (every CPU op does: results never depend on the thread count).
#ifndef HYLA_RUNTIME_BASE_THREAD_POOL_H_
#define HYLA_RUNTIME_BASE_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hyla {

class ThreadPool {
 public:
  // num_threads <= 1 runs everything on the calling thread.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) over [0, n) in pieces of at least `grain` items, on all threads
  // (the caller included), and waits for all of them.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunPieces();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  // The current job (guarded by mu_ except for next_piece_, an atomic counter).
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t piece_ = 1;
  int64_t num_pieces_ = 0;
  int64_t next_piece_ = 0;
  int64_t pieces_done_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace hyla

#endif  // HYLA_RUNTIME_BASE_THREAD_POOL_H_
