// Row mapping, the group-commit writer thread and the read connection pool.
#include "storage/sqlite/sqlite_store.hpp"

#include <chrono>
#include <filesystem>
#include <variant>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <sqlite3.h>

#include "core/access.hpp"
#include "core/error.hpp"
#include "obs/metrics.hpp"
#include "storage/job_error.hpp"
#include "storage/sqlite/schema.hpp"

namespace statetrack::storage::sqlite {

namespace asio = boost::asio;
using core::machine;
using core::session;
using core::storage_error;
using core::task;

namespace {

// ---------------------------------------------------------------------------- row mapping

constexpr const char* session_cols =
    "oid, session_id, project_id, machine_id, docker_slot, status, last_heartbeat, "
    "current_task_id, started_at, completed_at, metadata, created_at, updated_at, "
    "heartbeat_timeout_s, deadline_at, sweep_at, epoch, directive, directive_reason, "
    "input_timeout_s, awaiting_since, escalated_at";

session read_session(const statement& st) {
  session s;
  s.oid = st.col_text(0);
  s.session_id = st.col_text(1);
  s.project_id = st.col_text(2);
  s.machine_id = st.col_text(3);
  s.docker_slot = st.col_opt_double(4);
  s.status = core::parse_session_status(st.col_view(5)).value_or(core::session_status::active);
  s.last_heartbeat = {st.col_int(6)};
  s.current_task_id = st.col_opt_text(7);
  s.started_at = {st.col_int(8)};
  if (auto v = st.col_opt_int(9)) s.completed_at = core::timestamp{*v};
  s.metadata = st.col_text(10);
  s.created_at = {st.col_int(11)};
  s.updated_at = {st.col_int(12)};
  s.heartbeat_timeout_s = static_cast<int>(st.col_int(13));
  s.deadline_at = {st.col_int(14)};
  s.sweep_at = {st.col_int(15)};
  s.epoch = st.col_int(16);
  s.dir = core::parse_directive(st.col_view(17)).value_or(core::directive::continue_);
  s.directive_reason = st.col_opt_text(18);
  if (auto v = st.col_opt_int(19)) s.input_timeout_s = static_cast<int>(*v);
  if (auto v = st.col_opt_int(20)) s.awaiting_since = core::timestamp{*v};
  if (auto v = st.col_opt_int(21)) s.escalated_at = core::timestamp{*v};
  return s;
}

std::optional<std::int64_t> opt_ms(const std::optional<core::timestamp>& t) {
  if (!t) return std::nullopt;
  return t->ms;
}

// Binds the 22 session columns starting at index `first`, in session_cols order.
void bind_session(statement& st, const session& s, int first) {
  int i = first;
  st.bind(i++, s.oid)
      .bind(i++, s.session_id)
      .bind(i++, s.project_id)
      .bind(i++, s.machine_id)
      .bind(i++, s.docker_slot)
      .bind(i++, core::to_string(s.status))
      .bind(i++, s.last_heartbeat.ms)
      .bind(i++, s.current_task_id)
      .bind(i++, s.started_at.ms)
      .bind(i++, opt_ms(s.completed_at))
      .bind(i++, s.metadata)
      .bind(i++, s.created_at.ms)
      .bind(i++, s.updated_at.ms)
      .bind(i++, static_cast<std::int64_t>(s.heartbeat_timeout_s))
      .bind(i++, s.deadline_at.ms)
      .bind(i++, s.sweep_at.ms)
      .bind(i++, s.epoch)
      .bind(i++, core::to_string(s.dir))
      .bind(i++, s.directive_reason)
      .bind(i++, s.input_timeout_s ? std::optional<std::int64_t>(*s.input_timeout_s) : std::nullopt)
      .bind(i++, opt_ms(s.awaiting_since))
      .bind(i++, opt_ms(s.escalated_at));
}

constexpr const char* task_cols =
    "oid, task_id, session_id, project_id, github_issue_id, task_name, status, started_at, "
    "completed_at, error_message, metadata, created_at, updated_at";

task read_task(const statement& st) {
  task t;
  t.oid = st.col_text(0);
  t.task_id = st.col_text(1);
  t.session_id = st.col_text(2);
  t.project_id = st.col_text(3);
  t.github_issue_id = st.col_opt_text(4);
  t.task_name = st.col_text(5);
  t.status = core::parse_task_status(st.col_view(6)).value_or(core::task_status::pending);
  if (auto v = st.col_opt_int(7)) t.started_at = core::timestamp{*v};
  if (auto v = st.col_opt_int(8)) t.completed_at = core::timestamp{*v};
  t.error_message = st.col_opt_text(9);
  t.metadata = st.col_text(10);
  t.created_at = {st.col_int(11)};
  t.updated_at = {st.col_int(12)};
  return t;
}

void bind_task(statement& st, const task& t, int first) {
  int i = first;
  st.bind(i++, t.oid)
      .bind(i++, t.task_id)
      .bind(i++, t.session_id)
      .bind(i++, t.project_id)
      .bind(i++, t.github_issue_id)
      .bind(i++, t.task_name)
      .bind(i++, core::to_string(t.status))
      .bind(i++, opt_ms(t.started_at))
      .bind(i++, opt_ms(t.completed_at))
      .bind(i++, t.error_message)
      .bind(i++, t.metadata)
      .bind(i++, t.created_at.ms)
      .bind(i++, t.updated_at.ms);
}

constexpr const char* machine_cols =
    "oid, machine_id, hostname, docker_slots, active_sessions, status, last_heartbeat, metadata, "
    "created_at, updated_at";

std::string slots_to_json(const std::vector<std::int64_t>& v) {
  boost::json::array a;
  for (auto n : v)
    a.emplace_back(n);
  return boost::json::serialize(a);
}

std::string ids_to_json(const std::vector<std::string>& v) {
  boost::json::array a;
  for (const auto& s : v)
    a.emplace_back(s);
  return boost::json::serialize(a);
}

machine read_machine(const statement& st) {
  machine m;
  m.oid = st.col_text(0);
  m.machine_id = st.col_text(1);
  m.hostname = st.col_text(2);
  boost::system::error_code ec;
  auto slots = boost::json::parse(st.col_view(3), ec);
  if (!ec && slots.is_array()) {
    for (const auto& v : slots.as_array()) {
      if (v.is_int64()) m.docker_slots.push_back(v.as_int64());
    }
  }
  auto ids = boost::json::parse(st.col_view(4), ec);
  if (!ec && ids.is_array()) {
    for (const auto& v : ids.as_array()) {
      if (v.is_string()) m.active_sessions.emplace_back(v.as_string());
    }
  }
  m.status = core::parse_machine_status(st.col_view(5)).value_or(core::machine_status::online);
  m.last_heartbeat = {st.col_int(6)};
  m.metadata = st.col_text(7);
  m.created_at = {st.col_int(8)};
  m.updated_at = {st.col_int(9)};
  return m;
}

void bind_machine(statement& st, const machine& m, int first) {
  int i = first;
  st.bind(i++, m.oid)
      .bind(i++, m.machine_id)
      .bind(i++, m.hostname)
      .bind(i++, slots_to_json(m.docker_slots))
      .bind(i++, ids_to_json(m.active_sessions))
      .bind(i++, core::to_string(m.status))
      .bind(i++, m.last_heartbeat.ms)
      .bind(i++, m.metadata)
      .bind(i++, m.created_at.ms)
      .bind(i++, m.updated_at.ms);
}

std::string_view role_name(core::key_role r) {
  switch (r) {
    case core::key_role::admin:
      return "admin";
    case core::key_role::write:
      return "write";
    case core::key_role::read:
      return "read";
    case core::key_role::machine:
      return "machine";
  }
  return "read";
}

core::key_role parse_role(std::string_view s) {
  if (s == "admin") return core::key_role::admin;
  if (s == "write") return core::key_role::write;
  if (s == "machine") return core::key_role::machine;
  return core::key_role::read;
}

core::event read_event(const statement& st) {
  core::event e;
  e.seq = st.col_int(0);
  e.type = st.col_text(1);
  e.occurred_at = {st.col_int(2)};
  e.project_id = st.col_text(3);
  e.session_id = st.col_text(4);
  e.task_id = st.col_text(5);
  e.machine_id = st.col_text(6);
  e.data = st.col_text(7);
  return e;
}

constexpr const char* key_cols =
    "id, prefix, hash, name, role, created_at, last_used_at, revoked_at, machine_id, projects, "
    "expires_at";

core::api_key read_key(const statement& st) {
  core::api_key k;
  k.id = st.col_int(0);
  k.prefix = st.col_text(1);
  k.hash = st.col_text(2);
  k.name = st.col_text(3);
  k.role = parse_role(st.col_view(4));
  k.created_at = {st.col_int(5)};
  if (auto v = st.col_opt_int(6)) k.last_used_at = core::timestamp{*v};
  if (auto v = st.col_opt_int(7)) k.revoked_at = core::timestamp{*v};
  k.machine_id = st.col_opt_text(8).value_or("");
  if (auto v = st.col_opt_text(9)) k.projects = core::decode_projects(*v);
  if (auto v = st.col_opt_int(10)) k.expires_at = core::timestamp{*v};
  return k;
}

// A WHERE clause under construction with its positional parameters.
struct where_builder {
  std::string sql;
  std::vector<std::variant<std::int64_t, std::string>> params;

  void add(std::string_view cond) {
    sql += sql.empty() ? " WHERE " : " AND ";
    sql += cond;
  }
  void add(std::string_view cond, std::int64_t v) {
    add(cond);
    params.emplace_back(v);
  }
  void add(std::string_view cond, std::string v) {
    add(cond);
    params.emplace_back(std::move(v));
  }
  void bind(statement& st) const {
    int i = 1;
    for (const auto& p : params) {
      if (const auto* n = std::get_if<std::int64_t>(&p)) {
        st.bind(i++, *n);
      } else {
        st.bind(i++, std::string_view(std::get<std::string>(p)));
      }
    }
  }
};

void add_status_set(where_builder& w, status_set set) {
  if (set.empty()) return;
  std::string cond = "status IN (";
  bool first = true;
  for (std::size_t i = 0; i < core::session_status_names.size(); ++i) {
    if (!set.contains(static_cast<core::session_status>(i))) continue;
    if (!first) cond += ',';
    first = false;
    cond += '\'';
    cond += core::session_status_names[i];
    cond += '\'';
  }
  cond += ')';
  if (set.bits == (1U << static_cast<unsigned>(core::session_status::active)))
    cond = "status = 'active'";
  w.add(cond);
}

// A key's project scope: project_id IN (?, ...).
void add_project_in(where_builder& w, const std::vector<std::string>& projects) {
  if (projects.empty()) return;
  std::string cond = "project_id IN (";
  for (std::size_t i = 0; i < projects.size(); ++i) {
    cond += i == 0 ? "?" : ",?";
    w.params.emplace_back(projects[i]);
  }
  cond += ')';
  w.add(cond);
}

where_builder session_where(const session_filter& f) {
  where_builder w;
  add_status_set(w, f.statuses);
  if (f.project_id) w.add("project_id = ?", *f.project_id);
  add_project_in(w, f.project_in);
  if (f.machine_id) w.add("machine_id = ?", *f.machine_id);
  if (f.last_heartbeat_before) w.add("last_heartbeat < ?", f.last_heartbeat_before->ms);
  if (f.last_heartbeat_at_least) w.add("last_heartbeat >= ?", f.last_heartbeat_at_least->ms);
  if (f.last_heartbeat_at_most) w.add("last_heartbeat <= ?", f.last_heartbeat_at_most->ms);
  if (f.created_before) w.add("created_at < ?", f.created_before->ms);
  if (f.completed_before) w.add("completed_at < ?", f.completed_before->ms);
  if (f.sweep_before) w.add("sweep_at < ?", f.sweep_before->ms);
  return w;
}

std::string_view order_clause(session_order o) {
  switch (o) {
    case session_order::created_desc:
      return " ORDER BY created_at DESC, id DESC";
    case session_order::started_desc:
      return " ORDER BY started_at DESC, id DESC";
    case session_order::last_heartbeat_asc:
      return " ORDER BY last_heartbeat ASC, id ASC";
    case session_order::completed_desc:
      return " ORDER BY completed_at DESC, id DESC";
    case session_order::updated_desc:
      return " ORDER BY updated_at DESC, id DESC";
    case session_order::sweep_asc:
      return " ORDER BY sweep_at ASC, id ASC";
  }
  return "";
}

void append_limit(std::string& sql, std::int64_t limit, std::int64_t offset) {
  if (limit > 0) {
    sql += " LIMIT " + std::to_string(limit);
    if (offset > 0) sql += " OFFSET " + std::to_string(offset);
  } else if (offset > 0) {
    sql += " LIMIT -1 OFFSET " + std::to_string(offset);
  }
}

where_builder task_where(const task_filter& f) {
  where_builder w;
  if (f.session_id) w.add("session_id = ?", *f.session_id);
  if (f.status) w.add("status = ?", std::string(core::to_string(*f.status)));
  if (f.project_id) w.add("project_id = ?", *f.project_id);
  add_project_in(w, f.project_in);
  if (!f.statuses_any.empty()) {
    std::string cond = "status IN (";
    for (std::size_t i = 0; i < f.statuses_any.size(); ++i) {
      if (i > 0) cond += ',';
      cond += '\'';
      cond += core::to_string(f.statuses_any[i]);
      cond += '\'';
    }
    cond += ')';
    w.add(cond);
  }
  if (f.completed_before) w.add("completed_at < ?", f.completed_before->ms);
  return w;
}

// All row operations over one connection. Read connections only call the read_view part.
class ops final : public write_txn {
 public:
  explicit ops(connection& c) : c_(c) {}

  std::optional<session> get_session(std::string_view id) override {
    static const std::string sql =
        std::string("SELECT ") + session_cols + " FROM sessions WHERE session_id = ?";
    auto st = c_.prepare(sql);
    st.bind(1, id);
    if (!st.step()) return std::nullopt;
    return read_session(st);
  }

  std::vector<session> list_sessions(const session_filter& f) override {
    auto w = session_where(f);
    std::string sql = std::string("SELECT ") + session_cols + " FROM sessions";
    // The stall sweep must be a range scan over the partial sweep index (O(due)); the
    // planner would otherwise pick the status index and sort every active session.
    if (f.sweep_before && f.statuses.bits == status_set::of({core::session_status::active,
                                                             core::session_status::awaiting_input})
                                                 .bits) {
      sql += " INDEXED BY sessions_active_sweep";
    }
    sql += w.sql;
    sql += order_clause(f.order);
    append_limit(sql, f.limit, f.offset);
    auto st = c_.prepare(sql);
    w.bind(st);
    std::vector<session> out;
    if (f.limit > 0) out.reserve(static_cast<std::size_t>(std::min<std::int64_t>(f.limit, 256)));
    while (st.step())
      out.push_back(read_session(st));
    return out;
  }

  std::int64_t count_sessions(const session_filter& f) override {
    auto w = session_where(f);
    auto st = c_.prepare("SELECT count(*) FROM sessions" + w.sql);
    w.bind(st);
    st.step();
    return st.col_int(0);
  }

  std::vector<std::int64_t> count_sessions_by_status() override {
    std::vector<std::int64_t> out(core::session_status_names.size(), 0);
    auto st = c_.prepare("SELECT status, count(*) FROM sessions GROUP BY status");
    while (st.step()) {
      if (auto s = core::parse_session_status(st.col_view(0))) {
        out[static_cast<std::size_t>(*s)] = st.col_int(1);
      }
    }
    return out;
  }

  std::optional<task> get_task(std::string_view id) override {
    static const std::string sql =
        std::string("SELECT ") + task_cols + " FROM tasks WHERE task_id = ?";
    auto st = c_.prepare(sql);
    st.bind(1, id);
    if (!st.step()) return std::nullopt;
    return read_task(st);
  }

  std::vector<task> list_tasks(const task_filter& f) override {
    auto w = task_where(f);
    std::string sql = std::string("SELECT ") + task_cols + " FROM tasks" + w.sql +
                      " ORDER BY created_at DESC, id DESC";
    append_limit(sql, f.limit, f.offset);
    auto st = c_.prepare(sql);
    w.bind(st);
    std::vector<task> out;
    while (st.step())
      out.push_back(read_task(st));
    return out;
  }

  std::int64_t count_tasks(const task_filter& f) override {
    auto w = task_where(f);
    auto st = c_.prepare("SELECT count(*) FROM tasks" + w.sql);
    w.bind(st);
    st.step();
    return st.col_int(0);
  }

  std::optional<machine> get_machine(std::string_view id) override {
    static const std::string sql =
        std::string("SELECT ") + machine_cols + " FROM machines WHERE machine_id = ?";
    auto st = c_.prepare(sql);
    st.bind(1, id);
    if (!st.step()) return std::nullopt;
    return read_machine(st);
  }

  std::vector<machine> list_machines(const machine_filter& f) override {
    where_builder w;
    if (f.status) w.add("status = ?", std::string(core::to_string(*f.status)));
    if (f.hostname) w.add("hostname = ?", *f.hostname);
    if (f.last_heartbeat_before) w.add("last_heartbeat < ?", f.last_heartbeat_before->ms);
    auto st = c_.prepare(std::string("SELECT ") + machine_cols + " FROM machines" + w.sql +
                         " ORDER BY id ASC");
    w.bind(st);
    std::vector<machine> out;
    while (st.step())
      out.push_back(read_machine(st));
    return out;
  }

  std::optional<core::api_key> find_api_key(std::string_view prefix) override {
    auto st = c_.prepare(std::string("SELECT ") + key_cols +
                         " FROM api_keys WHERE prefix = ? ORDER BY id LIMIT 1");
    st.bind(1, prefix);
    if (!st.step()) return std::nullopt;
    return read_key(st);
  }

  std::vector<core::api_key> list_api_keys() override {
    auto st = c_.prepare(std::string("SELECT ") + key_cols + " FROM api_keys ORDER BY id");
    std::vector<core::api_key> out;
    while (st.step())
      out.push_back(read_key(st));
    return out;
  }

  std::vector<core::event> events_after(std::int64_t after, std::int64_t limit) override {
    auto st = c_.prepare(
        "SELECT seq, type, occurred_at, project_id, session_id, task_id, machine_id, data "
        "FROM events WHERE seq > ? ORDER BY seq LIMIT ?");
    st.bind(1, after).bind(2, limit);
    std::vector<core::event> out;
    while (st.step())
      out.push_back(read_event(st));
    return out;
  }

  std::vector<core::event> session_events(std::string_view session_id, std::int64_t after,
                                          std::int64_t limit) override {
    auto st = c_.prepare(
        "SELECT seq, type, occurred_at, project_id, session_id, task_id, machine_id, data "
        "FROM events WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?");
    st.bind(1, session_id).bind(2, after).bind(3, limit);
    std::vector<core::event> out;
    while (st.step())
      out.push_back(read_event(st));
    return out;
  }

  std::optional<std::string> get_meta(std::string_view key) override {
    auto st = c_.prepare("SELECT value FROM meta WHERE key = ?");
    st.bind(1, key);
    if (!st.step()) return std::nullopt;
    return st.col_text(0);
  }

  void put_meta(std::string_view key, std::string_view value) override {
    auto st = c_.prepare(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value");
    st.bind(1, key).bind(2, value);
    st.exec();
  }

  void insert_ticket(const core::stream_ticket& t) override {
    auto st = c_.prepare(
        "INSERT INTO event_tickets (hash, key_id, key_db_id, role, expires_at) "
        "VALUES (?, ?, ?, ?, ?)");
    st.bind(1, t.hash)
        .bind(2, t.key_id)
        .bind(3, t.key_db_id)
        .bind(4, role_name(t.role))
        .bind(5, t.expires_at.ms);
    st.exec();
  }

  std::optional<core::stream_ticket> consume_ticket(std::string_view hash,
                                                    core::timestamp now) override {
    {
      auto st = c_.prepare("DELETE FROM event_tickets WHERE expires_at <= ?");
      st.bind(1, now.ms);
      st.exec();
    }
    auto st = c_.prepare(
        "DELETE FROM event_tickets WHERE hash = ? RETURNING key_id, key_db_id, role, expires_at");
    st.bind(1, hash);
    if (!st.step()) return std::nullopt;
    core::stream_ticket t;
    t.hash = std::string(hash);
    t.key_id = st.col_text(0);
    t.key_db_id = st.col_int(1);
    t.role = parse_role(st.col_view(2));
    t.expires_at = {st.col_int(3)};
    st.exec();  // finish the statement so the delete completes
    return t;
  }

  void delete_meta(std::string_view key) override {
    auto st = c_.prepare("DELETE FROM meta WHERE key = ?");
    st.bind(1, key);
    st.exec();
  }

  std::int64_t last_event_seq() override {
    auto st = c_.prepare("SELECT coalesce(max(seq), 0) FROM events");
    st.step();
    return st.col_int(0);
  }

  // ---------------------------------------------------------------- writes

  void insert_session(const session& s) override {
    static const std::string sql = std::string("INSERT INTO sessions (") + session_cols +
                                   ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
    auto st = c_.prepare(sql);
    bind_session(st, s, 1);
    st.exec();
  }

  bool update_session(const session& s) override {
    static const std::string sql =
        "UPDATE sessions SET oid=?, session_id=?, project_id=?, machine_id=?, docker_slot=?, "
        "status=?, last_heartbeat=?, current_task_id=?, started_at=?, completed_at=?, "
        "metadata=?, created_at=?, updated_at=?, heartbeat_timeout_s=?, deadline_at=?, sweep_at=?, "
        "epoch=?, directive=?, directive_reason=?, input_timeout_s=?, awaiting_since=?, "
        "escalated_at=? WHERE session_id = ?";
    auto st = c_.prepare(sql);
    bind_session(st, s, 1);
    st.bind(23, s.session_id);
    return st.exec() > 0;
  }

  bool update_session_liveness(const session& s) override {
    auto st = c_.prepare(
        "UPDATE sessions SET status=?, last_heartbeat=?, deadline_at=?, updated_at=? "
        "WHERE session_id = ?");
    st.bind(1, core::to_string(s.status))
        .bind(2, s.last_heartbeat.ms)
        .bind(3, s.deadline_at.ms)
        .bind(4, s.updated_at.ms)
        .bind(5, s.session_id);
    return st.exec() > 0;
  }

  bool delete_session(std::string_view id) override {
    auto st = c_.prepare("DELETE FROM sessions WHERE session_id = ?");
    st.bind(1, id);
    return st.exec() > 0;
  }

  bool insert_task(const task& t) override {
    static const std::string sql = std::string("INSERT OR IGNORE INTO tasks (") + task_cols +
                                   ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)";
    auto st = c_.prepare(sql);
    bind_task(st, t, 1);
    return st.exec() > 0;
  }

  bool update_task(const task& t) override {
    auto st = c_.prepare(
        "UPDATE tasks SET oid=?, task_id=?, session_id=?, project_id=?, github_issue_id=?, "
        "task_name=?, status=?, started_at=?, completed_at=?, error_message=?, metadata=?, "
        "created_at=?, updated_at=? WHERE task_id = ?");
    bind_task(st, t, 1);
    st.bind(14, t.task_id);
    return st.exec() > 0;
  }

  std::int64_t delete_tasks_of_session(std::string_view session_id) override {
    auto st = c_.prepare("DELETE FROM tasks WHERE session_id = ?");
    st.bind(1, session_id);
    return st.exec();
  }

  std::int64_t delete_tasks(const task_filter& f) override {
    auto w = task_where(f);
    auto st = c_.prepare("DELETE FROM tasks" + w.sql);
    w.bind(st);
    return st.exec();
  }

  bool insert_machine(const machine& m) override {
    static const std::string sql = std::string("INSERT OR IGNORE INTO machines (") + machine_cols +
                                   ") VALUES (?,?,?,?,?,?,?,?,?,?)";
    auto st = c_.prepare(sql);
    bind_machine(st, m, 1);
    return st.exec() > 0;
  }

  bool update_machine(const machine& m) override {
    auto st = c_.prepare(
        "UPDATE machines SET oid=?, machine_id=?, hostname=?, docker_slots=?, "
        "active_sessions=?, status=?, last_heartbeat=?, metadata=?, created_at=?, updated_at=? "
        "WHERE machine_id = ?");
    bind_machine(st, m, 1);
    st.bind(11, m.machine_id);
    return st.exec() > 0;
  }

  std::int64_t append_event(const core::event& e) override {
    auto st = c_.prepare(
        "INSERT INTO events (type, occurred_at, project_id, session_id, task_id, machine_id, "
        "data) VALUES (?,?,?,?,?,?,?)");
    st.bind(1, e.type)
        .bind(2, e.occurred_at.ms)
        .bind(3, e.project_id)
        .bind(4, e.session_id)
        .bind(5, e.task_id)
        .bind(6, e.machine_id)
        .bind(7, e.data);
    st.exec();
    appended_ = true;
    last_seq_ = c_.last_insert_rowid();
    return last_seq_;
  }

  std::int64_t prune_events(core::timestamp before, std::int64_t keep) override {
    std::int64_t n = 0;
    {
      auto st = c_.prepare("DELETE FROM events WHERE occurred_at < ?");
      st.bind(1, before.ms);
      n += st.exec();
    }
    if (keep > 0) {
      auto st = c_.prepare(
          "DELETE FROM events WHERE seq <= (SELECT coalesce(max(seq), 0) FROM events) - ?");
      st.bind(1, keep);
      n += st.exec();
    }
    return n;
  }

  void insert_api_key(core::api_key& k) override {
    auto st = c_.prepare(
        "INSERT INTO api_keys (prefix, hash, name, role, created_at, last_used_at, revoked_at, "
        "machine_id, projects, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?)");
    st.bind(1, k.prefix)
        .bind(2, k.hash)
        .bind(3, k.name)
        .bind(4, role_name(k.role))
        .bind(5, k.created_at.ms)
        .bind(6, opt_ms(k.last_used_at))
        .bind(7, opt_ms(k.revoked_at))
        .bind(8, k.machine_id.empty() ? std::nullopt : std::optional<std::string>(k.machine_id))
        .bind(9, k.projects.empty() ? std::nullopt
                                    : std::optional<std::string>(core::encode_projects(k.projects)))
        .bind(10, opt_ms(k.expires_at));
    st.exec();
    k.id = c_.last_insert_rowid();
  }

  bool revoke_api_key(std::int64_t id, core::timestamp at) override {
    auto st = c_.prepare("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL");
    st.bind(1, at.ms).bind(2, id);
    return st.exec() > 0;
  }

  bool expire_api_key(std::int64_t id, core::timestamp at) override {
    auto st = c_.prepare(
        "UPDATE api_keys SET expires_at = ? WHERE id = ? AND revoked_at IS NULL AND "
        "(expires_at IS NULL OR expires_at > ?)");
    st.bind(1, at.ms).bind(2, id).bind(3, at.ms);
    return st.exec() > 0;
  }

  void touch_api_key(std::int64_t id, core::timestamp at) override {
    auto st = c_.prepare("UPDATE api_keys SET last_used_at = ? WHERE id = ?");
    st.bind(1, at.ms).bind(2, id);
    st.exec();
  }

  // Writer bookkeeping: did this batch append events, and the last seq.
  bool appended_ = false;
  std::int64_t last_seq_ = 0;

 private:
  connection& c_;
};

void apply_pragmas(connection& c, bool writer, bool synchronous_full) {
  if (writer) {
    c.exec("PRAGMA journal_mode=WAL");
    c.exec(synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
  }
  // Checkpoints are driven by the writer's WAL hook (sqlite_store::wal_hook).
  c.exec(
      "PRAGMA foreign_keys=OFF; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-32768; "
      "PRAGMA mmap_size=268435456; PRAGMA wal_autocheckpoint=0");
}

std::vector<int> apply_migrations(connection& c) {
  c.exec(
      "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
      "description TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT");
  std::vector<int> applied;
  int current = 0;
  {
    auto st = c.prepare("SELECT coalesce(max(version), 0) FROM schema_migrations");
    st.step();
    current = static_cast<int>(st.col_int(0));
  }
  const auto& all = migrations();
  if (!all.empty() && current > all.back().version) {
    throw storage_error(storage_error::kind::other, "database schema version " +
                                                        std::to_string(current) +
                                                        " is newer than this binary supports (" +
                                                        std::to_string(all.back().version) + ")");
  }
  for (const auto& m : all) {
    if (m.version <= current) continue;
    c.exec("BEGIN IMMEDIATE");
    try {
      c.exec(m.sql);
      auto st = c.prepare(
          "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?,?,?)");
      auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count();
      st.bind(1, m.version).bind(2, m.description).bind(3, static_cast<std::int64_t>(now));
      st.exec();
      c.exec("COMMIT");
    } catch (...) {
      if (c.in_transaction()) c.exec("ROLLBACK");
      throw;
    }
    applied.push_back(m.version);
  }
  return applied;
}

void ensure_parent_dir(const std::string& path) {
  if (path.empty() || path == ":memory:" || path.starts_with("file:")) return;
  std::filesystem::path p(path);
  if (p.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(p.parent_path(), ec);
  }
}

using completion = asio::any_completion_handler<void(std::exception_ptr)>;

// How long a pooled reader may keep one snapshot while this process commits nothing.
constexpr auto max_snapshot_age = std::chrono::milliseconds(100);

}  // namespace

namespace {
// Resumes the waiting coroutine on its own executor with the job's outcome.
template <class Job>
void complete(Job* j) {
  auto h = std::move(j->handler);
  auto ep = j->error;
  auto ex = j->executor;
  delete j;
  asio::post(ex, [h = std::move(h), ep]() mutable { std::move(h)(ep); });
}
}  // namespace

struct sqlite_store::job {
  write_fn fn;
  std::exception_ptr error;
  completion handler;
  asio::any_io_executor executor;  // where the waiting coroutine resumes
  // For write_now: a synchronous waiter instead of a handler.
  std::mutex* sync_mu = nullptr;
  std::condition_variable* sync_cv = nullptr;
  bool* sync_done = nullptr;
};

sqlite_store::sqlite_store(store_options opts, obs::registry* metrics) : opts_(std::move(opts)) {
  ensure_parent_dir(opts_.path);
  open_options o;
  writer_conn_ = std::make_unique<connection>(opts_.path, o);
  apply_pragmas(*writer_conn_, true, opts_.synchronous_full);
  apply_migrations(*writer_conn_);
  if (metrics != nullptr) {
    batch_size_ = &metrics->add_histogram(
        "statetrack_store_commit_batch_size", "Writes per group commit (one fsync each)",
        {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}, {{"backend", "sqlite"}});
    commit_seconds_ = &metrics->add_histogram(
        "statetrack_store_commit_seconds", "Time to execute and commit one batch",
        obs::latency_bounds_seconds(), {{"backend", "sqlite"}});
  }
  sqlite3_wal_hook(writer_conn_->handle(), &sqlite_store::wal_hook, this);
  writer_ = std::thread([this] { writer_loop(); });
}

sqlite_store::~sqlite_store() {
  close();
}

void sqlite_store::close() {
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  {
    std::lock_guard lk(readers_mu_);
    readers_.clear();
  }
  // Fold the WAL into the database file so a stopped store is one self-contained file —
  // unless another process is reading it (a running server, when this is the CLI): then do not
  // wait for it; the WAL stays valid and the other process will checkpoint it.
  sqlite3_busy_timeout(writer_conn_->handle(), 0);
  sqlite3_wal_checkpoint_v2(writer_conn_->handle(), "main", SQLITE_CHECKPOINT_TRUNCATE, nullptr,
                            nullptr);
}

// Called by SQLite on the writer thread after each commit with the WAL size in pages. Past
// the threshold the committed frames are copied into the database file (a PASSIVE checkpoint,
// as SQLite's autocheckpoint does) after idle pooled readers have dropped stale snapshots, so
// that the next transaction can restart the WAL from its beginning and the file stays small.
int sqlite_store::wal_hook(void* self, sqlite3* db, const char* /*name*/, int pages) {
  auto* store = static_cast<sqlite_store*>(self);
  if (pages < store->opts_.checkpoint_pages) return SQLITE_OK;
  const std::uint64_t gen = store->generation_.load(std::memory_order_acquire) + 1;
  {
    std::lock_guard rl(store->readers_mu_);
    for (auto& r : store->readers_) {
      if (r.open && r.snapshot != gen) {
        try {
          r.conn->run("COMMIT");
        } catch (const storage_error&) {  // NOLINT(bugprone-empty-catch): retried next time
        }
        r.open = false;
      }
    }
  }
  sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
  return SQLITE_OK;
}

sqlite_store::reader sqlite_store::acquire_reader() {
  {
    std::lock_guard lk(readers_mu_);
    if (!readers_.empty()) {
      reader r = std::move(readers_.back());
      readers_.pop_back();
      return r;
    }
  }
  open_options o;
  o.read_only = false;  // read_only handles cannot see a WAL created by another connection
  o.create = false;
  reader r;
  r.conn = std::make_unique<connection>(opts_.path, o);
  apply_pragmas(*r.conn, false, opts_.synchronous_full);
  r.conn->exec("PRAGMA query_only=ON");
  return r;
}

void sqlite_store::release_reader(reader r) {
  std::lock_guard lk(readers_mu_);
  if (readers_.size() < 64) readers_.push_back(std::move(r));
}

// Reads keep their read transaction open between calls while nothing has been committed, so
// a read costs no file locking; the first read after a commit starts a fresh snapshot. A write
// completes only after the generation moved, so every read that follows sees it. Writes by
// other processes (`statetrack keys`, for one) are not counted by the generation, so a
// snapshot is also renewed once it is older than max_snapshot_age.
void sqlite_store::read_now(const read_fn& fn) {
  reader r = acquire_reader();
  connection& c = *r.conn;
  const std::uint64_t gen = generation_.load(std::memory_order_acquire);
  const auto now = std::chrono::steady_clock::now();
  if (r.open && (r.snapshot != gen || now - r.opened_at > max_snapshot_age)) {
    c.run("COMMIT");
    r.open = false;
  }
  if (!r.open) {
    c.run("BEGIN");
    r.open = true;
    r.snapshot = gen;
    r.opened_at = now;
  }
  try {
    ops view(c);
    fn(view);
  } catch (...) {
    if (c.in_transaction()) {
      try {
        c.run("ROLLBACK");
      } catch (...) {  // NOLINT(bugprone-empty-catch): the original error is what matters
      }
    }
    r.open = false;
    release_reader(std::move(r));
    throw;
  }
  release_reader(std::move(r));
}

asio::awaitable<void> sqlite_store::run_read(read_fn fn) {
  read_now(fn);
  co_return;
}

void sqlite_store::enqueue(job* j) {
  {
    std::lock_guard lk(mu_);
    if (stopping_) {
      j->error = std::make_exception_ptr(
          storage_error(storage_error::kind::unavailable, "store is shutting down"));
      // Complete outside the lock below.
    } else {
      queue_.push_back(j);
      queue_depth_.store(queue_.size(), std::memory_order_relaxed);
      if (j->sync_cv != nullptr) {
        cv_.notify_one();
      } else if (!wake_pending_) {
        // Wake the writer after the I/O thread has handled every request that is ready now,
        // not after each one: bigger batches, and no context switch per request when the
        // writer shares a core with the I/O thread.
        wake_pending_ = true;
        asio::post(j->executor, [this] {
          {
            std::lock_guard wl(mu_);
            wake_pending_ = false;
          }
          cv_.notify_one();
        });
      }
      return;
    }
  }
  if (j->sync_cv != nullptr) {
    std::lock_guard lk(*j->sync_mu);
    *j->sync_done = true;
    j->sync_cv->notify_one();
  } else {
    complete(j);
  }
}

asio::awaitable<void> sqlite_store::run_write(write_fn fn) {
  auto initiate = [this, &fn](auto handler) {
    auto ex = asio::get_associated_executor(handler);
    auto* j = new job{std::move(fn), nullptr, completion(std::move(handler)), ex};
    enqueue(j);
  };
  // A non-null exception_ptr completion is rethrown in the awaiting coroutine by Asio.
  co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr)>(
      initiate, asio::use_awaitable);
}

void sqlite_store::write_now(const write_fn& fn) {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  job j{fn, nullptr, {}, {}, &m, &cv, &done};
  enqueue(&j);
  std::unique_lock lk(m);
  cv.wait(lk, [&] { return done; });
  if (j.error) std::rethrow_exception(j.error);
}

void sqlite_store::writer_loop() {
  std::vector<job*> batch;
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return !queue_.empty() || stopping_; });
      if (queue_.empty()) break;  // stopping and drained
      if (queue_.size() <= static_cast<std::size_t>(opts_.max_batch)) {
        batch.swap(queue_);
      } else {
        batch.assign(queue_.begin(), queue_.begin() + opts_.max_batch);
        queue_.erase(queue_.begin(), queue_.begin() + opts_.max_batch);
      }
      queue_depth_.store(queue_.size(), std::memory_order_relaxed);
    }
    execute_batch(batch);
    // Waiting coroutines are resumed by one function posted to an I/O thread, which then
    // posts each to its own strand: one cross-thread wake-up per batch, not per write.
    std::vector<job*> async_jobs;
    for (job* j : batch) {
      if (j->sync_cv != nullptr) {
        std::lock_guard lk(*j->sync_mu);
        *j->sync_done = true;
        j->sync_cv->notify_one();
      } else {
        async_jobs.push_back(j);
      }
    }
    if (!async_jobs.empty()) {
      auto ex = async_jobs.front()->executor;
      asio::post(ex, [jobs = std::move(async_jobs)] {
        for (job* j : jobs)
          complete(j);
      });
    }
    batch.clear();
  }
}

void sqlite_store::execute_batch(std::vector<job*>& batch) {
  auto started = std::chrono::steady_clock::now();
  connection& c = *writer_conn_;
  ops tx(c);
  const bool single = batch.size() == 1;
  std::vector<bool> kept(batch.size(), false);
  try {
    c.run("BEGIN IMMEDIATE");
  } catch (...) {
    auto ep = std::current_exception();
    for (job* j : batch)
      j->error = own_copy(ep);  // one exception object per coroutine (job_error.hpp)
    failed_commits_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  bool any_kept = false;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    job* j = batch[i];
    if (!single) c.run("SAVEPOINT w");
    bool keep = false;
    const bool appended_before = tx.appended_;
    const std::int64_t seq_before = tx.last_seq_;
    try {
      keep = j->fn(tx);
    } catch (...) {
      j->error = std::current_exception();
      keep = false;
    }
    if (!c.in_transaction()) {
      // SQLite rolled the whole transaction back (I/O error, disk full): the batch is lost.
      auto ep = std::make_exception_ptr(storage_error(
          storage_error::kind::unavailable, "transaction aborted by the database engine"));
      for (std::size_t k = 0; k < batch.size(); ++k) {
        if (!batch[k]->error) batch[k]->error = own_copy(ep);
      }
      failed_commits_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (!single) {
      if (!keep) c.run("ROLLBACK TO w");
      c.run("RELEASE w");
    }
    if (!keep) {
      tx.appended_ = appended_before;
      tx.last_seq_ = seq_before;
    }
    kept[i] = keep;
    any_kept = any_kept || keep;
  }
  try {
    if (any_kept) {
      c.run("COMMIT");
    } else {
      c.run("ROLLBACK");
      tx.appended_ = false;
    }
  } catch (...) {
    auto ep = std::current_exception();
    if (c.in_transaction()) {
      try {
        c.exec("ROLLBACK");
      } catch (...) {  // NOLINT(bugprone-empty-catch): the commit error is what callers see
      }
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (kept[i]) batch[i]->error = own_copy(ep);
    }
    failed_commits_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  generation_.fetch_add(1, std::memory_order_acq_rel);
  commits_.fetch_add(1, std::memory_order_relaxed);
  writes_.fetch_add(batch.size(), std::memory_order_relaxed);
  if (batch_size_ != nullptr) batch_size_->observe(static_cast<double>(batch.size()));
  if (commit_seconds_ != nullptr) {
    commit_seconds_->observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
  if (tx.appended_) {
    std::lock_guard lk(cb_mu_);
    for (auto& cb : event_callbacks_)
      cb(tx.last_seq_);
  }
}

std::optional<double> sqlite_store::ping() {
  try {
    auto t0 = std::chrono::steady_clock::now();
    read_now([](read_view& v) { v.last_event_seq(); });
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  } catch (const storage_error&) {
    return std::nullopt;
  }
}

store_stats sqlite_store::stats() const {
  return {commits_.load(), writes_.load(), failed_commits_.load(), queue_depth_.load(), 0};
}

void sqlite_store::on_events_committed(std::function<void(std::int64_t)> cb) {
  std::lock_guard lk(cb_mu_);
  event_callbacks_.push_back(std::move(cb));
}

std::vector<int> sqlite_store::migrate(const std::string& path) {
  ensure_parent_dir(path);
  connection c(path, open_options{});
  apply_pragmas(c, true, true);
  return apply_migrations(c);
}

void sqlite_store::backup(const std::string& path, const std::string& dest) {
  open_options src_opts;
  src_opts.create = false;
  connection src(path, src_opts);
  ensure_parent_dir(dest);
  connection dst(dest, open_options{});
  sqlite3_backup* b = sqlite3_backup_init(dst.handle(), "main", src.handle(), "main");
  if (b == nullptr) throw_sqlite(sqlite3_errcode(dst.handle()), "backup init", dst.handle());
  int rc;
  while ((rc = sqlite3_backup_step(b, 256)) == SQLITE_OK || rc == SQLITE_BUSY ||
         rc == SQLITE_LOCKED) {
    if (rc != SQLITE_OK) sqlite3_sleep(20);
  }
  sqlite3_backup_finish(b);
  if (rc != SQLITE_DONE) throw_sqlite(rc, "backup", dst.handle());
}

}  // namespace statetrack::storage::sqlite
