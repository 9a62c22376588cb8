// Per-endpoint, per-client-address request budgets (the contract's throttler semantics):
// hits expire one window after they were made; the request that exceeds the limit blocks the
// bucket for one window. Counts are kept in 60 slots per window, so memory per bucket is
// constant whatever the limit. Thread-safe; buckets are sharded by key. The pipeline also uses
// one to count failed authentications per client address (record() and peek()).
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace statetrack::http {

struct rate_decision {
  bool allowed = true;
  std::int64_t limit = 0;
  std::int64_t remaining = 0;
  std::int64_t reset_s = 0;        // seconds until the bucket's window restarts
  std::int64_t retry_after_s = 0;  // when blocked
};

class rate_limiter {
 public:
  // window_ms > 0. A limit of 0 disables limiting for that call.
  explicit rate_limiter(std::int64_t window_ms);

  // Counts one request; refuses it (and blocks the bucket) when it exceeds `limit`.
  rate_decision check(std::size_t route_index, std::string_view client, std::int64_t limit,
                      std::int64_t now_ms);
  // Counts one event that is not itself refused (a failed authentication): when the count
  // within the window reaches `limit`, the bucket is blocked for one window from now.
  rate_decision record(std::size_t route_index, std::string_view client, std::int64_t limit,
                       std::int64_t now_ms);
  // Whether the bucket is blocked now; counts nothing and creates no bucket.
  rate_decision peek(std::size_t route_index, std::string_view client, std::int64_t now_ms) const;
  std::size_t bucket_count() const;

 private:
  static constexpr std::size_t slots = 60;
  struct bucket {
    std::array<std::uint32_t, slots> counts{};
    std::int64_t first_slot = 0;  // absolute slot number of counts[first_slot % slots]
    std::int64_t hits = 0;
    std::int64_t window_start = 0;
    std::int64_t blocked_until = 0;
    std::int64_t last_seen = 0;
  };
  struct shard {
    std::mutex mu;
    std::unordered_map<std::string, bucket> buckets;
    std::uint64_t ops = 0;
  };
  void expire(bucket& b, std::int64_t now_slot) const;
  // Counts one hit; blocks when the count exceeds `block_above`.
  rate_decision count(std::size_t route_index, std::string_view client, std::int64_t limit,
                      std::int64_t block_above, std::int64_t now_ms);
  static std::string key_of(std::size_t route_index, std::string_view client);

  std::int64_t window_ms_;
  std::int64_t slot_ms_;
  mutable std::array<shard, 16> shards_;
};

}  // namespace statetrack::http
