// Method names and reason phrases.
#include "http/message.hpp"

namespace statetrack::http {

std::string_view method_name(method m) {
  switch (m) {
    case method::get:
      return "GET";
    case method::head:
      return "HEAD";
    case method::post:
      return "POST";
    case method::put:
      return "PUT";
    case method::patch:
      return "PATCH";
    case method::del:
      return "DELETE";
    case method::options:
      return "OPTIONS";
    case method::other:
      return "OTHER";
  }
  return "OTHER";
}

std::string_view reason_phrase(unsigned status) {
  switch (status) {
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 304:
      return "Not Modified";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 413:
      return "Payload Too Large";
    case 415:
      return "Unsupported Media Type";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Unknown";
  }
}

namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_hex(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
bool is_name_char(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' || c == '-';
}

}  // namespace

std::optional<std::string> https_location(std::string_view host, std::string_view target,
                                          std::uint16_t https_port) {
  if (host.empty() || host.size() > 255) return std::nullopt;
  std::string_view name;
  std::string_view port;
  if (host.front() == '[') {
    const auto close = host.find(']');
    if (close == std::string_view::npos || close == 1) return std::nullopt;
    for (char c : host.substr(1, close - 1)) {
      if (!is_hex(c) && c != ':' && c != '.') return std::nullopt;
    }
    name = host.substr(0, close + 1);
    std::string_view rest = host.substr(close + 1);
    if (!rest.empty() && rest.front() != ':') return std::nullopt;
    port = rest.empty() ? rest : rest.substr(1);
  } else {
    const auto colon = host.find(':');
    name = host.substr(0, colon);
    port = colon == std::string_view::npos ? std::string_view{} : host.substr(colon + 1);
    if (name.empty()) return std::nullopt;
    for (char c : name) {
      if (!is_name_char(c)) return std::nullopt;
    }
  }
  for (char c : port) {
    if (!is_digit(c)) return std::nullopt;
  }
  std::string out = "https://";
  out += name;
  if (https_port != 443) {
    out += ':';
    out += std::to_string(https_port);
  }
  // Origin-form targets are kept; anything else (absolute-form, '*') becomes "/".
  out += target.starts_with('/') ? target : std::string_view("/");
  return out;
}

}  // namespace statetrack::http
