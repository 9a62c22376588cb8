// Session rules from the contract (reference-api.md §4.2–§4.6, §6.1), with its listed bugs
// fixed as recommended: literal routes, merged recovery metadata, no partial cleanup.
#include "core/session_service.hpp"

#include <algorithm>
#include <cmath>

#include <boost/json/array.hpp>
#include <boost/json/value.hpp>

#include "core/events.hpp"
#include "core/metadata.hpp"

namespace statetrack::core {

namespace json = boost::json;
using storage::read_view;
using storage::session_filter;
using storage::session_order;
using storage::status_set;
using storage::write_txn;

namespace {

constexpr std::int64_t day_ms = 86'400'000;

bool is_terminal_for_archive(session_status s) {
  return s == session_status::completed || s == session_status::failed ||
         s == session_status::archived;
}

// Re-arms the liveness deadline from the last heartbeat, and the sweep index with it.
void rearm(session& s) {
  s.deadline_at = s.last_heartbeat + static_cast<std::int64_t>(s.heartbeat_timeout_s) * 1000;
  s.sweep_at = s.deadline_at;
}

std::string iso(timestamp t) {
  return format_iso(t);
}

// Moves a session into `to`, keeping the liveness invariants: an active session has
// sweep_at <= deadline_at and never less than a full timeout from when it (re)starts; an
// awaiting_input session is keyed by its escalation time; leaving awaiting_input forgets it.
void enter_status(session& s, session_status to, timestamp now, bool explicit_heartbeat) {
  const session_status from = s.status;
  s.status = to;
  if (to == from) return;
  if (from == session_status::awaiting_input) {
    s.awaiting_since.reset();
    s.escalated_at.reset();
  }
  if (to == session_status::active && !explicit_heartbeat) {
    s.deadline_at =
        std::max(s.deadline_at, now + static_cast<std::int64_t>(s.heartbeat_timeout_s) * 1000);
    s.sweep_at = s.deadline_at;
  } else if (to == session_status::awaiting_input) {
    s.awaiting_since = now;
    s.escalated_at.reset();
    s.sweep_at =
        s.input_timeout_s ? now + static_cast<std::int64_t>(*s.input_timeout_s) * 1000 : never;
  }
}

// Escalation time of an awaiting_input session, or `never`.
timestamp escalation_due(const session& s, timestamp now) {
  if (s.escalated_at || !s.input_timeout_s) return never;
  return s.awaiting_since.value_or(now) + static_cast<std::int64_t>(*s.input_timeout_s) * 1000;
}

// Epoch check for requests that carry one (fencing); requests without one are old clients.
std::optional<error> check_epoch(const session& s, const std::optional<std::int64_t>& presented) {
  if (presented && *presented != s.epoch) return stale_epoch(s, *presented);
  return std::nullopt;
}

constexpr const char* incident_key = "incident.mass_stall";

std::optional<mass_stall_incident> parse_incident(const std::optional<std::string>& text) {
  if (!text) return std::nullopt;
  auto o = parse_metadata(*text);
  mass_stall_incident inc;
  if (auto* v = o.if_contains("since"); v != nullptr && v->is_int64()) inc.since = {v->as_int64()};
  if (auto* v = o.if_contains("overdue"); v != nullptr && v->is_int64())
    inc.overdue = v->as_int64();
  if (auto* v = o.if_contains("active"); v != nullptr && v->is_int64()) inc.active = v->as_int64();
  if (auto* v = o.if_contains("cleared"); v != nullptr && v->is_bool()) {
    inc.cleared_by_operator = v->as_bool();
  }
  return inc;
}

std::string incident_text(const mass_stall_incident& inc) {
  json::object o;
  o["since"] = inc.since.ms;
  o["overdue"] = inc.overdue;
  o["active"] = inc.active;
  o["cleared"] = inc.cleared_by_operator;
  return serialize_metadata(o);
}

event incident_event(std::string_view type, const mass_stall_incident& inc, timestamp now) {
  event e;
  e.type = type;
  e.occurred_at = now;
  json::object o;
  o["since"] = format_iso(inc.since);
  o["overdue_sessions"] = inc.overdue;
  o["active_sessions"] = inc.active;
  o["cleared_by_operator"] = inc.cleared_by_operator;
  e.data = serialize_metadata(o);
  return e;
}

json::object recovery_of(const json::object& metadata) {
  auto* r = metadata.if_contains("recovery");
  if (r != nullptr && r->is_object()) return r->as_object();
  return {};
}

}  // namespace

error session_not_found(std::string_view id) {
  return make_error(errc::not_found, "Session with ID " + std::string(id) + " not found");
}

error stale_epoch(const session& s, std::int64_t presented) {
  error e = make_error(errc::stale_epoch,
                       "Session " + s.session_id + " is at epoch " + std::to_string(s.epoch) +
                           "; this request carries epoch " + std::to_string(presented) +
                           ". The session was recovered elsewhere: stop working on it.");
  e.extra["directive"] = "stop";
  e.extra["current_epoch"] = s.epoch;
  return e;
}

std::int64_t recovery_attempts(const json::object& metadata) {
  auto r = recovery_of(metadata);
  auto* n = r.if_contains("recovery_attempts");
  if (n == nullptr) return 0;
  if (n->is_int64()) return n->as_int64();
  if (n->is_uint64()) return static_cast<std::int64_t>(n->as_uint64());
  if (n->is_double()) return static_cast<std::int64_t>(n->as_double());
  return 0;
}

std::int64_t recovery_attempts(const session& s) {
  if (s.metadata.find("recovery") == std::string::npos) return 0;
  return recovery_attempts(parse_metadata(s.metadata));
}

// The shape of most session writes: read the row (404 if missing), let `change` apply the rule
// (or refuse with an error), stamp updated_at, write the whole row and append `event_type` —
// one transaction, so the rule always sees the state it changes.
template <class Change>
task_of<session> session_service::transition(std::string id, std::string_view event_type,
                                             Change change) {
  auto fn = [&](write_txn& tx) -> result<session> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_session(id);
    if (!found) return session_not_found(id);
    session s = std::move(*found);
    if (std::optional<error> refused = change(s, now, tx)) return std::move(*refused);
    s.updated_at = now;
    tx.update_session(s);
    tx.append_event(session_event(event_type, s, now));
    return s;
  };
  co_return co_await storage::write(store_, std::move(fn), id);
}

// POST /sessions
task_of<session> session_service::create(create_session_input in) {
  std::vector<std::string> problems;
  if (in.project_id.empty()) problems.emplace_back("project_id should not be empty");
  if (in.machine_id.empty()) problems.emplace_back("machine_id should not be empty");
  if (!problems.empty()) co_return validation_error(std::move(problems));
  const timestamp now = clock_.now();
  session s;
  s.oid = new_object_id(now);
  s.session_id = new_uuid_v4();
  s.project_id = std::move(in.project_id);
  s.machine_id = std::move(in.machine_id);
  s.docker_slot = in.docker_slot;
  s.status = session_status::active;
  s.last_heartbeat = s.started_at = s.created_at = s.updated_at = now;
  s.metadata = std::move(in.metadata);
  s.heartbeat_timeout_s = in.heartbeat_timeout_s.value_or(default_heartbeat_timeout_s);
  s.input_timeout_s = in.input_timeout_s;
  s.epoch = 1;
  rearm(s);
  auto fn = [&](write_txn& tx) -> result<session> {
    tx.insert_session(s);
    tx.append_event(session_event("session.created", s, now));
    return s;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

task_of<session> session_service::get(std::string id) {
  auto fn = [&](read_view& v) -> result<session> {
    auto s = v.get_session(id);
    if (!s) return session_not_found(id);
    return std::move(*s);
  };
  co_return co_await storage::read(store_, std::move(fn));
}

boost::asio::awaitable<std::vector<session>> session_service::list(session_list_query q) {
  session_filter f;
  if (q.status) f.statuses = status_set::of({*q.status});
  f.project_id = std::move(q.project_id);
  f.project_in = std::move(q.projects_in);
  f.machine_id = std::move(q.machine_id);
  f.order = session_order::created_desc;
  f.limit = q.limit;
  f.offset = q.offset;
  auto fn = [&f](read_view& v) { return v.list_sessions(f); };
  co_return co_await storage::read(store_, std::move(fn));
}

// PUT /sessions/:id — no transition rules (contract §4.2.4).
task_of<session> session_service::update(std::string id, update_session_input in) {
  auto change = [&in](session& s, timestamp now, write_txn&) -> std::optional<error> {
    if (in.clear_input_timeout_s) s.input_timeout_s.reset();
    if (in.input_timeout_s) s.input_timeout_s = in.input_timeout_s;
    if (in.status) enter_status(s, *in.status, now, in.last_heartbeat.has_value());
    if (in.clear_docker_slot) s.docker_slot.reset();
    if (in.docker_slot) s.docker_slot = in.docker_slot;
    if (in.clear_current_task_id) s.current_task_id.reset();
    if (in.current_task_id) s.current_task_id = in.current_task_id;
    if (in.metadata) s.metadata = merge_metadata(s.metadata, *in.metadata);
    if (in.completed_at) s.completed_at = in.completed_at;
    if (in.heartbeat_timeout_s) s.heartbeat_timeout_s = *in.heartbeat_timeout_s;
    if (in.last_heartbeat) {
      s.last_heartbeat = *in.last_heartbeat;
      rearm(s);
    } else if (in.heartbeat_timeout_s) {
      rearm(s);
    }
    // rearm() keys the sweep on the deadline; a session waiting for a human is keyed on its
    // escalation time instead (a new escalation timeout counts from when the wait began).
    if (s.status == session_status::awaiting_input) {
      if (in.input_timeout_s || in.clear_input_timeout_s) s.escalated_at.reset();
      s.sweep_at = escalation_due(s, now);
    }
    return std::nullopt;
  };
  co_return co_await transition(std::move(id), "session.updated", change);
}

// DELETE /sessions/:id — completed from any status.
task_of<session> session_service::soft_delete(std::string id) {
  auto change = [](session& s, timestamp now, write_txn&) -> std::optional<error> {
    enter_status(s, session_status::completed, now, false);
    s.completed_at = now;
    return std::nullopt;
  };
  co_return co_await transition(std::move(id), "session.completed", change);
}

// POST /sessions/:id/heartbeat — the hot path: one indexed read and one narrow update.
task_of<heartbeat_outcome> session_service::heartbeat(std::string id, heartbeat_input in) {
  auto fn = [&](write_txn& tx) -> result<heartbeat_outcome> {
    auto found = tx.get_session(id);
    if (!found) return session_not_found(id);
    session s = std::move(*found);
    if (auto err = check_epoch(s, in.epoch)) return *err;
    if (s.status == session_status::completed || s.status == session_status::failed) {
      return make_error(errc::bad_request, "Cannot update heartbeat for " +
                                               std::string(to_string(s.status)) + " session");
    }
    // Time is read inside the transaction so that heartbeats are ordered like their commits.
    const timestamp now = clock_.now();
    heartbeat_outcome out;
    out.reactivated = s.status == session_status::stalled;
    s.last_heartbeat = now;
    s.updated_at = now;
    // Only deadline_at moves (later); sweep_at stays, so no index entry is rewritten.
    const std::int64_t window_s = std::max(s.heartbeat_timeout_s, in.extend_s.value_or(0));
    s.deadline_at = now + window_s * 1000;
    if (out.reactivated) {
      // Re-entering the sweep index: the whole row is rewritten (rare).
      enter_status(s, session_status::active, now, true);
      s.sweep_at = s.deadline_at;
      tx.update_session(s);
      tx.append_event(session_event("session.reactivated", s, now));
    } else if (s.status == session_status::active && s.deadline_at < s.sweep_at) {
      // The deadline moved earlier than the sweep key (after a restart grace or an extend_s):
      // pull the key back so the sweep still sees the session at its real deadline (rare).
      s.sweep_at = s.deadline_at;
      tx.update_session(s);
    } else {
      tx.update_session_liveness(s);
    }
    out.s = std::move(s);
    return out;
  };
  co_return co_await storage::write(store_, std::move(fn), id);
}

boost::asio::awaitable<std::vector<session>> session_service::stale(
    double threshold_s, timestamp now, std::vector<std::string> projects_in) {
  session_filter f;
  f.project_in = std::move(projects_in);
  f.statuses = status_set::of({session_status::active, session_status::paused});
  f.last_heartbeat_before = now - static_cast<std::int64_t>(std::llround(threshold_s * 1000));
  f.order = session_order::last_heartbeat_asc;
  auto fn = [&f](read_view& v) { return v.list_sessions(f); };
  co_return co_await storage::read(store_, std::move(fn));
}

boost::asio::awaitable<std::vector<session>> session_service::active(
    std::optional<std::string> project_id, std::optional<std::string> machine_id,
    std::vector<std::string> projects_in) {
  session_filter f;
  f.project_in = std::move(projects_in);
  f.statuses = status_set::of({session_status::active});
  f.project_id = std::move(project_id);
  f.machine_id = std::move(machine_id);
  f.order = session_order::started_desc;
  auto fn = [&f](read_view& v) { return v.list_sessions(f); };
  co_return co_await storage::read(store_, std::move(fn));
}

boost::asio::awaitable<std::vector<session>> session_service::by_project(std::string project_id) {
  session_filter f;
  f.project_id = std::move(project_id);
  f.order = session_order::started_desc;
  auto fn = [&f](read_view& v) { return v.list_sessions(f); };
  co_return co_await storage::read(store_, std::move(fn));
}

boost::asio::awaitable<std::vector<session>> session_service::by_machine(
    std::string machine_id, std::vector<std::string> projects_in) {
  session_filter f;
  f.project_in = std::move(projects_in);
  f.machine_id = std::move(machine_id);
  f.order = session_order::started_desc;
  auto fn = [&f](read_view& v) { return v.list_sessions(f); };
  co_return co_await storage::read(store_, std::move(fn));
}

boost::asio::awaitable<std::vector<session>> session_service::failed(session_list_query q) {
  session_filter f;
  f.statuses = status_set::of({session_status::failed});
  f.project_id = std::move(q.project_id);
  f.project_in = std::move(q.projects_in);
  f.machine_id = std::move(q.machine_id);
  f.order = session_order::completed_desc;
  f.limit = q.limit;
  f.offset = q.offset;
  auto fn = [&f](read_view& v) { return v.list_sessions(f); };
  co_return co_await storage::read(store_, std::move(fn));
}

task_of<failure_info_data> session_service::failure_info(std::string id) {
  auto fn = [&](read_view& v) -> result<failure_info_data> {
    auto s = v.get_session(id);
    if (!s) return session_not_found(id);
    if (s->status != session_status::failed) {
      return make_error(errc::bad_request, "Session is not in failed state (current status: " +
                                               std::string(to_string(s->status)) + ")");
    }
    storage::task_filter tf;
    tf.session_id = id;
    failure_info_data out{std::move(*s), v.list_tasks(tf)};
    return out;
  };
  co_return co_await storage::read(store_, std::move(fn));
}

// POST /sessions/:id/mark-failed
task_of<session> session_service::mark_failed(std::string id, std::string reason,
                                              std::optional<json::object> error_details) {
  auto change = [&](session& s, timestamp now, write_txn&) -> std::optional<error> {
    if (s.status == session_status::completed) {
      return make_error(errc::bad_request, "Cannot mark completed session as failed");
    }
    if (s.status != session_status::failed || !s.completed_at) s.completed_at = now;
    enter_status(s, session_status::failed, now, false);
    json::object patch;
    patch["failure_reason"] = reason;
    patch["failure_timestamp"] = iso(now);
    if (error_details) patch["error_details"] = *error_details;
    s.metadata = merge_metadata(s.metadata, patch);
    return std::nullopt;
  };
  co_return co_await transition(std::move(id), "session.failed", change);
}

// POST /sessions/:id/mark-stalled
task_of<session> session_service::mark_stalled(std::string id, std::string reason) {
  auto change = [&](session& s, timestamp now, write_txn&) -> std::optional<error> {
    if (s.status == session_status::completed || s.status == session_status::failed) {
      return make_error(errc::bad_request,
                        "Cannot mark " + std::string(to_string(s.status)) + " session as stalled");
    }
    enter_status(s, session_status::stalled, now, false);
    json::object patch;
    patch["stalled_reason"] = reason;
    patch["stalled_timestamp"] = iso(now);
    s.metadata = merge_metadata(s.metadata, patch);
    return std::nullopt;
  };
  co_return co_await transition(std::move(id), "session.stalled", change);
}

// POST /sessions/:id/archive
task_of<session> session_service::archive(std::string id) {
  auto change = [](session& s, timestamp now, write_txn&) -> std::optional<error> {
    if (!is_terminal_for_archive(s.status)) {
      return make_error(errc::bad_request,
                        "Cannot archive session with status \"" + std::string(to_string(s.status)) +
                            "\". Only completed, failed, or already archived sessions can be "
                            "archived.");
    }
    enter_status(s, session_status::archived, now, false);
    return std::nullopt;
  };
  co_return co_await transition(std::move(id), "session.archived", change);
}

// DELETE /sessions/:id/purge — confirm is checked before existence (contract §4.5.2).
task_of<purge_outcome> session_service::purge(std::string id, bool confirm) {
  if (!confirm) {
    co_return make_error(errc::bad_request,
                         "Confirmation required to permanently delete session. Set confirm=true.");
  }
  auto fn = [&](write_txn& tx) -> result<purge_outcome> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_session(id);
    if (!found) return session_not_found(id);
    if (!is_terminal_for_archive(found->status)) {
      return make_error(errc::bad_request, "Cannot purge session with status \"" +
                                               std::string(to_string(found->status)) +
                                               "\". Only completed, failed, or archived sessions "
                                               "can be purged.");
    }
    purge_outcome out{id, tx.delete_tasks_of_session(id), now};
    tx.delete_session(id);
    tx.append_event(session_event("session.deleted", *found, now));
    return out;
  };
  co_return co_await storage::write(store_, std::move(fn), id);
}

// POST /sessions/cleanup — only terminal sessions are touched; the rest are counted as skipped.
task_of<cleanup_outcome> session_service::cleanup(cleanup_input in) {
  const timestamp now = clock_.now();
  const auto cutoff = now - static_cast<std::int64_t>(std::llround(in.older_than_days * day_ms));
  auto fn = [&](write_txn& tx) -> result<cleanup_outcome> {
    cleanup_outcome out;
    out.operation = in.dry_run ? "dry_run" : in.archive ? "archive" : "delete";
    out.completed_at = now;
    for (auto st : in.statuses) {
      bool listed = false;
      for (const auto& [k, n] : out.breakdown)
        listed = listed || k == st;
      if (!listed) out.breakdown.emplace_back(st, 0);
    }
    status_set wanted;
    for (auto st : in.statuses)
      wanted.bits |= status_set::of({st}).bits;
    if (wanted.empty()) return out;
    session_filter f;
    f.statuses = wanted;
    f.created_before = cutoff;
    f.order = session_order::created_desc;
    auto matches = tx.list_sessions(f);
    for (auto& s : matches) {
      if (!is_terminal_for_archive(s.status)) {
        ++out.sessions_skipped;
        continue;
      }
      ++out.sessions_affected;
      for (auto& [k, n] : out.breakdown) {
        if (k == s.status) ++n;
      }
      storage::task_filter tf;
      tf.session_id = s.session_id;
      if (in.dry_run) {
        out.tasks_deleted += tx.count_tasks(tf);
      } else if (in.archive) {
        out.tasks_deleted += tx.count_tasks(tf);
        if (s.status != session_status::archived) {
          enter_status(s, session_status::archived, now, false);
          s.updated_at = now;
          tx.update_session(s);
          tx.append_event(session_event("session.archived", s, now));
        }
      } else {
        out.tasks_deleted += tx.delete_tasks_of_session(s.session_id);
        tx.delete_session(s.session_id);
        tx.append_event(session_event("session.deleted", s, now));
      }
    }
    return out;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

boost::asio::awaitable<std::vector<session>> session_service::archived(session_list_query q) {
  session_filter f;
  f.statuses = status_set::of({session_status::archived});
  f.project_id = std::move(q.project_id);
  f.project_in = std::move(q.projects_in);
  f.machine_id = std::move(q.machine_id);
  f.order = session_order::updated_desc;
  f.limit = q.limit;
  f.offset = q.offset;
  auto fn = [&f](read_view& v) { return v.list_sessions(f); };
  co_return co_await storage::read(store_, std::move(fn));
}

boost::asio::awaitable<std::vector<session>> session_service::recoverable(recoverable_query q,
                                                                          timestamp now) {
  session_filter f;
  f.statuses = status_set::of({session_status::failed, session_status::stalled});
  f.project_id = std::move(q.project_id);
  f.project_in = std::move(q.projects_in);
  f.machine_id = std::move(q.machine_id);
  if (q.max_age_minutes) {
    f.last_heartbeat_at_least =
        now - static_cast<std::int64_t>(std::llround(*q.max_age_minutes * 60000));
  }
  if (q.min_age_minutes && *q.min_age_minutes > 0) {
    f.last_heartbeat_at_most =
        now - static_cast<std::int64_t>(std::llround(*q.min_age_minutes * 60000));
  }
  f.order = session_order::last_heartbeat_asc;
  auto fn = [&f](read_view& v) { return v.list_sessions(f); };
  co_return co_await storage::read(store_, std::move(fn));
}

// POST /sessions/:id/prepare-recovery — appends a checkpoint, keeps every other recovery key.
task_of<prepare_recovery_outcome> session_service::prepare_recovery(std::string id) {
  auto fn = [&](write_txn& tx) -> result<prepare_recovery_outcome> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_session(id);
    if (!found) return session_not_found(id);
    session s = std::move(*found);
    if (s.status == session_status::completed) {
      return make_error(errc::bad_request, "Cannot prepare recovery for completed sessions");
    }
    json::object meta = parse_metadata(s.metadata);
    const std::int64_t attempts = recovery_attempts(meta);
    if (attempts >= max_recovery_attempts) {
      return make_error(errc::bad_request,
                        "Maximum recovery attempts (3) reached for this session");
    }
    prepare_recovery_outcome out{s, attempts, now};
    json::object snapshot = meta;
    snapshot.erase("recovery");
    json::object checkpoint;
    checkpoint["captured_at"] = iso(now);
    checkpoint["status"] = to_string(s.status);
    checkpoint["machine_id"] = s.machine_id;
    if (s.docker_slot) checkpoint["docker_slot"] = *s.docker_slot;
    if (s.current_task_id) checkpoint["current_task_id"] = *s.current_task_id;
    checkpoint["last_heartbeat"] = iso(s.last_heartbeat);
    checkpoint["metadata_snapshot"] = std::move(snapshot);
    json::object recovery = recovery_of(meta);
    recovery["recovery_attempts"] = attempts;
    recovery["last_checkpoint_at"] = iso(now);
    auto* list = recovery.if_contains("recovery_checkpoints");
    if (list == nullptr || !list->is_array()) {
      recovery["recovery_checkpoints"] = json::array();
      list = recovery.if_contains("recovery_checkpoints");
    }
    list->as_array().emplace_back(std::move(checkpoint));
    meta["recovery"] = std::move(recovery);
    s.metadata = serialize_metadata(meta);
    s.updated_at = now;
    tx.update_session(s);
    tx.append_event(session_event("session.recovery_prepared", s, now));
    return out;
  };
  co_return co_await storage::write(store_, std::move(fn), id);
}

// POST /sessions/:id/recover — order: session 404, completed 400, task 404/400, attempts 400.
task_of<session> session_service::recover(std::string id, recover_input in) {
  auto fn = [&](write_txn& tx) -> result<session> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_session(id);
    if (!found) return session_not_found(id);
    session s = std::move(*found);
    if (s.status == session_status::completed) {
      return make_error(errc::bad_request, "Cannot recover completed sessions");
    }
    if (in.resume_from_task_id) {
      auto t = tx.get_task(*in.resume_from_task_id);
      if (!t) {
        return make_error(errc::not_found,
                          "Task with ID " + *in.resume_from_task_id + " not found");
      }
      if (t->session_id != s.session_id) {
        return make_error(errc::bad_request, "Task " + *in.resume_from_task_id +
                                                 " does not belong to session " + s.session_id);
      }
    }
    json::object meta = parse_metadata(s.metadata);
    const std::int64_t attempts = recovery_attempts(meta);
    if (attempts >= max_recovery_attempts) {
      return make_error(errc::bad_request,
                        "Maximum recovery attempts (3) reached for this session");
    }
    enter_status(s, session_status::active, now, true);
    s.last_heartbeat = now;
    rearm(s);
    const std::string old_machine = s.machine_id;
    const std::optional<double> old_slot = s.docker_slot;
    if (in.new_machine_id && !in.new_machine_id->empty()) s.machine_id = *in.new_machine_id;
    if (in.new_docker_slot) s.docker_slot = in.new_docker_slot;
    // Moving elsewhere releases the old slot in the same transaction, so the old machine's
    // slot is free as soon as the new owner is recorded (and the epoch bump fences the old one).
    if (s.machine_id != old_machine || s.docker_slot != old_slot) {
      if (auto m = tx.get_machine(old_machine)) {
        auto& list = m->active_sessions;
        auto it = std::find(list.begin(), list.end(), s.session_id);
        if (it != list.end()) {
          list.erase(it);
          m->updated_at = now;
          tx.update_machine(*m);
          event e = machine_event("machine.session_released", *m, now);
          e.session_id = s.session_id;
          e.project_id = s.project_id;
          tx.append_event(e);
        }
      }
    }
    if (in.resume_from_task_id) s.current_task_id = in.resume_from_task_id;
    json::object attempt;
    attempt["attempted_at"] = iso(now);
    attempt["success"] = true;
    if (in.new_machine_id) attempt["new_machine_id"] = *in.new_machine_id;
    if (in.new_docker_slot) attempt["new_docker_slot"] = *in.new_docker_slot;
    if (in.resume_from_task_id) attempt["resumed_from_task_id"] = *in.resume_from_task_id;
    json::object recovery = recovery_of(meta);
    recovery["recovery_attempts"] = attempts + 1;
    recovery["last_recovery_at"] = iso(now);
    auto* history = recovery.if_contains("recovery_history");
    if (history == nullptr || !history->is_array()) {
      recovery["recovery_history"] = json::array();
      history = recovery.if_contains("recovery_history");
    }
    history->as_array().emplace_back(std::move(attempt));
    if (!recovery.contains("recovery_checkpoints"))
      recovery["recovery_checkpoints"] = json::array();
    meta["recovery"] = std::move(recovery);
    s.metadata = serialize_metadata(meta);
    s.epoch += 1;
    s.updated_at = now;
    tx.update_session(s);
    tx.append_event(session_event("session.recovered", s, now));
    return s;
  };
  co_return co_await storage::write(store_, std::move(fn), id);
}

// One sweep pass over the sweep index (sweep_at <= deadline_at for active sessions, the
// escalation time for awaiting_input ones):
//  * active sessions whose real deadline has not passed are re-armed at it;
//  * awaiting_input sessions whose escalation time passed get one session.input_overdue event;
//  * the overdue active sessions are stalled (one event each) — unless the mass-stall brake
//    holds: when more than `brake.max_share` of all active sessions (and at least
//    `brake.min_count`) are overdue at once, the likelier cause is on our side (network, the
//    tracker itself), so nothing is stalled and one incident stays open until heartbeats
//    return or an operator clears it.
boost::asio::awaitable<sweep_outcome> session_service::sweep_stalled(timestamp now,
                                                                     std::int64_t batch,
                                                                     stall_brake brake) {
  auto fn = [&](write_txn& tx) -> result<sweep_outcome> {
    session_filter f;
    f.statuses = status_set::of({session_status::active, session_status::awaiting_input});
    f.sweep_before = now;
    f.order = session_order::sweep_asc;
    f.limit = batch;
    auto candidates = tx.list_sessions(f);
    sweep_outcome out;
    out.examined = static_cast<std::int64_t>(candidates.size());
    std::vector<session> overdue;
    for (auto& s : candidates) {
      if (s.status == session_status::awaiting_input) {
        if (s.input_timeout_s && !s.escalated_at) {
          s.escalated_at = now;
          s.updated_at = now;
          tx.append_event(session_event("session.input_overdue", s, now));
          out.escalated.push_back(s);
        }
        s.sweep_at = never;
        tx.update_session(s);
      } else if (s.deadline_at < now) {
        overdue.push_back(std::move(s));
      } else {
        s.sweep_at = s.deadline_at;
        tx.update_session(s);
      }
    }
    out.overdue = static_cast<std::int64_t>(overdue.size());
    auto incident = parse_incident(tx.get_meta(incident_key));
    const bool cleared = incident && incident->cleared_by_operator;
    if (!overdue.empty() && !cleared && brake.min_count > 0) {
      session_filter active_only;
      active_only.statuses = status_set::of({session_status::active});
      const std::int64_t active = tx.count_sessions(active_only);
      const bool mass =
          out.overdue >= brake.min_count &&
          static_cast<double>(out.overdue) > brake.max_share * static_cast<double>(active);
      if (mass) {
        out.braked = true;
        mass_stall_incident inc = incident.value_or(mass_stall_incident{now, 0, 0, false});
        inc.overdue = out.overdue;
        inc.active = active;
        if (!incident) {
          out.incident_opened = true;
          tx.append_event(incident_event("incident.mass_stall", inc, now));
        }
        tx.put_meta(incident_key, incident_text(inc));
        return out;
      }
    }
    for (auto& s : overdue) {
      enter_status(s, session_status::stalled, now, false);
      s.updated_at = now;
      tx.update_session(s);
      tx.append_event(session_event("session.stalled", s, now));
      out.stalled.push_back(std::move(s));
    }
    if (incident) {
      // Heartbeats came back (or an operator let the sweep through): the incident is over.
      out.incident_resolved = true;
      tx.delete_meta(incident_key);
      tx.append_event(incident_event("incident.resolved", *incident, now));
    }
    return out;
  };
  auto r = co_await storage::write(store_, std::move(fn));
  co_return std::move(r.value());
}

boost::asio::awaitable<std::int64_t> session_service::apply_restart_grace(timestamp now,
                                                                          std::int64_t grace_ms) {
  const timestamp until = now + grace_ms;
  auto fn = [&](write_txn& tx) -> result<std::int64_t> {
    session_filter f;
    f.statuses = status_set::of({session_status::active});
    f.sweep_before = until;
    f.order = session_order::sweep_asc;
    std::int64_t n = 0;
    for (auto& s : tx.list_sessions(f)) {
      if (s.deadline_at >= until) continue;
      s.deadline_at = until;
      s.sweep_at = until;
      tx.update_session(s);
      ++n;
    }
    return n;
  };
  auto r = co_await storage::write(store_, std::move(fn));
  co_return r.value();
}

boost::asio::awaitable<std::optional<mass_stall_incident>> session_service::open_incident() {
  auto fn = [](read_view& v) { return parse_incident(v.get_meta(incident_key)); };
  co_return co_await storage::read(store_, std::move(fn));
}

task_of<mass_stall_incident> session_service::clear_incident() {
  auto fn = [&](write_txn& tx) -> result<mass_stall_incident> {
    auto inc = parse_incident(tx.get_meta(incident_key));
    if (!inc) return make_error(errc::not_found, "There is no open mass-stall incident");
    inc->cleared_by_operator = true;
    tx.put_meta(incident_key, incident_text(*inc));
    return *inc;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// POST /sessions/:id/directive
task_of<session> session_service::set_directive(std::string id, directive d,
                                                std::optional<std::string> reason) {
  auto change = [&](session& s, timestamp, write_txn&) -> std::optional<error> {
    s.dir = d;
    s.directive_reason = reason;
    return std::nullopt;
  };
  co_return co_await transition(std::move(id), "session.directive_changed", change);
}

// GET /sessions/:id/events — the timeline, also after a purge (the events remain).
task_of<std::vector<event>> session_service::events_of(std::string id, std::int64_t after,
                                                       std::int64_t limit) {
  auto fn = [&](read_view& v) -> result<std::vector<event>> {
    auto list = v.session_events(id, after, limit);
    if (list.empty() && after == 0 && !v.get_session(id)) return session_not_found(id);
    return list;
  };
  co_return co_await storage::read(store_, std::move(fn));
}

// Retention: completed/failed sessions (and their tasks) past the horizon are deleted, and so
// are completed/failed tasks past it.
boost::asio::awaitable<std::int64_t> session_service::apply_retention(timestamp completed_before,
                                                                      std::int64_t batch) {
  auto fn = [&](write_txn& tx) -> result<std::int64_t> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    session_filter f;
    f.statuses = status_set::of({session_status::completed, session_status::failed});
    f.completed_before = completed_before;
    f.order = session_order::completed_desc;
    f.limit = batch;
    auto old = tx.list_sessions(f);
    std::int64_t n = 0;
    for (const auto& s : old) {
      tx.delete_tasks_of_session(s.session_id);
      tx.delete_session(s.session_id);
      tx.append_event(session_event("session.deleted", s, now));
      ++n;
    }
    storage::task_filter tf;
    tf.statuses_any = {task_status::completed, task_status::failed};
    tf.completed_before = completed_before;
    n += tx.delete_tasks(tf);
    return n;
  };
  auto r = co_await storage::write(store_, std::move(fn));
  co_return r.value();
}

boost::asio::awaitable<std::int64_t> session_service::auto_archive(timestamp completed_before,
                                                                   std::int64_t batch) {
  auto fn = [&](write_txn& tx) -> result<std::int64_t> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    session_filter f;
    f.statuses = status_set::of({session_status::completed, session_status::failed});
    f.completed_before = completed_before;
    f.order = session_order::completed_desc;
    f.limit = batch;
    auto old = tx.list_sessions(f);
    for (auto& s : old) {
      enter_status(s, session_status::archived, now, false);
      s.updated_at = now;
      tx.update_session(s);
      tx.append_event(session_event("session.archived", s, now));
    }
    return static_cast<std::int64_t>(old.size());
  };
  auto r = co_await storage::write(store_, std::move(fn));
  co_return r.value();
}

}  // namespace statetrack::core
