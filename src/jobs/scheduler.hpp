// Background jobs as timer coroutines on the server's io_context: the stall sweep and the
// machine offline sweep every few seconds, retention/auto-archive and event pruning hourly.
// Each job is an atomic compare-and-set over an indexed deadline, so any number of instances
// may run them at once. Status of every job is kept for /health/detailed and /metrics.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include "core/types.hpp"

namespace statetrack::core {
class clock;
class session_service;
class machine_service;
}  // namespace statetrack::core
namespace statetrack::storage {
class store;
}
namespace statetrack::obs {
class logger;
class registry;
class counter;
class histogram;
}  // namespace statetrack::obs

namespace statetrack::jobs {

struct scheduler_options {
  bool enabled = true;
  std::int64_t sweep_interval_s = 5;
  std::int64_t machine_offline_after_s = 600;
  std::int64_t retention_days = 30;      // 0 = keep completed/failed sessions forever
  std::int64_t archive_after_days = 90;  // only used when shorter than retention (or no retention)
  std::int64_t retention_interval_s = 3600;
  std::int64_t event_retention_days = 7;
  std::int64_t event_retention_count = 1'000'000;
  std::int64_t restart_grace_s = 60;  // after start, overdue sessions get this long
  double stall_brake_share = 0.5;     // mass-stall brake: share of active sessions ...
  std::int64_t stall_brake_min = 10;  // ... and minimum count (0 disables the brake)
  std::int64_t consistency_interval_s = 60;
};

struct job_status {
  std::string name;
  std::int64_t interval_s = 0;
  std::uint64_t runs = 0;
  std::uint64_t failures = 0;
  std::optional<core::timestamp> last_run_at;
  double last_duration_ms = 0;
  std::int64_t last_changed = 0;
  std::string last_error;
};

class scheduler {
 public:
  scheduler(boost::asio::io_context& ioc, scheduler_options opts, core::session_service& sessions,
            core::machine_service& machines, storage::store& store, const core::clock& clk,
            obs::logger& log, obs::registry& metrics);

  // Sessions whose deadline passed while the tracker was down (or passes within the grace)
  // get until start + grace. Call once at start-up, before accepting requests.
  void apply_restart_grace();
  void start();
  void stop();
  bool enabled() const { return opts_.enabled; }
  // True while the mass-stall brake holds stalls back (an incident is open).
  bool braking() const { return braking_.load(); }
  std::vector<job_status> status() const;
  const scheduler_options& options() const { return opts_; }

  // One pass of each job, for tests and for `now`-driven runs.
  boost::asio::awaitable<std::int64_t> run_stall_sweep();
  boost::asio::awaitable<std::int64_t> run_offline_sweep();
  boost::asio::awaitable<std::int64_t> run_retention();
  boost::asio::awaitable<std::int64_t> run_consistency();

 private:
  struct job {
    job_status st;
    obs::counter* runs = nullptr;
    obs::counter* failures = nullptr;
    obs::counter* changed = nullptr;
    obs::histogram* seconds = nullptr;
  };
  boost::asio::awaitable<void> loop(std::size_t index, std::chrono::seconds every,
                                    std::function<boost::asio::awaitable<std::int64_t>()> body);
  void record(std::size_t index, double ms, std::int64_t changed, const std::string& error);

  boost::asio::io_context& ioc_;
  scheduler_options opts_;
  core::session_service& sessions_;
  core::machine_service& machines_;
  storage::store& store_;
  const core::clock& clock_;
  obs::logger& log_;
  mutable std::mutex mu_;
  std::vector<job> jobs_;
  bool stopping_ = false;
  std::vector<std::shared_ptr<void>> timers_;
  obs::counter* stalls_detected_ = nullptr;
  obs::counter* machines_offlined_ = nullptr;
  obs::counter* escalations_ = nullptr;
  obs::counter* incidents_ = nullptr;
  obs::counter* repairs_ = nullptr;
  std::atomic<bool> braking_{false};
  // Runs the restart grace before the server starts. Kept as long as the scheduler: the store
  // thread that resumes the coroutine is still inside its post to this context when run()
  // may already have returned, so it must not be destroyed right after.
  std::unique_ptr<boost::asio::io_context> startup_ctx_;
};

}  // namespace statetrack::jobs
