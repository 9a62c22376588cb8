// The in-process event hub: after each commit that appended events it reads them once from
// the store into a bounded ring of pre-rendered messages and wakes the subscribers, which copy
// what they need from the ring at their own pace. A subscriber that falls further behind than
// the ring (or its own lag bound) is cut with a reason and resumes from its last seq; one that
// resumes from older history reads it from the store. Shared by every I/O thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "core/model.hpp"

namespace statetrack::storage {
class store;
}
namespace statetrack::obs {
class registry;
class counter;
class gauge;
}  // namespace statetrack::obs

namespace statetrack::events {

// One event, rendered once for every subscriber.
struct message {
  core::event e;
  std::string json;  // {"type":"event","seq":..,"event_type":..,...,"data":{...}}
};
using message_ptr = std::shared_ptr<const message>;

message_ptr render(core::event e);

// What a subscriber wants. Empty fields match everything; `types` entries are exact event
// types or prefixes ending in ".*" (session.*). The scope comes from the stream's key, never
// from the client: a project-scoped key sees only its projects' events, a machine key only
// its machine's.
struct filter {
  std::optional<std::string> project_id;
  std::optional<std::string> session_id;
  std::optional<std::string> machine_id;
  std::vector<std::string> types;
  std::vector<std::string> scope_projects;   // non-empty: project_id must be one of these
  std::optional<std::string> scope_machine;  // machine_id must be this
  bool matches(const core::event& e) const;
};

struct hub_options {
  std::size_t ring_capacity = 65536;  // recent events kept in memory
  std::int64_t max_lag = 16384;       // a subscriber further behind than this is cut
};

class hub {
 public:
  hub(storage::store& store, boost::asio::any_io_executor executor, hub_options opts,
      obs::registry* metrics = nullptr);

  // Called by the store's writer after a commit that appended events (any thread).
  void on_committed(std::int64_t last_seq);

  // Registers a wake-up callback run on `ex` whenever new events arrive; returns a token for
  // unregister. Callbacks must be cheap (they cancel a timer).
  std::uint64_t add_waiter(boost::asio::any_io_executor ex, std::function<void()> wake);
  void remove_waiter(std::uint64_t token);

  // Events with seq >= from, up to `max` of them, from the ring. nullopt when `from` is older
  // than the ring holds (read from the store instead).
  std::optional<std::vector<message_ptr>> from_ring(std::int64_t from, std::size_t max) const;
  std::int64_t head() const;  // highest seq known to the hub (0 when none)

  const hub_options& options() const { return opts_; }

  // Server shutdown: every stream is woken and ends (WebSocket with 1001 going away).
  void shutdown();
  // Wakes every stream (a key was revoked: each re-checks its key at once).
  void wake_all();
  bool closing() const { return closing_.load(); }
  storage::store& store() { return store_; }

  // Counters of the stream sessions.
  void count_connected(int delta);
  void count_delivered(std::uint64_t n);
  void count_cut();

 private:
  void pull();

  storage::store& store_;
  boost::asio::any_io_executor executor_;
  hub_options opts_;
  mutable std::mutex mu_;
  std::deque<message_ptr> ring_;
  std::int64_t head_ = 0;
  bool pulling_ = false;
  std::int64_t wanted_ = 0;
  struct waiter {
    std::uint64_t token;
    boost::asio::any_io_executor ex;
    std::function<void()> wake;
  };
  std::vector<waiter> waiters_;
  std::atomic<bool> closing_{false};
  std::uint64_t next_token_ = 1;
  obs::gauge* subscribers_ = nullptr;
  obs::counter* delivered_ = nullptr;
  obs::counter* cut_ = nullptr;
  // State changes by event type (statetrack_events_total{type}), counted once per event as
  // the hub reads it from the log; registered on first sight of a type. Used by pull() only.
  obs::registry* metrics_ = nullptr;
  std::unordered_map<std::string, obs::counter*> by_type_;
  void count_type(const std::string& type);
};

}  // namespace statetrack::events
