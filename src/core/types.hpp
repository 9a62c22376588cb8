// Domain vocabulary shared by every layer: timestamps, strong ids and the status enums,
// spelled exactly as on the wire. Pure values; no I/O.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace statetrack::core {

// Milliseconds since the Unix epoch, UTC. Every stored and emitted time uses this unit.
struct timestamp {
  std::int64_t ms = 0;

  friend constexpr auto operator<=>(timestamp,
                                    timestamp) = default;  // NOLINT(modernize-use-nullptr)
  constexpr timestamp operator+(std::int64_t delta_ms) const { return {ms + delta_ms}; }
  constexpr timestamp operator-(std::int64_t delta_ms) const { return {ms - delta_ms}; }
  constexpr std::int64_t operator-(timestamp other) const { return ms - other.ms; }
};

// Formats as RFC 3339 with milliseconds and a Z suffix: 2026-01-20T12:00:00.000Z.
std::string format_iso(timestamp t);
void append_iso(std::string& out, timestamp t);
// Accepts the ISO-8601 forms JavaScript's Date accepts for date-time strings we care about:
// YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.fff]] with Z or +HH:MM / -HH:MM offset.
std::optional<timestamp> parse_iso(std::string_view text);

// Strong id types: the domain never confuses a session id with a machine id.
template <class Tag>
struct basic_id {
  std::string value;
  friend bool operator==(const basic_id&, const basic_id&) = default;
};
using session_id = basic_id<struct session_id_tag>;
using task_id = basic_id<struct task_id_tag>;
using machine_id = basic_id<struct machine_id_tag>;

// Lowercase RFC 4122 version-4 UUID from a per-thread generator.
std::string new_uuid_v4();
// 24 lowercase hex digits shaped like a MongoDB ObjectId (4-byte time, 8 random bytes).
std::string new_object_id(timestamp now);

// awaiting_input (an agent blocked on a human) is statetrack's addition to the contract's six.
enum class session_status { active, paused, completed, failed, stalled, archived, awaiting_input };
enum class task_status { pending, in_progress, completed, failed, blocked };
enum class machine_status { online, offline, maintenance };
// What the server tells an agent in every heartbeat reply.
enum class directive { continue_, pause, stop };
inline constexpr std::array<std::string_view, 3> directive_names = {"continue", "pause", "stop"};

// Declaration order is the order of enum error messages in the contract.
inline constexpr std::array<std::string_view, 7> session_status_names = {
    "active", "paused", "completed", "failed", "stalled", "archived", "awaiting_input"};
inline constexpr std::array<std::string_view, 5> task_status_names = {
    "pending", "in_progress", "completed", "failed", "blocked"};
inline constexpr std::array<std::string_view, 3> machine_status_names = {"online", "offline",
                                                                         "maintenance"};

constexpr std::string_view to_string(session_status s) {
  return session_status_names[static_cast<std::size_t>(s)];
}
constexpr std::string_view to_string(task_status s) {
  return task_status_names[static_cast<std::size_t>(s)];
}
constexpr std::string_view to_string(machine_status s) {
  return machine_status_names[static_cast<std::size_t>(s)];
}
constexpr std::string_view to_string(directive d) {
  return directive_names[static_cast<std::size_t>(d)];
}

std::optional<session_status> parse_session_status(std::string_view s);
std::optional<task_status> parse_task_status(std::string_view s);
std::optional<machine_status> parse_machine_status(std::string_view s);
std::optional<directive> parse_directive(std::string_view s);

}  // namespace statetrack::core
