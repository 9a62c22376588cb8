// Connection strings: which `--db` values mean PostgreSQL, and rewriting them (without the
// password for logs; pointing at another database for tests and tools). No libpq types here,
// so the composition root can decide the backend cheaply.
#pragma once

#include <string>
#include <string_view>

namespace statetrack::storage::postgres {

// True for `postgres://` / `postgresql://` URIs and libpq keyword strings (`host=... dbname=...`);
// anything else is a SQLite file name.
bool is_conninfo(std::string_view db);

// The connection string as keywords, without its password (for logs and error messages).
// Returns "<invalid connection string>" when libpq cannot parse it.
std::string redact(std::string_view conninfo);

// The same connection string with `dbname` replaced (keyword form). Throws
// std::invalid_argument when libpq cannot parse it.
std::string with_dbname(std::string_view conninfo, std::string_view dbname);

}  // namespace statetrack::storage::postgres
