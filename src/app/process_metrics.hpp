// Scrape-time gauges: sessions by status, process CPU and memory, store queue.
#pragma once

namespace statetrack::obs {
class registry;
}
namespace statetrack::storage {
class store;
}

namespace statetrack::app {

void register_process_metrics(obs::registry& metrics, storage::store& store);

}  // namespace statetrack::app
