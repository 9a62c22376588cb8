// Record documents in the contract's key order.
#include "core/documents.hpp"

namespace statetrack::core {

void write_session(util::json_writer& w, const session& s) {
  w.begin_object();
  w.field("_id", s.oid);
  w.field("session_id", s.session_id);
  w.field("project_id", s.project_id);
  w.field("machine_id", s.machine_id);
  if (s.docker_slot) w.field("docker_slot", *s.docker_slot);
  w.field("status", to_string(s.status));
  w.field_iso("last_heartbeat", s.last_heartbeat.ms);
  if (s.current_task_id) w.field("current_task_id", *s.current_task_id);
  w.field_iso("started_at", s.started_at.ms);
  if (s.completed_at) w.field_iso("completed_at", s.completed_at->ms);
  w.field_raw("metadata",
              s.metadata.empty() ? std::string_view("{}") : std::string_view(s.metadata));
  w.field_iso("created_at", s.created_at.ms);
  w.field_iso("updated_at", s.updated_at.ms);
  w.field("heartbeat_timeout_s", static_cast<std::int64_t>(s.heartbeat_timeout_s));
  w.field_iso("deadline_at", s.deadline_at.ms);
  w.field("epoch", s.epoch);
  w.field("directive", to_string(s.dir));
  if (s.directive_reason) w.field("directive_reason", *s.directive_reason);
  if (s.input_timeout_s) w.field("input_timeout_s", static_cast<std::int64_t>(*s.input_timeout_s));
  if (s.awaiting_since) w.field_iso("awaiting_since", s.awaiting_since->ms);
  if (s.escalated_at) w.field_iso("input_overdue_at", s.escalated_at->ms);
  w.field("__v", static_cast<std::int64_t>(0));
  w.end_object();
}

void write_task(util::json_writer& w, const task& t) {
  w.begin_object();
  w.field("_id", t.oid);
  w.field("task_id", t.task_id);
  w.field("session_id", t.session_id);
  w.field("project_id", t.project_id);
  if (t.github_issue_id) w.field("github_issue_id", *t.github_issue_id);
  w.field("task_name", t.task_name);
  w.field("status", to_string(t.status));
  if (t.started_at) w.field_iso("started_at", t.started_at->ms);
  if (t.completed_at) w.field_iso("completed_at", t.completed_at->ms);
  if (t.error_message) w.field("error_message", *t.error_message);
  w.field_raw("metadata",
              t.metadata.empty() ? std::string_view("{}") : std::string_view(t.metadata));
  w.field_iso("created_at", t.created_at.ms);
  w.field_iso("updated_at", t.updated_at.ms);
  w.field("__v", static_cast<std::int64_t>(0));
  w.end_object();
}

void write_machine(util::json_writer& w, const machine& m) {
  w.begin_object();
  w.field("_id", m.oid);
  w.field("machine_id", m.machine_id);
  w.field("hostname", m.hostname);
  w.key("docker_slots").begin_array();
  for (auto n : m.docker_slots)
    w.value(n);
  w.end_array();
  w.key("active_sessions").begin_array();
  for (const auto& id : m.active_sessions)
    w.value(id);
  w.end_array();
  w.field("status", to_string(m.status));
  w.field_iso("last_heartbeat", m.last_heartbeat.ms);
  w.field_raw("metadata",
              m.metadata.empty() ? std::string_view("{}") : std::string_view(m.metadata));
  w.field_iso("created_at", m.created_at.ms);
  w.field_iso("updated_at", m.updated_at.ms);
  w.field("__v", static_cast<std::int64_t>(0));
  w.end_object();
}

std::string session_json(const session& s) {
  std::string out;
  out.reserve(512);
  util::json_writer w(out);
  write_session(w, s);
  return out;
}

std::string task_json(const task& t) {
  std::string out;
  out.reserve(384);
  util::json_writer w(out);
  write_task(w, t);
  return out;
}

std::string machine_json(const machine& m) {
  std::string out;
  out.reserve(384);
  util::json_writer w(out);
  write_machine(w, m);
  return out;
}

}  // namespace statetrack::core
