// Test helper: runs an awaitable to completion on an io_context borrowed from a pool.
#pragma once

#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

namespace statetrack::testing {

// An io_context that outlives every store thread that may still be posting to it.
//
// A store's writer or reader thread resumes the awaiting coroutine with asio::post, and is
// still inside that post (signalling the context's condition variable) when the resumed
// coroutine may already have finished and run() returned. Destroying the context right then
// (a local io_context, or a thread_local one in a short-lived thread) frees what the store
// thread is still using: ThreadSanitizer reports it as a race on pthread_cond_destroy. So
// contexts come from a pool that lives until the program exits (long after every store in a
// test was closed and its threads joined) and are reused, never destroyed in between.
class pooled_context {
 public:
  pooled_context() {
    auto& p = pool();
    std::lock_guard lk(p.mu);
    if (!p.free.empty()) {
      ctx_ = std::move(p.free.back());
      p.free.pop_back();
      ctx_->restart();
    } else {
      ctx_ = std::make_unique<boost::asio::io_context>();
    }
  }
  ~pooled_context() {
    auto& p = pool();
    std::lock_guard lk(p.mu);
    // Left by an exception out of run(), it may still hold handlers: kept, never reused.
    (std::uncaught_exceptions() > 0 ? p.retired : p.free).push_back(std::move(ctx_));
  }
  pooled_context(const pooled_context&) = delete;
  pooled_context& operator=(const pooled_context&) = delete;

  boost::asio::io_context& get() { return *ctx_; }

 private:
  struct context_pool {
    std::mutex mu;
    std::vector<std::unique_ptr<boost::asio::io_context>> free;
    std::vector<std::unique_ptr<boost::asio::io_context>> retired;
  };
  static context_pool& pool() {
    static context_pool p;
    return p;
  }
  std::unique_ptr<boost::asio::io_context> ctx_;
};

// The awaitable's own exception is rethrown after the context went back to the pool.
template <class T>
T run_sync(boost::asio::awaitable<T> aw) {
  std::future<T> fut;
  {
    pooled_context ctx;
    fut = boost::asio::co_spawn(ctx.get(), std::move(aw), boost::asio::use_future);
    ctx.get().run();
  }
  return fut.get();
}

}  // namespace statetrack::testing
