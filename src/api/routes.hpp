// Registration of every route of the service, one function per resource file.
#pragma once

#include <string_view>

#include "http/router.hpp"

namespace statetrack::api {

// Adds routes of one resource: `tag` groups them in the OpenAPI document (empty: each doc's own).
struct route_adder {
  http::router& r;
  std::string_view tag;
  void operator()(http::method m, const char* pattern, const char* name, http::handler_fn fn,
                  unsigned status, http::route_doc doc,
                  http::limit_class limit = http::limit_class::standard) const;
};

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
