// Machine rules: the pure slot helpers behind the four occupancy definitions of contract §5,
// availability ordering, and the service on a manual clock (assign rule order, heartbeat
// events, the offline sweep's strict boundary and its respect for maintenance).
#include <gtest/gtest.h>

#include "core/machine_service.hpp"
#include "core/session_service.hpp"
#include "storage/sqlite/sqlite_store.hpp"
#include "support/run_sync.hpp"
#include "support/temp_dir.hpp"

namespace statetrack::core {
namespace {

using testing::run_sync;
constexpr timestamp t0{1'768'910'400'000};

slot_holder holder(std::string sid, std::string mid, double slot) {
  return slot_holder{std::move(sid), std::move(mid), slot};
}

TEST(DockerSlots, DuplicatesAreReportedBeforeNonIntegers) {
  auto ok = to_docker_slots({3, 1, 2});
  ASSERT_TRUE(ok);
  EXPECT_EQ(*ok, (std::vector<std::int64_t>{3, 1, 2}));
  EXPECT_TRUE(to_docker_slots({}));
  auto dup = to_docker_slots({1.5, 2, 2});
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().message, "Docker slots must be unique");
  for (double bad : {1.5, 0.0, -1.0, 1e300}) {
    auto r = to_docker_slots({1, bad});
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, errc::bad_request);
    EXPECT_EQ(r.error().message, "Docker slots must be positive integers");
  }
}

TEST(DockerSlots, AutoPickTakesTheFirstUnusedSlotInStoredOrder) {
  const std::vector<std::int64_t> slots = {3, 1, 2};
  EXPECT_EQ(first_free_slot(slots, {}), 3);
  // Holders count whatever machine they name now (auto-pick definition).
  EXPECT_EQ(first_free_slot(slots, {holder("a", "elsewhere", 3)}), 1);
  EXPECT_EQ(first_free_slot(slots, {holder("a", "m", 3), holder("b", "m", 1)}), 2);
  EXPECT_FALSE(
      first_free_slot(slots, {holder("a", "m", 3), holder("b", "m", 1), holder("c", "m", 2)}));
  EXPECT_FALSE(first_free_slot({}, {}));
}

TEST(DockerSlots, ExplicitSlotConflictNeedsTheHolderToNameThisMachine) {
  const std::vector<slot_holder> hs = {holder("a", "elsewhere", 1), holder("b", "m", 2)};
  EXPECT_EQ(slot_occupant(hs, "m", 1), nullptr);
  const auto* h = slot_occupant(hs, "m", 2);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->session_id, "b");
  EXPECT_TRUE(has_slot({1, 2}, 2.0));
  EXPECT_FALSE(has_slot({1, 2}, 1.5));
}

TEST(DockerSlots, RemovalGuardIgnoresFalsySlotsAndReportsTheFirstHolder) {
  const std::vector<slot_holder> hs = {holder("zero", "m", 0), holder("a", "m", 2),
                                       holder("b", "other", 3)};
  EXPECT_EQ(removed_slot_in_use({2, 3}, hs), nullptr);
  const auto* h = removed_slot_in_use({1}, hs);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->session_id, "a");
  h = removed_slot_in_use({2}, hs);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->session_id, "b");
}

TEST(DockerSlots, FreeSlotNumbersKeepStoredOrder) {
  EXPECT_EQ(free_slot_numbers({4, 1, 3, 2}, {holder("a", "m", 3), holder("b", "m", 9)}),
            (std::vector<std::int64_t>{4, 1, 2}));
}

TEST(Availability, SortedByFreeSlotsThenMachineId) {
  auto item = [](std::string id, std::size_t free) {
    machine_availability a;
    a.m.machine_id = std::move(id);
    a.available_slot_numbers.assign(free, 1);
    return a;
  };
  std::vector<machine_availability> list = {item("c", 1), item("b", 2), item("a", 1), item("d", 0),
                                            item("a2", 2)};
  sort_by_availability(list);
  std::vector<std::string> ids;
  for (const auto& a : list)
    ids.push_back(a.m.machine_id);
  EXPECT_EQ(ids, (std::vector<std::string>{"a2", "b", "a", "c", "d"}));
}

TEST(MachineMessages, SlotsPrintLikeJavaScriptAndHeartbeatTextFollowsThePreviousStatus) {
  EXPECT_EQ(format_slot(2), "2");
  EXPECT_EQ(format_slot(1.5), "1.5");
  EXPECT_EQ(machine_heartbeat_message(true), "Heartbeat updated and machine brought back online");
  EXPECT_EQ(machine_heartbeat_message(false), "Heartbeat updated successfully");
}

class MachineServiceTest : public ::testing::Test {
 protected:
  MachineServiceTest()
      : store_({dir_.file("st.db")}),
        clock_(t0),
        sessions_(store_, clock_),
        machines_(store_, clock_) {}

  machine new_machine(std::string id, std::vector<double> slots = {1, 2}) {
    register_machine_input in;
    in.machine_id = std::move(id);
    in.hostname = "h";
    in.docker_slots = std::move(slots);
    return run_sync(machines_.register_machine(std::move(in))).value();
  }

  session new_session(std::optional<double> slot = std::nullopt) {
    create_session_input in;
    in.project_id = "p";
    in.machine_id = "x";
    in.docker_slot = slot;
    return run_sync(sessions_.create(std::move(in))).value();
  }

  machine set_status(const std::string& id, machine_status st) {
    update_machine_input u;
    u.status = st;
    return run_sync(machines_.update(id, std::move(u))).value();
  }

  std::vector<event> events() {
    std::vector<event> out;
    store_.read_now([&](storage::read_view& v) { out = v.events_after(0, 10000); });
    return out;
  }

  testing::temp_dir dir_;
  storage::sqlite::sqlite_store store_;
  manual_clock clock_;
  session_service sessions_;
  machine_service machines_;
};

TEST_F(MachineServiceTest, RegisterRulesInOrder) {
  new_machine("m");
  register_machine_input in;
  in.machine_id = "m";
  in.docker_slots = {1.5};
  auto r = run_sync(machines_.register_machine(in));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::conflict);
  EXPECT_EQ(r.error().message, "Machine with ID m already exists");
  in.machine_id = "n";
  r = run_sync(machines_.register_machine(in));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "Docker slots must be positive integers");
  in.docker_slots = {1};
  r = run_sync(machines_.register_machine(in));  // hostname ""
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::validation_failed);
  EXPECT_EQ(events().back().type, "machine.registered");
  EXPECT_EQ(events().size(), 1U);
}

TEST_F(MachineServiceTest, AssignRuleOrder) {
  new_machine("m", {1});
  auto s = new_session(7);
  auto r = run_sync(machines_.assign_session("nope", "nope", std::nullopt));
  EXPECT_EQ(r.error().message, "Machine with ID nope not found");
  set_status("m", machine_status::maintenance);
  r = run_sync(machines_.assign_session("m", "nope", std::nullopt));
  EXPECT_EQ(r.error().message,
            "Cannot assign session to machine m - machine status is maintenance");
  set_status("m", machine_status::online);
  r = run_sync(machines_.assign_session("m", "nope", std::nullopt));
  EXPECT_EQ(r.error().message, "Session with ID nope not found");
  r = run_sync(machines_.assign_session("m", s.session_id, 5.0));
  EXPECT_EQ(r.error().message, "Docker slot 5 is not available on machine m");
  clock_.advance_ms(1000);
  auto ok = run_sync(machines_.assign_session("m", s.session_id, std::nullopt));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->active_sessions, std::vector<std::string>{s.session_id});
  EXPECT_EQ(ok->last_heartbeat, clock_.now());
  auto sess = run_sync(sessions_.get(s.session_id)).value();
  EXPECT_EQ(sess.machine_id, "m");
  EXPECT_EQ(sess.docker_slot, 1.0);
  auto ev = events();
  EXPECT_EQ(ev[ev.size() - 2].type, "machine.session_assigned");
  EXPECT_EQ(ev[ev.size() - 2].session_id, s.session_id);
  EXPECT_EQ(ev.back().type, "session.updated");
  r = run_sync(machines_.assign_session("m", s.session_id, 1.0));
  EXPECT_EQ(r.error().code, errc::conflict);
  EXPECT_EQ(r.error().message, "Session " + s.session_id + " is already assigned to machine m");
  auto other = new_session();
  r = run_sync(machines_.assign_session("m", other.session_id, 1.0));
  EXPECT_EQ(r.error().message, "Docker slot 1 is already occupied by session " + s.session_id);
  r = run_sync(machines_.assign_session("m", other.session_id, std::nullopt));
  EXPECT_EQ(r.error().message, "No available docker slots on machine m - all 1 slots are occupied");
}

TEST_F(MachineServiceTest, HeartbeatBringsOfflineBackWithOneEventAndOtherwiseEmitsNothing) {
  new_machine("m");
  const auto n = events().size();
  clock_.advance_ms(1000);
  auto hb = run_sync(machines_.heartbeat("m")).value();
  EXPECT_FALSE(hb.back_online);
  EXPECT_EQ(hb.m.last_heartbeat, clock_.now());
  EXPECT_EQ(events().size(), n);
  ASSERT_TRUE(run_sync(machines_.deregister("m")));
  EXPECT_EQ(events().back().type, "machine.offline");
  hb = run_sync(machines_.heartbeat("m")).value();
  EXPECT_TRUE(hb.back_online);
  EXPECT_EQ(hb.m.status, machine_status::online);
  EXPECT_EQ(events().back().type, "machine.online");
  set_status("m", machine_status::maintenance);
  const auto m = events().size();
  hb = run_sync(machines_.heartbeat("m")).value();
  EXPECT_FALSE(hb.back_online);
  EXPECT_EQ(hb.m.status, machine_status::maintenance);
  EXPECT_EQ(events().size(), m);
}

TEST_F(MachineServiceTest, OfflineSweepIsStrictAndLeavesMaintenanceAlone) {
  new_machine("a");
  new_machine("maint");
  set_status("maint", machine_status::maintenance);
  clock_.advance_ms(500);
  new_machine("b");
  const auto n = events().size();
  // "a" and "maint" heartbeat at t0, "b" at t0 + 500.
  auto none = run_sync(machines_.sweep_offline(t0 + 10'000, 10'000));
  EXPECT_TRUE(none.empty());  // exactly at the cutoff: not strictly older
  auto gone = run_sync(machines_.sweep_offline(t0 + 10'001, 10'000));
  ASSERT_EQ(gone.size(), 1U);
  EXPECT_EQ(gone[0].m.machine_id, "a");
  EXPECT_EQ(gone[0].m.status, machine_status::offline);
  EXPECT_EQ(gone[0].m.updated_at, t0 + 10'001);
  EXPECT_EQ(events().size(), n + 1);
  EXPECT_EQ(events().back().type, "machine.offline");
  gone = run_sync(machines_.sweep_offline(t0 + 60'000, 10'000));
  ASSERT_EQ(gone.size(), 1U);
  EXPECT_EQ(gone[0].m.machine_id, "b");
  EXPECT_EQ(run_sync(machines_.get("maint")).value().status, machine_status::maintenance);
  EXPECT_TRUE(run_sync(machines_.sweep_offline(t0 + 120'000, 10'000)).empty());
}

TEST_F(MachineServiceTest, AvailabilityCountsActiveSessionsNamingTheMachine) {
  new_machine("m", {1, 2, 3, 4});
  auto mk = [&](std::optional<double> slot, session_status st) {
    create_session_input in;
    in.project_id = "p";
    in.machine_id = "m";
    in.docker_slot = slot;
    auto s = run_sync(sessions_.create(std::move(in))).value();
    if (st != session_status::active) {
      update_session_input u;
      u.status = st;
      ASSERT_TRUE(run_sync(sessions_.update(s.session_id, std::move(u))));
    }
  };
  mk(2, session_status::active);
  mk(3, session_status::paused);
  mk(std::nullopt, session_status::active);
  mk(9, session_status::active);
  auto list = run_sync(machines_.available());
  ASSERT_EQ(list.size(), 1U);
  EXPECT_EQ(list[0].occupied_slots, 2);
  EXPECT_EQ(list[0].available_slot_numbers, (std::vector<std::int64_t>{1, 3, 4}));
}

TEST_F(MachineServiceTest, UpdateGuardsSlotsInUseAndAlwaysBumpsTheHeartbeat) {
  new_machine("m", {1, 2, 3});
  auto s = new_session();
  ASSERT_TRUE(run_sync(machines_.assign_session("m", s.session_id, 2.0)));
  update_machine_input u;
  u.docker_slots = std::vector<double>{1, 3};
  auto r = run_sync(machines_.update("m", u));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message,
            "Cannot remove docker slot 2 - currently in use by session " + s.session_id);
  clock_.advance_ms(1000);
  auto ok = run_sync(machines_.update("m", update_machine_input{})).value();
  EXPECT_EQ(ok.last_heartbeat, clock_.now());
  EXPECT_EQ(ok.docker_slots, (std::vector<std::int64_t>{1, 2, 3}));
  ASSERT_TRUE(run_sync(machines_.release_session("m", s.session_id)));
  EXPECT_EQ(events().back().type, "machine.session_released");
  EXPECT_TRUE(run_sync(machines_.update("m", u)));
  auto again = run_sync(machines_.release_session("m", s.session_id));
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().message, "Session " + s.session_id + " is not assigned to machine m");
}

}  // namespace
}  // namespace statetrack::core
