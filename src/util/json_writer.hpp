// Appends JSON text straight into a string: the fast path for every response body and log
// line. The caller drives structure (begin/end, key, value); commas are inserted for it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace statetrack::util {

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or truncated sequences).
bool valid_utf8(std::string_view s);

// Escapes `s` as the inside of a JSON string (no quotes), replacing invalid UTF-8 with U+FFFD.
void append_json_escaped(std::string& out, std::string_view s);

class json_writer {
 public:
  explicit json_writer(std::string& out) : out_(out) {}

  json_writer& begin_object() { return open('{'); }
  json_writer& end_object() { return close('}'); }
  json_writer& begin_array() { return open('['); }
  json_writer& end_array() { return close(']'); }
  json_writer& key(std::string_view k);
  json_writer& value(std::string_view s);
  json_writer& value(const char* s) { return value(std::string_view(s)); }
  json_writer& value(bool b);
  json_writer& value(std::int64_t n);
  json_writer& value(int n) { return value(static_cast<std::int64_t>(n)); }
  json_writer& value(std::uint64_t n);
  // Finite doubles in the shortest round-trip form, integers without a fraction (like
  // JavaScript); a non-finite value is written as null, never as invalid JSON.
  json_writer& value(double d);
  json_writer& null();
  // Already-valid JSON text (a stored metadata object, a nested document).
  json_writer& raw(std::string_view json);
  // ISO timestamp string from epoch milliseconds.
  json_writer& iso(std::int64_t ms);

  template <class V>
  json_writer& field(std::string_view k, const V& v) {
    key(k);
    return value(v);
  }
  json_writer& field_iso(std::string_view k, std::int64_t ms) {
    key(k);
    return iso(ms);
  }
  json_writer& field_raw(std::string_view k, std::string_view json) {
    key(k);
    return raw(json);
  }

 private:
  json_writer& open(char c);
  json_writer& close(char c);
  void sep();

  std::string& out_;
  bool need_comma_ = false;
  bool after_key_ = false;
};

}  // namespace statetrack::util
