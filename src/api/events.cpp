// Event-stream routes: the WebSocket (GET /events) and server-sent events
// (GET /events/stream) endpoints validate the subscription and hand the connection to the
// stream transports; POST /events/ticket issues the single-use tickets browsers use instead
// of a key header.
#include <cmath>
#include <limits>

#include "api/context.hpp"
#include "api/request.hpp"
#include "api/routes.hpp"
#include "api/services.hpp"
#include "api/validation.hpp"
#include "core/tickets.hpp"
#include "events/stream.hpp"
#include "http/router.hpp"
#include "util/json_writer.hpp"

namespace statetrack::api {

namespace {

using boost::asio::awaitable;

// Query: project_id, session_id, machine_id, types (comma-separated, `session.*` prefixes),
// since (seq); for SSE also the Last-Event-ID header. Unknown parameters are refused.
core::result<events::stream_request> subscription_of(const context& ctx, events::transport kind) {
  events::stream_request out;
  out.kind = kind;
  std::vector<std::string> problems;
  for (auto& [k, v] : query_params(ctx)) {
    if (k == "project_id") {
      out.f.project_id = v;
    } else if (k == "session_id") {
      out.f.session_id = v;
    } else if (k == "machine_id") {
      out.f.machine_id = v;
    } else if (k == "types") {
      std::size_t i = 0;
      while (i <= v.size()) {
        std::size_t j = v.find(',', i);
        if (j == std::string::npos) j = v.size();
        if (j > i) out.f.types.push_back(v.substr(i, j - i));
        i = j + 1;
      }
    } else if (k == "since") {
      double n = js_number(v);
      if (v.empty() || !std::isfinite(n) || std::floor(n) != n || n < 0 || n > 9e15) {
        problems.emplace_back("since must be a non-negative integer (an event seq)");
      } else {
        out.since = static_cast<std::int64_t>(n);
      }
    } else if (k != "ticket") {
      problems.push_back("property " + k + " should not exist");
    }
  }
  if (kind == events::transport::sse && !ctx.req.last_event_id.empty()) {
    double n = js_number(ctx.req.last_event_id);
    if (!std::isfinite(n) || std::floor(n) != n || n < 0 || n > 9e15) {
      problems.emplace_back("Last-Event-ID must be an event seq");
    } else {
      out.since = static_cast<std::int64_t>(n);
    }
  }
  if (!problems.empty()) return core::validation_error(std::move(problems));
  // The key's scope, which no query or subscribe message can widen.
  out.f.scope_projects = ctx.who.projects;
  if (ctx.who.machine_bound()) out.f.scope_machine = ctx.who.machine_id;
  out.who = ctx.who;
  out.request_id = ctx.request_id;
  return out;
}

// GET /events -> 101 WebSocket | 400 not an upgrade or bad filters | 401
awaitable<void> get_events_websocket(context& ctx) {
  if (!ctx.req.websocket_upgrade) {
    co_return ctx.fail(core::make_error(
        core::errc::bad_request,
        "This endpoint speaks WebSocket (send Upgrade: websocket); for server-sent events use "
        "GET /api/events/stream"));
  }
  auto sub = subscription_of(ctx, events::transport::websocket);
  if (!sub) co_return ctx.fail(sub.error());
  ctx.res.status = 101;
  ctx.res.stream = std::make_shared<events::stream_request>(std::move(*sub));
}

// GET /events/stream -> 200 text/event-stream | 400 bad filters | 401
awaitable<void> get_events_stream(context& ctx) {
  auto sub = subscription_of(ctx, events::transport::sse);
  if (!sub) co_return ctx.fail(sub.error());
  ctx.res.status = 200;
  ctx.res.content_type = "text/event-stream";
  ctx.res.stream = std::make_shared<events::stream_request>(std::move(*sub));
}

// POST /events/ticket -> 201 {ticket, expires_at} | 401
awaitable<void> post_events_ticket(context& ctx) {
  auto t = co_await core::issue_ticket(ctx.svc.store, ctx.who, ctx.now);
  std::string out;
  util::json_writer w(out);
  w.begin_object();
  w.field("ticket", t.ticket);
  w.field_iso("expires_at", t.expires_at.ms);
  w.end_object();
  ctx.reply(std::move(out));
}

}  // namespace

void register_event_routes(http::router& r) {
  http::route ws;
  ws.verb = http::method::get;
  ws.pattern = "/events";
  ws.name = "get_events_websocket";
  ws.handler = get_events_websocket;
  ws.accepts_ticket = true;
  ws.success_status = 101;
  ws.doc = {
      "Event stream over WebSocket (filters and `since` in the query or a subscribe "
      "message; `?ticket=` for browsers)",
      "events", "", "", "EventMessage"};
  r.add(std::move(ws));
  http::route sse;
  sse.verb = http::method::get;
  sse.pattern = "/events/stream";
  sse.name = "get_events_stream";
  sse.handler = get_events_stream;
  sse.accepts_ticket = true;
  sse.doc = {
      "Event stream as server-sent events (filters and `since` in the query, or "
      "Last-Event-ID; `?ticket=` for browsers)",
      "events", "", "", "EventStream"};
  r.add(std::move(sse));
  http::route ticket;
  ticket.verb = http::method::post;
  ticket.pattern = "/events/ticket";
  ticket.name = "post_events_ticket";
  ticket.handler = post_events_ticket;
  ticket.success_status = 201;
  ticket.doc = {"A single-use ticket (30 s) to open one event stream without a key header",
                "events", "", "", "StreamTicket"};
  r.add(std::move(ticket));
}

}  // namespace statetrack::api
