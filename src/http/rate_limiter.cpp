// Slot-ring sliding window with blocking, as specified by the contract's rate limiting.
#include "http/rate_limiter.hpp"

#include <algorithm>
#include <functional>

namespace statetrack::http {

namespace {
std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return a <= 0 ? 0 : (a + b - 1) / b;
}
}  // namespace

rate_limiter::rate_limiter(std::int64_t window_ms)
    : window_ms_(std::max<std::int64_t>(window_ms, 1)),
      slot_ms_(std::max<std::int64_t>(window_ms_ / static_cast<std::int64_t>(slots), 1)) {}

void rate_limiter::expire(bucket& b, std::int64_t now_slot) const {
  // Slots [first_slot, now_slot - slots] have left the window.
  const std::int64_t keep_from = now_slot - static_cast<std::int64_t>(slots) + 1;
  if (b.first_slot >= keep_from) return;
  if (keep_from - b.first_slot >= static_cast<std::int64_t>(slots)) {
    b.counts.fill(0);
    b.hits = 0;
  } else {
    for (std::int64_t s = b.first_slot; s < keep_from; ++s) {
      auto& c = b.counts[static_cast<std::size_t>(s % static_cast<std::int64_t>(slots))];
      b.hits -= c;
      c = 0;
    }
  }
  b.first_slot = keep_from;
}

std::string rate_limiter::key_of(std::size_t route_index, std::string_view client) {
  std::string key = std::to_string(route_index);
  key += '|';
  key += client;
  return key;
}

rate_decision rate_limiter::check(std::size_t route_index, std::string_view client,
                                  std::int64_t limit, std::int64_t now_ms) {
  return count(route_index, client, limit, limit, now_ms);
}

rate_decision rate_limiter::record(std::size_t route_index, std::string_view client,
                                   std::int64_t limit, std::int64_t now_ms) {
  return count(route_index, client, limit, limit - 1, now_ms);
}

rate_decision rate_limiter::peek(std::size_t route_index, std::string_view client,
                                 std::int64_t now_ms) const {
  rate_decision d;
  std::string key = key_of(route_index, client);
  auto& sh = shards_[std::hash<std::string>{}(key) % shards_.size()];
  std::lock_guard lk(sh.mu);
  auto it = sh.buckets.find(key);
  if (it != sh.buckets.end() && it->second.blocked_until > now_ms) {
    d.allowed = false;
    d.retry_after_s = ceil_div(it->second.blocked_until - now_ms, 1000);
  }
  return d;
}

rate_decision rate_limiter::count(std::size_t route_index, std::string_view client,
                                  std::int64_t limit, std::int64_t block_above,
                                  std::int64_t now_ms) {
  rate_decision d;
  d.limit = limit;
  if (limit <= 0) return d;
  std::string key = key_of(route_index, client);
  auto& sh = shards_[std::hash<std::string>{}(key) % shards_.size()];
  std::lock_guard lk(sh.mu);
  if (++sh.ops % 4096 == 0) {
    // Forget buckets idle for two windows so memory follows the active client set.
    std::erase_if(sh.buckets, [&](const auto& kv) {
      return kv.second.last_seen < now_ms - 2 * window_ms_ && kv.second.blocked_until < now_ms;
    });
  }
  auto [it, fresh] = sh.buckets.try_emplace(std::move(key));
  bucket& b = it->second;
  const std::int64_t now_slot = now_ms / slot_ms_;
  if (fresh) {
    b.first_slot = now_slot;
    b.window_start = now_ms;
  }
  b.last_seen = now_ms;
  if (b.blocked_until > now_ms) {
    d.allowed = false;
    d.retry_after_s = ceil_div(b.blocked_until - now_ms, 1000);
    return d;
  }
  if (b.blocked_until != 0) {
    // The block ended: the first request afterwards starts a fresh count.
    b = bucket{};
    b.first_slot = now_slot;
    b.window_start = now_ms;
    b.last_seen = now_ms;
  }
  expire(b, now_slot);
  if (b.hits == 0) {
    b.window_start = now_ms;
  } else if (now_ms >= b.window_start + window_ms_) {
    b.window_start += (now_ms - b.window_start) / window_ms_ * window_ms_;
  }
  ++b.counts[static_cast<std::size_t>(now_slot % static_cast<std::int64_t>(slots))];
  ++b.hits;
  if (b.hits > block_above) {
    b.blocked_until = now_ms + window_ms_;
    d.allowed = false;
    d.retry_after_s = ceil_div(window_ms_, 1000);
    return d;
  }
  d.remaining = std::max<std::int64_t>(0, limit - b.hits);
  d.reset_s = std::max<std::int64_t>(1, ceil_div(b.window_start + window_ms_ - now_ms, 1000));
  return d;
}

std::size_t rate_limiter::bucket_count() const {
  std::size_t n = 0;
  for (auto& sh : shards_) {
    std::lock_guard lk(sh.mu);
    n += sh.buckets.size();
  }
  return n;
}

}  // namespace statetrack::http
