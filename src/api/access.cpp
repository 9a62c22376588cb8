// The access table and the object checks (see access.hpp).
#include "api/access.hpp"

#include <array>
#include <stdexcept>
#include <string>

#include "api/context.hpp"
#include "api/services.hpp"
#include "core/access.hpp"
#include "http/router.hpp"
#include "storage/store.hpp"

namespace statetrack::api {

namespace {

using core::access_level;
using http::target_kind;

struct route_access {
  std::string_view name;  // the route's handler name
  access_level need;
  bool machine_ok;
  target_kind target;
};

constexpr access_level pub = access_level::public_;
constexpr access_level rd = access_level::read;
constexpr access_level wr = access_level::write;
constexpr access_level adm = access_level::admin;
constexpr bool machine = true;
constexpr bool no_machine = false;

// Every route of the service. Reads need `read`, changes `write`; keys, cleanup, purge, the
// log level and the mass-stall override need `admin`. Machine keys may register and heartbeat
// their machine, create, heartbeat and update sessions and tasks on it, and open event
// streams (which deliver only their machine's events).
constexpr std::array table = {
    route_access{"get_health", pub, no_machine, target_kind::none},
    route_access{"get_health_ready", pub, no_machine, target_kind::none},
    route_access{"get_health_live", pub, no_machine, target_kind::none},
    route_access{"get_health_detailed", pub, no_machine, target_kind::none},
    route_access{"get_health_system", pub, no_machine, target_kind::none},
    route_access{"get_docs", pub, no_machine, target_kind::none},
    route_access{"get_docs_json", pub, no_machine, target_kind::none},
    // sessions
    route_access{"post_session", wr, machine, target_kind::none},
    route_access{"list_sessions", rd, no_machine, target_kind::none},
    route_access{"get_sessions_stale", rd, no_machine, target_kind::none},
    route_access{"get_sessions_active", rd, no_machine, target_kind::none},
    route_access{"get_sessions_failed", rd, no_machine, target_kind::none},
    route_access{"get_sessions_archived", rd, no_machine, target_kind::none},
    route_access{"get_sessions_recoverable", rd, no_machine, target_kind::none},
    route_access{"post_sessions_cleanup", adm, no_machine, target_kind::none},
    route_access{"get_sessions_by_project", rd, no_machine, target_kind::project},
    route_access{"get_sessions_by_machine", rd, no_machine, target_kind::none},
    route_access{"get_session", rd, no_machine, target_kind::session},
    route_access{"put_session", wr, machine, target_kind::session},
    route_access{"delete_session", wr, no_machine, target_kind::session},
    route_access{"post_session_heartbeat", wr, machine, target_kind::session},
    route_access{"get_session_health", rd, no_machine, target_kind::session},
    route_access{"get_session_failure_info", rd, no_machine, target_kind::session},
    route_access{"post_session_mark_failed", wr, no_machine, target_kind::session},
    route_access{"post_session_mark_stalled", wr, no_machine, target_kind::session},
    route_access{"post_session_archive", wr, no_machine, target_kind::session},
    route_access{"delete_session_purge", adm, no_machine, target_kind::session},
    route_access{"post_session_prepare_recovery", wr, no_machine, target_kind::session},
    route_access{"post_session_recover", wr, no_machine, target_kind::session},
    route_access{"post_session_directive", wr, no_machine, target_kind::session},
    route_access{"get_session_events", rd, no_machine, target_kind::session},
    route_access{"get_session_recovery_history", rd, no_machine, target_kind::session},
    route_access{"get_session_tasks", rd, no_machine, target_kind::session},
    // tasks
    route_access{"post_task", wr, machine, target_kind::none},
    route_access{"list_tasks", rd, no_machine, target_kind::none},
    route_access{"get_task", rd, no_machine, target_kind::task},
    route_access{"put_task", wr, machine, target_kind::task},
    route_access{"delete_task", wr, no_machine, target_kind::task},
    route_access{"post_task_start", wr, machine, target_kind::task},
    route_access{"post_task_complete", wr, machine, target_kind::task},
    route_access{"post_task_fail", wr, machine, target_kind::task},
    // machines
    route_access{"get_machines_available", rd, no_machine, target_kind::none},
    route_access{"list_machines", rd, no_machine, target_kind::none},
    route_access{"get_machine", rd, no_machine, target_kind::none},
    route_access{"post_machine", wr, machine, target_kind::none},
    route_access{"put_machine", wr, no_machine, target_kind::machine},
    route_access{"delete_machine", wr, no_machine, target_kind::machine},
    route_access{"post_machine_assign_session", wr, no_machine, target_kind::none},
    route_access{"post_machine_release_session", wr, no_machine, target_kind::none},
    route_access{"post_machine_heartbeat", wr, machine, target_kind::machine},
    // operations
    route_access{"get_metrics", rd, no_machine, target_kind::none},
    route_access{"get_admin_log_level", adm, no_machine, target_kind::none},
    route_access{"put_admin_log_level", adm, no_machine, target_kind::none},
    route_access{"get_incidents", rd, no_machine, target_kind::none},
    route_access{"post_incident_mass_stall_clear", adm, no_machine, target_kind::none},
    // event streams
    route_access{"get_events_websocket", rd, machine, target_kind::none},
    route_access{"get_events_stream", rd, machine, target_kind::none},
    route_access{"post_events_ticket", rd, machine, target_kind::none},
    // keys
    route_access{"post_key", adm, no_machine, target_kind::none},
    route_access{"list_keys", adm, no_machine, target_kind::none},
    route_access{"post_key_rotate", adm, no_machine, target_kind::none},
    route_access{"delete_key", adm, no_machine, target_kind::none},
};

core::error forbidden(std::string message) {
  return core::make_error(core::errc::forbidden, std::move(message));
}

}  // namespace

void apply_access_table(http::router& r) {
  for (const auto& rp : r.routes()) {
    http::route& rt = *rp;
    const route_access* found = nullptr;
    for (const auto& a : table) {
      if (a.name == rt.name) found = &a;
    }
    if (found == nullptr) {
      throw std::logic_error("route " + rt.name + " (" + rt.pattern +
                             ") is missing from the access table");
    }
    rt.need = found->need;
    rt.machine_ok = found->machine_ok;
    rt.target = found->target;
    rt.authenticated = found->need != access_level::public_;
  }
}

boost::asio::awaitable<std::optional<core::error>> check_target(context& ctx) {
  const auto& who = ctx.who;
  const auto kind = ctx.route.target;
  if (!who.restricted() || kind == target_kind::none || ctx.params.empty()) co_return std::nullopt;
  const std::string id(ctx.param(0));
  switch (kind) {
    case target_kind::none:
      break;
    case target_kind::project:
      if (auto d = core::project_denial(who, id)) co_return forbidden(*d);
      break;
    case target_kind::machine:
      if (ctx.route.need != access_level::read) {
        if (auto d = core::machine_write_denial(who, id)) co_return forbidden(*d);
      }
      break;
    case target_kind::session: {
      auto s = co_await storage::read(ctx.svc.store,
                                      [&id](storage::read_view& v) { return v.get_session(id); });
      if (s) {
        if (auto d = core::session_denial(who, *s)) co_return forbidden(*d);
      }
      break;
    }
    case target_kind::task: {
      struct found {
        std::optional<core::task> t;
        std::optional<core::session> s;
      };
      auto f = co_await storage::read(ctx.svc.store, [&id](storage::read_view& v) {
        found out;
        out.t = v.get_task(id);
        if (out.t) out.s = v.get_session(out.t->session_id);
        return out;
      });
      if (f.t) {
        if (auto d = core::project_denial(who, f.t->project_id)) co_return forbidden(*d);
        if (f.s) {
          if (auto d = core::session_denial(who, *f.s)) co_return forbidden(*d);
        } else if (who.machine_bound()) {
          co_return forbidden("Task " + id + " belongs to no session on machine " + who.machine_id);
        }
      }
      break;
    }
  }
  co_return std::nullopt;
}

bool allow_project(context& ctx, std::string_view project_id) {
  if (auto d = core::project_denial(ctx.who, project_id)) {
    ctx.fail(forbidden(*d));
    return false;
  }
  return true;
}

bool allow_session(context& ctx, const core::session& s) {
  if (auto d = core::session_denial(ctx.who, s)) {
    ctx.fail(forbidden(*d));
    return false;
  }
  return true;
}

bool allow_machine_write(context& ctx, std::string_view machine_id) {
  if (auto d = core::machine_write_denial(ctx.who, machine_id)) {
    ctx.fail(forbidden(*d));
    return false;
  }
  return true;
}

boost::asio::awaitable<bool> allow_session_id(context& ctx, const std::string& session_id) {
  if (!ctx.who.restricted()) co_return true;
  auto s = co_await storage::read(
      ctx.svc.store, [&session_id](storage::read_view& v) { return v.get_session(session_id); });
  if (!s) co_return true;
  co_return allow_session(ctx, *s);
}

}  // namespace statetrack::api
