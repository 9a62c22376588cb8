// Registration of every route of the service, one function per resource file.
#pragma once

namespace statetrack::http {
class router;
}

namespace statetrack::api {

void register_health_routes(http::router& r);
void register_session_routes(http::router& r);
void register_task_routes(http::router& r);
void register_machine_routes(http::router& r);
void register_docs_routes(http::router& r);
void register_metrics_routes(http::router& r);
void register_admin_routes(http::router& r);
void register_incident_routes(http::router& r);
void register_event_routes(http::router& r);
void register_key_routes(http::router& r);

// All of the above, in matching-independent order (the router gives literals precedence),
// then the access table (api/access.hpp) applied to every route.
void register_all(http::router& r);

}  // namespace statetrack::api
