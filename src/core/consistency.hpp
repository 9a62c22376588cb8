// The periodic consistency check: repairs what the contract's loose bookkeeping can leave
// behind — tasks still in_progress under a session that ended, and docker slots still held
// by sessions that ended or were purged — and reports what it changed.
#pragma once

#include <cstdint>

#include <boost/asio/awaitable.hpp>

namespace statetrack::storage {
class store;
}

namespace statetrack::core {

class clock;

struct consistency_report {
  std::int64_t tasks_closed = 0;    // in_progress tasks of ended sessions, now failed
  std::int64_t slots_released = 0;  // machine slots held by ended or missing sessions
};

boost::asio::awaitable<consistency_report> run_consistency_check(storage::store& store,
                                                                 const clock& clk);

}  // namespace statetrack::core
