// One conformance suite for every store backend: row primitives, filters and orders, the
// outbox's gap-free sequence, group commit under concurrency, per-write rollback inside a
// batch, and durability across reopen. Backends are added to the parameter list below.
#include <atomic>
#include <functional>
#include <memory>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "storage/sqlite/sqlite_store.hpp"
#include "storage/store.hpp"
#include "support/run_sync.hpp"
#include "support/temp_dir.hpp"

namespace statetrack::storage {
namespace {

using core::session;
using core::session_status;
using core::timestamp;

struct backend {
  std::string name;
  // Opens (or reopens) the store whose data lives under `dir`.
  std::function<std::unique_ptr<store>(const testing::temp_dir& dir)> open;
};

std::vector<backend> backends() {
  return {{"sqlite", [](const testing::temp_dir& dir) {
             sqlite::store_options o;
             o.path = dir.file("conformance.db");
             return std::unique_ptr<store>(std::make_unique<sqlite::sqlite_store>(o));
           }}};
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
  void SetUp() override { store_ = GetParam().open(dir_); }
  void reopen() {
    store_->close();
    store_.reset();
    store_ = GetParam().open(dir_);
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

  testing::temp_dir dir_;
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
  boost::asio::io_context ioc;
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

TEST_P(StoreConformance, PingAnswers) {
  EXPECT_TRUE(store_->ping().has_value());
}

void PrintTo(const backend& b, std::ostream* os) {
  *os << b.name;
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreConformance, ::testing::ValuesIn(backends()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace statetrack::storage
