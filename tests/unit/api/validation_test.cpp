#include "api/validation.hpp"

#include <cmath>

#include <boost/json/parse.hpp>
#include <gtest/gtest.h>

#include "api/schemas.hpp"

namespace statetrack::api {
namespace {

namespace json = boost::json;

std::vector<std::string> errors_of(const schema& s, std::string_view body) {
  auto r = validate_body(s, json::parse(body));
  if (r) return {};
  EXPECT_EQ(r.error().code, core::errc::validation_failed);
  return r.error().field_messages;
}

TEST(Validation, AcceptsAValidBody) {
  auto r = validate_body(
      schemas::create_session,
      json::parse(R"({"project_id":"p","machine_id":"m","docker_slot":1.5,"metadata":{"a":{}}})"));
  ASSERT_TRUE(r);
  EXPECT_EQ(get_string(*r, "project_id"), "p");
  EXPECT_EQ(get_number(*r, "docker_slot"), 1.5);
}

TEST(Validation, UnknownPropertiesComeFirst) {
  auto e = errors_of(schemas::create_session, R"({"session_id":"x","machine_id":5})");
  ASSERT_EQ(e.size(), 3U);
  EXPECT_EQ(e[0], "property session_id should not exist");
  EXPECT_EQ(e[1], "project_id must be a string");
  EXPECT_EQ(e[2], "machine_id must be a string");
}

TEST(Validation, TypeMessagesUseTheContractWording) {
  EXPECT_EQ(errors_of(schemas::create_session,
                      R"({"project_id":"p","machine_id":"m","docker_slot":"1"})"),
            std::vector<std::string>{
                "docker_slot must be a number conforming to the specified constraints"});
  EXPECT_EQ(
      errors_of(schemas::create_session, R"({"project_id":"p","machine_id":"m","metadata":[]})"),
      std::vector<std::string>{"metadata must be an object"});
  EXPECT_EQ(errors_of(schemas::purge_session, R"({"confirm":"true"})"),
            std::vector<std::string>{"confirm must be a boolean value"});
  EXPECT_EQ(errors_of(schemas::update_session, R"({"status":"running"})"),
            std::vector<std::string>{
                "status must be one of the following values: active, paused, completed, failed, "
                "stalled, archived, awaiting_input"});
  EXPECT_EQ(errors_of(schemas::update_session, R"({"last_heartbeat":"yesterday"})"),
            std::vector<std::string>{"last_heartbeat must be a valid ISO 8601 date string"});
}

TEST(Validation, NullSkipsOptionalFieldsButNotRequiredOnes) {
  EXPECT_TRUE(
      errors_of(schemas::update_session, R"({"docker_slot":null,"metadata":null})").empty());
  auto e = errors_of(schemas::mark_failed, R"({"reason":null})");
  EXPECT_EQ(e, std::vector<std::string>{"reason must be a string"});
}

TEST(Validation, RangesAndCustomMessages) {
  auto e =
      errors_of(schemas::cleanup_sessions, R"({"older_than_days":3,"statuses":["completed"]})");
  EXPECT_EQ(e, std::vector<std::string>{"older_than_days must be at least 7"});
  e = errors_of(schemas::cleanup_sessions, R"({"older_than_days":30,"statuses":["done"]})");
  ASSERT_EQ(e.size(), 1U);
  EXPECT_TRUE(e[0].starts_with("each value in statuses must be one of the following values:"));
}

TEST(Validation, NumberArraysCoerceAndCheckEachElement) {
  auto r =
      validate_body(schemas::register_machine,
                    json::parse(R"({"machine_id":"m","hostname":"h","docker_slots":["2",3]})"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->at("docker_slots").as_array()[0].as_double(), 2.0);
  auto e = errors_of(schemas::register_machine,
                     R"({"machine_id":"m","hostname":"h","docker_slots":[0,2,2]})");
  EXPECT_EQ(e, (std::vector<std::string>{"each value in docker_slots must not be less than 1",
                                         "All docker_slots's elements must be unique"}));
}

TEST(Validation, NonObjectBodiesAreRejected) {
  EXPECT_FALSE(validate_body(schemas::mark_stalled, json::parse("[1,2]")));
  EXPECT_FALSE(validate_body(schemas::mark_stalled, json::parse("\"x\"")));
}

TEST(Validation, QueryNumbersUseJavaScriptNumber) {
  using params = std::vector<std::pair<std::string, std::string>>;
  auto ok = validate_query(schemas::list_sessions, params{{"limit", "50"}, {"offset", " 0x10 "}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(get_number(*ok, "limit"), 50);
  EXPECT_EQ(get_number(*ok, "offset"), 16);
  for (const char* bad : {"0", "101", "-1", "abc", "1.5", "", "Infinity"}) {
    EXPECT_FALSE(validate_query(schemas::list_sessions, params{{"limit", bad}})) << bad;
  }
  auto unknown = validate_query(schemas::list_sessions, params{{"bogus", "1"}});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().field_messages.at(0), "property bogus should not exist");
  auto repeated =
      validate_query(schemas::list_sessions, params{{"status", "active"}, {"status", "failed"}});
  ASSERT_FALSE(repeated);
}

TEST(Validation, HugeIntegersAreRefusedNotCast) {
  // Found by fuzzing: casting 8.9e19 to int64 is undefined behaviour.
  using params = std::vector<std::pair<std::string, std::string>>;
  auto r = validate_query(schemas::list_sessions, params{{"offset", "00888888888888888888"}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().field_messages.at(0), "offset must be an integer number");
  auto body = validate_body(
      schemas::create_session,
      json::parse(R"({"project_id":"p","machine_id":"m","heartbeat_timeout_s":1e300})"));
  ASSERT_FALSE(body);
}

TEST(Body, TextMustBeValidUtf8) {
  // Found by fuzzing: form values are raw bytes, and a lone surrogate escape decodes to
  // bytes that are not UTF-8; either would later be emitted verbatim as invalid JSON.
  auto form = parse_body("application/x-www-form-urlencoded", "reason=dis%E0%E0");
  ASSERT_FALSE(form);
  EXPECT_EQ(form.error().message, "Request body text must be valid UTF-8");
  EXPECT_FALSE(parse_body("application/json", R"({"reason":"\ud800"})"));
  EXPECT_TRUE(parse_body("application/json", R"({"reason":"caf\u00e9 \ud83d\ude00"})"));
}

TEST(Validation, JsNumber) {
  EXPECT_EQ(js_number(""), 0);
  EXPECT_EQ(js_number("  42  "), 42);
  EXPECT_EQ(js_number("-1.5e2"), -150);
  EXPECT_EQ(js_number("0b101"), 5);
  EXPECT_TRUE(std::isnan(js_number("12px")));
  EXPECT_TRUE(std::isnan(js_number("--1")));
  EXPECT_TRUE(std::isinf(js_number("Infinity")));
}

TEST(Body, EmptyBodiesAreEmptyObjects) {
  auto r = parse_body("application/json", "");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->as_object().empty());
  EXPECT_TRUE(parse_body("text/plain", "{not json")->as_object().empty());
}

TEST(Body, MalformedJsonIsABadRequest) {
  auto r = parse_body("application/json; charset=utf-8", "{\"a\":");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, core::errc::bad_request);
  EXPECT_FALSE(parse_body("application/json", "42"));
}

TEST(Body, NonFiniteNumbersAreRejected) {
  EXPECT_FALSE(parse_body("application/json", R"({"a":{"b":[1e400]}})"));
}

TEST(Body, FormsArriveAsStrings) {
  auto r = parse_body("application/x-www-form-urlencoded", "reason=disk+full&n=2");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->as_object().at("reason").as_string(), "disk full");
  EXPECT_TRUE(r->as_object().at("n").is_string());
}

TEST(Schema, JsonSchemaListsRequiredFieldsAndEnums) {
  auto js = to_json_schema(schemas::update_task);
  EXPECT_EQ(js.at("type").as_string(), "object");
  EXPECT_EQ(js.at("properties").as_object().at("status").as_object().at("enum").as_array().size(),
            5U);
  auto create = to_json_schema(schemas::create_task);
  EXPECT_EQ(create.at("required").as_array().size(), 3U);
}

}  // namespace
}  // namespace statetrack::api
