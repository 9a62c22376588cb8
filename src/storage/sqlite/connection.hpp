// RAII over one sqlite3 handle: open with the project's pragmas, cached prepared statements,
// and typed bind/column helpers. Errors become core::storage_error. A connection is used by
// one thread at a time (the writer, or whichever thread holds it from the read pool).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

struct sqlite3;
struct sqlite3_stmt;

namespace statetrack::storage::sqlite {

[[noreturn]] void throw_sqlite(int rc, std::string_view context, sqlite3* db);

// A prepared statement borrowed from a connection's cache; reset and cleared on destruction.
class statement {
 public:
  explicit statement(sqlite3_stmt* s, sqlite3* db) : stmt_(s), db_(db) {}
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;
  ~statement();

  statement& bind(int i, std::string_view v);
  statement& bind(int i, const std::string& v) { return bind(i, std::string_view(v)); }
  statement& bind(int i, const char* v) { return bind(i, std::string_view(v)); }
  statement& bind(int i, std::int64_t v);
  statement& bind(int i, int v) { return bind(i, static_cast<std::int64_t>(v)); }
  statement& bind(int i, double v);
  statement& bind_null(int i);
  statement& bind(int i, const std::optional<std::string>& v);
  statement& bind(int i, const std::optional<double>& v);
  statement& bind(int i, const std::optional<std::int64_t>& v);

  // Steps once: true if a row is available.
  bool step();
  // Steps to completion (for writes); returns sqlite3_changes.
  std::int64_t exec();

  std::int64_t col_int(int i) const;
  double col_double(int i) const;
  std::string col_text(int i) const;
  std::string_view col_view(int i) const;
  bool col_null(int i) const;
  std::optional<std::string> col_opt_text(int i) const;
  std::optional<double> col_opt_double(int i) const;
  std::optional<std::int64_t> col_opt_int(int i) const;

 private:
  sqlite3_stmt* stmt_;
  sqlite3* db_;
};

struct open_options {
  bool read_only = false;
  bool create = true;
  int busy_timeout_ms = 5000;
};

class connection {
 public:
  connection(const std::string& path, const open_options& opts);
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  ~connection();

  // Executes one or more statements without results.
  void exec(std::string_view sql);
  // A cached prepared statement for this SQL text.
  statement prepare(const std::string& sql);
  // Runs one cached statement without results (BEGIN, COMMIT, SAVEPOINT...).
  void run(const std::string& sql) { prepare(sql).exec(); }
  sqlite3* handle() const { return db_; }
  std::int64_t last_insert_rowid() const;
  bool in_transaction() const;

 private:
  sqlite3* db_ = nullptr;
  std::unordered_map<std::string, sqlite3_stmt*> cache_;
};

}  // namespace statetrack::storage::sqlite
