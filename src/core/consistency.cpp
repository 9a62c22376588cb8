// One transaction per check; each repair appends the event a user would have caused.
#include "core/consistency.hpp"

#include <algorithm>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/events.hpp"
#include "storage/store.hpp"

namespace statetrack::core {

namespace {

bool ended(const std::optional<session>& s) {
  return !s || s->status == session_status::completed || s->status == session_status::failed ||
         s->status == session_status::archived;
}

}  // namespace

boost::asio::awaitable<consistency_report> run_consistency_check(storage::store& store,
                                                                 const clock& clk) {
  const timestamp now = clk.now();
  auto fn = [&](storage::write_txn& tx) -> result<consistency_report> {
    consistency_report out;
    storage::task_filter tf;
    tf.status = task_status::in_progress;
    for (auto& t : tx.list_tasks(tf)) {
      auto parent = tx.get_session(t.session_id);
      if (!ended(parent)) continue;
      t.status = task_status::failed;
      t.completed_at = now;
      t.error_message =
          parent ? "Session " + t.session_id + " ended (" + std::string(to_string(parent->status)) +
                       ") while this task was in progress; closed by the "
                       "consistency check"
                 : "Session " + t.session_id + " no longer exists; closed by the consistency check";
      t.updated_at = now;
      tx.update_task(t);
      tx.append_event(task_event("task.failed", t, now));
      ++out.tasks_closed;
    }
    for (auto& m : tx.list_machines(storage::machine_filter{})) {
      std::vector<std::string> released;
      std::erase_if(m.active_sessions, [&](const std::string& id) {
        if (!ended(tx.get_session(id))) return false;
        released.push_back(id);
        return true;
      });
      if (released.empty()) continue;
      m.updated_at = now;
      tx.update_machine(m);
      for (const auto& id : released) {
        event e = machine_event("machine.session_released", m, now);
        e.session_id = id;
        tx.append_event(e);
        ++out.slots_released;
      }
    }
    return out;
  };
  auto r = co_await storage::write(store, std::move(fn));
  co_return r.value();
}

}  // namespace statetrack::core
