// JSON line formatting, redaction and the buffered writer.
#include "obs/logger.hpp"

#include <array>
#include <cerrno>
#include <chrono>
#include <unistd.h>

#include "core/clock.hpp"
#include "core/types.hpp"

namespace statetrack::obs {

std::string_view level_name(level l) {
  switch (l) {
    case level::debug:
      return "DEBUG";
    case level::info:
      return "INFO";
    case level::warn:
      return "WARN";
    case level::error:
      return "ERROR";
  }
  return "INFO";
}

std::string_view level_option_name(level l) {
  switch (l) {
    case level::debug:
      return "debug";
    case level::info:
      return "info";
    case level::warn:
      return "warn";
    case level::error:
      return "error";
  }
  return "info";
}

level more_verbose(level l) {
  return l == level::debug ? level::debug : static_cast<level>(static_cast<int>(l) - 1);
}

level less_verbose(level l) {
  return l == level::error ? level::error : static_cast<level>(static_cast<int>(l) + 1);
}

bool parse_level(std::string_view t, level& out) {
  std::string s(t);
  for (char& c : s)
    c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  if (s == "debug" || s == "verbose" || s == "trace") {
    out = level::debug;
  } else if (s == "info" || s == "log") {
    out = level::info;
  } else if (s == "warn" || s == "warning") {
    out = level::warn;
  } else if (s == "error" || s == "fatal") {
    out = level::error;
  } else {
    return false;
  }
  return true;
}

bool is_sensitive_field(std::string_view name) {
  std::string s(name);
  for (char& c : s)
    c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  static constexpr std::array<std::string_view, 9> needles = {"authorization", "api_key",  "apikey",
                                                              "x-api-key",     "password", "secret",
                                                              "token",         "cookie",   "body"};
  for (auto n : needles) {
    if (s.find(n) != std::string::npos) return true;
  }
  return false;
}

fields& fields::add(std::string_view k, std::string_view v) {
  ++count_;
  w_.key(k);
  if (is_sensitive_field(k)) {
    w_.value("[REDACTED]");
  } else {
    w_.value(v);
  }
  return *this;
}
fields& fields::add(std::string_view k, std::int64_t v) {
  ++count_;
  w_.key(k).value(v);
  return *this;
}
fields& fields::add(std::string_view k, std::uint64_t v) {
  ++count_;
  w_.key(k).value(v);
  return *this;
}
fields& fields::add(std::string_view k, double v) {
  ++count_;
  w_.key(k).value(v);
  return *this;
}
fields& fields::add(std::string_view k, bool v) {
  ++count_;
  w_.key(k).value(v);
  return *this;
}
fields& fields::add_raw(std::string_view k, std::string_view json) {
  ++count_;
  w_.key(k);
  if (is_sensitive_field(k)) {
    w_.value("[REDACTED]");
  } else {
    w_.raw(json);
  }
  return *this;
}
const std::string& fields::finish() {
  if (!finished_) {
    w_.end_object();
    finished_ = true;
  }
  return buf_;
}

logger::logger(level min, log_format fmt, std::FILE* out) : min_(min), format_(fmt), out_(out) {
  flusher_ = std::thread([this] { flusher_loop(); });
}

logger::~logger() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (flusher_.joinable()) flusher_.join();
}

void logger::log(level l, std::string_view service, std::string_view message, fields* ctx) {
  if (!enabled(l)) return;
  emit(l, service, message, ctx);
}

level logger::change_level(level to, std::string_view by, fields* ctx) {
  const level from = min_.exchange(to, std::memory_order_relaxed);
  fields own;
  fields& f = ctx != nullptr ? *ctx : own;
  f.add("from", level_option_name(from)).add("to", level_option_name(to)).add("by", by);
  std::string msg = "log level set to ";
  msg += level_option_name(to);
  emit(level::info, "App", msg, &f);
  return from;
}

void logger::emit(level l, std::string_view service, std::string_view message, fields* ctx) {
  std::string line;
  line.reserve(256);
  auto now = core::system_clock{}.now();
  if (format_ == log_format::json) {
    util::json_writer w(line);
    w.begin_object();
    w.field_iso("timestamp", now.ms);
    w.field("level", level_name(l));
    w.field("message", message);
    if (!service.empty()) w.field("service", service);
    if (ctx != nullptr && !ctx->empty()) w.field_raw("context", ctx->finish());
    w.end_object();
  } else {
    core::append_iso(line, now);
    line += ' ';
    line += level_name(l);
    line += " [";
    line += service;
    line += "] ";
    line += message;
    if (ctx != nullptr && !ctx->empty()) {
      line += ' ';
      line += ctx->finish();
    }
  }
  line += '\n';
  {
    std::lock_guard lk(mu_);
    pending_ += line;
    if (l >= level::warn || pending_.size() > 64 * 1024) urgent_ = true;
  }
  if (l >= level::warn) cv_.notify_one();
}

void logger::print_line(std::string_view text) {
  std::string line(text);
  line += '\n';
  std::lock_guard wl(write_mu_);
  std::string before;
  {
    std::lock_guard lk(mu_);
    before.swap(pending_);
  }
  if (!before.empty()) write_out(before);
  write_out(line);
}

void logger::flush() {
  // write_mu_ first, so that what is swapped out is written before anything newer.
  std::lock_guard wl(write_mu_);
  std::string data;
  {
    std::lock_guard lk(mu_);
    data.swap(pending_);
    urgent_ = false;
  }
  if (!data.empty()) write_out(data);
}

void logger::write_out(const std::string& data) {
  int fd = fileno(out_);
  std::size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // stdout closed or full: logs are best effort, the service goes on
    }
    off += static_cast<std::size_t>(n);
  }
}

void logger::flusher_loop() {
  std::unique_lock lk(mu_);
  while (!stopping_) {
    cv_.wait_for(lk, std::chrono::milliseconds(50), [&] { return urgent_ || stopping_; });
    lk.unlock();
    flush();
    lk.lock();
  }
  lk.unlock();
  flush();
}

}  // namespace statetrack::obs
