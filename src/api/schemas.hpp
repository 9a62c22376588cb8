// Every request body and query schema of the API, by name. Handlers validate with them and
// the OpenAPI document is generated from them.
#pragma once

#include <string_view>
#include <vector>

#include "api/validation.hpp"

namespace statetrack::api::schemas {

extern const schema create_session;
extern const schema update_session;
extern const schema list_sessions;
extern const schema failed_sessions;
extern const schema recoverable_sessions;
extern const schema mark_failed;
extern const schema mark_stalled;
extern const schema purge_session;
extern const schema cleanup_sessions;
extern const schema recover_session;
extern const schema create_task;
extern const schema update_task;
extern const schema fail_task;
extern const schema list_tasks;
extern const schema register_machine;
extern const schema update_machine;
extern const schema list_machines;
extern const schema assign_session;
extern const schema release_session;
extern const schema set_directive;
extern const schema create_api_key;
extern const schema rotate_api_key;

// All of the above, for the OpenAPI components.
const std::vector<const schema*>& all();
const schema* find(std::string_view name);

}  // namespace statetrack::api::schemas
