// The two event-stream transports over an accepted connection, as coroutines templated on the
// stream type (plain TCP or TLS). A stream sends, in order and without gaps or duplicates,
// every event after its cursor that matches its filter; it ends with a `resync` message when
// the log no longer holds what it asks for, with `slow_consumer` when it falls too far behind,
// and with `key_revoked` when its key is revoked. Included only by http/server.cpp.
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <string>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "events/client_message.hpp"
#include "events/cursor.hpp"
#include "events/stream.hpp"
#include "obs/logger.hpp"
#include "util/json_writer.hpp"

namespace statetrack::events {

namespace detail {

namespace asio = boost::asio;

// Wakes a waiting stream when the hub has news; unregisters itself at scope exit.
class wake_registration {
 public:
  wake_registration(hub& h, asio::any_io_executor ex, const std::shared_ptr<asio::steady_timer>& t)
      : hub_(h) {
    std::weak_ptr<asio::steady_timer> weak = t;
    token_ = h.add_waiter(std::move(ex), [weak] {
      if (auto timer = weak.lock()) timer->cancel();
    });
    h.count_connected(1);
  }
  ~wake_registration() {
    hub_.remove_waiter(token_);
    hub_.count_connected(-1);
  }
  wake_registration(const wake_registration&) = delete;
  wake_registration& operator=(const wake_registration&) = delete;

 private:
  hub& hub_;
  std::uint64_t token_;
};

inline std::string control_message(std::string_view type, std::string_view code,
                                   std::string_view reason, std::int64_t position) {
  std::string out;
  util::json_writer w(out);
  w.begin_object();
  w.field("type", type);
  if (!code.empty()) w.field("code", code);
  w.field("message", reason);
  w.field("last_seq", position);
  w.end_object();
  return out;
}

}  // namespace detail

// Server-sent events: the response head has been written by the caller.
template <class Stream>
boost::asio::awaitable<void> run_sse(Stream& stream, stream_request req,
                                     const stream_services& svc) {
  namespace asio = boost::asio;
  auto ex = co_await asio::this_coro::executor;
  auto timer = std::make_shared<asio::steady_timer>(ex);
  detail::wake_registration reg(*svc.events, ex, timer);
  cursor cur(*svc.events, req.f, req.since);
  auto last_keepalive = std::chrono::steady_clock::now();
  auto last_check = last_keepalive;
  std::uint64_t key_generation = svc.keys->generation();
  boost::system::error_code ec;
  std::string buf;
  // Tell the client how long to wait before reconnecting (EventSource honours it).
  buf = "retry: 2000\n\n";
  co_await asio::async_write(stream, asio::buffer(buf),
                             asio::redirect_error(asio::use_awaitable, ec));
  for (;;) {
    if (ec || svc.events->closing()) co_return;
    auto b = cur.next(256);
    buf.clear();
    if (b.st == cursor::state::resync || b.st == cursor::state::lagged) {
      const bool resync = b.st == cursor::state::resync;
      if (!resync) svc.events->count_cut();
      buf += resync ? "event: resync\ndata: " : "event: error\ndata: ";
      buf += detail::control_message(resync ? "resync" : "error",
                                     resync ? "resync" : "slow_consumer", b.reason, cur.position());
      buf += "\n\n";
      co_await asio::async_write(stream, asio::buffer(buf),
                                 asio::redirect_error(asio::use_awaitable, ec));
      co_return;
    }
    for (const auto& m : b.messages) {
      buf += "id: ";
      buf += std::to_string(m->e.seq);
      buf += "\nevent: ";
      buf += m->e.type;
      buf += "\ndata: ";
      buf += m->json;
      buf += "\n\n";
    }
    auto now = std::chrono::steady_clock::now();
    if (buf.empty() && now - last_keepalive >= svc.keepalive) {
      buf = ": keepalive\n\n";
    }
    if (!buf.empty()) {
      last_keepalive = now;
      co_await asio::async_write(stream, asio::buffer(buf),
                                 asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      svc.events->count_delivered(b.messages.size());
    }
    if (now - last_check >= svc.revalidate || svc.keys->generation() != key_generation) {
      last_check = now;
      key_generation = svc.keys->generation();
      if (!(co_await svc.keys->still_valid(req.who))) {
        buf = "event: error\ndata: " +
              detail::control_message("error", "key_revoked",
                                      "the API key of this stream was revoked", cur.position()) +
              "\n\n";
        co_await asio::async_write(stream, asio::buffer(buf),
                                   asio::redirect_error(asio::use_awaitable, ec));
        co_return;
      }
    }
    if (b.st == cursor::state::idle) {
      timer->expires_after(
          std::min<std::chrono::steady_clock::duration>(svc.keepalive, svc.revalidate));
      boost::system::error_code wait_ec;
      co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, wait_ec));
    }
  }
}

// WebSocket: `ws` has accepted the upgrade. Client messages (JSON): {"type":"subscribe",
// "project_id"?, "session_id"?, "machine_id"?, "types"?: [...], "since"?: seq},
// {"type":"unsubscribe"}, {"type":"ping"}. Server messages: {"type":"event",...},
// {"type":"subscribed",...}, {"type":"pong"}, {"type":"error",...}, {"type":"resync",...}.
template <class WebSocket>
boost::asio::awaitable<void> run_websocket(WebSocket& ws, stream_request req,
                                           const stream_services& svc) {
  namespace asio = boost::asio;
  namespace websocket = boost::beast::websocket;
  using namespace boost::asio::experimental::awaitable_operators;

  struct shared_state {
    std::deque<std::string> outbox;  // replies to client messages, sent before events
    std::optional<cursor> cur;
    bool closing = false;
  };
  auto ex = co_await asio::this_coro::executor;
  auto timer = std::make_shared<asio::steady_timer>(ex);
  detail::wake_registration reg(*svc.events, ex, timer);
  auto st = std::make_shared<shared_state>();
  st->cur.emplace(*svc.events, req.f, req.since);

  ws.read_message_max(svc.max_client_message);
  ws.text(true);

  auto reader = [&]() -> asio::awaitable<void> {
    boost::beast::flat_buffer in;
    auto window_start = std::chrono::steady_clock::now();
    int in_window = 0;
    for (;;) {
      in.clear();
      auto [ec, n] = co_await ws.async_read(in, asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      auto now = std::chrono::steady_clock::now();
      if (now - window_start >= std::chrono::seconds(1)) {
        window_start = now;
        in_window = 0;
      }
      if (++in_window > svc.max_client_messages_per_s) {
        // Closed from here (a close may run beside the writer's write): returning first
        // would let `||` cancel the writer before it could send the close frame.
        st->closing = true;
        boost::system::error_code cec;
        co_await ws.async_close(
            websocket::close_reason(websocket::close_code::policy_error, "too many messages"),
            asio::redirect_error(asio::use_awaitable, cec));
        co_return;
      }
      const std::string text = boost::beast::buffers_to_string(in.data());
      client_message m = parse_client_message(text);
      std::string reply;
      switch (m.k) {
        case client_message::kind::ping:
          reply = R"({"type":"pong"})";
          break;
        case client_message::kind::unsubscribe:
          st->cur.reset();
          reply = R"({"type":"unsubscribed"})";
          break;
        case client_message::kind::subscribe: {
          m.f.scope_projects = req.f.scope_projects;  // the key's scope stays
          m.f.scope_machine = req.f.scope_machine;
          // A new `since` restarts from there; otherwise the stream continues where it is.
          std::optional<std::int64_t> from = m.since;
          if (!from && st->cur) from = st->cur->position();
          st->cur.emplace(*svc.events, std::move(m.f), from);
          util::json_writer w(reply);
          w.begin_object();
          w.field("type", "subscribed");
          w.field("after_seq", st->cur->position());
          w.end_object();
          break;
        }
        default:
          reply =
              detail::control_message("error", client_message_error_code(m.k),
                                      client_message_error(m.k), st->cur ? st->cur->position() : 0);
      }
      st->outbox.push_back(std::move(reply));
      timer->cancel();
    }
  };

  auto writer = [&]() -> asio::awaitable<void> {
    auto last_check = std::chrono::steady_clock::now();
    std::uint64_t key_generation = svc.keys->generation();
    boost::system::error_code ec;
    for (;;) {
      while (!st->outbox.empty()) {
        std::string m = std::move(st->outbox.front());
        st->outbox.pop_front();
        co_await ws.async_write(asio::buffer(m), asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return;
      }
      if (st->closing) co_return;  // the reader is closing the connection
      if (svc.events->closing()) {
        co_await ws.async_close(
            websocket::close_reason(websocket::close_code::going_away, "server shutting down"),
            asio::redirect_error(asio::use_awaitable, ec));
        co_return;
      }
      cursor::batch b;
      if (st->cur) b = st->cur->next(256);
      if (b.st == cursor::state::resync || b.st == cursor::state::lagged) {
        const bool resync = b.st == cursor::state::resync;
        if (!resync) svc.events->count_cut();
        std::string m = detail::control_message(resync ? "resync" : "error",
                                                resync ? "resync" : "slow_consumer", b.reason,
                                                st->cur->position());
        co_await ws.async_write(asio::buffer(m), asio::redirect_error(asio::use_awaitable, ec));
        co_await ws.async_close(websocket::close_reason(websocket::close_code::normal,
                                                        resync ? "resync" : "slow consumer"),
                                asio::redirect_error(asio::use_awaitable, ec));
        co_return;
      }
      for (const auto& m : b.messages) {
        co_await ws.async_write(asio::buffer(m->json),
                                asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return;
      }
      svc.events->count_delivered(b.messages.size());
      auto now = std::chrono::steady_clock::now();
      if (now - last_check >= svc.revalidate || svc.keys->generation() != key_generation) {
        last_check = now;
        key_generation = svc.keys->generation();
        if (!(co_await svc.keys->still_valid(req.who))) {
          std::string m = detail::control_message("error", "key_revoked",
                                                  "the API key of this stream was revoked",
                                                  st->cur ? st->cur->position() : 0);
          co_await ws.async_write(asio::buffer(m), asio::redirect_error(asio::use_awaitable, ec));
          co_await ws.async_close(
              websocket::close_reason(websocket::close_code::policy_error, "key revoked"),
              asio::redirect_error(asio::use_awaitable, ec));
          co_return;
        }
      }
      if (b.st != cursor::state::ready && st->outbox.empty()) {
        timer->expires_after(svc.revalidate);
        boost::system::error_code wait_ec;
        co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, wait_ec));
      }
    }
  };

  // The connection ends when either side ends (client closes / server closes the stream).
  co_await (reader() || writer());
}

}  // namespace statetrack::events
