// Machine routes (contract §4.8): parse and validate, call the machine service, render.
// assign-session and release-session answer 201 with the machine, as the Reference does.
#include <boost/json/serialize.hpp>

#include "api/access.hpp"
#include "api/context.hpp"
#include "api/request.hpp"
#include "api/routes.hpp"
#include "api/schemas.hpp"
#include "api/services.hpp"
#include "core/documents.hpp"
#include "core/machine_service.hpp"
#include "http/router.hpp"

namespace statetrack::api {

namespace {

namespace json = boost::json;
using boost::asio::awaitable;
using core::machine;
using util::json_writer;

std::string render_list(const std::vector<machine>& list) {
  std::string out;
  out.reserve(64 + list.size() * 400);
  json_writer w(out);
  w.begin_array();
  for (const auto& m : list)
    core::write_machine(w, m);
  w.end_array();
  return out;
}

// The validated (and Number()-coerced) docker_slots array, if given and not null.
std::optional<std::vector<double>> slots_of(const json::object& body) {
  const auto* v = body.if_contains("docker_slots");
  if (v == nullptr || !v->is_array()) return std::nullopt;
  std::vector<double> out;
  out.reserve(v->as_array().size());
  for (const auto& e : v->as_array()) {
    if (e.is_int64()) {
      out.push_back(static_cast<double>(e.as_int64()));
    } else if (e.is_uint64()) {
      out.push_back(static_cast<double>(e.as_uint64()));
    } else if (e.is_double()) {
      out.push_back(e.as_double());
    }
  }
  return out;
}

// GET /machines/available -> 200 availability[] (most free slots first, then machine_id)
awaitable<void> get_machines_available(context& ctx) {
  auto list = co_await ctx.svc.machines.available();
  std::string out;
  out.reserve(64 + list.size() * 300);
  json_writer w(out);
  w.begin_array();
  for (const auto& a : list) {
    const machine& m = a.m;
    w.begin_object();
    w.field("machine_id", m.machine_id);
    w.field("hostname", m.hostname);
    w.field("status", core::to_string(m.status));
    w.field("total_slots", static_cast<std::int64_t>(m.docker_slots.size()));
    w.field("occupied_slots", a.occupied_slots);
    w.field("available_slots", static_cast<std::int64_t>(a.available_slot_numbers.size()));
    w.key("available_slot_numbers").begin_array();
    for (auto n : a.available_slot_numbers)
      w.value(n);
    w.end_array();
    w.key("active_sessions").begin_array();
    for (const auto& id : m.active_sessions)
      w.value(id);
    w.end_array();
    w.field_iso("last_heartbeat", m.last_heartbeat.ms);
    w.end_object();
  }
  w.end_array();
  ctx.reply(std::move(out));
}

// GET /machines -> 200 machine[] (insertion order, no pagination) | 400
awaitable<void> list_machines(context& ctx) {
  auto q = read_query(ctx, schemas::list_machines);
  if (!q) co_return ctx.fail(q.error());
  std::optional<core::machine_status> status;
  if (auto s = get_string(*q, "status")) status = core::parse_machine_status(*s);
  auto list = co_await ctx.svc.machines.list(status, get_string(*q, "hostname"));
  ctx.reply(render_list(list));
}

// GET /machines/:id -> 200 machine | 404
awaitable<void> get_machine(context& ctx) {
  auto r = co_await ctx.svc.machines.get(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::machine_json(*r));
}

// POST /machines -> 201 machine | 400 schema, slots | 409 exists
awaitable<void> post_machine(context& ctx) {
  auto body = read_body(ctx, schemas::register_machine);
  if (!body) co_return ctx.fail(body.error());
  const auto& b = *body;
  core::register_machine_input in;
  in.machine_id = get_string(b, "machine_id").value_or("");
  in.hostname = get_string(b, "hostname").value_or("");
  in.docker_slots = slots_of(b).value_or(std::vector<double>{});
  // Recommended: metadata is always an object, so an explicit null becomes {} too.
  if (const auto* m = get_object(b, "metadata")) in.metadata = json::serialize(*m);
  if (!allow_machine_write(ctx, in.machine_id)) co_return;
  auto r = co_await ctx.svc.machines.register_machine(std::move(in));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::machine_json(*r));
}

// PUT /machines/:id -> 200 machine | 400 schema, slots, slot in use | 404
awaitable<void> put_machine(context& ctx) {
  auto body = read_body(ctx, schemas::update_machine);
  if (!body) co_return ctx.fail(body.error());
  const auto& b = *body;
  core::update_machine_input in;
  in.docker_slots = slots_of(b);
  if (auto s = get_string(b, "status")) in.status = core::parse_machine_status(*s);
  // Replaced wholesale; null is "no change" (contract §1.6, Recommended).
  if (const auto* m = get_object(b, "metadata")) in.metadata = json::serialize(*m);
  auto r = co_await ctx.svc.machines.update(std::string(ctx.param(0)), std::move(in));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::machine_json(*r));
}

// DELETE /machines/:id -> 204 | 404
awaitable<void> delete_machine(context& ctx) {
  auto r = co_await ctx.svc.machines.deregister(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  ctx.no_content();
}

// POST /machines/:id/assign-session -> 201 machine | 400 schema, not online, slot unknown |
// 404 machine, session | 409 already assigned, slot occupied, no free slot
awaitable<void> post_machine_assign_session(context& ctx) {
  auto body = read_body(ctx, schemas::assign_session);
  if (!body) co_return ctx.fail(body.error());
  const std::string session_id = get_string(*body, "session_id").value_or("");
  // Assigning takes one of the machine's slots and refreshes its heartbeat: a machine write.
  if (!allow_machine_write(ctx, ctx.param(0))) co_return;
  if (!(co_await allow_session_id(ctx, session_id))) co_return;
  auto r = co_await ctx.svc.machines.assign_session(std::string(ctx.param(0)), session_id,
                                                    get_number(*body, "docker_slot"));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::machine_json(*r));
}

// POST /machines/:id/release-session -> 201 machine | 400 schema, not assigned | 404 machine
awaitable<void> post_machine_release_session(context& ctx) {
  auto body = read_body(ctx, schemas::release_session);
  if (!body) co_return ctx.fail(body.error());
  std::optional<std::int64_t> epoch;
  if (auto n = get_number(*body, "epoch")) epoch = static_cast<std::int64_t>(*n);
  const std::string session_id = get_string(*body, "session_id").value_or("");
  if (!(co_await allow_session_id(ctx, session_id))) co_return;
  auto r = co_await ctx.svc.machines.release_session(std::string(ctx.param(0)), session_id, epoch);
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::machine_json(*r));
}

// POST /machines/:id/heartbeat -> 200 {machine_id, status, last_heartbeat, message} | 404
awaitable<void> post_machine_heartbeat(context& ctx) {
  auto r = co_await ctx.svc.machines.heartbeat(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  const machine& m = r->m;
  std::string out;
  out.reserve(192);
  json_writer w(out);
  w.begin_object();
  w.field("machine_id", m.machine_id);
  w.field("status", core::to_string(m.status));
  w.field_iso("last_heartbeat", m.last_heartbeat.ms);
  w.field("message", core::machine_heartbeat_message(r->back_online));
  w.end_object();
  ctx.reply(std::move(out));
}

}  // namespace

void register_machine_routes(http::router& r) {
  using http::method;
  const route_adder add{r, "machines"};
  add(method::get, "/machines/available", "get_machines_available", get_machines_available, 200,
      {"Online machines with their free docker slots", "", "", "", "MachineAvailability", true});
  add(method::get, "/machines", "list_machines", list_machines, 200,
      {"List machines (insertion order)", "", "", "ListMachinesQuery", "Machine", true});
  add(method::get, "/machines/:id", "get_machine", get_machine, 200,
      {"Get a machine", "", "", "", "Machine"});
  add(method::post, "/machines", "post_machine", post_machine, 201,
      {"Register a machine", "", "RegisterMachineRequest", "", "Machine"});
  add(method::put, "/machines/:id", "put_machine", put_machine, 200,
      {"Update a machine (metadata replaced, heartbeat bumped)", "", "UpdateMachineRequest", "",
       "Machine"});
  add(method::del, "/machines/:id", "delete_machine", delete_machine, 204,
      {"Deregister a machine (mark offline)", "", "", "", ""});
  add(method::post, "/machines/:id/assign-session", "post_machine_assign_session",
      post_machine_assign_session, 201,
      {"Assign a session to a docker slot of the machine", "", "AssignSessionRequest", "",
       "Machine"});
  add(method::post, "/machines/:id/release-session", "post_machine_release_session",
      post_machine_release_session, 201,
      {"Release a session from the machine", "", "ReleaseSessionRequest", "", "Machine"});
  add(method::post, "/machines/:id/heartbeat", "post_machine_heartbeat", post_machine_heartbeat,
      200, {"Record a machine heartbeat", "", "", "", "MachineHeartbeatResult"});
}

}  // namespace statetrack::api
