// PLACEHOLDER: machine routes being implemented.
#include "api/routes.hpp"

namespace statetrack::api {
void register_machine_routes(http::router&) {}
}  // namespace statetrack::api
