// The permission decision: roles against the right a route needs, machine binding, project
// scope, event visibility, key specs; and the access table covering every route.
#include "core/access.hpp"

#include <gtest/gtest.h>

#include "api/access.hpp"
#include "api/routes.hpp"
#include "core/api_keys.hpp"
#include "http/router.hpp"

namespace statetrack::core {
namespace {

principal key(key_role role, std::vector<std::string> projects = {}, std::string machine = {}) {
  principal p;
  p.key_id = "st_test";
  p.role = role;
  p.db_id = 1;
  p.projects = std::move(projects);
  p.machine_id = std::move(machine);
  return p;
}

session on(std::string project, std::string machine) {
  session s;
  s.session_id = "s-1";
  s.project_id = std::move(project);
  s.machine_id = std::move(machine);
  return s;
}

TEST(Access, RolesAreOrderedAdminWriteRead) {
  const auto admin = key(key_role::admin);
  const auto write = key(key_role::write);
  const auto read = key(key_role::read);
  for (auto need :
       {access_level::public_, access_level::read, access_level::write, access_level::admin}) {
    EXPECT_FALSE(route_denial(admin, need, false)) << access_name(need);
  }
  EXPECT_FALSE(route_denial(write, access_level::read, false));
  EXPECT_FALSE(route_denial(write, access_level::write, false));
  EXPECT_TRUE(route_denial(write, access_level::admin, false));
  EXPECT_FALSE(route_denial(read, access_level::read, false));
  EXPECT_TRUE(route_denial(read, access_level::write, false));
  EXPECT_TRUE(route_denial(read, access_level::admin, false));
  EXPECT_FALSE(route_denial(read, access_level::public_, false));
}

TEST(Access, DenialNamesTheMissingRight) {
  EXPECT_EQ(*route_denial(key(key_role::write), access_level::admin, false),
            "This route needs an admin key");
  auto m = route_denial(key(key_role::read), access_level::write, false);
  ASSERT_TRUE(m);
  EXPECT_NE(m->find("write right"), std::string::npos) << *m;
  EXPECT_NE(m->find("read"), std::string::npos) << *m;
}

TEST(Access, MachineKeysOnlyWhereTheTableAllowsThem) {
  const auto m = key(key_role::machine, {}, "m-1");
  EXPECT_TRUE(route_denial(m, access_level::read, false));
  EXPECT_TRUE(route_denial(m, access_level::write, false));
  EXPECT_TRUE(route_denial(m, access_level::admin, false));
  EXPECT_FALSE(route_denial(m, access_level::write, true));
  EXPECT_FALSE(route_denial(m, access_level::read, true));
  EXPECT_FALSE(route_denial(m, access_level::public_, false));
}

TEST(Access, MachineKeysActOnlyOnTheirMachine) {
  const auto m = key(key_role::machine, {}, "m-1");
  EXPECT_TRUE(m.restricted());
  EXPECT_FALSE(session_denial(m, on("p", "m-1")));
  EXPECT_TRUE(session_denial(m, on("p", "m-2")));
  EXPECT_FALSE(machine_write_denial(m, "m-1"));
  EXPECT_TRUE(machine_write_denial(m, "m-2"));
}

TEST(Access, ProjectScopeLimitsSessionsAndMachines) {
  const auto scoped = key(key_role::write, {"a", "b"});
  EXPECT_TRUE(scoped.restricted());
  EXPECT_FALSE(session_denial(scoped, on("a", "m")));
  EXPECT_FALSE(session_denial(scoped, on("b", "m")));
  EXPECT_TRUE(session_denial(scoped, on("c", "m")));
  EXPECT_TRUE(project_denial(scoped, "c"));
  EXPECT_FALSE(project_denial(scoped, "a"));
  // machines belong to no project
  EXPECT_TRUE(machine_write_denial(scoped, "m"));
  // a machine key with a scope needs both
  const auto both = key(key_role::machine, {"a"}, "m-1");
  EXPECT_FALSE(session_denial(both, on("a", "m-1")));
  EXPECT_TRUE(session_denial(both, on("b", "m-1")));
  EXPECT_TRUE(session_denial(both, on("a", "m-2")));
}

TEST(Access, UnscopedKeysAreUnrestricted) {
  for (auto r : {key_role::admin, key_role::write, key_role::read}) {
    const auto k = key(r);
    EXPECT_FALSE(k.restricted());
    EXPECT_FALSE(session_denial(k, on("any", "where")));
    EXPECT_FALSE(machine_write_denial(k, "any"));
  }
}

TEST(Access, EventVisibility) {
  event e;
  e.project_id = "a";
  e.machine_id = "m-1";
  event machine_only;
  machine_only.machine_id = "m-1";
  EXPECT_TRUE(event_visible(key(key_role::read), e));
  EXPECT_TRUE(event_visible(key(key_role::read, {"a"}), e));
  EXPECT_FALSE(event_visible(key(key_role::read, {"b"}), e));
  EXPECT_FALSE(event_visible(key(key_role::read, {"a"}), machine_only));
  EXPECT_TRUE(event_visible(key(key_role::machine, {}, "m-1"), e));
  EXPECT_TRUE(event_visible(key(key_role::machine, {}, "m-1"), machine_only));
  EXPECT_FALSE(event_visible(key(key_role::machine, {}, "m-2"), e));
}

TEST(Access, ProjectScopeEncodingRoundTripsAndFailsClosed) {
  EXPECT_EQ(encode_projects({}), "");
  EXPECT_TRUE(decode_projects("").empty());
  const std::vector<std::string> ps{"a", "b \"q\""};
  EXPECT_EQ(decode_projects(encode_projects(ps)), ps);
  // unreadable scope text: a scope no project matches, never "every project"
  auto bad = decode_projects("{not json");
  ASSERT_FALSE(bad.empty());
  principal p = key(key_role::read, bad);
  EXPECT_TRUE(project_denial(p, "a"));
}

TEST(Access, KeySpecValidation) {
  const timestamp now{1'000'000};
  key_spec ok;
  ok.name = "k";
  ok.role = key_role::write;
  ok.projects = {"a"};
  EXPECT_TRUE(validate_key_spec(ok, now).empty());

  key_spec machine_without_id = ok;
  machine_without_id.role = key_role::machine;
  EXPECT_FALSE(validate_key_spec(machine_without_id, now).empty());
  machine_without_id.machine_id = "m";
  EXPECT_TRUE(validate_key_spec(machine_without_id, now).empty());

  key_spec write_with_machine = ok;
  write_with_machine.machine_id = "m";
  EXPECT_FALSE(validate_key_spec(write_with_machine, now).empty());

  key_spec scoped_admin = ok;
  scoped_admin.role = key_role::admin;
  EXPECT_FALSE(validate_key_spec(scoped_admin, now).empty());

  key_spec dup = ok;
  dup.projects = {"a", "a"};
  EXPECT_FALSE(validate_key_spec(dup, now).empty());

  key_spec past = ok;
  past.expires_at = timestamp{now.ms - 1};
  EXPECT_FALSE(validate_key_spec(past, now).empty());
  past.expires_at = timestamp{now.ms + 1};
  EXPECT_TRUE(validate_key_spec(past, now).empty());

  key_spec unnamed = ok;
  unnamed.name.clear();
  EXPECT_FALSE(validate_key_spec(unnamed, now).empty());
}

TEST(Access, KeyStateAndPrincipal) {
  api_key k;
  k.id = 7;
  k.prefix = "st_abcdefgh";
  k.role = key_role::machine;
  k.machine_id = "m";
  k.projects = {"p"};
  const timestamp now{5000};
  EXPECT_EQ(key_state(k, now), "active");
  k.expires_at = timestamp{5000};
  EXPECT_EQ(key_state(k, now), "expired");
  k.revoked_at = timestamp{1};
  EXPECT_EQ(key_state(k, now), "revoked");
  auto p = principal_of(k);
  EXPECT_EQ(p.db_id, 7);
  EXPECT_EQ(p.key_id, "st_abcdefgh");
  EXPECT_EQ(p.machine_id, "m");
  EXPECT_EQ(p.projects, std::vector<std::string>{"p"});
  EXPECT_TRUE(p.machine_bound());
}

TEST(Access, EveryRouteIsInTheAccessTable) {
  http::router r;
  ASSERT_NO_THROW(api::register_all(r));
  for (const auto& rt : r.routes()) {
    EXPECT_EQ(rt->authenticated, rt->need != access_level::public_) << rt->name;
    if (rt->pattern.starts_with("/health") || rt->pattern.starts_with("/api/docs")) {
      EXPECT_EQ(rt->need, access_level::public_) << rt->name;
    } else {
      EXPECT_NE(rt->need, access_level::public_) << rt->name;
    }
    if (rt->pattern.starts_with("/keys") || rt->pattern.starts_with("/admin") ||
        rt->name == "post_sessions_cleanup" || rt->name == "delete_session_purge") {
      EXPECT_EQ(rt->need, access_level::admin) << rt->name;
    }
    // A stream ticket (POST) only opens a stream: a read.
    if (rt->verb != http::method::get && rt->name != "post_events_ticket") {
      EXPECT_NE(rt->need, access_level::read) << rt->name << " changes state with read";
    }
  }
}

TEST(Access, ARouteMissingFromTheTableIsRefused) {
  http::router r;
  http::route rt;
  rt.pattern = "/unlisted";
  rt.name = "unlisted_route";
  r.add(std::move(rt));
  EXPECT_THROW(api::apply_access_table(r), std::logic_error);
}

}  // namespace
}  // namespace statetrack::core
