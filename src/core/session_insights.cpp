// Recommendation texts exactly as the contract lists them.
#include "core/session_insights.hpp"

#include <cmath>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "core/metadata.hpp"

namespace statetrack::core {

std::int64_t floor_div_ms(std::int64_t delta_ms, std::int64_t unit_ms) {
  std::int64_t q = delta_ms / unit_ms;
  if ((delta_ms % unit_ms != 0) && ((delta_ms < 0) != (unit_ms < 0))) --q;
  return q;
}

session_health assess_health(const session& s, timestamp now, double threshold_s) {
  session_health h;
  h.time_since_heartbeat_s = floor_div_ms(now - s.last_heartbeat, 1000);
  h.is_stale = static_cast<double>(h.time_since_heartbeat_s) > threshold_s;
  auto& r = h.recommendations;
  const auto t = h.time_since_heartbeat_s;
  if (h.is_stale && s.status == session_status::active) {
    r.emplace_back("Session may have crashed - no heartbeat received");
    r.emplace_back("Consider marking session as stalled or failed");
    r.emplace_back("Use POST /sessions/:id/mark-stalled to mark as stalled");
    r.emplace_back("Use POST /sessions/:id/mark-failed to mark as failed");
    if (t > 600) r.emplace_back("Session has been unresponsive for over 10 minutes");
    if (t > 900)
      r.emplace_back("Session is very stale (>15 minutes) - recommend marking as failed");
  }
  if (s.status == session_status::stalled) {
    r.emplace_back("Session is in stalled state");
    r.emplace_back("Review session logs and consider recovery or cleanup");
    r.emplace_back("Use GET /sessions/:id/health to check session health");
  }
  if (s.status == session_status::failed) {
    r.emplace_back("Session has failed");
    r.emplace_back("Use GET /sessions/:id/failure-info for detailed failure analysis");
    r.emplace_back("Review error logs and failure reason");
  }
  if (s.status == session_status::paused && h.is_stale) {
    r.emplace_back("Paused session has not sent heartbeat");
    r.emplace_back("Session may need to be resumed or cleaned up");
  }
  if (r.empty() && s.status == session_status::active)
    r.emplace_back("Session is healthy and active");
  return h;
}

failure_analysis analyse_failure(const session& s, const std::vector<task>& tasks, timestamp now) {
  failure_analysis a;
  auto meta = parse_metadata(s.metadata);
  if (auto* v = meta.if_contains("failure_reason"); v != nullptr && v->is_string()) {
    a.failure_reason = std::string(v->as_string());
  }
  const bool has_reason = !a.failure_reason.empty();
  if (!has_reason) a.failure_reason = "Unknown";
  std::string error_code;
  if (auto* v = meta.if_contains("error_details"); v != nullptr && !v->is_null()) {
    a.error_details_json = boost::json::serialize(*v);
    if (v->is_object()) {
      if (auto* c = v->as_object().if_contains("error_code"); c != nullptr && !c->is_null()) {
        error_code = c->is_string() ? std::string(c->as_string()) : boost::json::serialize(*c);
      }
    }
  }
  a.failed_at = s.completed_at.value_or(now);
  const timestamp end = s.completed_at.value_or(now);
  a.duration_minutes = floor_div_ms(end - s.started_at, 60000);
  a.minutes_since_heartbeat = floor_div_ms(now - s.last_heartbeat, 60000);
  a.is_very_stale = a.minutes_since_heartbeat > 15;
  for (const auto& t : tasks) {
    if (t.status == task_status::in_progress) ++a.stuck_task_count;
    if (t.status == task_status::completed && t.completed_at) {
      if (!a.last_successful_task || *t.completed_at > *a.last_successful_task->completed_at) {
        a.last_successful_task = t;
      }
    }
  }
  a.has_stuck_tasks = a.stuck_task_count > 0;
  auto& r = a.recovery_recommendations;
  if (a.is_very_stale) {
    r.push_back("Session has been unresponsive for " + std::to_string(a.minutes_since_heartbeat) +
                " minutes");
  }
  if (a.has_stuck_tasks) {
    r.push_back("Found " + std::to_string(a.stuck_task_count) +
                " task(s) stuck in in_progress state");
    r.emplace_back("Consider marking stuck tasks as failed or blocked before restarting");
  }
  if (has_reason) r.push_back("Failure reason: " + a.failure_reason);
  if (!error_code.empty()) r.push_back("Error code: " + error_code);
  r.emplace_back("Check machine logs and system resources before reassigning work");
  if (s.docker_slot) {
    std::string slot = boost::json::serialize(boost::json::value(*s.docker_slot));
    if (std::floor(*s.docker_slot) == *s.docker_slot && std::abs(*s.docker_slot) < 1e15) {
      slot = std::to_string(static_cast<std::int64_t>(*s.docker_slot));
    }
    r.push_back("Docker slot " + slot + " may need to be cleaned up or restarted");
  }
  r.emplace_back("Consider creating a new session on a different machine for recovery");
  if (s.current_task_id)
    r.push_back("Review current task " + *s.current_task_id + " for potential issues");
  return a;
}

}  // namespace statetrack::core
