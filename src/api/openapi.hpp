// The OpenAPI 3.0.3 document, generated from the router's route table (contract §12.3): one
// operation per route, request and query schemas from api::schemas, response schemas from the
// hand-written components in openapi.cpp. Nothing is listed twice, so the document cannot
// drift from what the server serves.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>

namespace statetrack::http {
class router;
struct route;
}  // namespace statetrack::http

namespace statetrack::api {

// The whole document. `version` goes to info.version.
boost::json::object build_openapi(const http::router& r, std::string_view version);

// The public documentation pages themselves (/api/docs, /api/docs-json), which the document
// leaves out.
bool is_docs_route(const http::route& r);

// `/sessions/:id/health` -> `/sessions/{id}/health`.
std::string openapi_path(std::string_view pattern);

// Names of the hand-written response components (every name a route's
// `route_doc::response_schema` may use, plus the ones they reference).
std::vector<std::string> response_component_names();

// Route names whose query parameters are read one by one instead of through a named query
// schema; their parameters are documented from a table in openapi.cpp.
std::vector<std::string_view> informal_query_routes();

}  // namespace statetrack::api
