// Event payloads reuse the documents the API renders.
#include "core/events.hpp"

#include "core/documents.hpp"

namespace statetrack::core {

event session_event(std::string_view type, const session& s, timestamp now) {
  event e;
  e.type = type;
  e.occurred_at = now;
  e.project_id = s.project_id;
  e.session_id = s.session_id;
  e.machine_id = s.machine_id;
  e.data = session_json(s);
  return e;
}

event task_event(std::string_view type, const task& t, timestamp now) {
  event e;
  e.type = type;
  e.occurred_at = now;
  e.project_id = t.project_id;
  e.session_id = t.session_id;
  e.task_id = t.task_id;
  e.data = task_json(t);
  return e;
}

event machine_event(std::string_view type, const machine& m, timestamp now) {
  event e;
  e.type = type;
  e.occurred_at = now;
  e.machine_id = m.machine_id;
  e.data = machine_json(m);
  return e;
}

}  // namespace statetrack::core
