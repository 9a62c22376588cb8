// Wall-clock time source.
#include "core/clock.hpp"

#include <chrono>

namespace statetrack::core {

timestamp system_clock::now() const {
  auto d = std::chrono::system_clock::now().time_since_epoch();
  return {std::chrono::duration_cast<std::chrono::milliseconds>(d).count()};
}

}  // namespace statetrack::core
