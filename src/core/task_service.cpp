// PLACEHOLDER: being implemented (task rules of contract §4.7).
#include "core/task_service.hpp"

namespace statetrack::core {

error task_not_found(std::string_view id) {
  return make_error(errc::not_found, "Task with ID " + std::string(id) + " not found");
}

bool task_transition_allowed(task_status, task_status) { return false; }

}  // namespace statetrack::core
