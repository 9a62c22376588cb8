// Derived, read-only views of a session: health recommendations (contract §4.3.5) and the
// failure analysis (§4.4.2). Pure functions of the session, its tasks and the time.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/model.hpp"

namespace statetrack::core {

struct session_health {
  bool is_stale = false;
  std::int64_t time_since_heartbeat_s = 0;
  std::vector<std::string> recommendations;
};

session_health assess_health(const session& s, timestamp now, double threshold_s);

struct failure_analysis {
  std::string failure_reason;      // "Unknown" when missing or empty
  std::string error_details_json;  // empty when none
  timestamp failed_at;
  std::optional<task> last_successful_task;
  std::int64_t duration_minutes = 0;
  bool is_very_stale = false;
  bool has_stuck_tasks = false;
  std::int64_t stuck_task_count = 0;
  std::int64_t minutes_since_heartbeat = 0;
  std::vector<std::string> recovery_recommendations;
};

failure_analysis analyse_failure(const session& s, const std::vector<task>& tasks, timestamp now);

// floor((now - t) / unit) as the contract computes it.
std::int64_t floor_div_ms(std::int64_t delta_ms, std::int64_t unit_ms);

}  // namespace statetrack::core
