#include "http/router.hpp"

#include <gtest/gtest.h>

namespace statetrack::http {
namespace {

boost::asio::awaitable<void> noop(api::context&) {
  co_return;
}

class RouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    add(method::get, "/sessions/:id", "get_session");
    add(method::get, "/sessions/failed", "get_sessions_failed");
    add(method::post, "/sessions/:id/heartbeat", "post_heartbeat");
    add(method::get, "/sessions/by-project/:projectId", "by_project");
    add(method::get, "/health", "health");
    add(method::get, "/api/docs", "docs");
  }
  void add(method m, const char* pattern, const char* name) {
    route r;
    r.verb = m;
    r.pattern = pattern;
    r.name = name;
    r.handler = noop;
    router_.add(std::move(r));
  }
  std::string name_of(method m, std::string_view path) {
    auto found = router_.find(m, path);
    return found.r == nullptr ? "" : found.r->name;
  }
  router router_;
};

TEST_F(RouterTest, LiteralSegmentsBeatParameters) {
  EXPECT_EQ(name_of(method::get, "/sessions/failed"), "get_sessions_failed");
  EXPECT_EQ(name_of(method::get, "/sessions/abc"), "get_session");
  EXPECT_EQ(router_.find(method::get, "/sessions/abc").params.at(0), "abc");
}

TEST_F(RouterTest, BacktracksFromLiteralToParameter) {
  // "failed" is a literal child of /sessions, but /sessions/failed/heartbeat must still
  // reach the :id route.
  auto m = router_.find(method::post, "/sessions/failed/heartbeat");
  ASSERT_NE(m.r, nullptr);
  EXPECT_EQ(m.r->name, "post_heartbeat");
  EXPECT_EQ(m.params.at(0), "failed");
}

TEST_F(RouterTest, ApiPrefixAliasesEveryRoute) {
  EXPECT_EQ(name_of(method::get, "/api/sessions/failed"), "get_sessions_failed");
  EXPECT_EQ(name_of(method::post, "/api/sessions/x/heartbeat"), "post_heartbeat");
  EXPECT_EQ(name_of(method::get, "/api/docs"), "docs");
  EXPECT_EQ(name_of(method::get, "/api/api/docs"), "");
}

TEST_F(RouterTest, CaseInsensitiveAndTrailingSlash) {
  EXPECT_EQ(name_of(method::get, "/SESSIONS/Failed"), "get_sessions_failed");
  EXPECT_EQ(name_of(method::get, "/health/"), "health");
  EXPECT_EQ(router_.find(method::get, "/Sessions/MixedCase").params.at(0), "MixedCase");
}

TEST_F(RouterTest, HeadFallsBackToGetOnly) {
  EXPECT_EQ(name_of(method::head, "/health"), "health");
  EXPECT_EQ(name_of(method::head, "/sessions/x/heartbeat"), "");
}

TEST_F(RouterTest, UnknownPathsAndMethodsDoNotMatch) {
  EXPECT_EQ(name_of(method::get, "/nope"), "");
  EXPECT_EQ(name_of(method::patch, "/sessions/x"), "");
  EXPECT_EQ(name_of(method::get, "/sessions"), "");
  EXPECT_EQ(name_of(method::post, "/sessions//heartbeat"), "");  // empty segment is no id
  EXPECT_EQ(name_of(method::get, "/sessions/a/b/c/d"), "");
}

TEST_F(RouterTest, ParametersArePercentDecoded) {
  auto m = router_.find(method::get, "/sessions/by-project/my%20project%2F1");
  ASSERT_NE(m.r, nullptr);
  EXPECT_EQ(m.params.at(0), "my project/1");
  EXPECT_FALSE(m.bad_escape);
  auto bad = router_.find(method::get, "/sessions/%E0%A4%A");
  ASSERT_NE(bad.r, nullptr);
  EXPECT_TRUE(bad.bad_escape);
}

TEST_F(RouterTest, DuplicateRegistrationIsAProgrammingError) {
  route r;
  r.verb = method::get;
  r.pattern = "/health";
  r.handler = noop;
  EXPECT_THROW(router_.add(r), std::logic_error);
}

TEST(Query, DecodesPairsInOrderAndKeepsBadEscapes) {
  auto q = parse_query("a=1&b=x+y&c=%41%42&d&e=%ZZ&&a=2");
  ASSERT_EQ(q.size(), 6U);
  EXPECT_EQ(q[0], (std::pair<std::string, std::string>{"a", "1"}));
  EXPECT_EQ(q[1].second, "x y");
  EXPECT_EQ(q[2].second, "AB");
  EXPECT_EQ(q[3], (std::pair<std::string, std::string>{"d", ""}));
  EXPECT_EQ(q[4].second, "%ZZ");
  EXPECT_EQ(q[5], (std::pair<std::string, std::string>{"a", "2"}));
  EXPECT_TRUE(parse_query("").empty());
}

}  // namespace
}  // namespace statetrack::http
