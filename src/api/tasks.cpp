// Task routes (contract §4.7) and the session's task progress (§4.7.9, tagged `sessions`):
// parse and validate, call the task service, render.
#include <limits>

#include <boost/json/serialize.hpp>

#include "api/access.hpp"
#include "api/context.hpp"
#include "api/request.hpp"
#include "api/routes.hpp"
#include "api/schemas.hpp"
#include "api/services.hpp"
#include "core/documents.hpp"
#include "core/task_service.hpp"
#include "http/router.hpp"

namespace statetrack::api {

namespace {

namespace json = boost::json;
using boost::asio::awaitable;
using core::task;
using core::task_status;
using util::json_writer;

// The optional fencing epoch of a validated body.
std::optional<std::int64_t> epoch_of(const json::object& b) {
  if (auto n = get_number(b, "epoch")) return static_cast<std::int64_t>(*n);
  return std::nullopt;
}

// Order of the groups in GET /sessions/:id/tasks (contract §4.7.9).
constexpr task_status progress_groups[] = {task_status::pending, task_status::in_progress,
                                           task_status::completed, task_status::failed,
                                           task_status::blocked};

std::string render_list(const std::vector<task>& list) {
  std::string out;
  out.reserve(64 + list.size() * 420);
  json_writer w(out);
  w.begin_array();
  for (const auto& t : list)
    core::write_task(w, t);
  w.end_array();
  return out;
}

// POST /tasks -> 201 task | 400 | 404 session
awaitable<void> post_task(context& ctx) {
  auto body = read_body(ctx, schemas::create_task);
  if (!body) co_return ctx.fail(body.error());
  const auto& b = *body;
  core::create_task_input in;
  in.session_id = get_string(b, "session_id").value_or("");
  in.project_id = get_string(b, "project_id").value_or("");
  in.task_name = get_string(b, "task_name").value_or("");
  in.github_issue_id = get_string(b, "github_issue_id");
  if (const auto* m = get_object(b, "metadata")) in.metadata = json::serialize(*m);
  in.epoch = epoch_of(b);
  if (!allow_project(ctx, in.project_id)) co_return;
  if (!(co_await allow_session_id(ctx, in.session_id))) co_return;
  auto r = co_await ctx.svc.tasks.create(std::move(in));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::task_json(*r));
}

// GET /tasks -> 200 task[] (created_at descending, paginated) | 400
awaitable<void> list_tasks(context& ctx) {
  auto q = read_query(ctx, schemas::list_tasks);
  if (!q) co_return ctx.fail(q.error());
  core::task_list_query tq;
  tq.session_id = get_string(*q, "session_id");
  if (auto s = get_string(*q, "status")) tq.status = core::parse_task_status(*s);
  tq.project_id = get_string(*q, "project_id");
  // `limit`/`offset` are validated integers (a fraction is a 400, as for sessions).
  if (auto n = get_number(*q, "limit")) tq.limit = static_cast<std::int64_t>(*n);
  if (auto n = get_number(*q, "offset")) tq.offset = static_cast<std::int64_t>(*n);
  tq.projects_in = ctx.who.projects;
  auto list = co_await ctx.svc.tasks.list(std::move(tq));
  ctx.reply(render_list(list));
}

// GET /tasks/:id -> 200 task | 404
awaitable<void> get_task(context& ctx) {
  auto r = co_await ctx.svc.tasks.get(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::task_json(*r));
}

// PUT /tasks/:id -> 200 task | 400 schema, invalid transition | 404
awaitable<void> put_task(context& ctx) {
  auto body = read_body(ctx, schemas::update_task);
  if (!body) co_return ctx.fail(body.error());
  const auto& b = *body;
  core::update_task_input in;
  if (auto s = get_string(b, "status")) in.status = core::parse_task_status(*s);
  in.github_issue_id = get_string(b, "github_issue_id");
  in.clear_github_issue_id = is_null(b, "github_issue_id");
  in.error_message = get_string(b, "error_message");
  in.clear_error_message = is_null(b, "error_message");
  // `metadata: null` is "no change" (contract §1.6, Recommended).
  if (const auto* m = get_object(b, "metadata")) in.metadata = *m;
  in.epoch = epoch_of(b);
  auto r = co_await ctx.svc.tasks.update(std::string(ctx.param(0)), std::move(in));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::task_json(*r));
}

// DELETE /tasks/:id -> 204 | 404
awaitable<void> delete_task(context& ctx) {
  auto r = co_await ctx.svc.tasks.soft_delete(std::string(ctx.param(0)));
  if (!r) co_return ctx.fail(r.error());
  ctx.no_content();
}

// POST /tasks/:id/start -> 200 task | 400 not pending | 404 task, session | 409 stale_epoch
awaitable<void> post_task_start(context& ctx) {
  auto epoch = lenient_int_field(ctx, "epoch", 1, std::numeric_limits<std::int64_t>::max());
  if (!epoch) co_return ctx.fail(epoch.error());
  auto r = co_await ctx.svc.tasks.start(std::string(ctx.param(0)), *epoch);
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::task_json(*r));
}

// POST /tasks/:id/complete -> 200 task | 400 completed, failed | 404 task, session | 409
awaitable<void> post_task_complete(context& ctx) {
  auto epoch = lenient_int_field(ctx, "epoch", 1, std::numeric_limits<std::int64_t>::max());
  if (!epoch) co_return ctx.fail(epoch.error());
  auto r = co_await ctx.svc.tasks.complete(std::string(ctx.param(0)), *epoch);
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::task_json(*r));
}

// POST /tasks/:id/fail -> 200 task | 400 schema, completed, failed | 404 task, session
awaitable<void> post_task_fail(context& ctx) {
  auto body = read_body(ctx, schemas::fail_task);
  if (!body) co_return ctx.fail(body.error());
  auto r = co_await ctx.svc.tasks.fail(
      std::string(ctx.param(0)), get_string(*body, "error_message").value_or(""), epoch_of(*body));
  if (!r) co_return ctx.fail(r.error());
  ctx.reply(core::task_json(*r));
}

// GET /sessions/:id/tasks -> 200 {session_id, tasks{<status>: task[]}, stats{...}} | 404
awaitable<void> get_session_tasks(context& ctx) {
  std::string id(ctx.param(0));
  auto r = co_await ctx.svc.tasks.of_session(id);
  if (!r) co_return ctx.fail(r.error());
  const auto& list = *r;
  std::int64_t counts[std::size(progress_groups)] = {};
  std::string out;
  out.reserve(256 + list.size() * 420);
  json_writer w(out);
  w.begin_object();
  w.field("session_id", id);
  w.key("tasks").begin_object();
  for (std::size_t g = 0; g < std::size(progress_groups); ++g) {
    w.key(core::to_string(progress_groups[g])).begin_array();
    for (const auto& t : list) {
      if (t.status == progress_groups[g]) {
        core::write_task(w, t);
        ++counts[g];
      }
    }
    w.end_array();
  }
  w.end_object();
  const auto total = static_cast<std::int64_t>(list.size());
  w.key("stats").begin_object();
  w.field("total", total);
  std::int64_t completed = 0;
  for (std::size_t g = 0; g < std::size(progress_groups); ++g) {
    w.field(core::to_string(progress_groups[g]), counts[g]);
    if (progress_groups[g] == task_status::completed) completed = counts[g];
  }
  w.field("completion_percentage", core::completion_percentage(completed, total));
  w.end_object();
  w.end_object();
  ctx.reply(std::move(out));
}

}  // namespace

void register_task_routes(http::router& r) {
  using http::method;
  const route_adder add{r, ""};
  add(method::post, "/tasks", "post_task", post_task, 201,
      {"Create a task in an existing session", "tasks", "CreateTaskRequest", "", "Task"});
  add(method::get, "/tasks", "list_tasks", list_tasks, 200,
      {"List and filter tasks (newest first)", "tasks", "", "ListTasksQuery", "Task", true});
  add(method::get, "/tasks/:id", "get_task", get_task, 200,
      {"Get a task", "tasks", "", "", "Task"});
  add(method::put, "/tasks/:id", "put_task", put_task, 200,
      {"Update a task (transition table applies)", "tasks", "UpdateTaskRequest", "", "Task"});
  add(method::del, "/tasks/:id", "delete_task", delete_task, 204,
      {"Complete a task (soft delete)", "tasks", "", "", ""});
  add(method::post, "/tasks/:id/start", "post_task_start", post_task_start, 200,
      {"Start a pending task and make it the session's current task", "tasks", "", "", "Task"});
  add(method::post, "/tasks/:id/complete", "post_task_complete", post_task_complete, 200,
      {"Complete a task", "tasks", "", "", "Task"});
  add(method::post, "/tasks/:id/fail", "post_task_fail", post_task_fail, 200,
      {"Fail a task with an error message", "tasks", "FailTaskRequest", "", "Task"});
  add(method::get, "/sessions/:id/tasks", "get_session_tasks", get_session_tasks, 200,
      {"Tasks of a session grouped by status, with progress", "sessions", "", "", "TaskProgress"});
}

}  // namespace statetrack::api
