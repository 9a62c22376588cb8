// Middleware order and error mapping (see pipeline.hpp).
#include "http/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>

#include "api/access.hpp"
#include "api/context.hpp"
#include "api/services.hpp"
#include "core/api_keys.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/tickets.hpp"
#include "obs/logger.hpp"
#include "obs/metrics.hpp"
#include "obs/request_stats.hpp"

namespace statetrack::http {

namespace {

using core::errc;

// Key presentation order of the contract (§1.5): a "Bearer " Authorization wins, even when
// empty or wrong; anything else falls through to X-API-Key.
std::string_view extract_key(const request& req) {
  std::string_view auth = req.authorization;
  if (auth.starts_with("Bearer ")) return auth.substr(7);
  return req.api_key;
}

constexpr std::int64_t auth_failure_window_ms = 60000;
constexpr std::string_view cors_methods = "GET,HEAD,PUT,PATCH,POST,DELETE";

bool iequal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; };
           return lower(x) == lower(y);
         });
}

bool has_header(const response& res, std::string_view name) {
  return std::any_of(res.headers.begin(), res.headers.end(),
                     [&](const auto& h) { return iequal(h.first, name); });
}

void set_rate_headers(response& res, const rate_decision& d) {
  res.set_header("X-RateLimit-Limit", std::to_string(d.limit));
  res.set_header("X-RateLimit-Remaining", std::to_string(d.remaining));
  res.set_header("X-RateLimit-Reset", std::to_string(d.reset_s));
}

}  // namespace

// The target with the value of a `ticket` query parameter masked: tickets are single-use
// and short-lived, but credentials of any kind stay out of log lines.
void append_redacted_target(std::string& out, std::string_view target) {
  const auto q = target.find('?');
  if (q == std::string_view::npos) {
    out += target;
    return;
  }
  out += target.substr(0, q + 1);
  std::string_view query = target.substr(q + 1);
  bool first = true;
  while (!query.empty()) {
    const auto amp = query.find('&');
    std::string_view part = query.substr(0, amp);
    if (!first) out += '&';
    first = false;
    if (part.starts_with("ticket=")) {
      out += "ticket=[REDACTED]";
    } else {
      out += part;
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
}

bool is_uuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

pipeline::pipeline(const router& r, api::services& svc, pipeline_options opts)
    : router_(r),
      svc_(svc),
      opts_(std::move(opts)),
      limiter_(opts_.rate_limit_window_ms),
      auth_failures_(auth_failure_window_ms) {
  cors_any_ = std::find(opts_.cors_origins.begin(), opts_.cors_origins.end(), "*") !=
              opts_.cors_origins.end();
  auth_failures_total_ = &svc_.metrics.add_counter(
      "statetrack_auth_failures_total", "Requests answered 401 (missing or invalid API key)");
  auth_throttled_total_ =
      &svc_.metrics.add_counter("statetrack_auth_throttled_total",
                                "Requests answered 429 because their client address had too many "
                                "failed authentications");
}

std::string_view pipeline::allowed_origin(const request& req) const {
  if (cors_any_) return "*";
  if (req.origin.empty()) return {};
  for (const auto& o : opts_.cors_origins) {
    if (iequal(o, req.origin)) return o;
  }
  return {};
}

boost::asio::awaitable<void> pipeline::handle(request& req, response& res) {
  const auto started = std::chrono::steady_clock::now();
  const core::timestamp now = svc_.clock.now();
  std::string request_id = is_uuid(req.request_id) ? req.request_id : core::new_uuid_v4();
  std::string_view target = req.target;
  std::string_view path = target.substr(0, target.find('?'));
  std::string_view query =
      path.size() < target.size() ? target.substr(path.size() + 1) : std::string_view{};
  std::size_t route_index = router_.routes().size();
  std::string key_id;

  auto fail = [&](const core::error& e) { api::render_error(res, e, request_id, target, now); };

  try {
    if (req.verb == method::options) {
      // CORS preflight, answered before anything else; allow headers only for allowed origins
      // (Access-Control-Allow-Origin and Vary are added by finish()).
      res.status = 204;
      if (!allowed_origin(req).empty()) {
        res.set_header("Access-Control-Allow-Methods", std::string(cors_methods));
        if (!req.acr_headers.empty()) {
          res.set_header("Access-Control-Allow-Headers", req.acr_headers);
        }
      }
    } else {
      match m = router_.find(req.verb, path);
      if (m.r == nullptr) {
        fail(core::make_error(errc::not_found,
                              "Cannot " + req.method_text + " " + std::string(target)));
      } else {
        const route& r = *m.r;
        route_index = r.index;
        bool blocked = false;
        if (r.limit != limit_class::none) {
          std::int64_t limit = r.limit == limit_class::heartbeat ? opts_.rate_limit_heartbeat
                                                                 : opts_.rate_limit_default;
          if (limit > 0) {
            auto d = limiter_.check(r.index, req.client_ip, limit, now.ms);
            if (!d.allowed) {
              blocked = true;
              fail(core::make_error(errc::rate_limited, "ThrottlerException: Too Many Requests"));
              res.set_header("Retry-After", std::to_string(d.retry_after_s));
            } else {
              set_rate_headers(res, d);
            }
          }
        }
        if (!blocked && r.authenticated && opts_.auth_failure_limit > 0) {
          // An address that failed authentication too often is refused even with a valid key.
          auto d = auth_failures_.peek(0, req.client_ip, now.ms);
          if (!d.allowed) {
            blocked = true;
            auth_throttled_total_->inc();
            fail(core::make_error(errc::rate_limited,
                                  "Too many failed authentication attempts; retry later"));
            res.set_header("Retry-After", std::to_string(d.retry_after_s));
          }
        }
        std::optional<core::principal> who;
        if (!blocked && r.authenticated) {
          std::string_view key = extract_key(req);
          std::optional<std::string> ticket;
          if (key.empty() && r.accepts_ticket) {
            for (auto& [k, v] : parse_query(query)) {
              if (k == "ticket") ticket = v;
            }
          }
          if (ticket) {
            // Browsers open streams with a single-use ticket instead of a key header; the
            // stream gets its key's current role and scope.
            who = co_await core::redeem_ticket(svc_.store, *ticket, now);
            if (who) who = co_await svc_.keys.reload(*who);
            if (!who) fail(core::make_error(errc::unauthorized, "Invalid or expired ticket"));
          } else if (key.empty()) {
            fail(core::make_error(errc::unauthorized, "API key is missing"));
          } else {
            bool expired = false;
            who = co_await svc_.keys.verify(key, &expired);
            if (!who) {
              fail(core::make_error(errc::unauthorized,
                                    expired ? "API key has expired" : "Invalid API key"));
            }
          }
          if (who) {
            key_id = who->key_id;
          } else {
            note_auth_failure(req.client_ip, now.ms);
          }
        }
        // Authorization: the right the route needs (access table), then, for a machine key
        // or a project-scoped key, the object the route acts on.
        std::optional<std::string> denied;
        if (!blocked && who) denied = core::route_denial(*who, r.need, r.machine_ok);
        if (denied) {
          fail(core::make_error(errc::forbidden, std::move(*denied)));
        } else if (!blocked && (!r.authenticated || who)) {
          if (m.bad_escape) {
            fail(core::make_error(errc::bad_request,
                                  "Failed to decode param '" + m.bad_param + "'"));
          } else {
            api::context ctx{req,  res,   svc_,       r,   std::move(m.params),
                             path, query, request_id, now, who.value_or(core::principal{})};
            std::optional<core::error> refused;
            if (who && who->restricted()) refused = co_await api::check_target(ctx);
            if (refused) {
              fail(*refused);
            } else {
              res.status = r.success_status;
              co_await r.handler(ctx);
            }
          }
        }
      }
    }
  } catch (const core::error_exception& e) {
    fail(e.get());
  } catch (const core::storage_error& e) {
    obs::fields f;
    f.add("request_id", request_id).add("error", e.what());
    svc_.log.error("HTTP", "storage failure while handling request", &f);
    fail(core::make_error(errc::unavailable,
                          "The service is temporarily unable to store or read data; retry later"));
    res.set_header("Retry-After", "1");
  } catch (const std::exception& e) {
    obs::fields f;
    f.add("request_id", request_id).add("error", e.what());
    svc_.log.error("HTTP", "unhandled exception while handling request", &f);
    res.headers.clear();
    fail(core::make_error(errc::internal, "Internal server error"));
  }

  finish(req, res, request_id, route_index, key_id, started);
}

void pipeline::reject(const request& req, unsigned status, std::string message, response& res) {
  const auto started = std::chrono::steady_clock::now();
  std::string request_id = is_uuid(req.request_id) ? req.request_id : core::new_uuid_v4();
  errc code = status == 413   ? errc::payload_too_large
              : status == 431 ? errc::header_too_large
              : status == 408 ? errc::timeout
                              : errc::bad_request;
  api::render_error(res, core::make_error(code, std::move(message)), request_id, req.target,
                    svc_.clock.now());
  res.close = true;
  finish(req, res, request_id, router_.routes().size(), {}, started);
}

void pipeline::note_auth_failure(const std::string& client_ip, std::int64_t now_ms) {
  auth_failures_total_->inc();
  if (opts_.auth_failure_limit <= 0) return;
  auto d = auth_failures_.record(0, client_ip, opts_.auth_failure_limit, now_ms);
  if (!d.allowed) {
    obs::fields f;
    f.add("client_ip", std::string_view(client_ip))
        .add("failures", opts_.auth_failure_limit)
        .add("retry_after_s", d.retry_after_s);
    svc_.log.warn("HTTP", "client address throttled after repeated failed authentication", &f);
  }
}

void pipeline::finish(const request& req, response& res, const std::string& request_id,
                      std::size_t route_index, std::string_view key_id,
                      std::chrono::steady_clock::time_point started) {
  res.set_header("X-Request-Id", request_id);
  if (auto origin = allowed_origin(req); !origin.empty()) {
    res.set_header("Access-Control-Allow-Origin", std::string(origin));
  }
  if (!cors_any_ && !opts_.cors_origins.empty()) {
    // The answer depends on Origin (allowed or not): caches must keep them apart.
    res.set_header(
        "Vary", req.verb == method::options ? "Origin, Access-Control-Request-Headers" : "Origin");
  } else if (cors_any_ && req.verb == method::options) {
    res.set_header("Vary", "Access-Control-Request-Headers");
  }
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("X-Frame-Options", "DENY");
  res.set_header("Referrer-Policy", "no-referrer");
  // API answers are never cached; a handler that sets its own policy (the docs page) keeps it.
  if (!has_header(res, "Cache-Control")) res.set_header("Cache-Control", "no-store");
  if (res.status == 204) res.body.clear();

  std::string_view target = req.target;
  std::string_view path = target.substr(0, target.find('?'));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  svc_.requests.record(route_index, res.status, seconds);
  const obs::level lvl = res.status >= 500   ? obs::level::error
                         : res.status >= 400 ? obs::level::warn
                                             : obs::level::info;
  if (!svc_.log.enabled(lvl)) return;
  const double ms = std::round(seconds * 1e5) / 100;
  std::string msg;
  msg.reserve(req.method_text.size() + target.size() + 32);
  msg += req.method_text;
  msg += ' ';
  append_redacted_target(msg, target);
  msg += ' ';
  msg += std::to_string(res.status);
  msg += " - ";
  msg += std::to_string(static_cast<std::int64_t>(std::llround(seconds * 1000)));
  msg += "ms";
  obs::fields f;
  f.add("request_id", std::string_view(request_id))
      .add("method", std::string_view(req.method_text))
      .add("path", path)
      .add("route", route_index < router_.routes().size()
                        ? std::string_view(router_.routes()[route_index]->pattern)
                        : std::string_view("unmatched"))
      .add("status_code", static_cast<std::int64_t>(res.status))
      .add("duration_ms", ms)
      .add("client_ip", std::string_view(req.client_ip));
  if (!key_id.empty()) f.add("key_id", key_id);
  svc_.log.log(lvl, "HTTP", msg, &f);
}

}  // namespace statetrack::http
