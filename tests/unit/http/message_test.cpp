#include "http/message.hpp"

#include <gtest/gtest.h>

namespace statetrack::http {
namespace {

TEST(HttpsLocation, SameHostAndTargetOnTheHttpsPort) {
  EXPECT_EQ(https_location("example.com:8080", "/api/sessions?x=1", 8443),
            "https://example.com:8443/api/sessions?x=1");
  EXPECT_EQ(https_location("example.com", "/", 443), "https://example.com/");
  EXPECT_EQ(https_location("127.0.0.1:80", "/health", 443), "https://127.0.0.1/health");
  EXPECT_EQ(https_location("[::1]:8080", "/h", 8443), "https://[::1]:8443/h");
  EXPECT_EQ(https_location("[2001:db8::1]", "/h", 443), "https://[2001:db8::1]/h");
  EXPECT_EQ(https_location("Host-1.Example.COM", "/", 8443), "https://Host-1.Example.COM:8443/");
}

TEST(HttpsLocation, NonOriginTargetsBecomeTheRoot) {
  EXPECT_EQ(https_location("a.example", "http://other.example/x", 443), "https://a.example/");
  EXPECT_EQ(https_location("a.example", "*", 443), "https://a.example/");
  EXPECT_EQ(https_location("a.example", "", 443), "https://a.example/");
}

TEST(HttpsLocation, RefusesHostsThatCouldInjectAnotherUrl) {
  for (const char* bad : {"", ":8080", "evil.example/x", "a@evil.example", "a b", "a.example:80x",
                          "a.example:80:90", "[::1", "[]", "[::1]x", "[zz::1]", "a\r\nb",
                          "a.example\\evil", "a.example?", "a.example#"}) {
    EXPECT_FALSE(https_location(bad, "/", 443).has_value()) << bad;
  }
  EXPECT_FALSE(https_location(std::string(256, 'a'), "/", 443).has_value());
}

}  // namespace
}  // namespace statetrack::http
