// Non-blocking libpq: connect, pipelined round trips with deadlines, results, error mapping.
#include "storage/postgres/connection.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <poll.h>

#include <libpq-fe.h>

namespace statetrack::storage::postgres {

using core::storage_error;

namespace {

// Waits until `fd` is ready for `events` (or `wake_fd` is readable); false on timeout.
bool wait_fd(int fd, short events, deadline until, int wake_fd = -1) {
  for (;;) {
    const auto now = steady::now();
    if (now >= until) return false;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - now).count();
    pollfd fds[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
    const int n = ::poll(fds, wake_fd >= 0 ? 2 : 1, static_cast<int>(std::min<long>(left, 60'000)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return true;  // let libpq report the socket's error
  }
}

std::string trimmed(const char* msg) {
  std::string s = msg != nullptr ? msg : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
    s.pop_back();
  return s;
}

// SQLSTATEs after which the connection cannot be used for what we need: the connection itself
// failed (class 08), the server is shutting down or the database went away (57P0x), or it is
// read-only (25006: we reached a standby, e.g. a demoted primary) — reconnecting lets libpq
// pick the current primary of a multi-host connection string.
bool connection_fatal(std::string_view sqlstate) {
  return sqlstate.starts_with("08") || sqlstate.starts_with("57P") || sqlstate == "25006" ||
         sqlstate == "53300";
}

}  // namespace

storage_error::kind kind_of_sqlstate(std::string_view s) {
  if (s == "53100") return storage_error::kind::full;
  if (s.starts_with("XX001") || s.starts_with("XX002")) return storage_error::kind::corrupt;
  if (s.starts_with("08") || s.starts_with("57P") || s.starts_with("58") || s == "25006" ||
      s == "53300") {
    return storage_error::kind::unavailable;
  }
  if (s.starts_with("40") || s == "55P03" || s == "57014" || s.starts_with("53")) {
    return storage_error::kind::busy;
  }
  return storage_error::kind::other;
}

// ------------------------------------------------------------------------------- params

params& params::add(std::string_view v) {
  values_.emplace_back(std::string(v));
  return *this;
}
params& params::add(std::int64_t v) {
  values_.emplace_back(std::to_string(v));
  return *this;
}
params& params::add(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  values_.emplace_back(std::string(buf, r.ptr));
  return *this;
}
params& params::add(const std::optional<std::string>& v) {
  return v ? add(std::string_view(*v)) : add_null();
}
params& params::add(const std::optional<std::int64_t>& v) {
  return v ? add(*v) : add_null();
}
params& params::add(const std::optional<double>& v) {
  return v ? add(*v) : add_null();
}
params& params::add_null() {
  values_.emplace_back(std::nullopt);
  return *this;
}
std::vector<const char*> params::pointers() const {
  std::vector<const char*> out;
  out.reserve(values_.size());
  for (const auto& v : values_)
    out.push_back(v ? v->c_str() : nullptr);
  return out;
}

// ------------------------------------------------------------------------------- result

result& result::operator=(result&& o) noexcept {
  if (this != &o) {
    if (r_ != nullptr) PQclear(r_);
    r_ = o.r_;
    o.r_ = nullptr;
  }
  return *this;
}
result::~result() {
  if (r_ != nullptr) PQclear(r_);
}
int result::rows() const {
  return r_ != nullptr ? PQntuples(r_) : 0;
}
std::int64_t result::affected() const {
  if (r_ == nullptr) return 0;
  const char* s = PQcmdTuples(r_);
  std::int64_t n = 0;
  if (s != nullptr) std::from_chars(s, s + std::strlen(s), n);
  return n;
}
bool result::is_null(int row, int col) const {
  return PQgetisnull(r_, row, col) != 0;
}
std::string_view result::view(int row, int col) const {
  return {PQgetvalue(r_, row, col), static_cast<std::size_t>(PQgetlength(r_, row, col))};
}
std::int64_t result::int64(int row, int col) const {
  auto v = view(row, col);
  std::int64_t n = 0;
  std::from_chars(v.data(), v.data() + v.size(), n);
  return n;
}
double result::dbl(int row, int col) const {
  auto v = view(row, col);
  double d = 0;
  std::from_chars(v.data(), v.data() + v.size(), d);
  return d;
}
std::optional<std::string> result::opt_text(int row, int col) const {
  if (is_null(row, col)) return std::nullopt;
  return text(row, col);
}
std::optional<std::int64_t> result::opt_int64(int row, int col) const {
  if (is_null(row, col)) return std::nullopt;
  return int64(row, col);
}
std::optional<double> result::opt_dbl(int row, int col) const {
  if (is_null(row, col)) return std::nullopt;
  return dbl(row, col);
}
std::string_view result::command_tag() const {
  return r_ != nullptr ? std::string_view(PQcmdStatus(r_)) : std::string_view();
}

// --------------------------------------------------------------------------- connection

std::unique_ptr<connection> connection::open(const connect_options& o, deadline until) {
  // The first dbname is expanded as a connection string or URI; the application name is only
  // a fallback, so a name in the user's string wins.
  const char* keys[] = {"dbname", "fallback_application_name", nullptr};
  const char* vals[] = {o.conninfo.c_str(), o.application_name.c_str(), nullptr};
  PGconn* c = PQconnectStartParams(keys, vals, 1);
  if (c == nullptr) throw connection_lost("cannot allocate a PostgreSQL connection");
  auto fail = [&](const std::string& why) {
    PQfinish(c);  // `why` was copied out of the connection's message already
    throw connection_lost(why);
  };
  if (PQstatus(c) == CONNECTION_BAD)
    fail("cannot connect to PostgreSQL: " + trimmed(PQerrorMessage(c)));
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK) {
    if (st == PGRES_POLLING_FAILED) {
      fail("cannot connect to PostgreSQL: " + trimmed(PQerrorMessage(c)));
    }
    // Re-read every time: libpq opens a new socket for each address and host it tries.
    const int fd = PQsocket(c);
    const short ev = st == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    if (fd < 0) fail("cannot connect to PostgreSQL: no socket");
    if (!wait_fd(fd, ev, until)) fail("timed out connecting to PostgreSQL");
    st = PQconnectPoll(c);
  }
  if (PQsetnonblocking(c, 1) != 0) fail("cannot make the PostgreSQL socket non-blocking");
  // Server notices ("relation already exists, skipping") would go to stderr, not the log.
  PQsetNoticeProcessor(
      c, [](void*, const char*) {}, nullptr);
  std::unique_ptr<connection> out(new connection(c, o.pipeline));
  out->setup_session(o, until);
  return out;
}

void connection::setup_session(const connect_options& o, deadline until) {
  if (pipeline_ && PQenterPipelineMode(conn_) != 1) lose("cannot enter pipeline mode");
  // Bound every statement on the server as well (a lock wait included), have the backend notice
  // a vanished client during long statements, and never let a forgotten transaction hold locks.
  params p;
  p.add(std::to_string(o.statement_timeout.count()));
  exec(
      "SELECT set_config('statement_timeout', $1, false), "
      "set_config('idle_in_transaction_session_timeout', '60000', false), "
      "set_config('client_connection_check_interval', '1000', false)",
      p, until);
}

connection::~connection() {
  // libpq owns the socket: nothing else ever wraps or closes it.
  if (conn_ != nullptr) PQfinish(conn_);
}

void connection::lose(const std::string& why) {
  broken_ = true;
  pending_.clear();
  throw connection_lost(why);
}

void connection::queue_statement(std::string_view sql, const params& p, bool wanted) {
  if (broken_) throw connection_lost("the PostgreSQL connection is broken");
  const auto ptrs = p.pointers();
  if (p.size() == 0) {
    // Transaction control and parameterless queries: the unnamed statement.
    const std::string s(sql);
    if (PQsendQueryParams(conn_, s.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0) != 1) {
      lose("cannot send to PostgreSQL: " + trimmed(PQerrorMessage(conn_)));
    }
    pending_.push_back({pending::kind::statement, wanted, {}, !wanted});
    return;
  }
  auto it = prepared_.find(std::string(sql));
  if (it == prepared_.end()) {
    if (prepared_.size() >= 512) {
      // Dynamic filters can produce many statement shapes; start over rather than grow.
      if (PQsendQueryParams(conn_, "DEALLOCATE ALL", 0, nullptr, nullptr, nullptr, nullptr, 0) !=
          1) {
        lose("cannot send to PostgreSQL: " + trimmed(PQerrorMessage(conn_)));
      }
      pending_.push_back({pending::kind::statement, false, {}, true});
      prepared_.clear();
    }
    std::string name = "st" + std::to_string(++next_stmt_);
    std::string key(sql);
    if (PQsendPrepare(conn_, name.c_str(), key.c_str(), 0, nullptr) != 1) {
      lose("cannot send to PostgreSQL: " + trimmed(PQerrorMessage(conn_)));
    }
    pending_.push_back({pending::kind::prepare, false, key, !wanted});
    it = prepared_.emplace(std::move(key), std::move(name)).first;
  }
  if (PQsendQueryPrepared(conn_, it->second.c_str(), p.size(), ptrs.data(), nullptr, nullptr, 0) !=
      1) {
    lose("cannot send to PostgreSQL: " + trimmed(PQerrorMessage(conn_)));
  }
  pending_.push_back({pending::kind::statement, wanted, {}, !wanted});
}

void connection::sync() {
  if (PQpipelineSync(conn_) != 1)
    lose("cannot send to PostgreSQL: " + trimmed(PQerrorMessage(conn_)));
  pending_.push_back({pending::kind::sync, false, {}});
}

void connection::flush(deadline until) {
  for (;;) {
    const int r = PQflush(conn_);
    if (r == 0) return;
    if (r < 0) lose("cannot send to PostgreSQL: " + trimmed(PQerrorMessage(conn_)));
    if (!wait_fd(PQsocket(conn_), POLLOUT | POLLIN, until)) {
      lose("timed out sending to PostgreSQL");
    }
    // Read what the server sent meanwhile, so neither side waits on a full buffer.
    if (PQconsumeInput(conn_) != 1)
      lose("PostgreSQL connection lost: " + trimmed(PQerrorMessage(conn_)));
  }
}

PGresult* connection::next_result(deadline until) {
  while (PQisBusy(conn_) != 0) {
    if (!wait_fd(PQsocket(conn_), POLLIN, until)) lose("timed out waiting for PostgreSQL");
    if (PQconsumeInput(conn_) != 1) {
      lose("PostgreSQL connection lost: " + trimmed(PQerrorMessage(conn_)));
    }
  }
  return PQgetResult(conn_);
}

result connection::read_segment(deadline until) {
  result wanted;
  std::optional<pg_error> first_error;
  while (!pending_.empty()) {
    const pending p = std::move(pending_.front());
    pending_.pop_front();
    if (p.k == pending::kind::sync) {
      PGresult* r = next_result(until);
      const bool ok = r != nullptr && PQresultStatus(r) == PGRES_PIPELINE_SYNC;
      if (r != nullptr) PQclear(r);
      if (!ok) {
        lose(PQstatus(conn_) == CONNECTION_BAD
                 ? "PostgreSQL connection lost: " + trimmed(PQerrorMessage(conn_))
                 : std::string("unexpected PostgreSQL protocol state"));
      }
      break;
    }
    PGresult* r = next_result(until);
    if (r == nullptr) {
      lose(PQstatus(conn_) == CONNECTION_BAD
               ? "PostgreSQL connection lost: " + trimmed(PQerrorMessage(conn_))
               : std::string("PostgreSQL sent no result"));
    }
    // Each statement's results end with a null result.
    for (PGresult* extra = next_result(until); extra != nullptr; extra = next_result(until))
      PQclear(extra);
    const ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
      if (p.wanted) {
        wanted = result(r);
      } else {
        PQclear(r);
      }
      continue;
    }
    if (st == PGRES_PIPELINE_ABORTED) {  // skipped after an earlier error in this segment
      PQclear(r);
      if (p.k == pending::kind::prepare) prepared_.erase(p.sql);
      continue;
    }
    const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    std::string sqlstate = state != nullptr ? state : "";
    std::string msg = trimmed(PQresultErrorMessage(r));
    PQclear(r);
    if (p.k == pending::kind::prepare) prepared_.erase(p.sql);
    if (sqlstate.empty() || connection_fatal(sqlstate) || PQstatus(conn_) == CONNECTION_BAD) {
      lose("PostgreSQL connection lost: " + msg);
    }
    if (!first_error) {
      first_error.emplace(kind_of_sqlstate(sqlstate), sqlstate, "PostgreSQL: " + msg, p.deferred);
    }
  }
  if (first_error) throw *first_error;
  return wanted;
}

void connection::defer(std::string_view sql, const params& p) {
  queue_statement(sql, p, false);
}

result connection::exec(std::string_view sql, const params& p, deadline until) {
  if (!pipeline_) {
    if (broken_) throw connection_lost("the PostgreSQL connection is broken");
    const std::string s(sql);
    const auto ptrs = p.pointers();
    if (PQsendQueryParams(conn_, s.c_str(), p.size(), nullptr, ptrs.data(), nullptr, nullptr, 0) !=
        1) {
      lose("cannot send to PostgreSQL: " + trimmed(PQerrorMessage(conn_)));
    }
    flush(until);
    result out;
    std::optional<pg_error> err;
    for (PGresult* r = next_result(until); r != nullptr; r = next_result(until)) {
      const ExecStatusType st = PQresultStatus(r);
      if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        out = result(r);
        continue;
      }
      const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
      std::string sqlstate = state != nullptr ? state : "";
      std::string msg = trimmed(PQresultErrorMessage(r));
      PQclear(r);
      if (sqlstate.empty() || connection_fatal(sqlstate) || PQstatus(conn_) == CONNECTION_BAD) {
        lose("PostgreSQL connection lost: " + msg);
      }
      if (!err) err.emplace(kind_of_sqlstate(sqlstate), sqlstate, "PostgreSQL: " + msg);
    }
    if (err) throw *err;
    return out;
  }
  queue_statement(sql, p, true);
  sync();
  flush(until);
  // Segments sent earlier by send_queued end read transactions: read them first; their
  // outcome no longer matters to anyone.
  for (;;) {
    std::size_t syncs = 0;
    for (const auto& e : pending_)
      syncs += e.k == pending::kind::sync ? 1 : 0;
    if (syncs <= 1) return read_segment(until);
    try {
      read_segment(until);
    } catch (const pg_error&) {  // NOLINT(bugprone-empty-catch): see above
    }
  }
}

void connection::send_queued(deadline until) {
  if (broken_) throw connection_lost("the PostgreSQL connection is broken");
  sync();
  flush(until);
}

void connection::drain(deadline until) {
  while (!pending_.empty()) {
    try {
      read_segment(until);
    } catch (const pg_error&) {  // NOLINT(bugprone-empty-catch): only emptying the pipe
    }
  }
}

void connection::exec_script(std::string_view sql, deadline until) {
  if (broken_) throw connection_lost("the PostgreSQL connection is broken");
  if (pipeline_) {
    drain(until);
    if (PQexitPipelineMode(conn_) != 1) lose("cannot leave pipeline mode");
  }
  const std::string s(sql);
  if (PQsendQuery(conn_, s.c_str()) != 1) {
    lose("cannot send to PostgreSQL: " + trimmed(PQerrorMessage(conn_)));
  }
  flush(until);
  std::optional<pg_error> err;
  for (PGresult* r = next_result(until); r != nullptr; r = next_result(until)) {
    const ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY && !err) {
      const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
      std::string sqlstate = state != nullptr ? state : "";
      std::string msg = trimmed(PQresultErrorMessage(r));
      if (sqlstate.empty() || connection_fatal(sqlstate)) {
        PQclear(r);
        lose("PostgreSQL connection lost: " + msg);
      }
      err.emplace(kind_of_sqlstate(sqlstate), sqlstate, "PostgreSQL: " + msg);
    }
    PQclear(r);
  }
  if (pipeline_ && PQenterPipelineMode(conn_) != 1) lose("cannot enter pipeline mode");
  if (err) throw *err;
}

bool connection::in_failed_transaction() const {
  return PQtransactionStatus(conn_) == PQTRANS_INERROR;
}

bool connection::in_transaction() const {
  const auto st = PQtransactionStatus(conn_);
  return st == PQTRANS_INTRANS || st == PQTRANS_INERROR;
}

int connection::backend_pid() const {
  return PQbackendPID(conn_);
}

int connection::socket() const {
  return PQsocket(conn_);
}

bool connection::consume_input() {
  if (PQconsumeInput(conn_) != 1)
    lose("PostgreSQL connection lost: " + trimmed(PQerrorMessage(conn_)));
  return true;
}

void connection::wait_readable(deadline until, int wake_fd) {
  wait_fd(PQsocket(conn_), POLLIN, until, wake_fd);
}

}  // namespace statetrack::storage::postgres
