// Migration 1: sessions, tasks, machines, the event outbox and API keys, with the indexes
// every query and sweep uses (sweeps are index range scans over deadlines).
// Migration 2: API keys bound to a machine, scoped to projects, expiring.
#include "storage/sqlite/schema.hpp"

namespace statetrack::storage::sqlite {

const std::vector<migration>& migrations() {
  static const std::vector<migration> list = {
      {1, "initial schema", R"sql(
CREATE TABLE sessions (
  id INTEGER PRIMARY KEY,
  session_id TEXT NOT NULL UNIQUE,
  oid TEXT NOT NULL,
  project_id TEXT NOT NULL,
  machine_id TEXT NOT NULL,
  docker_slot REAL,
  status TEXT NOT NULL CHECK (status IN ('active','paused','completed','failed','stalled','archived',
                                         'awaiting_input')),
  last_heartbeat INTEGER NOT NULL,
  current_task_id TEXT,
  started_at INTEGER NOT NULL,
  completed_at INTEGER,
  metadata TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  heartbeat_timeout_s INTEGER NOT NULL,
  deadline_at INTEGER NOT NULL,
  sweep_at INTEGER NOT NULL,
  epoch INTEGER NOT NULL,
  directive TEXT NOT NULL CHECK (directive IN ('continue','pause','stop')),
  directive_reason TEXT,
  input_timeout_s INTEGER,
  awaiting_since INTEGER,
  escalated_at INTEGER
) STRICT;
CREATE INDEX sessions_status_created ON sessions(status, created_at);
CREATE INDEX sessions_created ON sessions(created_at);
CREATE INDEX sessions_project ON sessions(project_id, status);
CREATE INDEX sessions_machine ON sessions(machine_id, status);
CREATE INDEX sessions_active_sweep ON sessions(sweep_at)
  WHERE status IN ('active','awaiting_input');
CREATE INDEX sessions_terminal_completed ON sessions(completed_at)
  WHERE status IN ('completed','failed');
CREATE INDEX sessions_archived_updated ON sessions(updated_at) WHERE status = 'archived';

CREATE TABLE tasks (
  id INTEGER PRIMARY KEY,
  task_id TEXT NOT NULL UNIQUE,
  oid TEXT NOT NULL,
  session_id TEXT NOT NULL,
  project_id TEXT NOT NULL,
  github_issue_id TEXT,
  task_name TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending','in_progress','completed','failed','blocked')),
  started_at INTEGER,
  completed_at INTEGER,
  error_message TEXT,
  metadata TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX tasks_session ON tasks(session_id, status);
CREATE INDEX tasks_project ON tasks(project_id, status);
CREATE INDEX tasks_created ON tasks(created_at);
CREATE INDEX tasks_terminal_completed ON tasks(completed_at) WHERE status IN ('completed','failed');

CREATE TABLE machines (
  id INTEGER PRIMARY KEY,
  machine_id TEXT NOT NULL UNIQUE,
  oid TEXT NOT NULL,
  hostname TEXT NOT NULL,
  docker_slots TEXT NOT NULL,
  active_sessions TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('online','offline','maintenance')),
  last_heartbeat INTEGER NOT NULL,
  metadata TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX machines_online_heartbeat ON machines(last_heartbeat) WHERE status = 'online';

CREATE TABLE events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  type TEXT NOT NULL,
  occurred_at INTEGER NOT NULL,
  project_id TEXT NOT NULL,
  session_id TEXT NOT NULL,
  task_id TEXT NOT NULL,
  machine_id TEXT NOT NULL,
  data TEXT NOT NULL
) STRICT;
CREATE INDEX events_session ON events(session_id, seq) WHERE session_id <> '';
CREATE INDEX events_occurred ON events(occurred_at);

-- Single-use tickets for event streams opened by browsers (which cannot set headers).
CREATE TABLE event_tickets (
  hash TEXT PRIMARY KEY,
  key_id TEXT NOT NULL,
  key_db_id INTEGER NOT NULL,
  role TEXT NOT NULL,
  expires_at INTEGER NOT NULL
) STRICT;

-- Small shared state of the service itself (open incidents, the last time it was alive).
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
) STRICT;

CREATE TABLE api_keys (
  id INTEGER PRIMARY KEY,
  prefix TEXT NOT NULL,
  hash TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  role TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  last_used_at INTEGER,
  revoked_at INTEGER
) STRICT;
CREATE INDEX api_keys_prefix ON api_keys(prefix);
)sql"},
      {2, "least-privilege API keys: machine binding, project scope, expiry", R"sql(
ALTER TABLE api_keys ADD COLUMN machine_id TEXT;
ALTER TABLE api_keys ADD COLUMN projects TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
)sql"},
  };
  return list;
}

}  // namespace statetrack::storage::sqlite
