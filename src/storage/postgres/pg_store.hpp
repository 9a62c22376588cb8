// The distributed store: PostgreSQL 15 through libpq, safe for any number of statetrack
// instances on one database. Writes go to one writer thread per instance that group-commits
// everything queued since its last commit (a SAVEPOINT per write, one COMMIT per batch), like
// the SQLite store; reads run on a small pool of reader threads with their own connections.
// The threads are the asynchronous boundary: I/O threads only queue work and are resumed by
// one post when it is done, so core code keeps its synchronous closures over read_view /
// write_txn. Every round trip is pipelined and bounded by a deadline; a circuit breaker turns
// an unreachable database into fast storage_error(unavailable) and reconnects with backoff.
// A listener thread (LISTEN statetrack_events) announces other instances' events.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "storage/postgres/breaker.hpp"
#include "storage/postgres/connection.hpp"
#include "storage/store.hpp"

namespace statetrack::obs {
class registry;
class histogram;
class counter;
}  // namespace statetrack::obs

namespace statetrack::storage::postgres {

struct store_options {
  std::string conninfo;  // any libpq connection string or URI, multi-host included
  int pool_size = 4;     // reader threads, each with one connection
  // Bound on how long any operation waits for the database (queueing, reconnecting and the
  // round trips); also the server-side statement_timeout.
  std::chrono::milliseconds timeout{5000};
  int max_batch = 1024;  // writes per commit at most
  // Reconnect backoff. The ceiling stays under 5 s so that service resumes within 5 s of the
  // database coming back, connect and first commit included.
  std::chrono::milliseconds backoff_min{100};
  std::chrono::milliseconds backoff_max{4000};
  int max_deadlock_retries = 3;  // a batch retried this often for one write fails that write
  bool listen = true;            // announce other instances' events (LISTEN/NOTIFY)
  std::string application_name = "statetrack";
};

class pg_store final : public store {
 public:
  // Connects (waiting up to `timeout` for the database), applies migrations, starts the
  // writer, reader and listener threads. Throws storage_error when the database cannot be
  // reached or migrated.
  explicit pg_store(store_options opts, obs::registry* metrics = nullptr);
  ~pg_store() override;

  boost::asio::awaitable<void> run_read(read_fn fn) override;
  boost::asio::awaitable<void> run_write(write_fn fn) override;
  // The sessions hinted by the writes of a batch are fetched and locked in one round trip.
  boost::asio::awaitable<void> run_session_write(std::string session_id, write_fn fn) override;
  void read_now(const read_fn& fn) override;
  void write_now(const write_fn& fn) override;
  std::optional<double> ping() override;
  std::string backend_name() const override { return "postgres"; }
  std::string unavailable_reason() const override;
  store_stats stats() const override;
  void on_events_committed(std::function<void(std::int64_t)> cb) override;
  void close() override;

  // Why the database is unreachable (empty while it is reachable).
  std::string last_error() const;

  // Applies pending migrations; returns the versions applied. Used by `statetrack migrate`.
  static std::vector<int> migrate(const std::string& conninfo,
                                  std::chrono::milliseconds timeout = std::chrono::seconds(30));

  struct write_job;
  struct read_job;

 private:
  // done: every job has its outcome; retry: run again (deadlock); lost: reconnect and run
  // again; unsafe: a deferred statement failed, run again without deferring.
  enum class batch_result { done, retry, lost, unsafe };

  std::unique_ptr<connection> connect(deadline until);
  bool ensure_connected(std::unique_ptr<connection>& c, deadline job_deadline, bool wait);
  void fail_job(write_job* j, std::exception_ptr ep);
  void finish(std::vector<write_job*>& jobs);

  void enqueue_write(write_job* j);
  void writer_loop();
  void run_batch(std::vector<write_job*>& batch);
  batch_result try_batch(std::vector<write_job*>& batch, deadline until, bool safe);

  void enqueue_read(read_job* j);
  void reader_loop();
  void run_read_job(std::unique_ptr<connection>& conn, read_job* j);

  void listener_loop();
  void notify_committed(std::int64_t last_seq);

  std::exception_ptr unavailable_error() const;

  store_options opts_;
  connect_options conn_opts_;
  breaker breaker_;

  // Writer.
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<write_job*> queue_;
  bool stopping_ = false;
  bool wake_pending_ = false;  // a deferred writer wake-up is posted to an I/O thread
  std::unique_ptr<connection> writer_conn_;
  std::atomic<int> writer_pid_{0};  // backend of the writer: its own NOTIFYs are not news
  std::thread writer_;

  // Readers.
  std::mutex read_mu_;
  std::atomic<int> readers_busy_{0};  // readers running a job (the pool-use gauge)
  std::condition_variable read_cv_;
  std::deque<read_job*> read_queue_;
  bool readers_stopping_ = false;
  std::vector<std::thread> readers_;

  // Listener.
  std::thread listener_;
  int wake_fd_ = -1;  // eventfd that interrupts the listener's poll at close
  std::atomic<bool> listener_stopping_{false};

  std::mutex cb_mu_;
  std::vector<std::function<void(std::int64_t)>> event_callbacks_;
  bool closed_ = false;
  std::mutex close_mu_;

  std::atomic<std::uint64_t> commits_{0};
  std::atomic<std::uint64_t> writes_{0};
  std::atomic<std::uint64_t> failed_commits_{0};
  std::atomic<std::uint64_t> queue_depth_{0};
  std::atomic<std::uint64_t> batch_retries_{0};
  obs::histogram* batch_size_ = nullptr;
  obs::histogram* commit_seconds_ = nullptr;
  obs::counter* connects_ = nullptr;
  obs::counter* retries_ = nullptr;
};

}  // namespace statetrack::storage::postgres
