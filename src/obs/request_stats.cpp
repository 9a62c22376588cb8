// Registration of per-route series and the hot-path record().
#include "obs/request_stats.hpp"

#include <cmath>

namespace statetrack::obs {

request_stats::request_stats(registry& reg, const std::vector<route_info>& routes) {
  static constexpr std::array<const char*, 5> classes = {"1xx", "2xx", "3xx", "4xx", "5xx"};
  auto add_series = [&](const std::string& method, const std::string& pattern) {
    series s;
    for (std::size_t c = 0; c < classes.size(); ++c) {
      s.by_class[c] = &reg.add_counter(
          "statetrack_http_requests_total", "HTTP requests by route and status class",
          {{"method", method}, {"route", pattern}, {"status_class", classes[c]}});
    }
    s.latency = &reg.add_histogram("statetrack_http_request_duration_seconds",
                                   "HTTP request latency by route", latency_bounds_seconds(),
                                   {{"method", method}, {"route", pattern}});
    routes_.push_back(s);
  };
  for (const auto& r : routes)
    add_series(r.method, r.pattern);
  add_series("any", "unmatched");
  all_latency_ =
      &reg.add_histogram("statetrack_http_all_request_duration_seconds",
                         "HTTP request latency over all routes", latency_bounds_seconds());
  errors_[0] = &reg.add_counter("statetrack_http_errors_total", "HTTP error responses by class",
                                {{"class", "4xx"}});
  errors_[1] = &reg.add_counter("statetrack_http_errors_total", "HTTP error responses by class",
                                {{"class", "5xx"}});
}

void request_stats::record(std::size_t route_index, unsigned status, double seconds) {
  if (route_index >= routes_.size()) route_index = routes_.size() - 1;
  auto& s = routes_[route_index];
  std::size_t cls = status / 100;
  if (cls >= 1 && cls <= 5) s.by_class[cls - 1]->inc();
  s.latency->observe(seconds);
  all_latency_->observe(seconds);
  if (cls == 4) errors_[0]->inc();
  if (cls == 5) {
    errors_[1]->inc();
    server_errors_.fetch_add(1, std::memory_order_relaxed);
  }
  total_.fetch_add(1, std::memory_order_relaxed);
  micros_.fetch_add(static_cast<std::uint64_t>(std::llround(seconds * 1e6)),
                    std::memory_order_relaxed);
}

double request_stats::error_rate_percent() const {
  auto t = total();
  if (t == 0) return 0;
  return std::round(static_cast<double>(server_errors_.load()) * 10000.0 / static_cast<double>(t)) /
         100.0;
}

double request_stats::average_ms() const {
  auto t = total();
  if (t == 0) return 0;
  return std::round(static_cast<double>(micros_.load()) / static_cast<double>(t) / 10.0) / 100.0;
}

}  // namespace statetrack::obs
