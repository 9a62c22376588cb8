#include "util/json_writer.hpp"

#include <limits>

#include <boost/json/parse.hpp>
#include <gtest/gtest.h>

namespace statetrack::util {
namespace {

TEST(JsonWriter, BuildsNestedStructuresWithCommas) {
  std::string out;
  json_writer w(out);
  w.begin_object();
  w.field("a", std::int64_t{1});
  w.key("b").begin_array().value("x").value(true).null().begin_object().end_object().end_array();
  w.field_raw("c", R"({"k":[1,2]})");
  w.end_object();
  EXPECT_EQ(out, R"({"a":1,"b":["x",true,null,{}],"c":{"k":[1,2]}})");
  EXPECT_NO_THROW(boost::json::parse(out));
}

TEST(JsonWriter, EscapesControlCharactersAndQuotes) {
  std::string out;
  json_writer(out).value(std::string_view("q\"b\\n\n\t\x01", 8));
  EXPECT_EQ(out, R"("q\"b\\n\n\t\u0001")");
}

TEST(JsonWriter, ReplacesInvalidUtf8AndKeepsValidMultibyte) {
  std::string out;
  json_writer(out).value(std::string_view("ok \xC3\xA9 \xF0\x9F\x98\x80 bad \xFF\xC3 end"));
  auto parsed = boost::json::parse(out);
  EXPECT_EQ(parsed.as_string(), "ok \xC3\xA9 \xF0\x9F\x98\x80 bad \xEF\xBF\xBD\xEF\xBF\xBD end");
}

TEST(JsonWriter, NumbersLikeJavaScript) {
  auto one = [](double d) {
    std::string out;
    json_writer(out).value(d);
    return out;
  };
  EXPECT_EQ(one(1.0), "1");
  EXPECT_EQ(one(1.5), "1.5");
  EXPECT_EQ(one(-0.0), "0");
  EXPECT_EQ(one(0.1), "0.1");
  EXPECT_EQ(one(std::numeric_limits<double>::infinity()), "null");
  EXPECT_EQ(one(std::numeric_limits<double>::quiet_NaN()), "null");
}

TEST(JsonWriter, IsoTimestamps) {
  std::string out;
  json_writer(out).iso(1768910400123);
  EXPECT_EQ(out, R"("2026-01-20T12:00:00.123Z")");
}

}  // namespace
}  // namespace statetrack::util
