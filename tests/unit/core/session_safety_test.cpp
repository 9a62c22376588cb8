// Session safety on a manual clock over a real SQLite store: fencing epochs, directives,
// extended deadlines, awaiting_input and its escalation, the mass-stall brake, restart grace,
// the machine-offline cascade and the consistency check.
#include <gtest/gtest.h>

#include "core/consistency.hpp"
#include "core/machine_service.hpp"
#include "core/metadata.hpp"
#include "core/session_service.hpp"
#include "core/task_service.hpp"
#include "storage/sqlite/sqlite_store.hpp"
#include "support/run_sync.hpp"
#include "support/temp_dir.hpp"

namespace statetrack::core {
namespace {

using testing::run_sync;
constexpr timestamp t0{1'768'910'400'000};

class SessionSafetyTest : public ::testing::Test {
 protected:
  SessionSafetyTest()
      : store_({dir_.file("st.db")}),
        clock_(t0),
        sessions_(store_, clock_),
        tasks_(store_, clock_),
        machines_(store_, clock_) {}

  session create(int timeout_s = 10, std::string machine = "m") {
    create_session_input in;
    in.project_id = "p";
    in.machine_id = std::move(machine);
    in.heartbeat_timeout_s = timeout_s;
    return run_sync(sessions_.create(std::move(in))).value();
  }
  session put_status(const std::string& id, session_status st) {
    update_session_input u;
    u.status = st;
    return run_sync(sessions_.update(id, std::move(u))).value();
  }
  std::vector<std::string> event_types(const std::string& id) {
    std::vector<std::string> out;
    for (const auto& e : run_sync(sessions_.events_of(id, 0, 1000)).value())
      out.push_back(e.type);
    return out;
  }
  std::vector<event> all_events() {
    std::vector<event> out;
    store_.read_now([&](storage::read_view& v) { out = v.events_after(0, 100000); });
    return out;
  }
  sweep_outcome sweep(stall_brake brake = {}) {
    return run_sync(sessions_.sweep_stalled(clock_.now(), 0, brake));
  }

  testing::temp_dir dir_;
  storage::sqlite::sqlite_store store_;
  manual_clock clock_;
  session_service sessions_;
  task_service tasks_;
  machine_service machines_;
};

TEST_F(SessionSafetyTest, StaleEpochIsRefusedWithStopAndChangesNothing) {
  auto s = create();
  auto recovered = run_sync(sessions_.recover(s.session_id, recover_input{})).value();
  ASSERT_EQ(recovered.epoch, 2);
  clock_.advance_ms(1000);
  heartbeat_input old_owner;
  old_owner.epoch = 1;
  auto r = run_sync(sessions_.heartbeat(s.session_id, old_owner));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::stale_epoch);
  EXPECT_EQ(r.error().extra.at("directive").as_string(), "stop");
  EXPECT_EQ(r.error().extra.at("current_epoch").as_int64(), 2);
  EXPECT_EQ(run_sync(sessions_.get(s.session_id))->last_heartbeat, recovered.last_heartbeat);
  heartbeat_input new_owner;
  new_owner.epoch = 2;
  EXPECT_TRUE(run_sync(sessions_.heartbeat(s.session_id, new_owner)));
  // Without an epoch (an old client) the heartbeat is accepted as before.
  EXPECT_TRUE(run_sync(sessions_.heartbeat(s.session_id, heartbeat_input{})));
}

TEST_F(SessionSafetyTest, StaleEpochComesBeforeTheTerminalStatusCheck) {
  auto s = create();
  ASSERT_TRUE(run_sync(sessions_.mark_failed(s.session_id, "x", std::nullopt)));
  heartbeat_input in;
  in.epoch = 7;
  EXPECT_EQ(run_sync(sessions_.heartbeat(s.session_id, in)).error().code, errc::stale_epoch);
  in.epoch = 1;
  EXPECT_EQ(run_sync(sessions_.heartbeat(s.session_id, in)).error().code, errc::bad_request);
}

TEST_F(SessionSafetyTest, TaskChangesAreFencedToo) {
  auto s = create();
  create_task_input ci;
  ci.session_id = s.session_id;
  ci.project_id = "p";
  ci.task_name = "t";
  auto t = run_sync(tasks_.create(ci)).value();
  ASSERT_TRUE(run_sync(sessions_.recover(s.session_id, recover_input{})));
  EXPECT_EQ(run_sync(tasks_.start(t.task_id, 1)).error().code, errc::stale_epoch);
  EXPECT_EQ(run_sync(tasks_.get(t.task_id))->status, task_status::pending);
  ci.epoch = 1;
  EXPECT_EQ(run_sync(tasks_.create(ci)).error().code, errc::stale_epoch);
  EXPECT_TRUE(run_sync(tasks_.start(t.task_id, 2)));
  EXPECT_EQ(run_sync(tasks_.complete(t.task_id, 1)).error().code, errc::stale_epoch);
  EXPECT_EQ(run_sync(tasks_.fail(t.task_id, "e", 1)).error().code, errc::stale_epoch);
  update_task_input ui;
  ui.epoch = 1;
  ui.status = task_status::blocked;
  EXPECT_EQ(run_sync(tasks_.update(t.task_id, ui)).error().code, errc::stale_epoch);
  EXPECT_EQ(run_sync(tasks_.get(t.task_id))->status, task_status::in_progress);
}

TEST_F(SessionSafetyTest, ExtendSPushesTheDeadlineForOneLongStep) {
  auto s = create(10);
  heartbeat_input in;
  in.extend_s = 120;
  auto r = run_sync(sessions_.heartbeat(s.session_id, in)).value();
  EXPECT_EQ(r.s.deadline_at, t0 + 120'000);
  clock_.set(t0 + 60'000);
  EXPECT_TRUE(sweep().stalled.empty());
  // A shorter extend_s never shortens the session's own timeout.
  in.extend_s = 2;
  r = run_sync(sessions_.heartbeat(s.session_id, in)).value();
  EXPECT_EQ(r.s.deadline_at, clock_.now() + 10'000);
}

TEST_F(SessionSafetyTest, DirectivesReachTheHeartbeatReply) {
  auto s = create();
  auto d = run_sync(sessions_.set_directive(s.session_id, directive::pause, "maintenance")).value();
  EXPECT_EQ(d.dir, directive::pause);
  auto hb = run_sync(sessions_.heartbeat(s.session_id)).value();
  EXPECT_EQ(hb.s.dir, directive::pause);
  EXPECT_EQ(hb.s.directive_reason, "maintenance");
  EXPECT_EQ(event_types(s.session_id).back(), "session.directive_changed");
  EXPECT_EQ(
      run_sync(sessions_.set_directive("missing", directive::stop, std::nullopt)).error().code,
      errc::not_found);
}

TEST_F(SessionSafetyTest, AwaitingInputNeverStallsAndEscalatesOnce) {
  auto s = create(10);
  update_session_input u;
  u.status = session_status::awaiting_input;
  u.input_timeout_s = 60;
  auto waiting = run_sync(sessions_.update(s.session_id, std::move(u))).value();
  EXPECT_EQ(waiting.awaiting_since, t0);
  clock_.set(t0 + 59'000);
  auto pass = sweep();
  EXPECT_TRUE(pass.stalled.empty());
  EXPECT_TRUE(pass.escalated.empty());
  clock_.set(t0 + 61'000);
  pass = sweep();
  ASSERT_EQ(pass.escalated.size(), 1U);
  EXPECT_TRUE(pass.stalled.empty());
  auto after = run_sync(sessions_.get(s.session_id)).value();
  EXPECT_EQ(after.status, session_status::awaiting_input);
  EXPECT_EQ(after.escalated_at, t0 + 61'000);
  clock_.set(t0 + 3'600'000);
  pass = sweep();
  EXPECT_TRUE(pass.escalated.empty());  // once
  EXPECT_TRUE(pass.stalled.empty());    // however long the wait
  auto types = event_types(s.session_id);
  EXPECT_EQ(std::count(types.begin(), types.end(), "session.input_overdue"), 1);
  // Resuming gives a full timeout from now and forgets the wait.
  auto resumed = put_status(s.session_id, session_status::active);
  EXPECT_EQ(resumed.deadline_at, clock_.now() + 10'000);
  EXPECT_FALSE(resumed.awaiting_since.has_value());
  EXPECT_FALSE(resumed.escalated_at.has_value());
  clock_.advance_ms(10'001);
  EXPECT_EQ(sweep().stalled.size(), 1U);
}

TEST_F(SessionSafetyTest, AwaitingInputWithoutTimeoutIsNeverSwept) {
  auto s = create(1);
  put_status(s.session_id, session_status::awaiting_input);
  clock_.advance_ms(86'400'000);
  auto pass = sweep();
  EXPECT_TRUE(pass.stalled.empty());
  EXPECT_TRUE(pass.escalated.empty());
  EXPECT_EQ(pass.examined, 0);
}

TEST_F(SessionSafetyTest, MassStallBrakeHoldsOpensOneIncidentAndResolves) {
  std::vector<session> all;
  for (int i = 0; i < 12; ++i)
    all.push_back(create(10));
  clock_.set(t0 + 11'000);
  auto pass = sweep();
  EXPECT_TRUE(pass.braked);
  EXPECT_TRUE(pass.incident_opened);
  EXPECT_TRUE(pass.stalled.empty());
  EXPECT_EQ(pass.overdue, 12);
  auto inc = run_sync(sessions_.open_incident());
  ASSERT_TRUE(inc.has_value());
  EXPECT_EQ(inc->overdue, 12);
  EXPECT_EQ(inc->active, 12);
  // Still braking, but no second incident event.
  pass = sweep();
  EXPECT_TRUE(pass.braked);
  EXPECT_FALSE(pass.incident_opened);
  // Heartbeats come back for all but two: those two are stalled, the incident resolves.
  for (std::size_t i = 2; i < all.size(); ++i) {
    ASSERT_TRUE(run_sync(sessions_.heartbeat(all[i].session_id)));
  }
  pass = sweep();
  EXPECT_FALSE(pass.braked);
  EXPECT_TRUE(pass.incident_resolved);
  EXPECT_EQ(pass.stalled.size(), 2U);
  EXPECT_FALSE(run_sync(sessions_.open_incident()).has_value());
  int opened = 0;
  int resolved = 0;
  for (const auto& e : all_events()) {
    opened += e.type == "incident.mass_stall";
    resolved += e.type == "incident.resolved";
  }
  EXPECT_EQ(opened, 1);
  EXPECT_EQ(resolved, 1);
}

TEST_F(SessionSafetyTest, OperatorClearanceLetsTheSweepStall) {
  for (int i = 0; i < 12; ++i)
    create(10);
  EXPECT_EQ(run_sync(sessions_.clear_incident()).error().code, errc::not_found);
  clock_.set(t0 + 11'000);
  ASSERT_TRUE(sweep().braked);
  auto cleared = run_sync(sessions_.clear_incident()).value();
  EXPECT_TRUE(cleared.cleared_by_operator);
  auto pass = sweep();
  EXPECT_FALSE(pass.braked);
  EXPECT_EQ(pass.stalled.size(), 12U);
  EXPECT_TRUE(pass.incident_resolved);
}

TEST_F(SessionSafetyTest, BrakeNeedsBothTheShareAndTheMinimum) {
  // 12 overdue out of 30 active: under half, so they are stalled normally.
  for (int i = 0; i < 12; ++i)
    create(10);
  for (int i = 0; i < 18; ++i)
    create(600);
  clock_.set(t0 + 11'000);
  auto pass = sweep();
  EXPECT_FALSE(pass.braked);
  EXPECT_EQ(pass.stalled.size(), 12U);
  // Few sessions, all overdue: under the minimum, stalled normally.
  create(1);
  create(1);
  clock_.advance_ms(2'000);
  pass = sweep();
  EXPECT_EQ(pass.stalled.size(), 2U);
  // min_count 0 disables the brake.
  for (int i = 0; i < 20; ++i)
    create(1);
  clock_.advance_ms(2'000);
  pass = sweep(stall_brake{0.5, 0});
  EXPECT_FALSE(pass.braked);
  EXPECT_EQ(pass.stalled.size(), 20U);
}

TEST_F(SessionSafetyTest, RestartGraceProtectsSessionsThatExpiredWhileDown) {
  auto expired = create(10);
  auto fresh = create(600);
  clock_.set(t0 + 300'000);  // the server was down for five minutes
  EXPECT_EQ(run_sync(sessions_.apply_restart_grace(clock_.now(), 60'000)), 1);
  EXPECT_EQ(run_sync(sessions_.get(expired.session_id))->deadline_at, clock_.now() + 60'000);
  EXPECT_EQ(run_sync(sessions_.get(fresh.session_id))->deadline_at, fresh.deadline_at);
  clock_.advance_ms(59'000);
  EXPECT_TRUE(sweep().stalled.empty());
  clock_.advance_ms(2'000);
  EXPECT_EQ(sweep().stalled.size(), 1U);
}

TEST_F(SessionSafetyTest, AHeartbeatAfterAGraceOrALongStepKeepsTheSweepOnTime) {
  // Found by the stall simulator: after a restart grace (or an extend_s), the sweep key was
  // later than the next heartbeat's deadline, so a crash right after that heartbeat was
  // detected only at the grace end.
  auto s = create(10);
  clock_.set(t0 + 300'000);
  ASSERT_EQ(run_sync(sessions_.apply_restart_grace(clock_.now(), 60'000)), 1);
  clock_.advance_ms(1'000);
  auto hb = run_sync(sessions_.heartbeat(s.session_id)).value();
  EXPECT_EQ(hb.s.deadline_at, clock_.now() + 10'000);
  EXPECT_LE(run_sync(sessions_.get(s.session_id))->sweep_at, hb.s.deadline_at);
  clock_.advance_ms(10'001);  // the agent died right after that heartbeat
  EXPECT_EQ(sweep().stalled.size(), 1U);

  auto long_step = create(10);
  heartbeat_input in;
  in.extend_s = 30;
  ASSERT_TRUE(run_sync(sessions_.heartbeat(long_step.session_id, in)));
  clock_.advance_ms(11'000);
  EXPECT_TRUE(sweep().stalled.empty());  // re-armed at the extended deadline
  ASSERT_TRUE(run_sync(sessions_.heartbeat(long_step.session_id)));
  clock_.advance_ms(10'001);
  EXPECT_EQ(sweep().stalled.size(), 1U);
}

TEST_F(SessionSafetyTest, RecoveryElsewhereReleasesTheOldSlot) {
  register_machine_input m;
  m.machine_id = "old";
  m.hostname = "h";
  m.docker_slots = {1, 2};
  ASSERT_TRUE(run_sync(machines_.register_machine(m)));
  auto s = create(10, "old");
  ASSERT_TRUE(run_sync(machines_.assign_session("old", s.session_id, 1.0)));
  recover_input stay;
  ASSERT_TRUE(run_sync(sessions_.recover(s.session_id, stay)));
  EXPECT_EQ(run_sync(machines_.get("old"))->active_sessions.size(), 1U);  // not moved
  recover_input move;
  move.new_machine_id = "new";
  ASSERT_TRUE(run_sync(sessions_.recover(s.session_id, move)));
  EXPECT_TRUE(run_sync(machines_.get("old"))->active_sessions.empty());
  EXPECT_EQ(event_types(s.session_id).back(), "session.recovered");
}

TEST_F(SessionSafetyTest, MachineOfflineStallsItsActiveSessionsWithOneEvent) {
  register_machine_input m;
  m.machine_id = "box";
  m.hostname = "h";
  ASSERT_TRUE(run_sync(machines_.register_machine(m)));
  auto a = create(600, "box");
  auto b = create(600, "box");
  auto paused = create(600, "box");
  put_status(paused.session_id, session_status::paused);
  auto other = create(600, "elsewhere");
  const auto before = all_events().size();
  auto gone = run_sync(machines_.sweep_offline(t0 + 700'000, 600'000));
  ASSERT_EQ(gone.size(), 1U);
  EXPECT_EQ(gone[0].affected_sessions.size(), 2U);
  auto sa = run_sync(sessions_.get(a.session_id)).value();
  EXPECT_EQ(sa.status, session_status::stalled);
  EXPECT_EQ(parse_metadata(sa.metadata).at("stalled_reason").as_string(),
            "machine box went offline");
  EXPECT_EQ(run_sync(sessions_.get(paused.session_id))->status, session_status::paused);
  EXPECT_EQ(run_sync(sessions_.get(other.session_id))->status, session_status::active);
  auto events = all_events();
  ASSERT_EQ(events.size(), before + 1);
  EXPECT_EQ(events.back().type, "machine.offline");
  auto data = parse_metadata(events.back().data);
  EXPECT_EQ(data.at("affected_sessions").as_array().size(), 2U);
}

TEST_F(SessionSafetyTest, ConsistencyCheckClosesOrphanTasksAndFreesSlots) {
  register_machine_input m;
  m.machine_id = "box";
  m.hostname = "h";
  m.docker_slots = {1};
  ASSERT_TRUE(run_sync(machines_.register_machine(m)));
  auto s = create(600, "box");
  ASSERT_TRUE(run_sync(machines_.assign_session("box", s.session_id, std::nullopt)));
  create_task_input ci;
  ci.session_id = s.session_id;
  ci.project_id = "p";
  ci.task_name = "t";
  auto t = run_sync(tasks_.create(ci)).value();
  ASSERT_TRUE(run_sync(tasks_.start(t.task_id)));
  auto live = create(600, "box");
  create_task_input ci2 = ci;
  ci2.session_id = live.session_id;
  auto t2 = run_sync(tasks_.create(ci2)).value();
  ASSERT_TRUE(run_sync(tasks_.start(t2.task_id)));
  // Nothing to repair yet.
  auto first = run_sync(run_consistency_check(store_, clock_));
  EXPECT_EQ(first.tasks_closed + first.slots_released, 0);
  ASSERT_TRUE(run_sync(sessions_.soft_delete(s.session_id)));  // touches neither task nor slot
  auto report = run_sync(run_consistency_check(store_, clock_));
  EXPECT_EQ(report.tasks_closed, 1);
  EXPECT_EQ(report.slots_released, 1);
  auto closed = run_sync(tasks_.get(t.task_id)).value();
  EXPECT_EQ(closed.status, task_status::failed);
  ASSERT_TRUE(closed.error_message.has_value());
  EXPECT_EQ(run_sync(tasks_.get(t2.task_id))->status, task_status::in_progress);
  EXPECT_TRUE(run_sync(machines_.get("box"))->active_sessions.empty());
  // Idempotent.
  auto again = run_sync(run_consistency_check(store_, clock_));
  EXPECT_EQ(again.tasks_closed + again.slots_released, 0);
}

TEST_F(SessionSafetyTest, TimelineIsOrderedAndSurvivesPurge) {
  auto s = create();
  ASSERT_TRUE(run_sync(sessions_.mark_failed(s.session_id, "x", std::nullopt)));
  ASSERT_TRUE(run_sync(sessions_.purge(s.session_id, true)));
  auto events = run_sync(sessions_.events_of(s.session_id, 0, 100)).value();
  ASSERT_EQ(events.size(), 3U);
  EXPECT_EQ(events[0].type, "session.created");
  EXPECT_EQ(events[1].type, "session.failed");
  EXPECT_EQ(events[2].type, "session.deleted");
  EXPECT_LT(events[0].seq, events[1].seq);
  auto page = run_sync(sessions_.events_of(s.session_id, events[0].seq, 1)).value();
  ASSERT_EQ(page.size(), 1U);
  EXPECT_EQ(page[0].seq, events[1].seq);
  EXPECT_EQ(run_sync(sessions_.events_of("never-existed", 0, 10)).error().code, errc::not_found);
}

}  // namespace
}  // namespace statetrack::core
