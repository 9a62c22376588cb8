// Connection-string classification and rewriting through libpq's own parser.
#include "storage/postgres/conninfo.hpp"

#include <cctype>
#include <stdexcept>

#include <libpq-fe.h>

namespace statetrack::storage::postgres {

namespace {

std::string quote(std::string_view v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  out += '\'';
  return out;
}

// Re-renders parsed options as a keyword string; `skip` is left out, `dbname` replaced when set.
std::string rebuild(std::string_view conninfo, std::string_view skip, const std::string* dbname,
                    bool* ok) {
  char* err = nullptr;
  const std::string s(conninfo);
  PQconninfoOption* opts = PQconninfoParse(s.c_str(), &err);
  if (opts == nullptr) {
    if (err != nullptr) PQfreemem(err);
    *ok = false;
    return {};
  }
  std::string out;
  bool have_db = false;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    std::string_view key = o->keyword;
    if (key == skip) continue;
    const char* val = o->val;
    if (key == "dbname" && dbname != nullptr) {
      have_db = true;
      val = dbname->c_str();
    }
    if (val == nullptr) continue;
    if (!out.empty()) out += ' ';
    out += key;
    out += '=';
    out += quote(val);
  }
  PQconninfoFree(opts);
  if (dbname != nullptr && !have_db) {
    if (!out.empty()) out += ' ';
    out += "dbname=" + quote(*dbname);
  }
  *ok = true;
  return out;
}

}  // namespace

bool is_conninfo(std::string_view db) {
  if (db.starts_with("postgres://") || db.starts_with("postgresql://")) return true;
  // A keyword string starts with `keyword =`; a file name practically never does.
  std::size_t i = 0;
  while (i < db.size() && std::isspace(static_cast<unsigned char>(db[i])) != 0)
    ++i;
  const std::size_t start = i;
  while (i < db.size() && (std::islower(static_cast<unsigned char>(db[i])) != 0 || db[i] == '_'))
    ++i;
  if (i == start) return false;
  while (i < db.size() && std::isspace(static_cast<unsigned char>(db[i])) != 0)
    ++i;
  return i < db.size() && db[i] == '=';
}

std::string redact(std::string_view conninfo) {
  bool ok = false;
  auto out = rebuild(conninfo, "password", nullptr, &ok);
  return ok ? out : std::string("<invalid connection string>");
}

std::string with_dbname(std::string_view conninfo, std::string_view dbname) {
  bool ok = false;
  const std::string db(dbname);
  auto out = rebuild(conninfo, "", &db, &ok);
  if (!ok) throw std::invalid_argument("invalid PostgreSQL connection string");
  return out;
}

}  // namespace statetrack::storage::postgres
