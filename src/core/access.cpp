// Permission decisions (see access.hpp).
#include "core/access.hpp"

#include <algorithm>

#include <boost/json/array.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "core/api_keys.hpp"

namespace statetrack::core {

namespace {

int rank(key_role r) {
  switch (r) {
    case key_role::admin:
      return 3;
    case key_role::write:
      return 2;
    case key_role::read:
      return 1;
    case key_role::machine:
      return 0;
  }
  return 0;
}

int rank(access_level a) {
  switch (a) {
    case access_level::public_:
      return 0;
    case access_level::read:
      return 1;
    case access_level::write:
      return 2;
    case access_level::admin:
      return 3;
  }
  return 3;
}

}  // namespace

std::string_view access_name(access_level a) {
  switch (a) {
    case access_level::public_:
      return "public";
    case access_level::read:
      return "read";
    case access_level::write:
      return "write";
    case access_level::admin:
      return "admin";
  }
  return "admin";
}

principal principal_of(const api_key& k) {
  principal p;
  p.key_id = k.prefix;
  p.role = k.role;
  p.db_id = k.id;
  p.machine_id = k.machine_id;
  p.projects = k.projects;
  p.expires_at = k.expires_at;
  return p;
}

std::optional<std::string> route_denial(const principal& who, access_level need, bool machine_ok) {
  if (need == access_level::public_) return std::nullopt;
  if (who.role == key_role::machine) {
    if (machine_ok) return std::nullopt;
    return "This route needs the " + std::string(access_name(need)) +
           " right; a machine key may only register and heartbeat its machine and create, "
           "heartbeat and update the sessions and tasks on it";
  }
  if (rank(who.role) >= rank(need)) return std::nullopt;
  if (need == access_level::admin) return std::string("This route needs an admin key");
  return "This route needs the " + std::string(access_name(need)) +
         " right (this key's role: " + std::string(role_name(who.role)) + ")";
}

bool project_allowed(const principal& who, std::string_view project_id) {
  return who.projects.empty() ||
         std::find(who.projects.begin(), who.projects.end(), project_id) != who.projects.end();
}

std::optional<std::string> project_denial(const principal& who, std::string_view project_id) {
  if (project_allowed(who, project_id)) return std::nullopt;
  return "Project " + std::string(project_id) + " is outside this key's project scope";
}

std::optional<std::string> session_denial(const principal& who, const session& s) {
  if (auto d = project_denial(who, s.project_id)) return d;
  if (who.machine_bound() && s.machine_id != who.machine_id) {
    return "Session " + s.session_id + " does not run on machine " + who.machine_id +
           ", the only machine this key may act for";
  }
  return std::nullopt;
}

std::optional<std::string> machine_write_denial(const principal& who, std::string_view machine_id) {
  if (who.machine_bound()) {
    if (machine_id == who.machine_id) return std::nullopt;
    return "This key may only act for machine " + who.machine_id;
  }
  if (who.project_scoped()) {
    return std::string(
        "Machines belong to no project: a project-scoped key may not change machine records");
  }
  return std::nullopt;
}

bool event_visible(const principal& who, const event& e) {
  if (who.project_scoped() && !project_allowed(who, e.project_id)) return false;
  if (who.machine_bound() && e.machine_id != who.machine_id) return false;
  return true;
}

std::string encode_projects(const std::vector<std::string>& projects) {
  if (projects.empty()) return {};
  boost::json::array a;
  for (const auto& p : projects)
    a.emplace_back(p);
  return boost::json::serialize(a);
}

std::vector<std::string> decode_projects(std::string_view text) {
  std::vector<std::string> out;
  if (text.empty()) return out;
  boost::system::error_code ec;
  auto v = boost::json::parse(text, ec);
  // Unreadable scope text fails closed: a scope of one impossible (empty) project id.
  if (ec || !v.is_array()) return {std::string()};
  for (const auto& e : v.as_array()) {
    out.emplace_back(e.is_string() ? std::string(e.as_string()) : std::string());
  }
  if (out.empty()) out.emplace_back();
  return out;
}

}  // namespace statetrack::core
