// Builders for outbox events: one per state change, with the ids it concerns and the new
// state of the record as its payload.
#pragma once

#include <string_view>

#include "core/model.hpp"

namespace statetrack::core {

event session_event(std::string_view type, const session& s, timestamp now);
event task_event(std::string_view type, const task& t, timestamp now);
event machine_event(std::string_view type, const machine& m, timestamp now);

}  // namespace statetrack::core
