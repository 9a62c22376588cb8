// Fuzzes path matching and query parsing with the real route table.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "api/routes.hpp"
#include "http/router.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const statetrack::http::router* r = [] {
    auto* router = new statetrack::http::router();
    statetrack::api::register_all(*router);
    return router;
  }();
  if (size == 0) return 0;
  auto m = static_cast<statetrack::http::method>(data[0] % 8);
  std::string_view target(reinterpret_cast<const char*>(data + 1), size - 1);
  auto q = target.find('?');
  auto found = r->find(m, target.substr(0, q));
  if (found.r != nullptr && found.params.size() > 8) __builtin_trap();
  if (q != std::string_view::npos) {
    auto params = statetrack::http::parse_query(target.substr(q + 1));
    for (const auto& [k, v] : params) {
      if (k.empty()) __builtin_trap();
    }
  }
  return 0;
}
