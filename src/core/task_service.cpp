// Task rules from the contract (reference-api.md §4.7, §6.2). The action endpoints check the
// parent session before changing anything and update task and session in one transaction
// (the Reference's "task changed, then 404" bug of §13 item 19 is fixed).
#include "core/task_service.hpp"

#include <boost/json/object.hpp>

#include "core/events.hpp"
#include "core/metadata.hpp"
#include "core/session_service.hpp"

namespace statetrack::core {

namespace json = boost::json;
using storage::read_view;
using storage::write_txn;

namespace {

error duplicate_entry(std::string_view field, std::string_view value) {
  error e = make_error(errc::conflict, "Duplicate entry");
  json::object key;
  key[field] = value;
  e.details = json::object{{"duplicateKey", std::move(key)}};
  return e;
}

// The parent session, which the action endpoints read before they change anything.
result<session> parent_session(write_txn& tx, const task& t) {
  auto s = tx.get_session(t.session_id);
  if (!s) return session_not_found(t.session_id);
  return std::move(*s);
}

// Fencing for task changes that carry the session's epoch: an agent that lost its session to
// a recovery elsewhere is told to stop and changes nothing.
std::optional<error> check_task_epoch(write_txn& tx, const task& t,
                                      const std::optional<std::int64_t>& epoch) {
  if (!epoch) return std::nullopt;
  auto s = tx.get_session(t.session_id);
  if (!s) return session_not_found(t.session_id);
  if (s->epoch != *epoch) return stale_epoch(*s, *epoch);
  return std::nullopt;
}

// complete/fail: the session's current task is removed (key absent) if it is this task.
void release_current_task(write_txn& tx, session& s, std::string_view task_id, timestamp now) {
  if (!s.current_task_id || *s.current_task_id != task_id) return;
  s.current_task_id.reset();
  s.updated_at = now;
  tx.update_session(s);
  tx.append_event(session_event("session.updated", s, now));
}

}  // namespace

error task_not_found(std::string_view id) {
  return make_error(errc::not_found, "Task with ID " + std::string(id) + " not found");
}

bool task_transition_allowed(task_status from, task_status to) {
  using ts = task_status;
  switch (from) {
    case ts::pending:
      return to == ts::in_progress || to == ts::blocked || to == ts::completed;
    case ts::in_progress:
      return to == ts::pending || to == ts::blocked || to == ts::completed || to == ts::failed;
    case ts::blocked:
      return to == ts::pending || to == ts::in_progress;
    case ts::completed:
      return false;
    case ts::failed:
      return to == ts::pending;
  }
  return false;
}

std::optional<std::string> start_refusal(task_status from) {
  if (from == task_status::pending) return std::nullopt;
  return "Cannot start task in " + std::string(to_string(from)) + " state. Task must be pending.";
}

std::optional<std::string> complete_refusal(task_status from) {
  if (from == task_status::completed) return std::string("Task is already completed");
  if (from == task_status::failed) return std::string("Cannot complete a failed task");
  return std::nullopt;
}

std::optional<std::string> fail_refusal(task_status from) {
  if (from == task_status::completed) return std::string("Cannot fail a completed task");
  if (from == task_status::failed) return std::string("Task is already failed");
  return std::nullopt;
}

std::int64_t completion_percentage(std::int64_t completed, std::int64_t total) {
  if (total <= 0) return 0;
  // floor(100c/t + 1/2) = floor((200c + t) / 2t): exact, halves go up.
  return (200 * completed + total) / (2 * total);
}

// POST /tasks — session 404 first (even for ""), then the storage-level empty-string checks.
boost::asio::awaitable<result<task>> task_service::create(create_task_input in) {
  auto fn = [&](write_txn& tx) -> result<task> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto parent = tx.get_session(in.session_id);
    if (!parent) return session_not_found(in.session_id);
    if (in.epoch && *in.epoch != parent->epoch) return stale_epoch(*parent, *in.epoch);
    std::vector<std::string> problems;
    if (in.project_id.empty()) problems.emplace_back("project_id should not be empty");
    if (in.task_name.empty()) problems.emplace_back("task_name should not be empty");
    if (!problems.empty()) return validation_error(std::move(problems));
    task t;
    t.oid = new_object_id(now);
    t.task_id = new_uuid_v4();
    t.session_id = in.session_id;
    t.project_id = in.project_id;
    t.github_issue_id = in.github_issue_id;
    t.task_name = in.task_name;
    t.status = task_status::pending;
    t.metadata = in.metadata;
    t.created_at = t.updated_at = now;
    if (!tx.insert_task(t)) return duplicate_entry("task_id", t.task_id);
    tx.append_event(task_event("task.created", t, now));
    return t;
  };
  // The parent session is read first: it is fetched and locked with the batch.
  co_return co_await storage::write(store_, std::move(fn), in.session_id);
}

boost::asio::awaitable<result<task>> task_service::get(std::string id) {
  auto fn = [&](read_view& v) -> result<task> {
    auto t = v.get_task(id);
    if (!t) return task_not_found(id);
    return std::move(*t);
  };
  co_return co_await storage::read(store_, std::move(fn));
}

boost::asio::awaitable<std::vector<task>> task_service::list(task_list_query q) {
  storage::task_filter f;
  f.session_id = std::move(q.session_id);
  f.status = q.status;
  f.project_id = std::move(q.project_id);
  f.project_in = std::move(q.projects_in);
  f.limit = q.limit;
  f.offset = q.offset;
  auto fn = [&f](read_view& v) { return v.list_tasks(f); };
  co_return co_await storage::read(store_, std::move(fn));
}

// PUT /tasks/:id — the transition table; the session's current_task_id is not touched.
boost::asio::awaitable<result<task>> task_service::update(std::string id, update_task_input in) {
  auto fn = [&](write_txn& tx) -> result<task> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_task(id);
    if (!found) return task_not_found(id);
    task t = std::move(*found);
    if (auto err = check_task_epoch(tx, t, in.epoch)) return *err;
    if (in.status) {
      const task_status to = *in.status;
      if (!task_transition_allowed(t.status, to)) {
        return make_error(errc::bad_request, "Invalid status transition from " +
                                                 std::string(to_string(t.status)) + " to " +
                                                 std::string(to_string(to)));
      }
      if (t.status == task_status::pending && to == task_status::in_progress) t.started_at = now;
      if (to == task_status::completed || to == task_status::failed) t.completed_at = now;
      t.status = to;
    }
    if (in.clear_github_issue_id) t.github_issue_id.reset();
    if (in.github_issue_id) t.github_issue_id = in.github_issue_id;
    if (in.clear_error_message) t.error_message.reset();
    if (in.error_message) t.error_message = in.error_message;
    if (in.metadata) t.metadata = merge_metadata(t.metadata, *in.metadata);
    t.updated_at = now;
    if (!tx.update_task(t)) return task_not_found(id);
    tx.append_event(task_event("task.updated", t, now));
    return t;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// DELETE /tasks/:id — completed from any status; the session's current task stays.
boost::asio::awaitable<result<task>> task_service::soft_delete(std::string id) {
  auto fn = [&](write_txn& tx) -> result<task> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_task(id);
    if (!found) return task_not_found(id);
    task t = std::move(*found);
    t.status = task_status::completed;
    t.completed_at = now;
    t.updated_at = now;
    if (!tx.update_task(t)) return task_not_found(id);
    tx.append_event(task_event("task.completed", t, now));
    return t;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// POST /tasks/:id/start — task 404, status 400, session 404, then task and session together.
boost::asio::awaitable<result<task>> task_service::start(std::string id,
                                                         std::optional<std::int64_t> epoch) {
  auto fn = [&](write_txn& tx) -> result<task> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_task(id);
    if (!found) return task_not_found(id);
    task t = std::move(*found);
    if (auto err = check_task_epoch(tx, t, epoch)) return *err;
    if (auto why = start_refusal(t.status)) return make_error(errc::bad_request, std::move(*why));
    auto parent = parent_session(tx, t);
    if (!parent) return parent.error();
    t.status = task_status::in_progress;
    t.started_at = now;
    t.updated_at = now;
    if (!tx.update_task(t)) return task_not_found(id);
    tx.append_event(task_event("task.started", t, now));
    session& s = *parent;
    s.current_task_id = t.task_id;
    s.updated_at = now;
    tx.update_session(s);
    tx.append_event(session_event("session.updated", s, now));
    return t;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// POST /tasks/:id/complete
boost::asio::awaitable<result<task>> task_service::complete(std::string id,
                                                            std::optional<std::int64_t> epoch) {
  auto fn = [&](write_txn& tx) -> result<task> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_task(id);
    if (!found) return task_not_found(id);
    task t = std::move(*found);
    if (auto err = check_task_epoch(tx, t, epoch)) return *err;
    if (auto why = complete_refusal(t.status)) {
      return make_error(errc::bad_request, std::move(*why));
    }
    auto parent = parent_session(tx, t);
    if (!parent) return parent.error();
    t.status = task_status::completed;
    t.completed_at = now;
    t.updated_at = now;
    if (!tx.update_task(t)) return task_not_found(id);
    tx.append_event(task_event("task.completed", t, now));
    release_current_task(tx, *parent, t.task_id, now);
    return t;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// POST /tasks/:id/fail
boost::asio::awaitable<result<task>> task_service::fail(std::string id, std::string error_message,
                                                        std::optional<std::int64_t> epoch) {
  auto fn = [&](write_txn& tx) -> result<task> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_task(id);
    if (!found) return task_not_found(id);
    task t = std::move(*found);
    if (auto err = check_task_epoch(tx, t, epoch)) return *err;
    if (auto why = fail_refusal(t.status)) return make_error(errc::bad_request, std::move(*why));
    auto parent = parent_session(tx, t);
    if (!parent) return parent.error();
    t.status = task_status::failed;
    t.completed_at = now;
    t.error_message = error_message;
    t.updated_at = now;
    if (!tx.update_task(t)) return task_not_found(id);
    tx.append_event(task_event("task.failed", t, now));
    release_current_task(tx, *parent, t.task_id, now);
    return t;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// GET /sessions/:id/tasks — one snapshot: the session and all its tasks, newest first.
boost::asio::awaitable<result<std::vector<task>>> task_service::of_session(std::string session_id) {
  auto fn = [&](read_view& v) -> result<std::vector<task>> {
    if (!v.get_session(session_id)) return session_not_found(session_id);
    storage::task_filter f;
    f.session_id = session_id;
    return v.list_tasks(f);
  };
  co_return co_await storage::read(store_, std::move(fn));
}

}  // namespace statetrack::core
