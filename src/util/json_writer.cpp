// JSON text emission with UTF-8 validation and JavaScript-compatible number formatting.
#include "util/json_writer.hpp"

#include <array>
#include <charconv>
#include <cmath>

#include "core/types.hpp"

namespace statetrack::util {

namespace {

constexpr char hex_digits[] = "0123456789abcdef";

// Length of the valid UTF-8 sequence starting at s[i], or 0 if invalid.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  auto cont = [&](std::size_t k) {
    return i + k < s.size() && (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
  };
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    auto c1 = static_cast<unsigned char>(s[i + 1]);
    if (c == 0xE0 && c1 < 0xA0) return 0;   // overlong
    if (c == 0xED && c1 >= 0xA0) return 0;  // surrogates
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    auto c1 = static_cast<unsigned char>(s[i + 1]);
    if (c == 0xF0 && c1 < 0x90) return 0;
    if (c == 0xF4 && c1 >= 0x90) return 0;
    return 4;
  }
  return 0;
}

}  // namespace

// Bytes that need attention: control characters, quote, backslash, and every non-ASCII byte
// (validated as UTF-8). Everything else is copied in runs.
constexpr std::array<bool, 256> special_table = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 256; ++c)
    t[static_cast<std::size_t>(c)] = c < 0x20 || c == '"' || c == '\\' || c >= 0x80;
  return t;
}();

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

void append_json_escaped(std::string& out, std::string_view s) {
  std::size_t i = 0;
  std::size_t run = 0;  // start of the pending run of plain bytes
  const std::size_t n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    if (!special_table[c]) {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      std::size_t len = utf8_sequence_length(s, i);
      if (len != 0) {
        i += len;
        continue;
      }
      out.append(s.data() + run, i - run);
      out += "\xEF\xBF\xBD";
      ++i;
      run = i;
      continue;
    }
    out.append(s.data() + run, i - run);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        out += "\\u00";
        out += hex_digits[c >> 4];
        out += hex_digits[c & 0xF];
    }
    ++i;
    run = i;
  }
  out.append(s.data() + run, n - run);
}

void json_writer::sep() {
  if (after_key_) {
    after_key_ = false;
    return;
  }
  if (need_comma_) out_ += ',';
}

json_writer& json_writer::open(char c) {
  sep();
  out_ += c;
  need_comma_ = false;
  return *this;
}

json_writer& json_writer::close(char c) {
  out_ += c;
  need_comma_ = true;
  return *this;
}

json_writer& json_writer::key(std::string_view k) {
  if (need_comma_) out_ += ',';
  out_ += '"';
  append_json_escaped(out_, k);
  out_ += "\":";
  after_key_ = true;
  need_comma_ = true;
  return *this;
}

json_writer& json_writer::value(std::string_view s) {
  sep();
  out_ += '"';
  append_json_escaped(out_, s);
  out_ += '"';
  need_comma_ = true;
  return *this;
}

json_writer& json_writer::value(bool b) {
  sep();
  out_ += b ? "true" : "false";
  need_comma_ = true;
  return *this;
}

json_writer& json_writer::value(std::int64_t n) {
  sep();
  char buf[24];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, n);
  out_.append(buf, p);
  need_comma_ = true;
  return *this;
}

json_writer& json_writer::value(std::uint64_t n) {
  sep();
  char buf[24];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, n);
  out_.append(buf, p);
  need_comma_ = true;
  return *this;
}

json_writer& json_writer::value(double d) {
  sep();
  if (!std::isfinite(d)) {
    out_ += "null";
  } else if (d == 0) {
    out_ += '0';  // JavaScript prints -0 as 0
  } else {
    char buf[32];
    auto [p, ec] = std::to_chars(buf, buf + sizeof buf, d);
    out_.append(buf, p);
  }
  need_comma_ = true;
  return *this;
}

json_writer& json_writer::null() {
  sep();
  out_ += "null";
  need_comma_ = true;
  return *this;
}

json_writer& json_writer::raw(std::string_view json) {
  sep();
  out_ += json;
  need_comma_ = true;
  return *this;
}

json_writer& json_writer::iso(std::int64_t ms) {
  sep();
  out_ += '"';
  core::append_iso(out_, core::timestamp{ms});
  out_ += '"';
  need_comma_ = true;
  return *this;
}

}  // namespace statetrack::util
