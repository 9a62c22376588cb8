// The access table: the one place that says which right each route needs, whether machine keys
// may call it and which object it acts on (applied to the router by register_all; the pipeline
// enforces it and the OpenAPI document states it). Plus the object checks for restricted keys
// (machine-bound or project-scoped): the route's target, loaded by the pipeline before the
// handler, and the helpers handlers use for objects named in a body.
#pragma once

#include <optional>
#include <string_view>

#include <boost/asio/awaitable.hpp>

#include "core/error.hpp"
#include "core/model.hpp"

namespace statetrack::http {
class router;
}

namespace statetrack::api {

struct context;

// Sets need / machine_ok / target / authenticated on every registered route; throws
// std::logic_error for a route the table does not list (no route escapes the table).
void apply_access_table(http::router& r);

// For a restricted key: the 403 if the route's target (first path parameter) exists and the key
// may not touch it; nullopt otherwise (a missing target is left to the handler's 404).
boost::asio::awaitable<std::optional<core::error>> check_target(context& ctx);

// Handler checks for objects named in a request body: on refusal they fail `ctx` with 403 and
// return false.
bool allow_project(context& ctx, std::string_view project_id);
bool allow_session(context& ctx, const core::session& s);
bool allow_machine_write(context& ctx, std::string_view machine_id);
// A session named in a body: loads it (when the key is restricted) and checks it; a missing
// session passes (the service answers 404).
boost::asio::awaitable<bool> allow_session_id(context& ctx, const std::string& session_id);

}  // namespace statetrack::api
