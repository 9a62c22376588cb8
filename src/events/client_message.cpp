#include "events/client_message.hpp"

#include <limits>
#include <string>

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

namespace statetrack::events {

namespace {

// Reads an optional string field; false when present with another type.
bool optional_string(const boost::json::object& o, std::string_view key,
                     std::optional<std::string>& dst) {
  const auto* x = o.if_contains(key);
  if (x == nullptr || x->is_null()) return true;
  if (!x->is_string()) return false;
  dst = std::string(x->as_string());
  return true;
}

client_message parse_subscribe(const boost::json::object& o) {
  client_message m;
  m.k = client_message::kind::bad_subscription;
  if (!optional_string(o, "project_id", m.f.project_id) ||
      !optional_string(o, "session_id", m.f.session_id) ||
      !optional_string(o, "machine_id", m.f.machine_id)) {
    return m;
  }
  if (const auto* t = o.if_contains("types"); t != nullptr && !t->is_null()) {
    if (!t->is_array()) return m;
    for (const auto& e : t->as_array()) {
      if (!e.is_string()) return m;
      m.f.types.emplace_back(e.as_string());
    }
  }
  if (const auto* s = o.if_contains("since"); s != nullptr && !s->is_null()) {
    if (s->is_int64() && s->as_int64() >= 0) {
      m.since = s->as_int64();
    } else if (s->is_uint64() && s->as_uint64() <= static_cast<std::uint64_t>(
                                                       std::numeric_limits<std::int64_t>::max())) {
      m.since = static_cast<std::int64_t>(s->as_uint64());
    } else {
      return m;
    }
  }
  m.k = client_message::kind::subscribe;
  return m;
}

}  // namespace

client_message parse_client_message(std::string_view text) {
  client_message m;
  boost::system::error_code ec;
  const auto v = boost::json::parse(text, ec);
  if (ec || !v.is_object()) return m;
  const auto& o = v.as_object();
  const auto* type = o.if_contains("type");
  if (type == nullptr || !type->is_string()) return m;
  const auto& t = type->as_string();
  if (t == "ping") {
    m.k = client_message::kind::ping;
  } else if (t == "unsubscribe") {
    m.k = client_message::kind::unsubscribe;
  } else if (t == "subscribe") {
    m = parse_subscribe(o);
  } else {
    m.k = client_message::kind::unknown_type;
  }
  return m;
}

std::string_view client_message_error_code(client_message::kind k) {
  switch (k) {
    case client_message::kind::bad_subscription:
      return "bad_subscription";
    case client_message::kind::unknown_type:
      return "unknown_type";
    default:
      return "bad_message";
  }
}

std::string_view client_message_error(client_message::kind k) {
  switch (k) {
    case client_message::kind::bad_subscription:
      return "project_id, session_id and machine_id are strings, types an array of strings, "
             "since a non-negative integer";
    case client_message::kind::unknown_type:
      return "unknown message type; use subscribe, unsubscribe or ping";
    default:
      return "messages are JSON objects with a string `type`";
  }
}

}  // namespace statetrack::events
