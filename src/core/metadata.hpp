// Metadata objects are stored as JSON text; these helpers parse, merge and re-serialize them
// for the few operations that change metadata (merges, failure and recovery bookkeeping).
#pragma once

#include <string>
#include <string_view>

#include <boost/json/object.hpp>

namespace statetrack::core {

// Parses stored metadata; anything that is not an object yields {}.
boost::json::object parse_metadata(std::string_view text);
std::string serialize_metadata(const boost::json::object& o);
// Shallow merge: top-level keys of `patch` overwrite those of the stored object.
std::string merge_metadata(std::string_view stored, const boost::json::object& patch);

}  // namespace statetrack::core
