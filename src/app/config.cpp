// The options table and its three sources.
#include "app/config.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>

#include <boost/program_options.hpp>

#include "obs/logger.hpp"

namespace statetrack::app {

namespace po = boost::program_options;

namespace {

struct option_def {
  const char* name;              // --name
  std::vector<const char*> env;  // environment variables, first wins
  std::string default_text;
  const char* help;
  bool is_switch = false;
  std::function<std::string(config&, const std::string&)> set;  // returns an error or ""
};

// Setters return an error text (without the option name) or "".
std::string set_int(std::int64_t& field, const std::string& v, std::int64_t lo, std::int64_t hi) {
  std::int64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size()) return "'" + v + "' is not an integer";
  if (n < lo || n > hi) {
    return v + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  }
  field = n;
  return {};
}

std::string set_bool(bool& field, const std::string& v) {
  if (v == "1" || v == "true" || v == "yes" || v == "on" || v.empty()) {
    field = true;
  } else if (v == "0" || v == "false" || v == "no" || v == "off") {
    field = false;
  } else {
    return "'" + v + "' is not a boolean";
  }
  return {};
}

// A comma-separated list of exact origins ("https://app.example.com:8443"), or "*".
std::string set_origins(std::vector<std::string>& out, const std::string& v) {
  std::vector<std::string> items;
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto b = item.find_first_not_of(" \t");
    if (b == std::string::npos) continue;
    auto e = item.find_last_not_of(" \t");
    item = item.substr(b, e - b + 1);
    if (item != "*") {
      auto sep = item.find("://");
      const std::string scheme = sep == std::string::npos ? "" : item.substr(0, sep);
      const std::string rest = sep == std::string::npos ? "" : item.substr(sep + 3);
      if ((scheme != "http" && scheme != "https") || rest.empty() ||
          rest.find_first_of("/?#@ ") != std::string::npos) {
        return "'" + item + "' is not an origin (scheme://host[:port], no path or trailing slash)";
      }
    }
    items.push_back(item);
  }
  if (items.size() > 1 && std::find(items.begin(), items.end(), "*") != items.end()) {
    return std::string("'*' cannot be combined with other origins");
  }
  out = std::move(items);
  return {};
}

// Checks between options, after every source was applied.
std::string cross_check(const config& c) {
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return c.tls_cert.empty() ? "--tls-key needs --tls-cert" : "--tls-cert needs --tls-key";
  }
  if (c.redirect_port != 0 && c.tls_cert.empty()) {
    return "--redirect-port needs --tls-cert and --tls-key (it redirects to HTTPS)";
  }
  if (c.redirect_port != 0 && c.redirect_port == c.port) {
    return "--redirect-port must differ from --port";
  }
  return {};
}

#define ST_INT(member, lo, hi) \
  [](config& c, const std::string& v) { return set_int(c.member, v, lo, hi); }

const std::vector<option_def>& table() {
  constexpr std::int64_t big = 1'000'000'000'000;
  static const std::vector<option_def> defs = {
      {"host",
       {"STATETRACK_HOST"},
       "0.0.0.0",
       "Address to listen on",
       false,
       [](config& c, const std::string& v) {
         c.host = v;
         return std::string();
       }},
      {"port",
       {"STATETRACK_PORT", "PORT"},
       "3000",
       "TCP port; 0 picks a free port",
       false,
       ST_INT(port, 0, 65535)},
      {"tls-cert",
       {"STATETRACK_TLS_CERT"},
       "",
       "PEM certificate chain; with --tls-key the listener speaks HTTPS only (TLS 1.2+)",
       false,
       [](config& c, const std::string& v) {
         c.tls_cert = v;
         return std::string();
       }},
      {"tls-key",
       {"STATETRACK_TLS_KEY"},
       "",
       "PEM private key of --tls-cert",
       false,
       [](config& c, const std::string& v) {
         c.tls_key = v;
         return std::string();
       }},
      {"redirect-port",
       {"STATETRACK_REDIRECT_PORT"},
       "0",
       "With TLS: also listen for plain HTTP on this port and answer every request with 308 to "
       "the HTTPS URL; 0 = off",
       false,
       ST_INT(redirect_port, 0, 65535)},
      {"db",
       {"STATETRACK_DB"},
       "./var/statetrack.db",
       "SQLite database file, or a PostgreSQL connection string: a postgres:// or "
       "postgresql:// URI or libpq keywords (host=... dbname=...), multi-host with "
       "target_session_attrs=read-write for failover",
       false,
       [](config& c, const std::string& v) {
         if (v.empty()) return std::string("must not be empty");
         c.db = v;
         return std::string();
       }},
      {"db-pool-size",
       {"STATETRACK_DB_POOL_SIZE"},
       "4",
       "PostgreSQL: reader connections (each with its own thread) per instance; the writer and "
       "the event listener use one more connection each",
       false,
       ST_INT(db_pool_size, 1, 64)},
      {"db-timeout-ms",
       {"STATETRACK_DB_TIMEOUT_MS"},
       "5000",
       "PostgreSQL: longest an operation waits for the database (queueing, reconnecting, the "
       "statement itself); past it the request gets 503 with Retry-After, and while the "
       "database stays unreachable requests fail at once",
       false,
       ST_INT(db_timeout_ms, 100, 600000)},
      {"threads",
       {"STATETRACK_THREADS"},
       "0",
       "I/O threads; 0 = one per available core",
       false,
       ST_INT(threads, 0, 256)},
      {"api-keys",
       {"STATETRACK_API_KEYS", "API_KEYS"},
       "",
       "Comma-separated API keys accepted besides the keys stored in the database",
       false,
       [](config& c, const std::string& v) {
         c.api_keys.clear();
         std::stringstream ss(v);
         std::string item;
         while (std::getline(ss, item, ',')) {
           auto b = item.find_first_not_of(" \t");
           auto e = item.find_last_not_of(" \t");
           if (b != std::string::npos) c.api_keys.push_back(item.substr(b, e - b + 1));
         }
         return std::string();
       }},
      {"log-level",
       {"STATETRACK_LOG_LEVEL", "LOG_LEVEL"},
       "info",
       "Minimum log level: debug, info, warn, error",
       false,
       [](config& c, const std::string& v) {
         obs::level l;
         if (!obs::parse_level(v, l)) return "unknown level '" + v + "'";
         c.log_level = v;
         return std::string();
       }},
      {"log-format",
       {"STATETRACK_LOG_FORMAT", "LOG_FORMAT"},
       "json",
       "Log line format: json or pretty",
       false,
       [](config& c, const std::string& v) {
         if (v != "json" && v != "pretty") return "must be json or pretty, not '" + v + "'";
         c.log_format = v;
         return std::string();
       }},
      {"rate-limit-default",
       {"STATETRACK_RATE_LIMIT_DEFAULT", "RATE_LIMIT_DEFAULT"},
       "100",
       "Requests per window per endpoint and client address; 0 disables",
       false,
       ST_INT(rate_limit_default, 0, big)},
      {"rate-limit-heartbeat",
       {"STATETRACK_RATE_LIMIT_HEARTBEAT", "RATE_LIMIT_HEARTBEAT"},
       "120",
       "Session heartbeats per window per client address; 0 disables",
       false,
       ST_INT(rate_limit_heartbeat, 0, big)},
      {"rate-limit-window-ms",
       {"STATETRACK_RATE_LIMIT_WINDOW_MS", "RATE_LIMIT_WINDOW_MS"},
       "60000",
       "Rate-limit window in milliseconds",
       false,
       ST_INT(rate_limit_window_ms, 1, big)},
      {"cors-origins",
       {"STATETRACK_CORS_ORIGINS"},
       "",
       "Comma-separated origins (scheme://host[:port]) allowed cross-origin access; empty = none, "
       "* = any",
       false,
       [](config& c, const std::string& v) { return set_origins(c.cors_origins, v); }},
      {"auth-failure-limit",
       {"STATETRACK_AUTH_FAILURE_LIMIT"},
       "20",
       "Failed authentications (401) per client address per minute after which its requests to "
       "authenticated routes get 429 for a minute; 0 disables",
       false,
       ST_INT(auth_failure_limit, 0, big)},
      {"request-timeout-ms",
       {"STATETRACK_REQUEST_TIMEOUT_MS", "REQUEST_TIMEOUT_MS"},
       "30000",
       "Deadline for reading one request from a client",
       false,
       ST_INT(request_timeout_ms, 100, 3'600'000)},
      {"max-body-bytes",
       {"STATETRACK_MAX_BODY_BYTES"},
       "102400",
       "Largest accepted request body (413 above)",
       false,
       ST_INT(max_body_bytes, 1024, 1 << 30)},
      {"max-header-bytes",
       {"STATETRACK_MAX_HEADER_BYTES"},
       "16384",
       "Largest accepted request header block (431 above)",
       false,
       ST_INT(max_header_bytes, 1024, 1 << 20)},
      {"idle-timeout-s",
       {"STATETRACK_IDLE_TIMEOUT_S"},
       "75",
       "Close keep-alive connections idle this long",
       false,
       ST_INT(idle_timeout_s, 1, 86400)},
      {"max-connections",
       {"STATETRACK_MAX_CONNECTIONS"},
       "10000",
       "Maximum simultaneous client connections",
       false,
       ST_INT(max_connections, 1, 1'000'000)},
      {"drain-timeout-s",
       {"STATETRACK_DRAIN_TIMEOUT_S"},
       "10",
       "On SIGTERM, how long in-flight requests may take before exit",
       false,
       ST_INT(drain_timeout_s, 0, 3600)},
      {"disable-background-jobs",
       {"STATETRACK_DISABLE_BACKGROUND_JOBS", "DISABLE_BACKGROUND_JOBS"},
       "false",
       "Do not run sweeps, retention or pruning in this instance",
       true,
       [](config& c, const std::string& v) { return set_bool(c.disable_background_jobs, v); }},
      {"sweep-interval-s",
       {"STATETRACK_SWEEP_INTERVAL_S"},
       "5",
       "Seconds between stall and machine-offline sweeps",
       false,
       ST_INT(sweep_interval_s, 1, 3600)},
      {"machine-offline-after-s",
       {"STATETRACK_MACHINE_OFFLINE_AFTER_S"},
       "600",
       "An online machine without heartbeat this long goes offline",
       false,
       ST_INT(machine_offline_after_s, 1, big)},
      {"retention-days",
       {"STATETRACK_RETENTION_DAYS"},
       "30",
       "Delete completed/failed sessions and tasks this many days after completion; 0 keeps "
       "them",
       false,
       ST_INT(retention_days, 0, 100000)},
      {"archive-after-days",
       {"STATETRACK_ARCHIVE_AFTER_DAYS"},
       "90",
       "Archive completed/failed sessions this many days after completion (applies only when "
       "shorter than the retention); 0 disables",
       false,
       ST_INT(archive_after_days, 0, 100000)},
      {"retention-interval-s",
       {"STATETRACK_RETENTION_INTERVAL_S"},
       "3600",
       "Seconds between retention runs",
       false,
       ST_INT(retention_interval_s, 1, 86400 * 7)},
      {"event-retention-days",
       {"STATETRACK_EVENT_RETENTION_DAYS"},
       "7",
       "Keep the event log this many days",
       false,
       ST_INT(event_retention_days, 1, 100000)},
      {"event-retention-count",
       {"STATETRACK_EVENT_RETENTION_COUNT"},
       "1000000",
       "Keep at most this many events",
       false,
       ST_INT(event_retention_count, 10, big)},
      {"restart-grace-s",
       {"STATETRACK_RESTART_GRACE_S"},
       "60",
       "After a start, active sessions whose deadline passed (or passes within this many "
       "seconds) get until then before they can be stalled; 0 disables",
       false,
       ST_INT(restart_grace_s, 0, 86400)},
      {"stall-brake-share",
       {"STATETRACK_STALL_BRAKE_SHARE"},
       "0.5",
       "Mass-stall brake: when more than this share of active sessions is overdue in one sweep "
       "(and at least --stall-brake-min), stall none and open an incident",
       false,
       [](config& c, const std::string& v) {
         char* end = nullptr;
         const double d = std::strtod(v.c_str(), &end);
         if (v.empty() || end != v.c_str() + v.size() || !(d > 0 && d <= 1)) {
           return "'" + v + "' is not a share in (0, 1]";
         }
         c.stall_brake_share = d;
         return std::string();
       }},
      {"stall-brake-min",
       {"STATETRACK_STALL_BRAKE_MIN"},
       "10",
       "Mass-stall brake: minimum number of overdue sessions; 0 disables the brake",
       false,
       ST_INT(stall_brake_min, 0, big)},
      {"event-ring-capacity",
       {"STATETRACK_EVENT_RING_CAPACITY"},
       "65536",
       "Recent events kept in memory for streams (older history is read from the database)",
       false,
       ST_INT(event_ring_capacity, 16, 10'000'000)},
      {"event-max-lag",
       {"STATETRACK_EVENT_MAX_LAG"},
       "16384",
       "A stream further behind than this many events is closed with slow_consumer (the client "
       "resumes with since=<last seq>)",
       false,
       ST_INT(event_max_lag, 16, 10'000'000)},
      {"stream-keepalive-s",
       {"STATETRACK_STREAM_KEEPALIVE_S"},
       "30",
       "WebSocket ping / SSE comment interval; a WebSocket peer silent for twice this is closed",
       false,
       ST_INT(stream_keepalive_s, 1, 3600)},
      {"consistency-interval-s",
       {"STATETRACK_CONSISTENCY_INTERVAL_S"},
       "60",
       "Seconds between consistency checks (tasks of ended sessions, slots held by them)",
       false,
       ST_INT(consistency_interval_s, 1, 86400)},
  };
  return defs;
}

#undef ST_INT

po::options_description describe(bool with_config) {
  po::options_description d("statetrack serve options");
  d.add_options()("help,h", "Show this help");
  if (with_config) {
    d.add_options()("help-markdown",
                    "Print the options as the Markdown table of docs/configuration.md");
  }
  if (with_config)
    d.add_options()("config", po::value<std::string>(),
                    "Read options from FILE (key = value lines)");
  for (const auto& o : table()) {
    std::string help = o.help;
    help += " (default: " + (o.default_text.empty() ? std::string("none") : o.default_text) +
            "; env " + o.env[0];
    for (std::size_t i = 1; i < o.env.size(); ++i)
      help += ", " + std::string(o.env[i]);
    help += ")";
    if (o.is_switch) {
      d.add_options()(o.name, po::value<std::string>()->implicit_value("true")->zero_tokens(),
                      help.c_str());
    } else {
      d.add_options()(o.name, po::value<std::string>(), help.c_str());
    }
  }
  return d;
}

std::string apply_values(config& c, const po::variables_map& vm) {
  for (const auto& o : table()) {
    if (vm.count(o.name) == 0) continue;
    std::string err = o.set(c, vm[o.name].as<std::string>());
    if (!err.empty()) return std::string("--") + o.name + ": " + err;
  }
  return {};
}

}  // namespace

std::string serve_help() {
  std::ostringstream os;
  os << "usage: statetrack serve [options]\n\n"
        "Runs the HTTP server. With no options it stores everything in ./var/statetrack.db.\n"
        "Precedence: defaults < --config file < environment < flags.\n\n"
     << describe(true);
  return os.str();
}

std::string options_markdown() {
  std::ostringstream os;
  os << "| flag | environment | default | meaning |\n| --- | --- | --- | --- |\n";
  os << "| `--config FILE` | | | Read options from FILE (`key = value` lines, keys as the flag "
        "names without dashes) |\n";
  for (const auto& o : table()) {
    os << "| `--" << o.name << "` | ";
    for (std::size_t i = 0; i < o.env.size(); ++i)
      os << (i ? ", " : "") << "`" << o.env[i] << "`";
    os << " | " << (o.default_text.empty() ? "" : "`" + o.default_text + "`") << " | " << o.help
       << " |\n";
  }
  return os.str();
}

parse_outcome parse_serve_args(const std::vector<std::string>& args) {
  parse_outcome out;
  config c;
  po::variables_map cli;
  try {
    po::store(po::command_line_parser(args).options(describe(true)).run(), cli);
    po::notify(cli);
  } catch (const std::exception& e) {
    std::cerr << "statetrack serve: " << e.what() << " (see statetrack serve --help)\n";
    out.exit_code = 2;
    return out;
  }
  if (cli.count("help") != 0) {
    std::cout << serve_help();
    return out;
  }
  if (cli.count("help-markdown") != 0) {
    std::cout << options_markdown();
    return out;
  }
  if (cli.count("config") != 0) {
    const std::string path = cli["config"].as<std::string>();
    std::ifstream in(path);
    if (!in) {
      std::cerr << "statetrack serve: cannot read config file " << path << "\n";
      out.exit_code = 2;
      return out;
    }
    po::variables_map file;
    try {
      po::store(po::parse_config_file(in, describe(false), false), file);
    } catch (const std::exception& e) {
      std::cerr << "statetrack serve: " << path << ": " << e.what() << "\n";
      out.exit_code = 2;
      return out;
    }
    if (auto err = apply_values(c, file); !err.empty()) {
      std::cerr << "statetrack serve: " << path << ": " << err << "\n";
      out.exit_code = 2;
      return out;
    }
  }
  for (const auto& o : table()) {
    for (const char* name : o.env) {
      const char* v = std::getenv(name);
      if (v == nullptr) continue;
      if (auto err = o.set(c, v); !err.empty()) {
        std::cerr << "statetrack serve: environment " << name << " (--" << o.name << "): " << err
                  << "\n";
        out.exit_code = 2;
        return out;
      }
      break;
    }
  }
  if (auto err = apply_values(c, cli); !err.empty()) {
    std::cerr << "statetrack serve: " << err << "\n";
    out.exit_code = 2;
    return out;
  }
  if (auto err = cross_check(c); !err.empty()) {
    std::cerr << "statetrack serve: " << err << "\n";
    out.exit_code = 2;
    return out;
  }
  out.cfg = std::move(c);
  return out;
}

}  // namespace statetrack::app
