// The injected source of time. Production uses the system clock; tests use manual_clock so
// that no test sleeps or depends on wall time.
#pragma once

#include <atomic>

#include "core/types.hpp"

namespace statetrack::core {

/// Source of the current time for every domain decision (deadlines, sweeps, timestamps).
class clock {
 public:
  virtual ~clock() = default;
  virtual timestamp now() const = 0;
};

class system_clock final : public clock {
 public:
  timestamp now() const override;
};

// Thread-safe manual clock for tests: time moves only when a test says so.
class manual_clock final : public clock {
 public:
  explicit manual_clock(timestamp start) : ms_(start.ms) {}
  timestamp now() const override { return {ms_.load()}; }
  void set(timestamp t) { ms_.store(t.ms); }
  void advance_ms(std::int64_t delta) { ms_.fetch_add(delta); }

 private:
  std::atomic<std::int64_t> ms_;
};

}  // namespace statetrack::core
