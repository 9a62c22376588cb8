// The one configuration struct of `statetrack serve`. Every option is declared once (name,
// environment variables, default, help) in config.cpp; precedence is
// defaults < --config file < environment < command-line flags. Validated once at start.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace statetrack::app {

struct config {
  std::string host = "0.0.0.0";
  std::int64_t port = 3000;
  std::string tls_cert;                    // PEM certificate chain; with tls_key: HTTPS only
  std::string tls_key;                     // PEM private key
  std::int64_t redirect_port = 0;          // plain listener answering 308 to https; 0 = off
  std::string db = "./var/statetrack.db";  // SQLite file, or a PostgreSQL connection string
  std::int64_t db_pool_size = 4;           // PostgreSQL reader connections per instance
  std::int64_t db_timeout_ms = 5000;       // PostgreSQL: longest wait for the database
  std::int64_t threads = 0;                // 0 = one per available core
  std::vector<std::string> api_keys;
  std::string log_level = "info";
  std::string log_format = "json";
  std::int64_t rate_limit_default = 100;
  std::int64_t rate_limit_heartbeat = 120;
  std::int64_t rate_limit_window_ms = 60000;
  std::vector<std::string> cors_origins;  // empty: no cross-origin access; "*": any origin
  std::int64_t auth_failure_limit = 20;   // 401s per address per minute before 429; 0 = off
  std::int64_t request_timeout_ms = 30000;
  std::int64_t max_body_bytes = 100 * 1024;
  std::int64_t max_header_bytes = 16 * 1024;
  std::int64_t idle_timeout_s = 75;
  std::int64_t max_connections = 10000;
  std::int64_t drain_timeout_s = 10;
  bool disable_background_jobs = false;
  std::int64_t sweep_interval_s = 5;
  std::int64_t machine_offline_after_s = 600;
  std::int64_t retention_days = 30;
  std::int64_t archive_after_days = 90;
  std::int64_t retention_interval_s = 3600;
  std::int64_t event_retention_days = 7;
  std::int64_t event_retention_count = 1'000'000;
  std::int64_t restart_grace_s = 60;
  double stall_brake_share = 0.5;
  std::int64_t stall_brake_min = 10;
  std::int64_t consistency_interval_s = 60;
  std::int64_t event_ring_capacity = 65536;
  std::int64_t event_max_lag = 16384;
  std::int64_t stream_keepalive_s = 30;
};

struct parse_outcome {
  std::optional<config> cfg;  // nullopt: nothing to run (help printed, or an error)
  int exit_code = 0;
};

// Parses `serve` arguments (argv after the subcommand) and the environment.
parse_outcome parse_serve_args(const std::vector<std::string>& args);

// The options table as Markdown, for docs/configuration.md (checked by a test).
std::string options_markdown();
// `statetrack serve --help` text.
std::string serve_help();

}  // namespace statetrack::app
