// The PostgreSQL store's view of whether the database can be reached, shared by its writer,
// readers and listener: a circuit breaker over connection attempts. While up, any thread may
// connect. After a failed connection attempt it is down: one thread at a time may try again,
// after a delay that doubles from `backoff_min` to `backoff_max`; once it has been down for
// `open_after`, operations fail at once instead of waiting (circuit open). Any successful
// connection closes it again and wakes every waiting thread. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>

namespace statetrack::storage::postgres {

class breaker {
 public:
  using clock = std::chrono::steady_clock;
  struct options {
    std::chrono::milliseconds backoff_min{100};
    std::chrono::milliseconds backoff_max{4000};
    std::chrono::milliseconds open_after{5000};
  };

  explicit breaker(options o) : opts_(o), backoff_(o.backoff_min) {}

  // True when the caller may try to connect now: always while up; while down, only when the
  // backoff delay has passed and no other thread is already trying (the caller then owns the
  // attempt until it reports success or failure).
  bool try_claim(clock::time_point now);
  void record_success();
  void record_failure(const std::string& why, clock::time_point now);

  bool up() const;
  // Down for at least open_after.
  bool open(clock::time_point now) const;
  // Open and no reconnect attempt is due: callers fail at once. When one is due, the caller
  // goes ahead and its worker makes the attempt (half-open), so a process whose only traffic
  // is requests still notices the database coming back.
  bool fail_fast(clock::time_point now) const;
  // When the next attempt may be claimed (now or earlier while up).
  clock::time_point next_attempt() const;
  std::string last_error() const;
  // How long the current outage has lasted (zero while up).
  std::chrono::milliseconds down_for(clock::time_point now) const;

  // Blocks until the breaker closes, an attempt may be claimed, `until` passes, or interrupt().
  void wait(clock::time_point until);
  void interrupt();

 private:
  options opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool up_ = true;
  bool probing_ = false;
  bool interrupted_ = false;
  clock::time_point down_since_{};
  clock::time_point next_attempt_{};
  std::chrono::milliseconds backoff_;
  std::string last_error_;
};

}  // namespace statetrack::storage::postgres
