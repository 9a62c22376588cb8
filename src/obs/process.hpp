// Process and host figures for health endpoints and metrics, read from the kernel.
#pragma once

#include <cstdint>

namespace statetrack::obs {

struct process_figures {
  std::uint64_t rss_bytes = 0;
  std::uint64_t virtual_bytes = 0;
  std::uint64_t heap_allocated_bytes = 0;  // bytes in use by malloc
  std::uint64_t heap_reserved_bytes = 0;   // bytes obtained from the system by malloc
  std::int64_t cpu_user_ms = 0;
  std::int64_t cpu_system_ms = 0;
  std::int64_t open_fds = 0;
};

struct host_figures {
  std::uint64_t total_memory_bytes = 0;
  std::uint64_t free_memory_bytes = 0;
  std::int64_t cpus = 0;
};

process_figures read_process();
host_figures read_host();

}  // namespace statetrack::obs
