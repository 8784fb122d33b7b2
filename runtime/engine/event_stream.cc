#include "runtime/engine/event_stream.h"

#include <utility>

#include "runtime/base/check.h"

namespace hyla {

void MergeEvent(StreamEvent* into, StreamEvent&& from) {
  into->token_ids.insert(into->token_ids.end(), from.token_ids.begin(), from.token_ids.end());
  into->text += from.text;
  for (TokenLogprob& lp : from.logprobs) into->logprobs.push_back(std::move(lp));
  if (from.finish.has_value()) into->finish = std::move(from.finish);
}

EventNotifier::EventNotifier() : thread_([this] { Loop(); }) {}

EventNotifier::~EventNotifier() { Stop(); }

void EventNotifier::Post(std::shared_ptr<RequestStream> stream) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopped_) {
      queue_.push_back(std::move(stream));
      if (sleeping_ && holds_ == 0) {
        sleeping_ = false;
        cv_.Signal();
      }
      return;
    }
  }
  stream->on_ready_();
}

void EventNotifier::Hold() {
  absl::MutexLock lock(&mu_);
  ++holds_;
}

void EventNotifier::Release() {
  absl::MutexLock lock(&mu_);
  HYLA_CHECK(holds_ > 0);
  --holds_;
  if (holds_ == 0 && sleeping_ && !queue_.empty()) {
    sleeping_ = false;
    cv_.Signal();
  }
}

void EventNotifier::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    cv_.Signal();
  }
  if (thread_.joinable()) thread_.join();
}

void EventNotifier::Loop() {
  std::vector<std::shared_ptr<RequestStream>> batch;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      while (queue_.empty() && !stop_) {
        sleeping_ = true;
        cv_.Wait(&mu_);
      }
      sleeping_ = false;
      if (queue_.empty()) {  // stop_, and nothing left
        stopped_ = true;
        return;
      }
      batch.swap(queue_);
    }
    for (std::shared_ptr<RequestStream>& s : batch) s->on_ready_();
    batch.clear();  // drops the references outside the lock
  }
}

RequestStream::RequestStream(uint64_t id, int max_pending, std::function<void()> on_ready,
                             std::function<void()> wake, EventNotifier* notifier)
    : id_(id),
      max_pending_(static_cast<size_t>(max_pending < 1 ? 1 : max_pending)),
      on_ready_(std::move(on_ready)),
      wake_(std::move(wake)),
      notifier_(notifier) {}

void RequestStream::Push(StreamEvent event) {
  bool notify = false;
  {
    absl::MutexLock lock(&mu_);
    HYLA_CHECK(!finish_pushed_);
    finish_pushed_ = event.finish.has_value();
    if (pending_.size() >= max_pending_) {
      MergeEvent(&pending_.back(), std::move(event));
      merged_.fetch_add(1, std::memory_order_relaxed);
    } else {
      pending_.push_back(std::move(event));
      pending_count_.store(pending_.size(), std::memory_order_release);
    }
    if (armed_ && on_ready_) {
      armed_ = false;
      notify = true;
    }
    cv_.SignalAll();
  }
  if (!notify) return;
  if (notifier_ != nullptr) {
    notifier_->Post(shared_from_this());
  } else {
    on_ready_();
  }
}

size_t RequestStream::pending() const { return pending_count_.load(std::memory_order_acquire); }

std::optional<StreamEvent> RequestStream::TryNext() {
  absl::MutexLock lock(&mu_);
  if (pending_.empty()) {
    armed_ = true;
    return std::nullopt;
  }
  StreamEvent e = std::move(pending_.front());
  pending_.pop_front();
  pending_count_.store(pending_.size(), std::memory_order_release);
  if (e.finish.has_value()) finish_taken_ = true;
  taken_.fetch_add(1, std::memory_order_release);
  return e;
}

std::optional<StreamEvent> RequestStream::TryNextMerged() {
  absl::MutexLock lock(&mu_);
  if (pending_.empty()) {
    armed_ = true;
    return std::nullopt;
  }
  StreamEvent e = std::move(pending_.front());
  pending_.pop_front();
  uint64_t n = 1;
  while (!pending_.empty()) {
    MergeEvent(&e, std::move(pending_.front()));
    pending_.pop_front();
    ++n;
  }
  pending_count_.store(0, std::memory_order_release);
  if (e.finish.has_value()) finish_taken_ = true;
  taken_.fetch_add(n, std::memory_order_release);
  return e;
}

StreamEvent RequestStream::Next() {
  absl::MutexLock lock(&mu_);
  HYLA_CHECK(!finish_taken_);
  while (pending_.empty()) cv_.Wait(&mu_);
  StreamEvent e = std::move(pending_.front());
  pending_.pop_front();
  pending_count_.store(pending_.size(), std::memory_order_release);
  if (e.finish.has_value()) finish_taken_ = true;
  taken_.fetch_add(1, std::memory_order_release);
  return e;
}

void RequestStream::Cancel() {
  if (cancelled_.exchange(true, std::memory_order_acq_rel)) return;
  if (wake_) wake_();
}

bool RequestStream::done() const {
  absl::MutexLock lock(&mu_);
  return finish_taken_;
}

RequestHandle::~RequestHandle() {
  if (stream_ != nullptr && !stream_->done()) stream_->Cancel();
}

}  // namespace hyla
