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

RequestStream::RequestStream(uint64_t id, int max_pending, std::function<void()> on_ready,
                             std::function<void()> wake)
    : id_(id),
      max_pending_(static_cast<size_t>(max_pending < 1 ? 1 : max_pending)),
      on_ready_(std::move(on_ready)),
      wake_(std::move(wake)) {}

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
    }
    if (armed_ && on_ready_) {
      armed_ = false;
      notify = true;
    }
    cv_.SignalAll();
  }
  if (notify) on_ready_();
}

size_t RequestStream::pending() const {
  absl::MutexLock lock(&mu_);
  return pending_.size();
}

std::optional<StreamEvent> RequestStream::TryNext() {
  absl::MutexLock lock(&mu_);
  if (pending_.empty()) {
    armed_ = true;
    return std::nullopt;
  }
  StreamEvent e = std::move(pending_.front());
  pending_.pop_front();
  if (e.finish.has_value()) finish_taken_ = true;
  taken_.fetch_add(1, std::memory_order_release);
  return e;
}

StreamEvent RequestStream::Next() {
  absl::MutexLock lock(&mu_);
  HYLA_CHECK(!finish_taken_);
  while (pending_.empty()) cv_.Wait(&mu_);
  StreamEvent e = std::move(pending_.front());
  pending_.pop_front();
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
