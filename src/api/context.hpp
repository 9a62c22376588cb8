// What a handler gets: the request, the response to fill, decoded path parameters, the
// request id and the wired services. Created by the pipeline for one request.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/api_keys.hpp"
#include "core/error.hpp"
#include "core/types.hpp"
#include "http/message.hpp"
#include "http/router.hpp"

namespace statetrack::api {

struct services;

struct context {
  const http::request& req;
  http::response& res;
  services& svc;
  const http::route& route;
  std::vector<std::string> params;
  std::string_view path;   // without the query string
  std::string_view query;  // without the '?'
  std::string request_id;
  core::timestamp now;  // when the request was received
  core::principal who;

  std::string_view param(std::size_t i) const { return params.at(i); }

  // 2xx with a JSON body (the route's success status unless given).
  void reply(std::string body) { reply(route.success_status, std::move(body)); }
  void reply(unsigned status, std::string body);
  void no_content();
  // The contract's error envelope for an expected failure.
  void fail(const core::error& e);
};

// Renders the compatibility error envelope into `res` (status, body, Retry-After if given).
void render_error(http::response& res, const core::error& e, std::string_view request_id,
                  std::string_view path, core::timestamp now);

}  // namespace statetrack::api
