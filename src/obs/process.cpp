// /proc, getrusage, mallinfo2 and sysinfo readings.
#include "obs/process.hpp"

#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <thread>
#include <unistd.h>

namespace statetrack::obs {

process_figures read_process() {
  process_figures p;
  if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
    char buf[128] = {};
    if (std::fgets(buf, sizeof buf, f) != nullptr) {
      char* end = nullptr;
      const unsigned long long size = std::strtoull(buf, &end, 10);
      const unsigned long long resident = std::strtoull(end, nullptr, 10);
      auto page = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
      p.virtual_bytes = size * page;
      p.rss_bytes = resident * page;
    }
    std::fclose(f);
  }
  struct mallinfo2 mi = mallinfo2();
  p.heap_allocated_bytes = mi.uordblks + mi.hblkhd;
  p.heap_reserved_bytes = mi.arena + mi.hblkhd;
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    p.cpu_user_ms = ru.ru_utime.tv_sec * 1000 + ru.ru_utime.tv_usec / 1000;
    p.cpu_system_ms = ru.ru_stime.tv_sec * 1000 + ru.ru_stime.tv_usec / 1000;
  }
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d) != nullptr)
      ++p.open_fds;
    closedir(d);
    p.open_fds -= 3;  // ".", ".." and the directory handle itself
  }
  return p;
}

host_figures read_host() {
  host_figures h;
  struct sysinfo si {};
  if (sysinfo(&si) == 0) {
    h.total_memory_bytes = static_cast<std::uint64_t>(si.totalram) * si.mem_unit;
    h.free_memory_bytes = static_cast<std::uint64_t>(si.freeram) * si.mem_unit;
  }
  h.cpus = static_cast<std::int64_t>(std::thread::hardware_concurrency());
  return h;
}

}  // namespace statetrack::obs
