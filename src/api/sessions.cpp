// Session routes (contract §4.2–§4.6): parse and validate, call the session service, render.
#include <algorithm>
#include <cmath>
#include <limits>

#include <boost/json/serialize.hpp>

#include "api/access.hpp"
#include "api/context.hpp"
#include "api/request.hpp"
#include "api/routes.hpp"
#include "api/schemas.hpp"
#include "api/services.hpp"
#include "core/documents.hpp"
#include "core/metadata.hpp"
#include "core/session_insights.hpp"
#include "core/session_service.hpp"
#include "http/router.hpp"
#include "util/json_writer.hpp"

namespace statetrack::api {

namespace {

namespace json = boost::json;
using boost::asio::awaitable;
using core::session;
using core::session_status;
using util::json_writer;

std::string render_list(const std::vector<session>& list) {
  std::string out;
  out.reserve(64 + list.size() * 560);
  json_writer w(out);
  w.begin_array();
  for (const auto& s : list)
    core::write_session(w, s);
  w.end_array();
  return out;
}

std::string metadata_text(const json::object* o) {
  return o != nullptr ? json::serialize(*o) : std::string("{}");
}

// Common keys of the stale/active items (contract §4.3.1).
void write_liveness_item(json_writer& w, const session& s, core::timestamp now) {
  w.begin_object();
  w.field("session_id", s.session_id);
  w.field("project_id", s.project_id);
  w.field("machine_id", s.machine_id);
  if (s.docker_slot) w.field("docker_slot", *s.docker_slot);
  w.field("status", core::to_string(s.status));
  w.field_iso("last_heartbeat", s.last_heartbeat.ms);
  if (s.current_task_id) w.field("current_task_id", *s.current_task_id);
  w.field("time_since_heartbeat", core::floor_div_ms(now - s.last_heartbeat, 1000));
  w.field_iso("started_at", s.started_at.ms);
  w.end_object();
}

// The contract's `threshold` query: Number(); missing, zero, empty or NaN means 300 seconds.
double threshold_of(const context& ctx) {
  auto v = query_value(ctx, "threshold");
  if (!v) return 300;
  double n = js_number(*v);
  if (std::isnan(n) || n == 0) return 300;
  return n;
}

core::session_list_query list_query_of(const json::object& q) {
  core::session_list_query out;
  if (auto s = get_string(q, "status")) out.status = core::parse_session_status(*s);
  out.project_id = get_string(q, "project_id");
  out.machine_id = get_string(q, "machine_id");
  if (auto n = get_number(q, "limit")) out.limit = static_cast<std::int64_t>(*n);
  if (auto n = get_number(q, "offset")) out.offset = static_cast<std::int64_t>(*n);
  return out;
}

// POST /sessions -> 201 session | 400
awaitable<void> post_session(context& ctx) {
  auto body = read_body(ctx, schemas::create_session);
  if (!body) co_return ctx.fail(body.error());
  core::create_session_input in;
  in.project_id = get_string(*body, "project_id").value_or("");
  in.machine_id = get_string(*body, "machine_id").value_or("");
  in.docker_slot = get_number(*body, "docker_slot");
  in.metadata = metadata_text(get_object(*body, "metadata"));
  if (auto n = get_number(*body, "heartbeat_timeout_s"))
    in.heartbeat_timeout_s = static_cast<int>(*n);
  if (auto n = get_number(*body, "input_timeout_s")) in.input_timeout_s = static_cast<int>(*n);
  if (!allow_project(ctx, in.project_id)) co_return;
  if (ctx.who.machine_bound() && in.machine_id != ctx.who.machine_id) {
    co_return ctx.fail(
        core::make_error(core::errc::forbidden,
                         "This key may only create sessions on machine " + ctx.who.machine_id));
  }
  auto r = co_await ctx.svc.sessions.create(std::move(in));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::session_json(*r));
}

// GET /sessions -> 200 session[] | 400
awaitable<void> list_sessions(context& ctx) {
  auto q = read_query(ctx, schemas::list_sessions);
  if (!q) co_return ctx.fail(q.error());
  auto lq = list_query_of(*q);
  lq.projects_in = ctx.who.projects;
  auto list = co_await ctx.svc.sessions.list(std::move(lq));
  ctx.reply(render_list(list));
}

// GET /sessions/:id -> 200 session | 404
awaitable<void> get_session(context& ctx) {
  auto r = co_await ctx.svc.sessions.get(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::session_json(*r));
}

// PUT /sessions/:id -> 200 session | 400 | 404
awaitable<void> put_session(context& ctx) {
  auto body = read_body(ctx, schemas::update_session);
  if (!body) co_return ctx.fail(body.error());
  const auto& b = *body;
  core::update_session_input in;
  if (auto s = get_string(b, "status")) in.status = core::parse_session_status(*s);
  in.docker_slot = get_number(b, "docker_slot");
  in.clear_docker_slot = is_null(b, "docker_slot");
  in.current_task_id = get_string(b, "current_task_id");
  in.clear_current_task_id = is_null(b, "current_task_id");
  if (const auto* m = get_object(b, "metadata")) in.metadata = *m;
  if (auto s = get_string(b, "last_heartbeat")) in.last_heartbeat = core::parse_iso(*s);
  if (auto s = get_string(b, "completed_at")) in.completed_at = core::parse_iso(*s);
  if (auto n = get_number(b, "heartbeat_timeout_s")) in.heartbeat_timeout_s = static_cast<int>(*n);
  if (auto n = get_number(b, "input_timeout_s")) in.input_timeout_s = static_cast<int>(*n);
  in.clear_input_timeout_s = is_null(b, "input_timeout_s");
  auto r = co_await ctx.svc.sessions.update(std::string(ctx.param(0)), std::move(in));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::session_json(*r));
}

// DELETE /sessions/:id -> 204 | 404
awaitable<void> delete_session(context& ctx) {
  auto r = co_await ctx.svc.sessions.soft_delete(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  ctx.no_content();
}

// POST /sessions/:id/heartbeat -> 200 {session_id,status,last_heartbeat,message,...} | 400 |
// 404 | 409 stale_epoch. The body is ignored (contract) except two optional fields:
// `epoch` (fencing) and `extend_s` (a known long step: the deadline is at least this far).
awaitable<void> post_session_heartbeat(context& ctx) {
  core::heartbeat_input in;
  if (!ctx.req.body.empty()) {
    auto epoch = lenient_int_field(ctx, "epoch", 1, std::numeric_limits<std::int64_t>::max());
    if (!epoch) co_return ctx.fail(epoch.error());
    auto extend = lenient_int_field(ctx, "extend_s", 1, 604800);
    if (!extend) co_return ctx.fail(extend.error());
    in.epoch = *epoch;
    if (*extend) in.extend_s = static_cast<int>(**extend);
  }
  auto r = co_await ctx.svc.sessions.heartbeat(std::string(ctx.param(0)), in);
  if (!r) co_return ctx.fail(r.error());
  const session& s = r->s;
  const std::int64_t interval_s = std::max(1, s.heartbeat_timeout_s / 3);
  std::string out;
  out.reserve(256);
  json_writer w(out);
  w.begin_object();
  w.field("session_id", s.session_id);
  w.field("status", core::to_string(s.status));
  w.field_iso("last_heartbeat", s.last_heartbeat.ms);
  w.field("message", r->reactivated ? "Heartbeat updated and session reactivated from stalled state"
                                    : "Heartbeat updated successfully");
  w.field_iso("deadline_at", s.deadline_at.ms);
  w.field("directive", core::to_string(s.dir));
  if (s.directive_reason) w.field("directive_reason", *s.directive_reason);
  w.field("epoch", s.epoch);
  w.field("heartbeat_interval_s", interval_s);
  w.field_iso("next_heartbeat_due", s.last_heartbeat.ms + interval_s * 1000);
  w.end_object();
  ctx.reply(std::move(out));
}

// POST /sessions/:id/directive -> 200 session | 400 | 404
awaitable<void> post_session_directive(context& ctx) {
  auto body = read_body(ctx, schemas::set_directive);
  if (!body) co_return ctx.fail(body.error());
  auto d = core::parse_directive(get_string(*body, "directive").value_or(""));
  auto r = co_await ctx.svc.sessions.set_directive(std::string(ctx.param(0)),
                                                   d.value_or(core::directive::continue_),
                                                   get_string(*body, "reason"));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::session_json(*r));
}

// GET /sessions/:id/events?after=&limit= -> 200 {session_id, events[], next_after} | 400 | 404
awaitable<void> get_session_events(context& ctx) {
  std::int64_t after = 0;
  std::int64_t limit = 100;
  std::vector<std::string> problems;
  if (auto v = query_value(ctx, "after")) {
    double n = js_number(*v);
    if (!std::isfinite(n) || std::floor(n) != n || n < 0 || n > 9e15) {
      problems.emplace_back("after must be an integer not less than 0");
    } else {
      after = static_cast<std::int64_t>(n);
    }
  }
  if (auto v = query_value(ctx, "limit")) {
    double n = js_number(*v);
    if (!std::isfinite(n) || std::floor(n) != n || n < 1 || n > 1000) {
      problems.emplace_back("limit must be an integer between 1 and 1000");
    } else {
      limit = static_cast<std::int64_t>(n);
    }
  }
  if (!problems.empty()) co_return ctx.fail(core::validation_error(std::move(problems)));
  std::string id(ctx.param(0));
  auto r = co_await ctx.svc.sessions.events_of(id, after, limit);
  if (!r) co_return ctx.fail(r.error());
  std::string out;
  util::json_writer w(out);
  w.begin_object();
  w.field("session_id", id);
  w.key("events").begin_array();
  std::int64_t next = after;
  for (const auto& e : *r) {
    w.begin_object();
    w.field("seq", e.seq);
    w.field("type", e.type);
    w.field_iso("occurred_at", e.occurred_at.ms);
    if (!e.project_id.empty()) w.field("project_id", e.project_id);
    if (!e.session_id.empty()) w.field("session_id", e.session_id);
    if (!e.task_id.empty()) w.field("task_id", e.task_id);
    if (!e.machine_id.empty()) w.field("machine_id", e.machine_id);
    w.field_raw("data", e.data);
    w.end_object();
    next = e.seq;
  }
  w.end_array();
  w.field("next_after", next);
  w.end_object();
  ctx.reply(std::move(out));
}

// GET /sessions/stale -> 200 item[]
awaitable<void> get_sessions_stale(context& ctx) {
  auto list = co_await ctx.svc.sessions.stale(threshold_of(ctx), ctx.now, ctx.who.projects);
  std::string out;
  json_writer w(out);
  w.begin_array();
  for (const auto& s : list)
    write_liveness_item(w, s, ctx.now);
  w.end_array();
  ctx.reply(std::move(out));
}

// GET /sessions/active -> 200 item[]
awaitable<void> get_sessions_active(context& ctx) {
  auto list = co_await ctx.svc.sessions.active(query_value(ctx, "project_id"),
                                               query_value(ctx, "machine_id"), ctx.who.projects);
  std::string out;
  json_writer w(out);
  w.begin_array();
  for (const auto& s : list)
    write_liveness_item(w, s, ctx.now);
  w.end_array();
  ctx.reply(std::move(out));
}

// GET /sessions/by-project/:projectId -> 200 {project_id, sessions{...}, stats{...}}
awaitable<void> get_sessions_by_project(context& ctx) {
  std::string project(ctx.param(0));
  auto list = co_await ctx.svc.sessions.by_project(project);
  static constexpr session_status groups[] = {session_status::active, session_status::paused,
                                              session_status::stalled, session_status::completed,
                                              session_status::failed};
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("project_id", project);
  w.key("sessions").begin_object();
  std::int64_t counts[5] = {0, 0, 0, 0, 0};
  for (std::size_t g = 0; g < 5; ++g) {
    w.key(core::to_string(groups[g])).begin_array();
    for (const auto& s : list) {
      if (s.status == groups[g]) {
        core::write_session(w, s);
        ++counts[g];
      }
    }
    w.end_array();
  }
  w.end_object();
  w.key("stats").begin_object();
  // Archived sessions count in `total` but in no group (contract §4.3.3, kept).
  w.field("total", static_cast<std::int64_t>(list.size()));
  for (std::size_t g = 0; g < 5; ++g)
    w.field(core::to_string(groups[g]), counts[g]);
  w.end_object();
  w.end_object();
  ctx.reply(std::move(out));
}

// GET /sessions/by-machine/:machineId -> 200 session[]
awaitable<void> get_sessions_by_machine(context& ctx) {
  auto list = co_await ctx.svc.sessions.by_machine(std::string(ctx.param(0)), ctx.who.projects);
  ctx.reply(render_list(list));
}

// GET /sessions/:id/health -> 200 health | 404
awaitable<void> get_session_health(context& ctx) {
  auto r = co_await ctx.svc.sessions.get(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  const session& s = *r;
  auto h = core::assess_health(s, ctx.now, threshold_of(ctx));
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("session_id", s.session_id);
  w.field("project_id", s.project_id);
  w.field("machine_id", s.machine_id);
  if (s.docker_slot) w.field("docker_slot", *s.docker_slot);
  w.field("status", core::to_string(s.status));
  w.field_iso("last_heartbeat", s.last_heartbeat.ms);
  if (s.current_task_id) w.field("current_task_id", *s.current_task_id);
  w.field("is_stale", h.is_stale);
  w.field("time_since_heartbeat", h.time_since_heartbeat_s);
  w.key("recommendations").begin_array();
  for (const auto& m : h.recommendations)
    w.value(m);
  w.end_array();
  w.field_iso("started_at", s.started_at.ms);
  if (s.completed_at) w.field_iso("completed_at", s.completed_at->ms);
  w.end_object();
  ctx.reply(std::move(out));
}

// GET /sessions/failed -> 200 session[] | 400
awaitable<void> get_sessions_failed(context& ctx) {
  auto q = read_query(ctx, schemas::failed_sessions);
  if (!q) co_return ctx.fail(q.error());
  auto fq = list_query_of(*q);
  fq.projects_in = ctx.who.projects;
  auto list = co_await ctx.svc.sessions.failed(std::move(fq));
  ctx.reply(render_list(list));
}

// GET /sessions/:id/failure-info -> 200 analysis | 400 not failed | 404
awaitable<void> get_session_failure_info(context& ctx) {
  auto r = co_await ctx.svc.sessions.failure_info(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  const session& s = r->s;
  auto a = core::analyse_failure(s, r->tasks, ctx.now);
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("session_id", s.session_id);
  w.field("project_id", s.project_id);
  w.field("machine_id", s.machine_id);
  if (s.docker_slot) w.field("docker_slot", *s.docker_slot);
  w.field("status", "failed");
  w.field("failure_reason", a.failure_reason);
  if (!a.error_details_json.empty()) w.field_raw("error_details", a.error_details_json);
  w.field_iso("failed_at", a.failed_at.ms);
  w.field_iso("last_heartbeat", s.last_heartbeat.ms);
  if (a.last_successful_task) {
    w.field("last_successful_task_id", a.last_successful_task->task_id);
    w.field("last_successful_task_name", a.last_successful_task->task_name);
  }
  if (s.current_task_id) w.field("current_task_id", *s.current_task_id);
  w.field_iso("started_at", s.started_at.ms);
  w.field("duration_minutes", a.duration_minutes);
  w.key("analysis").begin_object();
  w.field("is_very_stale", a.is_very_stale);
  w.field("has_stuck_tasks", a.has_stuck_tasks);
  w.field("stuck_task_count", a.stuck_task_count);
  w.field("minutes_since_heartbeat", a.minutes_since_heartbeat);
  w.key("recovery_recommendations").begin_array();
  for (const auto& m : a.recovery_recommendations)
    w.value(m);
  w.end_array();
  w.end_object();
  w.key("session");
  core::write_session(w, s);
  w.end_object();
  ctx.reply(std::move(out));
}

// POST /sessions/:id/mark-failed -> 200 session | 400 | 404
awaitable<void> post_session_mark_failed(context& ctx) {
  auto body = read_body(ctx, schemas::mark_failed);
  if (!body) co_return ctx.fail(body.error());
  std::optional<json::object> details;
  if (const auto* d = get_object(*body, "error_details")) details = *d;
  auto r = co_await ctx.svc.sessions.mark_failed(
      std::string(ctx.param(0)), get_string(*body, "reason").value_or(""), std::move(details));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::session_json(*r));
}

// POST /sessions/:id/mark-stalled -> 200 session | 400 | 404
awaitable<void> post_session_mark_stalled(context& ctx) {
  auto body = read_body(ctx, schemas::mark_stalled);
  if (!body) co_return ctx.fail(body.error());
  auto r = co_await ctx.svc.sessions.mark_stalled(std::string(ctx.param(0)),
                                                  get_string(*body, "reason").value_or(""));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::session_json(*r));
}

// POST /sessions/:id/archive -> 200 session | 400 | 404
awaitable<void> post_session_archive(context& ctx) {
  auto r = co_await ctx.svc.sessions.archive(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::session_json(*r));
}

// DELETE /sessions/:id/purge -> 200 {session_id,tasks_deleted,purged_at,purged} | 400 | 404
awaitable<void> delete_session_purge(context& ctx) {
  auto body = read_body(ctx, schemas::purge_session);
  if (!body) co_return ctx.fail(body.error());
  auto r = co_await ctx.svc.sessions.purge(std::string(ctx.param(0)),
                                           get_bool(*body, "confirm").value_or(false));
  if (!r) co_return ctx.fail(r.error());
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("session_id", r->session_id);
  w.field("tasks_deleted", r->tasks_deleted);
  w.field_iso("purged_at", r->purged_at.ms);
  w.field("purged", true);
  w.end_object();
  ctx.reply(std::move(out));
}

// POST /sessions/cleanup -> 200 summary | 400
awaitable<void> post_sessions_cleanup(context& ctx) {
  auto body = read_body(ctx, schemas::cleanup_sessions);
  if (!body) co_return ctx.fail(body.error());
  core::cleanup_input in;
  in.older_than_days = get_number(*body, "older_than_days").value_or(0);
  if (const auto* list = body->if_contains("statuses"); list != nullptr && list->is_array()) {
    for (const auto& v : list->as_array()) {
      if (auto st = core::parse_session_status(v.as_string())) in.statuses.push_back(*st);
    }
  }
  in.dry_run = get_bool(*body, "dry_run").value_or(false);
  in.archive = get_bool(*body, "archive").value_or(true);
  auto r = co_await ctx.svc.sessions.cleanup(std::move(in));
  if (!r) co_return ctx.fail(r.error());
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("sessions_affected", r->sessions_affected);
  w.field("tasks_deleted", r->tasks_deleted);
  w.key("breakdown_by_status").begin_object();
  for (const auto& [st, n] : r->breakdown)
    w.field(core::to_string(st), n);
  w.end_object();
  w.field("operation", r->operation);
  w.field("estimated_space_freed_bytes", 2048 * r->sessions_affected + 1024 * r->tasks_deleted);
  w.field_iso("completed_at", r->completed_at.ms);
  w.field("sessions_skipped", r->sessions_skipped);
  w.end_object();
  ctx.reply(std::move(out));
}

// GET /sessions/archived -> 200 session[] | 400 (limit/offset read one by one, §4.5.4)
awaitable<void> get_sessions_archived(context& ctx) {
  core::session_list_query q;
  q.project_id = query_value(ctx, "project_id");
  q.machine_id = query_value(ctx, "machine_id");
  std::vector<std::string> problems;
  if (auto v = query_value(ctx, "limit")) {
    double n = js_number(*v);
    if (!std::isfinite(n) || std::floor(n) != n || n < 1) {
      problems.emplace_back("limit must be an integer not less than 1");
    } else {
      q.limit = static_cast<std::int64_t>(std::min(n, 100.0));
    }
  }
  if (auto v = query_value(ctx, "offset")) {
    double n = js_number(*v);
    if (!std::isfinite(n) || std::floor(n) != n || n < 0 || n > 9e15) {
      problems.emplace_back("offset must be an integer not less than 0");
    } else {
      q.offset = static_cast<std::int64_t>(n);
    }
  }
  if (!problems.empty()) co_return ctx.fail(core::validation_error(std::move(problems)));
  q.projects_in = ctx.who.projects;
  auto list = co_await ctx.svc.sessions.archived(std::move(q));
  ctx.reply(render_list(list));
}

// GET /sessions/recoverable -> 200 item[] | 400
awaitable<void> get_sessions_recoverable(context& ctx) {
  auto q = read_query(ctx, schemas::recoverable_sessions);
  if (!q) co_return ctx.fail(q.error());
  core::recoverable_query rq;
  rq.project_id = get_string(*q, "project_id");
  rq.machine_id = get_string(*q, "machine_id");
  rq.max_age_minutes = get_number(*q, "max_age_minutes");
  rq.min_age_minutes = get_number(*q, "min_age_minutes");
  rq.projects_in = ctx.who.projects;
  auto list = co_await ctx.svc.sessions.recoverable(std::move(rq), ctx.now);
  std::string out;
  json_writer w(out);
  w.begin_array();
  for (const auto& s : list) {
    const std::int64_t attempts = core::recovery_attempts(s);
    w.begin_object();
    w.field("session_id", s.session_id);
    w.field("project_id", s.project_id);
    w.field("status", core::to_string(s.status));
    w.field("machine_id", s.machine_id);
    if (s.docker_slot) w.field("docker_slot", *s.docker_slot);
    if (s.current_task_id) w.field("current_task_id", *s.current_task_id);
    w.field("recovery_attempts", attempts);
    w.field_iso("last_heartbeat", s.last_heartbeat.ms);
    if (s.completed_at) w.field_iso("failed_at", s.completed_at->ms);
    w.field("minutes_since_heartbeat", core::floor_div_ms(ctx.now - s.last_heartbeat, 60000));
    const bool can = attempts < core::max_recovery_attempts;
    w.field("can_recover", can);
    if (!can) w.field("recovery_blocked_reason", "Maximum recovery attempts reached");
    w.end_object();
  }
  w.end_array();
  ctx.reply(std::move(out));
}

// POST /sessions/:id/prepare-recovery -> 200 checkpoint summary | 400 | 404
awaitable<void> post_session_prepare_recovery(context& ctx) {
  auto r = co_await ctx.svc.sessions.prepare_recovery(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  const session& s = r->before;
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("session_id", s.session_id);
  w.field("status", core::to_string(s.status));
  if (s.current_task_id) w.field("last_task_id", *s.current_task_id);
  w.field("machine_id", s.machine_id);
  if (s.docker_slot) w.field("docker_slot", *s.docker_slot);
  w.field("recovery_attempts", r->recovery_attempts);
  w.field_iso("recovery_checkpoint_at", r->checkpoint_at.ms);
  w.field_raw("metadata",
              s.metadata.empty() ? std::string_view("{}") : std::string_view(s.metadata));
  w.end_object();
  ctx.reply(std::move(out));
}

// POST /sessions/:id/recover -> 200 session | 400 | 404
awaitable<void> post_session_recover(context& ctx) {
  auto body = read_body(ctx, schemas::recover_session);
  if (!body) co_return ctx.fail(body.error());
  core::recover_input in;
  in.new_machine_id = get_string(*body, "new_machine_id");
  in.new_docker_slot = get_number(*body, "new_docker_slot");
  in.resume_from_task_id = get_string(*body, "resume_from_task_id");
  auto r = co_await ctx.svc.sessions.recover(std::string(ctx.param(0)), std::move(in));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::session_json(*r));
}

// GET /sessions/:id/recovery-history -> 200 history | 404
awaitable<void> get_session_recovery_history(context& ctx) {
  auto r = co_await ctx.svc.sessions.get(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  const session& s = *r;
  auto meta = core::parse_metadata(s.metadata);
  json::array history;
  std::optional<std::string> last_recovery_at;
  if (auto* rec = meta.if_contains("recovery"); rec != nullptr && rec->is_object()) {
    if (auto* h = rec->as_object().if_contains("recovery_history"); h != nullptr && h->is_array()) {
      history = h->as_array();
    }
    if (auto* l = rec->as_object().if_contains("last_recovery_at");
        l != nullptr && l->is_string()) {
      last_recovery_at = std::string(l->as_string());
    }
  }
  std::int64_t ok = 0;
  for (const auto& a : history) {
    if (a.is_object()) {
      if (auto* f = a.as_object().if_contains("success");
          f != nullptr && f->is_bool() && f->as_bool()) {
        ++ok;
      }
    }
  }
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("session_id", s.session_id);
  w.field("total_attempts", static_cast<std::int64_t>(history.size()));
  w.field("successful_attempts", ok);
  w.field("failed_attempts", static_cast<std::int64_t>(history.size()) - ok);
  w.field_raw("attempts", json::serialize(history));
  if (last_recovery_at) w.field("last_recovery_at", *last_recovery_at);
  w.field("current_status", core::to_string(s.status));
  w.end_object();
  ctx.reply(std::move(out));
}

}  // namespace

void register_session_routes(http::router& r) {
  using http::limit_class;
  using http::method;
  const route_adder add{r, "sessions"};
  add(method::post, "/sessions", "post_session", post_session, 201,
      {"Create a session", "", "CreateSessionRequest", "", "Session"});
  add(method::get, "/sessions", "list_sessions", list_sessions, 200,
      {"List and filter sessions (newest first)", "", "", "ListSessionsQuery", "Session", true});
  add(method::get, "/sessions/stale", "get_sessions_stale", get_sessions_stale, 200,
      {"Active or paused sessions without a recent heartbeat", "", "", "", "LivenessItem", true});
  add(method::get, "/sessions/active", "get_sessions_active", get_sessions_active, 200,
      {"Active sessions", "", "", "", "LivenessItem", true});
  add(method::get, "/sessions/failed", "get_sessions_failed", get_sessions_failed, 200,
      {"Failed sessions (latest failure first)", "", "", "FailedSessionsQuery", "Session", true});
  add(method::get, "/sessions/archived", "get_sessions_archived", get_sessions_archived, 200,
      {"Archived sessions", "", "", "", "Session", true});
  add(method::get, "/sessions/recoverable", "get_sessions_recoverable", get_sessions_recoverable,
      200, {"Recovery candidates", "", "", "RecoverableSessionsQuery", "RecoverableItem", true});
  add(method::post, "/sessions/cleanup", "post_sessions_cleanup", post_sessions_cleanup, 200,
      {"Archive or delete old terminal sessions", "", "CleanupSessionsRequest", "",
       "CleanupResult"});
  add(method::get, "/sessions/by-project/:projectId", "get_sessions_by_project",
      get_sessions_by_project, 200,
      {"Sessions of a project grouped by status", "", "", "", "ProjectSummary"});
  add(method::get, "/sessions/by-machine/:machineId", "get_sessions_by_machine",
      get_sessions_by_machine, 200, {"Sessions of a machine", "", "", "", "Session", true});
  add(method::get, "/sessions/:id", "get_session", get_session, 200,
      {"Get a session", "", "", "", "Session"});
  add(method::put, "/sessions/:id", "put_session", put_session, 200,
      {"Update a session", "", "UpdateSessionRequest", "", "Session"});
  add(method::del, "/sessions/:id", "delete_session", delete_session, 204,
      {"Complete a session (soft delete)", "", "", "", ""});
  add(method::post, "/sessions/:id/heartbeat", "post_session_heartbeat", post_session_heartbeat,
      200, {"Record a heartbeat", "", "", "", "HeartbeatResult"}, limit_class::heartbeat);
  add(method::get, "/sessions/:id/health", "get_session_health", get_session_health, 200,
      {"Health of one session with recommendations", "", "", "", "SessionHealth"});
  add(method::get, "/sessions/:id/failure-info", "get_session_failure_info",
      get_session_failure_info, 200,
      {"Failure analysis of a failed session", "", "", "", "FailureInfo"});
  add(method::post, "/sessions/:id/mark-failed", "post_session_mark_failed",
      post_session_mark_failed, 200,
      {"Mark a session failed", "", "MarkFailedRequest", "", "Session"});
  add(method::post, "/sessions/:id/mark-stalled", "post_session_mark_stalled",
      post_session_mark_stalled, 200,
      {"Mark a session stalled", "", "MarkStalledRequest", "", "Session"});
  add(method::post, "/sessions/:id/archive", "post_session_archive", post_session_archive, 200,
      {"Archive a terminal session", "", "", "", "Session"});
  add(method::del, "/sessions/:id/purge", "delete_session_purge", delete_session_purge, 200,
      {"Delete a terminal session and its tasks", "", "PurgeSessionRequest", "", "PurgeResult"});
  add(method::post, "/sessions/:id/prepare-recovery", "post_session_prepare_recovery",
      post_session_prepare_recovery, 200,
      {"Record a recovery checkpoint", "", "", "", "RecoveryCheckpoint"});
  add(method::post, "/sessions/:id/recover", "post_session_recover", post_session_recover, 200,
      {"Recover a session (optionally elsewhere)", "", "RecoverSessionRequest", "", "Session"});
  add(method::post, "/sessions/:id/directive", "post_session_directive", post_session_directive,
      200,
      {"Tell the agent to continue, pause or stop (in its next heartbeat reply)", "",
       "SetDirectiveRequest", "", "Session"});
  add(method::get, "/sessions/:id/events", "get_session_events", get_session_events, 200,
      {"The session's timeline of events (paged by seq)", "", "", "", "SessionEvents"});
  add(method::get, "/sessions/:id/recovery-history", "get_session_recovery_history",
      get_session_recovery_history, 200,
      {"Recovery attempts of a session", "", "", "", "RecoveryHistory"});
}

}  // namespace statetrack::api
