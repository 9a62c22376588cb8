// The full route table.
#include "api/routes.hpp"

namespace statetrack::api {

void register_all(http::router& r) {
  register_health_routes(r);
  register_session_routes(r);
  register_task_routes(r);
  register_machine_routes(r);
  register_metrics_routes(r);
  register_admin_routes(r);
  register_incident_routes(r);
  register_event_routes(r);
  register_docs_routes(r);
}

}  // namespace statetrack::api
