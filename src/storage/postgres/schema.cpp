// Migration 1 mirrors the SQLite schema (integer milliseconds, JSON kept as text so responses
// splice it unchanged, partial indexes for every sweep) with three PostgreSQL-specific
// choices: the event seq comes from a one-row counter updated in the appending transaction
// (a sequence is not transactional, so a rolled-back write would leave a gap that readers
// take for pruned history); sessions leave room on each page and no index covers a column a
// heartbeat writes, so heartbeats are HOT updates that touch no index; and ties in list
// orders use the identity column, as SQLite uses the rowid.
#include "storage/postgres/schema.hpp"

#include <chrono>
#include <string>

namespace statetrack::storage::postgres {

const std::vector<migration>& migrations() {
  static const std::vector<migration> list = {
      {1, "initial schema", R"sql(
CREATE TABLE sessions (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  session_id TEXT NOT NULL UNIQUE,
  oid TEXT NOT NULL,
  project_id TEXT NOT NULL,
  machine_id TEXT NOT NULL,
  docker_slot DOUBLE PRECISION,
  status TEXT NOT NULL CHECK (status IN ('active','paused','completed','failed','stalled','archived',
                                         'awaiting_input')),
  last_heartbeat BIGINT NOT NULL,
  current_task_id TEXT,
  started_at BIGINT NOT NULL,
  completed_at BIGINT,
  metadata TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  heartbeat_timeout_s INTEGER NOT NULL,
  deadline_at BIGINT NOT NULL,
  sweep_at BIGINT NOT NULL,
  epoch BIGINT NOT NULL,
  directive TEXT NOT NULL CHECK (directive IN ('continue','pause','stop')),
  directive_reason TEXT,
  input_timeout_s INTEGER,
  awaiting_since BIGINT,
  escalated_at BIGINT
) WITH (fillfactor = 80);
CREATE INDEX sessions_status_created ON sessions(status, created_at, id);
CREATE INDEX sessions_created ON sessions(created_at, id);
CREATE INDEX sessions_project ON sessions(project_id, status);
CREATE INDEX sessions_machine ON sessions(machine_id, status);
CREATE INDEX sessions_active_sweep ON sessions(sweep_at, id)
  WHERE status IN ('active','awaiting_input');
CREATE INDEX sessions_terminal_completed ON sessions(completed_at)
  WHERE status IN ('completed','failed');
-- No index on updated_at (SQLite has one for archived sessions): every heartbeat writes it,
-- and an indexed column would make every heartbeat a non-HOT update of all indexes. Archived
-- lists use sessions_status_created and sort.

CREATE TABLE tasks (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  task_id TEXT NOT NULL UNIQUE,
  oid TEXT NOT NULL,
  session_id TEXT NOT NULL,
  project_id TEXT NOT NULL,
  github_issue_id TEXT,
  task_name TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending','in_progress','completed','failed','blocked')),
  started_at BIGINT,
  completed_at BIGINT,
  error_message TEXT,
  metadata TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX tasks_session ON tasks(session_id, status);
CREATE INDEX tasks_project ON tasks(project_id, status);
CREATE INDEX tasks_created ON tasks(created_at, id);
CREATE INDEX tasks_terminal_completed ON tasks(completed_at) WHERE status IN ('completed','failed');

CREATE TABLE machines (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  machine_id TEXT NOT NULL UNIQUE,
  oid TEXT NOT NULL,
  hostname TEXT NOT NULL,
  docker_slots TEXT NOT NULL,
  active_sessions TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('online','offline','maintenance')),
  last_heartbeat BIGINT NOT NULL,
  metadata TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX machines_online_heartbeat ON machines(last_heartbeat) WHERE status = 'online';

CREATE TABLE events (
  seq BIGINT PRIMARY KEY,
  type TEXT NOT NULL,
  occurred_at BIGINT NOT NULL,
  project_id TEXT NOT NULL,
  session_id TEXT NOT NULL,
  task_id TEXT NOT NULL,
  machine_id TEXT NOT NULL,
  data TEXT NOT NULL
);
CREATE INDEX events_session ON events(session_id, seq) WHERE session_id <> '';
CREATE INDEX events_occurred ON events(occurred_at);

-- The last seq handed out. Updated in the transaction that appends events, so a rolled-back
-- append gives its number back, and its row lock makes appending transactions commit in seq
-- order (readers never see seq n+1 before seq n).
CREATE TABLE event_counter (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  last BIGINT NOT NULL
);
INSERT INTO event_counter (id, last) VALUES (1, 0);

-- Single-use tickets for event streams opened by browsers (which cannot set headers).
CREATE TABLE event_tickets (
  hash TEXT PRIMARY KEY,
  key_id TEXT NOT NULL,
  key_db_id BIGINT NOT NULL,
  role TEXT NOT NULL,
  expires_at BIGINT NOT NULL
);

-- Small shared state of the service itself (open incidents, the last time it was alive).
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);

CREATE TABLE api_keys (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  prefix TEXT NOT NULL,
  hash TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  role TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  last_used_at BIGINT,
  revoked_at BIGINT
);
CREATE INDEX api_keys_prefix ON api_keys(prefix);
)sql"},
      {2, "least-privilege API keys: machine binding, project scope, expiry", R"sql(
ALTER TABLE api_keys ADD COLUMN machine_id TEXT;
ALTER TABLE api_keys ADD COLUMN projects TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
)sql"},
  };
  return list;
}

std::vector<int> apply_migrations(connection& c, deadline until) {
  const std::string key = std::to_string(migrate_lock_key);
  c.exec_script("SELECT pg_advisory_lock(" + key + ")", until);
  std::vector<int> applied;
  try {
    c.exec_script(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "description TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        until);
    auto r = c.exec("SELECT coalesce(max(version), 0) FROM schema_migrations", until);
    const auto current = static_cast<int>(r.int64(0, 0));
    const auto& all = migrations();
    if (!all.empty() && current > all.back().version) {
      throw core::storage_error(core::storage_error::kind::other,
                                "database schema version " + std::to_string(current) +
                                    " is newer than this binary supports (" +
                                    std::to_string(all.back().version) + ")");
    }
    for (const auto& m : all) {
      if (m.version <= current) continue;
      c.exec_script("BEGIN", until);
      try {
        c.exec_script(m.sql, until);
        const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
        params p;
        p.add(static_cast<std::int64_t>(m.version))
            .add(m.description)
            .add(static_cast<std::int64_t>(now));
        c.exec(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
            p, until);
        c.exec_script("COMMIT", until);
      } catch (const connection_lost&) {
        throw;
      } catch (...) {
        c.exec_script("ROLLBACK", until);
        throw;
      }
      applied.push_back(m.version);
    }
  } catch (const connection_lost&) {
    throw;  // the session lock went with the connection
  } catch (...) {
    c.exec_script("SELECT pg_advisory_unlock(" + key + ")", until);
    throw;
  }
  c.exec_script("SELECT pg_advisory_unlock(" + key + ")", until);
  return applied;
}

}  // namespace statetrack::storage::postgres
