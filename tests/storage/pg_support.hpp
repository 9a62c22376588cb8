// Test helpers for the PostgreSQL backend: the base connection string from ST_PG_CONNINFO
// (unset: PostgreSQL cases are skipped), blocking admin statements, and a database per test
// that is dropped at scope exit.
#pragma once

#include <cstdlib>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <libpq-fe.h>

#include "storage/postgres/conninfo.hpp"

namespace statetrack::testing {

inline std::optional<std::string> pg_base_conninfo() {
  const char* v = std::getenv("ST_PG_CONNINFO");
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

// Runs `sql` on a fresh blocking connection and returns the rows as text (NULL -> "").
inline std::vector<std::vector<std::string>> pg_query(const std::string& conninfo,
                                                      const std::string& sql) {
  PGconn* c = PQconnectdb(conninfo.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(c);
    PQfinish(c);
    throw std::runtime_error("pg_query connect: " + msg);
  }
  PGresult* r = PQexec(c, sql.c_str());
  const auto st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    std::string msg = PQresultErrorMessage(r);
    PQclear(r);
    PQfinish(c);
    throw std::runtime_error("pg_query " + sql + ": " + msg);
  }
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; i < PQntuples(r); ++i) {
    std::vector<std::string> row;
    for (int j = 0; j < PQnfields(r); ++j)
      row.emplace_back(PQgetvalue(r, i, j));
    rows.push_back(std::move(row));
  }
  PQclear(r);
  PQfinish(c);
  return rows;
}

inline std::int64_t pg_scalar(const std::string& conninfo, const std::string& sql) {
  auto rows = pg_query(conninfo, sql);
  if (rows.empty() || rows[0].empty()) throw std::runtime_error("pg_scalar: no value: " + sql);
  return std::stoll(rows[0][0]);
}

// Rewrites one keyword of a connection string (keyword form out).
inline std::string pg_with(const std::string& conninfo, const std::string& key,
                           const std::string& value) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (opts == nullptr) {
    if (err != nullptr) PQfreemem(err);
    throw std::runtime_error("bad connection string");
  }
  std::string out;
  bool seen = false;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    std::string k = o->keyword;
    std::string v = o->val != nullptr ? o->val : "";
    if (k == key) {
      v = value;
      seen = true;
    } else if (o->val == nullptr) {
      continue;
    }
    out += k + "='" + v + "' ";
  }
  PQconninfoFree(opts);
  if (!seen) out += key + "='" + value + "'";
  return out;
}

inline std::string pg_param(const std::string& conninfo, const std::string& key) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (opts == nullptr) {
    if (err != nullptr) PQfreemem(err);
    return {};
  }
  std::string out;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (key == o->keyword && o->val != nullptr) out = o->val;
  }
  PQconninfoFree(opts);
  return out;
}

// CREATE DATABASE on construction, DROP DATABASE ... WITH (FORCE) at scope exit.
class temp_database {
 public:
  explicit temp_database(std::string base) : base_(std::move(base)) {
    std::random_device rd;
    name_ = "st_test_" + std::to_string(rd()) + std::to_string(rd() % 10000);
    pg_query(base_, "CREATE DATABASE " + name_);
    conninfo_ = storage::postgres::with_dbname(base_, name_);
  }
  ~temp_database() {
    try {
      pg_query(base_, "DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
    } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): best effort
    }
  }
  temp_database(const temp_database&) = delete;
  temp_database& operator=(const temp_database&) = delete;

  const std::string& conninfo() const { return conninfo_; }
  const std::string& name() const { return name_; }

 private:
  std::string base_;
  std::string name_;
  std::string conninfo_;
};

}  // namespace statetrack::testing
