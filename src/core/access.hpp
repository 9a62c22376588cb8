// Who may do what: the principal behind a request (role, machine binding, project scope,
// expiry) and the permission decisions. Routes state the right they need in the route table
// (api/access.cpp); the object checks (a session's project and machine, a task's session) and
// the event-stream filter use the functions below. No Beast, no SQL: unit-tested directly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/model.hpp"

namespace statetrack::core {

// The right a route needs. admin > write > read for the admin, write and read roles; machine
// keys hold none of them and may call only the routes the table marks as open to them.
enum class access_level { public_, read, write, admin };

std::string_view access_name(access_level a);

struct principal {
  std::string key_id;  // lookup prefix (DB keys) or "env:<first 8 chars of the hash>"
  key_role role = key_role::admin;
  std::int64_t db_id = 0;             // 0 for keys from the environment
  std::string machine_id;             // machine keys: the one machine they act for
  std::vector<std::string> projects;  // project scope; empty: every project
  std::optional<timestamp> expires_at;

  bool project_scoped() const { return !projects.empty(); }
  bool machine_bound() const { return role == key_role::machine; }
  // Whether object checks apply at all (unscoped admin, write and read keys skip them).
  bool restricted() const { return machine_bound() || project_scoped(); }
};

principal principal_of(const api_key& k);

// nullopt when `who` may call a route needing `need`; `machine_ok` opens the route to machine
// keys (their object checks still apply). Otherwise the message of the 403.
std::optional<std::string> route_denial(const principal& who, access_level need, bool machine_ok);

bool project_allowed(const principal& who, std::string_view project_id);
std::optional<std::string> project_denial(const principal& who, std::string_view project_id);
// A session (or anything of it: its tasks, its events): its project must be in scope and, for
// a machine key, it must run on the key's machine.
std::optional<std::string> session_denial(const principal& who, const session& s);
// Changing a machine record (register, update, deregister, heartbeat): machines belong to no
// project, so project-scoped keys may not; machine keys only their own machine.
std::optional<std::string> machine_write_denial(const principal& who, std::string_view machine_id);
// Whether an event may be delivered on a stream opened with this key.
bool event_visible(const principal& who, const event& e);

// A key's project scope as stored: a JSON array of strings; empty text for no scope.
std::string encode_projects(const std::vector<std::string>& projects);
std::vector<std::string> decode_projects(std::string_view text);

}  // namespace statetrack::core
