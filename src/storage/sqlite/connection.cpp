// sqlite3 handle management and error mapping.
#include "storage/sqlite/connection.hpp"

#include <sqlite3.h>

#include "core/error.hpp"

namespace statetrack::storage::sqlite {

using core::storage_error;

void throw_sqlite(int rc, std::string_view context, sqlite3* db) {
  std::string msg(context);
  msg += ": ";
  msg += db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  switch (rc & 0xFF) {
    case SQLITE_FULL:
      throw storage_error(storage_error::kind::full, msg);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      throw storage_error(storage_error::kind::busy, msg);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      throw storage_error(storage_error::kind::corrupt, msg);
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PERM:
      throw storage_error(storage_error::kind::unavailable, msg);
    default:
      throw storage_error(storage_error::kind::other, msg);
  }
}

statement::~statement() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

statement& statement::bind(int i, std::string_view v) {
  int rc = sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  if (rc != SQLITE_OK) throw_sqlite(rc, "bind", db_);
  return *this;
}
statement& statement::bind(int i, std::int64_t v) {
  int rc = sqlite3_bind_int64(stmt_, i, v);
  if (rc != SQLITE_OK) throw_sqlite(rc, "bind", db_);
  return *this;
}
statement& statement::bind(int i, double v) {
  int rc = sqlite3_bind_double(stmt_, i, v);
  if (rc != SQLITE_OK) throw_sqlite(rc, "bind", db_);
  return *this;
}
statement& statement::bind_null(int i) {
  int rc = sqlite3_bind_null(stmt_, i);
  if (rc != SQLITE_OK) throw_sqlite(rc, "bind", db_);
  return *this;
}
statement& statement::bind(int i, const std::optional<std::string>& v) {
  return v ? bind(i, std::string_view(*v)) : bind_null(i);
}
statement& statement::bind(int i, const std::optional<double>& v) {
  return v ? bind(i, *v) : bind_null(i);
}
statement& statement::bind(int i, const std::optional<std::int64_t>& v) {
  return v ? bind(i, *v) : bind_null(i);
}

bool statement::step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  throw_sqlite(rc, "step", db_);
}

std::int64_t statement::exec() {
  int rc;
  while ((rc = sqlite3_step(stmt_)) == SQLITE_ROW) {
  }
  if (rc != SQLITE_DONE) throw_sqlite(rc, "exec", db_);
  return sqlite3_changes64(db_);
}

std::int64_t statement::col_int(int i) const {
  return sqlite3_column_int64(stmt_, i);
}
double statement::col_double(int i) const {
  return sqlite3_column_double(stmt_, i);
}
std::string statement::col_text(int i) const {
  return std::string(col_view(i));
}
std::string_view statement::col_view(int i) const {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, i));
  if (p == nullptr) return {};
  return {p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, i))};
}
bool statement::col_null(int i) const {
  return sqlite3_column_type(stmt_, i) == SQLITE_NULL;
}
std::optional<std::string> statement::col_opt_text(int i) const {
  if (col_null(i)) return std::nullopt;
  return col_text(i);
}
std::optional<double> statement::col_opt_double(int i) const {
  if (col_null(i)) return std::nullopt;
  return col_double(i);
}
std::optional<std::int64_t> statement::col_opt_int(int i) const {
  if (col_null(i)) return std::nullopt;
  return col_int(i);
}

connection::connection(const std::string& path, const open_options& opts) {
  // SQLite's allocation statistics (on by default) take a global mutex on every allocation,
  // which all connections share; nothing here reads them. Only effective before SQLite's first
  // use, hence the first connection (later calls return SQLITE_MISUSE and change nothing).
  static const int memstatus_off = sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  (void)memstatus_off;
  int flags = SQLITE_OPEN_NOMUTEX;
  flags |= opts.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
  if (!opts.read_only && opts.create) flags |= SQLITE_OPEN_CREATE;
  int rc = sqlite3_open_v2(path.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string ctx = "cannot open database " + path;
    sqlite3* db = db_;
    db_ = nullptr;
    try {
      throw_sqlite(rc, ctx, db);
    } catch (...) {
      sqlite3_close(db);
      throw;
    }
  }
  sqlite3_extended_result_codes(db_, 1);
  sqlite3_busy_timeout(db_, opts.busy_timeout_ms);
}

connection::~connection() {
  for (auto& [sql, stmt] : cache_)
    sqlite3_finalize(stmt);
  sqlite3_close_v2(db_);
}

void connection::exec(std::string_view sql) {
  std::string s(sql);
  char* err = nullptr;
  int rc = sqlite3_exec(db_, s.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "";
    sqlite3_free(err);
    throw_sqlite(rc, "exec " + s.substr(0, 40) + " (" + msg + ")", db_);
  }
}

statement connection::prepare(const std::string& sql) {
  auto it = cache_.find(sql);
  if (it == cache_.end()) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    if (rc != SQLITE_OK) throw_sqlite(rc, "prepare", db_);
    it = cache_.emplace(sql, stmt).first;
  }
  return statement(it->second, db_);
}

std::int64_t connection::last_insert_rowid() const {
  return sqlite3_last_insert_rowid(db_);
}

bool connection::in_transaction() const {
  return sqlite3_get_autocommit(db_) == 0;
}

}  // namespace statetrack::storage::sqlite
