// Circuit breaker state transitions.
#include "storage/postgres/breaker.hpp"

#include <algorithm>

namespace statetrack::storage::postgres {

bool breaker::try_claim(clock::time_point now) {
  std::lock_guard lk(mu_);
  if (up_) return true;
  if (probing_ || now < next_attempt_) return false;
  probing_ = true;
  return true;
}

void breaker::record_success() {
  {
    std::lock_guard lk(mu_);
    up_ = true;
    probing_ = false;
    backoff_ = opts_.backoff_min;
    last_error_.clear();
  }
  cv_.notify_all();
}

void breaker::record_failure(const std::string& why, clock::time_point now) {
  {
    std::lock_guard lk(mu_);
    last_error_ = why;
    if (up_) {
      up_ = false;
      down_since_ = now;
      backoff_ = opts_.backoff_min;
      next_attempt_ = now + backoff_;
    } else if (probing_) {
      backoff_ = std::min(backoff_ * 2, opts_.backoff_max);
      next_attempt_ = now + backoff_;
    }
    probing_ = false;
  }
  cv_.notify_all();
}

bool breaker::up() const {
  std::lock_guard lk(mu_);
  return up_;
}

bool breaker::open(clock::time_point now) const {
  std::lock_guard lk(mu_);
  return !up_ && now - down_since_ >= opts_.open_after;
}

bool breaker::fail_fast(clock::time_point now) const {
  std::lock_guard lk(mu_);
  return !up_ && now - down_since_ >= opts_.open_after && (probing_ || now < next_attempt_);
}

breaker::clock::time_point breaker::next_attempt() const {
  std::lock_guard lk(mu_);
  return up_ ? clock::time_point{} : next_attempt_;
}

std::string breaker::last_error() const {
  std::lock_guard lk(mu_);
  return last_error_;
}

std::chrono::milliseconds breaker::down_for(clock::time_point now) const {
  std::lock_guard lk(mu_);
  if (up_) return std::chrono::milliseconds(0);
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - down_since_);
}

void breaker::wait(clock::time_point until) {
  std::unique_lock lk(mu_);
  while (!interrupted_ && !up_) {
    const auto now = clock::now();
    if (now >= until) return;
    if (!probing_ && now >= next_attempt_) return;
    // While another thread is trying, its outcome (notify) decides what happens next.
    cv_.wait_until(lk, probing_ ? until : std::min(until, next_attempt_));
  }
}

void breaker::interrupt() {
  {
    std::lock_guard lk(mu_);
    interrupted_ = true;
  }
  cv_.notify_all();
}

}  // namespace statetrack::storage::postgres
