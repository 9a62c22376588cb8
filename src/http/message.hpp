// The request and response as the pipeline and handlers see them: plain values with the
// few headers the service reads already extracted, so only server.cpp touches Beast.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace statetrack::events {
struct stream_request;
}

namespace statetrack::http {

enum class method { get, head, post, put, patch, del, options, other };

std::string_view method_name(method m);

struct request {
  method verb = method::other;
  std::string method_text;  // as received, for "Cannot <METHOD> <url>"
  std::string target;       // raw request-target: path plus query string
  std::string body;
  std::string content_type;
  std::string authorization;
  std::string api_key;        // X-API-Key
  std::string request_id;     // incoming X-Request-Id, if any
  std::string origin;         // Origin
  std::string host;           // Host (read by the HTTPS redirect listener)
  std::string acr_headers;    // Access-Control-Request-Headers
  std::string last_event_id;  // Last-Event-ID
  std::string client_ip;      // TCP peer address
  bool keep_alive = true;
  bool websocket_upgrade = false;  // Connection: upgrade + Upgrade: websocket
};

struct response {
  unsigned status = 200;
  std::string body;
  std::string_view content_type = "application/json; charset=utf-8";
  // Extra headers; names are string literals.
  std::vector<std::pair<std::string_view, std::string>> headers;
  bool close = false;
  // Set by the event-stream handlers: instead of this response, the server turns the
  // connection into a WebSocket or server-sent-events stream.
  std::shared_ptr<events::stream_request> stream;

  void set_header(std::string_view name, std::string value) {
    headers.emplace_back(name, std::move(value));
  }
};

std::string_view reason_phrase(unsigned status);

// The Location of the HTTPS redirect listener's 308: the request's host (without its port) on
// `https_port`, same target. nullopt when the Host header is missing or is not a plain host
// name, IPv4 address or bracketed IPv6 literal with an optional numeric port.
std::optional<std::string> https_location(std::string_view host, std::string_view target,
                                          std::uint16_t https_port);

}  // namespace statetrack::http
