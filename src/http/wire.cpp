#include "http/wire.hpp"

#include <boost/beast/core/string.hpp>

namespace statetrack::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

namespace {

method to_method(bhttp::verb v) {
  switch (v) {
    case bhttp::verb::get:
      return method::get;
    case bhttp::verb::head:
      return method::head;
    case bhttp::verb::post:
      return method::post;
    case bhttp::verb::put:
      return method::put;
    case bhttp::verb::patch:
      return method::patch;
    case bhttp::verb::delete_:
      return method::del;
    case bhttp::verb::options:
      return method::options;
    default:
      return method::other;
  }
}

std::string trimmed(beast::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t'))
    v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t'))
    v.remove_suffix(1);
  return std::string(v);
}

void append_uint(std::string& s, std::size_t v) {
  s += std::to_string(v);
}

}  // namespace

void fill_request(request& out, bhttp::request<bhttp::string_body>& in, const std::string& ip) {
  out.verb = to_method(in.method());
  out.method_text = std::string(in.method_string());
  out.target = std::string(in.target());
  out.body = std::move(in.body());
  out.client_ip = ip;
  out.keep_alive = in.keep_alive();
  for (const auto& f : in) {
    switch (f.name()) {
      case bhttp::field::content_type:
        out.content_type = std::string(f.value());
        break;
      case bhttp::field::authorization:
        out.authorization = trimmed(f.value());
        break;
      case bhttp::field::origin:
        out.origin = std::string(f.value());
        break;
      case bhttp::field::host:
        out.host = trimmed(f.value());
        break;
      case bhttp::field::access_control_request_headers:
        out.acr_headers = std::string(f.value());
        break;
      case bhttp::field::upgrade:
        // Set below from the whole message.
        break;
      default: {
        auto name = f.name_string();
        if (beast::iequals(name, "x-api-key")) {
          out.api_key = trimmed(f.value());
        } else if (beast::iequals(name, "x-request-id")) {
          out.request_id = trimmed(f.value());
        } else if (beast::iequals(name, "last-event-id")) {
          out.last_event_id = trimmed(f.value());
        }
      }
    }
  }
}

// Serialises status line, headers and (unless HEAD) body into one buffer.
std::string serialize(const response& res, bool head_only, bool keep_alive, unsigned version) {
  std::string out;
  out.reserve(res.body.size() + 256);
  out += version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
  append_uint(out, res.status);
  out += ' ';
  out += reason_phrase(res.status);
  out += "\r\n";
  if (res.status != 204 && res.status != 304) {
    out += "Content-Type: ";
    out += res.content_type;
    out += "\r\nContent-Length: ";
    append_uint(out, res.body.size());
    out += "\r\n";
  }
  for (const auto& [name, value] : res.headers) {
    out += name;
    out += ": ";
    out += value;
    out += "\r\n";
  }
  if (!keep_alive) {
    out += "Connection: close\r\n";
  } else if (version == 10) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
  if (!head_only && res.status != 204 && res.status != 304) out += res.body;
  return out;
}

}  // namespace statetrack::http
