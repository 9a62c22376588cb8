// Incident routes: the mass-stall brake's open incident and the operator's override.
#include "api/context.hpp"
#include "api/routes.hpp"
#include "api/services.hpp"
#include "core/session_service.hpp"
#include "http/router.hpp"
#include "util/json_writer.hpp"

namespace statetrack::api {

namespace {

using boost::asio::awaitable;

void write_incident(util::json_writer& w, const core::mass_stall_incident& inc) {
  w.begin_object();
  w.field("type", "mass_stall");
  w.field_iso("since", inc.since.ms);
  w.field("overdue_sessions", inc.overdue);
  w.field("active_sessions", inc.active);
  w.field("cleared_by_operator", inc.cleared_by_operator);
  w.end_object();
}

// GET /incidents -> 200 {incidents: Incident[]}
awaitable<void> get_incidents(context& ctx) {
  auto inc = co_await ctx.svc.sessions.open_incident();
  std::string out;
  util::json_writer w(out);
  w.begin_object();
  w.key("incidents").begin_array();
  if (inc) write_incident(w, *inc);
  w.end_array();
  w.end_object();
  ctx.reply(std::move(out));
}

// POST /incidents/mass-stall/clear -> 200 Incident | 404 no open incident
// The operator confirms the overdue sessions are really gone: the next sweep stalls them.
awaitable<void> post_incident_mass_stall_clear(context& ctx) {
  auto r = co_await ctx.svc.sessions.clear_incident();
  if (!r) co_return ctx.fail(r.error());
  std::string out;
  util::json_writer w(out);
  write_incident(w, *r);
  ctx.reply(std::move(out));
}

}  // namespace

void register_incident_routes(http::router& r) {
  http::route list;
  list.verb = http::method::get;
  list.pattern = "/incidents";
  list.name = "get_incidents";
  list.handler = get_incidents;
  list.doc = {"Open incidents (the mass-stall brake)", "incidents", "", "", "IncidentList"};
  r.add(std::move(list));
  http::route clear;
  clear.verb = http::method::post;
  clear.pattern = "/incidents/mass-stall/clear";
  clear.name = "post_incident_mass_stall_clear";
  clear.handler = post_incident_mass_stall_clear;
  clear.doc = {"Let the next sweep stall the overdue sessions and close the incident", "incidents",
               "", "", "Incident"};
  r.add(std::move(clear));
}

}  // namespace statetrack::api
