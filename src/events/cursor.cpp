// Catch-up from the store, then the ring.
#include "events/cursor.hpp"

#include "storage/store.hpp"

namespace statetrack::events {

cursor::cursor(hub& h, filter f, std::optional<std::int64_t> since)
    : hub_(h), filter_(std::move(f)), next_seq_(since ? *since + 1 : h.head() + 1) {
  checked_start_ = !since.has_value();
}

cursor::batch cursor::next(std::size_t max) {
  batch out;
  const std::int64_t head = hub_.head();
  if (!checked_start_) {
    checked_start_ = true;
    if (next_seq_ - 1 > head) {
      out.st = state::resync;
      out.reason = "the requested seq " + std::to_string(next_seq_ - 1) +
                   " is newer than the event log (" + std::to_string(head) + "); refetch state";
      return out;
    }
    // Retention is decided by the log, not by what the in-memory ring still happens to hold.
    if (next_seq_ <= head) {
      std::vector<core::event> first;
      const std::int64_t after = next_seq_ - 1;
      hub_.store().read_now([&](storage::read_view& v) { first = v.events_after(after, 1); });
      if (first.empty() || first.front().seq != next_seq_) {
        out.st = state::resync;
        out.reason = "events after seq " + std::to_string(after) +
                     " are no longer retained; refetch state and subscribe without since";
        return out;
      }
    }
  }
  if (live_ && head - (next_seq_ - 1) > hub_.options().max_lag) {
    out.st = state::lagged;
    out.reason = "subscriber fell behind by more than " + std::to_string(hub_.options().max_lag) +
                 " events; reconnect with since=" + std::to_string(next_seq_ - 1);
    return out;
  }
  if (next_seq_ > head) {
    live_ = true;
    return out;  // idle: caught up
  }
  std::vector<message_ptr> candidates;
  if (auto recent = hub_.from_ring(next_seq_, max)) {
    candidates = std::move(*recent);
  } else {
    std::vector<core::event> older;
    const std::int64_t after = next_seq_ - 1;
    const auto limit = static_cast<std::int64_t>(max);
    hub_.store().read_now([&](storage::read_view& v) { older = v.events_after(after, limit); });
    if (older.empty() || older.front().seq != next_seq_) {
      // The log is gap-free, so a missing seq was removed by retention.
      out.st = state::resync;
      out.reason = "events after seq " + std::to_string(after) +
                   " are no longer retained; refetch state and subscribe without since";
      return out;
    }
    candidates.reserve(older.size());
    for (auto& e : older)
      candidates.push_back(render(std::move(e)));
  }
  for (auto& m : candidates) {
    next_seq_ = m->e.seq + 1;
    if (filter_.matches(m->e)) out.messages.push_back(std::move(m));
  }
  out.st = out.messages.empty() && next_seq_ > hub_.head() ? state::idle : state::ready;
  return out;
}

}  // namespace statetrack::events
