// Fuzzes whole requests through the real pipeline, handlers, services and a real SQLite store:
// no input may crash, hang or produce a 5xx, and every response body must be valid JSON.
// Two input layouts, chosen by byte 0:
//  * byte 0 < 0xC0: byte 0 = method, then the target up to '\n', byte = content type, rest =
//    body (reaches the handlers quickly);
//  * byte 0 >= 0xC0: the rest is raw bytes on the connection, parsed by Beast under the
//    server's default header and body limits and converted as the server does; every
//    response the pipeline makes must serialise to a message an HTTP parser accepts.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json/parse.hpp>

#include "api/routes.hpp"
#include "api/services.hpp"
#include "core/api_keys.hpp"
#include "core/clock.hpp"
#include "core/machine_service.hpp"
#include "core/session_service.hpp"
#include "core/task_service.hpp"
#include "http/pipeline.hpp"
#include "http/router.hpp"
#include "http/wire.hpp"
#include "obs/logger.hpp"
#include "obs/metrics.hpp"
#include "obs/request_stats.hpp"
#include "storage/sqlite/sqlite_store.hpp"

namespace {

using namespace statetrack;

struct world {
  std::string dir =
      (std::filesystem::temp_directory_path() / ("statetrack-fuzz-" + std::to_string(::getpid())))
          .string();
  obs::registry metrics;
  obs::logger log{obs::level::error, obs::log_format::json, stderr};
  std::unique_ptr<storage::sqlite::sqlite_store> store;
  core::system_clock clock;
  std::unique_ptr<core::session_service> sessions;
  std::unique_ptr<core::task_service> tasks;
  std::unique_ptr<core::machine_service> machines;
  std::unique_ptr<core::key_verifier> keys;
  http::router router;
  std::unique_ptr<obs::request_stats> stats;
  std::unique_ptr<api::services> svc;
  std::unique_ptr<http::pipeline> pipe;

  world() {
    std::filesystem::create_directories(dir);
    storage::sqlite::store_options so;
    so.path = dir + "/fuzz.db";
    store = std::make_unique<storage::sqlite::sqlite_store>(so);
    sessions = std::make_unique<core::session_service>(*store, clock);
    tasks = std::make_unique<core::task_service>(*store, clock);
    machines = std::make_unique<core::machine_service>(*store, clock);
    keys =
        std::make_unique<core::key_verifier>(*store, std::vector<std::string>{"fuzz-key"}, clock);
    api::register_all(router);
    std::vector<obs::request_stats::route_info> infos;
    for (const auto& r : router.routes()) {
      infos.push_back({std::string(http::method_name(r->verb)), r->pattern});
    }
    stats = std::make_unique<obs::request_stats>(metrics, infos);
    svc = std::make_unique<api::services>(
        api::services{*store, clock, *sessions, *tasks, *machines, *keys, metrics, log, *stats,
                      router, nullptr, std::chrono::steady_clock::now(), "fuzz"});
    http::pipeline_options po;
    po.rate_limit_default = 0;
    po.rate_limit_heartbeat = 0;
    po.auth_failure_limit = 0;
    pipe = std::make_unique<http::pipeline>(router, *svc, po);
  }
};

world* the_one = nullptr;

world& the_world() {
  if (the_one == nullptr) {
    the_one = new world();  // lives for the whole fuzzing process
    // The database directory goes when the fuzzer exits (libFuzzer ends with exit()).
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(the_one->dir, ec);
    });
  }
  return *the_one;
}

}  // namespace

namespace {

// Runs one request through the pipeline and checks the response.
void run(world& w, statetrack::http::request& req, statetrack::http::response& res) {
  boost::asio::io_context ioc;
  auto done = boost::asio::co_spawn(ioc, w.pipe->handle(req, res), boost::asio::use_future);
  ioc.run();
  done.get();
  if (res.status >= 500) __builtin_trap();
  if (res.stream == nullptr && !res.body.empty() &&
      res.content_type.starts_with("application/json")) {
    boost::system::error_code ec;
    boost::json::parse(res.body, ec);
    if (ec) __builtin_trap();
  }
}

// Raw bytes: as many requests as the bytes hold, as on one keep-alive connection.
void raw(world& w, std::string_view bytes) {
  namespace bhttp = boost::beast::http;
  std::string_view left = bytes;
  for (int i = 0; i < 8 && !left.empty(); ++i) {
    bhttp::request_parser<bhttp::string_body> parser;
    parser.header_limit(16 * 1024);  // the server's defaults
    parser.body_limit(100 * 1024);
    parser.eager(true);
    boost::system::error_code ec;
    const std::size_t used = parser.put(boost::asio::buffer(left.data(), left.size()), ec);
    if (ec || !parser.is_done()) return;  // the server answers 400/413/431 or waits for more
    left.remove_prefix(used);
    statetrack::http::request req;
    auto msg = parser.release();
    statetrack::http::fill_request(req, msg, "127.0.0.1");
    if (req.api_key.empty() && req.authorization.empty()) req.api_key = "fuzz-key";
    statetrack::http::response res;
    run(w, req, res);
    if (res.stream != nullptr) return;
    const std::string out = statetrack::http::serialize(
        res, req.verb == statetrack::http::method::head, req.keep_alive, msg.version());
    bhttp::response_parser<bhttp::string_body> check;
    check.eager(true);
    if (req.verb == statetrack::http::method::head) check.skip(true);
    check.put(boost::asio::buffer(out), ec);
    if (ec || !check.is_done() || check.get().result_int() != res.status) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  world& w = the_world();
  if (data[0] >= 0xC0) {
    raw(w, std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
    return 0;
  }
  static constexpr statetrack::http::method methods[] = {
      statetrack::http::method::get,  statetrack::http::method::post,
      statetrack::http::method::put,  statetrack::http::method::del,
      statetrack::http::method::head, statetrack::http::method::options};
  static constexpr const char* method_texts[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"};
  static constexpr const char* types[] = {"application/json", "application/x-www-form-urlencoded",
                                          "text/plain", ""};
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::size_t m = static_cast<unsigned char>(in[0]) % 6;
  in.remove_prefix(1);
  const std::size_t nl = in.find('\n');
  if (nl == std::string_view::npos || nl + 1 >= in.size()) return 0;
  statetrack::http::request req;
  req.verb = methods[m];
  req.method_text = method_texts[m];
  req.target = "/" + std::string(in.substr(0, nl));
  req.content_type = types[static_cast<unsigned char>(in[nl + 1]) % 4];
  req.body = std::string(in.substr(nl + 2));
  req.api_key = "fuzz-key";
  req.client_ip = "127.0.0.1";
  statetrack::http::response res;
  run(w, req, res);
  return 0;
}
