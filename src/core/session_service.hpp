// Session use cases: create, update, heartbeat, failure handling, archival, cleanup and
// recovery. Each write reads the current row, applies the contract's rules and writes the new
// state plus its outbox event in one transaction (the store serialises writers, so every
// transition is a compare-and-set). Created once by the app; safe to call from any thread.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/model.hpp"
#include "storage/store.hpp"

namespace statetrack::core {

template <class T>
using task_of = boost::asio::awaitable<result<T>>;

inline constexpr int max_recovery_attempts = 3;

struct create_session_input {
  std::string project_id;
  std::string machine_id;
  std::optional<double> docker_slot;
  std::string metadata = "{}";
  std::optional<int> heartbeat_timeout_s;
  std::optional<int> input_timeout_s;
};

struct update_session_input {
  std::optional<session_status> status;
  std::optional<double> docker_slot;
  bool clear_docker_slot = false;
  std::optional<std::string> current_task_id;
  bool clear_current_task_id = false;
  std::optional<boost::json::object> metadata;  // shallow-merged
  std::optional<timestamp> last_heartbeat;
  std::optional<timestamp> completed_at;
  std::optional<int> heartbeat_timeout_s;
  std::optional<int> input_timeout_s;
  bool clear_input_timeout_s = false;
};

// Optional fields a heartbeat may carry (the body is otherwise ignored, as in the contract).
struct heartbeat_input {
  std::optional<std::int64_t> epoch;  // fencing: a stale epoch is refused with `stop`
  std::optional<int> extend_s;        // a known long step: the deadline is at least this far
};

struct heartbeat_outcome {
  session s;
  bool reactivated = false;  // the session was stalled before this heartbeat
};

struct stall_brake {
  double max_share = 0.5;       // stall nothing when more than this share of active sessions
  std::int64_t min_count = 10;  // ... and at least this many are overdue in one sweep
};

// The mass-stall incident kept in the meta table while the brake holds.
struct mass_stall_incident {
  timestamp since;
  std::int64_t overdue = 0;
  std::int64_t active = 0;
  bool cleared_by_operator = false;
};

struct purge_outcome {
  std::string session_id;
  std::int64_t tasks_deleted = 0;
  timestamp purged_at;
};

struct cleanup_input {
  double older_than_days = 0;
  std::vector<session_status> statuses;
  bool dry_run = false;
  bool archive = true;
};

struct cleanup_outcome {
  std::int64_t sessions_affected = 0;
  std::int64_t sessions_skipped = 0;
  std::int64_t tasks_deleted = 0;
  std::vector<std::pair<session_status, std::int64_t>> breakdown;  // one per requested status
  std::string operation;
  timestamp completed_at;
};

struct prepare_recovery_outcome {
  session before;  // the session as it was before this call
  std::int64_t recovery_attempts = 0;
  timestamp checkpoint_at;
};

struct recover_input {
  std::optional<std::string> new_machine_id;
  std::optional<double> new_docker_slot;
  std::optional<std::string> resume_from_task_id;
};

struct failure_info_data {
  session s;
  std::vector<task> tasks;
};

struct session_list_query {
  std::optional<session_status> status;
  std::optional<std::string> project_id;
  std::vector<std::string> projects_in;  // the caller's project scope; empty: every project
  std::optional<std::string> machine_id;
  std::int64_t limit = 20;
  std::int64_t offset = 0;
};

struct recoverable_query {
  std::optional<std::string> project_id;
  std::vector<std::string> projects_in;  // the caller's project scope; empty: every project
  std::optional<std::string> machine_id;
  std::optional<double> max_age_minutes;
  std::optional<double> min_age_minutes;
};

struct sweep_outcome {
  std::vector<session> stalled;    // sessions this pass moved to stalled
  std::vector<session> escalated;  // awaiting_input sessions whose escalation fired
  std::int64_t examined = 0;       // index candidates looked at
  std::int64_t overdue = 0;        // active sessions past their deadline
  bool braked = false;             // the mass-stall brake held every stall back
  bool incident_opened = false;
  bool incident_resolved = false;
};

class session_service {
 public:
  session_service(storage::store& store, const clock& clk) : store_(store), clock_(clk) {}

  task_of<session> create(create_session_input in);
  task_of<session> get(std::string id);
  boost::asio::awaitable<std::vector<session>> list(session_list_query q);
  task_of<session> update(std::string id, update_session_input in);
  task_of<session> soft_delete(std::string id);
  task_of<heartbeat_outcome> heartbeat(std::string id, heartbeat_input in = {});
  task_of<session> set_directive(std::string id, directive d, std::optional<std::string> reason);
  task_of<std::vector<event>> events_of(std::string id, std::int64_t after, std::int64_t limit);

  // `projects_in`: the caller's project scope (empty: every project).
  boost::asio::awaitable<std::vector<session>> stale(double threshold_s, timestamp now,
                                                     std::vector<std::string> projects_in = {});
  boost::asio::awaitable<std::vector<session>> active(std::optional<std::string> project_id,
                                                      std::optional<std::string> machine_id,
                                                      std::vector<std::string> projects_in = {});
  boost::asio::awaitable<std::vector<session>> by_project(std::string project_id);
  boost::asio::awaitable<std::vector<session>> by_machine(
      std::string machine_id, std::vector<std::string> projects_in = {});

  boost::asio::awaitable<std::vector<session>> failed(session_list_query q);
  task_of<failure_info_data> failure_info(std::string id);
  task_of<session> mark_failed(std::string id, std::string reason,
                               std::optional<boost::json::object> error_details);
  task_of<session> mark_stalled(std::string id, std::string reason);

  task_of<session> archive(std::string id);
  task_of<purge_outcome> purge(std::string id, bool confirm);
  task_of<cleanup_outcome> cleanup(cleanup_input in);
  boost::asio::awaitable<std::vector<session>> archived(session_list_query q);

  boost::asio::awaitable<std::vector<session>> recoverable(recoverable_query q, timestamp now);
  task_of<prepare_recovery_outcome> prepare_recovery(std::string id);
  task_of<session> recover(std::string id, recover_input in);

  // Background sweeps (compare-and-set over indexed deadlines), safe to run concurrently.
  // Stalls overdue active sessions and escalates overdue awaiting_input ones, unless the
  // mass-stall brake holds (then it stalls none and keeps one incident open).
  boost::asio::awaitable<sweep_outcome> sweep_stalled(timestamp now, std::int64_t batch,
                                                      stall_brake brake = {});
  // After a restart, active sessions whose deadline falls before now + grace get until then.
  boost::asio::awaitable<std::int64_t> apply_restart_grace(timestamp now, std::int64_t grace_ms);
  // The open mass-stall incident, if any, and the operator's override.
  boost::asio::awaitable<std::optional<mass_stall_incident>> open_incident();
  task_of<mass_stall_incident> clear_incident();
  boost::asio::awaitable<std::int64_t> apply_retention(timestamp completed_before,
                                                       std::int64_t batch);
  boost::asio::awaitable<std::int64_t> auto_archive(timestamp completed_before, std::int64_t batch);

  const clock& time() const { return clock_; }

 private:
  template <class Change>
  task_of<session> transition(std::string id, std::string_view event_type, Change change);

  storage::store& store_;
  const clock& clock_;
};

// The recovery attempt counter kept in metadata.recovery.recovery_attempts.
std::int64_t recovery_attempts(const boost::json::object& metadata);
std::int64_t recovery_attempts(const session& s);

error session_not_found(std::string_view id);
// 409 stale_epoch with the `stop` directive: the caller lost ownership of the session.
error stale_epoch(const session& s, std::int64_t presented);

// Sessions waiting for a human never stall; their sweep key is the escalation time.
inline constexpr timestamp never{std::int64_t{1} << 62};

}  // namespace statetrack::core
