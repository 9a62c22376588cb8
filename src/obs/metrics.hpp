// Process-wide metrics: counters, gauges and histograms registered by name and labels, and
// their Prometheus text rendering. Updates are lock-free atomics; registration takes a lock
// and returns a reference that stays valid for the registry's lifetime.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace statetrack::obs {

using labels = std::vector<std::pair<std::string, std::string>>;

class counter {
 public:
  void inc(std::uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

class gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void add(double d);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Cumulative histogram with fixed upper bounds (Prometheus `le` buckets).
class histogram {
 public:
  explicit histogram(std::vector<double> bounds);
  void observe(double v);
  std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const;
  const std::vector<double>& bounds() const { return bounds_; }
  // Non-cumulative count of bucket i (i == bounds().size() is +Inf).
  std::uint64_t bucket(std::size_t i) const { return buckets_[i].load(std::memory_order_relaxed); }
  // Estimated quantile (0..1) by linear interpolation inside the bucket; 0 when empty.
  double quantile(double q) const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_micros_{0};  // sum in millionths, to stay lock-free
};

// Bounds for request latencies in seconds (100 us .. 10 s).
std::vector<double> latency_bounds_seconds();

class registry {
 public:
  counter& add_counter(std::string name, std::string help, labels l = {});
  gauge& add_gauge(std::string name, std::string help, labels l = {});
  histogram& add_histogram(std::string name, std::string help, std::vector<double> bounds,
                           labels l = {});
  // A gauge computed when scraped (e.g. sessions by status, process memory).
  void add_callback(std::string name, std::string help, std::string type,
                    std::function<std::vector<std::pair<labels, double>>()> fn);

  std::string render_prometheus() const;

 private:
  enum class kind { counter, gauge, histogram };
  struct entry {
    std::string name;
    std::string help;
    labels l;
    kind k;
    counter* c = nullptr;
    gauge* g = nullptr;
    histogram* h = nullptr;
  };
  struct callback {
    std::string name, help, type;
    std::function<std::vector<std::pair<labels, double>>()> fn;
  };
  mutable std::mutex mu_;
  std::deque<counter> counters_;
  std::deque<gauge> gauges_;
  std::deque<histogram> histograms_;
  std::vector<entry> entries_;
  std::vector<callback> callbacks_;
};

}  // namespace statetrack::obs
