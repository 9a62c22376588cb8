// What an event-stream request asks for (parsed by api/events.cpp) and what a stream needs
// from the rest of the server. The transports themselves (WebSocket, SSE) are in
// events/transport.hpp, instantiated by http/server.cpp for plain and TLS connections.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "core/api_keys.hpp"
#include "events/hub.hpp"

namespace statetrack::obs {
class logger;
}

namespace statetrack::events {

enum class transport { sse, websocket };

struct stream_request {
  transport kind = transport::sse;
  filter f;
  std::optional<std::int64_t> since;  // resume after this seq
  core::principal who;
  std::string request_id;
};

struct stream_services {
  hub* events = nullptr;
  core::key_verifier* keys = nullptr;
  obs::logger* log = nullptr;
  std::chrono::seconds keepalive{30};          // SSE comment / WebSocket ping interval
  std::chrono::seconds revalidate{5};          // how often an open stream re-checks its key
  std::size_t max_client_message = 16 * 1024;  // WebSocket messages from the client
  int max_client_messages_per_s = 20;
};

}  // namespace statetrack::events
