// The full route table.
#include "api/routes.hpp"

#include "api/access.hpp"

namespace statetrack::api {

void route_adder::operator()(http::method m, const char* pattern, const char* name,
                             http::handler_fn fn, unsigned status, http::route_doc doc,
                             http::limit_class limit) const {
  http::route rt;
  rt.verb = m;
  rt.pattern = pattern;
  rt.name = name;
  rt.handler = fn;
  rt.success_status = status;
  rt.limit = limit;
  if (!tag.empty()) doc.tag = tag;
  rt.doc = doc;
  r.add(std::move(rt));
}

void register_all(http::router& r) {
  register_health_routes(r);
  register_session_routes(r);
  register_task_routes(r);
  register_machine_routes(r);
  register_metrics_routes(r);
  register_admin_routes(r);
  register_incident_routes(r);
  register_event_routes(r);
  register_key_routes(r);
  register_docs_routes(r);
  // Last: the right each route needs, from the one access table (throws for a route it lacks).
  apply_access_table(r);
}

}  // namespace statetrack::api
