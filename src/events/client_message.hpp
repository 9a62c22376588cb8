// What a WebSocket event-stream client may send, parsed and checked in one place (the transport
// acts on the result; the fuzz target feeds it arbitrary frames). Messages are JSON objects
// with a string `type`: {"type":"ping"}, {"type":"unsubscribe"}, or {"type":"subscribe",
// "project_id"?, "session_id"?, "machine_id"?, "types"?: [...], "since"?: seq}.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "events/hub.hpp"

namespace statetrack::events {

struct client_message {
  enum class kind { ping, unsubscribe, subscribe, bad_message, bad_subscription, unknown_type };
  kind k = kind::bad_message;
  filter f;  // subscribe: what the client asked for (the key's scope is added by the caller)
  std::optional<std::int64_t> since;  // subscribe: resume after this seq (never negative)
};

client_message parse_client_message(std::string_view text);

// The text of the `error` reply for a message that is not acted on (bad_message,
// bad_subscription, unknown_type).
std::string_view client_message_error(client_message::kind k);
std::string_view client_message_error_code(client_message::kind k);

}  // namespace statetrack::events
