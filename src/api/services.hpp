// Everything a handler may use, wired once by the app and shared by all requests.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace statetrack::core {
class clock;
class session_service;
class task_service;
class machine_service;
class key_verifier;
}  // namespace statetrack::core
namespace statetrack::storage {
class store;
}
namespace statetrack::obs {
class registry;
class logger;
class request_stats;
}  // namespace statetrack::obs
namespace statetrack::http {
class router;
}
namespace statetrack::jobs {
class scheduler;
}

namespace statetrack::api {

struct services {
  storage::store& store;
  const core::clock& clock;
  core::session_service& sessions;
  core::task_service& tasks;
  core::machine_service& machines;
  core::key_verifier& keys;
  obs::registry& metrics;
  obs::logger& log;
  obs::request_stats& requests;
  const http::router& router;
  jobs::scheduler* jobs = nullptr;
  std::chrono::steady_clock::time_point started_at = std::chrono::steady_clock::now();
  std::string version;
};

}  // namespace statetrack::api
