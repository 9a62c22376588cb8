// PLACEHOLDER: OpenAPI routes being implemented.
#include "api/routes.hpp"

namespace statetrack::api {
void register_docs_routes(http::router&) {}
}  // namespace statetrack::api
