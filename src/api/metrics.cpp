// GET /metrics: Prometheus text exposition of every registered series.
#include "obs/metrics.hpp"

#include "api/context.hpp"
#include "api/routes.hpp"
#include "api/services.hpp"

namespace statetrack::api {

namespace {

// GET /metrics -> 200 text/plain (Prometheus 0.0.4)
boost::asio::awaitable<void> get_metrics(context& ctx) {
  ctx.res.content_type = "text/plain; version=0.0.4; charset=utf-8";
  ctx.reply(ctx.svc.metrics.render_prometheus());
  co_return;
}

}  // namespace

void register_metrics_routes(http::router& r) {
  http::route rt;
  rt.verb = http::method::get;
  rt.pattern = "/metrics";
  rt.name = "get_metrics";
  rt.handler = get_metrics;
  rt.doc.summary = "Prometheus metrics";
  rt.doc.tag = "metrics";
  rt.doc.response_schema = "PrometheusText";
  r.add(std::move(rt));
}

}  // namespace statetrack::api
