// The HTTP/1.1 listener: an accept loop and one coroutine per connection. There is one
// io_context per I/O thread; each accepted connection is handed to the next context in turn
// and lives there, so its handlers run serially without strands or cross-thread locking.
// Every read is bounded in size and time; responses are serialised in one buffer. On stop it
// closes the acceptor, closes idle keep-alive connections and lets in-flight requests finish.
// The same connection loop serves plain TCP and TLS (it is a template over the stream type);
// a listener may instead only redirect every request to the HTTPS port.
// Owned by the app; its coroutines run on the app's io_context threads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace boost::asio::ssl {
class context;
}

namespace statetrack::obs {
class logger;
class registry;
class gauge;
class counter;
}  // namespace statetrack::obs

namespace statetrack::events {
struct stream_services;
}

namespace statetrack::http {

class pipeline;

struct server_options {
  std::string host = "0.0.0.0";
  std::uint16_t port = 3000;
  std::size_t max_body_bytes = 100 * 1024;
  std::size_t max_header_bytes = 16 * 1024;
  std::chrono::seconds idle_timeout{75};
  std::chrono::seconds read_timeout{30};
  std::size_t max_connections = 10000;
  // HTTPS only when set (owned by the app, outlives the server).
  boost::asio::ssl::context* tls = nullptr;
  // Non-zero: this listener answers every request with 308 to https://<host>:<port><target>
  // and does nothing else.
  std::uint16_t redirect_to_https_port = 0;
  // Value of the `listener` label of this listener's connection metrics; empty for the main
  // listener (unlabelled series).
  std::string metrics_listener;
  // Event streams (WebSocket, SSE); owned by the app. Null: stream routes cannot upgrade.
  const events::stream_services* streams = nullptr;
};

class server {
 public:
  // contexts[0] runs the acceptor; connections are spread over all of them.
  server(std::vector<boost::asio::io_context*> contexts, pipeline& p, server_options opts,
         obs::logger& log, obs::registry& metrics);
  ~server();

  // Binds and listens; returns the bound endpoint. Throws on failure (address in use...).
  boost::asio::ip::tcp::endpoint listen();
  // Starts accepting (spawns the accept loop on the io_context).
  void start();
  // Stops accepting, closes idle connections, asks busy ones to close after their response.
  void begin_drain();
  // After the drain deadline: closes every remaining connection's socket so that its coroutine
  // ends now (instead of being destroyed suspended with the stopped io_contexts).
  void force_close();
  std::size_t connections() const;

  struct connection_state;

 private:
  boost::asio::awaitable<void> accept_loop();
  void start_connection(boost::asio::ip::tcp::socket socket);
  boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket socket);
  // The connection loop, for a plain or a TLS stream (defined and instantiated in server.cpp).
  template <class Stream>
  boost::asio::awaitable<void> session(Stream& stream, std::string ip);

  std::vector<boost::asio::io_context*> contexts_;
  std::size_t next_context_ = 0;
  pipeline& pipeline_;
  server_options opts_;
  obs::logger& log_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::atomic<bool> draining_{false};
  mutable std::mutex mu_;
  std::unordered_set<std::shared_ptr<connection_state>> conns_;
  std::atomic<std::size_t> starting_{0};  // accepted, not yet in conns_ (max_connections)
  obs::gauge* open_connections_ = nullptr;
  obs::counter* accepted_ = nullptr;
  obs::counter* rejected_ = nullptr;
  obs::counter* handshake_failures_ = nullptr;  // TLS listeners only
  obs::counter* redirects_ = nullptr;           // redirect listeners only
};

}  // namespace statetrack::http
