// A subscriber's position in the event log: what it has been sent (seq), what it wants
// (filter), and the next batch to send — from the hub's ring when recent, from the store when
// older. Detects the two ways a stream must end: history no longer retained (resync) and a
// subscriber too slow to keep up (lagged). One per stream; used from its connection's thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "events/hub.hpp"

namespace statetrack::events {

class cursor {
 public:
  enum class state { ready, idle, resync, lagged };

  struct batch {
    state st = state::idle;
    std::vector<message_ptr> messages;  // matching the filter, in seq order
    std::string reason;                 // for resync / lagged
  };

  // `since`: the last seq the client has (resume); nullopt: start from now.
  cursor(hub& h, filter f, std::optional<std::int64_t> since);

  // Up to `max` events examined past the current position.
  batch next(std::size_t max);

  std::int64_t position() const { return next_seq_ - 1; }  // last seq examined
  void refilter(filter f) { filter_ = std::move(f); }
  const filter& current_filter() const { return filter_; }

 private:
  hub& hub_;
  filter filter_;
  std::int64_t next_seq_;
  bool checked_start_ = false;
  // Only a subscriber that has caught up once is cut for lagging: one resuming from older
  // history reads it page by page from the store and may take its time.
  bool live_ = false;
};

}  // namespace statetrack::events
