// Time formatting/parsing (civil-from-days arithmetic, no locale or tz database) and id
// generation.
#include "core/types.hpp"

#include <charconv>
#include <chrono>
#include <climits>
#include <random>

namespace statetrack::core {

namespace {

// Howard Hinnant's days-from-civil / civil-from-days algorithms (public domain arithmetic).
constexpr std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

struct civil {
  std::int64_t y;
  unsigned m, d;
};

constexpr civil civil_from_days(std::int64_t z) {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t y = static_cast<std::int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return {y + (m <= 2), m, d};
}

void put2(char* p, unsigned v) {
  p[0] = static_cast<char>('0' + v / 10);
  p[1] = static_cast<char>('0' + v % 10);
}

bool digits(std::string_view s, std::size_t pos, std::size_t n, unsigned& out) {
  if (pos + n > s.size()) return false;
  unsigned v = 0;
  for (std::size_t i = 0; i < n; ++i) {
    char c = s[pos + i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  out = v;
  return true;
}

constexpr unsigned days_in_month(std::int64_t y, unsigned m) {
  constexpr unsigned table[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : table[m - 1];
}

std::mt19937_64& rng() {
  thread_local std::mt19937_64 gen([] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }());
  return gen;
}

}  // namespace

void append_iso(std::string& out, timestamp t) {
  std::int64_t ms = t.ms;
  std::int64_t days = ms >= 0 ? ms / 86400000 : (ms - 86399999) / 86400000;
  std::int64_t rem = ms - days * 86400000;
  // Rendering a list formats many timestamps of the same day: keep the date part per thread.
  thread_local std::int64_t cached_day = INT64_MIN;
  thread_local char date_part[16];
  thread_local std::size_t date_len = 0;
  if (days != cached_day) {
    civil c = civil_from_days(days);
    char* p = date_part;
    if (c.y >= 0 && c.y <= 9999) {
      auto y = static_cast<unsigned>(c.y);
      put2(p, y / 100);
      put2(p + 2, y % 100);
      p += 4;
    } else {
      // Expanded years as JavaScript does: sign and six digits.
      *p++ = c.y < 0 ? '-' : '+';
      auto y = static_cast<unsigned>(c.y < 0 ? -c.y : c.y);
      for (int i = 5; i >= 0; --i) {
        p[i] = static_cast<char>('0' + y % 10);
        y /= 10;
      }
      p += 6;
    }
    *p++ = '-';
    put2(p, c.m);
    p += 2;
    *p++ = '-';
    put2(p, c.d);
    p += 2;
    *p++ = 'T';
    date_len = static_cast<std::size_t>(p - date_part);
    cached_day = days;
  }
  auto sec_of_day = static_cast<unsigned>(rem / 1000);
  auto milli = static_cast<unsigned>(rem % 1000);
  char buf[16];
  char* p = buf;
  put2(p, sec_of_day / 3600);
  p += 2;
  *p++ = ':';
  put2(p, sec_of_day / 60 % 60);
  p += 2;
  *p++ = ':';
  put2(p, sec_of_day % 60);
  p += 2;
  *p++ = '.';
  *p++ = static_cast<char>('0' + milli / 100);
  put2(p, milli % 100);
  p += 2;
  *p++ = 'Z';
  out.append(date_part, date_len);
  out.append(buf, p);
}

std::string format_iso(timestamp t) {
  std::string s;
  s.reserve(24);
  append_iso(s, t);
  return s;
}

std::optional<timestamp> parse_iso(std::string_view s) {
  unsigned y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0, frac_ms = 0;
  if (!digits(s, 0, 4, y) || s.size() < 10 || s[4] != '-' || !digits(s, 5, 2, mo) || s[7] != '-' ||
      !digits(s, 8, 2, d)) {
    return std::nullopt;
  }
  if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo)) return std::nullopt;
  std::size_t pos = 10;
  std::int64_t offset_min = 0;
  if (pos < s.size()) {
    if (s[pos] != 'T' && s[pos] != 't') return std::nullopt;
    ++pos;
    if (!digits(s, pos, 2, h) || pos + 2 >= s.size() || s[pos + 2] != ':' ||
        !digits(s, pos + 3, 2, mi)) {
      return std::nullopt;
    }
    pos += 5;
    if (pos < s.size() && s[pos] == ':') {
      if (!digits(s, pos + 1, 2, sec)) return std::nullopt;
      pos += 3;
      if (pos < s.size() && s[pos] == '.') {
        ++pos;
        std::size_t start = pos;
        unsigned scale = 100;
        while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
          frac_ms += static_cast<unsigned>(s[pos] - '0') * scale;
          scale /= 10;
          ++pos;
        }
        if (pos == start) return std::nullopt;
      }
    }
    if (h > 24 || mi > 59 || sec > 59 || (h == 24 && (mi != 0 || sec != 0 || frac_ms != 0))) {
      return std::nullopt;
    }
    if (pos >= s.size()) {
      // JavaScript reads a date-time without offset as local time; we run in UTC.
    } else if (s[pos] == 'Z' || s[pos] == 'z') {
      ++pos;
    } else if (s[pos] == '+' || s[pos] == '-') {
      unsigned oh = 0, om = 0;
      bool neg = s[pos] == '-';
      if (!digits(s, pos + 1, 2, oh)) return std::nullopt;
      std::size_t p2 = pos + 3;
      if (p2 < s.size() && s[p2] == ':') ++p2;
      if (!digits(s, p2, 2, om) || oh > 23 || om > 59) return std::nullopt;
      pos = p2 + 2;
      offset_min = (neg ? -1 : 1) * static_cast<std::int64_t>(oh * 60 + om);
    } else {
      return std::nullopt;
    }
    if (pos != s.size()) return std::nullopt;
  }
  std::int64_t days = days_from_civil(y, mo, d);
  std::int64_t ms = ((days * 24 + h) * 60 + mi) * 60000 + static_cast<std::int64_t>(sec) * 1000 +
                    frac_ms - offset_min * 60000;
  return timestamp{ms};
}

std::string new_uuid_v4() {
  std::uint64_t hi = rng()();
  std::uint64_t lo = rng()();
  hi = (hi & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;  // version 4
  lo = (lo & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;  // variant 10
  static constexpr char hexd[] = "0123456789abcdef";
  std::string out(36, '-');
  int pos = 0;
  auto emit = [&](std::uint64_t v, int nibbles) {
    for (int i = nibbles - 1; i >= 0; --i) {
      if (pos == 8 || pos == 13 || pos == 18 || pos == 23) ++pos;
      out[static_cast<std::size_t>(pos++)] = hexd[(v >> (i * 4)) & 0xF];
    }
  };
  emit(hi, 16);
  emit(lo, 16);
  return out;
}

std::string new_object_id(timestamp now) {
  static constexpr char hexd[] = "0123456789abcdef";
  auto secs = static_cast<std::uint32_t>(now.ms / 1000);
  std::uint64_t r = rng()();
  std::string out(24, '0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<std::size_t>(i)] = hexd[(secs >> ((7 - i) * 4)) & 0xF];
  for (std::size_t i = 0; i < 16; ++i)
    out[8 + i] = hexd[(r >> ((15 - i) * 4)) & 0xF];
  return out;
}

template <std::size_t N, class E>
static std::optional<E> parse_enum(const std::array<std::string_view, N>& names,
                                   std::string_view s) {
  for (std::size_t i = 0; i < N; ++i) {
    if (names[i] == s) return static_cast<E>(i);
  }
  return std::nullopt;
}

std::optional<session_status> parse_session_status(std::string_view s) {
  return parse_enum<7, session_status>(session_status_names, s);
}
std::optional<directive> parse_directive(std::string_view s) {
  return parse_enum<3, directive>(directive_names, s);
}
std::optional<task_status> parse_task_status(std::string_view s) {
  return parse_enum<5, task_status>(task_status_names, s);
}
std::optional<machine_status> parse_machine_status(std::string_view s) {
  return parse_enum<3, machine_status>(machine_status_names, s);
}

}  // namespace statetrack::core
