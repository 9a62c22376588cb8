// What only the PostgreSQL store has to get right: several instances on one database (sweeps
// that stall each session once, one mass-stall incident, events visible in seq order with no
// gaps, LISTEN/NOTIFY between instances, no lost updates, deadlocks retried), outages (a
// stopped or hung server fails operations within the timeout, service resumes by itself) and
// start-up (concurrent migrations). The connection-string and circuit-breaker rules need no
// database; the rest is skipped unless ST_PG_CONNINFO names a cluster.
#include "storage/postgres/pg_store.hpp"

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <gtest/gtest.h>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/machine_service.hpp"
#include "core/session_service.hpp"
#include "obs/metrics.hpp"
#include "storage/pg_support.hpp"
#include "storage/postgres/breaker.hpp"
#include "storage/postgres/conninfo.hpp"
#include "storage/postgres/schema.hpp"
#include "storage/tcp_proxy.hpp"
#include "support/run_sync.hpp"

namespace statetrack::storage::postgres {
namespace {

using core::session;
using core::session_status;
using core::storage_error;
using core::timestamp;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// ------------------------------------------------------------------ no database needed

TEST(PgConninfo, ClassifiesDbValues) {
  EXPECT_TRUE(is_conninfo("postgres://u@h/db"));
  EXPECT_TRUE(is_conninfo("postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write"));
  EXPECT_TRUE(is_conninfo("host=127.0.0.1 port=5432 dbname=st"));
  EXPECT_TRUE(is_conninfo("  dbname = st"));
  EXPECT_FALSE(is_conninfo("./var/statetrack.db"));
  EXPECT_FALSE(is_conninfo("/tmp/a=b.db"));
  EXPECT_FALSE(is_conninfo("statetrack.db"));
  EXPECT_FALSE(is_conninfo(""));
}

TEST(PgConninfo, RedactsThePasswordAndRewritesTheDatabase) {
  auto r =
      redact("postgresql://alice:s3cret@db1:5432,db2:5433/prod?target_session_attrs=read-write");
  EXPECT_EQ(r.find("s3cret"), std::string::npos);
  EXPECT_NE(r.find("db1,db2"), std::string::npos);
  EXPECT_NE(r.find("read-write"), std::string::npos);
  EXPECT_EQ(redact("host=h password='x y' dbname=d").find("x y"), std::string::npos);
  auto w = with_dbname("host=h port=1 dbname=postgres", "it's");
  EXPECT_NE(w.find(R"(dbname='it\'s')"), std::string::npos);
  EXPECT_NE(with_dbname("host=h", "other").find("dbname='other'"), std::string::npos);
  EXPECT_THROW(with_dbname("host='unterminated", "x"), std::invalid_argument);
}

TEST(PgBreaker, BacksOffOneProbeAtATimeAndOpensAfterTheBound) {
  breaker::options o{100ms, 400ms, 1000ms};
  breaker b(o);
  const auto t0 = steady::now();
  EXPECT_TRUE(b.up());
  EXPECT_TRUE(b.try_claim(t0));
  EXPECT_TRUE(b.try_claim(t0));  // while up anyone may connect
  b.record_failure("refused", t0);
  EXPECT_FALSE(b.up());
  EXPECT_EQ(b.last_error(), "refused");
  EXPECT_FALSE(b.try_claim(t0 + 50ms));  // backoff 100 ms
  EXPECT_TRUE(b.try_claim(t0 + 100ms));
  EXPECT_FALSE(b.try_claim(t0 + 100ms));  // one probe at a time
  b.record_failure("refused", t0 + 100ms);
  EXPECT_FALSE(b.try_claim(t0 + 250ms));  // now 200 ms
  EXPECT_TRUE(b.try_claim(t0 + 300ms));
  b.record_failure("refused", t0 + 300ms);
  EXPECT_TRUE(b.try_claim(t0 + 700ms));  // 400 ms
  b.record_failure("refused", t0 + 700ms);
  EXPECT_FALSE(b.try_claim(t0 + 1000ms));  // capped at 400 ms
  EXPECT_TRUE(b.try_claim(t0 + 1100ms));
  EXPECT_FALSE(b.open(t0 + 900ms));
  EXPECT_TRUE(b.open(t0 + 1000ms));
  EXPECT_TRUE(b.fail_fast(t0 + 1100ms));  // open, and the claimed attempt is under way
  b.record_failure("refused", t0 + 1100ms);
  EXPECT_TRUE(b.fail_fast(t0 + 1200ms));   // the next attempt is not due yet
  EXPECT_FALSE(b.fail_fast(t0 + 1500ms));  // due: one request goes through as the probe
  b.record_success();
  EXPECT_TRUE(b.up());
  EXPECT_FALSE(b.open(t0 + 5000ms));
  EXPECT_EQ(b.last_error(), "");
  b.record_failure("again", t0 + 6000ms);
  EXPECT_TRUE(b.try_claim(t0 + 6100ms));  // the backoff starts over
}

// ------------------------------------------------------------------ database needed

session make_session(const std::string& id, session_status st, std::int64_t deadline_ms,
                     const std::string& machine = "machine-1") {
  session s;
  s.oid = "0123456789abcdef01234567";
  s.session_id = id;
  s.project_id = "p";
  s.machine_id = machine;
  s.status = st;
  s.last_heartbeat = s.started_at = s.created_at = s.updated_at = timestamp{1000};
  s.deadline_at = timestamp{deadline_ms};
  s.sweep_at = s.deadline_at;
  return s;
}

class PgStore : public ::testing::Test {
 protected:
  void SetUp() override {
    auto base = testing::pg_base_conninfo();
    if (!base) GTEST_SKIP() << "ST_PG_CONNINFO is not set";
    base_ = *base;
    db_ = std::make_unique<testing::temp_database>(base_);
  }
  std::unique_ptr<pg_store> open(std::chrono::milliseconds timeout = 5000ms, int pool = 2,
                                 const std::string& conninfo = "", bool listen = true) {
    store_options o;
    o.conninfo = conninfo.empty() ? db_->conninfo() : conninfo;
    o.pool_size = pool;
    o.timeout = timeout;
    o.listen = listen;
    return std::make_unique<pg_store>(o);
  }
  std::int64_t scalar(const std::string& sql) { return testing::pg_scalar(db_->conninfo(), sql); }

  std::string base_;
  std::unique_ptr<testing::temp_database> db_;
};

TEST_F(PgStore, ConcurrentSweepsOnTwoInstancesStallEachSessionOnce) {
  auto a = open();
  auto b = open();
  constexpr int n = 300;
  a->write_now([&](write_txn& tx) {
    for (int i = 0; i < n; ++i)
      tx.insert_session(make_session("s" + std::to_string(i), session_status::active, 5000));
    return true;
  });
  core::manual_clock clk(timestamp{10'000});
  core::session_service sa(*a, clk);
  core::session_service sb(*b, clk);
  std::atomic<int> stalled{0};
  auto sweeper = [&](core::session_service& svc) {
    for (int round = 0; round < 40; ++round) {
      // No brake: this test is about the transitions.
      auto out = testing::run_sync(svc.sweep_stalled(timestamp{10'000}, 40, {0.5, 0}));
      stalled += static_cast<int>(out.stalled.size());
    }
  };
  std::thread ta([&] { sweeper(sa); });
  std::thread tb([&] { sweeper(sb); });
  ta.join();
  tb.join();
  EXPECT_EQ(stalled.load(), n);
  EXPECT_EQ(scalar("SELECT count(*) FROM sessions WHERE status = 'stalled'"), n);
  EXPECT_EQ(scalar("SELECT count(*) FROM events WHERE type = 'session.stalled'"), n);
  EXPECT_EQ(scalar("SELECT count(DISTINCT session_id) FROM events WHERE type = 'session.stalled'"),
            n);
}

TEST_F(PgStore, MassStallBrakeOpensOneIncidentAcrossInstances) {
  auto a = open();
  auto b = open();
  a->write_now([&](write_txn& tx) {
    for (int i = 0; i < 40; ++i)
      tx.insert_session(make_session("s" + std::to_string(i), session_status::active, 5000));
    return true;
  });
  core::manual_clock clk(timestamp{10'000});
  core::session_service sa(*a, clk);
  core::session_service sb(*b, clk);
  std::atomic<int> opened{0};
  auto sweeper = [&](core::session_service& svc) {
    for (int round = 0; round < 5; ++round) {
      auto out = testing::run_sync(svc.sweep_stalled(timestamp{10'000}, 1000, {0.5, 10}));
      EXPECT_TRUE(out.braked);
      EXPECT_TRUE(out.stalled.empty());
      opened += out.incident_opened ? 1 : 0;
    }
  };
  std::thread ta([&] { sweeper(sa); });
  std::thread tb([&] { sweeper(sb); });
  ta.join();
  tb.join();
  EXPECT_EQ(opened.load(), 1);
  EXPECT_EQ(scalar("SELECT count(*) FROM events WHERE type = 'incident.mass_stall'"), 1);
  EXPECT_EQ(scalar("SELECT count(*) FROM events WHERE type = 'incident.resolved'"), 0);
  EXPECT_EQ(scalar("SELECT count(*) FROM sessions WHERE status = 'active'"), 40);
}

TEST_F(PgStore, ConcurrentMachineSweepsTakeEachMachineOfflineOnce) {
  auto a = open();
  auto b = open();
  a->write_now([&](write_txn& tx) {
    for (int m = 0; m < 20; ++m) {
      core::machine mc;
      mc.oid = "0123456789abcdef01234567";
      mc.machine_id = "m" + std::to_string(m);
      mc.hostname = "h";
      mc.last_heartbeat = timestamp{1000};
      tx.insert_machine(mc);
      for (int i = 0; i < 3; ++i) {
        tx.insert_session(make_session(mc.machine_id + "-s" + std::to_string(i),
                                       session_status::active, 999'999, mc.machine_id));
      }
    }
    return true;
  });
  core::manual_clock clk(timestamp{100'000});
  core::machine_service ma(*a, clk);
  core::machine_service mb(*b, clk);
  std::atomic<int> offline{0};
  std::atomic<int> cascaded{0};
  auto sweeper = [&](core::machine_service& svc) {
    for (int round = 0; round < 5; ++round) {
      for (auto& o : testing::run_sync(svc.sweep_offline(timestamp{100'000}, 60'000))) {
        ++offline;
        cascaded += static_cast<int>(o.affected_sessions.size());
      }
    }
  };
  std::thread ta([&] { sweeper(ma); });
  std::thread tb([&] { sweeper(mb); });
  ta.join();
  tb.join();
  EXPECT_EQ(offline.load(), 20);
  EXPECT_EQ(cascaded.load(), 60);
  EXPECT_EQ(scalar("SELECT count(*) FROM events WHERE type = 'machine.offline'"), 20);
  EXPECT_EQ(scalar("SELECT count(*) FROM sessions WHERE status = 'stalled'"), 60);
}

TEST_F(PgStore, EventsOfAllInstancesAreGapFreeAndVisibleInSeqOrder) {
  auto a = open();
  auto b = open();
  std::atomic<bool> writing{true};
  std::atomic<int> kept{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) {
    pg_store& s = w % 2 == 0 ? *a : *b;
    writers.emplace_back([&s, &kept, w] {
      for (int i = 0; i < 60; ++i) {
        const int events = 1 + (i % 3);
        const bool keep = (i + w) % 4 != 0;
        s.write_now([&](write_txn& tx) {
          for (int e = 0; e < events; ++e) {
            core::event ev;
            ev.type = "t";
            ev.data = "{}";
            ev.session_id = "w" + std::to_string(w);
            tx.append_event(ev);
          }
          return keep;
        });
        if (keep) kept += events;
      }
    });
  }
  // A reader on a third connection polls the log: every batch it sees must continue exactly
  // where the previous one ended (a gap would be read as pruned history by subscribers).
  std::int64_t last = 0;
  int violations = 0;
  std::thread reader([&] {
    for (;;) {
      const bool done = !writing.load();
      std::vector<core::event> got;
      a->read_now([&](read_view& v) { got = v.events_after(last, 500); });
      for (const auto& e : got) {
        if (e.seq != last + 1) ++violations;
        last = e.seq;
      }
      if (done && got.empty()) break;
    }
  });
  for (auto& t : writers)
    t.join();
  writing = false;
  reader.join();
  EXPECT_EQ(violations, 0);
  EXPECT_EQ(last, kept.load());
  EXPECT_EQ(scalar("SELECT last FROM event_counter"), kept.load());
}

TEST_F(PgStore, NotifyAnnouncesCommitsToOtherInstances) {
  auto a = open();
  auto b = open();
  std::mutex m;
  std::condition_variable cv;
  std::int64_t seen = 0;
  b->on_events_committed([&](std::int64_t seq) {
    std::lock_guard lk(m);
    seen = std::max(seen, seq);
    cv.notify_all();
  });
  for (int i = 0; i < 3; ++i) {
    a->write_now([&](write_txn& tx) {
      core::event e;
      e.type = "session.created";
      e.data = "{}";
      tx.append_event(e);
      return true;
    });
  }
  std::unique_lock lk(m);
  EXPECT_TRUE(cv.wait_for(lk, 5s, [&] { return seen >= 3; })) << "seen " << seen;
}

TEST_F(PgStore, ConflictingReadModifyWritesThroughTwoInstancesLoseNothing) {
  auto a = open();
  auto b = open();
  a->write_now([&](write_txn& tx) {
    auto s = make_session("hot", session_status::active, 999'999);
    s.metadata = R"({"n":0})";
    tx.insert_session(s);
    return true;
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    pg_store& s = t % 2 == 0 ? *a : *b;
    threads.emplace_back([&s] {
      for (int i = 0; i < 40; ++i) {
        s.write_now([](write_txn& tx) {
          auto cur = tx.get_session("hot");
          auto doc = boost::json::parse(cur->metadata).as_object();
          doc["n"] = doc["n"].as_int64() + 1;
          cur->metadata = boost::json::serialize(doc);
          return tx.update_session(*cur);
        });
      }
    });
  }
  for (auto& t : threads)
    t.join();
  std::optional<session> got;
  b->read_now([&](read_view& v) { got = v.get_session("hot"); });
  ASSERT_TRUE(got);
  EXPECT_EQ(got->metadata, R"({"n":240})");
}

// Heartbeat batches (run_session_write) fetch and lock all their sessions in one statement.
// Two instances whose batches name the same sessions, queued in opposite orders, must neither
// deadlock each other nor lose an update: every read-modify-write lands once.
TEST_F(PgStore, HeartbeatBatchesOfTwoInstancesOverTheSameSessionsLoseNothing) {
  auto a = open();
  auto b = open();
  constexpr int sessions = 12;
  constexpr int rounds = 15;
  a->write_now([&](write_txn& tx) {
    for (int i = 0; i < sessions; ++i)
      tx.insert_session(make_session("s" + std::to_string(i), session_status::active, 999'999));
    return true;
  });
  auto run = [&](pg_store& st, bool reverse, std::atomic<int>& failed) {
    testing::pooled_context pooled;  // outlives the store threads (run_sync.hpp)
    boost::asio::io_context& ioc = pooled.get();
    auto bump = [&](std::string id) -> boost::asio::awaitable<void> {
      try {
        co_await st.run_session_write(id, [id](write_txn& tx) {
          auto s = tx.get_session(id);
          if (!s) return false;
          s->last_heartbeat = timestamp{s->last_heartbeat.ms + 1};
          return tx.update_session_liveness(*s);
        });
      } catch (const std::exception&) {
        ++failed;
      }
    };
    for (int r = 0; r < rounds; ++r) {
      for (int i = 0; i < sessions; ++i) {
        const int n = reverse ? sessions - 1 - i : i;
        boost::asio::co_spawn(ioc, bump("s" + std::to_string(n)), boost::asio::detached);
      }
      ioc.run();
      ioc.restart();
    }
  };
  std::atomic<int> failed{0};
  std::thread ta([&] { run(*a, false, failed); });
  std::thread tb([&] { run(*b, true, failed); });
  ta.join();
  tb.join();
  EXPECT_EQ(failed.load(), 0);
  // Each batch locked its sessions in id order in one statement: no deadlock to retry (taking
  // them one write at a time, in queue order, the two instances would cross).
  EXPECT_EQ(a->stats().batch_retries + b->stats().batch_retries, 0U);
  for (int i = 0; i < sessions; ++i) {
    std::optional<session> got;
    b->read_now([&](read_view& v) { got = v.get_session("s" + std::to_string(i)); });
    ASSERT_TRUE(got);
    EXPECT_EQ(got->last_heartbeat.ms, 1000 + 2 * rounds) << got->session_id;
  }
}

TEST_F(PgStore, DeadlockBetweenInstancesIsRetriedAndBothWritesLand) {
  auto a = open();
  auto b = open();
  a->write_now([&](write_txn& tx) {
    tx.insert_session(make_session("x", session_status::active, 999'999));
    tx.insert_session(make_session("y", session_status::active, 999'999));
    return true;
  });
  // Each locks one row, waits, then wants the other's: a cycle PostgreSQL breaks by failing
  // one transaction, which the store runs again.
  auto crossing = [](const std::string& first, const std::string& second, const std::string& tag) {
    return [first, second, tag](write_txn& tx) {
      auto p = tx.get_session(first);
      std::this_thread::sleep_for(300ms);
      auto q = tx.get_session(second);
      p->directive_reason = p->directive_reason.value_or("") + tag;
      q->directive_reason = q->directive_reason.value_or("") + tag;
      tx.update_session(*p);
      tx.update_session(*q);
      return true;
    };
  };
  std::exception_ptr ea;
  std::exception_ptr eb;
  std::thread ta([&] {
    try {
      a->write_now(crossing("x", "y", "A"));
    } catch (...) {
      ea = std::current_exception();
    }
  });
  std::thread tb([&] {
    try {
      b->write_now(crossing("y", "x", "B"));
    } catch (...) {
      eb = std::current_exception();
    }
  });
  ta.join();
  tb.join();
  EXPECT_FALSE(ea);
  EXPECT_FALSE(eb);
  std::optional<session> x;
  a->read_now([&](read_view& v) { x = v.get_session("x"); });
  ASSERT_TRUE(x && x->directive_reason);
  EXPECT_EQ(x->directive_reason->size(), 2U);  // both writes, in one order or the other
}

TEST_F(PgStore, AFailingDeferredUpdateFailsOnlyItsOwnWrite) {
  // Updates of locked rows travel with the next round trip (heartbeats' liveness updates as one
  // multi-row statement); when one fails after all, the batch runs again with every statement
  // waiting for its result, so the error reaches the write that caused it and no other.
  obs::registry metrics;
  store_options o;
  o.conninfo = db_->conninfo();
  auto s = std::make_unique<pg_store>(o, &metrics);
  s->write_now([&](write_txn& tx) {
    for (int i = 0; i < 30; ++i)
      tx.insert_session(make_session("d" + std::to_string(i), session_status::active, 999'999));
    return true;
  });
  testing::pg_query(db_->conninfo(), R"sql(
    CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.metadata = '{"refuse":true}' OR NEW.last_heartbeat = 4242 THEN
        RAISE EXCEPTION 'refused by test trigger';
      END IF;
      RETURN NEW;
    END $$;
    CREATE TRIGGER refuse BEFORE UPDATE ON sessions FOR EACH ROW EXECUTE FUNCTION refuse();
  )sql");
  // One batch of 30 writes, d7's refused if `refuse`; `heartbeat`: liveness updates named by
  // session.
  auto run_batch = [&](bool heartbeat, bool refuse) {
    testing::pooled_context pooled;  // outlives the store threads (run_sync.hpp)
    boost::asio::io_context& ioc = pooled.get();
    std::atomic<int> ok{0};
    std::vector<std::string> failed;
    auto task = [&](int i) -> boost::asio::awaitable<void> {
      const std::string id = "d" + std::to_string(i);
      const bool refused = refuse && i == 7;
      write_fn fn = [id, heartbeat, refused](write_txn& tx) {
        auto cur = tx.get_session(id);
        if (heartbeat) {
          cur->last_heartbeat = timestamp{refused ? 4242 : 5000};
          return tx.update_session_liveness(*cur);
        }
        cur->metadata = refused ? R"({"refuse":true})" : R"({"n":1})";
        return tx.update_session(*cur);
      };
      try {
        if (heartbeat) {
          co_await s->run_session_write(id, std::move(fn));
        } else {
          co_await s->run_write(std::move(fn));
        }
        ++ok;
      } catch (const storage_error&) {
        failed.push_back(id);
      }
    };
    for (int i = 0; i < 30; ++i)
      boost::asio::co_spawn(ioc, task(i), boost::asio::detached);
    ioc.run();
    EXPECT_EQ(ok.load(), refuse ? 29 : 30);
    EXPECT_EQ(failed, refuse ? std::vector<std::string>{"d7"} : std::vector<std::string>{});
  };
  // The batch really went the deferred way first, then ran again in safe mode.
  auto retries = [&] {
    const auto text = metrics.render_prometheus();
    const auto at = text.find("statetrack_store_batch_retries_total{");
    if (at == std::string::npos) return std::string("missing");
    const auto line = text.substr(at, text.find('\n', at) - at);
    return line.substr(line.rfind(' ') + 1);
  };
  run_batch(false, true);
  EXPECT_EQ(scalar(R"(SELECT count(*) FROM sessions WHERE metadata = '{"n":1}')"), 29);
  EXPECT_EQ(retries(), "1");
  // Control: the same heartbeats with nothing refused go through without a rerun, so the rerun
  // below is the refused multi-row update's.
  run_batch(true, false);
  EXPECT_EQ(retries(), "1");
  EXPECT_EQ(scalar("SELECT count(*) FROM sessions WHERE last_heartbeat = 5000"), 30);
  testing::pg_query(db_->conninfo(), "UPDATE sessions SET last_heartbeat = 1000");
  run_batch(true, true);
  EXPECT_EQ(scalar("SELECT count(*) FROM sessions WHERE last_heartbeat = 5000"), 29);
  EXPECT_EQ(scalar("SELECT count(*) FROM sessions WHERE session_id = 'd7' AND last_heartbeat = "
                   "1000"),
            1);
  EXPECT_EQ(retries(), "2");
}

TEST_F(PgStore, TerminatedConnectionsAreReplacedWithoutAnError) {
  auto s = open();
  s->write_now([&](write_txn& tx) {
    tx.insert_session(make_session("a", session_status::active, 1));
    return true;
  });
  std::optional<session> got;
  s->read_now([&](read_view& v) { got = v.get_session("a"); });
  // An administrator (or a restart, or a failover) ends every connection of this database.
  testing::pg_query(base_,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" +
                        db_->name() + "'");
  EXPECT_NO_THROW(s->write_now([&](write_txn& tx) {
    tx.insert_session(make_session("b", session_status::active, 1));
    return true;
  }));
  std::int64_t n = 0;
  EXPECT_NO_THROW(s->read_now([&](read_view& v) { n = v.count_sessions(session_filter{}); }));
  EXPECT_EQ(n, 2);
}

// Runs an async read on a pooled io_context; returns how long it took and what it threw.
std::pair<std::chrono::milliseconds, std::exception_ptr> timed_async_read(store& s) {
  testing::pooled_context pooled;  // outlives the store threads (run_sync.hpp)
  boost::asio::io_context& ioc = pooled.get();
  std::exception_ptr ep;
  const auto t0 = steady::now();
  boost::asio::co_spawn(
      ioc,
      [&]() -> boost::asio::awaitable<void> {
        read_fn fn = [](read_view& v) { v.count_sessions(session_filter{}); };
        co_await s.run_read(std::move(fn));
      },
      [&](std::exception_ptr e) { ep = e; });
  ioc.run();
  return {std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0), ep};
}

bool is_unavailable(const std::exception_ptr& ep) {
  try {
    std::rethrow_exception(ep);
  } catch (const storage_error& e) {
    return e.which() == storage_error::kind::unavailable;
  } catch (...) {
    return false;
  }
}

TEST_F(PgStore, StoppedDatabaseFailsWithinTheTimeoutThenServiceResumesByItself) {
  const std::string host = testing::pg_param(base_, "host");
  if (host.empty() || host.front() == '/') GTEST_SKIP() << "needs a TCP host in ST_PG_CONNINFO";
  testing::tcp_proxy proxy(host, std::stoi(testing::pg_param(base_, "port")));
  const auto via_proxy = testing::pg_with(db_->conninfo(), "port", std::to_string(proxy.port()));
  auto s = open(1000ms, 2, via_proxy);
  auto write_one = [&](const std::string& id) {
    s->write_now([&](write_txn& tx) {
      tx.insert_session(make_session(id, session_status::active, 1));
      return true;
    });
  };
  write_one("before");  // acknowledged: must survive the outage

  proxy.set(testing::tcp_proxy::mode::down);
  auto t0 = steady::now();
  std::exception_ptr ep;
  try {
    write_one("during");
  } catch (...) {
    ep = std::current_exception();
  }
  auto took = steady::now() - t0;
  EXPECT_TRUE(is_unavailable(ep));
  EXPECT_LE(took, 1500ms);
  EXPECT_FALSE(s->ping().has_value());
  auto [read_took, read_ep] = timed_async_read(*s);
  EXPECT_TRUE(is_unavailable(read_ep));
  EXPECT_LE(read_took, 1500ms);
  EXPECT_FALSE(s->last_error().empty());

  // Long enough for the breaker to open and the backoff to grow to its ceiling.
  std::this_thread::sleep_for(5s);
  t0 = steady::now();
  EXPECT_THROW(write_one("open"), storage_error);
  EXPECT_LE(steady::now() - t0, 100ms) << "an open circuit fails at once";

  proxy.set(testing::tcp_proxy::mode::forward);
  const auto back = steady::now();
  bool ok = false;
  while (!ok && steady::now() - back < 10s) {
    try {
      write_one("after");
      ok = true;
    } catch (const storage_error&) {
      std::this_thread::sleep_for(50ms);
    }
  }
  ASSERT_TRUE(ok);
  EXPECT_LE(steady::now() - back, 5s) << "service must resume within 5 s";
  EXPECT_TRUE(s->ping().has_value());
  std::optional<session> before;
  s->read_now([&](read_view& v) { before = v.get_session("before"); });
  EXPECT_TRUE(before.has_value());
}

TEST_F(PgStore, RequestsAloneProbeAnOpenCircuitAndFindTheDatabaseBack) {
  // No listener (as in the CLI): nothing probes in the background, so with the circuit open a
  // request must still go through as the probe once a reconnect attempt is due.
  const std::string host = testing::pg_param(base_, "host");
  if (host.empty() || host.front() == '/') GTEST_SKIP() << "needs a TCP host in ST_PG_CONNINFO";
  testing::tcp_proxy proxy(host, std::stoi(testing::pg_param(base_, "port")));
  const auto via_proxy = testing::pg_with(db_->conninfo(), "port", std::to_string(proxy.port()));
  auto s = open(500ms, 1, via_proxy, false);
  auto count = [&] {
    std::int64_t n = 0;
    s->read_now([&](read_view& v) { n = v.count_sessions(session_filter{}); });
    return n;
  };
  auto write_one = [&] {
    s->write_now([&](write_txn& tx) {
      tx.insert_session(make_session("x" + std::to_string(steady::now().time_since_epoch().count()),
                                     session_status::active, 1));
      return true;
    });
  };
  EXPECT_EQ(count(), 0);
  proxy.set(testing::tcp_proxy::mode::down);
  const auto down = steady::now();
  while (steady::now() - down < 2s) {
    try {
      write_one();
    } catch (const storage_error&) {
    }
    std::this_thread::sleep_for(20ms);
  }
  proxy.set(testing::tcp_proxy::mode::forward);
  const auto back = steady::now();
  bool ok = false;
  while (!ok && steady::now() - back < 10s) {
    try {
      write_one();
      ok = true;
    } catch (const storage_error&) {
      std::this_thread::sleep_for(20ms);
    }
  }
  ASSERT_TRUE(ok);
  EXPECT_LE(steady::now() - back, 5s);
  EXPECT_GE(count(), 1);
}

TEST_F(PgStore, HungDatabaseFailsWithinTheTimeout) {
  const std::string host = testing::pg_param(base_, "host");
  if (host.empty() || host.front() == '/') GTEST_SKIP() << "needs a TCP host in ST_PG_CONNINFO";
  testing::tcp_proxy proxy(host, std::stoi(testing::pg_param(base_, "port")));
  const auto via_proxy = testing::pg_with(db_->conninfo(), "port", std::to_string(proxy.port()));
  auto s = open(1000ms, 2, via_proxy);
  proxy.set(testing::tcp_proxy::mode::hang);
  const auto t0 = steady::now();
  EXPECT_THROW(s->write_now([&](write_txn& tx) {
    tx.insert_session(make_session("x", session_status::active, 1));
    return true;
  }),
               storage_error);
  EXPECT_LE(steady::now() - t0, 1500ms);
  auto [took, ep] = timed_async_read(*s);
  EXPECT_TRUE(is_unavailable(ep));
  EXPECT_LE(took, 1500ms);
  proxy.set(testing::tcp_proxy::mode::forward);
  bool ok = false;
  const auto back = steady::now();
  while (!ok && steady::now() - back < 10s) {
    try {
      s->read_now([](read_view& v) { v.count_sessions(session_filter{}); });
      ok = true;
    } catch (const storage_error&) {
      std::this_thread::sleep_for(50ms);
    }
  }
  EXPECT_TRUE(ok);
}

TEST_F(PgStore, TextPostgreSQLCannotHoldIsTheClientsMistake) {
  auto s = open();
  // PostgreSQL text cannot hold U+0000: a 400 for the input, not a 503, and nothing written.
  auto bad = make_session("nul", session_status::active, 1);
  bad.project_id = std::string("a\0b", 3);
  try {
    s->write_now([&](write_txn& tx) {
      tx.insert_session(bad);
      return true;
    });
    FAIL() << "expected a bad_request error";
  } catch (const core::error_exception& e) {
    EXPECT_EQ(e.get().code, core::errc::bad_request);
  }
  std::int64_t n = -1;
  s->read_now([&](read_view& v) { n = v.count_sessions(session_filter{}); });
  EXPECT_EQ(n, 0);
}

TEST_F(PgStore, InstancesStartingTogetherMigrateOnce) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      try {
        open()->close();
      } catch (const std::exception&) {
        ++failures;
      }
    });
  }
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(scalar("SELECT count(*) FROM schema_migrations"),
            static_cast<std::int64_t>(migrations().size()));
  EXPECT_TRUE(pg_store::migrate(db_->conninfo()).empty());
}

TEST_F(PgStore, UnreachableDatabaseAtStartIsAClearErrorNotAHang) {
  const auto t0 = steady::now();
  try {
    open(600ms, 1, "host=127.0.0.1 port=1 dbname=nothing password=hunter2");
    FAIL() << "expected a storage_error";
  } catch (const storage_error& e) {
    EXPECT_EQ(e.which(), storage_error::kind::unavailable);
    EXPECT_EQ(std::string(e.what()).find("hunter2"), std::string::npos);
  }
  EXPECT_LE(steady::now() - t0, 2s);
}

}  // namespace
}  // namespace statetrack::storage::postgres
