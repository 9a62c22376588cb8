// Composition root of the server process.
#include "app/serve.hpp"

#include <csignal>
#include <iostream>
#include <optional>
#include <sched.h>
#include <sys/resource.h>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include "api/routes.hpp"
#include "api/services.hpp"
#include "app/process_metrics.hpp"
#include "core/api_keys.hpp"
#include "core/clock.hpp"
#include "core/machine_service.hpp"
#include "core/session_service.hpp"
#include "core/task_service.hpp"
#include "events/hub.hpp"
#include "events/stream.hpp"
#include "http/pipeline.hpp"
#include "http/router.hpp"
#include "http/server.hpp"
#include "http/tls.hpp"
#include "jobs/scheduler.hpp"
#include "obs/logger.hpp"
#include "obs/metrics.hpp"
#include "obs/request_stats.hpp"
#include "storage/postgres/conninfo.hpp"
#include "storage/postgres/pg_store.hpp"
#include "storage/sqlite/sqlite_store.hpp"

namespace statetrack::app {

namespace asio = boost::asio;

namespace {

std::size_t available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<std::size_t>(n);
  }
  return std::max(1U, std::thread::hardware_concurrency());
}

}  // namespace

namespace {
// Every connection and event stream is a descriptor: use the hard limit, not the 1024 default.
void raise_fd_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}
}  // namespace

int serve(const config& cfg) {
  raise_fd_limit();
  obs::level lvl = obs::level::info;
  obs::parse_level(cfg.log_level, lvl);
  obs::logger log(lvl,
                  cfg.log_format == "pretty" ? obs::log_format::pretty : obs::log_format::json);
  obs::registry metrics;

  // TLS first: a bad certificate stops the start before anything is created.
  std::shared_ptr<asio::ssl::context> tls;
  if (!cfg.tls_cert.empty()) {
    try {
      tls = http::make_server_tls_context(cfg.tls_cert, cfg.tls_key);
    } catch (const std::exception& e) {
      log.flush();
      std::cerr << "statetrack serve: cannot load the TLS certificate: " << e.what() << "\n";
      return 2;
    }
  }

  // --db decides the backend: a PostgreSQL connection string, or else a SQLite file. The
  // connection string is only ever shown without its password.
  const bool postgres = storage::postgres::is_conninfo(cfg.db);
  const std::string db_shown = postgres ? storage::postgres::redact(cfg.db) : cfg.db;
  std::unique_ptr<storage::store> store;
  try {
    if (postgres) {
      storage::postgres::store_options po;
      po.conninfo = cfg.db;
      po.pool_size = static_cast<int>(cfg.db_pool_size);
      po.timeout = std::chrono::milliseconds(cfg.db_timeout_ms);
      store = std::make_unique<storage::postgres::pg_store>(po, &metrics);
    } else {
      storage::sqlite::store_options so;
      so.path = cfg.db;
      store = std::make_unique<storage::sqlite::sqlite_store>(so, &metrics);
    }
  } catch (const std::exception& e) {
    log.flush();
    std::cerr << "statetrack serve: cannot open database " << db_shown << ": " << e.what() << "\n";
    return 2;
  }

  core::system_clock clock;
  core::session_service sessions(*store, clock);
  core::task_service tasks(*store, clock);
  core::machine_service machines(*store, clock);
  core::key_verifier keys(*store, cfg.api_keys, clock);

  // No mode accepts a missing key: with no key anywhere, create one admin key and show it once.
  if (!keys.has_env_keys()) {
    bool any = false;
    store->read_now([&](storage::read_view& v) {
      for (const auto& k : v.list_api_keys())
        any = any || !k.revoked_at;
    });
    if (!any) {
      auto [plain, rec] =
          core::create_api_key(*store, "bootstrap-admin", core::key_role::admin, clock.now());
      log.print_line("statetrack created an admin API key (shown only once, store it now): " +
                     plain);
    }
  }

  http::router router;
  const std::size_t io_threads =
      cfg.threads > 0 ? static_cast<std::size_t>(cfg.threads) : available_cores();
  // One io_context per I/O thread (connections are spread over them); the first also runs
  // the acceptor, signals and background jobs.
  // Declared before the io_contexts so that it outlives the stream coroutines they hold.
  std::optional<events::hub> event_hub;
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  std::vector<asio::io_context*> context_ptrs;
  for (std::size_t i = 0; i < io_threads; ++i) {
    contexts.push_back(std::make_unique<asio::io_context>(1));
    context_ptrs.push_back(contexts.back().get());
  }
  asio::io_context& ioc = *contexts.front();
  jobs::scheduler_options jo;
  jo.enabled = !cfg.disable_background_jobs;
  jo.sweep_interval_s = cfg.sweep_interval_s;
  jo.machine_offline_after_s = cfg.machine_offline_after_s;
  jo.retention_days = cfg.retention_days;
  jo.archive_after_days = cfg.archive_after_days;
  jo.retention_interval_s = cfg.retention_interval_s;
  jo.event_retention_days = cfg.event_retention_days;
  jo.event_retention_count = cfg.event_retention_count;
  jo.restart_grace_s = cfg.restart_grace_s;
  jo.stall_brake_share = cfg.stall_brake_share;
  jo.stall_brake_min = cfg.stall_brake_min;
  jo.consistency_interval_s = cfg.consistency_interval_s;
  jobs::scheduler scheduler(ioc, jo, sessions, machines, *store, clock, log, metrics);

  api::register_all(router);
  std::vector<obs::request_stats::route_info> infos;
  for (const auto& r : router.routes()) {
    infos.push_back({std::string(http::method_name(r->verb)), r->pattern});
  }
  obs::request_stats stats(metrics, infos);
  register_process_metrics(metrics, *store);

  api::services svc{*store,    clock, sessions, tasks,  machines, keys,
                    metrics,   log,   stats,    router, nullptr,  std::chrono::steady_clock::now(),
                    ST_VERSION};
  svc.jobs = &scheduler;
  svc.version = ST_VERSION;

  http::pipeline_options po;
  po.rate_limit_default = cfg.rate_limit_default;
  po.rate_limit_heartbeat = cfg.rate_limit_heartbeat;
  po.rate_limit_window_ms = cfg.rate_limit_window_ms;
  po.cors_origins = cfg.cors_origins;
  po.auth_failure_limit = cfg.auth_failure_limit;
  http::pipeline pipe(router, svc, po);

  http::server_options hso;
  hso.host = cfg.host;
  hso.port = static_cast<std::uint16_t>(cfg.port);
  hso.max_body_bytes = static_cast<std::size_t>(cfg.max_body_bytes);
  hso.max_header_bytes = static_cast<std::size_t>(cfg.max_header_bytes);
  hso.idle_timeout = std::chrono::seconds(cfg.idle_timeout_s);
  hso.read_timeout = std::chrono::seconds(std::max<std::int64_t>(1, cfg.request_timeout_ms / 1000));
  hso.max_connections = static_cast<std::size_t>(cfg.max_connections);
  hso.tls = tls.get();
  // Event streams: the hub reads each committed batch of events once and wakes subscribers.
  events::hub_options ho;
  ho.ring_capacity = static_cast<std::size_t>(cfg.event_ring_capacity);
  ho.max_lag = cfg.event_max_lag;
  event_hub.emplace(*store, ioc.get_executor(), ho, &metrics);
  store->on_events_committed([&event_hub](std::int64_t seq) { event_hub->on_committed(seq); });
  // A key revoked or rotated through the API wakes every stream to re-check its key.
  keys.on_change([&event_hub] { event_hub->wake_all(); });
  events::stream_services streams;
  streams.events = &*event_hub;
  streams.keys = &keys;
  streams.log = &log;
  streams.keepalive = std::chrono::seconds(cfg.stream_keepalive_s);
  hso.streams = &streams;
  http::server srv(context_ptrs, pipe, hso, log, metrics);
  asio::ip::tcp::endpoint ep;
  try {
    ep = srv.listen();
  } catch (const std::exception& e) {
    log.flush();
    std::cerr << "statetrack serve: cannot listen on " << cfg.host << ":" << cfg.port << ": "
              << e.what() << "\n";
    return 2;
  }
  // Optional plain listener whose only answer is a 308 to the HTTPS listener.
  std::unique_ptr<http::server> redirect;
  asio::ip::tcp::endpoint redirect_ep;
  if (cfg.redirect_port != 0) {
    http::server_options rso = hso;
    rso.tls = nullptr;
    rso.port = static_cast<std::uint16_t>(cfg.redirect_port);
    rso.redirect_to_https_port = ep.port();
    rso.metrics_listener = "redirect";
    redirect = std::make_unique<http::server>(context_ptrs, pipe, rso, log, metrics);
    try {
      redirect_ep = redirect->listen();
    } catch (const std::exception& e) {
      log.flush();
      std::cerr << "statetrack serve: cannot listen on " << cfg.host << ":" << cfg.redirect_port
                << " (--redirect-port): " << e.what() << "\n";
      return 2;
    }
  }
  // Signal handlers are installed before the ready line, so a signal sent as soon as the
  // line appears is never fatal. SIGTERM/SIGINT drain (below); SIGUSR1 / SIGUSR2 make logging
  // one step more / less verbose, without a restart.
  asio::signal_set signals(ioc, SIGTERM, SIGINT);
  asio::signal_set level_signals(ioc, SIGUSR1, SIGUSR2);
  std::function<void()> wait_level_signal = [&] {
    level_signals.async_wait([&](const boost::system::error_code& ec, int sig) {
      if (ec) return;
      const obs::level now = log.get_level();
      log.change_level(sig == SIGUSR1 ? obs::more_verbose(now) : obs::less_verbose(now),
                       sig == SIGUSR1 ? "SIGUSR1" : "SIGUSR2");
      wait_level_signal();
    });
  };
  wait_level_signal();

  scheduler.apply_restart_grace();
  srv.start();
  if (redirect) redirect->start();
  scheduler.start();
  {
    obs::fields f;
    f.add("version", svc.version)
        .add("db", db_shown)
        .add("backend", store->backend_name())
        .add("threads", static_cast<std::int64_t>(io_threads))
        .add("background_jobs", !cfg.disable_background_jobs)
        .add("tls", tls != nullptr);
    log.info("App", "statetrack starting", &f);
  }
  log.print_line("statetrack listening on " + ep.address().to_string() + ":" +
                 std::to_string(ep.port()) + (tls ? " (https)" : ""));
  if (redirect) {
    log.print_line("statetrack redirecting http on " + redirect_ep.address().to_string() + ":" +
                   std::to_string(redirect_ep.port()) + " to https port " +
                   std::to_string(ep.port()));
  }

  // SIGTERM/SIGINT: stop accepting, let in-flight requests finish (bounded), then stop.
  asio::steady_timer drain_timer(ioc);
  auto deadline = std::chrono::steady_clock::now();
  auto open_connections = [&] {
    return srv.connections() + (redirect ? redirect->connections() : 0);
  };
  bool forced = false;
  std::function<void()> poll_drain = [&] {
    const auto now = std::chrono::steady_clock::now();
    if (open_connections() == 0 || now >= deadline + std::chrono::seconds(2)) {
      for (auto& c : contexts)
        c->stop();
      return;
    }
    if (now >= deadline && !forced) {
      // Requests that did not finish in time: close their sockets so they end cleanly.
      forced = true;
      srv.force_close();
      if (redirect) redirect->force_close();
    }
    drain_timer.expires_after(std::chrono::milliseconds(20));
    drain_timer.async_wait([&](const boost::system::error_code&) { poll_drain(); });
  };
  signals.async_wait([&](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    obs::fields f;
    f.add("signal", static_cast<std::int64_t>(sig));
    log.info("App", "shutting down: draining connections", &f);
    scheduler.stop();
    event_hub->shutdown();
    srv.begin_drain();
    if (redirect) redirect->begin_drain();
    deadline = std::chrono::steady_clock::now() + std::chrono::seconds(cfg.drain_timeout_s);
    poll_drain();
  });

  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> keep_running;
  keep_running.reserve(contexts.size());
  for (auto& c : contexts)
    keep_running.emplace_back(c->get_executor());
  std::vector<std::thread> pool;
  for (std::size_t i = 1; i < io_threads; ++i) {
    pool.emplace_back([c = contexts[i].get()] { c->run(); });
  }
  ioc.run();
  for (auto& t : pool)
    t.join();

  store->close();
  // Writes still in flight when the contexts stopped (a background job's sweep, say) were
  // completed by close(); run their completions so the coroutines awaiting them end, instead
  // of leaking with the stopped contexts. No handler blocks: poll() only runs what is ready.
  for (int pass = 0; pass < 8; ++pass) {
    std::size_t ran = 0;
    for (auto& c : contexts) {
      c->restart();
      ran += c->poll();
    }
    if (ran == 0) break;
  }
  log.info("App", "statetrack stopped");
  log.flush();
  return 0;
}

}  // namespace statetrack::app
