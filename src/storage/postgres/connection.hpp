// One libpq connection driven without blocking calls: a non-blocking socket polled with a
// deadline for every round trip (so a dead or hung server costs at most the deadline), pipeline
// mode (statements whose results are not needed yet are queued and travel with the next
// round trip), a per-connection prepared-statement cache, and SQLSTATE -> storage_error
// mapping. Owned and used by exactly one thread at a time (the store's writer, a reader, the
// listener); created by pg_store.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/error.hpp"

// libpq's handle types (the same typedefs as libpq-fe.h), so that this header stays light.
typedef struct pg_conn PGconn;      // NOLINT(modernize-use-using)
typedef struct pg_result PGresult;  // NOLINT(modernize-use-using)

namespace statetrack::storage::postgres {

using steady = std::chrono::steady_clock;
using deadline = steady::time_point;

// An error the server reported for a statement, with its SQLSTATE. The connection is still
// usable (the transaction may be aborted).
class pg_error : public core::storage_error {
 public:
  pg_error(kind k, std::string sqlstate, const std::string& what, bool deferred = false)
      : storage_error(k, what), sqlstate_(std::move(sqlstate)), deferred_(deferred) {}
  const std::string& sqlstate() const noexcept { return sqlstate_; }
  // Deadlock victim or serialization failure: the whole transaction may simply be retried.
  bool retryable() const noexcept { return sqlstate_ == "40P01" || sqlstate_ == "40001"; }
  // The failing statement was a deferred one (queued earlier with defer()), not the one the
  // round trip was made for: the caller cannot tell whose it was.
  bool deferred() const noexcept { return deferred_; }

 private:
  std::string sqlstate_;
  bool deferred_ = false;
};

// The connection broke, could not be opened, or a round trip missed its deadline. The
// connection is unusable afterwards.
class connection_lost : public core::storage_error {
 public:
  explicit connection_lost(const std::string& what) : storage_error(kind::unavailable, what) {}
};

// Statement parameters, sent in text format (the server infers their types from the SQL).
class params {
 public:
  params& add(std::string_view v);
  params& add(const std::string& v) { return add(std::string_view(v)); }
  params& add(const char* v) { return add(std::string_view(v)); }
  params& add(std::int64_t v);
  params& add(int v) { return add(static_cast<std::int64_t>(v)); }
  params& add(double v);
  params& add(const std::optional<std::string>& v);
  params& add(const std::optional<std::int64_t>& v);
  params& add(const std::optional<double>& v);
  params& add_null();

  int size() const { return static_cast<int>(values_.size()); }
  // Pointers for PQsendQueryPrepared; valid until the next add().
  std::vector<const char*> pointers() const;

 private:
  std::vector<std::optional<std::string>> values_;
};

// A query result (owns the PGresult).
class result {
 public:
  result() = default;
  explicit result(PGresult* r) : r_(r) {}
  result(result&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
  result& operator=(result&& o) noexcept;
  result(const result&) = delete;
  result& operator=(const result&) = delete;
  ~result();

  int rows() const;
  std::int64_t affected() const;  // rows changed by INSERT/UPDATE/DELETE
  bool is_null(int row, int col) const;
  std::string_view view(int row, int col) const;
  std::string text(int row, int col) const { return std::string(view(row, col)); }
  std::int64_t int64(int row, int col) const;
  double dbl(int row, int col) const;
  std::optional<std::string> opt_text(int row, int col) const;
  std::optional<std::int64_t> opt_int64(int row, int col) const;
  std::optional<double> opt_dbl(int row, int col) const;
  std::string_view command_tag() const;

 private:
  PGresult* r_ = nullptr;
};

struct connect_options {
  std::string conninfo;  // anything libpq accepts (URI, keywords, multi-host)
  std::string application_name = "statetrack";
  bool pipeline = true;  // writer and readers; the listener uses plain mode
  std::chrono::milliseconds statement_timeout{0};  // server-side bound (0 = server default)
};

class connection {
 public:
  // Connects without blocking the thread beyond `until` (libpq walks the hosts of a multi-host
  // string itself; the socket may change while it does). Throws connection_lost.
  static std::unique_ptr<connection> open(const connect_options& o, deadline until);
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  // Queues a statement whose result is not needed now; it is sent with the next round trip
  // and its outcome checked there.
  void defer(std::string_view sql, const params& p = {});
  // Queues a statement, syncs, and waits for every outstanding result; returns this
  // statement's. Throws pg_error for the first statement error since the last sync (after
  // reading everything up to the sync, so the connection stays usable), connection_lost when
  // the connection broke or `until` passed.
  result exec(std::string_view sql, const params& p, deadline until);
  result exec(std::string_view sql, deadline until) { return exec(sql, params{}, until); }
  // Sends everything queued with a sync, without waiting: results are read (and errors in
  // them reported) by the next exec. Used to end read transactions without a round trip.
  void send_queued(deadline until);
  // Reads every outstanding result (e.g. before leaving pipeline mode).
  void drain(deadline until);
  // Runs a multi-statement script with the simple query protocol (migrations).
  void exec_script(std::string_view sql, deadline until);

  bool broken() const { return broken_; }
  // Transaction status after the last completed round trip: idle, in a block, or in a failed
  // block whose statements all fail until ROLLBACK.
  bool in_failed_transaction() const;
  bool in_transaction() const;
  int backend_pid() const;
  int socket() const;
  PGconn* raw() { return conn_; }
  // Consumes input and returns true if anything arrived; for the listener.
  bool consume_input();
  // Waits until the socket is readable, `wake_fd` is readable, or `until`. For the listener.
  void wait_readable(deadline until, int wake_fd = -1);

 private:
  explicit connection(PGconn* c, bool pipeline) : conn_(c), pipeline_(pipeline) {}
  struct pending {
    enum class kind { statement, prepare, sync } k;
    bool wanted = false;    // its result is returned by exec()
    std::string sql;        // for prepare: the cache key to forget if preparing fails
    bool deferred = false;  // queued by defer() (a prepare: for a deferred statement)
  };
  void queue_statement(std::string_view sql, const params& p, bool wanted);
  void sync();
  void flush(deadline until);
  PGresult* next_result(deadline until);
  // Reads results up to and including the next sync; returns the wanted statement's result.
  result read_segment(deadline until);
  [[noreturn]] void lose(const std::string& why);
  void setup_session(const connect_options& o, deadline until);

  PGconn* conn_ = nullptr;
  bool pipeline_ = true;
  bool broken_ = false;
  std::deque<pending> pending_;
  std::unordered_map<std::string, std::string> prepared_;  // SQL text -> statement name
  std::uint64_t next_stmt_ = 0;
};

// Maps a SQLSTATE to the storage_error kind the pipeline turns into a status.
core::storage_error::kind kind_of_sqlstate(std::string_view sqlstate);

}  // namespace statetrack::storage::postgres
