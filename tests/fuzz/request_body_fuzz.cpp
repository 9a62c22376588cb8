// Fuzzes body parsing and validation against every request schema: no input may crash, and
// anything accepted must hold only finite numbers and re-serialise as valid JSON.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "api/schemas.hpp"
#include "api/validation.hpp"

namespace {

bool all_finite(const boost::json::value& v) {
  if (v.is_double()) return std::isfinite(v.as_double());
  if (v.is_array()) {
    for (const auto& e : v.as_array()) {
      if (!all_finite(e)) return false;
    }
  }
  if (v.is_object()) {
    for (const auto& kv : v.as_object()) {
      if (!all_finite(kv.value())) return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  // First byte picks the content type, the rest is the body.
  const std::string_view types[] = {"application/json", "application/x-www-form-urlencoded",
                                    "text/plain", "application/merge-patch+json"};
  std::string_view ct = types[data[0] % 4];
  std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  auto parsed = statetrack::api::parse_body(ct, body);
  if (!parsed) return 0;
  if (!all_finite(*parsed)) __builtin_trap();
  for (const auto* s : statetrack::api::schemas::all()) {
    auto r = statetrack::api::validate_body(*s, *parsed);
    if (r) {
      auto text = boost::json::serialize(*r);
      boost::system::error_code ec;
      boost::json::parse(text, ec);
      if (ec) __builtin_trap();
    }
  }
  return 0;
}
