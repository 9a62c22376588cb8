// PLACEHOLDER: being implemented (machine rules of contract §4.8).
#include "core/machine_service.hpp"

namespace statetrack::core {

error machine_not_found(std::string_view id) {
  return make_error(errc::not_found, "Machine with ID " + std::string(id) + " not found");
}

boost::asio::awaitable<std::vector<machine>> machine_service::sweep_offline(timestamp, std::int64_t) {
  co_return std::vector<machine>{};
}

}  // namespace statetrack::core
