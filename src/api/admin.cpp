// Operator routes under /admin (also /api/admin): the log level, changeable at run time
// without a restart. They need an admin key (api/access.cpp); other roles get 403.
#include <array>

#include "api/context.hpp"
#include "api/request.hpp"
#include "api/routes.hpp"
#include "api/services.hpp"
#include "api/validation.hpp"
#include "http/router.hpp"
#include "obs/logger.hpp"
#include "util/json_writer.hpp"

namespace statetrack::api {

namespace {

using boost::asio::awaitable;

constexpr std::array<std::string_view, 4> level_names = {"debug", "info", "warn", "error"};

// The body of PUT /admin/log-level. Kept here because only this route reads it.
const schema set_log_level = [] {
  schema s;
  s.name = "SetLogLevelRequest";
  s.description = "The new minimum log level";
  field_spec f;
  f.name = "level";
  f.kind = field_kind::enum_value;
  f.required = true;
  f.enum_values = level_names;
  f.description = "debug, info, warn or error";
  s.fields.push_back(f);
  return s;
}();

std::string level_body(obs::level l) {
  std::string out;
  util::json_writer w(out);
  w.begin_object();
  w.field("level", obs::level_option_name(l));
  w.end_object();
  return out;
}

// GET /admin/log-level -> 200 {level} | 401 | 403
awaitable<void> get_admin_log_level(context& ctx) {
  ctx.reply(level_body(ctx.svc.log.get_level()));
  co_return;
}

// PUT /admin/log-level {level} -> 200 {level} | 400 | 401 | 403
// Takes effect at once in this process (not in other instances); logs one INFO line.
awaitable<void> put_admin_log_level(context& ctx) {
  auto body = read_body(ctx, set_log_level);
  if (!body) co_return ctx.fail(body.error());
  obs::level to = obs::level::info;
  obs::parse_level(*get_string(*body, "level"), to);
  obs::fields f;
  f.add("key_id", std::string_view(ctx.who.key_id)).add("request_id", ctx.request_id);
  ctx.svc.log.change_level(to, "api", &f);
  ctx.reply(level_body(to));
}

}  // namespace

void register_admin_routes(http::router& r) {
  http::route get;
  get.verb = http::method::get;
  get.pattern = "/admin/log-level";
  get.name = "get_admin_log_level";
  get.handler = get_admin_log_level;
  get.doc = {"Current minimum log level (admin key)", "admin", "", "", "LogLevel"};
  r.add(std::move(get));
  http::route put;
  put.verb = http::method::put;
  put.pattern = "/admin/log-level";
  put.name = "put_admin_log_level";
  put.handler = put_admin_log_level;
  put.doc = {
      "Set the minimum log level at run time, body {\"level\": \"debug|info|warn|error\"} "
      "(admin key)",
      "admin", "", "", "LogLevel"};
  r.add(std::move(put));
}

}  // namespace statetrack::api
