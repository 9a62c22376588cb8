// Maps (method, path) to a route. Literal segments always beat `:param` segments (so
// /sessions/failed is never read as an id), matching is case-insensitive, one trailing slash
// is tolerated, and parameters are percent-decoded. Built once at start, then read-only.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "core/access.hpp"
#include "http/message.hpp"

namespace statetrack::api {
struct context;
}

namespace statetrack::http {

using handler_fn = boost::asio::awaitable<void> (*)(api::context&);

enum class limit_class { none, standard, heartbeat };

// The object a route acts on, named by its first path parameter: for a restricted key (machine
// key or project scope) the pipeline loads it and checks the key may touch it before the
// handler runs.
enum class target_kind { none, session, task, machine, project };

// OpenAPI facts about a route, kept next to the route so the document cannot drift.
struct route_doc {
  std::string_view summary;
  std::string_view tag;
  std::string_view request_schema;   // name of a body schema, empty if none
  std::string_view query_schema;     // name of a query schema, empty if none
  std::string_view response_schema;  // component name or inline JSON schema text
  bool response_is_array = false;
};

struct route {
  method verb = method::get;
  std::string pattern;  // e.g. /sessions/:id/heartbeat
  std::string name;     // handler name, e.g. post_session_heartbeat (metrics label)
  handler_fn handler = nullptr;
  limit_class limit = limit_class::standard;
  bool authenticated = true;
  bool accepts_ticket = false;  // `?ticket=` (a stream ticket) may replace the key header
  // The right the route needs and what it acts on; set for every route from the access table
  // (api/access.cpp), which refuses to start with a route it does not list.
  core::access_level need = core::access_level::admin;
  bool machine_ok = false;  // machine keys may call it (for their own machine)
  target_kind target = target_kind::none;
  unsigned success_status = 200;
  route_doc doc;
  std::size_t index = 0;  // dense id assigned by the router
};

struct match {
  const route* r = nullptr;
  std::vector<std::string> params;
  bool bad_escape = false;  // a parameter had an invalid percent-escape
  std::string bad_param;
};

class router {
 public:
  router();
  ~router();
  router(const router&) = delete;
  router& operator=(const router&) = delete;

  // Registers the route at its pattern and, unless the pattern already starts with /api,
  // also under /api.
  const route& add(route r);

  // `path` excludes the query string. HEAD falls back to the GET route.
  match find(method m, std::string_view path) const;

  const std::vector<std::unique_ptr<route>>& routes() const { return routes_; }

 private:
  struct node;
  void insert(std::string_view pattern, const route* r);
  std::unique_ptr<node> root_;
  std::vector<std::unique_ptr<route>> routes_;
};

// Percent-decodes `in`; false on an invalid escape. `plus_as_space` for query strings.
bool percent_decode(std::string_view in, std::string& out, bool plus_as_space);

// Splits a query string into decoded (name, value) pairs in order. Invalid escapes are kept
// verbatim, like Express's query parser.
std::vector<std::pair<std::string, std::string>> parse_query(std::string_view query);

}  // namespace statetrack::http
