// The one place every request passes through, in this order:
//   request id + timer -> CORS preflight -> route match (404) -> rate limit (429) ->
//   failed-authentication throttle (429) -> authentication (401) -> authorization: the
//   route's right (api/access.cpp) and, for restricted keys, its target object (403) ->
//   handler (validation 400, business 4xx) -> error mapping
// followed by the CORS and security headers, exactly one access-log line and the metrics.
// The only try/catch on the request path. Shared by all connections; its only state is the
// two rate limiters (requests per endpoint, failed authentications per client address).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "http/message.hpp"
#include "http/rate_limiter.hpp"
#include "http/router.hpp"

namespace statetrack::api {
struct services;
}
namespace statetrack::obs {
class counter;
}

namespace statetrack::http {

struct pipeline_options {
  std::int64_t rate_limit_default = 100;
  std::int64_t rate_limit_heartbeat = 120;
  std::int64_t rate_limit_window_ms = 60000;
  // Origins allowed cross-origin access (exact `scheme://host[:port]`); empty: none; a
  // single "*": every origin (the reference's behaviour).
  std::vector<std::string> cors_origins;
  // 401s from one client address within a minute after which its requests to authenticated
  // routes get 429 for a minute; 0 disables.
  std::int64_t auth_failure_limit = 20;
};

class pipeline {
 public:
  pipeline(const router& r, api::services& svc, pipeline_options opts);

  boost::asio::awaitable<void> handle(request& req, response& res);
  // Answers a request the server could not read completely (too large, malformed) with the
  // envelope, headers, access line and metrics of a normal response.
  void reject(const request& req, unsigned status, std::string message, response& res);

 private:
  void finish(const request& req, response& res, const std::string& request_id,
              std::size_t route_index, std::string_view key_id,
              std::chrono::steady_clock::time_point started);
  // The Access-Control-Allow-Origin value for this request, or empty for none.
  std::string_view allowed_origin(const request& req) const;
  // Counts a 401 and throttles the address when it reached the limit.
  void note_auth_failure(const std::string& client_ip, std::int64_t now_ms);

  const router& router_;
  api::services& svc_;
  pipeline_options opts_;
  bool cors_any_ = false;
  rate_limiter limiter_;
  rate_limiter auth_failures_;
  obs::counter* auth_failures_total_ = nullptr;
  obs::counter* auth_throttled_total_ = nullptr;
};

// Appends `target` with any `ticket` query value replaced by [REDACTED].
void append_redacted_target(std::string& out, std::string_view target);

// True if `s` is a canonical UUID (8-4-4-4-12 hex).
bool is_uuid(std::string_view s);

}  // namespace statetrack::http
