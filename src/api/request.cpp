// Body and query access for handlers.
#include "api/request.hpp"

#include "http/router.hpp"

namespace statetrack::api {

core::result<boost::json::object> read_body(const context& ctx, const schema& s) {
  auto v = parse_body(ctx.req.content_type, ctx.req.body);
  if (!v) return v.error();
  return validate_body(s, *v);
}

core::result<boost::json::object> read_query(const context& ctx, const schema& s) {
  return validate_query(s, query_params(ctx));
}

std::vector<std::pair<std::string, std::string>> query_params(const context& ctx) {
  return http::parse_query(ctx.query);
}

std::optional<std::string> query_value(const context& ctx, std::string_view name) {
  for (auto& [k, v] : query_params(ctx)) {
    if (k == name) return v;
  }
  return std::nullopt;
}

}  // namespace statetrack::api
