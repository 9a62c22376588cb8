// The PostgreSQL schema as ordered migrations, and applying them. Never edit a released
// migration; append one.
#pragma once

#include <cstdint>
#include <vector>

#include "storage/migrations.hpp"
#include "storage/postgres/connection.hpp"

namespace statetrack::storage::postgres {

const std::vector<migration>& migrations();

// Applies pending migrations under a session advisory lock, so that several instances
// starting together migrate once; returns the versions this call applied. Throws
// storage_error (kind other) when the database is newer than this binary.
std::vector<int> apply_migrations(connection& c, deadline until);

// Advisory lock keys (one namespace for the whole service; the two-key form is used for meta).
inline constexpr std::int64_t migrate_lock_key = 0x5374617465'01;  // "State" + 1
inline constexpr std::int64_t sweep_lock_key = 0x5374617465'02;
inline constexpr std::int64_t machine_sweep_lock_key = 0x5374617465'03;
inline constexpr int meta_lock_class = 0x5354;  // "ST"

}  // namespace statetrack::storage::postgres
