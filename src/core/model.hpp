// The stored records: session, task, machine, event and API key. Plain values that every
// layer passes around; storage maps them to rows, api renders them as the contract's JSON.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/types.hpp"

namespace statetrack::core {

inline constexpr int default_heartbeat_timeout_s = 300;

struct session {
  std::string oid;  // `_id`: storage artefact kept for wire fidelity
  std::string session_id;
  std::string project_id;
  std::string machine_id;
  std::optional<double> docker_slot;
  session_status status = session_status::active;
  timestamp last_heartbeat;
  std::optional<std::string> current_task_id;
  timestamp started_at;
  std::optional<timestamp> completed_at;
  std::string metadata = "{}";  // JSON object text, always an object
  timestamp created_at;
  timestamp updated_at;
  // Liveness: a session is overdue once now > deadline_at = last_heartbeat + timeout.
  int heartbeat_timeout_s = default_heartbeat_timeout_s;
  timestamp deadline_at;
  // Key of the stall-sweep index, never later than deadline_at. Heartbeats move deadline_at
  // only and leave this alone, so the hot path never rewrites an index entry; the sweep
  // re-arms it to deadline_at when it finds a session that is not overdue after all.
  timestamp sweep_at;
  // Ownership generation, bumped on recovery (fencing).
  std::int64_t epoch = 1;
  // Instruction returned with every heartbeat, set by operators.
  directive dir = directive::continue_;
  std::optional<std::string> directive_reason;
  // awaiting_input: optional escalation after this many seconds of waiting for a human.
  std::optional<int> input_timeout_s;
  std::optional<timestamp> awaiting_since;
  std::optional<timestamp> escalated_at;
};

struct task {
  std::string oid;
  std::string task_id;
  std::string session_id;
  std::string project_id;
  std::optional<std::string> github_issue_id;
  std::string task_name;
  task_status status = task_status::pending;
  std::optional<timestamp> started_at;
  std::optional<timestamp> completed_at;
  std::optional<std::string> error_message;
  std::string metadata = "{}";
  timestamp created_at;
  timestamp updated_at;
};

struct machine {
  std::string oid;
  std::string machine_id;
  std::string hostname;
  std::vector<std::int64_t> docker_slots;
  std::vector<std::string> active_sessions;
  machine_status status = machine_status::online;
  timestamp last_heartbeat;
  std::string metadata = "{}";
  timestamp created_at;
  timestamp updated_at;
};

// One row of the outbox: appended in the same transaction as the change it describes.
struct event {
  std::int64_t seq = 0;  // assigned by the store: global, gap-free, increasing
  std::string type;      // session.created, session.stalled, task.completed, machine.offline, ...
  timestamp occurred_at;
  std::string project_id;  // empty when the event concerns no project (machines)
  std::string session_id;
  std::string task_id;
  std::string machine_id;
  std::string data;  // JSON text: the new state of the record
};

// admin: everything, including keys, cleanup and purge; write: reads and writes; read: reads;
// machine: bound to one machine id, may register and heartbeat it and create, heartbeat and
// update the sessions and tasks on it (see core/access.hpp).
enum class key_role { admin, write, read, machine };

// A short-lived, single-use ticket that opens one event stream on behalf of an API key.
struct stream_ticket {
  std::string hash;  // SHA-256 of the ticket; the ticket itself is never stored
  std::string key_id;
  std::int64_t key_db_id = 0;
  key_role role = key_role::read;
  timestamp expires_at;
};

struct api_key {
  std::int64_t id = 0;
  std::string prefix;  // first characters of the key, used to find the row; not secret
  std::string hash;    // lowercase hex SHA-256 of the whole key
  std::string name;
  key_role role = key_role::admin;
  timestamp created_at;
  std::optional<timestamp> last_used_at;
  std::optional<timestamp> revoked_at;
  std::string machine_id;             // machine keys: the machine they are bound to
  std::vector<std::string> projects;  // project scope; empty: every project
  std::optional<timestamp> expires_at;
};

}  // namespace statetrack::core
