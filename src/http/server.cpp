// Beast-based connection handling (the only file that includes Beast), plain and TLS.
#include "http/server.hpp"

#include <type_traits>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>

#include "events/transport.hpp"
#include "http/message.hpp"
#include "http/pipeline.hpp"
#include "http/tls.hpp"
#include "http/wire.hpp"
#include "obs/logger.hpp"
#include "obs/metrics.hpp"

namespace statetrack::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace websocket = boost::beast::websocket;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;
using tls_stream = ssl::stream<beast::tcp_stream>;

struct server::connection_state {
  beast::tcp_stream* stream = nullptr;
  asio::any_io_executor executor;
  std::atomic<bool> busy{false};
};

namespace {

// 308 to the same host and target on the HTTPS port; 400 when the Host header is unusable.
void redirect_to_https(const request& req, std::uint16_t https_port, response& res) {
  res.body.clear();
  res.content_type = "text/plain; charset=utf-8";
  auto location = https_location(req.host, req.target, https_port);
  if (!location) {
    res.status = 400;
    res.body = "Bad Request: missing or invalid Host header\n";
    res.close = true;
    return;
  }
  res.status = 308;
  res.set_header("Location", std::move(*location));
}

template <class Stream>
inline constexpr bool is_tls = std::is_same_v<Stream, tls_stream>;

// After a 413, at most this much of the refused body is read and dropped.
constexpr std::size_t linger_max_bytes = 4 * 1024 * 1024;

// Socket outcomes after which the peer will not read a TLS close_notify.
bool peer_gone(const boost::system::error_code& ec) {
  return ec == asio::error::eof || ec == ssl::error::stream_truncated ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == asio::error::operation_aborted || ec == beast::error::timeout;
}

}  // namespace

server::server(std::vector<asio::io_context*> contexts, pipeline& p, server_options opts,
               obs::logger& log, obs::registry& metrics)
    : contexts_(std::move(contexts)),
      pipeline_(p),
      opts_(std::move(opts)),
      log_(log),
      acceptor_(*contexts_.front()) {
  obs::labels l;
  if (!opts_.metrics_listener.empty()) l.emplace_back("listener", opts_.metrics_listener);
  open_connections_ =
      &metrics.add_gauge("statetrack_http_open_connections", "Open client connections", l);
  accepted_ = &metrics.add_counter("statetrack_http_connections_accepted_total",
                                   "Accepted client connections", l);
  rejected_ = &metrics.add_counter("statetrack_http_connections_rejected_total",
                                   "Connections closed at once because the limit was reached", l);
  if (opts_.tls != nullptr) {
    handshake_failures_ =
        &metrics.add_counter("statetrack_tls_handshake_failures_total",
                             "TLS handshakes that failed (plain HTTP, old protocol versions, "
                             "unknown certificate authority on the client side, timeouts)",
                             l);
  }
  if (opts_.redirect_to_https_port != 0) {
    redirects_ = &metrics.add_counter("statetrack_http_redirects_total",
                                      "Plain HTTP requests redirected to HTTPS", l);
  }
}

server::~server() = default;

tcp::endpoint server::listen() {
  auto addr = asio::ip::make_address(opts_.host);
  tcp::endpoint ep(addr, opts_.port);
  acceptor_.open(ep.protocol());
  acceptor_.set_option(asio::socket_base::reuse_address(true));
  acceptor_.bind(ep);
  acceptor_.listen(asio::socket_base::max_listen_connections);
  return acceptor_.local_endpoint();
}

void server::start() {
  asio::co_spawn(*contexts_.front(), accept_loop(), [this](const std::exception_ptr& ep) {
    if (!ep) return;
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      obs::fields f;
      f.add("error", e.what());
      log_.error("HTTP", "accept loop ended", &f);
    }
  });
}

std::size_t server::connections() const {
  std::lock_guard lk(mu_);
  return conns_.size();
}

void server::begin_drain() {
  draining_ = true;
  asio::post(*contexts_.front(), [this] {
    boost::system::error_code ec;
    acceptor_.close(ec);
  });
  std::lock_guard lk(mu_);
  for (const auto& c : conns_) {
    asio::post(c->executor, [c] {
      // Idle keep-alive connections are closed now; busy ones close after their response.
      if (!c->busy.load() && c->stream != nullptr) c->stream->socket().cancel();
    });
  }
}

void server::force_close() {
  std::lock_guard lk(mu_);
  for (const auto& c : conns_) {
    asio::post(c->executor, [c] {
      boost::system::error_code ec;
      if (c->stream != nullptr) c->stream->socket().close(ec);
    });
  }
}

asio::awaitable<void> server::accept_loop() {
  // After each completed wait the backlog is drained with non-blocking accepts, so a burst of
  // new connections (clients reconnecting together) is taken in one pass instead of one per
  // trip through a busy I/O thread's queue.
  boost::system::error_code nb_ec;
  acceptor_.non_blocking(true, nb_ec);
  for (;;) {
    boost::system::error_code ec;
    tcp::socket socket =
        co_await acceptor_.async_accept(*contexts_[next_context_++ % contexts_.size()],
                                        asio::redirect_error(asio::use_awaitable, ec));
    for (int burst = 0;; ++burst) {
      if (ec) {
        if (ec == asio::error::operation_aborted || draining_) co_return;
        if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space) {
          // Out of file descriptors: back off briefly instead of spinning.
          asio::steady_timer t(*contexts_.front(), std::chrono::milliseconds(50));
          co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
        break;
      }
      start_connection(std::move(socket));
      if (burst >= 256 || draining_) break;  // let the loop's other work run now and then
      socket = acceptor_.accept(*contexts_[next_context_++ % contexts_.size()], ec);
      if (ec == asio::error::would_block || ec == asio::error::try_again) break;
    }
  }
}

void server::start_connection(tcp::socket socket) {
  // Connections accepted but not yet running count too: a burst accepts many before any runs.
  if (connections() + starting_.load(std::memory_order_relaxed) >= opts_.max_connections) {
    rejected_->inc();
    boost::system::error_code ignored;
    socket.close(ignored);
    return;
  }
  accepted_->inc();
  starting_.fetch_add(1, std::memory_order_relaxed);
  // The executor is taken before the socket is moved into the coroutine.
  auto home_executor = socket.get_executor();
  asio::co_spawn(home_executor, serve(std::move(socket)), [this](const std::exception_ptr& ep) {
    if (!ep) return;
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      obs::fields f;
      f.add("error", e.what());
      log_.error("HTTP", "connection ended by an exception", &f);
    }
  });
}

asio::awaitable<void> server::serve(tcp::socket socket) {
  boost::system::error_code ec;
  socket.set_option(tcp::no_delay(true), ec);
  std::string ip;
  {
    auto remote = socket.remote_endpoint(ec);
    if (!ec) ip = remote.address().to_string();
  }
  if (opts_.tls != nullptr) {
    tls_stream stream(std::move(socket), *opts_.tls);
    co_await session(stream, std::move(ip));
  } else {
    beast::tcp_stream stream(std::move(socket));
    co_await session(stream, std::move(ip));
  }
}

// Hands an accepted stream request to the WebSocket or SSE transport. The response's headers
// (request id, security headers) go on the handshake / the SSE response head.
template <class Stream>
asio::awaitable<void> run_stream(Stream& stream, bhttp::request<bhttp::string_body>& msg,
                                 const response& res, const events::stream_services& svc) {
  beast::tcp_stream& lowest = beast::get_lowest_layer(stream);
  boost::system::error_code ec;
  if (res.stream->kind == events::transport::websocket) {
    lowest.expires_never();  // the WebSocket layer has its own timeouts and pings
    websocket::stream<Stream&> ws(stream);
    websocket::stream_base::timeout t{};
    t.handshake_timeout = std::chrono::seconds(10);
    t.idle_timeout = svc.keepalive * 2;  // a ping after half of it; closed without a pong
    t.keep_alive_pings = true;
    ws.set_option(t);
    auto headers = res.headers;
    ws.set_option(websocket::stream_base::decorator([headers](websocket::response_type& r) {
      for (const auto& [name, value] : headers) {
        if (name != "Cache-Control") r.set(name, value);
      }
    }));
    co_await ws.async_accept(msg, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    co_await events::run_websocket(ws, *res.stream, svc);
    co_return;
  }
  std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n";
  for (const auto& [name, value] : res.headers) {
    head += name;
    head += ": ";
    head += value;
    head += "\r\n";
  }
  head += "X-Accel-Buffering: no\r\nConnection: close\r\n\r\n";
  lowest.expires_never();
  co_await asio::async_write(stream, asio::buffer(head),
                             asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return;
  co_await events::run_sse(stream, *res.stream, svc);
}

template <class Stream>
asio::awaitable<void> server::session(Stream& stream, std::string ip) {
  beast::tcp_stream& lowest = beast::get_lowest_layer(stream);
  auto state = std::make_shared<connection_state>();
  state->stream = &lowest;
  state->executor = lowest.get_executor();
  {
    std::lock_guard lk(mu_);
    conns_.insert(state);
    starting_.fetch_sub(1, std::memory_order_relaxed);  // counted in conns_ from here
  }
  open_connections_->add(1);
  struct unregister {
    server* self;
    std::shared_ptr<connection_state> s;
    ~unregister() {
      s->stream = nullptr;
      std::lock_guard lk(self->mu_);
      self->conns_.erase(s);
      self->open_connections_->add(-1);
    }
  } guard{this, state};

  boost::system::error_code ec;
  if constexpr (is_tls<Stream>) {
    lowest.expires_after(opts_.read_timeout);
    co_await stream.async_handshake(ssl::stream_base::server,
                                    asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      // Plain HTTP on the TLS port, a refused protocol version, a client that gave up.
      handshake_failures_->inc();
      if (log_.enabled(obs::level::debug)) {
        obs::fields f;
        f.add("client_ip", std::string_view(ip)).add("error", ec.message());
        log_.debug("HTTP", "TLS handshake failed", &f);
      }
      lowest.close();
      co_return;
    }
  }

  beast::flat_buffer buffer;
  bool close_politely = true;  // false once the peer is gone or the socket was cancelled
  bool refused_body = false;   // a 413 was sent while the client may still send the body
  for (;;) {
    if (draining_) break;
    bhttp::request_parser<bhttp::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(opts_.max_header_bytes));
    parser.body_limit(opts_.max_body_bytes);
    lowest.expires_after(buffer.size() > 0 ? opts_.read_timeout : opts_.idle_timeout);
    co_await bhttp::async_read_header(stream, buffer, parser,
                                      asio::redirect_error(asio::use_awaitable, ec));
    state->busy = true;
    request req;
    response res;
    bool reject = false;
    if (!ec) {
      auto& h = parser.get();
      if (beast::iequals(h[bhttp::field::expect], "100-continue") && !parser.is_done()) {
        if (h.has_content_length() && parser.content_length().value_or(0) > opts_.max_body_bytes) {
          ec = bhttp::error::body_limit;
        } else {
          static constexpr std::string_view cont = "HTTP/1.1 100 Continue\r\n\r\n";
          co_await asio::async_write(stream, asio::buffer(cont.data(), cont.size()),
                                     asio::redirect_error(asio::use_awaitable, ec));
          if (ec) {
            close_politely = false;
            break;
          }
        }
      }
      if (!ec && !parser.is_done()) {
        lowest.expires_after(opts_.read_timeout);
        co_await bhttp::async_read(stream, buffer, parser,
                                   asio::redirect_error(asio::use_awaitable, ec));
      }
    }
    if (ec) {
      // Socket-level outcomes close quietly; oversized or malformed requests get an answer.
      if (ec == bhttp::error::body_limit) {
        fill_request(req, parser.get(), ip);
        pipeline_.reject(req, 413, "request entity too large", res);
        reject = true;
        refused_body = true;
      } else if (ec == bhttp::error::header_limit) {
        req.method_text = "UNKNOWN";
        pipeline_.reject(req, 431, "Request header fields too large", res);
        reject = true;
      } else if (ec.category() == bhttp::make_error_code(bhttp::error::end_of_stream).category() &&
                 ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message) {
        req.method_text = "UNKNOWN";
        pipeline_.reject(req, 400, "Malformed HTTP request", res);
        reject = true;
      } else {
        close_politely = !peer_gone(ec) && ec != bhttp::error::end_of_stream &&
                         ec != bhttp::error::partial_message;
        break;
      }
    }
    bool keep_alive = false;
    unsigned version = 11;
    bool head_only = false;
    if (!reject) {
      auto msg = parser.release();
      version = msg.version();
      fill_request(req, msg, ip);
      req.websocket_upgrade = websocket::is_upgrade(msg);
      head_only = req.verb == method::head;
      if (opts_.redirect_to_https_port != 0) {
        redirect_to_https(req, opts_.redirect_to_https_port, res);
        if (res.status == 308) redirects_->inc();
      } else {
        co_await pipeline_.handle(req, res);
      }
      keep_alive = req.keep_alive && !res.close && !draining_;
      if (res.stream && opts_.streams != nullptr && (res.status == 101 || res.status == 200)) {
        // The connection becomes an event stream and ends with it.
        state->busy = false;
        co_await run_stream(stream, msg, res, *opts_.streams);
        close_politely = false;
        break;
      }
    }
    if constexpr (is_tls<Stream>) res.set_header("Strict-Transport-Security", hsts_value);
    std::string out = serialize(res, head_only, keep_alive, version);
    lowest.expires_after(opts_.read_timeout);
    co_await asio::async_write(stream, asio::buffer(out),
                               asio::redirect_error(asio::use_awaitable, ec));
    state->busy = false;
    if (ec) close_politely = false;
    if (ec || !keep_alive) break;
  }
  if (refused_body && close_politely) {
    // Read and drop what the client still sends of the refused body (bounded in time and size)
    // so that it gets to read the 413 instead of a connection reset.
    if constexpr (!is_tls<Stream>) lowest.socket().shutdown(tcp::socket::shutdown_send, ec);
    std::vector<char> sink(16 * 1024);
    std::size_t dropped = 0;
    lowest.expires_after(std::chrono::seconds(2));
    while (dropped < linger_max_bytes) {
      dropped += co_await stream.async_read_some(asio::buffer(sink),
                                                 asio::redirect_error(asio::use_awaitable, ec));
      if (ec) break;
    }
    if (ec) close_politely = false;
  }
  if constexpr (is_tls<Stream>) {
    if (close_politely) {
      // close_notify; the peer's answer is awaited briefly, never for long.
      lowest.expires_after(std::chrono::seconds(2));
      co_await stream.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
    }
  } else {
    lowest.socket().shutdown(tcp::socket::shutdown_send, ec);
  }
  lowest.close();
}

}  // namespace statetrack::http
