// Task use cases (contract §4.7): create under an existing session, update with the
// transition table, start/complete/fail actions that also maintain the parent session's
// current_task_id atomically, soft delete, listings and per-session progress. Created once by
// the app; safe to call from any thread (every write is one store transaction).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/model.hpp"
#include "storage/store.hpp"

namespace statetrack::core {

struct create_task_input {
  std::string session_id;
  std::string project_id;
  std::string task_name;
  std::optional<std::string> github_issue_id;
  std::string metadata = "{}";
  std::optional<std::int64_t> epoch;  // the session's epoch, if the caller knows it (fencing)
};

struct update_task_input {
  std::optional<task_status> status;
  std::optional<std::string> github_issue_id;
  bool clear_github_issue_id = false;
  std::optional<std::string> error_message;
  bool clear_error_message = false;
  std::optional<boost::json::object> metadata;  // shallow-merged
  std::optional<std::int64_t> epoch;            // the parent session's epoch (fencing)
};

struct task_list_query {
  std::optional<std::string> session_id;
  std::optional<task_status> status;
  std::optional<std::string> project_id;
  std::vector<std::string> projects_in;  // the caller's project scope; empty: every project
  std::int64_t limit = 20;
  std::int64_t offset = 0;
};

// PUT /tasks/:id transition table (contract §4.7); same status is not a transition.
bool task_transition_allowed(task_status from, task_status to);

// The action endpoints' own rules (contract §4.7.6–§4.7.8, §6.2): nullopt when the action is
// allowed from `from`, else the contract's 400 message.
std::optional<std::string> start_refusal(task_status from);
std::optional<std::string> complete_refusal(task_status from);
std::optional<std::string> fail_refusal(task_status from);

// round(100 * completed / total) with halves rounded up, computed exactly; 0 when total is 0.
std::int64_t completion_percentage(std::int64_t completed, std::int64_t total);

error task_not_found(std::string_view id);

class task_service {
 public:
  task_service(storage::store& store, const clock& clk) : store_(store), clock_(clk) {}

  boost::asio::awaitable<result<task>> create(create_task_input in);
  boost::asio::awaitable<result<task>> get(std::string id);
  boost::asio::awaitable<std::vector<task>> list(task_list_query q);
  boost::asio::awaitable<result<task>> update(std::string id, update_task_input in);
  boost::asio::awaitable<result<task>> soft_delete(std::string id);
  // `epoch`, when given, must be the parent session's (fencing: 409 stale_epoch otherwise).
  boost::asio::awaitable<result<task>> start(std::string id,
                                             std::optional<std::int64_t> epoch = std::nullopt);
  boost::asio::awaitable<result<task>> complete(std::string id,
                                                std::optional<std::int64_t> epoch = std::nullopt);
  boost::asio::awaitable<result<task>> fail(std::string id, std::string error_message,
                                            std::optional<std::int64_t> epoch = std::nullopt);
  // All tasks of an existing session, newest first (404 if the session does not exist).
  boost::asio::awaitable<result<std::vector<task>>> of_session(std::string session_id);

 private:
  storage::store& store_;
  const clock& clock_;
};

}  // namespace statetrack::core
