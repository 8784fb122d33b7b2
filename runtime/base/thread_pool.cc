#include "runtime/base/thread_pool.h"

#include <algorithm>

namespace hyla {

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunPieces() {
  for (;;) {
    int64_t piece;
    const std::function<void(int64_t, int64_t)>* fn;
    int64_t begin, end;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (fn_ == nullptr || next_piece_ >= num_pieces_) return;
      piece = next_piece_++;
      fn = fn_;
      begin = piece * piece_;
      end = std::min(n_, begin + piece_);
    }
    (*fn)(begin, end);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (++pieces_done_ == num_pieces_) done_cv_.notify_all();
    }
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    RunPieces();
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t threads = num_threads();
  if (threads == 1 || n <= grain) {
    fn(0, n);
    return;
  }
  // Pieces: about 4 per thread, never smaller than grain.
  int64_t piece = std::max<int64_t>(grain, (n + threads * 4 - 1) / (threads * 4));
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_ = n;
    piece_ = piece;
    num_pieces_ = (n + piece - 1) / piece;
    next_piece_ = 0;
    pieces_done_ = 0;
    ++generation_;
  }
  work_cv_.notify_all();
  RunPieces();
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return pieces_done_ == num_pieces_; });
  fn_ = nullptr;
}

}  // namespace hyla
