// The storage interface every backend implements: typed row operations grouped into read
// views and write transactions, and the store that runs them. Backends decide where the
// closures run (SQLite: reads inline on per-thread connections, writes on the group-commit
// writer thread); services never see SQL.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "core/model.hpp"

namespace statetrack::storage {

using core::timestamp;

// Bit set of session statuses (bit i = session_status i).
struct status_set {
  unsigned bits = 0;
  static status_set of(std::initializer_list<core::session_status> list) {
    status_set s;
    for (auto st : list)
      s.bits |= 1U << static_cast<unsigned>(st);
    return s;
  }
  bool empty() const { return bits == 0; }
  bool contains(core::session_status st) const { return (bits >> static_cast<unsigned>(st)) & 1U; }
};

enum class session_order {
  created_desc,        // GET /sessions
  started_desc,        // active, by-project, by-machine
  last_heartbeat_asc,  // stale, recoverable
  completed_desc,      // failed
  updated_desc,        // archived
  sweep_asc,           // stall sweep
};

struct session_filter {
  status_set statuses;  // empty = any status
  std::optional<std::string> project_id;
  std::vector<std::string> project_in;  // non-empty: project_id is one of these (key scope)
  std::optional<std::string> machine_id;
  std::optional<timestamp> last_heartbeat_before;    // strictly before
  std::optional<timestamp> last_heartbeat_at_least;  // >=
  std::optional<timestamp> last_heartbeat_at_most;   // <=
  std::optional<timestamp> created_before;           // strictly before
  std::optional<timestamp> completed_before;         // strictly before
  std::optional<timestamp> sweep_before;             // strictly before (sweep_at)
  session_order order = session_order::created_desc;
  std::int64_t limit = 0;  // 0 = no limit
  std::int64_t offset = 0;
};

struct task_filter {
  std::optional<std::string> session_id;
  std::optional<core::task_status> status;
  std::optional<std::string> project_id;
  std::vector<std::string> project_in;          // non-empty: project_id is one of these (key scope)
  std::vector<core::task_status> statuses_any;  // alternative to status: any of these
  std::optional<timestamp> completed_before;
  std::int64_t limit = 0;
  std::int64_t offset = 0;
};

struct machine_filter {
  std::optional<core::machine_status> status;
  std::optional<std::string> hostname;
  std::optional<timestamp> last_heartbeat_before;
};

/// Consistent reads. A view is valid only inside the closure it was passed to.
class read_view {
 public:
  virtual ~read_view() = default;

  virtual std::optional<core::session> get_session(std::string_view session_id) = 0;
  virtual std::vector<core::session> list_sessions(const session_filter& f) = 0;
  virtual std::int64_t count_sessions(const session_filter& f) = 0;
  // Counts of sessions per status (index = session_status).
  virtual std::vector<std::int64_t> count_sessions_by_status() = 0;

  virtual std::optional<core::task> get_task(std::string_view task_id) = 0;
  // Sorted by created_at descending (then insertion order).
  virtual std::vector<core::task> list_tasks(const task_filter& f) = 0;
  virtual std::int64_t count_tasks(const task_filter& f) = 0;

  virtual std::optional<core::machine> get_machine(std::string_view machine_id) = 0;
  // Insertion order.
  virtual std::vector<core::machine> list_machines(const machine_filter& f) = 0;

  virtual std::optional<core::api_key> find_api_key(std::string_view prefix) = 0;
  virtual std::vector<core::api_key> list_api_keys() = 0;

  // Events with seq > after, ascending, at most limit.
  virtual std::vector<core::event> events_after(std::int64_t after, std::int64_t limit) = 0;
  // One session's events with seq > after, ascending, at most limit.
  virtual std::vector<core::event> session_events(std::string_view session_id, std::int64_t after,
                                                  std::int64_t limit) = 0;
  virtual std::optional<std::string> get_meta(std::string_view key) = 0;
  virtual std::int64_t last_event_seq() = 0;
};

/// One write unit inside a transaction. Operations that match no row report it (false or
/// nullopt); they never guess.
class write_txn : public read_view {
 public:
  virtual void insert_session(const core::session& s) = 0;
  // Rewrites every column of the row with this session_id; false if it does not exist.
  virtual bool update_session(const core::session& s) = 0;
  // Hot path: only the liveness columns (status, last_heartbeat, deadline_at, updated_at).
  virtual bool update_session_liveness(const core::session& s) = 0;
  virtual bool delete_session(std::string_view session_id) = 0;

  // False when a task with the same id exists.
  virtual bool insert_task(const core::task& t) = 0;
  virtual bool update_task(const core::task& t) = 0;
  virtual std::int64_t delete_tasks_of_session(std::string_view session_id) = 0;
  virtual std::int64_t delete_tasks(const task_filter& f) = 0;

  // False when a machine with the same id exists.
  virtual bool insert_machine(const core::machine& m) = 0;
  virtual bool update_machine(const core::machine& m) = 0;

  // Assigns and returns the event's seq.
  virtual std::int64_t append_event(const core::event& e) = 0;
  // Deletes events older than `before` or beyond the newest `keep` (0 = no count bound).
  virtual std::int64_t prune_events(timestamp before, std::int64_t keep) = 0;

  virtual void put_meta(std::string_view key, std::string_view value) = 0;
  virtual void insert_ticket(const core::stream_ticket& t) = 0;
  // Deletes and returns the ticket with this hash if it has not expired (single use); also
  // deletes expired tickets.
  virtual std::optional<core::stream_ticket> consume_ticket(std::string_view hash,
                                                            timestamp now) = 0;
  virtual void delete_meta(std::string_view key) = 0;

  virtual void insert_api_key(core::api_key& k) = 0;  // sets k.id
  virtual bool revoke_api_key(std::int64_t id, timestamp at) = 0;
  // Makes an unrevoked key expire at `at` unless it already expires earlier.
  virtual bool expire_api_key(std::int64_t id, timestamp at) = 0;
  virtual void touch_api_key(std::int64_t id, timestamp at) = 0;
};

// A queued write: runs inside the writer's transaction. Returns true to keep its changes,
// false to roll them back (an expected failure such as a 404). A throw rolls back too and
// is rethrown to the waiting caller.
using write_fn = std::function<bool(write_txn&)>;
using read_fn = std::function<void(read_view&)>;

struct store_stats {
  std::uint64_t commits = 0;
  std::uint64_t writes = 0;
  std::uint64_t failed_commits = 0;
  std::uint64_t queue_depth = 0;
  // Batches run again (deadlock, lost connection, a deferred statement that failed).
  std::uint64_t batch_retries = 0;
};

/// A durable store. Every write is on stable storage before run_write completes.
class store {
 public:
  virtual ~store() = default;

  virtual boost::asio::awaitable<void> run_read(read_fn fn) = 0;
  virtual boost::asio::awaitable<void> run_write(write_fn fn) = 0;
  // A write that reads the session `session_id` first (a heartbeat). A backend may fetch the
  // sessions of a whole batch in one round trip; the contract is run_write's. (By value:
  // backends that use the id keep it.)
  virtual boost::asio::awaitable<void> run_session_write(
      std::string /*session_id*/,  // NOLINT(performance-unnecessary-value-param)
      write_fn fn) {
    return run_write(std::move(fn));
  }
  // Synchronous versions for start-up, the CLI and tests (never on an I/O thread).
  virtual void read_now(const read_fn& fn) = 0;
  virtual void write_now(const write_fn& fn) = 0;

  // Round trip to the database in milliseconds, or nullopt when it is unreachable.
  virtual std::optional<double> ping() = 0;
  // Why the database cannot be used right now, in words fit for a public health page (no
  // addresses or credentials); empty when the backend has nothing to add.
  virtual std::string unavailable_reason() const { return {}; }
  virtual std::string backend_name() const = 0;
  virtual store_stats stats() const = 0;
  // Registers a callback run after each commit that appended events (last committed seq).
  virtual void on_events_committed(std::function<void(std::int64_t)> cb) = 0;
  // Stops the writer after draining queued writes.
  virtual void close() = 0;
};

// Typed helpers over the type-erased interface.
template <class F>
auto read(store& s, F f) -> boost::asio::awaitable<std::invoke_result_t<F&, read_view&>> {
  using R = std::invoke_result_t<F&, read_view&>;
  std::optional<R> out;
  read_fn fn = [&out, &f](read_view& v) { out.emplace(f(v)); };
  co_await s.run_read(std::move(fn));
  co_return std::move(*out);
}

// F returns a result-like value (has_value()); its changes are kept iff it holds a value.
// `session_hint`: the session F reads first, if any (see store::run_session_write).
template <class F>
auto write(store& s, F f, std::string session_hint = {})
    -> boost::asio::awaitable<std::invoke_result_t<F&, write_txn&>> {
  using R = std::invoke_result_t<F&, write_txn&>;
  std::optional<R> out;
  write_fn fn = [&out, &f](write_txn& t) {
    out.emplace(f(t));
    return out->has_value();
  };
  if (session_hint.empty()) {
    co_await s.run_write(std::move(fn));
  } else {
    co_await s.run_session_write(std::move(session_hint), std::move(fn));
  }
  co_return std::move(*out);
}

}  // namespace statetrack::storage
