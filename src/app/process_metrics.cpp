// Callbacks evaluated when /metrics is scraped.
#include "app/process_metrics.hpp"

#include "core/types.hpp"
#include "obs/metrics.hpp"
#include "obs/process.hpp"
#include "storage/store.hpp"

namespace statetrack::app {

void register_process_metrics(obs::registry& metrics, storage::store& store) {
  metrics.add_callback("statetrack_sessions", "Sessions by status", "gauge", [&store] {
    std::vector<std::pair<obs::labels, double>> out;
    std::vector<std::int64_t> counts;
    try {
      store.read_now([&](storage::read_view& v) { counts = v.count_sessions_by_status(); });
    } catch (const std::exception&) {
      return out;  // database unavailable: no sample rather than a wrong one
    }
    for (std::size_t i = 0; i < counts.size(); ++i) {
      out.push_back({{{"status", std::string(core::session_status_names[i])}},
                     static_cast<double>(counts[i])});
    }
    return out;
  });
  metrics.add_callback("statetrack_store_queue_depth", "Writes waiting for the writer", "gauge",
                       [&store] {
                         return std::vector<std::pair<obs::labels, double>>{
                             {{}, static_cast<double>(store.stats().queue_depth)}};
                       });
  metrics.add_callback("statetrack_store_commits_total", "Group commits", "counter", [&store] {
    return std::vector<std::pair<obs::labels, double>>{
        {{}, static_cast<double>(store.stats().commits)}};
  });
  metrics.add_callback("statetrack_store_failed_commits_total", "Failed commits", "counter",
                       [&store] {
                         return std::vector<std::pair<obs::labels, double>>{
                             {{}, static_cast<double>(store.stats().failed_commits)}};
                       });
  metrics.add_callback("statetrack_ready", "1 when the database answers a ping, else 0", "gauge",
                       [&store] {
                         bool ok = false;
                         try {
                           ok = store.ping().has_value();
                         } catch (const std::exception&) {
                           ok = false;
                         }
                         return std::vector<std::pair<obs::labels, double>>{{{}, ok ? 1.0 : 0.0}};
                       });
  metrics.add_callback("process_resident_memory_bytes", "Resident memory size", "gauge", [] {
    return std::vector<std::pair<obs::labels, double>>{
        {{}, static_cast<double>(obs::read_process().rss_bytes)}};
  });
  metrics.add_callback("process_cpu_seconds_total", "User and system CPU time", "counter", [] {
    auto p = obs::read_process();
    return std::vector<std::pair<obs::labels, double>>{
        {{}, static_cast<double>(p.cpu_user_ms + p.cpu_system_ms) / 1000.0}};
  });
  metrics.add_callback("process_open_fds", "Open file descriptors", "gauge", [] {
    return std::vector<std::pair<obs::labels, double>>{
        {{}, static_cast<double>(obs::read_process().open_fds)}};
  });
}

}  // namespace statetrack::app
