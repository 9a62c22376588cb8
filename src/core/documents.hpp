// The JSON documents of stored records exactly as the contract renders them (`_id`, `__v`,
// optional fields absent when unset, metadata always an object). Used by responses and by
// event payloads, so both always agree.
#pragma once

#include <string>

#include "core/model.hpp"
#include "util/json_writer.hpp"

namespace statetrack::core {

void write_session(util::json_writer& w, const session& s);
void write_task(util::json_writer& w, const task& t);
void write_machine(util::json_writer& w, const machine& m);

std::string session_json(const session& s);
std::string task_json(const task& t);
std::string machine_json(const machine& m);

}  // namespace statetrack::core
