// Task rules as exhaustive tables: every cell of the PUT transition table (pure and through
// the service on a real SQLite store), the action endpoints' rules for every status, the
// parent session's current_task_id kept in the same transaction, and progress rounding.
#include <array>
#include <map>

#include <gtest/gtest.h>

#include "core/session_service.hpp"
#include "core/task_service.hpp"
#include "storage/sqlite/sqlite_store.hpp"
#include "support/run_sync.hpp"
#include "support/temp_dir.hpp"

namespace statetrack::core {
namespace {

using testing::run_sync;
using ts = task_status;
constexpr timestamp t0{1'768'910'400'000};

constexpr std::array<ts, 5> all_statuses = {ts::pending, ts::in_progress, ts::completed, ts::failed,
                                            ts::blocked};

// The contract's table (§4.7), written out cell by cell: rows = from, columns = to.
const std::map<std::pair<ts, ts>, bool>& expected_table() {
  static const std::map<std::pair<ts, ts>, bool> table = {
      {{ts::pending, ts::pending}, false},         {{ts::pending, ts::in_progress}, true},
      {{ts::pending, ts::blocked}, true},          {{ts::pending, ts::completed}, true},
      {{ts::pending, ts::failed}, false},          {{ts::in_progress, ts::pending}, true},
      {{ts::in_progress, ts::in_progress}, false}, {{ts::in_progress, ts::blocked}, true},
      {{ts::in_progress, ts::completed}, true},    {{ts::in_progress, ts::failed}, true},
      {{ts::blocked, ts::pending}, true},          {{ts::blocked, ts::in_progress}, true},
      {{ts::blocked, ts::blocked}, false},         {{ts::blocked, ts::completed}, false},
      {{ts::blocked, ts::failed}, false},          {{ts::completed, ts::pending}, false},
      {{ts::completed, ts::in_progress}, false},   {{ts::completed, ts::blocked}, false},
      {{ts::completed, ts::completed}, false},     {{ts::completed, ts::failed}, false},
      {{ts::failed, ts::pending}, true},           {{ts::failed, ts::in_progress}, false},
      {{ts::failed, ts::blocked}, false},          {{ts::failed, ts::completed}, false},
      {{ts::failed, ts::failed}, false},
  };
  return table;
}

std::string cell(ts from, ts to) {
  return std::string(to_string(from)) + " -> " + std::string(to_string(to));
}

TEST(TaskTransitionTable, EveryCellMatchesTheContract) {
  ASSERT_EQ(expected_table().size(), 25U);
  for (auto from : all_statuses) {
    for (auto to : all_statuses) {
      EXPECT_EQ(task_transition_allowed(from, to), expected_table().at({from, to}))
          << cell(from, to);
    }
  }
}

TEST(TaskTransitionTable, SameStatusIsNeverATransition) {
  for (auto s : all_statuses)
    EXPECT_FALSE(task_transition_allowed(s, s)) << to_string(s);
}

TEST(TaskActionRules, StartNeedsPending) {
  for (auto s : all_statuses) {
    auto why = start_refusal(s);
    if (s == ts::pending) {
      EXPECT_FALSE(why);
    } else {
      ASSERT_TRUE(why) << to_string(s);
      EXPECT_EQ(*why, "Cannot start task in " + std::string(to_string(s)) +
                          " state. Task must be pending.");
    }
  }
}

TEST(TaskActionRules, CompleteAndFailRefuseOnlyTerminalTasks) {
  const std::map<ts, std::string> complete_msgs = {{ts::completed, "Task is already completed"},
                                                   {ts::failed, "Cannot complete a failed task"}};
  const std::map<ts, std::string> fail_msgs = {{ts::completed, "Cannot fail a completed task"},
                                               {ts::failed, "Task is already failed"}};
  for (auto s : all_statuses) {
    auto c = complete_refusal(s);
    auto f = fail_refusal(s);
    if (complete_msgs.count(s) != 0) {
      ASSERT_TRUE(c) << to_string(s);
      EXPECT_EQ(*c, complete_msgs.at(s));
      ASSERT_TRUE(f) << to_string(s);
      EXPECT_EQ(*f, fail_msgs.at(s));
    } else {
      // pending, in_progress, blocked: the actions allow what PUT forbids (pending -> failed,
      // blocked -> completed), contract §6.2.
      EXPECT_FALSE(c) << to_string(s);
      EXPECT_FALSE(f) << to_string(s);
    }
  }
}

TEST(TaskProgress, CompletionPercentageRoundsHalvesUpExactly) {
  EXPECT_EQ(completion_percentage(0, 0), 0);
  EXPECT_EQ(completion_percentage(0, 5), 0);
  EXPECT_EQ(completion_percentage(3, 8), 38);  // 37.5
  EXPECT_EQ(completion_percentage(1, 8), 13);  // 12.5
  EXPECT_EQ(completion_percentage(2, 3), 67);  // 66.67
  EXPECT_EQ(completion_percentage(1, 3), 33);  // 33.33
  EXPECT_EQ(completion_percentage(1, 6), 17);  // 16.67
  EXPECT_EQ(completion_percentage(2, 5), 40);
  EXPECT_EQ(completion_percentage(1, 2), 50);
  EXPECT_EQ(completion_percentage(29, 200), 15);  // 14.5 exactly (floating point says 14.4999…)
  EXPECT_EQ(completion_percentage(1, 200), 1);    // 0.5
  EXPECT_EQ(completion_percentage(7, 7), 100);
}

class TaskServiceTest : public ::testing::Test {
 protected:
  TaskServiceTest()
      : store_({dir_.file("st.db")}),
        clock_(t0),
        sessions_(store_, clock_),
        tasks_(store_, clock_) {}

  session new_session() {
    create_session_input in;
    in.project_id = "p";
    in.machine_id = "m";
    return run_sync(sessions_.create(std::move(in))).value();
  }

  task new_task(const std::string& sid) {
    create_task_input in;
    in.session_id = sid;
    in.project_id = "p";
    in.task_name = "t";
    return run_sync(tasks_.create(std::move(in))).value();
  }

  task put_status(const std::string& id, ts to) {
    update_task_input u;
    u.status = to;
    return run_sync(tasks_.update(id, std::move(u))).value();
  }

  // A task in the given status, reached through PUT only (so the session is untouched).
  task in_status(const std::string& sid, ts st) {
    auto t = new_task(sid);
    switch (st) {
      case ts::pending:
        return t;
      case ts::in_progress:
        return put_status(t.task_id, ts::in_progress);
      case ts::blocked:
        return put_status(t.task_id, ts::blocked);
      case ts::completed:
        return put_status(t.task_id, ts::completed);
      case ts::failed:
        put_status(t.task_id, ts::in_progress);
        return put_status(t.task_id, ts::failed);
    }
    return t;
  }

  session get_session(const std::string& sid) { return run_sync(sessions_.get(sid)).value(); }
  task get_task(const std::string& id) { return run_sync(tasks_.get(id)).value(); }

  std::vector<event> events() {
    std::vector<event> out;
    store_.read_now([&](storage::read_view& v) { out = v.events_after(0, 10000); });
    return out;
  }

  void delete_session_row(const std::string& sid) {
    store_.write_now([&](storage::write_txn& tx) { return tx.delete_session(sid); });
  }

  testing::temp_dir dir_;
  storage::sqlite::sqlite_store store_;
  manual_clock clock_;
  session_service sessions_;
  task_service tasks_;
};

TEST_F(TaskServiceTest, PutTransitionTableEveryCell) {
  const auto s = new_session();
  for (auto from : all_statuses) {
    for (auto to : all_statuses) {
      const auto before = in_status(s.session_id, from);
      ASSERT_EQ(before.status, from);
      clock_.advance_ms(1000);
      update_task_input u;
      u.status = to;
      auto r = run_sync(tasks_.update(before.task_id, std::move(u)));
      if (!expected_table().at({from, to})) {
        ASSERT_FALSE(r) << cell(from, to);
        EXPECT_EQ(r.error().code, errc::bad_request);
        EXPECT_EQ(r.error().message, "Invalid status transition from " +
                                         std::string(to_string(from)) + " to " +
                                         std::string(to_string(to)));
        auto after = get_task(before.task_id);
        EXPECT_EQ(after.status, from) << cell(from, to);
        EXPECT_EQ(after.updated_at, before.updated_at) << cell(from, to);
        continue;
      }
      ASSERT_TRUE(r) << cell(from, to);
      EXPECT_EQ(r->status, to);
      EXPECT_EQ(r->updated_at, clock_.now());
      // started_at only on pending -> in_progress; completed_at on entering completed/failed.
      if (from == ts::pending && to == ts::in_progress) {
        EXPECT_EQ(r->started_at, clock_.now()) << cell(from, to);
      } else {
        EXPECT_EQ(r->started_at, before.started_at) << cell(from, to);
      }
      if (to == ts::completed || to == ts::failed) {
        EXPECT_EQ(r->completed_at, clock_.now()) << cell(from, to);
      } else {
        EXPECT_EQ(r->completed_at, before.completed_at) << cell(from, to);  // never cleared
      }
      EXPECT_EQ(get_task(before.task_id).status, to);
    }
  }
  // PUT never touches the session's current task.
  EXPECT_FALSE(get_session(s.session_id).current_task_id);
}

TEST_F(TaskServiceTest, PutMergesMetadataAndClearsOptionalFields) {
  const auto s = new_session();
  create_task_input in;
  in.session_id = s.session_id;
  in.project_id = "p";
  in.task_name = "t";
  in.github_issue_id = "gh-1";
  in.metadata = R"({"a":1,"b":{"x":1}})";
  auto t = run_sync(tasks_.create(std::move(in))).value();
  update_task_input u;
  u.metadata = boost::json::object{{"b", boost::json::object{{"y", 2}}}, {"c", 3}};
  u.clear_github_issue_id = true;
  u.error_message = "oops";
  auto r = run_sync(tasks_.update(t.task_id, std::move(u))).value();
  EXPECT_EQ(r.metadata, R"({"a":1,"b":{"y":2},"c":3})");
  EXPECT_FALSE(r.github_issue_id);
  EXPECT_EQ(r.error_message, "oops");
  EXPECT_EQ(events().back().type, "task.updated");
}

TEST_F(TaskServiceTest, CreateChecksTheSessionBeforeEmptyStrings) {
  create_task_input in;
  in.session_id = "";
  auto r = run_sync(tasks_.create(in));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::not_found);
  EXPECT_EQ(r.error().message, "Session with ID  not found");
  in.session_id = new_session().session_id;
  in.task_name = "n";
  r = run_sync(tasks_.create(in));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::validation_failed);
  EXPECT_EQ(r.error().field_messages, std::vector<std::string>{"project_id should not be empty"});
}

TEST_F(TaskServiceTest, ActionsFollowTheirOwnRulesForEveryStatus) {
  const auto s = new_session();
  for (auto from : all_statuses) {
    auto t = in_status(s.session_id, from);
    auto start = run_sync(tasks_.start(t.task_id));
    EXPECT_EQ(start.has_value(), from == ts::pending) << to_string(from);
    auto t2 = in_status(s.session_id, from);
    auto done = run_sync(tasks_.complete(t2.task_id));
    EXPECT_EQ(done.has_value(), from != ts::completed && from != ts::failed) << to_string(from);
    auto t3 = in_status(s.session_id, from);
    auto failed = run_sync(tasks_.fail(t3.task_id, "boom"));
    EXPECT_EQ(failed.has_value(), from != ts::completed && from != ts::failed) << to_string(from);
    if (failed) {
      EXPECT_EQ(failed->status, ts::failed);
      EXPECT_EQ(failed->error_message, "boom");
      EXPECT_EQ(failed->completed_at, clock_.now());
    } else {
      EXPECT_EQ(get_task(t3.task_id).status, from);
    }
  }
}

TEST_F(TaskServiceTest, StartSetsAndCompleteOrFailClearTheSessionsCurrentTask) {
  const auto s = new_session();
  auto a = new_task(s.session_id);
  auto b = new_task(s.session_id);
  clock_.advance_ms(1000);
  auto started = run_sync(tasks_.start(a.task_id)).value();
  EXPECT_EQ(started.status, ts::in_progress);
  EXPECT_EQ(started.started_at, clock_.now());
  auto sess = get_session(s.session_id);
  EXPECT_EQ(sess.current_task_id, a.task_id);
  EXPECT_EQ(sess.updated_at, clock_.now());
  auto ev = events();
  ASSERT_GE(ev.size(), 2U);
  EXPECT_EQ(ev[ev.size() - 2].type, "task.started");
  EXPECT_EQ(ev.back().type, "session.updated");

  // Completing another task leaves the current task (and the session) alone.
  clock_.advance_ms(1000);
  const auto n = events().size();
  ASSERT_TRUE(run_sync(tasks_.complete(b.task_id)));
  EXPECT_EQ(get_session(s.session_id).current_task_id, a.task_id);
  EXPECT_EQ(get_session(s.session_id).updated_at, sess.updated_at);
  EXPECT_EQ(events().size(), n + 1);
  EXPECT_EQ(events().back().type, "task.completed");

  clock_.advance_ms(1000);
  ASSERT_TRUE(run_sync(tasks_.fail(a.task_id, "x")));
  EXPECT_FALSE(get_session(s.session_id).current_task_id);
  EXPECT_EQ(events().back().type, "session.updated");
  EXPECT_EQ(events()[events().size() - 2].type, "task.failed");
}

TEST_F(TaskServiceTest, MissingParentSessionIs404AndChangesNothing) {
  const auto s = new_session();
  auto a = new_task(s.session_id);
  auto b = new_task(s.session_id);
  auto c = new_task(s.session_id);
  delete_session_row(s.session_id);
  const auto n = events().size();
  clock_.advance_ms(1000);
  const std::string msg = "Session with ID " + s.session_id + " not found";
  auto r1 = run_sync(tasks_.start(a.task_id));
  auto r2 = run_sync(tasks_.complete(b.task_id));
  auto r3 = run_sync(tasks_.fail(c.task_id, "x"));
  for (const auto* r : {&r1, &r2, &r3}) {
    ASSERT_FALSE(*r);
    EXPECT_EQ(r->error().code, errc::not_found);
    EXPECT_EQ(r->error().message, msg);
  }
  EXPECT_EQ(get_task(a.task_id).status, ts::pending);
  EXPECT_FALSE(get_task(a.task_id).started_at);
  EXPECT_EQ(get_task(b.task_id).status, ts::pending);
  EXPECT_EQ(get_task(c.task_id).status, ts::pending);
  EXPECT_EQ(events().size(), n);
  // The status rule still comes first (Reference order): a non-pending task is 400.
  auto done = run_sync(tasks_.update(a.task_id, [] {
    update_task_input u;
    u.status = ts::completed;
    return u;
  }()));
  ASSERT_TRUE(done);
  auto again = run_sync(tasks_.start(a.task_id));
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, errc::bad_request);
}

TEST_F(TaskServiceTest, SoftDeleteCompletesFromAnyStatusAndKeepsTheCurrentTask) {
  const auto s = new_session();
  for (auto from : all_statuses) {
    auto t = in_status(s.session_id, from);
    clock_.advance_ms(1000);
    auto r = run_sync(tasks_.soft_delete(t.task_id));
    ASSERT_TRUE(r) << to_string(from);
    EXPECT_EQ(r->status, ts::completed);
    EXPECT_EQ(r->completed_at, clock_.now());
    EXPECT_EQ(events().back().type, "task.completed");
  }
  auto a = new_task(s.session_id);
  ASSERT_TRUE(run_sync(tasks_.start(a.task_id)));
  ASSERT_TRUE(run_sync(tasks_.soft_delete(a.task_id)));
  EXPECT_EQ(get_session(s.session_id).current_task_id, a.task_id);
  EXPECT_EQ(run_sync(tasks_.soft_delete("nope")).error().message, "Task with ID nope not found");
}

TEST_F(TaskServiceTest, OfSessionListsNewestFirstAnd404sUnknownSessions) {
  const auto s = new_session();
  auto a = new_task(s.session_id);
  clock_.advance_ms(10);
  auto b = new_task(s.session_id);
  new_task(new_session().session_id);
  auto r = run_sync(tasks_.of_session(s.session_id)).value();
  ASSERT_EQ(r.size(), 2U);
  EXPECT_EQ(r[0].task_id, b.task_id);
  EXPECT_EQ(r[1].task_id, a.task_id);
  auto missing = run_sync(tasks_.of_session("nope"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().message, "Session with ID nope not found");
}

}  // namespace
}  // namespace statetrack::core
