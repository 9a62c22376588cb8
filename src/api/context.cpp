// The error envelope: statusCode, error (reason phrase), error_code, message, details,
// request_id, timestamp, path. Never a stack trace or internal text.
#include "api/context.hpp"

#include <boost/json/serialize.hpp>

#include "util/json_writer.hpp"

namespace statetrack::api {

void context::reply(unsigned status, std::string body) {
  res.status = status;
  res.body = std::move(body);
}

void context::no_content() {
  res.status = 204;
  res.body.clear();
}

void context::fail(const core::error& e) {
  render_error(res, e, request_id, req.target, now);
}

void render_error(http::response& res, const core::error& e, std::string_view request_id,
                  std::string_view path, core::timestamp now) {
  res.status = core::status_of(e.code);
  res.body.clear();
  util::json_writer w(res.body);
  w.begin_object();
  w.field("statusCode", static_cast<std::int64_t>(res.status));
  w.field("error", core::reason_of(e.code));
  w.field("error_code", core::code_name_of(e.code));
  if (e.code == core::errc::validation_failed) {
    w.key("message").begin_array();
    for (const auto& m : e.field_messages)
      w.value(m);
    w.end_array();
    w.key("details").begin_array();
    for (const auto& m : e.field_messages)
      w.value(m);
    w.end_array();
  } else {
    w.field("message", e.message);
    if (!e.details.is_null()) w.field_raw("details", boost::json::serialize(e.details));
  }
  for (const auto& kv : e.extra)
    w.field_raw(kv.key(), boost::json::serialize(kv.value()));
  w.field("request_id", request_id);
  w.field_iso("timestamp", now.ms);
  w.field("path", path);
  w.end_object();
}

}  // namespace statetrack::api
