#include "core/types.hpp"

#include <regex>
#include <set>

#include <gtest/gtest.h>

namespace statetrack::core {
namespace {

TEST(Iso, FormatsWithMillisecondsAndZ) {
  EXPECT_EQ(format_iso(timestamp{0}), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(format_iso(timestamp{1768910400123}), "2026-01-20T12:00:00.123Z");
  EXPECT_EQ(format_iso(timestamp{951782400000}), "2000-02-29T00:00:00.000Z");
  EXPECT_EQ(format_iso(timestamp{-1}), "1969-12-31T23:59:59.999Z");
}

TEST(Iso, ParsesJavaScriptForms) {
  EXPECT_EQ(parse_iso("2026-01-20T12:00:00.123Z")->ms, 1768910400123);
  EXPECT_EQ(parse_iso("2026-01-20T12:00:00Z")->ms, 1768910400000);
  EXPECT_EQ(parse_iso("2026-01-20T12:00Z")->ms, 1768910400000);
  EXPECT_EQ(parse_iso("2026-01-20")->ms, 1768867200000);
  EXPECT_EQ(parse_iso("2026-01-20T13:00:00+01:00")->ms, 1768910400000);
  EXPECT_EQ(parse_iso("2026-01-20T11:30:00.5-00:30")->ms, 1768910400500);
}

TEST(Iso, RejectsInvalidDates) {
  for (const char* bad : {"", "yesterday", "2026-13-01", "2026-02-30", "2025-02-29T00:00:00Z",
                          "2026-01-20T25:00:00Z", "2026-01-20T12:60:00Z", "2026-01-20T12:00:00.Z",
                          "2026-01-20T12:00:00ZZ", "2026-01-20 12:00:00", "20260120"}) {
    EXPECT_FALSE(parse_iso(bad).has_value()) << bad;
  }
}

TEST(Iso, RoundTrips) {
  for (std::int64_t ms : {0LL, 1LL, 999LL, 1768910400123LL, 4102444799999LL}) {
    EXPECT_EQ(parse_iso(format_iso(timestamp{ms}))->ms, ms);
  }
}

TEST(Ids, UuidV4IsWellFormedAndUnique) {
  std::regex re("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    auto id = new_uuid_v4();
    EXPECT_TRUE(std::regex_match(id, re)) << id;
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 1000U);
}

TEST(Ids, ObjectIdIs24Hex) {
  auto id = new_object_id(timestamp{1768910400123});
  EXPECT_TRUE(std::regex_match(id, std::regex("^[0-9a-f]{24}$")));
  EXPECT_EQ(id.substr(0, 8), "696f6e40");  // 1768910400 seconds in hex
}

TEST(Enums, ParseExactWireSpelling) {
  EXPECT_EQ(parse_session_status("stalled"), session_status::stalled);
  EXPECT_FALSE(parse_session_status("Stalled").has_value());
  EXPECT_EQ(parse_task_status("in_progress"), task_status::in_progress);
  EXPECT_EQ(parse_machine_status("maintenance"), machine_status::maintenance);
  EXPECT_FALSE(parse_machine_status("").has_value());
  for (std::size_t i = 0; i < session_status_names.size(); ++i) {
    EXPECT_EQ(to_string(*parse_session_status(session_status_names[i])), session_status_names[i]);
  }
}

}  // namespace
}  // namespace statetrack::core
