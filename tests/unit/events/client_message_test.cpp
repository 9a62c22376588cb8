#include "events/client_message.hpp"

#include <gtest/gtest.h>

namespace statetrack::events {
namespace {

using kind = client_message::kind;

TEST(ClientMessage, PingAndUnsubscribe) {
  EXPECT_EQ(parse_client_message(R"({"type":"ping"})").k, kind::ping);
  EXPECT_EQ(parse_client_message(R"({"type":"unsubscribe","extra":1})").k, kind::unsubscribe);
}

TEST(ClientMessage, SubscribeCarriesTheFilterAndSince) {
  const auto m = parse_client_message(
      R"({"type":"subscribe","project_id":"p","session_id":null,"machine_id":"m",)"
      R"("types":["session.*","task.created"],"since":42})");
  ASSERT_EQ(m.k, kind::subscribe);
  EXPECT_EQ(m.f.project_id, "p");
  EXPECT_FALSE(m.f.session_id);
  EXPECT_EQ(m.f.machine_id, "m");
  EXPECT_EQ(m.f.types, (std::vector<std::string>{"session.*", "task.created"}));
  EXPECT_EQ(m.since, 42);
  EXPECT_TRUE(m.f.scope_projects.empty());  // scope never comes from the client
  EXPECT_FALSE(m.f.scope_machine);
}

TEST(ClientMessage, SubscribeWithoutSinceContinues) {
  const auto m = parse_client_message(R"({"type":"subscribe"})");
  ASSERT_EQ(m.k, kind::subscribe);
  EXPECT_FALSE(m.since);
}

TEST(ClientMessage, BadSubscriptions) {
  for (const char* text : {
           R"({"type":"subscribe","project_id":1})",
           R"({"type":"subscribe","types":"session.*"})",
           R"({"type":"subscribe","types":["a",2]})",
           R"({"type":"subscribe","since":-1})",
           R"({"type":"subscribe","since":1.5})",
           R"({"type":"subscribe","since":"3"})",
           // above the largest seq: once silently wrapped to a negative number
           R"({"type":"subscribe","since":18446744073709551615})",
       }) {
    EXPECT_EQ(parse_client_message(text).k, kind::bad_subscription) << text;
  }
  EXPECT_EQ(client_message_error_code(kind::bad_subscription), "bad_subscription");
}

TEST(ClientMessage, NotAMessage) {
  for (const char* text : {"", "not json", "[]", R"({"kind":"ping"})", R"({"type":3})"}) {
    EXPECT_EQ(parse_client_message(text).k, kind::bad_message) << text;
  }
  EXPECT_EQ(parse_client_message(R"({"type":"shout"})").k, kind::unknown_type);
  EXPECT_EQ(client_message_error_code(kind::unknown_type), "unknown_type");
  EXPECT_EQ(client_message_error_code(kind::bad_message), "bad_message");
}

}  // namespace
}  // namespace statetrack::events
