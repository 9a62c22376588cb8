// `statetrack serve`: wires store, services, router, pipeline, server and jobs, runs the
// io_context threads, and drains on SIGTERM/SIGINT.
#pragma once

#include "app/config.hpp"

namespace statetrack::app {

int serve(const config& cfg);

}  // namespace statetrack::app
