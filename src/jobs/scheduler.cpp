// Job loops, their bookkeeping and log lines.
#include "jobs/scheduler.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "core/clock.hpp"
#include "core/consistency.hpp"
#include "core/error.hpp"
#include "core/machine_service.hpp"
#include "core/session_service.hpp"
#include "obs/logger.hpp"
#include "obs/metrics.hpp"
#include "storage/store.hpp"

namespace statetrack::jobs {

namespace asio = boost::asio;

namespace {
constexpr std::int64_t day_ms = 86'400'000;
constexpr std::int64_t batch = 500;
enum : std::size_t { stall_job = 0, offline_job = 1, retention_job = 2, consistency_job = 3 };
}  // namespace

scheduler::scheduler(asio::io_context& ioc, scheduler_options opts, core::session_service& sessions,
                     core::machine_service& machines, storage::store& store, const core::clock& clk,
                     obs::logger& log, obs::registry& metrics)
    : ioc_(ioc),
      opts_(opts),
      sessions_(sessions),
      machines_(machines),
      store_(store),
      clock_(clk),
      log_(log) {
  const std::pair<const char*, std::int64_t> defs[] = {
      {"stall_sweep", opts_.sweep_interval_s},
      {"machine_offline_sweep", opts_.sweep_interval_s},
      {"retention", opts_.retention_interval_s},
      {"consistency_check", opts_.consistency_interval_s}};
  for (const auto& [name, interval] : defs) {
    job j;
    j.st.name = name;
    j.st.interval_s = interval;
    obs::labels l{{"job", name}};
    j.runs = &metrics.add_counter("statetrack_job_runs_total", "Background job runs", l);
    j.failures = &metrics.add_counter("statetrack_job_failures_total", "Failed job runs", l);
    j.changed = &metrics.add_counter("statetrack_job_changed_total",
                                     "Records changed by background jobs", l);
    j.seconds = &metrics.add_histogram("statetrack_job_duration_seconds", "Job run duration",
                                       obs::latency_bounds_seconds(), l);
    jobs_.push_back(j);
  }
  stalls_detected_ = &metrics.add_counter("statetrack_sessions_stalled_total",
                                          "Sessions marked stalled by the stall sweep");
  machines_offlined_ = &metrics.add_counter("statetrack_machines_offlined_total",
                                            "Machines marked offline by the offline sweep");
  escalations_ = &metrics.add_counter("statetrack_sessions_input_overdue_total",
                                      "awaiting_input sessions whose escalation timeout fired");
  incidents_ = &metrics.add_counter("statetrack_mass_stall_incidents_total",
                                    "Mass-stall incidents opened by the stall brake");
  repairs_ = &metrics.add_counter("statetrack_consistency_repairs_total",
                                  "Tasks and slots repaired by the consistency check");
  metrics.add_callback(
      "statetrack_mass_stall_braking", "1 while the mass-stall brake holds stalls back", "gauge",
      [this] {
        return std::vector<std::pair<obs::labels, double>>{{{}, braking_.load() ? 1.0 : 0.0}};
      });
}

void scheduler::apply_restart_grace() {
  if (!opts_.enabled || opts_.restart_grace_s <= 0) return;
  // Runs to completion before the server accepts requests and before the first sweep.
  startup_ctx_ = std::make_unique<asio::io_context>();
  auto done = asio::co_spawn(
      *startup_ctx_, sessions_.apply_restart_grace(clock_.now(), opts_.restart_grace_s * 1000),
      asio::use_future);
  startup_ctx_->run();
  const std::int64_t n = done.get();
  if (n > 0) {
    obs::fields f;
    f.add("sessions", n).add("grace_s", opts_.restart_grace_s);
    log_.warn("Scheduler", "restart grace given to overdue sessions", &f);
  }
}

void scheduler::start() {
  if (!opts_.enabled) return;
  auto spawn = [&](std::size_t index, std::int64_t every_s,
                   std::function<asio::awaitable<std::int64_t>()> body) {
    asio::co_spawn(
        ioc_,
        loop(index, std::chrono::seconds(std::max<std::int64_t>(every_s, 1)), std::move(body)),
        asio::detached);
  };
  spawn(stall_job, opts_.sweep_interval_s, [this] { return run_stall_sweep(); });
  spawn(offline_job, opts_.sweep_interval_s, [this] { return run_offline_sweep(); });
  spawn(retention_job, opts_.retention_interval_s, [this] { return run_retention(); });
  spawn(consistency_job, opts_.consistency_interval_s, [this] { return run_consistency(); });
}

void scheduler::stop() {
  std::lock_guard lk(mu_);
  stopping_ = true;
}

std::vector<job_status> scheduler::status() const {
  std::lock_guard lk(mu_);
  std::vector<job_status> out;
  for (const auto& j : jobs_)
    out.push_back(j.st);
  return out;
}

void scheduler::record(std::size_t index, double ms, std::int64_t changed,
                       const std::string& error) {
  std::lock_guard lk(mu_);
  auto& j = jobs_[index];
  j.st.runs++;
  j.st.last_run_at = clock_.now();
  j.st.last_duration_ms = ms;
  j.st.last_changed = changed;
  j.st.last_error = error;
  j.runs->inc();
  j.seconds->observe(ms / 1000);
  if (changed > 0) j.changed->inc(static_cast<std::uint64_t>(changed));
  if (!error.empty()) {
    j.st.failures++;
    j.failures->inc();
  }
}

asio::awaitable<void> scheduler::loop(std::size_t index, std::chrono::seconds every,
                                      std::function<asio::awaitable<std::int64_t>()> body) {
  asio::steady_timer timer(ioc_);
  for (;;) {
    {
      std::lock_guard lk(mu_);
      if (stopping_) co_return;
    }
    auto t0 = std::chrono::steady_clock::now();
    std::int64_t changed = 0;
    std::string error;
    try {
      changed = co_await body();
    } catch (const std::exception& e) {
      error = e.what();
    }
    double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    record(index, ms, changed, error);
    if (!error.empty()) {
      obs::fields f;
      f.add("job_name", jobs_[index].st.name).add("error", error);
      log_.error("Scheduler", "background_job.failed", &f);
    } else if (changed > 0) {
      obs::fields f;
      f.add("job_name", jobs_[index].st.name).add("changed", changed).add("duration_ms", ms);
      log_.info("Scheduler", "background_job.completed", &f);
    }
    timer.expires_after(every);
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

asio::awaitable<std::int64_t> scheduler::run_stall_sweep() {
  core::stall_brake brake{opts_.stall_brake_share, opts_.stall_brake_min};
  // One pass over every due candidate: the brake must see all overdue sessions at once.
  auto pass = co_await sessions_.sweep_stalled(clock_.now(), 0, brake);
  for (const auto& s : pass.stalled) {
    obs::fields f;
    f.add("event", "session.stalled")
        .add("session_id", s.session_id)
        .add("project_id", s.project_id)
        .add("seconds_since_heartbeat", (clock_.now() - s.last_heartbeat) / 1000);
    log_.warn("Scheduler", "session.stalled", &f);
  }
  for (const auto& s : pass.escalated) {
    obs::fields f;
    f.add("event", "session.input_overdue")
        .add("session_id", s.session_id)
        .add("project_id", s.project_id);
    log_.warn("Scheduler", "session.input_overdue", &f);
  }
  if (pass.incident_opened) {
    incidents_->inc();
    obs::fields f;
    f.add("overdue_sessions", pass.overdue);
    log_.error("Scheduler", "mass-stall brake engaged: no session stalled, incident opened", &f);
  }
  if (pass.incident_resolved) log_.warn("Scheduler", "mass-stall incident resolved");
  braking_ = pass.braked;
  stalls_detected_->inc(pass.stalled.size());
  escalations_->inc(pass.escalated.size());
  co_return static_cast<std::int64_t>(pass.stalled.size() + pass.escalated.size());
}

asio::awaitable<std::int64_t> scheduler::run_offline_sweep() {
  auto gone = co_await machines_.sweep_offline(clock_.now(), opts_.machine_offline_after_s * 1000);
  for (const auto& g : gone) {
    obs::fields f;
    f.add("event", "machine.offline")
        .add("machine_id", g.m.machine_id)
        .add("affected_sessions", static_cast<std::int64_t>(g.affected_sessions.size()));
    log_.warn("Scheduler", "machine.offline", &f);
  }
  machines_offlined_->inc(gone.size());
  co_return static_cast<std::int64_t>(gone.size());
}

asio::awaitable<std::int64_t> scheduler::run_consistency() {
  auto report = co_await core::run_consistency_check(store_, clock_);
  const std::int64_t n = report.tasks_closed + report.slots_released;
  if (n > 0) {
    repairs_->inc(static_cast<std::uint64_t>(n));
    obs::fields f;
    f.add("tasks_closed", report.tasks_closed).add("slots_released", report.slots_released);
    log_.warn("Scheduler", "consistency check repaired records", &f);
  }
  co_return n;
}

asio::awaitable<std::int64_t> scheduler::run_retention() {
  const core::timestamp now = clock_.now();
  std::int64_t changed = 0;
  // Auto-archive only matters when it comes before deletion (see docs/OPERATIONS.md).
  const bool archive_first =
      opts_.archive_after_days > 0 &&
      (opts_.retention_days <= 0 || opts_.archive_after_days < opts_.retention_days);
  if (archive_first) {
    for (;;) {
      auto n = co_await sessions_.auto_archive(now - opts_.archive_after_days * day_ms, batch);
      changed += n;
      if (n < batch) break;
    }
  }
  if (opts_.retention_days > 0) {
    for (;;) {
      auto n = co_await sessions_.apply_retention(now - opts_.retention_days * day_ms, batch);
      changed += n;
      if (n < batch) break;
    }
  }
  const core::timestamp events_before = now - opts_.event_retention_days * day_ms;
  const std::int64_t keep = opts_.event_retention_count;
  storage::write_fn prune = [&](storage::write_txn& tx) {
    tx.prune_events(events_before, keep);
    return true;
  };
  co_await store_.run_write(std::move(prune));
  co_return changed;
}

}  // namespace statetrack::jobs
