// Row mapping, the group-commit writer, the reader pool and the event listener.
#include "storage/postgres/pg_store.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <sys/eventfd.h>
#include <unistd.h>
#include <unordered_set>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <libpq-fe.h>

#include "core/access.hpp"
#include "obs/metrics.hpp"
#include "storage/job_error.hpp"
#include "storage/postgres/conninfo.hpp"
#include "storage/postgres/schema.hpp"

namespace statetrack::storage::postgres {

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

session read_session(const result& r, int row) {
  session s;
  s.oid = r.text(row, 0);
  s.session_id = r.text(row, 1);
  s.project_id = r.text(row, 2);
  s.machine_id = r.text(row, 3);
  s.docker_slot = r.opt_dbl(row, 4);
  s.status = core::parse_session_status(r.view(row, 5)).value_or(core::session_status::active);
  s.last_heartbeat = {r.int64(row, 6)};
  s.current_task_id = r.opt_text(row, 7);
  s.started_at = {r.int64(row, 8)};
  if (auto v = r.opt_int64(row, 9)) s.completed_at = core::timestamp{*v};
  s.metadata = r.text(row, 10);
  s.created_at = {r.int64(row, 11)};
  s.updated_at = {r.int64(row, 12)};
  s.heartbeat_timeout_s = static_cast<int>(r.int64(row, 13));
  s.deadline_at = {r.int64(row, 14)};
  s.sweep_at = {r.int64(row, 15)};
  s.epoch = r.int64(row, 16);
  s.dir = core::parse_directive(r.view(row, 17)).value_or(core::directive::continue_);
  s.directive_reason = r.opt_text(row, 18);
  if (auto v = r.opt_int64(row, 19)) s.input_timeout_s = static_cast<int>(*v);
  if (auto v = r.opt_int64(row, 20)) s.awaiting_since = core::timestamp{*v};
  if (auto v = r.opt_int64(row, 21)) s.escalated_at = core::timestamp{*v};
  return s;
}

std::optional<std::int64_t> opt_ms(const std::optional<core::timestamp>& t) {
  if (!t) return std::nullopt;
  return t->ms;
}

// The 22 session columns in session_cols order.
void bind_session(params& p, const session& s) {
  p.add(s.oid)
      .add(s.session_id)
      .add(s.project_id)
      .add(s.machine_id)
      .add(s.docker_slot)
      .add(core::to_string(s.status))
      .add(s.last_heartbeat.ms)
      .add(s.current_task_id)
      .add(s.started_at.ms)
      .add(opt_ms(s.completed_at))
      .add(s.metadata)
      .add(s.created_at.ms)
      .add(s.updated_at.ms)
      .add(static_cast<std::int64_t>(s.heartbeat_timeout_s))
      .add(s.deadline_at.ms)
      .add(s.sweep_at.ms)
      .add(s.epoch)
      .add(core::to_string(s.dir))
      .add(s.directive_reason)
      .add(s.input_timeout_s ? std::optional<std::int64_t>(*s.input_timeout_s) : std::nullopt)
      .add(opt_ms(s.awaiting_since))
      .add(opt_ms(s.escalated_at));
}

constexpr const char* task_cols =
    "oid, task_id, session_id, project_id, github_issue_id, task_name, status, started_at, "
    "completed_at, error_message, metadata, created_at, updated_at";

task read_task(const result& r, int row) {
  task t;
  t.oid = r.text(row, 0);
  t.task_id = r.text(row, 1);
  t.session_id = r.text(row, 2);
  t.project_id = r.text(row, 3);
  t.github_issue_id = r.opt_text(row, 4);
  t.task_name = r.text(row, 5);
  t.status = core::parse_task_status(r.view(row, 6)).value_or(core::task_status::pending);
  if (auto v = r.opt_int64(row, 7)) t.started_at = core::timestamp{*v};
  if (auto v = r.opt_int64(row, 8)) t.completed_at = core::timestamp{*v};
  t.error_message = r.opt_text(row, 9);
  t.metadata = r.text(row, 10);
  t.created_at = {r.int64(row, 11)};
  t.updated_at = {r.int64(row, 12)};
  return t;
}

void bind_task(params& p, const task& t) {
  p.add(t.oid)
      .add(t.task_id)
      .add(t.session_id)
      .add(t.project_id)
      .add(t.github_issue_id)
      .add(t.task_name)
      .add(core::to_string(t.status))
      .add(opt_ms(t.started_at))
      .add(opt_ms(t.completed_at))
      .add(t.error_message)
      .add(t.metadata)
      .add(t.created_at.ms)
      .add(t.updated_at.ms);
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

machine read_machine(const result& r, int row) {
  machine m;
  m.oid = r.text(row, 0);
  m.machine_id = r.text(row, 1);
  m.hostname = r.text(row, 2);
  boost::system::error_code ec;
  auto slots = boost::json::parse(r.view(row, 3), ec);
  if (!ec && slots.is_array()) {
    for (const auto& v : slots.as_array()) {
      if (v.is_int64()) m.docker_slots.push_back(v.as_int64());
    }
  }
  auto ids = boost::json::parse(r.view(row, 4), ec);
  if (!ec && ids.is_array()) {
    for (const auto& v : ids.as_array()) {
      if (v.is_string()) m.active_sessions.emplace_back(v.as_string());
    }
  }
  m.status = core::parse_machine_status(r.view(row, 5)).value_or(core::machine_status::online);
  m.last_heartbeat = {r.int64(row, 6)};
  m.metadata = r.text(row, 7);
  m.created_at = {r.int64(row, 8)};
  m.updated_at = {r.int64(row, 9)};
  return m;
}

void bind_machine(params& p, const machine& m) {
  p.add(m.oid)
      .add(m.machine_id)
      .add(m.hostname)
      .add(slots_to_json(m.docker_slots))
      .add(ids_to_json(m.active_sessions))
      .add(core::to_string(m.status))
      .add(m.last_heartbeat.ms)
      .add(m.metadata)
      .add(m.created_at.ms)
      .add(m.updated_at.ms);
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

constexpr const char* event_cols =
    "seq, type, occurred_at, project_id, session_id, task_id, machine_id, data";

core::event read_event(const result& r, int row) {
  core::event e;
  e.seq = r.int64(row, 0);
  e.type = r.text(row, 1);
  e.occurred_at = {r.int64(row, 2)};
  e.project_id = r.text(row, 3);
  e.session_id = r.text(row, 4);
  e.task_id = r.text(row, 5);
  e.machine_id = r.text(row, 6);
  e.data = r.text(row, 7);
  return e;
}

constexpr const char* key_cols =
    "id, prefix, hash, name, role, created_at, last_used_at, revoked_at, machine_id, projects, "
    "expires_at";

core::api_key read_key(const result& r, int row) {
  core::api_key k;
  k.id = r.int64(row, 0);
  k.prefix = r.text(row, 1);
  k.hash = r.text(row, 2);
  k.name = r.text(row, 3);
  k.role = parse_role(r.view(row, 4));
  k.created_at = {r.int64(row, 5)};
  if (auto v = r.opt_int64(row, 6)) k.last_used_at = core::timestamp{*v};
  if (auto v = r.opt_int64(row, 7)) k.revoked_at = core::timestamp{*v};
  k.machine_id = r.opt_text(row, 8).value_or("");
  if (auto v = r.opt_text(row, 9)) k.projects = core::decode_projects(*v);
  if (auto v = r.opt_int64(row, 10)) k.expires_at = core::timestamp{*v};
  return k;
}

// PostgreSQL text holds valid UTF-8 without U+0000; SQLite stores any bytes. A lookup key that
// is not storable (a percent-decoded path segment, a header) cannot match a stored row, so the
// lookup finds nothing without asking the server (which would reject the parameter). A value
// to be stored that is not storable is the client's mistake: 400, as the input's, not a 503.
bool storable(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const unsigned c = *p;
    if (c == 0) return false;
    if (c < 0x80) {
      ++p;
      continue;
    }
    int n = 0;
    unsigned lo = 0x80;
    unsigned hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;  // no UTF-16 surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (end - p <= n) return false;
    if (p[1] < lo || p[1] > hi) return false;
    for (int i = 2; i <= n; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
    }
    p += n + 1;
  }
  return true;
}
bool storable_opt(const std::optional<std::string>& s) {
  return !s || storable(*s);
}

// Lets maps keyed by std::string be searched with a string_view, without a copy.
struct text_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

// Appends `v` to a PostgreSQL array literal as one quoted element.
void append_array_text(std::string& out, std::string_view v) {
  out += '"';
  for (char ch : v) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  out += '"';
}

void require_storable(std::string_view field, std::string_view v) {
  if (!storable(v)) {
    throw core::error_exception(
        core::make_error(core::errc::bad_request,
                         std::string(field) + " must be valid UTF-8 without NUL characters"));
  }
}
void require_storable_opt(std::string_view field, const std::optional<std::string>& v) {
  if (v) require_storable(field, std::string_view(*v));
}

void require_storable(const session& s) {
  require_storable("session_id", s.session_id);
  require_storable("project_id", s.project_id);
  require_storable("machine_id", s.machine_id);
  require_storable_opt("current_task_id", s.current_task_id);
  require_storable("metadata", s.metadata);
  require_storable_opt("directive_reason", s.directive_reason);
}

void require_storable(const task& t) {
  require_storable("task_id", t.task_id);
  require_storable("session_id", t.session_id);
  require_storable("project_id", t.project_id);
  require_storable_opt("github_issue_id", t.github_issue_id);
  require_storable("task_name", t.task_name);
  require_storable_opt("error_message", t.error_message);
  require_storable("metadata", t.metadata);
}

void require_storable(const machine& m) {
  require_storable("machine_id", m.machine_id);
  require_storable("hostname", m.hostname);
  require_storable("metadata", m.metadata);
  for (const auto& id : m.active_sessions)
    require_storable("active_sessions", id);
}

bool storable_all(const std::vector<std::string>& v) {
  return std::all_of(v.begin(), v.end(), [](const std::string& s) { return storable(s); });
}
bool storable(const session_filter& f) {
  return storable_opt(f.project_id) && storable_opt(f.machine_id) && storable_all(f.project_in);
}
bool storable(const task_filter& f) {
  return storable_opt(f.session_id) && storable_opt(f.project_id) && storable_all(f.project_in);
}

// A WHERE clause under construction; `$` in a condition becomes the next parameter number.
struct where_builder {
  std::string sql;
  params p;
  int n = 0;

  void add(std::string_view cond) {
    sql += sql.empty() ? " WHERE " : " AND ";
    sql += cond;
  }
  template <class V>
  void add(std::string_view cond, const V& v) {
    sql += sql.empty() ? " WHERE " : " AND ";
    for (char c : cond) {
      if (c == '$') {
        sql += '$';
        sql += std::to_string(++n);
      } else {
        sql += c;
      }
    }
    p.add(v);
  }
  // LIMIT / OFFSET as parameters (one prepared statement for every page).
  std::string limit(std::int64_t limit, std::int64_t offset) {
    std::string out;
    if (limit > 0) {
      out += " LIMIT $" + std::to_string(++n);
      p.add(limit);
    }
    if (offset > 0) {
      out += " OFFSET $" + std::to_string(++n);
      p.add(offset);
    }
    return out;
  }
};

void add_status_set(where_builder& w, status_set set) {
  if (set.empty()) return;
  if (set.bits == (1U << static_cast<unsigned>(core::session_status::active))) {
    w.add("status = 'active'");
    return;
  }
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
  w.add(cond);
}

// A key's project scope: project_id IN ($n, ...).
void add_project_in(where_builder& w, const std::vector<std::string>& projects) {
  if (projects.empty()) return;
  std::string cond = "project_id IN (";
  for (std::size_t i = 0; i < projects.size(); ++i) {
    if (i > 0) cond += ',';
    cond += '$';
    cond += std::to_string(++w.n);
    w.p.add(projects[i]);
  }
  cond += ')';
  w.add(cond);
}

where_builder session_where(const session_filter& f) {
  where_builder w;
  add_status_set(w, f.statuses);
  if (f.project_id) w.add("project_id = $", *f.project_id);
  add_project_in(w, f.project_in);
  if (f.machine_id) w.add("machine_id = $", *f.machine_id);
  if (f.last_heartbeat_before) w.add("last_heartbeat < $", f.last_heartbeat_before->ms);
  if (f.last_heartbeat_at_least) w.add("last_heartbeat >= $", f.last_heartbeat_at_least->ms);
  if (f.last_heartbeat_at_most) w.add("last_heartbeat <= $", f.last_heartbeat_at_most->ms);
  if (f.created_before) w.add("created_at < $", f.created_before->ms);
  if (f.completed_before) w.add("completed_at < $", f.completed_before->ms);
  if (f.sweep_before) w.add("sweep_at < $", f.sweep_before->ms);
  return w;
}

// SQLite sorts NULLs first ascending and last descending; say so explicitly here.
std::string_view order_clause(session_order o) {
  switch (o) {
    case session_order::created_desc:
      return " ORDER BY created_at DESC, id DESC";
    case session_order::started_desc:
      return " ORDER BY started_at DESC, id DESC";
    case session_order::last_heartbeat_asc:
      return " ORDER BY last_heartbeat ASC, id ASC";
    case session_order::completed_desc:
      return " ORDER BY completed_at DESC NULLS LAST, id DESC";
    case session_order::updated_desc:
      return " ORDER BY updated_at DESC, id DESC";
    case session_order::sweep_asc:
      return " ORDER BY sweep_at ASC, id ASC";
  }
  return "";
}

where_builder task_where(const task_filter& f) {
  where_builder w;
  if (f.session_id) w.add("session_id = $", *f.session_id);
  if (f.status) w.add("status = $", core::to_string(*f.status));
  if (f.project_id) w.add("project_id = $", *f.project_id);
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
  if (f.completed_before) w.add("completed_at < $", f.completed_before->ms);
  return w;
}

// Row locks for the read part of a write transaction. Rows a write reads are locked until
// commit (FOR UPDATE), so a read-modify-write is a compare-and-set across instances too.
// Lists of due rows (sweeps, retention, cleanup: a time bound in the filter) skip rows another
// transaction holds (SKIP LOCKED): another instance is handling them, or a heartbeat is about
// to move them; either way this instance must neither wait nor handle them twice.
std::string_view lock_clause(bool write, bool due) {
  if (!write) return "";
  return due ? " FOR UPDATE SKIP LOCKED" : " FOR UPDATE";
}

// All row operations over one connection: read mode (a REPEATABLE READ, READ ONLY transaction
// begun lazily with the first statement, in the same round trip) or write mode (inside the
// writer's transaction; locks as above).
class pg_ops final : public write_txn {
 public:
  enum class mode { read, write };
  pg_ops(connection& c, mode m, deadline until) : c_(c), write_(m == mode::write), until_(until) {}

  bool begun() const { return begun_; }
  bool savepoint_open() const { return savepoint_; }

  // Writer: UPDATEs of rows this transaction has locked are sent with the next round trip
  // instead of costing one (see defer_or_exec). Off in the writer's safe mode.
  void set_defer_updates(bool on) { defer_updates_ = on; }
  // Per write inside a batch. With `hold` (a batch of several writes), the statements the
  // write queues are held back until it makes its first round trip, which opens its savepoint
  // (SAVEPOINT, the held statements, the round trip), or until it ends: kept, they are queued
  // without a savepoint; rolled back, they are dropped unsent. So a write that needs no round
  // trip (a heartbeat on a primed row) costs no savepoint.
  void begin_write(bool hold) {
    journal_.clear();
    held_.clear();
    hold_ = hold;
    savepoint_ = false;
  }
  // Ends the write; true if it opened a savepoint, which the caller releases or rolls back to.
  bool end_write(bool keep) {
    if (keep && !savepoint_) {
      for (auto& h : held_) {
        if (h.liveness) {
          merged_.push_back(std::move(*h.liveness));
        } else {
          send_merged();
          c_.defer(h.sql, h.p);
        }
      }
    }
    held_.clear();
    hold_ = false;
    return savepoint_;
  }
  // Queues the liveness updates that kept writes left without a savepoint (heartbeats) as one
  // multi-row UPDATE. Runs before any other statement reaches the connection, so every later
  // statement of the transaction sees them; the writer calls it before COMMIT.
  void send_merged() {
    static const std::string sql =
        "UPDATE sessions AS s SET status = u.status, last_heartbeat = u.hb, deadline_at = u.dl, "
        "updated_at = u.up FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], "
        "$5::bigint[]) AS u(id, status, hb, dl, up) WHERE s.session_id = u.id";
    if (merged_.empty()) return;
    if (merged_.size() == 1) {
      c_.defer(liveness_sql, liveness_params(merged_.front()));
      merged_.clear();
      return;
    }
    // One row may be updated once per statement: the last update of each session wins.
    std::unordered_set<std::string_view> seen;
    std::string ids = "{", statuses = "{", hbs = "{", dls = "{", ups = "{";
    for (auto it = merged_.rbegin(); it != merged_.rend(); ++it) {
      if (!seen.insert(it->id).second) continue;
      if (ids.size() > 1) {
        ids += ',';
        statuses += ',';
        hbs += ',';
        dls += ',';
        ups += ',';
      }
      append_array_text(ids, it->id);
      append_array_text(statuses, it->status);
      hbs += std::to_string(it->hb);
      dls += std::to_string(it->dl);
      ups += std::to_string(it->up);
    }
    for (auto* a : {&ids, &statuses, &hbs, &dls, &ups})
      *a += '}';
    merged_.clear();
    c_.defer(sql, params().add(ids).add(statuses).add(hbs).add(dls).add(ups));
  }
  // Fetches and locks, in one round trip, the sessions the batch's writes will read first
  // (in id order, so that instances priming overlapping sets cannot deadlock each other).
  // get_session answers from these rows until a write of the batch changes the session.
  void prime_sessions(std::vector<std::string_view> ids) {
    static const std::string sql = std::string("SELECT ") + session_cols +
                                   " FROM sessions WHERE session_id = ANY($1::text[]) "
                                   "ORDER BY session_id FOR UPDATE";
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    std::string array = "{";
    for (auto id : ids) {
      if (array.size() > 1) array += ',';
      append_array_text(array, id);
      primed_[std::string(id)] = std::nullopt;  // absent unless a row comes back
    }
    array += '}';
    auto r = q(sql, params().add(array));
    for (int i = 0; i < r.rows(); ++i) {
      auto s = read_session(r, i);
      mark(key('s', s.session_id));
      auto id = s.session_id;
      primed_[id] = std::move(s);
    }
  }
  void roll_back_write() {
    for (auto it = journal_.rbegin(); it != journal_.rend(); ++it) {
      if (it->second) {
        locked_.erase(it->first);
      } else {
        locked_.insert(it->first);
      }
    }
    journal_.clear();
  }

  std::optional<session> get_session(std::string_view id) override {
    static const std::string rd =
        std::string("SELECT ") + session_cols + " FROM sessions WHERE session_id = $1";
    static const std::string wr = rd + " FOR UPDATE";
    if (!storable(id)) return std::nullopt;
    if (write_) {
      if (auto it = primed_.find(id); it != primed_.end()) return it->second;
    }
    auto r = q(write_ ? wr : rd, params().add(id));
    if (r.rows() == 0) return std::nullopt;
    if (write_) mark(key('s', id));
    return read_session(r, 0);
  }

  std::vector<session> list_sessions(const session_filter& f) override {
    if (!storable(f)) return {};
    auto w = session_where(f);
    const bool due =
        f.sweep_before || f.completed_before || f.created_before || f.last_heartbeat_before;
    if (write_ && f.sweep_before) {
      // Sweeps of all instances take turns: each sees what the previous one committed, so the
      // mass-stall brake counts every overdue session and opens one incident, not one each.
      defer("SELECT pg_advisory_xact_lock($1)", params().add(sweep_lock_key));
    }
    std::string sql = std::string("SELECT ") + session_cols + " FROM sessions" + w.sql;
    sql += order_clause(f.order);
    sql += w.limit(f.limit, f.offset);
    sql += lock_clause(write_, due);
    auto r = q(sql, w.p);
    std::vector<session> out;
    out.reserve(static_cast<std::size_t>(r.rows()));
    for (int i = 0; i < r.rows(); ++i) {
      out.push_back(read_session(r, i));
      if (write_) mark(key('s', out.back().session_id));
    }
    return out;
  }

  std::int64_t count_sessions(const session_filter& f) override {
    if (!storable(f)) return 0;
    auto w = session_where(f);
    auto r = q("SELECT count(*) FROM sessions" + w.sql, w.p);
    return r.int64(0, 0);
  }

  std::vector<std::int64_t> count_sessions_by_status() override {
    std::vector<std::int64_t> out(core::session_status_names.size(), 0);
    auto r = q("SELECT status, count(*) FROM sessions GROUP BY status", params());
    for (int i = 0; i < r.rows(); ++i) {
      if (auto s = core::parse_session_status(r.view(i, 0))) {
        out[static_cast<std::size_t>(*s)] = r.int64(i, 1);
      }
    }
    return out;
  }

  std::optional<task> get_task(std::string_view id) override {
    static const std::string rd =
        std::string("SELECT ") + task_cols + " FROM tasks WHERE task_id = $1";
    static const std::string wr = rd + " FOR UPDATE";
    if (!storable(id)) return std::nullopt;
    auto r = q(write_ ? wr : rd, params().add(id));
    if (r.rows() == 0) return std::nullopt;
    if (write_) mark(key('t', id));
    return read_task(r, 0);
  }

  std::vector<task> list_tasks(const task_filter& f) override {
    if (!storable(f)) return {};
    auto w = task_where(f);
    std::string sql = std::string("SELECT ") + task_cols + " FROM tasks" + w.sql +
                      " ORDER BY created_at DESC, id DESC";
    sql += w.limit(f.limit, f.offset);
    sql += lock_clause(write_, f.completed_before.has_value());
    auto r = q(sql, w.p);
    std::vector<task> out;
    out.reserve(static_cast<std::size_t>(r.rows()));
    for (int i = 0; i < r.rows(); ++i) {
      out.push_back(read_task(r, i));
      if (write_) mark(key('t', out.back().task_id));
    }
    return out;
  }

  std::int64_t count_tasks(const task_filter& f) override {
    if (!storable(f)) return 0;
    auto w = task_where(f);
    auto r = q("SELECT count(*) FROM tasks" + w.sql, w.p);
    return r.int64(0, 0);
  }

  std::optional<machine> get_machine(std::string_view id) override {
    static const std::string rd =
        std::string("SELECT ") + machine_cols + " FROM machines WHERE machine_id = $1";
    static const std::string wr = rd + " FOR UPDATE";
    if (!storable(id)) return std::nullopt;
    auto r = q(write_ ? wr : rd, params().add(id));
    if (r.rows() == 0) return std::nullopt;
    if (write_) mark(key('m', id));
    return read_machine(r, 0);
  }

  std::vector<machine> list_machines(const machine_filter& f) override {
    if (!storable_opt(f.hostname)) return {};
    where_builder w;
    if (f.status) w.add("status = $", core::to_string(*f.status));
    if (f.hostname) w.add("hostname = $", *f.hostname);
    if (f.last_heartbeat_before) w.add("last_heartbeat < $", f.last_heartbeat_before->ms);
    const bool due = f.last_heartbeat_before.has_value();
    if (write_ && due) {
      defer("SELECT pg_advisory_xact_lock($1)", params().add(machine_sweep_lock_key));
    }
    auto r = q(std::string("SELECT ") + machine_cols + " FROM machines" + w.sql +
                   " ORDER BY id ASC" + std::string(lock_clause(write_, due)),
               w.p);
    std::vector<machine> out;
    out.reserve(static_cast<std::size_t>(r.rows()));
    for (int i = 0; i < r.rows(); ++i) {
      out.push_back(read_machine(r, i));
      if (write_) mark(key('m', out.back().machine_id));
    }
    return out;
  }

  std::optional<core::api_key> find_api_key(std::string_view prefix) override {
    static const std::string sql =
        std::string("SELECT ") + key_cols + " FROM api_keys WHERE prefix = $1 ORDER BY id LIMIT 1";
    if (!storable(prefix)) return std::nullopt;
    auto r = q(sql, params().add(prefix));
    if (r.rows() == 0) return std::nullopt;
    return read_key(r, 0);
  }

  std::vector<core::api_key> list_api_keys() override {
    auto r = q(std::string("SELECT ") + key_cols + " FROM api_keys ORDER BY id", params());
    std::vector<core::api_key> out;
    out.reserve(static_cast<std::size_t>(r.rows()));
    for (int i = 0; i < r.rows(); ++i)
      out.push_back(read_key(r, i));
    return out;
  }

  std::vector<core::event> events_after(std::int64_t after, std::int64_t limit) override {
    static const std::string sql =
        std::string("SELECT ") + event_cols + " FROM events WHERE seq > $1 ORDER BY seq LIMIT $2";
    auto r = q(sql, params().add(after).add(limit));
    std::vector<core::event> out;
    out.reserve(static_cast<std::size_t>(r.rows()));
    for (int i = 0; i < r.rows(); ++i)
      out.push_back(read_event(r, i));
    return out;
  }

  std::vector<core::event> session_events(std::string_view session_id, std::int64_t after,
                                          std::int64_t limit) override {
    static const std::string sql = std::string("SELECT ") + event_cols +
                                   " FROM events WHERE session_id = $1 AND session_id <> '' "
                                   "AND seq > $2 ORDER BY seq LIMIT $3";
    if (!storable(session_id)) return {};
    auto r = q(sql, params().add(session_id).add(after).add(limit));
    std::vector<core::event> out;
    out.reserve(static_cast<std::size_t>(r.rows()));
    for (int i = 0; i < r.rows(); ++i)
      out.push_back(read_event(r, i));
    return out;
  }

  std::optional<std::string> get_meta(std::string_view key) override {
    if (!storable(key)) return std::nullopt;
    if (write_) {
      // A read-modify-write of shared service state (the open incident): instances take turns
      // per key. The lock is taken by a statement of its own, so the SELECT that follows in the
      // same round trip reads what the previous holder committed.
      defer("SELECT pg_advisory_xact_lock($1, hashtext($2))",
            params().add(static_cast<std::int64_t>(meta_lock_class)).add(key));
    }
    auto r = q("SELECT value FROM meta WHERE key = $1", params().add(key));
    if (r.rows() == 0) return std::nullopt;
    return r.text(0, 0);
  }

  std::int64_t last_event_seq() override {
    auto r = q("SELECT last FROM event_counter WHERE id = 1", params());
    return r.rows() > 0 ? r.int64(0, 0) : 0;
  }

  // ---------------------------------------------------------------- writes

  void insert_session(const session& s) override {
    static const std::string sql =
        std::string("INSERT INTO sessions (") + session_cols +
        ") VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22)";
    require_storable(s);
    params p;
    bind_session(p, s);
    primed_.erase(s.session_id);
    q(sql, p);
  }

  bool update_session(const session& s) override {
    static const std::string sql =
        "UPDATE sessions SET oid=$1, session_id=$2, project_id=$3, machine_id=$4, "
        "docker_slot=$5, status=$6, last_heartbeat=$7, current_task_id=$8, started_at=$9, "
        "completed_at=$10, metadata=$11, created_at=$12, updated_at=$13, "
        "heartbeat_timeout_s=$14, deadline_at=$15, sweep_at=$16, epoch=$17, directive=$18, "
        "directive_reason=$19, input_timeout_s=$20, awaiting_since=$21, escalated_at=$22 "
        "WHERE session_id = $23";
    require_storable(s);
    params p;
    bind_session(p, s);
    p.add(s.session_id);
    primed_.erase(s.session_id);
    return defer_or_exec(key('s', s.session_id), sql, p);
  }

  bool update_session_liveness(const session& s) override {
    if (!storable(s.session_id)) return false;
    primed_.erase(s.session_id);
    liveness_row row{s.session_id, std::string(core::to_string(s.status)), s.last_heartbeat.ms,
                     s.deadline_at.ms, s.updated_at.ms};
    const std::string k = key('s', s.session_id);
    if (hold_ && !savepoint_ && defer_updates_ && locked_.count(k) != 0) {
      // Sent with the batch's other heartbeats as one statement (send_merged).
      held_.push_back({{}, {}, std::move(row)});
      return true;
    }
    return defer_or_exec(k, liveness_sql, liveness_params(row));
  }

  bool delete_session(std::string_view id) override {
    if (!storable(id)) return false;
    unmark(key('s', id));
    primed_.erase(std::string(id));
    return q("DELETE FROM sessions WHERE session_id = $1", params().add(id)).affected() > 0;
  }

  bool insert_task(const task& t) override {
    static const std::string sql = std::string("INSERT INTO tasks (") + task_cols +
                                   ") VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) "
                                   "ON CONFLICT (task_id) DO NOTHING";
    require_storable(t);
    params p;
    bind_task(p, t);
    return q(sql, p).affected() > 0;
  }

  bool update_task(const task& t) override {
    static const std::string sql =
        "UPDATE tasks SET oid=$1, task_id=$2, session_id=$3, project_id=$4, "
        "github_issue_id=$5, task_name=$6, status=$7, started_at=$8, completed_at=$9, "
        "error_message=$10, metadata=$11, created_at=$12, updated_at=$13 WHERE task_id = $14";
    require_storable(t);
    params p;
    bind_task(p, t);
    p.add(t.task_id);
    return defer_or_exec(key('t', t.task_id), sql, p);
  }

  std::int64_t delete_tasks_of_session(std::string_view session_id) override {
    if (!storable(session_id)) return 0;
    unmark_all('t');
    return q("DELETE FROM tasks WHERE session_id = $1", params().add(session_id)).affected();
  }

  std::int64_t delete_tasks(const task_filter& f) override {
    if (!storable(f)) return 0;
    unmark_all('t');
    auto w = task_where(f);
    return q("DELETE FROM tasks" + w.sql, w.p).affected();
  }

  bool insert_machine(const machine& m) override {
    static const std::string sql = std::string("INSERT INTO machines (") + machine_cols +
                                   ") VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) "
                                   "ON CONFLICT (machine_id) DO NOTHING";
    require_storable(m);
    params p;
    bind_machine(p, m);
    return q(sql, p).affected() > 0;
  }

  bool update_machine(const machine& m) override {
    static const std::string sql =
        "UPDATE machines SET oid=$1, machine_id=$2, hostname=$3, docker_slots=$4, "
        "active_sessions=$5, status=$6, last_heartbeat=$7, metadata=$8, created_at=$9, "
        "updated_at=$10 WHERE machine_id = $11";
    require_storable(m);
    params p;
    bind_machine(p, m);
    p.add(m.machine_id);
    return defer_or_exec(key('m', m.machine_id), sql, p);
  }

  // The counter row is updated (and so locked until commit) by the appending transaction:
  // the seq is gap-free even when the write is rolled back, and appending transactions of all
  // instances commit in seq order.
  std::int64_t append_event(const core::event& e) override {
    static const std::string sql =
        "WITH c AS (UPDATE event_counter SET last = last + 1 WHERE id = 1 RETURNING last) "
        "INSERT INTO events (seq, type, occurred_at, project_id, session_id, task_id, "
        "machine_id, data) SELECT c.last, $1::text, $2::bigint, $3::text, $4::text, $5::text, "
        "$6::text, $7::text FROM c RETURNING seq";
    require_storable("event type", e.type);
    require_storable("project_id", e.project_id);
    require_storable("session_id", e.session_id);
    require_storable("task_id", e.task_id);
    require_storable("machine_id", e.machine_id);
    require_storable("event data", e.data);
    params p;
    p.add(e.type)
        .add(e.occurred_at.ms)
        .add(e.project_id)
        .add(e.session_id)
        .add(e.task_id)
        .add(e.machine_id)
        .add(e.data);
    auto r = q(sql, p);
    if (r.rows() == 0) {
      throw storage_error(storage_error::kind::corrupt, "event_counter row is missing");
    }
    appended_ = true;
    last_seq_ = r.int64(0, 0);
    return last_seq_;
  }

  std::int64_t prune_events(core::timestamp before, std::int64_t keep) override {
    std::int64_t n =
        q("DELETE FROM events WHERE occurred_at < $1", params().add(before.ms)).affected();
    if (keep > 0) {
      n += q("DELETE FROM events WHERE seq <= (SELECT coalesce(max(seq), 0) FROM events) - $1",
             params().add(keep))
               .affected();
    }
    return n;
  }

  void put_meta(std::string_view key, std::string_view value) override {
    require_storable("meta key", key);
    require_storable("meta value", value);
    q("INSERT INTO meta (key, value) VALUES ($1, $2) "
      "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      params().add(key).add(value));
  }

  void insert_ticket(const core::stream_ticket& t) override {
    require_storable("ticket key id", t.key_id);
    q("INSERT INTO event_tickets (hash, key_id, key_db_id, role, expires_at) "
      "VALUES ($1, $2, $3, $4, $5)",
      params()
          .add(t.hash)
          .add(t.key_id)
          .add(t.key_db_id)
          .add(role_name(t.role))
          .add(t.expires_at.ms));
  }

  std::optional<core::stream_ticket> consume_ticket(std::string_view hash,
                                                    core::timestamp now) override {
    if (!storable(hash)) return std::nullopt;
    defer("DELETE FROM event_tickets WHERE expires_at <= $1", params().add(now.ms));
    auto r =
        q("DELETE FROM event_tickets WHERE hash = $1 RETURNING key_id, key_db_id, role, "
          "expires_at",
          params().add(hash));
    if (r.rows() == 0) return std::nullopt;
    core::stream_ticket t;
    t.hash = std::string(hash);
    t.key_id = r.text(0, 0);
    t.key_db_id = r.int64(0, 1);
    t.role = parse_role(r.view(0, 2));
    t.expires_at = {r.int64(0, 3)};
    return t;
  }

  void delete_meta(std::string_view key) override {
    if (!storable(key)) return;
    q("DELETE FROM meta WHERE key = $1", params().add(key));
  }

  void insert_api_key(core::api_key& k) override {
    require_storable("key name", k.name);
    require_storable("key prefix", k.prefix);
    require_storable("key machine_id", k.machine_id);
    for (const auto& p : k.projects)
      require_storable("key project id", p);
    auto r = q(
        "INSERT INTO api_keys (prefix, hash, name, role, created_at, last_used_at, revoked_at, "
        "machine_id, projects, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
        "RETURNING id",
        params()
            .add(k.prefix)
            .add(k.hash)
            .add(k.name)
            .add(role_name(k.role))
            .add(k.created_at.ms)
            .add(opt_ms(k.last_used_at))
            .add(opt_ms(k.revoked_at))
            .add(k.machine_id.empty() ? std::nullopt : std::optional<std::string>(k.machine_id))
            .add(k.projects.empty() ? std::nullopt
                                    : std::optional<std::string>(core::encode_projects(k.projects)))
            .add(opt_ms(k.expires_at)));
    k.id = r.int64(0, 0);
  }

  bool revoke_api_key(std::int64_t id, core::timestamp at) override {
    return q("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
             params().add(at.ms).add(id))
               .affected() > 0;
  }

  bool expire_api_key(std::int64_t id, core::timestamp at) override {
    return q("UPDATE api_keys SET expires_at = $1 WHERE id = $2 AND revoked_at IS NULL AND "
             "(expires_at IS NULL OR expires_at > $1)",
             params().add(at.ms).add(id))
               .affected() > 0;
  }

  void touch_api_key(std::int64_t id, core::timestamp at) override {
    q("UPDATE api_keys SET last_used_at = $1 WHERE id = $2", params().add(at.ms).add(id));
  }

  // Writer bookkeeping: did this batch append events, and the last seq.
  bool appended_ = false;
  std::int64_t last_seq_ = 0;

 private:
  static std::string key(char kind, std::string_view id) {
    std::string k(1, kind);
    k += ':';
    k += id;
    return k;
  }
  void mark(std::string k) {
    if (locked_.insert(k).second) journal_.emplace_back(std::move(k), true);
  }
  void unmark(const std::string& k) {
    if (locked_.erase(k) > 0) journal_.emplace_back(k, false);
  }
  void unmark_all(char kind) {
    std::vector<std::string> gone;
    for (const auto& k : locked_) {
      if (k[0] == kind) gone.push_back(k);
    }
    for (const auto& k : gone)
      unmark(k);
  }
  // An UPDATE of a row this transaction holds locked cannot miss it (nobody else can delete
  // or change it until commit), so it need not cost a round trip: it is queued and travels
  // with the next statement. Should it fail after all, the error surfaces in a later round
  // trip marked deferred, and the writer re-runs the batch without deferring (safe mode).
  bool defer_or_exec(const std::string& k, const std::string& sql, const params& p) {
    if (defer_updates_ && locked_.count(k) != 0) {
      defer(sql, p);
      return true;
    }
    return q(sql, p).affected() > 0;
  }

  void defer(const std::string& sql, const params& p) {
    if (hold_ && !savepoint_) {
      held_.push_back({sql, p, std::nullopt});
    } else {
      send_merged();
      c_.defer(sql, p);
    }
  }

  result q(const std::string& sql, const params& p) {
    if (!write_ && !begun_) {
      c_.defer("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
      begun_ = true;
    }
    send_merged();
    if (hold_ && !savepoint_) {
      c_.defer("SAVEPOINT w");
      savepoint_ = true;
      for (const auto& h : held_) {
        if (h.liveness) {
          c_.defer(liveness_sql, liveness_params(*h.liveness));
        } else {
          c_.defer(h.sql, h.p);
        }
      }
      held_.clear();
    }
    return c_.exec(sql, p, until_);
  }

  struct liveness_row {
    std::string id;
    std::string status;
    std::int64_t hb = 0;
    std::int64_t dl = 0;
    std::int64_t up = 0;
  };
  static constexpr const char* liveness_sql =
      "UPDATE sessions SET status=$1, last_heartbeat=$2, deadline_at=$3, updated_at=$4 "
      "WHERE session_id = $5";
  static params liveness_params(const liveness_row& r) {
    params p;
    p.add(r.status).add(r.hb).add(r.dl).add(r.up).add(r.id);
    return p;
  }
  // A statement held back by a write (see begin_write); a liveness update only as its row (its
  // statement is made when it is sent alone, see q()).
  struct held_stmt {
    std::string sql;
    params p;
    std::optional<liveness_row> liveness;
  };
  result q(const char* sql, const params& p) { return q(std::string(sql), p); }

  connection& c_;
  bool write_;
  deadline until_;
  bool begun_ = false;
  bool defer_updates_ = false;
  std::unordered_set<std::string> locked_;             // "s:<id>", "t:<id>", "m:<id>"
  std::vector<std::pair<std::string, bool>> journal_;  // (key, inserted) in this write
  // Sessions fetched by prime_sessions and not changed since (nullopt: no such session).
  std::unordered_map<std::string, std::optional<session>, text_hash, std::equal_to<>> primed_;
  bool hold_ = false;       // this write's statements are held back (see begin_write)
  bool savepoint_ = false;  // this write has opened its savepoint
  std::vector<held_stmt> held_;
  std::vector<liveness_row> merged_;  // kept writes' liveness updates not sent yet
};

using completion = asio::any_completion_handler<void(std::exception_ptr)>;

}  // namespace

// ------------------------------------------------------------------------------------ jobs

struct pg_store::write_job {
  write_fn fn;                    // run_write: owned
  const write_fn* ref = nullptr;  // write_now: the caller's
  std::exception_ptr error;
  completion handler;
  asio::any_io_executor executor;  // where the waiting coroutine resumes
  deadline until;
  int retries = 0;  // deadlocks / serialization failures this write took part in
  bool given_up = false;
  std::mutex* sync_mu = nullptr;
  std::condition_variable* sync_cv = nullptr;
  bool* sync_done = nullptr;
  std::string session_hint{};  // the session the write reads first (may be empty)

  bool call(write_txn& tx) const { return ref != nullptr ? (*ref)(tx) : fn(tx); }
};

struct pg_store::read_job {
  read_fn fn;
  const read_fn* ref = nullptr;
  std::exception_ptr error;
  completion handler;
  asio::any_io_executor executor;
  deadline until;
  bool fail_fast = false;  // do not wait for a reconnect (synchronous callers)
  std::mutex* sync_mu = nullptr;
  std::condition_variable* sync_cv = nullptr;
  bool* sync_done = nullptr;

  void call(read_view& v) const {
    if (ref != nullptr) {
      (*ref)(v);
    } else {
      fn(v);
    }
  }
};

namespace {

// Resumes the waiting coroutine on its own executor, or wakes the synchronous caller.
template <class Job>
void complete(Job* j) {
  if (j->sync_cv != nullptr) {
    std::lock_guard lk(*j->sync_mu);
    *j->sync_done = true;
    j->sync_cv->notify_one();
    return;
  }
  auto h = std::move(j->handler);
  auto ep = j->error;
  auto ex = j->executor;
  delete j;
  asio::post(ex, [h = std::move(h), ep]() mutable { std::move(h)(ep); });
}

std::exception_ptr unavailable(const std::string& why) {
  return std::make_exception_ptr(storage_error(storage_error::kind::unavailable, why));
}

}  // namespace

// ------------------------------------------------------------------------------- lifecycle

pg_store::pg_store(store_options opts, obs::registry* metrics)
    : opts_(std::move(opts)),
      breaker_(breaker::options{opts_.backoff_min, opts_.backoff_max, opts_.timeout}) {
  opts_.pool_size = std::max(1, opts_.pool_size);
  conn_opts_.conninfo = opts_.conninfo;
  conn_opts_.application_name = opts_.application_name;
  conn_opts_.pipeline = true;
  conn_opts_.statement_timeout = opts_.timeout;
  // The database may be starting alongside us: keep trying for `timeout`.
  const deadline until = steady::now() + opts_.timeout;
  for (;;) {
    try {
      writer_conn_ = connection::open(conn_opts_, until);
      break;
    } catch (const connection_lost& e) {
      if (steady::now() + std::chrono::milliseconds(200) >= until) {
        throw storage_error(storage_error::kind::unavailable,
                            std::string(e.what()) + " (" + redact(opts_.conninfo) + ")");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  // Another instance may be migrating: its lock is waited for, not counted against `timeout`.
  apply_migrations(*writer_conn_,
                   steady::now() + std::max(opts_.timeout, std::chrono::milliseconds(60'000)));
  writer_pid_ = writer_conn_->backend_pid();
  if (metrics != nullptr) {
    batch_size_ = &metrics->add_histogram(
        "statetrack_store_commit_batch_size", "Writes per group commit (one fsync each)",
        {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}, {{"backend", "postgres"}});
    commit_seconds_ = &metrics->add_histogram(
        "statetrack_store_commit_seconds", "Time to execute and commit one batch",
        obs::latency_bounds_seconds(), {{"backend", "postgres"}});
    connects_ = &metrics->add_counter("statetrack_store_connects_total",
                                      "Database connections opened (reconnects included)",
                                      {{"backend", "postgres"}});
    metrics->add_callback(
        "statetrack_store_pool_connections",
        "PostgreSQL reader pool: connections by state (busy running a read, idle), and reads "
        "waiting for one",
        "gauge", [this] {
          const auto busy = static_cast<double>(readers_busy_.load(std::memory_order_relaxed));
          double waiting = 0;
          {
            std::lock_guard lk(read_mu_);
            waiting = static_cast<double>(read_queue_.size());
          }
          return std::vector<std::pair<obs::labels, double>>{
              {{{"state", "busy"}}, busy},
              {{{"state", "idle"}}, static_cast<double>(opts_.pool_size) - busy},
              {{{"state", "waiting"}}, waiting}};
        });
    retries_ = &metrics->add_counter(
        "statetrack_store_batch_retries_total",
        "Write batches retried after a deadlock, serialization failure or lost connection",
        {{"backend", "postgres"}});
  }
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  writer_ = std::thread([this] { writer_loop(); });
  for (int i = 0; i < opts_.pool_size; ++i)
    readers_.emplace_back([this] { reader_loop(); });
  if (opts_.listen) listener_ = std::thread([this] { listener_loop(); });
}

pg_store::~pg_store() {
  close();
}

void pg_store::close() {
  {
    std::lock_guard lk(close_mu_);
    if (closed_) return;
    closed_ = true;
  }
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  {
    std::lock_guard lk(read_mu_);
    readers_stopping_ = true;
  }
  read_cv_.notify_all();
  for (auto& t : readers_) {
    if (t.joinable()) t.join();
  }
  listener_stopping_ = true;
  if (wake_fd_ >= 0) {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
  }
  if (listener_.joinable()) listener_.join();
  if (wake_fd_ >= 0) ::close(wake_fd_);
  wake_fd_ = -1;
}

std::unique_ptr<connection> pg_store::connect(deadline until) {
  auto c = connection::open(conn_opts_, until);
  if (connects_ != nullptr) connects_->inc();
  return c;
}

// Makes `c` usable: keeps a healthy connection, otherwise opens one if the breaker allows an
// attempt now (waiting for the next allowed attempt, up to the job's deadline, when `wait`).
bool pg_store::ensure_connected(std::unique_ptr<connection>& c, deadline job_deadline, bool wait) {
  if (c && !c->broken()) return true;
  c.reset();
  const auto now = steady::now();
  if (!breaker_.try_claim(now)) {
    if (wait) breaker_.wait(job_deadline);
    return false;
  }
  // A connection attempt gets at least a moment, even for a job about to expire.
  const auto until =
      std::clamp(job_deadline, now + std::chrono::milliseconds(250), now + opts_.timeout);
  try {
    c = connect(until);
    breaker_.record_success();
    return true;
  } catch (const storage_error& e) {
    breaker_.record_failure(e.what(), steady::now());
    return false;
  }
}

std::exception_ptr pg_store::unavailable_error() const {
  auto why = breaker_.last_error();
  return unavailable(why.empty() ? "timed out waiting for PostgreSQL"
                                 : "PostgreSQL is unavailable: " + why);
}

std::string pg_store::last_error() const {
  return breaker_.last_error();
}

std::string pg_store::unavailable_reason() const {
  if (breaker_.up()) return {};
  const auto now = steady::now();
  const std::string err = breaker_.last_error();
  std::string cause = "connection failed";
  if (err.find("timed out") != std::string::npos) {
    cause = "connection timed out";
  } else if (err.find("refused") != std::string::npos) {
    cause = "connection refused";
  } else if (err.find("read-write") != std::string::npos ||
             err.find("read-only") != std::string::npos) {
    cause = "no read-write server among the hosts";
  } else if (err.find("authentication") != std::string::npos ||
             err.find("password") != std::string::npos) {
    cause = "authentication failed";
  } else if (err.find("does not exist") != std::string::npos) {
    cause = "database does not exist";
  } else if (err.find("shutting down") != std::string::npos ||
             err.find("starting up") != std::string::npos) {
    cause = "server shutting down or starting up";
  }
  const double down_s = static_cast<double>(breaker_.down_for(now).count()) / 1000.0;
  const auto next = breaker_.next_attempt();
  const double next_s = next > now ? std::chrono::duration<double>(next - now).count() : 0.0;
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "PostgreSQL unreachable for %.1f s (%s); %s; next reconnect attempt in %.1f s",
                down_s, cause.c_str(),
                breaker_.open(now) ? "circuit open: requests fail at once"
                                   : "requests wait up to the database timeout",
                next_s);
  return buf;
}

// ---------------------------------------------------------------------------------- writes

void pg_store::fail_job(write_job* j, std::exception_ptr ep) {
  j->error = std::move(ep);
  complete(j);
}

// Waiting coroutines are resumed by one function posted to an I/O thread, which then posts
// each to its own executor: one cross-thread wake-up per batch, not per write.
void pg_store::finish(std::vector<write_job*>& jobs) {
  std::vector<write_job*> async_jobs;
  for (write_job* j : jobs) {
    if (j->sync_cv != nullptr) {
      complete(j);
    } else {
      async_jobs.push_back(j);
    }
  }
  jobs.clear();
  if (async_jobs.empty()) return;
  auto ex = async_jobs.front()->executor;
  asio::post(ex, [list = std::move(async_jobs)] {
    for (write_job* j : list)
      complete(j);
  });
}

void pg_store::enqueue_write(write_job* j) {
  if (breaker_.fail_fast(steady::now())) {
    // Circuit open: the database has been unreachable for a while; do not queue.
    fail_job(j, unavailable_error());
    return;
  }
  {
    std::lock_guard lk(mu_);
    if (!stopping_) {
      queue_.push_back(j);
      queue_depth_.store(queue_.size(), std::memory_order_relaxed);
      if (j->sync_cv != nullptr) {
        cv_.notify_one();
      } else if (!wake_pending_) {
        // Wake the writer after the I/O thread has handled every request that is ready now,
        // not after each one: bigger batches, fewer context switches.
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
  fail_job(j, unavailable("store is shutting down"));
}

asio::awaitable<void> pg_store::run_write(write_fn fn) {
  return run_session_write({}, std::move(fn));
}

asio::awaitable<void> pg_store::run_session_write(std::string session_id, write_fn fn) {
  auto initiate = [this, &fn, &session_id](auto handler) {
    auto ex = asio::get_associated_executor(handler);
    // Built in place: Boost 1.81's any_completion_handler move assignment re-wraps itself.
    auto* j = new write_job{std::move(fn),
                            nullptr,
                            nullptr,
                            completion(std::move(handler)),
                            ex,
                            steady::now() + opts_.timeout};
    j->session_hint = std::move(session_id);
    enqueue_write(j);
  };
  // A non-null exception_ptr completion is rethrown in the awaiting coroutine by Asio.
  co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr)>(
      initiate, asio::use_awaitable);
}

void pg_store::write_now(const write_fn& fn) {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  write_job j;
  j.ref = &fn;
  j.until = steady::now() + opts_.timeout;
  j.sync_mu = &m;
  j.sync_cv = &cv;
  j.sync_done = &done;
  enqueue_write(&j);
  std::unique_lock lk(m);
  cv.wait(lk, [&] { return done; });
  if (j.error) std::rethrow_exception(j.error);
}

void pg_store::writer_loop() {
  std::vector<write_job*> batch;
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
    run_batch(batch);
    batch.clear();
  }
  writer_conn_.reset();
}

// Runs one batch to completion: every job is completed exactly once, with its own outcome,
// with a storage error when the database cannot be reached before its deadline, or when the
// write kept being chosen as a deadlock victim.
void pg_store::run_batch(std::vector<write_job*>& batch) {
  bool safe = false;  // after a deferred statement failed: every statement waits for its result
  for (;;) {
    const auto now = steady::now();
    const bool open = breaker_.fail_fast(now);
    std::vector<write_job*> done;
    std::erase_if(batch, [&](write_job* j) {
      if (j->given_up) {
        done.push_back(j);
        return true;
      }
      if (open || now >= j->until) {
        j->error = unavailable_error();
        done.push_back(j);
        return true;
      }
      return false;
    });
    if (!done.empty()) {
      failed_commits_.fetch_add(1, std::memory_order_relaxed);
      finish(done);
    }
    if (batch.empty()) return;
    deadline until = batch.front()->until;
    for (write_job* j : batch)
      until = std::min(until, j->until);
    // A write about to expire must not cut the round trips of the whole batch short.
    until = std::max(until, now + std::chrono::milliseconds(500));
    if (!ensure_connected(writer_conn_, until, true)) continue;
    writer_pid_ = writer_conn_->backend_pid();
    batch_result r = batch_result::lost;
    try {
      r = try_batch(batch, until, safe);
    } catch (const connection_lost&) {
      // A statement queued outside a write (BEGIN, a savepoint, the merged update) could not
      // be sent: nothing was committed.
      r = batch_result::lost;
    }
    if (r == batch_result::done) {
      finish(batch);
      return;
    }
    batch_retries_.fetch_add(1, std::memory_order_relaxed);
    if (retries_ != nullptr) retries_->inc();
    if (r == batch_result::unsafe) safe = true;
    if (r == batch_result::lost) {
      // Nothing was committed: reconnect (a stale connection after a restart or failover) and
      // run the whole batch again, within the jobs' deadlines.
      writer_conn_.reset();
      writer_pid_ = 0;
    }
  }
}

pg_store::batch_result pg_store::try_batch(std::vector<write_job*>& batch, deadline until,
                                           bool safe) {
  const auto started = steady::now();
  connection& c = *writer_conn_;
  pg_ops tx(c, pg_ops::mode::write, until);
  tx.set_defer_updates(!safe);
  const bool single = batch.size() == 1;
  bool any_kept = false;
  std::vector<bool> kept(batch.size(), false);
  auto rollback = [&] {
    try {
      c.exec("ROLLBACK", until);
    } catch (const storage_error&) {  // NOLINT(bugprone-empty-catch): a broken connection is
    }                                 // replaced before the next batch
  };
  // A deadlock victim or serialization failure: the whole transaction goes (releasing every
  // lock, which is what breaks the cycle) and the batch runs again; a write that keeps being
  // chosen fails alone with the error.
  auto retry_after = [&](const std::vector<write_job*>& blamed, const std::exception_ptr& ep) {
    rollback();
    for (write_job* j : blamed) {
      if (++j->retries > opts_.max_deadlock_retries) {
        j->error = own_copy(ep);  // one exception object per coroutine (job_error.hpp)
        j->given_up = true;
      }
    }
    return batch_result::retry;
  };

  c.defer("BEGIN");
  if (!safe) {
    std::vector<std::string_view> hinted;
    for (const write_job* j : batch) {
      if (!j->session_hint.empty() && storable(j->session_hint)) hinted.push_back(j->session_hint);
    }
    if (!hinted.empty()) {
      try {
        tx.prime_sessions(std::move(hinted));
      } catch (const connection_lost&) {
        return batch_result::lost;
      } catch (const pg_error&) {
        // Even a deadlock here is no write's fault: run the batch again the plain way, where
        // each write takes its own locks and a deadlock is charged to the write that hit it.
        rollback();
        return batch_result::unsafe;
      }
    }
  }
  for (std::size_t i = 0; i < batch.size(); ++i) {
    write_job* j = batch[i];
    j->error = nullptr;
    const bool appended_before = tx.appended_;
    const std::int64_t seq_before = tx.last_seq_;
    bool keep = false;
    tx.begin_write(!single);
    try {
      keep = j->call(tx);
    } catch (const connection_lost&) {
      return batch_result::lost;
    } catch (const pg_error& e) {
      if (e.retryable()) return retry_after({j}, std::current_exception());
      if (e.deferred() && !safe) {
        // An earlier write's deferred statement failed: whose is unknown here.
        rollback();
        return batch_result::unsafe;
      }
      j->error = std::current_exception();
    } catch (...) {
      j->error = std::current_exception();
    }
    if (c.broken()) return batch_result::lost;
    // The transaction status is that of this write's last round trip, if it made one.
    if (keep && (single || tx.savepoint_open()) && c.in_failed_transaction()) {
      // The write swallowed a statement error: its changes cannot be kept.
      keep = false;
      j->error = std::make_exception_ptr(
          storage_error(storage_error::kind::other, "a statement failed inside the write"));
    }
    if (tx.end_write(keep)) {
      if (!keep) c.defer("ROLLBACK TO SAVEPOINT w");
      c.defer("RELEASE SAVEPOINT w");
    }
    if (!keep) {
      tx.appended_ = appended_before;
      tx.last_seq_ = seq_before;
      tx.roll_back_write();
    }
    kept[i] = keep;
    any_kept = any_kept || keep;
  }
  if (!any_kept) {
    rollback();
    return batch_result::done;
  }
  tx.send_merged();
  if (tx.appended_) {
    // Delivered to every listening instance at commit, in commit order.
    c.defer("SELECT pg_notify('statetrack_events', $1)",
            params().add(std::to_string(tx.last_seq_)));
  }
  try {
    auto r = c.exec("COMMIT", until);
    if (r.command_tag() != "COMMIT") {
      throw storage_error(storage_error::kind::other, "PostgreSQL rolled the transaction back");
    }
  } catch (const connection_lost& e) {
    // The COMMIT may or may not have been applied. Never report as durable what is not known
    // to be; the clients retry (their writes are compare-and-sets or idempotent).
    auto ep =
        unavailable(std::string("connection lost during COMMIT (outcome unknown): ") + e.what());
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (kept[i]) batch[i]->error = own_copy(ep);
    }
    writer_conn_.reset();
    writer_pid_ = 0;
    failed_commits_.fetch_add(1, std::memory_order_relaxed);
    return batch_result::done;
  } catch (const pg_error& e) {
    if (e.deferred() && !e.retryable() && !safe) {
      rollback();
      return batch_result::unsafe;
    }
    if (e.retryable()) {
      std::vector<write_job*> blamed;
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (kept[i]) blamed.push_back(batch[i]);
      }
      return retry_after(blamed, std::current_exception());
    }
    auto ep = std::current_exception();
    rollback();
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (kept[i]) batch[i]->error = own_copy(ep);
    }
    failed_commits_.fetch_add(1, std::memory_order_relaxed);
    return batch_result::done;
  } catch (const storage_error&) {
    auto ep = std::current_exception();
    rollback();
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (kept[i]) batch[i]->error = own_copy(ep);
    }
    failed_commits_.fetch_add(1, std::memory_order_relaxed);
    return batch_result::done;
  }
  commits_.fetch_add(1, std::memory_order_relaxed);
  writes_.fetch_add(batch.size(), std::memory_order_relaxed);
  if (batch_size_ != nullptr) batch_size_->observe(static_cast<double>(batch.size()));
  if (commit_seconds_ != nullptr) {
    commit_seconds_->observe(std::chrono::duration<double>(steady::now() - started).count());
  }
  if (tx.appended_) notify_committed(tx.last_seq_);
  return batch_result::done;
}

// ----------------------------------------------------------------------------------- reads

void pg_store::enqueue_read(read_job* j) {
  const auto now = steady::now();
  if (breaker_.fail_fast(now) || (j->fail_fast && !breaker_.up())) {
    j->error = unavailable_error();
    complete(j);
    return;
  }
  {
    std::lock_guard lk(read_mu_);
    if (!readers_stopping_) {
      read_queue_.push_back(j);
      read_cv_.notify_one();
      return;
    }
  }
  j->error = unavailable("store is shutting down");
  complete(j);
}

asio::awaitable<void> pg_store::run_read(read_fn fn) {
  auto initiate = [this, &fn](auto handler) {
    auto ex = asio::get_associated_executor(handler);
    auto* j = new read_job{std::move(fn),
                           nullptr,
                           nullptr,
                           completion(std::move(handler)),
                           ex,
                           steady::now() + opts_.timeout};
    enqueue_read(j);
  };
  co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr)>(
      initiate, asio::use_awaitable);
}

void pg_store::read_now(const read_fn& fn) {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  read_job j;
  j.ref = &fn;
  j.until = steady::now() + opts_.timeout;
  // Synchronous callers include I/O threads (health, metrics, the event hub): while the
  // database is known to be unreachable they get the error at once instead of waiting.
  j.fail_fast = true;
  j.sync_mu = &m;
  j.sync_cv = &cv;
  j.sync_done = &done;
  enqueue_read(&j);
  std::unique_lock lk(m);
  cv.wait(lk, [&] { return done; });
  if (j.error) std::rethrow_exception(j.error);
}

void pg_store::reader_loop() {
  std::unique_ptr<connection> conn;
  for (;;) {
    read_job* j = nullptr;
    {
      std::unique_lock lk(read_mu_);
      read_cv_.wait(lk, [&] { return !read_queue_.empty() || readers_stopping_; });
      if (read_queue_.empty()) break;
      j = read_queue_.front();
      read_queue_.pop_front();
    }
    readers_busy_.fetch_add(1, std::memory_order_relaxed);
    run_read_job(conn, j);
    readers_busy_.fetch_sub(1, std::memory_order_relaxed);
    complete(j);
  }
}

void pg_store::run_read_job(std::unique_ptr<connection>& conn, read_job* j) {
  for (int attempt = 0;; ++attempt) {
    const auto now = steady::now();
    if (now >= j->until || breaker_.fail_fast(now)) {
      j->error = unavailable_error();
      return;
    }
    if (!ensure_connected(conn, j->until, !j->fail_fast)) {
      if (j->fail_fast && !breaker_.up()) {
        j->error = unavailable_error();
        return;
      }
      continue;
    }
    pg_ops view(*conn, pg_ops::mode::read, j->until);
    try {
      j->call(view);
    } catch (const connection_lost&) {
      conn.reset();
      // A pooled connection that went stale (server restart, failover): again on a new one.
      if (attempt < 2) continue;
      j->error = std::current_exception();
      return;
    } catch (...) {
      j->error = std::current_exception();
      if (view.begun() && conn && !conn->broken()) {
        try {
          conn->defer("ROLLBACK");
          conn->send_queued(j->until);
        } catch (const storage_error&) {
          conn.reset();
        }
      }
      return;
    }
    j->error = nullptr;
    if (view.begun()) {
      // End the snapshot without waiting: the COMMIT's result is read with the next read.
      try {
        conn->defer("COMMIT");
        conn->send_queued(j->until);
      } catch (const storage_error&) {
        conn.reset();
      }
    }
    return;
  }
}

std::optional<double> pg_store::ping() {
  if (!breaker_.up()) return std::nullopt;
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  const read_fn fn = [](read_view& v) { v.last_event_seq(); };
  read_job j;
  j.ref = &fn;
  const auto t0 = steady::now();
  // Health probes must answer quickly even when the database hangs.
  j.until = t0 + std::min(opts_.timeout, std::chrono::milliseconds(1000));
  j.fail_fast = true;
  j.sync_mu = &m;
  j.sync_cv = &cv;
  j.sync_done = &done;
  enqueue_read(&j);
  std::unique_lock lk(m);
  cv.wait(lk, [&] { return done; });
  if (j.error) return std::nullopt;
  return std::chrono::duration<double, std::milli>(steady::now() - t0).count();
}

// --------------------------------------------------------------------------------- events

void pg_store::notify_committed(std::int64_t last_seq) {
  std::lock_guard lk(cb_mu_);
  for (auto& cb : event_callbacks_)
    cb(last_seq);
}

void pg_store::on_events_committed(std::function<void(std::int64_t)> cb) {
  std::lock_guard lk(cb_mu_);
  event_callbacks_.push_back(std::move(cb));
}

// LISTEN statetrack_events on a connection of its own. Other instances' commits arrive as
// notifications carrying their last seq; this instance's own are skipped (announced by the
// writer already). After every (re)connect the current head is announced, covering whatever
// was committed while this instance was not listening. Also the breaker's prober when idle.
void pg_store::listener_loop() {
  connect_options lo = conn_opts_;
  lo.pipeline = false;
  std::unique_ptr<connection> conn;
  constexpr auto idle_check = std::chrono::seconds(5);
  auto sleep_until = [&](deadline t) {
    const auto now = steady::now();
    if (t <= now) return;
    pollfd p{wake_fd_, POLLIN, 0};
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(t - now).count();
    ::poll(&p, 1, static_cast<int>(std::min<long>(ms, 1000)));
  };
  while (!listener_stopping_) {
    if (!conn || conn->broken()) {
      conn.reset();
      const auto now = steady::now();
      if (!breaker_.try_claim(now)) {
        sleep_until(std::max(breaker_.next_attempt(), now + std::chrono::milliseconds(20)));
        continue;
      }
      try {
        conn = connection::open(lo, now + opts_.timeout);
        if (connects_ != nullptr) connects_->inc();
        breaker_.record_success();
      } catch (const storage_error& e) {
        breaker_.record_failure(e.what(), steady::now());
        continue;
      }
      try {
        const auto until = steady::now() + opts_.timeout;
        conn->exec("LISTEN statetrack_events", until);
        auto r = conn->exec("SELECT last FROM event_counter WHERE id = 1", until);
        if (r.rows() > 0 && r.int64(0, 0) > 0) notify_committed(r.int64(0, 0));
      } catch (const storage_error&) {
        conn.reset();
        sleep_until(steady::now() + opts_.backoff_min);
        continue;
      }
    }
    try {
      const auto waited_from = steady::now();
      conn->wait_readable(waited_from + idle_check, wake_fd_);
      if (listener_stopping_) break;
      if (steady::now() - waited_from >= idle_check && PQisBusy(conn->raw()) == 0) {
        // Quiet for a while: a round trip proves the connection alive (a frozen server or a
        // silent network would otherwise leave this instance deaf) and announces anything a
        // lost notification did not.
        auto r = conn->exec("SELECT last FROM event_counter WHERE id = 1",
                            steady::now() + opts_.timeout);
        if (r.rows() > 0 && r.int64(0, 0) > 0) notify_committed(r.int64(0, 0));
      }
      conn->consume_input();
      std::int64_t newest = 0;
      const int own = writer_pid_.load();
      while (PGnotify* n = PQnotifies(conn->raw())) {
        if (n->be_pid != own && n->extra != nullptr) {
          std::int64_t seq = 0;
          const std::string_view s = n->extra;
          std::from_chars(s.data(), s.data() + s.size(), seq);
          newest = std::max(newest, seq);
        }
        PQfreemem(n);
      }
      if (newest > 0) notify_committed(newest);
    } catch (const storage_error&) {
      conn.reset();
    }
  }
}

// ----------------------------------------------------------------------------------- misc

store_stats pg_store::stats() const {
  return {commits_.load(), writes_.load(), failed_commits_.load(), queue_depth_.load(),
          batch_retries_.load()};
}

std::vector<int> pg_store::migrate(const std::string& conninfo, std::chrono::milliseconds timeout) {
  connect_options o;
  o.conninfo = conninfo;
  o.statement_timeout = std::chrono::milliseconds(0);
  std::unique_ptr<connection> c;
  try {
    c = connection::open(o, steady::now() + timeout);
  } catch (const connection_lost& e) {
    throw storage_error(storage_error::kind::unavailable,
                        std::string(e.what()) + " (" + redact(conninfo) + ")");
  }
  return apply_migrations(*c, steady::now() + timeout);
}

}  // namespace statetrack::storage::postgres
