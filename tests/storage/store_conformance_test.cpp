// One conformance suite for every store backend: row primitives, filters and orders, the
// outbox's gap-free sequence, group commit under concurrency, per-write rollback inside a
// batch, and durability across reopen. Backends are added to the parameter list below:
// SQLite always, PostgreSQL when ST_PG_CONNINFO names a cluster (each test gets a database of
// its own, dropped afterwards).
#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <tuple>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "storage/pg_support.hpp"
#include "storage/postgres/pg_store.hpp"
#include "storage/sqlite/sqlite_store.hpp"
#include "storage/store.hpp"
#include "support/run_sync.hpp"
#include "support/temp_dir.hpp"

namespace statetrack::storage {
namespace {

using core::session;
using core::session_status;
using core::timestamp;

// Where one test's data lives; open() opens (or reopens) the store over it.
class backend_env {
 public:
  virtual ~backend_env() = default;
  virtual std::unique_ptr<store> open() = 0;
};

struct backend {
  std::string name;
  std::function<std::unique_ptr<backend_env>()> make;
};

class sqlite_env final : public backend_env {
 public:
  std::unique_ptr<store> open() override {
    sqlite::store_options o;
    o.path = dir_.file("conformance.db");
    return std::make_unique<sqlite::sqlite_store>(o);
  }

 private:
  testing::temp_dir dir_;
};

class postgres_env final : public backend_env {
 public:
  explicit postgres_env(std::string base) : db_(std::move(base)) {}
  std::unique_ptr<store> open() override {
    postgres::store_options o;
    o.conninfo = db_.conninfo();
    o.pool_size = 2;
    return std::make_unique<postgres::pg_store>(o);
  }

 private:
  testing::temp_database db_;
};

std::vector<backend> backends() {
  std::vector<backend> out;
  out.push_back(
      {"sqlite", [] { return std::unique_ptr<backend_env>(std::make_unique<sqlite_env>()); }});
  // Always listed, so that test discovery does not depend on the environment; skipped in
  // SetUp when ST_PG_CONNINFO is unset.
  out.push_back({"postgres", []() -> std::unique_ptr<backend_env> {
                   auto base = testing::pg_base_conninfo();
                   if (!base) return nullptr;
                   return std::make_unique<postgres_env>(*base);
                 }});
  return out;
}

session make_session(const std::string& id, const std::string& project, session_status st,
                     std::int64_t created_ms) {
  session s;
  s.oid = "0123456789abcdef01234567";
  s.session_id = id;
  s.project_id = project;
  s.machine_id = "machine-1";
  s.status = st;
  s.last_heartbeat = s.started_at = s.created_at = s.updated_at = timestamp{created_ms};
  s.deadline_at = timestamp{created_ms + 300'000};
  s.sweep_at = s.deadline_at;
  s.metadata = R"({"k":"v"})";
  return s;
}

class StoreConformance : public ::testing::TestWithParam<backend> {
 protected:
  void SetUp() override {
    env_ = GetParam().make();
    if (!env_) GTEST_SKIP() << GetParam().name << ": ST_PG_CONNINFO is not set";
    store_ = env_->open();
  }
  void TearDown() override {
    if (store_) store_->close();
    store_.reset();
    env_.reset();
  }
  void reopen() {
    store_->close();
    store_.reset();
    store_ = env_->open();
  }
  void put(const session& s) {
    store_->write_now([&](write_txn& tx) {
      tx.insert_session(s);
      return true;
    });
  }
  std::vector<session> list(const session_filter& f) {
    std::vector<session> out;
    store_->read_now([&](read_view& v) { out = v.list_sessions(f); });
    return out;
  }

  std::unique_ptr<backend_env> env_;
  std::unique_ptr<store> store_;
};

TEST_P(StoreConformance, SessionRoundTripKeepsEveryField) {
  auto s = make_session("s1", "p", session_status::paused, 1000);
  s.docker_slot = 2.5;
  s.current_task_id = "t1";
  s.completed_at = timestamp{5000};
  s.heartbeat_timeout_s = 42;
  s.epoch = 7;
  put(s);
  std::optional<session> got;
  store_->read_now([&](read_view& v) { got = v.get_session("s1"); });
  ASSERT_TRUE(got);
  EXPECT_EQ(got->project_id, "p");
  EXPECT_EQ(got->status, session_status::paused);
  EXPECT_EQ(got->docker_slot, 2.5);
  EXPECT_EQ(got->current_task_id, "t1");
  EXPECT_EQ(got->completed_at, timestamp{5000});
  EXPECT_EQ(got->metadata, R"({"k":"v"})");
  EXPECT_EQ(got->heartbeat_timeout_s, 42);
  EXPECT_EQ(got->deadline_at, timestamp{301'000});
  EXPECT_EQ(got->sweep_at, timestamp{301'000});
  EXPECT_EQ(got->epoch, 7);
}

TEST_P(StoreConformance, UpdatesOfMissingRowsReportFalse) {
  bool updated = true;
  bool deleted = true;
  store_->write_now([&](write_txn& tx) {
    updated = tx.update_session(make_session("ghost", "p", session_status::active, 1));
    deleted = tx.delete_session("ghost");
    return true;
  });
  EXPECT_FALSE(updated);
  EXPECT_FALSE(deleted);
}

TEST_P(StoreConformance, FiltersAndOrders) {
  put(make_session("a", "p1", session_status::active, 1000));
  put(make_session("b", "p1", session_status::failed, 2000));
  put(make_session("c", "p2", session_status::active, 3000));
  put(make_session("d", "p1", session_status::active, 4000));
  session_filter f;
  f.statuses = status_set::of({session_status::active});
  auto active = list(f);
  ASSERT_EQ(active.size(), 3U);
  EXPECT_EQ(active[0].session_id, "d");  // newest first
  EXPECT_EQ(active[2].session_id, "a");
  f.project_id = "p1";
  EXPECT_EQ(list(f).size(), 2U);
  f.limit = 1;
  f.offset = 1;
  auto page = list(f);
  ASSERT_EQ(page.size(), 1U);
  EXPECT_EQ(page[0].session_id, "a");
  session_filter by_hb;
  by_hb.order = session_order::last_heartbeat_asc;
  by_hb.last_heartbeat_before = timestamp{3000};
  auto old = list(by_hb);
  ASSERT_EQ(old.size(), 2U);
  EXPECT_EQ(old[0].session_id, "a");
  std::vector<std::int64_t> counts;
  store_->read_now([&](read_view& v) { counts = v.count_sessions_by_status(); });
  EXPECT_EQ(counts[static_cast<std::size_t>(session_status::active)], 3);
  EXPECT_EQ(counts[static_cast<std::size_t>(session_status::failed)], 1);
}

TEST_P(StoreConformance, SweepIndexRangeScan) {
  put(make_session("due", "p", session_status::active, 0));          // sweep_at 300000
  put(make_session("later", "p", session_status::active, 100'000));  // sweep_at 400000
  put(make_session("paused", "p", session_status::paused, 0));
  session_filter f;
  f.statuses = status_set::of({session_status::active});
  f.sweep_before = timestamp{350'000};
  f.order = session_order::sweep_asc;
  auto due = list(f);
  ASSERT_EQ(due.size(), 1U);
  EXPECT_EQ(due[0].session_id, "due");
}

TEST_P(StoreConformance, EventsGetGapFreeIncreasingSeqs) {
  std::vector<std::int64_t> seqs;
  for (int i = 0; i < 5; ++i) {
    store_->write_now([&](write_txn& tx) {
      core::event e;
      e.type = "session.created";
      e.occurred_at = timestamp{i};
      e.session_id = "s" + std::to_string(i);
      e.data = "{}";
      seqs.push_back(tx.append_event(e));
      return true;
    });
  }
  for (std::size_t i = 0; i < seqs.size(); ++i)
    EXPECT_EQ(seqs[i], static_cast<std::int64_t>(i + 1));
  std::vector<core::event> events;
  store_->read_now([&](read_view& v) { events = v.events_after(2, 10); });
  ASSERT_EQ(events.size(), 3U);
  EXPECT_EQ(events[0].seq, 3);
  EXPECT_EQ(events[0].session_id, "s2");
}

TEST_P(StoreConformance, RolledBackWriteLeavesNoEventAndNoGap) {
  store_->write_now([&](write_txn& tx) {
    core::event e;
    e.type = "x";
    e.data = "{}";
    tx.append_event(e);
    return false;  // an expected failure: its changes are discarded
  });
  std::int64_t seq = 0;
  store_->write_now([&](write_txn& tx) {
    core::event e;
    e.type = "y";
    e.data = "{}";
    seq = tx.append_event(e);
    return true;
  });
  EXPECT_EQ(seq, 1);
}

TEST_P(StoreConformance, ConcurrentWritesShareCommitsAndAllSurvive) {
  constexpr int threads = 8;
  constexpr int per_thread = 50;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        put(make_session("c-" + std::to_string(t) + "-" + std::to_string(i), "p",
                         session_status::active, i));
      }
    });
  }
  for (auto& th : pool)
    th.join();
  auto st = store_->stats();
  EXPECT_EQ(st.writes, static_cast<std::uint64_t>(threads * per_thread));
  EXPECT_LT(st.commits, st.writes) << "writes from concurrent callers should share commits";
  reopen();
  std::int64_t n = 0;
  store_->read_now([&](read_view& v) { n = v.count_sessions(session_filter{}); });
  EXPECT_EQ(n, threads * per_thread);
}

TEST_P(StoreConformance, AFailingWriteDoesNotSinkItsBatch) {
  // Many async writers: every third one throws after writing; the rest must commit.
  testing::pooled_context pooled;  // outlives the store threads (run_sync.hpp)
  boost::asio::io_context& ioc = pooled.get();
  std::atomic<int> ok{0};
  std::atomic<int> failed{0};
  // The coroutine lambda outlives every coroutine it starts; the index is a parameter, so it
  // is copied into each coroutine frame.
  auto task = [&](int i) -> boost::asio::awaitable<void> {
    write_fn fn = [i](write_txn& tx) {
      tx.insert_session(make_session("b-" + std::to_string(i), "p", session_status::active, i));
      if (i % 3 == 0) throw std::runtime_error("boom");
      return true;
    };
    try {
      co_await store_->run_write(std::move(fn));
      ++ok;
    } catch (const core::storage_error&) {
      ADD_FAILURE() << "a storage error sank the batch";
    } catch (const std::runtime_error&) {
      ++failed;
    }
  };
  for (int i = 0; i < 60; ++i)
    boost::asio::co_spawn(ioc, task(i), boost::asio::detached);
  ioc.run();
  EXPECT_EQ(ok.load(), 40);
  EXPECT_EQ(failed.load(), 20);
  std::int64_t n = 0;
  store_->read_now([&](read_view& v) { n = v.count_sessions(session_filter{}); });
  EXPECT_EQ(n, 40);
  bool present = true;
  store_->read_now([&](read_view& v) { present = v.get_session("b-3").has_value(); });
  EXPECT_FALSE(present);
}

TEST_P(StoreConformance, ApiKeysByPrefixAndRevocation) {
  core::api_key k;
  k.prefix = "st_abcdefgh";
  k.hash = std::string(64, 'a');
  k.name = "ci";
  k.role = core::key_role::write;
  k.created_at = timestamp{1};
  store_->write_now([&](write_txn& tx) {
    tx.insert_api_key(k);
    return true;
  });
  EXPECT_GT(k.id, 0);
  std::optional<core::api_key> found;
  store_->read_now([&](read_view& v) { found = v.find_api_key("st_abcdefgh"); });
  ASSERT_TRUE(found);
  EXPECT_EQ(found->role, core::key_role::write);
  EXPECT_FALSE(found->revoked_at);
  bool revoked = false;
  bool again = true;
  store_->write_now([&](write_txn& tx) {
    revoked = tx.revoke_api_key(k.id, timestamp{2});
    again = tx.revoke_api_key(k.id, timestamp{3});
    return true;
  });
  EXPECT_TRUE(revoked);
  EXPECT_FALSE(again);
}

TEST_P(StoreConformance, ApiKeyScopeMachineAndExpiryRoundTrip) {
  core::api_key k;
  k.prefix = "st_scope123";
  k.hash = std::string(64, 'b');
  k.name = "agent";
  k.role = core::key_role::machine;
  k.machine_id = "host-7";
  k.projects = {"p1", "p \"2\""};
  k.expires_at = timestamp{5000};
  k.created_at = timestamp{1};
  core::api_key plain;
  plain.prefix = "st_plain123";
  plain.hash = std::string(64, 'c');
  plain.name = "plain";
  plain.role = core::key_role::read;
  plain.created_at = timestamp{1};
  store_->write_now([&](write_txn& tx) {
    tx.insert_api_key(k);
    tx.insert_api_key(plain);
    return true;
  });
  std::optional<core::api_key> found;
  std::optional<core::api_key> found_plain;
  store_->read_now([&](read_view& v) {
    found = v.find_api_key("st_scope123");
    found_plain = v.find_api_key("st_plain123");
  });
  ASSERT_TRUE(found && found_plain);
  EXPECT_EQ(found->role, core::key_role::machine);
  EXPECT_EQ(found->machine_id, "host-7");
  EXPECT_EQ(found->projects, k.projects);
  EXPECT_EQ(found->expires_at, timestamp{5000});
  EXPECT_TRUE(found_plain->machine_id.empty());
  EXPECT_TRUE(found_plain->projects.empty());
  EXPECT_FALSE(found_plain->expires_at);
  // expire_api_key only brings an expiry forward, and never touches a revoked key
  bool later = true;
  bool earlier = false;
  bool revoked_one = true;
  store_->write_now([&](write_txn& tx) {
    later = tx.expire_api_key(k.id, timestamp{9000});
    earlier = tx.expire_api_key(k.id, timestamp{3000});
    tx.revoke_api_key(plain.id, timestamp{2});
    revoked_one = tx.expire_api_key(plain.id, timestamp{3000});
    tx.touch_api_key(k.id, timestamp{42});
    return true;
  });
  EXPECT_FALSE(later);
  EXPECT_TRUE(earlier);
  EXPECT_FALSE(revoked_one);
  store_->read_now([&](read_view& v) { found = v.find_api_key("st_scope123"); });
  EXPECT_EQ(found->expires_at, timestamp{3000});
  EXPECT_EQ(found->last_used_at, timestamp{42});
}

TEST_P(StoreConformance, ProjectScopeFiltersSessionsAndTasks) {
  put(make_session("a1", "pa", session_status::active, 1));
  put(make_session("b1", "pb", session_status::active, 2));
  put(make_session("c1", "pc", session_status::active, 3));
  store_->write_now([&](write_txn& tx) {
    for (const auto& [id, sid, proj] :
         {std::tuple{"ta", "a1", "pa"}, std::tuple{"tb", "b1", "pb"}}) {
      core::task t;
      t.oid = "0123456789abcdef01234567";
      t.task_id = id;
      t.session_id = sid;
      t.project_id = proj;
      t.task_name = "x";
      t.created_at = t.updated_at = timestamp{1};
      tx.insert_task(t);
    }
    return true;
  });
  session_filter f;
  f.project_in = {"pa", "pc"};
  std::vector<std::string> ids;
  for (const auto& s : list(f))
    ids.push_back(s.session_id);
  EXPECT_EQ(ids, (std::vector<std::string>{"c1", "a1"}));
  f.project_id = "pb";  // a requested project outside the scope: nothing
  EXPECT_TRUE(list(f).empty());
  std::int64_t n = 0;
  std::vector<core::task> tasks;
  store_->read_now([&](read_view& v) {
    session_filter g;
    g.project_in = {"pb"};
    n = v.count_sessions(g);
    task_filter tf;
    tf.project_in = {"pa"};
    tasks = v.list_tasks(tf);
  });
  EXPECT_EQ(n, 1);
  ASSERT_EQ(tasks.size(), 1U);
  EXPECT_EQ(tasks[0].task_id, "ta");
}

TEST_P(StoreConformance, PingAnswers) {
  EXPECT_TRUE(store_->ping().has_value());
}

TEST_P(StoreConformance, TextRoundTripsByteForByte) {
  auto s = make_session("s-üñí", "p'\"\\;--", session_status::active, 1);
  s.metadata = R"({"emoji":"🙂","quote":"it's","nested":{"a":[1,2.5,null]}})";
  s.directive_reason = std::string("line1\nline2\ttab");
  put(s);
  std::optional<session> got;
  store_->read_now([&](read_view& v) { got = v.get_session("s-üñí"); });
  ASSERT_TRUE(got);
  EXPECT_EQ(got->project_id, s.project_id);
  EXPECT_EQ(got->metadata, s.metadata);
  EXPECT_EQ(got->directive_reason, s.directive_reason);
  EXPECT_FALSE(got->docker_slot);
  EXPECT_FALSE(got->completed_at);
}

TEST_P(StoreConformance, LivenessUpdateTouchesOnlyLivenessColumns) {
  auto s = make_session("s", "p", session_status::stalled, 1000);
  s.current_task_id = "t";
  put(s);
  s.status = session_status::active;
  s.last_heartbeat = timestamp{2000};
  s.deadline_at = timestamp{9000};
  s.updated_at = timestamp{2000};
  s.current_task_id = "ignored";
  bool ok = false;
  store_->write_now([&](write_txn& tx) {
    ok = tx.update_session_liveness(s);
    return true;
  });
  EXPECT_TRUE(ok);
  std::optional<session> got;
  store_->read_now([&](read_view& v) { got = v.get_session("s"); });
  ASSERT_TRUE(got);
  EXPECT_EQ(got->status, session_status::active);
  EXPECT_EQ(got->deadline_at, timestamp{9000});
  EXPECT_EQ(got->sweep_at, timestamp{301'000});
  EXPECT_EQ(got->current_task_id, "t");
}

TEST_P(StoreConformance, CompletedOrderPutsUnfinishedLast) {
  auto a = make_session("a", "p", session_status::failed, 1);
  a.completed_at = timestamp{1000};
  auto b = make_session("b", "p", session_status::failed, 2);
  b.completed_at = timestamp{5000};
  auto c = make_session("c", "p", session_status::failed, 3);
  put(a);
  put(b);
  put(c);
  session_filter f;
  f.order = session_order::completed_desc;
  auto got = list(f);
  ASSERT_EQ(got.size(), 3U);
  EXPECT_EQ(got[0].session_id, "b");
  EXPECT_EQ(got[1].session_id, "a");
  EXPECT_EQ(got[2].session_id, "c");
  f.limit = 2;
  f.offset = 2;
  ASSERT_EQ(list(f).size(), 1U);
  f.limit = 0;
  f.offset = 1;
  EXPECT_EQ(list(f).size(), 2U);
}

TEST_P(StoreConformance, TasksInsertOnceFilterAndDelete) {
  auto t = [](const std::string& id, const std::string& session, core::task_status st,
              std::int64_t created) {
    core::task x;
    x.oid = "0123456789abcdef01234567";
    x.task_id = id;
    x.session_id = session;
    x.project_id = "p";
    x.task_name = "build " + id;
    x.status = st;
    x.created_at = x.updated_at = timestamp{created};
    if (st == core::task_status::completed) x.completed_at = timestamp{created + 10};
    return x;
  };
  bool first = false;
  bool again = true;
  store_->write_now([&](write_txn& tx) {
    first = tx.insert_task(t("t1", "s1", core::task_status::pending, 1));
    again = tx.insert_task(t("t1", "s1", core::task_status::pending, 1));
    tx.insert_task(t("t2", "s1", core::task_status::completed, 2));
    tx.insert_task(t("t3", "s2", core::task_status::in_progress, 3));
    return true;
  });
  EXPECT_TRUE(first);
  EXPECT_FALSE(again);
  std::vector<core::task> of_s1;
  std::int64_t done = 0;
  store_->read_now([&](read_view& v) {
    task_filter f;
    f.session_id = "s1";
    of_s1 = v.list_tasks(f);
    task_filter g;
    g.statuses_any = {core::task_status::completed, core::task_status::failed};
    done = v.count_tasks(g);
  });
  ASSERT_EQ(of_s1.size(), 2U);
  EXPECT_EQ(of_s1[0].task_id, "t2");  // newest first
  EXPECT_EQ(of_s1[0].completed_at, timestamp{12});
  EXPECT_EQ(done, 1);
  std::int64_t deleted = 0;
  store_->write_now([&](write_txn& tx) {
    task_filter f;
    f.statuses_any = {core::task_status::completed};
    f.completed_before = timestamp{100};
    deleted = tx.delete_tasks(f);
    deleted += tx.delete_tasks_of_session("s2");
    return true;
  });
  EXPECT_EQ(deleted, 2);
}

TEST_P(StoreConformance, MachinesKeepSlotsSessionsAndInsertionOrder) {
  core::machine m;
  m.oid = "0123456789abcdef01234567";
  m.machine_id = "m-b";
  m.hostname = "host-b";
  m.docker_slots = {1, 2, 3};
  m.active_sessions = {"s1", "s2"};
  m.last_heartbeat = timestamp{100};
  core::machine n = m;
  n.machine_id = "m-a";
  n.hostname = "host-a";
  n.docker_slots = {};
  n.active_sessions = {};
  n.status = core::machine_status::maintenance;
  bool dup = true;
  store_->write_now([&](write_txn& tx) {
    tx.insert_machine(m);
    tx.insert_machine(n);
    dup = tx.insert_machine(m);
    return true;
  });
  EXPECT_FALSE(dup);
  std::vector<core::machine> all;
  std::vector<core::machine> stale;
  store_->read_now([&](read_view& v) {
    all = v.list_machines(machine_filter{});
    machine_filter f;
    f.status = core::machine_status::online;
    f.last_heartbeat_before = timestamp{200};
    stale = v.list_machines(f);
  });
  ASSERT_EQ(all.size(), 2U);
  EXPECT_EQ(all[0].machine_id, "m-b");  // insertion order
  EXPECT_EQ(all[0].docker_slots, (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(all[0].active_sessions, (std::vector<std::string>{"s1", "s2"}));
  EXPECT_EQ(all[1].status, core::machine_status::maintenance);
  ASSERT_EQ(stale.size(), 1U);
  EXPECT_EQ(stale[0].machine_id, "m-b");
}

TEST_P(StoreConformance, MetaAndSingleUseTickets) {
  core::stream_ticket t;
  t.hash = std::string(64, 'b');
  t.key_id = "env:1";
  t.key_db_id = 0;
  t.role = core::key_role::read;
  t.expires_at = timestamp{10'000};
  core::stream_ticket old = t;
  old.hash = std::string(64, 'c');
  old.expires_at = timestamp{500};
  store_->write_now([&](write_txn& tx) {
    tx.put_meta("k", "v1");
    tx.put_meta("k", "v2");
    tx.insert_ticket(t);
    tx.insert_ticket(old);
    return true;
  });
  std::optional<std::string> v;
  store_->read_now([&](read_view& r) { v = r.get_meta("k"); });
  EXPECT_EQ(v, "v2");
  std::optional<core::stream_ticket> first;
  std::optional<core::stream_ticket> second;
  std::optional<core::stream_ticket> expired;
  store_->write_now([&](write_txn& tx) {
    first = tx.consume_ticket(t.hash, timestamp{1000});
    second = tx.consume_ticket(t.hash, timestamp{1000});
    expired = tx.consume_ticket(old.hash, timestamp{1000});
    tx.delete_meta("k");
    return true;
  });
  ASSERT_TRUE(first);
  EXPECT_EQ(first->key_id, "env:1");
  EXPECT_EQ(first->expires_at, timestamp{10'000});
  EXPECT_FALSE(second);
  EXPECT_FALSE(expired);
  store_->read_now([&](read_view& r) { v = r.get_meta("k"); });
  EXPECT_FALSE(v);
}

TEST_P(StoreConformance, PruneKeepsTheNewestAndSeqsNeverRepeat) {
  for (int i = 0; i < 10; ++i) {
    store_->write_now([&](write_txn& tx) {
      core::event e;
      e.type = "x";
      e.occurred_at = timestamp{i};
      e.session_id = i % 2 == 0 ? "even" : "odd";
      e.data = "{}";
      tx.append_event(e);
      return true;
    });
  }
  std::int64_t pruned = 0;
  store_->write_now([&](write_txn& tx) {
    pruned = tx.prune_events(timestamp{0}, 3);
    return true;
  });
  EXPECT_EQ(pruned, 7);
  std::vector<core::event> left;
  std::vector<core::event> evens;
  std::int64_t last = 0;
  store_->read_now([&](read_view& v) {
    left = v.events_after(0, 100);
    evens = v.session_events("even", 0, 100);
    last = v.last_event_seq();
  });
  ASSERT_EQ(left.size(), 3U);
  EXPECT_EQ(left[0].seq, 8);
  EXPECT_EQ(last, 10);
  ASSERT_EQ(evens.size(), 1U);
  EXPECT_EQ(evens[0].seq, 9);
  std::int64_t next = 0;
  store_->write_now([&](write_txn& tx) {
    core::event e;
    e.type = "y";
    e.data = "{}";
    next = tx.append_event(e);
    return true;
  });
  EXPECT_EQ(next, 11);
}

TEST_P(StoreConformance, RolledBackWritesInABatchLeaveNoGaps) {
  testing::pooled_context pooled;  // outlives the store threads (run_sync.hpp)
  boost::asio::io_context& ioc = pooled.get();
  auto task = [&](int i) -> boost::asio::awaitable<void> {
    write_fn fn = [i](write_txn& tx) {
      core::event e;
      e.type = "t";
      e.data = "{}";
      e.session_id = "w" + std::to_string(i);
      tx.append_event(e);
      tx.append_event(e);
      return i % 3 != 0;  // every third write is an expected failure: rolled back
    };
    co_await store_->run_write(std::move(fn));
  };
  for (int i = 0; i < 90; ++i)
    boost::asio::co_spawn(ioc, task(i), boost::asio::detached);
  ioc.run();
  std::vector<core::event> events;
  store_->read_now([&](read_view& v) { events = v.events_after(0, 1000); });
  ASSERT_EQ(events.size(), 120U);
  for (std::size_t i = 0; i < events.size(); ++i)
    EXPECT_EQ(events[i].seq, static_cast<std::int64_t>(i + 1));
}

// Writes that name the session they read first (heartbeats: run_session_write) and share one
// batch: a backend may fetch the batch's sessions up front and send their liveness updates
// together, but each write must still see the writes queued before it, and a rolled-back or
// throwing write must leave nothing behind.
TEST_P(StoreConformance, HintedWritesInABatchSeeEachOthersChanges) {
  const std::string odd = "we\"ird\\,{id}";  // array-literal syntax inside an id
  for (const char* id : {"h1", "h2", "h3", "h4", "h5", "h6", "f"})
    put(make_session(id, "p", session_status::active, 1000));
  put(make_session(odd, "p", session_status::active, 1000));
  const auto before = store_->stats().commits;

  testing::pooled_context pooled;  // outlives the store threads (run_sync.hpp)
  boost::asio::io_context& ioc = pooled.get();
  std::vector<std::string> outcomes;  // per write, in queue order: "ok", "missing", "threw"
  // Reads the session, moves last_heartbeat on by one, then ends as `end` says (`full`: the
  // whole row is written, with new metadata, instead of the liveness columns).
  enum class end { keep, roll_back, throw_after, append_event, full };
  auto bump = [&](std::string id, end how) -> boost::asio::awaitable<void> {
    const auto slot = outcomes.size();
    outcomes.emplace_back();
    write_fn fn = [&outcomes, slot, id, how](write_txn& tx) {
      auto got = tx.get_session(id);
      if (!got) {
        outcomes[slot] = "missing";
        return false;
      }
      got->last_heartbeat = timestamp{got->last_heartbeat.ms + 1};
      if (how == end::full) {
        got->metadata = R"({"full":true})";
        if (!tx.update_session(*got)) return false;
      } else if (!tx.update_session_liveness(*got)) {
        return false;
      }
      if (how == end::throw_after) throw std::runtime_error("after the update");
      if (how == end::append_event) {
        core::event e;
        e.type = "bumped";
        e.session_id = id;
        e.data = "{}";
        tx.append_event(e);
      }
      outcomes[slot] = "ok";
      return how != end::roll_back;
    };
    try {
      co_await store_->run_session_write(id, std::move(fn));
    } catch (const std::runtime_error&) {
      outcomes[slot] = "threw";
    }
  };
  auto insert = [&](std::string id) -> boost::asio::awaitable<void> {
    outcomes.emplace_back("ok");
    co_await store_->run_write([id](write_txn& tx) {
      tx.insert_session(make_session(id, "p", session_status::active, 1000));
      return true;
    });
  };
  // Queued in this order, before the writer runs.
  auto spawn = [&](boost::asio::awaitable<void> a) {
    boost::asio::co_spawn(ioc, std::move(a), boost::asio::detached);
  };
  spawn(bump("h1", end::keep));
  spawn(bump("h1", end::keep));
  spawn(bump("h2", end::roll_back));
  spawn(bump("h1", end::append_event));
  spawn(bump("h3", end::throw_after));
  spawn(insert("new"));  // created earlier in the batch than the write that reads it
  spawn(bump("new", end::keep));
  spawn(bump("gone", end::keep));
  spawn(bump(odd, end::keep));
  spawn(bump("h4", end::keep));
  spawn(bump("h1", end::keep));
  spawn(bump("h4", end::roll_back));
  spawn(bump("f", end::full));
  spawn(bump("f", end::keep));   // reads the whole-row write above
  spawn(bump("h5", end::keep));  // the last two travel together with the COMMIT
  spawn(bump("h6", end::keep));
  ioc.run();

  EXPECT_EQ(outcomes,
            (std::vector<std::string>{"ok", "ok", "ok", "ok", "threw", "ok", "ok", "missing", "ok",
                                      "ok", "ok", "ok", "ok", "ok", "ok", "ok"}));
  EXPECT_EQ(store_->stats().commits - before, 1U) << "the writes should share one commit";
  // No batch ran twice: the fast path (PostgreSQL: the batch fetch, held statements, the
  // multi-row update) did all of it, rather than a fallback.
  EXPECT_EQ(store_->stats().batch_retries, 0U);
  auto hb = [&](const std::string& id) -> std::int64_t {
    std::optional<session> got;
    store_->read_now([&](read_view& v) { got = v.get_session(id); });
    return got ? got->last_heartbeat.ms : -1;
  };
  reopen();                   // what was committed, not what a cache remembers
  EXPECT_EQ(hb("h1"), 1004);  // four bumps, each reading the one before
  EXPECT_EQ(hb("h2"), 1000);  // rolled back
  EXPECT_EQ(hb("h3"), 1000);  // threw
  EXPECT_EQ(hb("h4"), 1001);  // the second bump rolled back
  EXPECT_EQ(hb("new"), 1001);
  EXPECT_EQ(hb("gone"), -1);
  EXPECT_EQ(hb(odd), 1001);
  EXPECT_EQ(hb("f"), 1002);
  EXPECT_EQ(hb("h5"), 1001);
  EXPECT_EQ(hb("h6"), 1001);
  std::optional<session> f;
  store_->read_now([&](read_view& v) { f = v.get_session("f"); });
  ASSERT_TRUE(f);
  EXPECT_EQ(f->metadata, R"({"full":true})");
  std::vector<core::event> events;
  store_->read_now([&](read_view& v) { events = v.events_after(0, 10); });
  ASSERT_EQ(events.size(), 1U);
  EXPECT_EQ(events[0].session_id, "h1");
}

TEST_P(StoreConformance, LookupsWithBytesNoRowHoldsFindNothing) {
  put(make_session("s", "p", session_status::active, 1));
  // Percent-decoded path segments and headers can carry any bytes.
  const std::string bad = "\xff\xfe";
  const std::string nul("a\0b", 3);
  store_->read_now([&](read_view& v) {
    EXPECT_FALSE(v.get_session(bad));
    EXPECT_FALSE(v.get_session(nul));
    EXPECT_FALSE(v.get_task(bad));
    EXPECT_FALSE(v.get_machine(bad));
    EXPECT_FALSE(v.find_api_key(bad));
    session_filter f;
    f.project_id = bad;
    EXPECT_TRUE(v.list_sessions(f).empty());
    EXPECT_EQ(v.count_sessions(f), 0);
    task_filter t;
    t.session_id = bad;
    EXPECT_TRUE(v.list_tasks(t).empty());
    EXPECT_TRUE(v.session_events(bad, 0, 10).empty());
  });
  bool deleted = true;
  store_->write_now([&](write_txn& tx) {
    deleted = tx.delete_session(bad);
    EXPECT_FALSE(tx.get_session(bad));
    return true;
  });
  EXPECT_FALSE(deleted);
}

void PrintTo(const backend& b, std::ostream* os) {
  *os << b.name;
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreConformance, ::testing::ValuesIn(backends()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace statetrack::storage
