// The one place every request passes through, in this order:
//   request id + timer -> CORS preflight -> route match (404) -> rate limit (429) ->
//   authentication (401) -> handler (validation 400, business 4xx) -> error mapping
// followed by exactly one access-log line and the metrics. The only try/catch on the request
// path. Shared by all connections; stateless apart from the rate limiter it is given.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <boost/asio/awaitable.hpp>

#include "http/message.hpp"
#include "http/rate_limiter.hpp"
#include "http/router.hpp"

namespace statetrack::api {
struct services;
}

namespace statetrack::http {

struct pipeline_options {
  std::int64_t rate_limit_default = 100;
  std::int64_t rate_limit_heartbeat = 120;
  std::int64_t rate_limit_window_ms = 60000;
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

  const router& router_;
  api::services& svc_;
  pipeline_options opts_;
  rate_limiter limiter_;
};

// True if `s` is a canonical UUID (8-4-4-4-12 hex).
bool is_uuid(std::string_view s);

}  // namespace statetrack::http
