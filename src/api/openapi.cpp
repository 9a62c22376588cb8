// OpenAPI 3.0.3 generation. Operations come from the router (one per route), request and
// query schemas from api::schemas, response schemas from the components below (contract §3,
// §4, §10 plus the fields this server adds). A route naming a schema that is not defined here
// yields a dangling $ref, which tests/unit/api/openapi_test.cpp rejects.
#include "api/openapi.hpp"

#include <algorithm>
#include <optional>
#include <span>

#include <boost/json/parse.hpp>

#include "api/schemas.hpp"
#include "api/validation.hpp"
#include "core/types.hpp"
#include "http/message.hpp"
#include "http/router.hpp"

namespace statetrack::api {

namespace {

namespace json = boost::json;

constexpr std::string_view schema_ref_prefix = "#/components/schemas/";

// Response components. Status fields point at the enum components generated from
// core/types.hpp. `required` lists the keys that are always present; the others are absent
// when unset (never null unless marked nullable).
constexpr std::string_view response_components_json = R"json({
"Session": {
  "type": "object",
  "description": "Session document (contract §3.1).",
  "required": ["_id", "session_id", "project_id", "machine_id", "status", "last_heartbeat",
               "started_at", "metadata", "created_at", "updated_at", "heartbeat_timeout_s",
               "deadline_at", "epoch", "__v"],
  "properties": {
    "_id": {"type": "string", "pattern": "^[0-9a-f]{24}$", "description": "Storage artefact (ObjectId-shaped)"},
    "session_id": {"type": "string", "format": "uuid"},
    "project_id": {"type": "string"},
    "machine_id": {"type": "string"},
    "docker_slot": {"type": "number", "description": "Absent when unset"},
    "status": {"$ref": "#/components/schemas/SessionStatus"},
    "last_heartbeat": {"type": "string", "format": "date-time"},
    "current_task_id": {"type": "string", "description": "Absent when unset"},
    "started_at": {"type": "string", "format": "date-time"},
    "completed_at": {"type": "string", "format": "date-time", "description": "Absent until completed or failed"},
    "metadata": {"type": "object", "additionalProperties": true, "description": "Free-form; reserved keys failure_reason, failure_timestamp, error_details, stalled_reason, stalled_timestamp, recovery"},
    "created_at": {"type": "string", "format": "date-time"},
    "updated_at": {"type": "string", "format": "date-time"},
    "heartbeat_timeout_s": {"type": "integer", "description": "Seconds without heartbeat after which the session is overdue (default 300)"},
    "deadline_at": {"type": "string", "format": "date-time", "description": "last_heartbeat + heartbeat_timeout_s"},
    "epoch": {"type": "integer", "description": "Ownership generation, bumped on recovery (fencing token)"},
    "directive": {"type": "string", "enum": ["continue", "pause", "stop"], "description": "What the agent is told in heartbeat replies"},
    "directive_reason": {"type": "string", "description": "Why the directive was set; absent when none"},
    "input_timeout_s": {"type": "integer", "description": "awaiting_input escalation timeout; absent when unset"},
    "awaiting_since": {"type": "string", "format": "date-time", "description": "When the session started waiting for a human (awaiting_input only)"},
    "input_overdue_at": {"type": "string", "format": "date-time", "description": "When the awaiting_input escalation fired"},
    "__v": {"type": "integer", "description": "Storage artefact, always 0"}
  }
},
"SessionEvents": {
  "type": "object",
  "description": "A page of one session's timeline, oldest first.",
  "required": ["session_id", "events", "next_after"],
  "properties": {
    "session_id": {"type": "string"},
    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
    "next_after": {"type": "integer", "description": "Pass as `after` to get the next page (the last seq returned, or the given `after`)"}
  }
},
"Event": {
  "type": "object",
  "description": "One outbox event: a state change, with the new state of the record.",
  "required": ["seq", "type", "occurred_at", "data"],
  "properties": {
    "seq": {"type": "integer", "description": "Global, gap-free, increasing"},
    "type": {"type": "string", "description": "session.created, session.stalled, task.completed, machine.offline, incident.mass_stall, ..."},
    "occurred_at": {"type": "string", "format": "date-time"},
    "project_id": {"type": "string"},
    "session_id": {"type": "string"},
    "task_id": {"type": "string"},
    "machine_id": {"type": "string"},
    "data": {"type": "object", "additionalProperties": true}
  }
},
"EventMessage": {
  "type": "object",
  "description": "A message on the event WebSocket (after the 101 upgrade). The server sends {type: event, seq, event_type, occurred_at, ids, data} for each event in seq order, {type: subscribed, after_seq} after a subscribe, {type: pong}, {type: error, code, message, last_seq} (codes bad_message, bad_subscription, unknown_type, slow_consumer, key_revoked) and {type: resync, message, last_seq} when the log no longer holds what was asked (refetch state). The client sends {type: subscribe, project_id?, session_id?, machine_id?, types?: [...], since?}, {type: unsubscribe} or {type: ping}.",
  "required": ["type"],
  "properties": {
    "type": {"type": "string", "enum": ["event", "subscribed", "unsubscribed", "pong", "error", "resync"]},
    "seq": {"type": "integer"},
    "event_type": {"type": "string"},
    "occurred_at": {"type": "string", "format": "date-time"},
    "project_id": {"type": "string"},
    "session_id": {"type": "string"},
    "task_id": {"type": "string"},
    "machine_id": {"type": "string"},
    "data": {"type": "object", "additionalProperties": true},
    "code": {"type": "string"},
    "message": {"type": "string"},
    "last_seq": {"type": "integer"},
    "after_seq": {"type": "integer"}
  }
},
"EventStream": {
  "type": "string",
  "description": "text/event-stream: `id: <seq>`, `event: <event type>`, `data: <EventMessage JSON>` per event; `event: resync` or `event: error` (slow_consumer, key_revoked) before the server closes; `: keepalive` comments; reconnect with Last-Event-ID to resume without gaps or duplicates."
},
"StreamTicket": {
  "type": "object",
  "description": "A single-use ticket for ?ticket= on the stream endpoints, valid 30 seconds.",
  "required": ["ticket", "expires_at"],
  "properties": {
    "ticket": {"type": "string", "pattern": "^tk_"},
    "expires_at": {"type": "string", "format": "date-time"}
  }
},
"IncidentList": {
  "type": "object",
  "description": "Open incidents of the service.",
  "required": ["incidents"],
  "properties": {
    "incidents": {"type": "array", "items": {"$ref": "#/components/schemas/Incident"}}
  }
},
"Incident": {
  "type": "object",
  "description": "The mass-stall brake's incident: too many sessions overdue at once, so none was stalled.",
  "required": ["type", "since", "overdue_sessions", "active_sessions", "cleared_by_operator"],
  "properties": {
    "type": {"type": "string", "enum": ["mass_stall"]},
    "since": {"type": "string", "format": "date-time"},
    "overdue_sessions": {"type": "integer"},
    "active_sessions": {"type": "integer"},
    "cleared_by_operator": {"type": "boolean", "description": "The next sweep stalls the overdue sessions and closes the incident"}
  }
},
"LivenessItem": {
  "type": "object",
  "description": "Item of /sessions/stale and /sessions/active (contract §4.3.1).",
  "required": ["session_id", "project_id", "machine_id", "status", "last_heartbeat",
               "time_since_heartbeat", "started_at"],
  "properties": {
    "session_id": {"type": "string"},
    "project_id": {"type": "string"},
    "machine_id": {"type": "string"},
    "docker_slot": {"type": "number"},
    "status": {"$ref": "#/components/schemas/SessionStatus"},
    "last_heartbeat": {"type": "string", "format": "date-time"},
    "current_task_id": {"type": "string"},
    "time_since_heartbeat": {"type": "integer", "description": "Whole seconds since last_heartbeat"},
    "started_at": {"type": "string", "format": "date-time"}
  }
},
"RecoverableItem": {
  "type": "object",
  "description": "Failed or stalled session that may be recovered (contract §4.6.1).",
  "required": ["session_id", "project_id", "status", "machine_id", "recovery_attempts",
               "last_heartbeat", "minutes_since_heartbeat", "can_recover"],
  "properties": {
    "session_id": {"type": "string"},
    "project_id": {"type": "string"},
    "status": {"$ref": "#/components/schemas/SessionStatus"},
    "machine_id": {"type": "string"},
    "docker_slot": {"type": "number"},
    "current_task_id": {"type": "string"},
    "recovery_attempts": {"type": "integer"},
    "last_heartbeat": {"type": "string", "format": "date-time"},
    "failed_at": {"type": "string", "format": "date-time", "description": "completed_at; absent for stalled sessions"},
    "minutes_since_heartbeat": {"type": "integer"},
    "can_recover": {"type": "boolean", "description": "recovery_attempts < 3"},
    "recovery_blocked_reason": {"type": "string", "description": "Present only when can_recover is false"}
  }
},
"CleanupResult": {
  "type": "object",
  "description": "Outcome of POST /sessions/cleanup (contract §4.5.3).",
  "required": ["sessions_affected", "tasks_deleted", "breakdown_by_status", "operation",
               "estimated_space_freed_bytes", "completed_at", "sessions_skipped"],
  "properties": {
    "sessions_affected": {"type": "integer"},
    "tasks_deleted": {"type": "integer"},
    "breakdown_by_status": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "One key per requested status"},
    "operation": {"type": "string", "enum": ["dry_run", "archive", "delete"]},
    "estimated_space_freed_bytes": {"type": "integer"},
    "completed_at": {"type": "string", "format": "date-time"},
    "sessions_skipped": {"type": "integer", "description": "Matched sessions left alone because they are not terminal (archive mode)"}
  }
},
"ProjectSummary": {
  "type": "object",
  "description": "Sessions of a project grouped by status (contract §4.3.3). Archived sessions count only in stats.total.",
  "required": ["project_id", "sessions", "stats"],
  "properties": {
    "project_id": {"type": "string"},
    "sessions": {
      "type": "object",
      "required": ["active", "paused", "stalled", "completed", "failed"],
      "properties": {
        "active": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}},
        "paused": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}},
        "stalled": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}},
        "completed": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}},
        "failed": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}
      }
    },
    "stats": {
      "type": "object",
      "required": ["total", "active", "paused", "stalled", "completed", "failed"],
      "properties": {
        "total": {"type": "integer"},
        "active": {"type": "integer"},
        "paused": {"type": "integer"},
        "stalled": {"type": "integer"},
        "completed": {"type": "integer"},
        "failed": {"type": "integer"}
      }
    }
  }
},
"HeartbeatResult": {
  "type": "object",
  "description": "Outcome of a session heartbeat (contract §4.2.6).",
  "required": ["session_id", "status", "last_heartbeat", "message", "deadline_at", "directive",
               "epoch", "heartbeat_interval_s", "next_heartbeat_due"],
  "properties": {
    "session_id": {"type": "string"},
    "status": {"$ref": "#/components/schemas/SessionStatus"},
    "last_heartbeat": {"type": "string", "format": "date-time"},
    "message": {"type": "string", "enum": ["Heartbeat updated successfully", "Heartbeat updated and session reactivated from stalled state"]},
    "deadline_at": {"type": "string", "format": "date-time", "description": "When the session becomes overdue without another heartbeat"},
    "directive": {"type": "string", "enum": ["continue", "pause", "stop"], "description": "What the agent should do now"},
    "directive_reason": {"type": "string"},
    "epoch": {"type": "integer", "description": "Current ownership epoch; send it back to be fenced against stale owners"},
    "heartbeat_interval_s": {"type": "integer", "description": "Recommended seconds between heartbeats (a third of the timeout)"},
    "next_heartbeat_due": {"type": "string", "format": "date-time", "description": "last_heartbeat + heartbeat_interval_s"}
  }
},
"SessionHealth": {
  "type": "object",
  "description": "Health of one session (contract §4.3.5).",
  "required": ["session_id", "project_id", "machine_id", "status", "last_heartbeat", "is_stale",
               "time_since_heartbeat", "recommendations", "started_at"],
  "properties": {
    "session_id": {"type": "string"},
    "project_id": {"type": "string"},
    "machine_id": {"type": "string"},
    "docker_slot": {"type": "number"},
    "status": {"$ref": "#/components/schemas/SessionStatus"},
    "last_heartbeat": {"type": "string", "format": "date-time"},
    "current_task_id": {"type": "string"},
    "is_stale": {"type": "boolean", "description": "time_since_heartbeat > threshold"},
    "time_since_heartbeat": {"type": "integer"},
    "recommendations": {"type": "array", "items": {"type": "string"}},
    "started_at": {"type": "string", "format": "date-time"},
    "completed_at": {"type": "string", "format": "date-time"}
  }
},
"FailureInfo": {
  "type": "object",
  "description": "Failure analysis of a failed session (contract §4.4.2).",
  "required": ["session_id", "project_id", "machine_id", "status", "failure_reason", "failed_at",
               "last_heartbeat", "started_at", "duration_minutes", "analysis", "session"],
  "properties": {
    "session_id": {"type": "string"},
    "project_id": {"type": "string"},
    "machine_id": {"type": "string"},
    "docker_slot": {"type": "number"},
    "status": {"type": "string", "enum": ["failed"]},
    "failure_reason": {"type": "string", "description": "metadata.failure_reason, or Unknown"},
    "error_details": {"type": "object", "additionalProperties": true},
    "failed_at": {"type": "string", "format": "date-time"},
    "last_heartbeat": {"type": "string", "format": "date-time"},
    "last_successful_task_id": {"type": "string"},
    "last_successful_task_name": {"type": "string"},
    "current_task_id": {"type": "string"},
    "started_at": {"type": "string", "format": "date-time"},
    "duration_minutes": {"type": "integer"},
    "analysis": {
      "type": "object",
      "required": ["is_very_stale", "has_stuck_tasks", "stuck_task_count", "minutes_since_heartbeat",
                   "recovery_recommendations"],
      "properties": {
        "is_very_stale": {"type": "boolean"},
        "has_stuck_tasks": {"type": "boolean"},
        "stuck_task_count": {"type": "integer"},
        "minutes_since_heartbeat": {"type": "integer"},
        "recovery_recommendations": {"type": "array", "items": {"type": "string"}, "minItems": 1}
      }
    },
    "session": {"$ref": "#/components/schemas/Session"}
  }
},
"PurgeResult": {
  "type": "object",
  "description": "Outcome of DELETE /sessions/{id}/purge (contract §4.5.2).",
  "required": ["session_id", "tasks_deleted", "purged_at", "purged"],
  "properties": {
    "session_id": {"type": "string"},
    "tasks_deleted": {"type": "integer"},
    "purged_at": {"type": "string", "format": "date-time"},
    "purged": {"type": "boolean", "enum": [true]}
  }
},
"RecoveryCheckpoint": {
  "type": "object",
  "description": "Checkpoint recorded by prepare-recovery (contract §4.6.2). metadata is the session's metadata before the call.",
  "required": ["session_id", "status", "machine_id", "recovery_attempts", "recovery_checkpoint_at",
               "metadata"],
  "properties": {
    "session_id": {"type": "string"},
    "status": {"$ref": "#/components/schemas/SessionStatus"},
    "last_task_id": {"type": "string", "description": "current_task_id; absent when unset"},
    "machine_id": {"type": "string"},
    "docker_slot": {"type": "number"},
    "recovery_attempts": {"type": "integer"},
    "recovery_checkpoint_at": {"type": "string", "format": "date-time"},
    "metadata": {"type": "object", "additionalProperties": true}
  }
},
"RecoveryAttempt": {
  "type": "object",
  "description": "One entry of metadata.recovery.recovery_history (contract §4.6).",
  "required": ["attempted_at", "success"],
  "properties": {
    "attempted_at": {"type": "string", "format": "date-time"},
    "success": {"type": "boolean"},
    "new_machine_id": {"type": "string", "nullable": true},
    "new_docker_slot": {"type": "number", "nullable": true},
    "resumed_from_task_id": {"type": "string", "nullable": true},
    "error": {"type": "string"}
  }
},
"RecoveryHistory": {
  "type": "object",
  "description": "Recovery attempts of a session (contract §4.6.4).",
  "required": ["session_id", "total_attempts", "successful_attempts", "failed_attempts", "attempts",
               "current_status"],
  "properties": {
    "session_id": {"type": "string"},
    "total_attempts": {"type": "integer"},
    "successful_attempts": {"type": "integer"},
    "failed_attempts": {"type": "integer"},
    "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/RecoveryAttempt"}},
    "last_recovery_at": {"type": "string", "format": "date-time", "description": "Absent if never recovered"},
    "current_status": {"$ref": "#/components/schemas/SessionStatus"}
  }
},
"Task": {
  "type": "object",
  "description": "Task document (contract §3.2).",
  "required": ["_id", "task_id", "session_id", "project_id", "task_name", "status", "metadata",
               "created_at", "updated_at", "__v"],
  "properties": {
    "_id": {"type": "string", "pattern": "^[0-9a-f]{24}$", "description": "Storage artefact (ObjectId-shaped)"},
    "task_id": {"type": "string", "format": "uuid"},
    "session_id": {"type": "string"},
    "project_id": {"type": "string"},
    "github_issue_id": {"type": "string"},
    "task_name": {"type": "string"},
    "status": {"$ref": "#/components/schemas/TaskStatus"},
    "started_at": {"type": "string", "format": "date-time", "description": "Set when the task enters in_progress from pending"},
    "completed_at": {"type": "string", "format": "date-time", "description": "Set on completed or failed"},
    "error_message": {"type": "string"},
    "metadata": {"type": "object", "additionalProperties": true},
    "created_at": {"type": "string", "format": "date-time"},
    "updated_at": {"type": "string", "format": "date-time"},
    "__v": {"type": "integer", "description": "Storage artefact, always 0"}
  }
},
"TaskProgress": {
  "type": "object",
  "description": "Tasks of a session grouped by status, with progress (contract §4.7.9).",
  "required": ["session_id", "tasks", "stats"],
  "properties": {
    "session_id": {"type": "string"},
    "tasks": {
      "type": "object",
      "required": ["pending", "in_progress", "completed", "failed", "blocked"],
      "properties": {
        "pending": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
        "in_progress": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
        "completed": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
        "failed": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
        "blocked": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}}
      }
    },
    "stats": {
      "type": "object",
      "required": ["total", "pending", "in_progress", "completed", "failed", "blocked",
                   "completion_percentage"],
      "properties": {
        "total": {"type": "integer"},
        "pending": {"type": "integer"},
        "in_progress": {"type": "integer"},
        "completed": {"type": "integer"},
        "failed": {"type": "integer"},
        "blocked": {"type": "integer"},
        "completion_percentage": {"type": "integer", "minimum": 0, "maximum": 100, "description": "round(100 * completed / total), 0 when total is 0"}
      }
    }
  }
},
"Machine": {
  "type": "object",
  "description": "Machine document (contract §3.3).",
  "required": ["_id", "machine_id", "hostname", "docker_slots", "active_sessions", "status",
               "last_heartbeat", "metadata", "created_at", "updated_at", "__v"],
  "properties": {
    "_id": {"type": "string", "pattern": "^[0-9a-f]{24}$", "description": "Storage artefact (ObjectId-shaped)"},
    "machine_id": {"type": "string"},
    "hostname": {"type": "string"},
    "docker_slots": {"type": "array", "items": {"type": "integer", "minimum": 1}, "description": "Slot numbers in the order given"},
    "active_sessions": {"type": "array", "items": {"type": "string"}, "description": "Session ids assigned through assign-session"},
    "status": {"$ref": "#/components/schemas/MachineStatus"},
    "last_heartbeat": {"type": "string", "format": "date-time"},
    "metadata": {"type": "object", "additionalProperties": true},
    "created_at": {"type": "string", "format": "date-time"},
    "updated_at": {"type": "string", "format": "date-time"},
    "__v": {"type": "integer", "description": "Storage artefact, always 0"}
  }
},
"MachineAvailability": {
  "type": "object",
  "description": "Online machine with its free slots (contract §4.8.1). Occupancy is derived from active sessions naming the machine.",
  "required": ["machine_id", "hostname", "status", "total_slots", "occupied_slots", "available_slots",
               "available_slot_numbers", "active_sessions", "last_heartbeat"],
  "properties": {
    "machine_id": {"type": "string"},
    "hostname": {"type": "string"},
    "status": {"$ref": "#/components/schemas/MachineStatus"},
    "total_slots": {"type": "integer"},
    "occupied_slots": {"type": "integer"},
    "available_slots": {"type": "integer"},
    "available_slot_numbers": {"type": "array", "items": {"type": "integer"}},
    "active_sessions": {"type": "array", "items": {"type": "string"}},
    "last_heartbeat": {"type": "string", "format": "date-time"}
  }
},
"MachineHeartbeatResult": {
  "type": "object",
  "description": "Outcome of a machine heartbeat (contract §4.8.9).",
  "required": ["machine_id", "status", "last_heartbeat", "message"],
  "properties": {
    "machine_id": {"type": "string"},
    "status": {"$ref": "#/components/schemas/MachineStatus"},
    "last_heartbeat": {"type": "string", "format": "date-time"},
    "message": {"type": "string", "enum": ["Heartbeat updated successfully", "Heartbeat updated and machine brought back online"]}
  }
},
"Health": {
  "type": "object",
  "description": "GET /health (contract §10.1).",
  "required": ["status", "timestamp", "uptime", "database", "latency"],
  "properties": {
    "status": {"type": "string", "enum": ["ok"]},
    "timestamp": {"type": "string", "format": "date-time"},
    "uptime": {"type": "number", "description": "Process uptime in seconds"},
    "database": {"type": "string", "enum": ["connected", "disconnected"]},
    "latency": {"type": "integer", "nullable": true, "description": "Database ping in ms; null when the ping failed"}
  }
},
"HealthReady": {
  "type": "object",
  "description": "GET /health/ready (contract §10.2). Always HTTP 200.",
  "required": ["ready", "timestamp", "database"],
  "properties": {
    "ready": {"type": "boolean"},
    "timestamp": {"type": "string", "format": "date-time"},
    "database": {"type": "string", "enum": ["connected", "disconnected"]}
  }
},
"HealthLive": {
  "type": "object",
  "description": "GET /health/live (contract §10.3).",
  "required": ["alive", "timestamp", "uptime"],
  "properties": {
    "alive": {"type": "boolean", "enum": [true]},
    "timestamp": {"type": "string", "format": "date-time"},
    "uptime": {"type": "number"}
  }
},
"HealthCheck": {"type": "string", "enum": ["ok", "warning", "critical"]},
"JobStatus": {
  "type": "object",
  "description": "A background job as seen by the scheduler.",
  "required": ["name", "interval_s", "runs", "failures", "last_duration_ms", "last_changed"],
  "properties": {
    "name": {"type": "string"},
    "interval_s": {"type": "integer"},
    "runs": {"type": "integer"},
    "failures": {"type": "integer"},
    "last_run_at": {"type": "string", "format": "date-time", "description": "Absent before the first run"},
    "last_duration_ms": {"type": "number"},
    "last_changed": {"type": "integer", "description": "Records changed by the last run"},
    "last_error": {"type": "string", "description": "Present while the last run failed"}
  }
},
"HealthDetailed": {
  "type": "object",
  "description": "GET /health/detailed (contract §10.4) plus storage figures and background jobs. Always HTTP 200.",
  "required": ["status", "timestamp", "uptime", "database", "metrics", "checks", "incident", "jobs"],
  "properties": {
    "status": {"type": "string", "enum": ["ok", "degraded", "unhealthy"]},
    "timestamp": {"type": "string", "format": "date-time"},
    "uptime": {"type": "number"},
    "database": {
      "type": "object",
      "required": ["status", "latency", "backend", "commits", "writes", "failed_commits", "queue_depth"],
      "properties": {
        "status": {"type": "string", "enum": ["connected", "disconnected"]},
        "latency": {"type": "integer", "description": "Ping in ms; 10000 when the ping failed"},
        "backend": {"type": "string"},
        "commits": {"type": "integer"},
        "writes": {"type": "integer"},
        "failed_commits": {"type": "integer"},
        "queue_depth": {"type": "integer"}
      }
    },
    "metrics": {
      "type": "object",
      "required": ["uptime", "memoryUsage", "cpuUsage", "activeSessionCount", "errorRate",
                   "averageResponseTime", "databaseLatency", "version"],
      "properties": {
        "uptime": {"type": "number"},
        "memoryUsage": {
          "type": "object",
          "required": ["heapUsed", "heapTotal", "external", "rss", "percentage"],
          "properties": {
            "heapUsed": {"type": "integer", "description": "MiB"},
            "heapTotal": {"type": "integer", "description": "MiB"},
            "external": {"type": "integer", "description": "MiB"},
            "rss": {"type": "integer", "description": "MiB"},
            "percentage": {"type": "number"}
          }
        },
        "cpuUsage": {
          "type": "object",
          "required": ["user", "system"],
          "properties": {
            "user": {"type": "integer", "description": "CPU ms"},
            "system": {"type": "integer", "description": "CPU ms"}
          }
        },
        "activeSessionCount": {"type": "integer", "description": "Sessions active, paused or stalled"},
        "errorRate": {"type": "number", "description": "Percent of requests answered with an error"},
        "averageResponseTime": {"type": "number", "description": "ms"},
        "databaseLatency": {"type": "integer"},
        "version": {"type": "string"}
      }
    },
    "checks": {
      "type": "object",
      "required": ["memory", "database", "responseTime", "backgroundJobs"],
      "properties": {
        "memory": {"$ref": "#/components/schemas/HealthCheck"},
        "database": {"$ref": "#/components/schemas/HealthCheck"},
        "responseTime": {"$ref": "#/components/schemas/HealthCheck"},
        "backgroundJobs": {"type": "string", "enum": ["ok", "warning", "disabled"]}
      }
    },
    "incident": {"allOf": [{"$ref": "#/components/schemas/Incident"}], "nullable": true, "description": "The open mass-stall incident, or null"},
    "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobStatus"}}
  }
},
"HealthSystem": {
  "type": "object",
  "description": "GET /health/system (contract §10.5). Memory figures in MiB.",
  "required": ["uptime", "nodeVersion", "platform", "arch", "cpus", "totalMemory", "freeMemory",
               "heapUsed", "heapTotal", "external", "rss"],
  "properties": {
    "uptime": {"type": "number"},
    "nodeVersion": {"type": "string", "description": "statetrack/<version>"},
    "platform": {"type": "string"},
    "arch": {"type": "string"},
    "cpus": {"type": "integer"},
    "totalMemory": {"type": "integer"},
    "freeMemory": {"type": "integer"},
    "heapUsed": {"type": "integer"},
    "heapTotal": {"type": "integer"},
    "external": {"type": "integer"},
    "rss": {"type": "integer"}
  }
},
"PrometheusText": {
  "type": "string",
  "description": "Prometheus text exposition format 0.0.4."
},
"LogLevel": {
  "type": "object",
  "description": "The minimum level of this process's log lines (GET/PUT /admin/log-level).",
  "required": ["level"],
  "properties": {
    "level": {"type": "string", "enum": ["debug", "info", "warn", "error"]}
  }
},
"ApiKey": {
  "type": "object",
  "description": "An API key as listed: never the key itself or its hash.",
  "required": ["id", "prefix", "name", "role", "machine_id", "projects", "created_at",
               "last_used_at", "expires_at", "revoked_at", "status"],
  "properties": {
    "id": {"type": "integer"},
    "prefix": {"type": "string", "description": "The first 11 characters of the key (not secret)"},
    "name": {"type": "string"},
    "role": {"type": "string", "enum": ["admin", "write", "read", "machine"]},
    "machine_id": {"type": "string", "nullable": true,
                   "description": "The machine a machine key is bound to"},
    "projects": {"type": "array", "items": {"type": "string"},
                 "description": "Project scope; empty: every project"},
    "created_at": {"type": "string", "format": "date-time"},
    "last_used_at": {"type": "string", "format": "date-time", "nullable": true,
                     "description": "Recorded at most once a minute"},
    "expires_at": {"type": "string", "format": "date-time", "nullable": true},
    "revoked_at": {"type": "string", "format": "date-time", "nullable": true},
    "status": {"type": "string", "enum": ["active", "expired", "revoked"]}
  }
},
"CreatedApiKey": {
  "type": "object",
  "description": "A new key: the ApiKey fields plus `key`, returned this once only.",
  "allOf": [
    {"$ref": "#/components/schemas/ApiKey"},
    {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}}
  ]
},
"RotatedApiKey": {
  "type": "object",
  "description": "The new key (with `key`, returned this once only) and the key it replaces.",
  "allOf": [
    {"$ref": "#/components/schemas/CreatedApiKey"},
    {"type": "object", "required": ["previous"],
     "properties": {"previous": {"$ref": "#/components/schemas/ApiKey"}}}
  ]
},
"ErrorEnvelope": {
  "type": "object",
  "description": "Every error response (contract §1.7.3).",
  "required": ["statusCode", "error", "error_code", "message", "request_id", "timestamp", "path"],
  "properties": {
    "statusCode": {"type": "integer"},
    "error": {"type": "string", "description": "HTTP reason phrase (Bad Request, Unauthorized, ...), except rate_limit_exceeded for 429"},
    "error_code": {"type": "string", "enum": ["validation_error", "unauthorized", "forbidden", "not_found", "conflict", "timeout", "payload_too_large", "header_too_large", "rate_limit_exceeded", "internal_error", "service_unavailable"]},
    "message": {
      "description": "A string, or the list of messages for a schema-validation failure",
      "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
    },
    "details": {"description": "The validation messages (array) or storage-validation / duplicate-key object, when applicable"},
    "request_id": {"type": "string", "format": "uuid", "description": "Same as the X-Request-Id response header"},
    "timestamp": {"type": "string", "format": "date-time"},
    "path": {"type": "string", "description": "Request URL including the query string"}
  }
}
})json";

json::object enum_component(std::span<const std::string_view> names, std::string_view description) {
  json::array values;
  for (auto n : names)
    values.emplace_back(n);
  return json::object{
      {"type", "string"}, {"enum", std::move(values)}, {"description", description}};
}

const json::object& response_components() {
  static const json::object components = [] {
    json::object o = json::parse(response_components_json).as_object();
    o["SessionStatus"] = enum_component(core::session_status_names, "Session status");
    o["TaskStatus"] = enum_component(core::task_status_names, "Task status");
    o["MachineStatus"] = enum_component(core::machine_status_names, "Machine status");
    return o;
  }();
  return components;
}

// Query parameters read one by one by handlers that have no named query schema.
struct informal_param {
  std::string_view route_name;
  std::string_view name;
  std::string_view type;  // string | number | integer
  std::string_view description;
  std::optional<double> minimum{};
};

constexpr std::string_view threshold_text =
    "Staleness threshold in seconds (default 300; missing, 0, empty or non-numeric mean 300)";

const std::vector<informal_param>& informal_params() {
  static const std::vector<informal_param> list = {
      {"get_sessions_stale", "threshold", "number", threshold_text, std::nullopt},
      {"get_sessions_active", "project_id", "string", "Exact project id", std::nullopt},
      {"get_sessions_active", "machine_id", "string", "Exact machine id", std::nullopt},
      {"get_session_health", "threshold", "number", threshold_text, std::nullopt},
      {"get_sessions_archived", "project_id", "string", "Exact project id", std::nullopt},
      {"get_sessions_archived", "machine_id", "string", "Exact machine id", std::nullopt},
      {"get_sessions_archived", "limit", "integer", "Page size (default 20; above 100 means 100)",
       1},
      {"get_sessions_archived", "offset", "integer", "Items to skip (default 0)", 0},
      {"get_session_events", "after", "integer", "Only events with a larger seq (default 0)", 0},
      {"get_session_events", "limit", "integer", "Page size (default 100, at most 1000)", 1},
  };
  return list;
}

std::string schema_ref(std::string_view name) {
  std::string out(schema_ref_prefix);
  out += name;
  return out;
}

json::object ref_object(std::string_view name) {
  return json::object{{"$ref", schema_ref(name)}};
}

std::string_view verb_key(http::method m) {
  switch (m) {
    case http::method::get:
      return "get";
    case http::method::head:
      return "head";
    case http::method::post:
      return "post";
    case http::method::put:
      return "put";
    case http::method::patch:
      return "patch";
    case http::method::del:
      return "delete";
    case http::method::options:
      return "options";
    case http::method::other:
      break;
  }
  return "x-other";
}

std::vector<std::string_view> split_segments(std::string_view pattern) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < pattern.size()) {
    std::size_t j = pattern.find('/', i);
    if (j == std::string_view::npos) j = pattern.size();
    if (j > i) out.push_back(pattern.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

std::string_view resource_noun(std::string_view pattern) {
  auto segs = split_segments(pattern);
  if (segs.empty()) return "Resource";
  if (segs[0] == "sessions") return "Session";
  if (segs[0] == "tasks") return "Task";
  if (segs[0] == "machines") return "Machine";
  if (segs[0] == "keys") return "API key (numeric id or prefix)";
  return "Resource";
}

std::string path_param_description(std::string_view pattern, std::string_view name) {
  if (name == "id") return std::string(resource_noun(pattern)) + " id";
  if (name == "projectId") return "Project id";
  if (name == "machineId") return "Machine id";
  if (name == "sessionId") return "Session id";
  if (name == "taskId") return "Task id";
  return std::string(name);
}

json::object error_response(std::string_view description) {
  return json::object{
      {"description", description},
      {"content",
       json::object{{"application/json", json::object{{"schema", ref_object("ErrorEnvelope")}}}}}};
}

// The schema of a success body: a component reference (or inline JSON schema text), wrapped
// in an array when the route answers a list.
json::value success_schema(const http::route_doc& d) {
  json::value inner;
  if (d.response_schema.starts_with("{")) {
    inner = json::parse(d.response_schema);
  } else {
    inner = ref_object(d.response_schema);
  }
  if (!d.response_is_array) return inner;
  return json::object{{"type", "array"}, {"items", std::move(inner)}};
}

std::string_view media_type_of(std::string_view response_schema) {
  if (response_schema == "PrometheusText") return "text/plain";
  if (response_schema == "EventStream") return "text/event-stream";
  return "application/json";
}

std::string operation_description(const http::route& r) {
  std::string out;
  if (r.authenticated) {
    out += "Requires an API key (Authorization: Bearer <key> or X-API-Key) with the ";
    out += core::access_name(r.need);
    out += " right";
    if (r.need == core::access_level::read) {
      out += " (roles read, write, admin";
    } else if (r.need == core::access_level::write) {
      out += " (roles write, admin";
    } else {
      out += " (role admin";
    }
    out += r.machine_ok ? "; also machine keys, for their own machine)." : ").";
    if (r.target != http::target_kind::none) {
      out += " Project-scoped and machine keys may only act on ";
      out += r.target == http::target_kind::session   ? "sessions in their scope."
             : r.target == http::target_kind::task    ? "tasks of sessions in their scope."
             : r.target == http::target_kind::machine ? "their own machine."
                                                      : "projects in their scope.";
    }
  } else {
    out += "Public: no API key needed.";
  }
  switch (r.limit) {
    case http::limit_class::none:
      out += " Not rate limited.";
      break;
    case http::limit_class::standard:
      out += " Rate limited per client IP: own bucket, default 100 requests per 60 s.";
      break;
    case http::limit_class::heartbeat:
      out += " Rate limited per client IP: own bucket, default 120 requests per 60 s.";
      break;
  }
  if (r.doc.request_schema.empty() && r.verb != http::method::get && r.verb != http::method::head) {
    out += " Any request body is ignored.";
  }
  return out;
}

json::array parameters_of(const http::route& r) {
  json::array params;
  for (auto seg : split_segments(r.pattern)) {
    if (seg.empty() || seg[0] != ':') continue;
    auto name = seg.substr(1);
    params.push_back(json::object{{"name", name},
                                  {"in", "path"},
                                  {"required", true},
                                  {"description", path_param_description(r.pattern, name)},
                                  {"schema", json::object{{"type", "string"}}}});
  }
  if (!r.doc.query_schema.empty()) {
    if (const schema* s = schemas::find(r.doc.query_schema)) {
      json::object js = to_json_schema(*s);
      const json::object& props = js.at("properties").as_object();
      for (const auto& f : s->fields) {
        json::object ps = props.at(f.name).as_object();
        ps.erase("nullable");
        json::object p{{"name", f.name}, {"in", "query"}, {"required", f.required}};
        if (auto* d = ps.if_contains("description")) {
          p["description"] = *d;
          ps.erase("description");
        }
        p["schema"] = std::move(ps);
        params.push_back(std::move(p));
      }
    } else {
      // Unknown schema name: reference it anyway so the dangling $ref is caught by the tests.
      params.push_back(json::object{{"name", r.doc.query_schema},
                                    {"in", "query"},
                                    {"style", "form"},
                                    {"explode", true},
                                    {"schema", ref_object(r.doc.query_schema)}});
    }
  }
  for (const auto& ip : informal_params()) {
    if (ip.route_name != r.name) continue;
    json::object sch{{"type", ip.type}};
    if (ip.minimum) sch["minimum"] = *ip.minimum;
    params.push_back(json::object{{"name", ip.name},
                                  {"in", "query"},
                                  {"required", false},
                                  {"description", ip.description},
                                  {"schema", std::move(sch)}});
  }
  return params;
}

json::object operation_of(const http::route& r) {
  json::object op;
  if (!r.doc.tag.empty()) op["tags"] = json::array{json::string(r.doc.tag)};
  op["summary"] = r.doc.summary;
  op["description"] = operation_description(r);
  op["operationId"] = r.name;
  auto params = parameters_of(r);
  if (!params.empty()) op["parameters"] = std::move(params);

  if (!r.doc.request_schema.empty()) {
    bool required = true;  // an unknown schema is assumed required; the $ref is flagged anyway
    if (const schema* s = schemas::find(r.doc.request_schema)) {
      required = false;
      for (const auto& f : s->fields)
        required = required || f.required;
    }
    op["requestBody"] = json::object{
        {"required", required},
        {"content", json::object{{"application/json",
                                  json::object{{"schema", ref_object(r.doc.request_schema)}}}}}};
  }

  json::object responses;
  json::object ok{{"description", http::reason_phrase(r.success_status)}};
  if (r.success_status != 204 && !r.doc.response_schema.empty()) {
    ok["content"] = json::object{
        {media_type_of(r.doc.response_schema), json::object{{"schema", success_schema(r.doc)}}}};
  }
  responses[std::to_string(r.success_status)] = std::move(ok);

  const bool has_params = r.pattern.find(':') != std::string::npos;
  const bool validates = !r.doc.request_schema.empty() || !r.doc.query_schema.empty();
  if (r.authenticated || validates || has_params) {
    responses["400"] = error_response(
        "Schema validation failed (message is an array), malformed JSON, invalid path escape or "
        "a business rule");
  }
  if (r.authenticated) {
    responses["401"] = error_response("API key missing, invalid, revoked or expired");
    responses["403"] = error_response(
        "The key lacks the right this operation needs (x-required-role), or the object is "
        "outside the key's project scope or machine");
  }
  if (has_params) responses["404"] = error_response("Not found");
  if (r.limit != http::limit_class::none) {
    responses["429"] = error_response("Rate limit exceeded (see Retry-After)");
  }
  if (r.authenticated) {
    responses["default"] = error_response(
        "Other errors: 404 for referenced records, 409 conflict, 413 payload too large, "
        "500 internal error, 503 storage unavailable");
  }
  op["responses"] = std::move(responses);

  if (r.authenticated) {
    op["security"] = json::array{json::object{{"bearer", json::array{}}},
                                 json::object{{"api-key", json::array{}}}};
  }
  // The right from the access table: public, read, write or admin; and the roles allowed.
  op["x-required-role"] = core::access_name(r.need);
  if (r.authenticated) {
    json::array roles;
    if (r.need == core::access_level::read) roles.emplace_back("read");
    if (r.need != core::access_level::admin) roles.emplace_back("write");
    roles.emplace_back("admin");
    if (r.machine_ok) roles.emplace_back("machine");
    op["x-allowed-roles"] = std::move(roles);
  }
  return op;
}

std::string_view tag_description(std::string_view tag) {
  if (tag == "health") return "Public health and readiness probes; never rate limited.";
  if (tag == "sessions")
    return "Claude Code sessions: lifecycle, heartbeats, failure handling, archival and recovery.";
  if (tag == "tasks") return "Tasks of a session and their status transitions.";
  if (tag == "machines") return "Machines, their docker slots and session assignment.";
  if (tag == "metrics") return "Prometheus metrics.";
  if (tag == "keys")
    return "API keys (admin): create, list, rotate and revoke; roles, machine binding, project "
           "scope and expiry.";
  return {};
}

constexpr std::string_view info_description =
    "Tracks Claude Code sessions, their tasks and the machines they run on.\n\n"
    "Authentication: every /sessions, /tasks, /machines and /metrics operation needs an API key, "
    "presented in one of two ways:\n"
    "- `Authorization: Bearer <key>` (scheme `bearer`). When an Authorization header starting "
    "with exactly `Bearer ` is present it is used, even if the key in it is wrong;\n"
    "- `X-API-Key: <key>` (scheme `api-key`), used when there is no usable Bearer header.\n"
    "A missing key or an unknown, revoked or expired key is answered with 401. The /health "
    "routes and these documentation pages are public.\n\n"
    "Authorization: keys have a role: admin (everything, including keys, cleanup and purge), "
    "write (reads and changes), read (reads), or machine (bound to one machine id: may register "
    "and heartbeat that machine and create, heartbeat and update only the sessions and tasks on "
    "it). Keys other than admin may carry a project scope that limits every read, write and "
    "event to those projects (lists are filtered). Each operation states the right it needs in "
    "`x-required-role` and the roles that hold it in `x-allowed-roles`; a valid key without the "
    "right, or acting on an object outside its scope, gets 403.\n\n"
    "Paths: every path below is also served under /api (for example /api/sessions is the same "
    "as /sessions).\n\n"
    "Errors use the ErrorEnvelope schema; every response carries an X-Request-Id header, and "
    "rate-limited routes carry X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset.";

}  // namespace

bool is_docs_route(const http::route& r) {
  return r.pattern == "/api/docs" || r.pattern.starts_with("/api/docs-");
}

std::string openapi_path(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 4);
  std::size_t i = 0;
  while (i < pattern.size()) {
    if (pattern[i] == ':' && (i == 0 || pattern[i - 1] == '/')) {
      std::size_t j = pattern.find('/', i);
      if (j == std::string_view::npos) j = pattern.size();
      out += '{';
      out += pattern.substr(i + 1, j - i - 1);
      out += '}';
      i = j;
    } else {
      out += pattern[i++];
    }
  }
  return out;
}

std::vector<std::string> response_component_names() {
  std::vector<std::string> out;
  for (const auto& kv : response_components())
    out.emplace_back(kv.key());
  return out;
}

std::vector<std::string_view> informal_query_routes() {
  std::vector<std::string_view> out;
  for (const auto& p : informal_params()) {
    if (out.empty() || out.back() != p.route_name) out.push_back(p.route_name);
  }
  return out;
}

json::object build_openapi(const http::router& router, std::string_view version) {
  json::object doc;
  doc["openapi"] = "3.0.3";
  doc["info"] = json::object{
      {"title", "statetrack API"}, {"version", version}, {"description", info_description}};

  json::array tags;
  json::object paths;
  std::vector<std::string_view> seen_tags;
  for (const auto& rp : router.routes()) {
    const http::route& r = *rp;
    if (is_docs_route(r)) continue;
    if (!r.doc.tag.empty() &&
        std::find(seen_tags.begin(), seen_tags.end(), r.doc.tag) == seen_tags.end()) {
      seen_tags.push_back(r.doc.tag);
      json::object t{{"name", r.doc.tag}};
      if (auto d = tag_description(r.doc.tag); !d.empty()) t["description"] = d;
      tags.push_back(std::move(t));
    }
    auto& item = paths[openapi_path(r.pattern)];
    if (!item.is_object()) item = json::object{};
    item.as_object()[verb_key(r.verb)] = operation_of(r);
  }
  doc["tags"] = std::move(tags);
  doc["paths"] = std::move(paths);

  json::object component_schemas;
  for (const schema* s : schemas::all())
    component_schemas[s->name] = to_json_schema(*s);
  for (const auto& kv : response_components()) {
    if (!component_schemas.contains(kv.key())) component_schemas[kv.key()] = kv.value();
  }
  json::object security_schemes{
      {"bearer", json::object{{"type", "http"},
                              {"scheme", "bearer"},
                              {"bearerFormat", "API Key"},
                              {"description", "Authorization: Bearer <key>"}}},
      {"api-key", json::object{{"type", "apiKey"},
                               {"in", "header"},
                               {"name", "X-API-Key"},
                               {"description", "X-API-Key: <key>"}}}};
  doc["components"] = json::object{{"schemas", std::move(component_schemas)},
                                   {"securitySchemes", std::move(security_schemes)}};
  return doc;
}

}  // namespace statetrack::api
