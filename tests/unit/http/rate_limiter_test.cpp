#include "http/rate_limiter.hpp"

#include <gtest/gtest.h>

namespace statetrack::http {
namespace {

constexpr std::int64_t minute = 60000;

TEST(RateLimiter, TheRequestAfterTheLimitIsRefusedAndBlocksForAWindow) {
  rate_limiter rl(minute);
  std::int64_t t = 1'000'000;
  for (int i = 1; i <= 100; ++i) {
    auto d = rl.check(0, "1.2.3.4", 100, t + i);
    ASSERT_TRUE(d.allowed) << i;
    EXPECT_EQ(d.limit, 100);
    EXPECT_EQ(d.remaining, 100 - i);
  }
  auto d = rl.check(0, "1.2.3.4", 100, t + 200);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_s, 60);
  // Still blocked 59 s later, with a shrinking Retry-After.
  d = rl.check(0, "1.2.3.4", 100, t + 200 + 59'000);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_s, 1);
  // After the block the count starts again at 1.
  d = rl.check(0, "1.2.3.4", 100, t + 200 + minute);
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.remaining, 99);
}

TEST(RateLimiter, BucketsArePerRouteAndPerClient) {
  rate_limiter rl(minute);
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(rl.check(0, "a", 3, 1000 + i).allowed);
  EXPECT_FALSE(rl.check(0, "a", 3, 1010).allowed);
  EXPECT_TRUE(rl.check(1, "a", 3, 1010).allowed);  // another endpoint
  EXPECT_TRUE(rl.check(0, "b", 3, 1010).allowed);  // another client
}

TEST(RateLimiter, HitsExpireOneWindowLater) {
  rate_limiter rl(minute);
  const std::int64_t t = 10 * minute;
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(rl.check(0, "a", 5, t).allowed);
  // 61 s later the first hits have left the window: room again, without a block.
  auto d = rl.check(0, "a", 5, t + minute + 1000);
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.remaining, 4);
}

TEST(RateLimiter, ResetCountsDownToTheEndOfTheWindow) {
  rate_limiter rl(minute);
  EXPECT_EQ(rl.check(0, "a", 10, 0).reset_s, 60);
  EXPECT_EQ(rl.check(0, "a", 10, 30'500).reset_s, 30);
  EXPECT_EQ(rl.check(0, "a", 10, 59'999).reset_s, 1);
}

TEST(RateLimiter, ZeroLimitDisablesLimiting) {
  rate_limiter rl(minute);
  for (int i = 0; i < 1000; ++i)
    ASSERT_TRUE(rl.check(0, "a", 0, i).allowed);
  EXPECT_EQ(rl.bucket_count(), 0U);
}

TEST(RateLimiter, ShortWindowsWork) {
  rate_limiter rl(2000);
  for (int i = 0; i < 2; ++i)
    ASSERT_TRUE(rl.check(0, "a", 2, 100).allowed);
  auto d = rl.check(0, "a", 2, 150);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_s, 2);
  EXPECT_TRUE(rl.check(0, "a", 2, 2200).allowed);
}

}  // namespace
}  // namespace statetrack::http
