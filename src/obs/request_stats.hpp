// Per-route request metrics recorded by the pipeline: counts by status class, latency
// histograms, and the running error rate and mean latency shown by /health/detailed.
// Series are registered once at start (one per route), then updated lock-free.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "obs/metrics.hpp"

namespace statetrack::obs {

class request_stats {
 public:
  struct route_info {
    std::string method;
    std::string pattern;
  };
  request_stats(registry& reg, const std::vector<route_info>& routes);

  // route_index == routes.size() means "no route matched".
  void record(std::size_t route_index, unsigned status, double seconds);

  std::uint64_t total() const { return total_.load(std::memory_order_relaxed); }
  double error_rate_percent() const;  // 5xx share of all requests since start
  double average_ms() const;
  double p95_seconds() const { return all_latency_->quantile(0.95); }

 private:
  struct series {
    std::array<counter*, 5> by_class{};  // 1xx..5xx
    histogram* latency = nullptr;
  };
  std::vector<series> routes_;
  histogram* all_latency_ = nullptr;
  std::array<counter*, 2> errors_{};  // 4xx, 5xx
  std::atomic<std::uint64_t> total_{0};
  std::atomic<std::uint64_t> server_errors_{0};
  std::atomic<std::uint64_t> micros_{0};
};

}  // namespace statetrack::obs
