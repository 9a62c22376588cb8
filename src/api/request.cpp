// Body and query access for handlers.
#include "api/request.hpp"

#include <cmath>

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

core::result<std::optional<std::int64_t>> lenient_int_field(const context& ctx,
                                                            std::string_view name, std::int64_t lo,
                                                            std::int64_t hi) {
  auto body = parse_body(ctx.req.content_type, ctx.req.body);
  if (!body || !body->is_object()) return std::optional<std::int64_t>{};
  const auto* v = body->as_object().if_contains(name);
  if (v == nullptr || v->is_null()) return std::optional<std::int64_t>{};
  std::optional<std::int64_t> n;
  if (v->is_int64()) n = v->as_int64();
  if (v->is_uint64() && v->as_uint64() <= static_cast<std::uint64_t>(hi)) {
    n = static_cast<std::int64_t>(v->as_uint64());
  }
  if (v->is_double() && std::floor(v->as_double()) == v->as_double() &&
      std::abs(v->as_double()) < 9e15) {
    n = static_cast<std::int64_t>(v->as_double());
  }
  if (!n) return core::validation_error({std::string(name) + " must be an integer number"});
  if (*n < lo) {
    return core::validation_error(
        {std::string(name) + " must not be less than " + std::to_string(lo)});
  }
  if (*n > hi) {
    return core::validation_error(
        {std::string(name) + " must not be greater than " + std::to_string(hi)});
  }
  return n;
}

std::optional<std::string> query_value(const context& ctx, std::string_view name) {
  for (auto& [k, v] : query_params(ctx)) {
    if (k == name) return v;
  }
  return std::nullopt;
}

}  // namespace statetrack::api
