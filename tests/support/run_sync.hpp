// Test helper: runs an awaitable to completion on a private io_context.
#pragma once

#include <utility>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

namespace statetrack::testing {

template <class T>
T run_sync(boost::asio::awaitable<T> aw) {
  boost::asio::io_context ioc;
  auto fut = boost::asio::co_spawn(ioc, std::move(aw), boost::asio::use_future);
  ioc.run();
  return fut.get();
}

inline void run_sync(boost::asio::awaitable<void> aw) {
  boost::asio::io_context ioc;
  auto fut = boost::asio::co_spawn(ioc, std::move(aw), boost::asio::use_future);
  ioc.run();
  fut.get();
}

}  // namespace statetrack::testing
