// The embedded store: one SQLite file in WAL mode. One writer thread owns the write
// connection and group-commits every write queued since its last commit (each in its own
// SAVEPOINT, one fsync per batch); reads run inline on pooled read connections and never
// wait for the writer.
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

#include "storage/sqlite/connection.hpp"
#include "storage/store.hpp"

namespace statetrack::obs {
class registry;
class histogram;
class counter;
}  // namespace statetrack::obs

namespace statetrack::storage::sqlite {

struct store_options {
  std::string path;
  int max_batch = 1024;  // writes per commit at most
  bool synchronous_full = true;
  int checkpoint_pages = 4000;  // WAL size (pages) that triggers a checkpoint after a commit
};

class sqlite_store final : public store {
 public:
  // Opens (creating if needed) the file, applies migrations, starts the writer thread.
  explicit sqlite_store(store_options opts, obs::registry* metrics = nullptr);
  ~sqlite_store() override;

  boost::asio::awaitable<void> run_read(read_fn fn) override;
  boost::asio::awaitable<void> run_write(write_fn fn) override;
  void read_now(const read_fn& fn) override;
  void write_now(const write_fn& fn) override;
  std::optional<double> ping() override;
  std::string backend_name() const override { return "sqlite"; }
  store_stats stats() const override;
  void on_events_committed(std::function<void(std::int64_t)> cb) override;
  void close() override;

  // Applies pending migrations; returns the versions applied. Used by `statetrack migrate`.
  static std::vector<int> migrate(const std::string& path);
  // Online backup of the whole database to `dest` (SQLite backup API).
  static void backup(const std::string& path, const std::string& dest);

  struct job;

 private:
  // A read connection and the commit generation its open read transaction has seen.
  struct reader {
    std::unique_ptr<connection> conn;
    std::uint64_t snapshot = 0;
    std::chrono::steady_clock::time_point opened_at;
    bool open = false;
  };
  reader acquire_reader();
  void release_reader(reader r);
  void enqueue(job* j);
  void writer_loop();
  void execute_batch(std::vector<job*>& batch);
  static int wal_hook(void* self, sqlite3* db, const char* name, int pages);

  store_options opts_;
  std::unique_ptr<connection> writer_conn_;
  std::mutex readers_mu_;
  std::vector<reader> readers_;
  // Bumped after every commit; a reader whose snapshot is older starts a new one.
  std::atomic<std::uint64_t> generation_{1};

  std::mutex mu_;
  std::condition_variable cv_;  // wakes the writer
  std::vector<job*> queue_;
  bool stopping_ = false;
  bool wake_pending_ = false;  // a deferred writer wake-up is posted to an I/O thread
  std::thread writer_;

  std::mutex cb_mu_;
  std::vector<std::function<void(std::int64_t)>> event_callbacks_;

  std::atomic<std::uint64_t> commits_{0};
  std::atomic<std::uint64_t> writes_{0};
  std::atomic<std::uint64_t> failed_commits_{0};
  std::atomic<std::uint64_t> queue_depth_{0};
  obs::histogram* batch_size_ = nullptr;
  obs::histogram* commit_seconds_ = nullptr;
};

}  // namespace statetrack::storage::sqlite
