// Schema declarations (contract §4 tables). Field order is the order of error messages.
#include "api/schemas.hpp"

#include <array>

#include "core/types.hpp"

namespace statetrack::api::schemas {

namespace {
constexpr std::span<const std::string_view> session_statuses{core::session_status_names};
constexpr std::span<const std::string_view> task_statuses{core::task_status_names};
constexpr std::span<const std::string_view> machine_statuses{core::machine_status_names};
constexpr std::span<const std::string_view> directive_names{core::directive_names};
constexpr std::array<std::string_view, 4> key_role_values{"admin", "write", "read", "machine"};
constexpr std::span<const std::string_view> key_roles{key_role_values};

field_spec str(std::string_view name, bool required, std::string_view desc) {
  field_spec f;
  f.name = name;
  f.kind = field_kind::string;
  f.required = required;
  f.description = desc;
  return f;
}
field_spec num(std::string_view name, std::string_view desc) {
  field_spec f;
  f.name = name;
  f.kind = field_kind::number;
  f.description = desc;
  return f;
}
field_spec obj(std::string_view name, std::string_view desc) {
  field_spec f;
  f.name = name;
  f.kind = field_kind::object;
  f.description = desc;
  return f;
}
field_spec boolean(std::string_view name, bool required, std::string_view desc) {
  field_spec f;
  f.name = name;
  f.kind = field_kind::boolean;
  f.required = required;
  f.description = desc;
  return f;
}
field_spec one_of(std::string_view name, std::span<const std::string_view> values,
                  std::string_view desc) {
  field_spec f;
  f.name = name;
  f.kind = field_kind::enum_value;
  f.enum_values = values;
  f.description = desc;
  return f;
}
field_spec date(std::string_view name, std::string_view desc) {
  field_spec f;
  f.name = name;
  f.kind = field_kind::iso_date;
  f.description = desc;
  return f;
}
field_spec timeout_field() {
  field_spec f = num("heartbeat_timeout_s",
                     "Seconds without heartbeat after which the session is stalled (default 300)");
  f.integer = true;
  f.min = 1;
  f.max = 604800;
  return f;
}
field_spec input_timeout_field() {
  field_spec f = num("input_timeout_s",
                     "awaiting_input only: seconds of waiting for a human before the "
                     "session.input_overdue escalation (null clears)");
  f.integer = true;
  f.min = 1;
  f.max = 604800;
  return f;
}
field_spec epoch_field() {
  field_spec f = num("epoch",
                     "The session's ownership epoch as the caller knows it; a stale one is "
                     "refused with 409 stale_epoch and the stop directive");
  f.integer = true;
  f.min = 1;
  return f;
}
field_spec limit_field(std::optional<double> max) {
  field_spec f = num("limit", "Page size (default 20)");
  f.integer = true;
  f.min = 1;
  f.max = max;
  return f;
}
field_spec offset_field() {
  field_spec f = num("offset", "Items to skip (default 0)");
  f.integer = true;
  f.min = 0;
  return f;
}
field_spec slots_field(bool required) {
  field_spec f;
  f.name = "docker_slots";
  f.kind = field_kind::number_array;
  f.required = required;
  f.min = 1;
  f.unique = true;
  f.coerce_number = true;
  f.description = "Docker slot numbers (positive integers, unique)";
  return f;
}
}  // namespace

const schema create_session{
    "CreateSessionRequest",
    {str("project_id", true, "Project id (non-empty)"),
     str("machine_id", true, "Machine id (non-empty)"), num("docker_slot", "Docker slot number"),
     obj("metadata", "Free-form metadata"), timeout_field(), input_timeout_field()}};

const schema update_session{"UpdateSessionRequest",
                            {one_of("status", session_statuses, "New status (no transition rules)"),
                             num("docker_slot", "Docker slot (null clears)"),
                             str("current_task_id", false, "Current task (null clears)"),
                             obj("metadata", "Shallow-merged into the stored metadata"),
                             date("last_heartbeat", "Explicit last heartbeat (ISO 8601)"),
                             date("completed_at", "Explicit completion time (ISO 8601)"),
                             timeout_field(), input_timeout_field()}};

const schema list_sessions{
    "ListSessionsQuery",
    {one_of("status", session_statuses, "Filter by status"),
     str("project_id", false, "Filter by project"), str("machine_id", false, "Filter by machine"),
     limit_field(100), offset_field()}};

const schema failed_sessions{
    "FailedSessionsQuery",
    {str("project_id", false, "Filter by project"), str("machine_id", false, "Filter by machine"),
     limit_field(100), offset_field()}};

const schema recoverable_sessions{
    "RecoverableSessionsQuery",
    {str("project_id", false, "Filter by project"), str("machine_id", false, "Filter by machine"),
     [] {
       field_spec f = num("max_age_minutes", "Only sessions whose last heartbeat is this recent");
       f.min = 1;
       return f;
     }(),
     [] {
       field_spec f = num("min_age_minutes", "Only sessions whose last heartbeat is this old");
       f.min = 0;
       return f;
     }()}};

const schema mark_failed{
    "MarkFailedRequest",
    {str("reason", true, "Failure reason"), obj("error_details", "Structured error details")}};

const schema mark_stalled{"MarkStalledRequest", {str("reason", true, "Stall reason")}};

const schema purge_session{"PurgeSessionRequest", {[] {
                             field_spec f = boolean("confirm", true, "Must be true");
                             f.not_empty = true;
                             return f;
                           }()}};

const schema cleanup_sessions{
    "CleanupSessionsRequest",
    {[] {
       field_spec f =
           num("older_than_days", "Select sessions created more than this many days ago");
       f.required = true;
       f.min = 7;
       f.min_message = "older_than_days must be at least 7";
       return f;
     }(),
     [] {
       field_spec f;
       f.name = "statuses";
       f.kind = field_kind::enum_array;
       f.required = true;
       f.enum_values = session_statuses;
       f.description = "Statuses to select (only terminal ones are changed)";
       return f;
     }(),
     boolean("dry_run", false, "Report without changing anything"),
     boolean("archive", false, "Archive (true, default) or delete (false)")}};

const schema recover_session{"RecoverSessionRequest",
                             {str("new_machine_id", false, "Move the session to this machine"),
                              num("new_docker_slot", "Use this docker slot"),
                              str("resume_from_task_id", false, "Task to resume from")}};

const schema create_task{
    "CreateTaskRequest",
    {str("session_id", true, "Parent session (must exist)"), str("project_id", true, "Project id"),
     str("task_name", true, "Task name (non-empty)"),
     str("github_issue_id", false, "GitHub issue id"), obj("metadata", "Free-form metadata"),
     epoch_field()}};

const schema update_task{
    "UpdateTaskRequest",
    {one_of("status", task_statuses, "New status (transition table applies)"),
     str("github_issue_id", false, "GitHub issue id"), str("error_message", false, "Error message"),
     obj("metadata", "Shallow-merged into the stored metadata"), epoch_field()}};

const schema fail_task{"FailTaskRequest",
                       {[] {
                          field_spec f = str("error_message", true, "Why the task failed");
                          f.not_empty = true;
                          return f;
                        }(),
                        epoch_field()}};

const schema list_tasks{
    "ListTasksQuery",
    {str("session_id", false, "Filter by session"),
     one_of("status", task_statuses, "Filter by status"),
     str("project_id", false, "Filter by project"), limit_field(std::nullopt), offset_field()}};

const schema register_machine{"RegisterMachineRequest",
                              {str("machine_id", true, "Machine id (non-empty, unique)"),
                               str("hostname", true, "Host name (non-empty)"), slots_field(true),
                               obj("metadata", "Free-form metadata")}};

const schema update_machine{"UpdateMachineRequest",
                            {slots_field(false), one_of("status", machine_statuses, "New status"),
                             obj("metadata", "Replaces the whole metadata")}};

const schema list_machines{"ListMachinesQuery",
                           {one_of("status", machine_statuses, "Filter by status"),
                            str("hostname", false, "Filter by host name")}};

const schema assign_session{"AssignSessionRequest",
                            {str("session_id", true, "Session to assign"), [] {
                               field_spec f =
                                   num("docker_slot", "Slot to use (else the first free one)");
                               f.min = 1;
                               f.coerce_number = true;
                               return f;
                             }()}};

const schema release_session{"ReleaseSessionRequest",
                             {str("session_id", true, "Session to release"), epoch_field()}};

const schema set_directive{"SetDirectiveRequest",
                           {[] {
                              field_spec f =
                                  one_of("directive", directive_names,
                                         "What the agent is told in its next heartbeat reply");
                              f.required = true;
                              return f;
                            }(),
                            str("reason", false, "Why (shown to the agent and in the event)")}};

const schema create_api_key{
    "CreateApiKeyRequest",
    {[] {
       field_spec f = str("name", true, "A name for the key (shown in lists)");
       f.not_empty = true;
       return f;
     }(),
     [] {
       field_spec f = one_of("role", key_roles,
                             "admin (everything, including keys, cleanup and purge), write, read, "
                             "or machine (bound to machine_id)");
       f.required = true;
       return f;
     }(),
     str("machine_id", false, "The machine a machine key is bound to (machine keys only)"),
     [] {
       field_spec f;
       f.name = "projects";
       f.kind = field_kind::string_array;
       f.unique = true;
       f.max = 100;
       f.description =
           "Project scope: every read, write and event is limited to these projects (not for "
           "admin keys); absent or empty: every project";
       return f;
     }(),
     date("expires_at", "When the key stops working (must be in the future)"),
     [] {
       field_spec f = num("expires_in_s", "Alternative to expires_at: seconds from now");
       f.integer = true;
       f.min = 1;
       f.max = 315360000;
       return f;
     }()},
    "A new API key; the key itself is returned once"};

const schema rotate_api_key{
    "RotateApiKeyRequest",
    {[] {
      field_spec f =
          num("grace_s", "Seconds the old key keeps working (0 or absent: revoked at once)");
      f.integer = true;
      f.min = 0;
      f.max = 2592000;
      return f;
    }()},
    "Rotation of an API key"};

const std::vector<const schema*>& all() {
  static const std::vector<const schema*> list = {
      &create_session, &update_session, &list_sessions,  &failed_sessions,  &recoverable_sessions,
      &mark_failed,    &mark_stalled,   &purge_session,  &cleanup_sessions, &recover_session,
      &create_task,    &update_task,    &fail_task,      &list_tasks,       &register_machine,
      &update_machine, &list_machines,  &assign_session, &release_session,  &set_directive,
      &create_api_key, &rotate_api_key};
  return list;
}

const schema* find(std::string_view name) {
  for (const auto* s : all()) {
    if (s->name == name) return s;
  }
  return nullptr;
}

}  // namespace statetrack::api::schemas
