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

// record() + peek(): how the pipeline throttles an address after failed authentications.
TEST(RateLimiter, RecordBlocksWhenTheCountReachesTheLimit) {
  rate_limiter rl(minute);
  const std::int64_t t = 5 * minute;
  EXPECT_TRUE(rl.peek(0, "a", t).allowed);
  EXPECT_EQ(rl.bucket_count(), 0U);  // peeking creates nothing
  for (int i = 1; i < 3; ++i) {
    ASSERT_TRUE(rl.record(0, "a", 3, t + i).allowed) << i;
    ASSERT_TRUE(rl.peek(0, "a", t + i).allowed) << i;
  }
  auto d = rl.record(0, "a", 3, t + 3);  // the third failure blocks at once
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_s, 60);
  d = rl.peek(0, "a", t + 3 + 45'000);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_s, 15);
  EXPECT_TRUE(rl.peek(0, "b", t + 4).allowed);  // per client
  EXPECT_TRUE(rl.peek(1, "a", t + 4).allowed);  // per key
  // One window after the block the address is free again and counts from zero.
  EXPECT_TRUE(rl.peek(0, "a", t + 3 + minute).allowed);
  EXPECT_TRUE(rl.record(0, "a", 3, t + 3 + minute).allowed);
  EXPECT_TRUE(rl.record(0, "a", 3, t + 4 + minute).allowed);
  EXPECT_FALSE(rl.record(0, "a", 3, t + 5 + minute).allowed);
}

TEST(RateLimiter, RecordedEventsExpireAfterAWindow) {
  rate_limiter rl(minute);
  const std::int64_t t = 10 * minute;
  ASSERT_TRUE(rl.record(0, "a", 2, t).allowed);
  // 61 s later the first failure no longer counts: one more does not block.
  EXPECT_TRUE(rl.record(0, "a", 2, t + minute + 1000).allowed);
  EXPECT_TRUE(rl.peek(0, "a", t + minute + 1001).allowed);
}

TEST(RateLimiter, RecordWithLimitOneBlocksAtTheFirstEvent) {
  rate_limiter rl(minute);
  EXPECT_FALSE(rl.record(0, "a", 1, 1000).allowed);
  EXPECT_FALSE(rl.peek(0, "a", 2000).allowed);
  EXPECT_TRUE(rl.record(0, "b", 0, 1000).allowed);  // 0 disables
  EXPECT_TRUE(rl.peek(0, "b", 2000).allowed);
}

}  // namespace
}  // namespace statetrack::http
