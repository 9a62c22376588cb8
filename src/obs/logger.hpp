// Structured logging: one JSON object per line on stdout (or human-readable lines), level
// checked before anything is formatted, sensitive fields redacted by name. Lines are
// buffered and flushed by a background thread (at once for warnings and errors), so the
// request path never waits for a terminal. Created by the app; shared by reference.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "util/json_writer.hpp"

namespace statetrack::obs {

enum class level { debug = 0, info = 1, warn = 2, error = 3 };

std::string_view level_name(level l);         // DEBUG, INFO, WARN, ERROR (as in log lines)
std::string_view level_option_name(level l);  // debug, info, warn, error (as --log-level)
bool parse_level(std::string_view text, level& out);
// One step more verbose (error -> warn -> info -> debug) or less; saturates at the ends.
level more_verbose(level l);
level less_verbose(level l);

enum class log_format { json, pretty };

// Builds the `context` object of a line. Field names that look secret are redacted.
class fields {
 public:
  fields() : w_(buf_) { w_.begin_object(); }
  fields& add(std::string_view k, std::string_view v);
  fields& add(std::string_view k, const char* v) { return add(k, std::string_view(v)); }
  fields& add(std::string_view k, std::int64_t v);
  fields& add(std::string_view k, int v) { return add(k, static_cast<std::int64_t>(v)); }
  fields& add(std::string_view k, std::uint64_t v);
  fields& add(std::string_view k, double v);
  fields& add(std::string_view k, bool v);
  fields& add_raw(std::string_view k, std::string_view json);
  const std::string& finish();
  bool empty() const { return count_ == 0; }

 private:
  std::string buf_;
  util::json_writer w_;
  int count_ = 0;
  bool finished_ = false;
};

bool is_sensitive_field(std::string_view name);

class logger {
 public:
  explicit logger(level min = level::info, log_format fmt = log_format::json,
                  std::FILE* out = stdout);
  ~logger();
  logger(const logger&) = delete;
  logger& operator=(const logger&) = delete;

  bool enabled(level l) const { return l >= min_.load(std::memory_order_relaxed); }
  void set_level(level l) { min_.store(l, std::memory_order_relaxed); }
  level get_level() const { return min_.load(std::memory_order_relaxed); }
  // Sets the minimum level at run time and writes one INFO line saying so, whatever the new
  // level; `by` says who asked (SIGUSR1, SIGUSR2, api). Returns the previous level.
  level change_level(level to, std::string_view by, fields* ctx = nullptr);

  void log(level l, std::string_view service, std::string_view message, fields* ctx = nullptr);
  void debug(std::string_view service, std::string_view msg, fields* ctx = nullptr) {
    if (enabled(level::debug)) log(level::debug, service, msg, ctx);
  }
  void info(std::string_view service, std::string_view msg, fields* ctx = nullptr) {
    if (enabled(level::info)) log(level::info, service, msg, ctx);
  }
  void warn(std::string_view service, std::string_view msg, fields* ctx = nullptr) {
    if (enabled(level::warn)) log(level::warn, service, msg, ctx);
  }
  void error(std::string_view service, std::string_view msg, fields* ctx = nullptr) {
    if (enabled(level::error)) log(level::error, service, msg, ctx);
  }

  // Writes a plain line (the ready line, the one-time admin key) and flushes at once.
  void print_line(std::string_view text);
  void flush();

 private:
  void flusher_loop();
  void write_out(const std::string& data);
  // Formats and queues a line without looking at the minimum level.
  void emit(level l, std::string_view service, std::string_view message, fields* ctx);

  std::atomic<level> min_;
  log_format format_;
  std::FILE* out_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;
  bool urgent_ = false;
  bool stopping_ = false;
  std::mutex write_mu_;
  std::thread flusher_;
};

}  // namespace statetrack::obs
