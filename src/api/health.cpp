// Health routes (contract §10), public and not rate limited. /health/detailed carries the
// real verdict: database reachability and latency, background jobs, memory, error rate.
#include <chrono>
#include <cmath>

#include "api/context.hpp"
#include "api/routes.hpp"
#include "api/services.hpp"
#include "core/clock.hpp"
#include "core/session_service.hpp"
#include "jobs/scheduler.hpp"
#include "obs/process.hpp"
#include "obs/request_stats.hpp"
#include "storage/store.hpp"
#include "util/json_writer.hpp"

namespace statetrack::api {

namespace {

using boost::asio::awaitable;
using util::json_writer;

double uptime_s(const services& s) {
  auto d = std::chrono::steady_clock::now() - s.started_at;
  return std::round(std::chrono::duration<double>(d).count() * 1000) / 1000;
}

std::int64_t mib(std::uint64_t bytes) {
  return static_cast<std::int64_t>(std::llround(static_cast<double>(bytes) / 1048576.0));
}

// Ping in whole milliseconds (rounded up so a live database never reports 0 as "no data").
std::optional<std::int64_t> ping_ms(services& s) {
  auto p = s.store.ping();
  if (!p) return std::nullopt;
  return static_cast<std::int64_t>(std::llround(*p));
}

// GET /health -> 200 {status, timestamp, uptime, database, latency}
awaitable<void> get_health(context& ctx) {
  auto p = ping_ms(ctx.svc);
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("status", "ok");
  w.field_iso("timestamp", ctx.now.ms);
  w.field("uptime", uptime_s(ctx.svc));
  w.field("database", p ? "connected" : "disconnected");
  w.key("latency");
  if (p) {
    w.value(*p);
  } else {
    w.null();
  }
  w.end_object();
  ctx.reply(std::move(out));
  co_return;
}

// GET /health/ready -> 200 {ready, timestamp, database}
awaitable<void> get_health_ready(context& ctx) {
  auto p = ping_ms(ctx.svc);
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("ready", p.has_value());
  w.field_iso("timestamp", ctx.now.ms);
  w.field("database", p ? "connected" : "disconnected");
  w.end_object();
  ctx.reply(std::move(out));
  co_return;
}

// GET /health/live -> 200 {alive, timestamp, uptime}
awaitable<void> get_health_live(context& ctx) {
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("alive", true);
  w.field_iso("timestamp", ctx.now.ms);
  w.field("uptime", uptime_s(ctx.svc));
  w.end_object();
  ctx.reply(std::move(out));
  co_return;
}

std::string_view grade(double value, double warning, double critical) {
  if (value > critical) return "critical";
  if (value > warning) return "warning";
  return "ok";
}

// GET /health/detailed -> 200 {status, timestamp, uptime, database, metrics, checks, jobs}
awaitable<void> get_health_detailed(context& ctx) {
  auto& svc = ctx.svc;
  auto p = ping_ms(svc);
  const std::int64_t latency = p.value_or(10000);
  auto proc = obs::read_process();
  const double heap_used = static_cast<double>(proc.heap_allocated_bytes);
  const double heap_total =
      static_cast<double>(std::max(proc.heap_reserved_bytes, proc.heap_allocated_bytes));
  const double pct = heap_total > 0 ? std::round(heap_used / heap_total * 10000) / 100 : 0;
  std::int64_t active_count = 0;
  if (p) {
    try {
      std::vector<std::int64_t> counts;
      svc.store.read_now([&](storage::read_view& v) { counts = v.count_sessions_by_status(); });
      active_count = counts[static_cast<std::size_t>(core::session_status::active)] +
                     counts[static_cast<std::size_t>(core::session_status::paused)] +
                     counts[static_cast<std::size_t>(core::session_status::stalled)];
    } catch (const std::exception&) {
      p.reset();
    }
  }
  const double avg_ms = svc.requests.average_ms();
  const std::string_view mem_check = grade(pct, 75, 90);
  const std::string_view db_check =
      !p ? "critical" : grade(static_cast<double>(latency), 500, 1000);
  const std::string_view rt_check = grade(avg_ms, 1000, 2000);
  std::string_view status = "ok";
  if (!p || mem_check == "critical" || db_check == "critical" || rt_check == "critical") {
    status = "unhealthy";
  } else if (mem_check == "warning" || db_check == "warning" || rt_check == "warning") {
    status = "degraded";
  }
  std::optional<core::mass_stall_incident> incident;
  if (p) incident = co_await svc.sessions.open_incident();
  if (incident && status == "ok") status = "degraded";
  std::vector<jobs::job_status> jobs;
  if (svc.jobs != nullptr) jobs = svc.jobs->status();
  bool jobs_failing = false;
  for (const auto& j : jobs)
    jobs_failing = jobs_failing || !j.last_error.empty();
  if (jobs_failing && status == "ok") status = "degraded";

  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("status", status);
  w.field_iso("timestamp", ctx.now.ms);
  w.field("uptime", uptime_s(svc));
  w.key("database").begin_object();
  w.field("status", p ? "connected" : "disconnected");
  if (!p) {
    const auto why = svc.store.unavailable_reason();
    w.field("reason", why.empty() ? std::string("the database did not answer") : why);
  }
  w.field("latency", latency);
  w.field("backend", svc.store.backend_name());
  auto st = svc.store.stats();
  w.field("commits", st.commits);
  w.field("writes", st.writes);
  w.field("failed_commits", st.failed_commits);
  w.field("queue_depth", st.queue_depth);
  w.end_object();
  w.key("metrics").begin_object();
  w.field("uptime", uptime_s(svc));
  w.key("memoryUsage").begin_object();
  w.field("heapUsed", mib(proc.heap_allocated_bytes));
  w.field("heapTotal", mib(static_cast<std::uint64_t>(heap_total)));
  w.field("external", static_cast<std::int64_t>(0));
  w.field("rss", mib(proc.rss_bytes));
  w.field("percentage", pct);
  w.end_object();
  w.key("cpuUsage").begin_object();
  w.field("user", proc.cpu_user_ms);
  w.field("system", proc.cpu_system_ms);
  w.end_object();
  w.field("activeSessionCount", active_count);
  w.field("errorRate", svc.requests.error_rate_percent());
  w.field("averageResponseTime", avg_ms);
  w.field("databaseLatency", latency);
  w.field("version", svc.version);
  w.end_object();
  w.key("checks").begin_object();
  w.field("memory", mem_check);
  w.field("database", db_check);
  w.field("responseTime", rt_check);
  w.field("backgroundJobs", svc.jobs == nullptr || !svc.jobs->enabled() ? "disabled"
                            : jobs_failing                              ? "warning"
                                                                        : "ok");
  w.end_object();
  w.key("incident");
  if (incident) {
    w.begin_object();
    w.field("type", "mass_stall");
    w.field_iso("since", incident->since.ms);
    w.field("overdue_sessions", incident->overdue);
    w.field("active_sessions", incident->active);
    w.field("cleared_by_operator", incident->cleared_by_operator);
    w.end_object();
  } else {
    w.null();
  }
  w.key("jobs").begin_array();
  for (const auto& j : jobs) {
    w.begin_object();
    w.field("name", j.name);
    w.field("interval_s", j.interval_s);
    w.field("runs", j.runs);
    w.field("failures", j.failures);
    if (j.last_run_at) w.field_iso("last_run_at", j.last_run_at->ms);
    w.field("last_duration_ms", std::round(j.last_duration_ms * 100) / 100);
    w.field("last_changed", j.last_changed);
    if (!j.last_error.empty()) w.field("last_error", j.last_error);
    w.end_object();
  }
  w.end_array();
  w.end_object();
  ctx.reply(std::move(out));
  co_return;
}

// GET /health/system -> 200 process and host figures
awaitable<void> get_health_system(context& ctx) {
  auto proc = obs::read_process();
  auto host = obs::read_host();
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("uptime", uptime_s(ctx.svc));
  w.field("nodeVersion", "statetrack/" + ctx.svc.version);
  w.field("platform", "linux");
#if defined(__x86_64__)
  w.field("arch", "x64");
#elif defined(__aarch64__)
  w.field("arch", "arm64");
#else
  w.field("arch", "unknown");
#endif
  w.field("cpus", host.cpus);
  w.field("totalMemory", mib(host.total_memory_bytes));
  w.field("freeMemory", mib(host.free_memory_bytes));
  w.field("heapUsed", mib(proc.heap_allocated_bytes));
  w.field("heapTotal", mib(std::max(proc.heap_reserved_bytes, proc.heap_allocated_bytes)));
  w.field("external", static_cast<std::int64_t>(0));
  w.field("rss", mib(proc.rss_bytes));
  w.end_object();
  ctx.reply(std::move(out));
  co_return;
}

}  // namespace

void register_health_routes(http::router& r) {
  auto add = [&r](const char* pattern, const char* name, http::handler_fn fn, const char* summary,
                  const char* schema) {
    http::route rt;
    rt.verb = http::method::get;
    rt.pattern = pattern;
    rt.name = name;
    rt.handler = fn;
    rt.limit = http::limit_class::none;
    rt.authenticated = false;
    rt.doc.summary = summary;
    rt.doc.tag = "health";
    rt.doc.response_schema = schema;
    r.add(std::move(rt));
  };
  add("/health", "get_health", get_health, "Liveness and database status", "Health");
  add("/health/ready", "get_health_ready", get_health_ready, "Readiness", "HealthReady");
  add("/health/live", "get_health_live", get_health_live, "Liveness probe", "HealthLive");
  add("/health/detailed", "get_health_detailed", get_health_detailed,
      "Database, jobs, memory, error rate and version", "HealthDetailed");
  add("/health/system", "get_health_system", get_health_system, "Process and host figures",
      "HealthSystem");
}

}  // namespace statetrack::api
