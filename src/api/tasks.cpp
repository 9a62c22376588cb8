// PLACEHOLDER: task routes being implemented.
#include "api/routes.hpp"

namespace statetrack::api {
void register_task_routes(http::router&) {}
}  // namespace statetrack::api
