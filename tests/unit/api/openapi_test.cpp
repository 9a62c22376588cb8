// The OpenAPI document is generated from the route table; these checks make sure it stays
// complete: a route added without doc info, or naming a schema nobody defined, fails here.
#include "api/openapi.hpp"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <boost/json/serialize.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "api/routes.hpp"
#include "api/schemas.hpp"
#include "http/router.hpp"

namespace statetrack::api {
namespace {

namespace json = boost::json;
using ::testing::IsEmpty;

std::string verb_key(http::method m) {
  std::string s(http::method_name(m));
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// RFC 6901 pointer into the document ("#/a/b~1c").
const json::value* resolve_pointer(const json::value& root, std::string_view ref) {
  if (!ref.starts_with("#")) return nullptr;
  ref.remove_prefix(1);
  const json::value* cur = &root;
  while (!ref.empty()) {
    if (ref[0] != '/') return nullptr;
    ref.remove_prefix(1);
    auto end = ref.find('/');
    std::string token(ref.substr(0, end));
    ref = end == std::string_view::npos ? std::string_view{} : ref.substr(end);
    for (std::size_t i; (i = token.find("~1")) != std::string::npos;)
      token.replace(i, 2, "/");
    for (std::size_t i; (i = token.find("~0")) != std::string::npos;)
      token.replace(i, 2, "~");
    if (!cur->is_object()) return nullptr;
    cur = cur->as_object().if_contains(token);
    if (cur == nullptr) return nullptr;
  }
  return cur;
}

void collect_refs(const json::value& v, std::vector<std::string>& out) {
  if (v.is_object()) {
    for (const auto& kv : v.as_object()) {
      if (kv.key() == "$ref" && kv.value().is_string()) {
        out.emplace_back(kv.value().as_string());
      } else {
        collect_refs(kv.value(), out);
      }
    }
  } else if (v.is_array()) {
    for (const auto& e : v.as_array())
      collect_refs(e, out);
  }
}

std::vector<std::string> path_params(std::string_view path) {
  std::vector<std::string> out;
  for (std::size_t i = path.find('{'); i != std::string_view::npos; i = path.find('{', i + 1)) {
    out.emplace_back(path.substr(i + 1, path.find('}', i) - i - 1));
  }
  return out;
}

// Every inconsistency between the route table and the document, as readable lines.
std::vector<std::string> problems_of(const http::router& router, const json::object& doc) {
  std::vector<std::string> problems;
  const json::value root(doc);
  auto* paths = doc.if_contains("paths");
  if (paths == nullptr || !paths->is_object()) return {"document has no paths"};

  std::set<std::string> names;
  std::size_t documented_routes = 0;
  for (const auto& rp : router.routes()) {
    const http::route& r = *rp;
    const std::string where = std::string(http::method_name(r.verb)) + " " + r.pattern;
    if (!names.insert(r.name).second)
      problems.push_back(where + ": duplicate route name " + r.name);
    if (is_docs_route(r)) continue;
    ++documented_routes;
    if (r.doc.summary.empty()) problems.push_back(where + ": route_doc has no summary");
    if (r.doc.tag.empty()) problems.push_back(where + ": route_doc has no tag");
    if (r.success_status == 204 && !r.doc.response_schema.empty()) {
      problems.push_back(where + ": 204 route names a response schema");
    }
    if (r.success_status != 204 && r.doc.response_schema.empty()) {
      problems.push_back(where + ": route_doc names no response schema");
    }
    if (!r.doc.request_schema.empty() && schemas::find(r.doc.request_schema) == nullptr) {
      problems.push_back(where + ": unknown request schema " + std::string(r.doc.request_schema));
    }
    if (!r.doc.query_schema.empty() && schemas::find(r.doc.query_schema) == nullptr) {
      problems.push_back(where + ": unknown query schema " + std::string(r.doc.query_schema));
    }

    auto* item = paths->as_object().if_contains(openapi_path(r.pattern));
    const json::value* opv = item != nullptr && item->is_object()
                                 ? item->as_object().if_contains(verb_key(r.verb))
                                 : nullptr;
    if (opv == nullptr || !opv->is_object()) {
      problems.push_back(where + ": no operation in the document");
      continue;
    }
    const json::object& op = opv->as_object();
    if (op.if_contains("operationId") == nullptr || op.at("operationId") != json::value(r.name)) {
      problems.push_back(where + ": operationId is not " + r.name);
    }
    const json::object* responses =
        op.if_contains("responses") ? op.at("responses").if_object() : nullptr;
    const json::value* ok =
        responses != nullptr ? responses->if_contains(std::to_string(r.success_status)) : nullptr;
    if (ok == nullptr) {
      problems.push_back(where + ": no " + std::to_string(r.success_status) + " response");
    } else if ((r.success_status == 204) == ok->as_object().contains("content")) {
      problems.push_back(where + ": success response content does not match its status");
    }
    if (r.authenticated) {
      std::set<std::string> schemes;
      if (auto* sec = op.if_contains("security"); sec != nullptr && sec->is_array()) {
        for (const auto& alt : sec->as_array()) {
          for (const auto& kv : alt.as_object())
            schemes.emplace(kv.key());
        }
      }
      if (schemes != std::set<std::string>{"bearer", "api-key"}) {
        problems.push_back(where + ": authenticated operation without both security schemes");
      }
      if (responses == nullptr || !responses->contains("401")) {
        problems.push_back(where + ": authenticated operation without a 401 response");
      }
    } else if (op.contains("security")) {
      problems.push_back(where + ": public operation lists security");
    }
    // Every {param} of the path is declared as a required path parameter.
    std::set<std::string> declared;
    if (auto* ps = op.if_contains("parameters"); ps != nullptr) {
      for (const auto& p : ps->as_array()) {
        const auto& po = p.as_object();
        if (po.at("in") == "path" && po.at("required") == true) {
          declared.emplace(po.at("name").as_string());
        }
      }
    }
    for (const auto& name : path_params(openapi_path(r.pattern))) {
      if (!declared.contains(name)) {
        std::string msg = where;
        msg += ": path parameter ";
        msg += name;
        msg += " undeclared";
        problems.push_back(std::move(msg));
      }
    }
  }

  // The other direction: every operation belongs to a route with that path, method and name.
  std::size_t operations = 0;
  for (const auto& pkv : paths->as_object()) {
    for (const auto& okv : pkv.value().as_object()) {
      ++operations;
      const std::string where = std::string(okv.key()) + " " + std::string(pkv.key());
      auto* id = okv.value().as_object().if_contains("operationId");
      bool found = false;
      for (const auto& rp : router.routes()) {
        if (!is_docs_route(*rp) && openapi_path(rp->pattern) == pkv.key() &&
            verb_key(rp->verb) == okv.key() && id != nullptr && *id == json::value(rp->name)) {
          found = true;
        }
      }
      if (!found) problems.push_back(where + ": operation matches no route");
    }
  }
  if (operations != documented_routes) {
    problems.push_back(std::to_string(operations) + " operations for " +
                       std::to_string(documented_routes) + " routes");
  }

  std::vector<std::string> refs;
  collect_refs(root, refs);
  for (const auto& ref : refs) {
    if (resolve_pointer(root, ref) == nullptr) problems.push_back("dangling $ref " + ref);
  }
  return problems;
}

class OpenApiTest : public ::testing::Test {
 protected:
  OpenApiTest() { register_all(router_); }
  json::object doc() const { return build_openapi(router_, "9.8.7"); }
  const json::object& op(const json::object& d, const std::string& path, const std::string& verb) {
    return d.at("paths").at(path).at(verb).as_object();
  }
  http::router router_;
};

TEST_F(OpenApiTest, DocumentMatchesTheRouteTable) {
  auto d = doc();
  EXPECT_THAT(problems_of(router_, d), IsEmpty());
  EXPECT_EQ(d.at("openapi"), "3.0.3");
  EXPECT_EQ(d.at("info").at("title"), "statetrack API");
  EXPECT_EQ(d.at("info").at("version"), "9.8.7");
  EXPECT_NE(std::string(d.at("info").at("description").as_string()).find("/api"),
            std::string::npos);
  EXPECT_GE(d.at("paths").as_object().size(), 20U);
}

TEST_F(OpenApiTest, DocsPagesArePublicUnlimitedAndLeftOut) {
  std::vector<std::string> docs;
  for (const auto& r : router_.routes()) {
    if (!is_docs_route(*r)) continue;
    docs.push_back(r->pattern);
    EXPECT_FALSE(r->authenticated) << r->pattern;
    EXPECT_EQ(r->limit, http::limit_class::none) << r->pattern;
  }
  EXPECT_THAT(docs, ::testing::UnorderedElementsAre("/api/docs", "/api/docs-json"));
  EXPECT_NE(router_.find(http::method::get, "/api/docs-json").r, nullptr);
  EXPECT_EQ(router_.find(http::method::get, "/api/api/docs-json").r, nullptr);
  auto d = doc();
  for (const auto& kv : d.at("paths").as_object()) {
    EXPECT_FALSE(std::string_view(kv.key()).starts_with("/api")) << kv.key();
  }
}

TEST_F(OpenApiTest, DefinesEveryResponseSchemaTheApiUses) {
  auto d = doc();
  const auto& schemas = d.at("components").at("schemas").as_object();
  // Session and health routes today, task and machine routes as they land (contract §3, §4).
  for (const char* name : {"Session",
                           "LivenessItem",
                           "RecoverableItem",
                           "CleanupResult",
                           "ProjectSummary",
                           "HeartbeatResult",
                           "SessionHealth",
                           "FailureInfo",
                           "PurgeResult",
                           "RecoveryCheckpoint",
                           "RecoveryHistory",
                           "Health",
                           "HealthReady",
                           "HealthLive",
                           "HealthDetailed",
                           "HealthSystem",
                           "PrometheusText",
                           "Task",
                           "TaskProgress",
                           "Machine",
                           "MachineAvailability",
                           "MachineHeartbeatResult",
                           "ErrorEnvelope",
                           "SessionStatus",
                           "TaskStatus",
                           "MachineStatus"}) {
    EXPECT_TRUE(schemas.contains(name)) << name;
  }
  for (const auto* s : schemas::all())
    EXPECT_TRUE(schemas.contains(s->name)) << s->name;
  for (const auto& name : response_component_names())
    EXPECT_TRUE(schemas.contains(name)) << name;
  // Every response component is well-formed enough to carry a type or a reference.
  for (const auto& kv : schemas) {
    const auto& o = kv.value().as_object();
    EXPECT_TRUE(o.contains("type") || o.contains("$ref") || o.contains("oneOf")) << kv.key();
    if (auto* req = o.if_contains("required")) {
      for (const auto& k : req->as_array()) {
        EXPECT_TRUE(o.at("properties").as_object().contains(k.as_string()))
            << kv.key() << " requires undeclared " << k.as_string();
      }
    }
  }
  EXPECT_EQ(schemas.at("SessionStatus").at("enum").as_array().size(), 7U);
  EXPECT_EQ(schemas.at("TaskStatus").at("enum").as_array().size(), 5U);
  EXPECT_EQ(schemas.at("MachineStatus").at("enum").as_array().size(), 3U);
  const auto& session = schemas.at("Session").at("properties").as_object();
  for (const char* additive : {"heartbeat_timeout_s", "deadline_at", "epoch"}) {
    EXPECT_TRUE(session.contains(additive)) << additive;
  }
  const auto& detailed = schemas.at("HealthDetailed").at("properties").as_object();
  EXPECT_TRUE(detailed.contains("jobs"));
  EXPECT_TRUE(detailed.at("checks").at("properties").as_object().contains("backgroundJobs"));
}

TEST_F(OpenApiTest, SecuritySchemesAndErrorResponses) {
  auto d = doc();
  const auto& schemes = d.at("components").at("securitySchemes").as_object();
  EXPECT_EQ(schemes.at("bearer").at("type"), "http");
  EXPECT_EQ(schemes.at("bearer").at("scheme"), "bearer");
  EXPECT_EQ(schemes.at("bearer").at("bearerFormat"), "API Key");
  EXPECT_EQ(schemes.at("api-key").at("type"), "apiKey");
  EXPECT_EQ(schemes.at("api-key").at("in"), "header");
  EXPECT_EQ(schemes.at("api-key").at("name"), "X-API-Key");

  const auto& get_session = op(d, "/sessions/{id}", "get");
  EXPECT_TRUE(get_session.contains("security"));
  for (const char* code : {"200", "400", "401", "404", "429"}) {
    ASSERT_TRUE(get_session.at("responses").as_object().contains(code)) << code;
  }
  EXPECT_EQ(get_session.at("responses")
                .at("404")
                .at("content")
                .at("application/json")
                .at("schema")
                .at("$ref"),
            "#/components/schemas/ErrorEnvelope");
  const auto& health = op(d, "/health", "get");
  EXPECT_FALSE(health.contains("security"));
  EXPECT_FALSE(health.at("responses").as_object().contains("401"));
  EXPECT_FALSE(health.at("responses").as_object().contains("429"));
}

TEST_F(OpenApiTest, BodiesQueriesAndResponses) {
  auto d = doc();
  const auto& create = op(d, "/sessions", "post");
  EXPECT_EQ(create.at("requestBody").at("content").at("application/json").at("schema").at("$ref"),
            "#/components/schemas/CreateSessionRequest");
  EXPECT_EQ(create.at("requestBody").at("required"), true);
  EXPECT_EQ(
      create.at("responses").at("201").at("content").at("application/json").at("schema").at("$ref"),
      "#/components/schemas/Session");

  const auto& list = op(d, "/sessions", "get");
  std::map<std::string, json::object> params;
  for (const auto& p : list.at("parameters").as_array()) {
    params[std::string(p.at("name").as_string())] = p.as_object();
  }
  for (const auto& f : schemas::list_sessions.fields) {
    ASSERT_TRUE(params.contains(std::string(f.name))) << f.name;
    EXPECT_EQ(params[std::string(f.name)].at("in"), "query");
  }
  EXPECT_EQ(params["limit"].at("schema").at("maximum"), 100.0);
  const auto& list_schema =
      list.at("responses").at("200").at("content").at("application/json").at("schema");
  EXPECT_EQ(list_schema.at("type"), "array");
  EXPECT_EQ(list_schema.at("items").at("$ref"), "#/components/schemas/Session");

  const auto& del = op(d, "/sessions/{id}", "delete");
  EXPECT_FALSE(del.at("responses").at("204").as_object().contains("content"));

  const auto& heartbeat = op(d, "/sessions/{id}/heartbeat", "post");
  EXPECT_FALSE(heartbeat.contains("requestBody"));
  EXPECT_EQ(heartbeat.at("parameters").at(0).at("name"), "id");
  EXPECT_EQ(heartbeat.at("parameters").at(0).at("in"), "path");

  const auto& by_project = op(d, "/sessions/by-project/{projectId}", "get");
  EXPECT_EQ(by_project.at("parameters").at(0).at("name"), "projectId");

  const auto& metrics = op(d, "/metrics", "get");
  EXPECT_TRUE(metrics.at("responses").at("200").at("content").as_object().contains("text/plain"));
}

TEST_F(OpenApiTest, InformalQueryParametersBelongToRealRoutes) {
  for (auto name : informal_query_routes()) {
    bool found = false;
    for (const auto& r : router_.routes())
      found = found || r->name == name;
    EXPECT_TRUE(found) << name << " is documented but not registered";
  }
  auto d = doc();
  const auto& stale = op(d, "/sessions/stale", "get");
  EXPECT_EQ(stale.at("parameters").at(0).at("name"), "threshold");
}

TEST(OpenApiPath, ConvertsParameters) {
  EXPECT_EQ(openapi_path("/sessions/:id/health"), "/sessions/{id}/health");
  EXPECT_EQ(openapi_path("/sessions/by-project/:projectId"), "/sessions/by-project/{projectId}");
  EXPECT_EQ(openapi_path("/health"), "/health");
  EXPECT_EQ(openapi_path("/a/:x/:y"), "/a/{x}/{y}");
}

// The checks above really fail when someone forgets the doc info or a component.
TEST(OpenApiChecks, CatchARouteWithoutDocInfo) {
  http::router r;
  register_all(r);
  http::route bare;
  bare.verb = http::method::get;
  bare.pattern = "/widgets/:id";
  bare.name = "get_widget";
  r.add(std::move(bare));
  auto problems = problems_of(r, build_openapi(r, "x"));
  EXPECT_THAT(problems,
              ::testing::Contains(::testing::HasSubstr("route_doc names no response schema")));
  EXPECT_THAT(problems, ::testing::Contains(::testing::HasSubstr("route_doc has no summary")));
}

TEST(OpenApiChecks, CatchAMissingComponent) {
  http::router r;
  register_all(r);
  http::route rt;
  rt.verb = http::method::post;
  rt.pattern = "/widgets";
  rt.name = "post_widget";
  rt.success_status = 201;
  rt.doc = {"Create a widget", "widgets", "CreateWidgetRequest", "", "Widget"};
  r.add(std::move(rt));
  auto problems = problems_of(r, build_openapi(r, "x"));
  EXPECT_THAT(problems, ::testing::Contains("dangling $ref #/components/schemas/Widget"));
  EXPECT_THAT(problems,
              ::testing::Contains("dangling $ref #/components/schemas/CreateWidgetRequest"));
}

TEST(OpenApiChecks, CatchAnOperationWithoutRoute) {
  http::router r;
  register_all(r);
  auto d = build_openapi(r, "x");
  d["paths"].as_object()["/ghost"] = json::object{{"get", json::object{{"operationId", "ghost"}}}};
  EXPECT_THAT(problems_of(r, d),
              ::testing::Contains(::testing::HasSubstr("operation matches no route")));
}

}  // namespace
}  // namespace statetrack::api
