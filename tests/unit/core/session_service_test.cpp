// Session transitions on a manual clock over a real SQLite store: every (state, operation)
// pair of the contract's state table, the stall sweep and its deadline boundary.
#include "core/session_service.hpp"

#include <boost/json/parse.hpp>
#include <gtest/gtest.h>

#include "core/metadata.hpp"
#include "storage/sqlite/sqlite_store.hpp"
#include "support/run_sync.hpp"
#include "support/temp_dir.hpp"

namespace statetrack::core {
namespace {

using testing::run_sync;
constexpr timestamp t0{1'768'910'400'000};

class SessionServiceTest : public ::testing::Test {
 protected:
  SessionServiceTest() : store_({dir_.file("st.db")}), clock_(t0), svc_(store_, clock_) {}

  session create(int timeout_s = 300) {
    create_session_input in;
    in.project_id = "p";
    in.machine_id = "m";
    in.heartbeat_timeout_s = timeout_s;
    return run_sync(svc_.create(std::move(in))).value();
  }

  // A session in the given status, reached through the API's own operations.
  session in_status(session_status st) {
    auto s = create();
    update_session_input u;
    u.status = st;
    return run_sync(svc_.update(s.session_id, std::move(u))).value();
  }

  std::vector<event> events() {
    std::vector<event> out;
    store_.read_now([&](storage::read_view& v) { out = v.events_after(0, 1000); });
    return out;
  }

  testing::temp_dir dir_;
  storage::sqlite::sqlite_store store_;
  manual_clock clock_;
  session_service svc_;
};

constexpr session_status all_statuses[] = {session_status::active,    session_status::paused,
                                           session_status::completed, session_status::failed,
                                           session_status::stalled,   session_status::archived};

TEST_F(SessionServiceTest, CreateSetsLivenessFieldsAndEmitsAnEvent) {
  auto s = create(60);
  EXPECT_EQ(s.status, session_status::active);
  EXPECT_EQ(s.last_heartbeat, t0);
  EXPECT_EQ(s.deadline_at, t0 + 60'000);
  EXPECT_EQ(s.epoch, 1);
  auto ev = events();
  ASSERT_EQ(ev.size(), 1U);
  EXPECT_EQ(ev[0].type, "session.created");
  EXPECT_EQ(ev[0].session_id, s.session_id);
  EXPECT_EQ(ev[0].seq, 1);
}

TEST_F(SessionServiceTest, CreateRefusesEmptyRequiredStrings) {
  create_session_input in;
  in.project_id = "";
  in.machine_id = "m";
  auto r = run_sync(svc_.create(std::move(in)));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::validation_failed);
  EXPECT_EQ(r.error().field_messages.at(0), "project_id should not be empty");
}

TEST_F(SessionServiceTest, HeartbeatTable) {
  for (auto st : all_statuses) {
    auto s = in_status(st);
    clock_.advance_ms(1000);
    auto r = run_sync(svc_.heartbeat(s.session_id));
    if (st == session_status::completed || st == session_status::failed) {
      ASSERT_FALSE(r) << to_string(st);
      EXPECT_EQ(r.error().message,
                "Cannot update heartbeat for " + std::string(to_string(st)) + " session");
      continue;
    }
    ASSERT_TRUE(r) << to_string(st);
    EXPECT_EQ(r->reactivated, st == session_status::stalled);
    EXPECT_EQ(r->s.status, st == session_status::stalled ? session_status::active : st);
    EXPECT_EQ(r->s.last_heartbeat, clock_.now());
    EXPECT_EQ(r->s.deadline_at, clock_.now() + 300'000);
  }
}

TEST_F(SessionServiceTest, HeartbeatThatChangesNoStatusEmitsNoEvent) {
  auto s = create();
  auto before = events().size();
  ASSERT_TRUE(run_sync(svc_.heartbeat(s.session_id)));
  EXPECT_EQ(events().size(), before);
  ASSERT_TRUE(run_sync(svc_.mark_stalled(s.session_id, "x")));
  ASSERT_TRUE(run_sync(svc_.heartbeat(s.session_id)));
  EXPECT_EQ(events().back().type, "session.reactivated");
}

TEST_F(SessionServiceTest, MarkFailedTable) {
  for (auto st : all_statuses) {
    auto s = in_status(st);
    auto r = run_sync(svc_.mark_failed(s.session_id, "boom", std::nullopt));
    if (st == session_status::completed) {
      ASSERT_FALSE(r);
      EXPECT_EQ(r.error().message, "Cannot mark completed session as failed");
      continue;
    }
    ASSERT_TRUE(r) << to_string(st);
    EXPECT_EQ(r->status, session_status::failed);
    ASSERT_TRUE(r->completed_at.has_value());
    auto meta = parse_metadata(r->metadata);
    EXPECT_EQ(meta.at("failure_reason").as_string(), "boom");
    EXPECT_EQ(meta.at("failure_timestamp").as_string(), format_iso(clock_.now()));
  }
}

TEST_F(SessionServiceTest, MarkFailedTwiceKeepsTheFirstCompletionTimeAndOldDetails) {
  auto s = create();
  auto first =
      run_sync(svc_.mark_failed(s.session_id, "a", boost::json::object{{"error_code", "E1"}}))
          .value();
  clock_.advance_ms(5000);
  auto second = run_sync(svc_.mark_failed(s.session_id, "b", std::nullopt)).value();
  EXPECT_EQ(second.completed_at, first.completed_at);
  auto meta = parse_metadata(second.metadata);
  EXPECT_EQ(meta.at("failure_reason").as_string(), "b");
  EXPECT_EQ(meta.at("error_details").as_object().at("error_code").as_string(), "E1");
}

TEST_F(SessionServiceTest, MarkStalledTable) {
  for (auto st : all_statuses) {
    auto s = in_status(st);
    auto r = run_sync(svc_.mark_stalled(s.session_id, "quiet"));
    if (st == session_status::completed || st == session_status::failed) {
      ASSERT_FALSE(r);
      EXPECT_EQ(r.error().message,
                "Cannot mark " + std::string(to_string(st)) + " session as stalled");
      continue;
    }
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, session_status::stalled);
    EXPECT_EQ(parse_metadata(r->metadata).at("stalled_reason").as_string(), "quiet");
  }
}

TEST_F(SessionServiceTest, ArchiveAndPurgeOnlyTerminalSessions) {
  for (auto st : all_statuses) {
    const bool terminal = st == session_status::completed || st == session_status::failed ||
                          st == session_status::archived;
    auto s = in_status(st);
    auto a = run_sync(svc_.archive(s.session_id));
    EXPECT_EQ(a.has_value(), terminal) << to_string(st);
    auto p = run_sync(svc_.purge(s.session_id, true));
    EXPECT_EQ(p.has_value(), terminal) << to_string(st);
    EXPECT_EQ(run_sync(svc_.get(s.session_id)).has_value(), !terminal);
  }
}

TEST_F(SessionServiceTest, PurgeChecksConfirmationBeforeExistence) {
  auto r = run_sync(svc_.purge("no-such-session", false));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::bad_request);
  auto missing = run_sync(svc_.purge("no-such-session", true));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, errc::not_found);
}

TEST_F(SessionServiceTest, RecoverConsumesAttemptsAndBumpsEpoch) {
  auto s = create();
  ASSERT_TRUE(run_sync(svc_.mark_failed(s.session_id, "x", std::nullopt)));
  for (int i = 1; i <= 3; ++i) {
    recover_input in;
    in.new_machine_id = "m" + std::to_string(i);
    auto r = run_sync(svc_.recover(s.session_id, std::move(in)));
    ASSERT_TRUE(r) << i;
    EXPECT_EQ(r->status, session_status::active);
    EXPECT_EQ(r->machine_id, "m" + std::to_string(i));
    EXPECT_EQ(r->epoch, 1 + i);
    EXPECT_EQ(recovery_attempts(*r), i);
  }
  auto fourth = run_sync(svc_.recover(s.session_id, recover_input{}));
  ASSERT_FALSE(fourth);
  EXPECT_EQ(fourth.error().message, "Maximum recovery attempts (3) reached for this session");
  // The task check comes before the attempt limit (contract §4.6.3, recommended order).
  recover_input bad_task;
  bad_task.resume_from_task_id = "nope";
  auto r = run_sync(svc_.recover(s.session_id, std::move(bad_task)));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::not_found);
}

TEST_F(SessionServiceTest, PrepareRecoveryKeepsHistoryAndExcludesRecoveryFromSnapshot) {
  auto s = create();
  ASSERT_TRUE(run_sync(svc_.recover(s.session_id, recover_input{})));
  auto p = run_sync(svc_.prepare_recovery(s.session_id));
  ASSERT_TRUE(p);
  EXPECT_EQ(p->recovery_attempts, 1);
  auto after = run_sync(svc_.get(s.session_id)).value();
  auto rec = parse_metadata(after.metadata).at("recovery").as_object();
  EXPECT_EQ(rec.at("recovery_history").as_array().size(), 1U);
  EXPECT_TRUE(rec.contains("last_recovery_at"));
  auto cp = rec.at("recovery_checkpoints").as_array().at(0).as_object();
  EXPECT_FALSE(cp.at("metadata_snapshot").as_object().contains("recovery"));
}

TEST_F(SessionServiceTest, StallSweepUsesTheDeadlineStrictly) {
  auto s = create(10);
  auto paused = in_status(session_status::paused);
  clock_.set(t0 + 10'000);  // exactly at the deadline: not yet overdue
  EXPECT_TRUE(run_sync(svc_.sweep_stalled(clock_.now(), 100)).stalled.empty());
  clock_.set(t0 + 10'001);
  auto stalled = run_sync(svc_.sweep_stalled(clock_.now(), 100)).stalled;
  ASSERT_EQ(stalled.size(), 1U);
  EXPECT_EQ(stalled[0].session_id, s.session_id);
  EXPECT_EQ(run_sync(svc_.get(s.session_id))->status, session_status::stalled);
  // Paused sessions are never swept, however old.
  clock_.set(t0 + 86'400'000);
  EXPECT_TRUE(run_sync(svc_.sweep_stalled(clock_.now(), 100)).stalled.empty());
  EXPECT_EQ(run_sync(svc_.get(paused.session_id))->status, session_status::paused);
  // The sweep is idempotent: a stalled session is not re-reported.
  EXPECT_TRUE(run_sync(svc_.sweep_stalled(clock_.now(), 100)).stalled.empty());
}

TEST_F(SessionServiceTest, HeartbeatPushesTheDeadline) {
  auto s = create(10);
  clock_.set(t0 + 9'000);
  ASSERT_TRUE(run_sync(svc_.heartbeat(s.session_id)));
  clock_.set(t0 + 15'000);
  EXPECT_TRUE(run_sync(svc_.sweep_stalled(clock_.now(), 100)).stalled.empty());
  clock_.set(t0 + 19'001);
  EXPECT_EQ(run_sync(svc_.sweep_stalled(clock_.now(), 100)).stalled.size(), 1U);
}

TEST_F(SessionServiceTest, HeartbeatsLeaveTheSweepIndexAloneAndTheSweepReArmsIt) {
  auto s = create(10);
  EXPECT_EQ(s.sweep_at, t0 + 10'000);
  clock_.set(t0 + 9'000);
  ASSERT_TRUE(run_sync(svc_.heartbeat(s.session_id)));
  auto after_hb = run_sync(svc_.get(s.session_id)).value();
  EXPECT_EQ(after_hb.deadline_at, t0 + 19'000);
  EXPECT_EQ(after_hb.sweep_at, t0 + 10'000);  // no index rewrite on the hot path
  clock_.set(t0 + 12'000);
  auto pass = run_sync(svc_.sweep_stalled(clock_.now(), 100));
  EXPECT_EQ(pass.examined, 1);
  EXPECT_TRUE(pass.stalled.empty());
  EXPECT_EQ(run_sync(svc_.get(s.session_id))->sweep_at, t0 + 19'000);
  // Not a candidate again until its real deadline.
  clock_.set(t0 + 15'000);
  EXPECT_EQ(run_sync(svc_.sweep_stalled(clock_.now(), 100)).examined, 0);
  clock_.set(t0 + 19'001);
  EXPECT_EQ(run_sync(svc_.sweep_stalled(clock_.now(), 100)).stalled.size(), 1U);
}

TEST_F(SessionServiceTest, MovingTheHeartbeatBackRearmsTheSweepEarlier) {
  auto s = create(300);
  update_session_input in;
  in.last_heartbeat = t0 - 400'000;
  auto r = run_sync(svc_.update(s.session_id, std::move(in))).value();
  EXPECT_EQ(r.deadline_at, t0 - 100'000);
  EXPECT_EQ(r.sweep_at, r.deadline_at);
  EXPECT_EQ(run_sync(svc_.sweep_stalled(clock_.now(), 100)).stalled.size(), 1U);
}

TEST_F(SessionServiceTest, ResumingAPausedSessionGivesItAFullTimeout) {
  auto s = create(10);
  update_session_input pause;
  pause.status = session_status::paused;
  ASSERT_TRUE(run_sync(svc_.update(s.session_id, std::move(pause))));
  clock_.set(t0 + 3'600'000);
  update_session_input resume;
  resume.status = session_status::active;
  auto r = run_sync(svc_.update(s.session_id, std::move(resume))).value();
  EXPECT_EQ(r.deadline_at, clock_.now() + 10'000);
  EXPECT_TRUE(run_sync(svc_.sweep_stalled(clock_.now() + 5'000, 100)).stalled.empty());
}

TEST_F(SessionServiceTest, CleanupTouchesOnlyOldTerminalSessions) {
  auto done = in_status(session_status::completed);
  auto active = create();
  clock_.advance_ms(10LL * 86'400'000);
  auto fresh_done = in_status(session_status::completed);
  cleanup_input in;
  in.older_than_days = 7;
  in.statuses = {session_status::completed, session_status::active};
  auto r = run_sync(svc_.cleanup(in)).value();
  EXPECT_EQ(r.operation, "archive");
  EXPECT_EQ(r.sessions_affected, 1);
  EXPECT_EQ(r.sessions_skipped, 1);
  EXPECT_EQ(run_sync(svc_.get(done.session_id))->status, session_status::archived);
  EXPECT_EQ(run_sync(svc_.get(active.session_id))->status, session_status::active);
  EXPECT_EQ(run_sync(svc_.get(fresh_done.session_id))->status, session_status::completed);
}

TEST_F(SessionServiceTest, RetentionDeletesOnlyExpiredTerminalSessions) {
  auto old_done = in_status(session_status::completed);
  ASSERT_TRUE(run_sync(svc_.soft_delete(old_done.session_id)));
  auto running = create();
  clock_.advance_ms(31LL * 86'400'000);
  auto n = run_sync(svc_.apply_retention(clock_.now() - 30LL * 86'400'000, 100));
  EXPECT_EQ(n, 1);
  EXPECT_FALSE(run_sync(svc_.get(old_done.session_id)).has_value());
  EXPECT_TRUE(run_sync(svc_.get(running.session_id)).has_value());
}

TEST_F(SessionServiceTest, UnknownIdsAreNotFound) {
  auto r = run_sync(svc_.heartbeat("missing"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::not_found);
  EXPECT_EQ(r.error().message, "Session with ID missing not found");
}

}  // namespace
}  // namespace statetrack::core
