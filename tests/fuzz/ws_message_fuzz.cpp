// Fuzzes what an event-stream WebSocket client can send: the input is raw bytes on the wire
// after a valid upgrade request, so Beast's frame decoding (masking, fragmentation, control
// frames, UTF-8 checks, the message size limit) runs first, and every message that gets
// through is parsed as a client message. No input may crash; an accepted subscription never
// resumes from a negative seq and a rejected message always has an error code.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <boost/asio/io_context.hpp>
#include <boost/beast/_experimental/test/stream.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>

#include "events/client_message.hpp"

namespace {

namespace beast = boost::beast;
namespace websocket = beast::websocket;

constexpr std::string_view upgrade =
    "GET /api/events HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n";

void check(std::string_view text) {
  using statetrack::events::client_message;
  const auto m = statetrack::events::parse_client_message(text);
  if (m.k == client_message::kind::subscribe && m.since && *m.since < 0) __builtin_trap();
  if (m.k != client_message::kind::subscribe && m.k != client_message::kind::ping &&
      m.k != client_message::kind::unsubscribe &&
      statetrack::events::client_message_error_code(m.k).empty()) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  // The same bytes as one message's text, then as frames on the wire.
  check(bytes);

  boost::asio::io_context ioc;
  beast::test::stream client(ioc);
  beast::test::stream server(ioc);
  server.connect(client);
  server.append(upgrade);
  server.append(bytes);
  server.close_remote();  // reads end with EOF once the input is used up

  websocket::stream<beast::test::stream&> ws(server);
  ws.read_message_max(16 * 1024);  // as the server's default stream options
  boost::system::error_code ec;
  ws.accept(ec);
  if (ec) return 0;
  for (int i = 0; i < 64; ++i) {
    beast::flat_buffer in;
    ws.read(in, ec);
    if (ec) break;
    check(beast::buffers_to_string(in.data()));
  }
  return 0;
}
