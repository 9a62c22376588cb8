// The SQLite schema as ordered migrations. Never edit a released migration; append one.
#pragma once

#include <vector>

#include "storage/migrations.hpp"

namespace statetrack::storage::sqlite {

const std::vector<migration>& migrations();

}  // namespace statetrack::storage::sqlite
