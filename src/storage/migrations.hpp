// Versioned schema migrations, shared by `statetrack migrate` and start-up.
#pragma once

#include <string_view>
#include <vector>

namespace statetrack::storage {

struct migration {
  int version;
  std::string_view description;
  std::string_view sql;
};

}  // namespace statetrack::storage
