// Metadata parsing and merging.
#include "core/metadata.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

namespace statetrack::core {

boost::json::object parse_metadata(std::string_view text) {
  boost::system::error_code ec;
  auto v = boost::json::parse(text, ec);
  if (ec || !v.is_object()) return {};
  return std::move(v.as_object());
}

std::string serialize_metadata(const boost::json::object& o) {
  return boost::json::serialize(o);
}

std::string merge_metadata(std::string_view stored, const boost::json::object& patch) {
  auto o = parse_metadata(stored);
  for (const auto& kv : patch)
    o[kv.key()] = kv.value();
  return serialize_metadata(o);
}

}  // namespace statetrack::core
