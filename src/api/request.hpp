// Reading a request into validated values: the body and query through their schemas.
#pragma once

#include <boost/json/object.hpp>

#include "api/context.hpp"
#include "api/validation.hpp"

namespace statetrack::api {

// Parses the body (contract §1.3) and validates it against `s`.
core::result<boost::json::object> read_body(const context& ctx, const schema& s);
// Validates the query string against `s` (unknown parameters are errors).
core::result<boost::json::object> read_query(const context& ctx, const schema& s);
// The query string's parameters, decoded, for endpoints that read them one by one.
std::vector<std::pair<std::string, std::string>> query_params(const context& ctx);
// The value of the first parameter `name`, if present.
std::optional<std::string> query_value(const context& ctx, std::string_view name);

// An optional integer field of a body that is otherwise ignored (heartbeats, task actions):
// absent, null or an unparsable body -> nullopt; present but not an integer in [lo, hi] -> 400.
core::result<std::optional<std::int64_t>> lenient_int_field(const context& ctx,
                                                            std::string_view name, std::int64_t lo,
                                                            std::int64_t hi);

}  // namespace statetrack::api
