// Stream tickets: a client holding an API key asks for a ticket (POST /events/ticket) and a
// browser opens the WebSocket or SSE stream with `?ticket=` instead of a header. Tickets live
// 30 seconds, open one stream, and only their hash is stored (in the database, so any
// instance can redeem them).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <boost/asio/awaitable.hpp>

#include "core/api_keys.hpp"
#include "core/types.hpp"

namespace statetrack::storage {
class store;
}

namespace statetrack::core {

inline constexpr std::int64_t ticket_ttl_ms = 30'000;

struct issued_ticket {
  std::string ticket;  // shown once
  timestamp expires_at;
};

boost::asio::awaitable<issued_ticket> issue_ticket(storage::store& store, const principal& who,
                                                   timestamp now);
// The principal the ticket was issued to, once; nullopt when unknown, used or expired.
boost::asio::awaitable<std::optional<principal>> redeem_ticket(storage::store& store,
                                                               std::string_view ticket,
                                                               timestamp now);

}  // namespace statetrack::core
