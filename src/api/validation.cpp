// The validation engine behind every schema.
#include "api/validation.hpp"

#include <charconv>
#include <cmath>
#include <limits>
#include <set>

#include <boost/json/parse.hpp>
#include <boost/json/parser.hpp>

#include "core/types.hpp"
#include "http/router.hpp"
#include "util/json_writer.hpp"

namespace statetrack::api {

namespace json = boost::json;

namespace {

// Integers beyond 2^53 - 1 are not exact in a JSON number (a double); they are refused
// rather than cast (which would be undefined behaviour beyond the int64 range).
constexpr double max_safe_integer = 9007199254740991.0;

std::string fmt_number(double d) {
  char buf[32];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, d);
  return std::string(buf, p);
}

std::string type_message(const field_spec& f, std::string_view prefix = {}) {
  std::string p = std::string(prefix) + std::string(f.name);
  switch (f.kind) {
    case field_kind::string:
      return p + " must be a string";
    case field_kind::number:
      return p + " must be a number conforming to the specified constraints";
    case field_kind::boolean:
      return p + " must be a boolean value";
    case field_kind::object:
      return p + " must be an object";
    case field_kind::number_array:
    case field_kind::enum_array:
    case field_kind::string_array:
      return p + " must be an array";
    case field_kind::enum_value: {
      std::string m = p + " must be one of the following values: ";
      for (std::size_t i = 0; i < f.enum_values.size(); ++i) {
        if (i > 0) m += ", ";
        m += f.enum_values[i];
      }
      return m;
    }
    case field_kind::iso_date:
      return p + " must be a valid ISO 8601 date string";
  }
  return p + " is invalid";
}

bool is_member(const field_spec& f, std::string_view v) {
  for (auto e : f.enum_values) {
    if (e == v) return true;
  }
  return false;
}

// Checks a number against min/max/integer; appends messages.
void check_range(const field_spec& f, double v, std::vector<std::string>& out,
                 std::string_view prefix = {}) {
  std::string p = std::string(prefix) + std::string(f.name);
  if (f.min && v < *f.min) {
    out.push_back(f.min_message.empty() ? p + " must not be less than " + fmt_number(*f.min)
                                        : std::string(f.min_message));
  }
  if (f.max && v > *f.max) out.push_back(p + " must not be greater than " + fmt_number(*f.max));
}

std::optional<double> as_finite_number(const json::value& v) {
  if (v.is_int64()) return static_cast<double>(v.as_int64());
  if (v.is_uint64()) return static_cast<double>(v.as_uint64());
  if (v.is_double() && std::isfinite(v.as_double())) return v.as_double();
  return std::nullopt;
}

// Validates one present, non-null value; may rewrite it (coercion). Appends messages.
void check_field(const field_spec& f, json::value& v, std::vector<std::string>& out) {
  switch (f.kind) {
    case field_kind::string:
      if (!v.is_string()) {
        out.push_back(type_message(f));
      } else if (f.not_empty && v.as_string().empty()) {
        out.push_back(std::string(f.name) + " should not be empty");
      }
      return;
    case field_kind::iso_date:
      if (!v.is_string() || !core::parse_iso(v.as_string())) out.push_back(type_message(f));
      return;
    case field_kind::boolean:
      if (!v.is_bool()) out.push_back(type_message(f));
      return;
    case field_kind::object:
      if (!v.is_object()) out.push_back(type_message(f));
      return;
    case field_kind::enum_value:
      if (!v.is_string() || !is_member(f, v.as_string())) out.push_back(type_message(f));
      return;
    case field_kind::number: {
      if (f.coerce_number && v.is_string()) v = js_number(v.as_string());
      auto n = as_finite_number(v);
      if (!n || v.is_bool()) {
        out.push_back(type_message(f));
        return;
      }
      if (f.integer && (std::floor(*n) != *n || std::abs(*n) > max_safe_integer)) {
        out.push_back(std::string(f.name) + " must be an integer number");
        return;
      }
      if (f.integer && v.is_double()) v = static_cast<std::int64_t>(*n);
      check_range(f, *n, out);
      return;
    }
    case field_kind::number_array: {
      if (!v.is_array()) {
        out.push_back(type_message(f));
        return;
      }
      bool bad_type = false;
      bool below = false;
      std::set<double> seen;
      bool dup = false;
      for (auto& e : v.as_array()) {
        if (f.coerce_number && e.is_string()) e = js_number(e.as_string());
        auto n = as_finite_number(e);
        if (!n) {
          bad_type = true;
          continue;
        }
        if (f.min && *n < *f.min) below = true;
        if (!seen.insert(*n).second) dup = true;
      }
      std::string p(f.name);
      if (bad_type) {
        out.push_back("each value in " + p +
                      " must be a number conforming to the specified constraints");
      }
      if (below)
        out.push_back("each value in " + p + " must not be less than " + fmt_number(*f.min));
      if (f.unique && dup) out.push_back("All " + p + "'s elements must be unique");
      return;
    }
    case field_kind::string_array: {
      if (!v.is_array()) {
        out.push_back(type_message(f));
        return;
      }
      bool bad = false;
      std::set<std::string_view> seen;
      bool dup = false;
      for (const auto& e : v.as_array()) {
        if (!e.is_string() || e.as_string().empty()) {
          bad = true;
        } else if (!seen.insert(std::string_view(e.as_string())).second) {
          dup = true;
        }
      }
      const std::string p(f.name);
      if (bad) out.push_back("each value in " + p + " must be a non-empty string");
      if (f.unique && dup) out.push_back("All " + p + "'s elements must be unique");
      if (f.max && static_cast<double>(v.as_array().size()) > *f.max) {
        out.push_back(p + " must contain no more than " + fmt_number(*f.max) + " elements");
      }
      return;
    }
    case field_kind::enum_array: {
      if (!v.is_array()) {
        out.push_back(type_message(f));
        return;
      }
      bool bad = false;
      for (const auto& e : v.as_array()) {
        if (!e.is_string() || !is_member(f, e.as_string())) bad = true;
      }
      if (bad) {
        std::string m =
            "each value in " + std::string(f.name) + " must be one of the following values: ";
        for (std::size_t i = 0; i < f.enum_values.size(); ++i) {
          if (i > 0) m += ", ";
          m += f.enum_values[i];
        }
        out.push_back(m);
      }
      return;
    }
  }
}

void check_missing(const field_spec& f, std::vector<std::string>& out) {
  if (!f.required) return;
  if (f.not_empty) out.push_back(std::string(f.name) + " should not be empty");
  out.push_back(type_message(f));
}

// Every string (and key) must be valid UTF-8: stored text is emitted verbatim later, and a
// lone surrogate escape (\ud800) or a raw byte from a form body would make invalid JSON.
bool has_invalid_utf8(const json::value& v, int depth = 0) {
  if (depth > 64) return true;
  if (v.is_string()) return !util::valid_utf8(v.as_string());
  if (v.is_array()) {
    for (const auto& e : v.as_array()) {
      if (has_invalid_utf8(e, depth + 1)) return true;
    }
  }
  if (v.is_object()) {
    for (const auto& kv : v.as_object()) {
      if (!util::valid_utf8(kv.key()) || has_invalid_utf8(kv.value(), depth + 1)) return true;
    }
  }
  return false;
}

bool has_nonfinite(const json::value& v, int depth = 0) {
  if (depth > 64) return true;
  if (v.is_double()) return !std::isfinite(v.as_double());
  if (v.is_array()) {
    for (const auto& e : v.as_array()) {
      if (has_nonfinite(e, depth + 1)) return true;
    }
  }
  if (v.is_object()) {
    for (const auto& kv : v.as_object()) {
      if (has_nonfinite(kv.value(), depth + 1)) return true;
    }
  }
  return false;
}

}  // namespace

double js_number(std::string_view s) {
  auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  };
  while (!s.empty() && is_space(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && is_space(s.back()))
    s.remove_suffix(1);
  if (s.empty()) return 0;
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  if (s == "Infinity" || s == "+Infinity") return std::numeric_limits<double>::infinity();
  if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
  if (s.size() > 2 && s[0] == '0') {
    int base = s[1] == 'x' || s[1] == 'X'   ? 16
               : s[1] == 'o' || s[1] == 'O' ? 8
               : s[1] == 'b' || s[1] == 'B' ? 2
                                            : 0;
    if (base != 0) {
      std::uint64_t v = 0;
      auto body = s.substr(2);
      auto [p, ec] = std::from_chars(body.data(), body.data() + body.size(), v, base);
      if (ec != std::errc() || p != body.data() + body.size()) return nan;
      return static_cast<double>(v);
    }
  }
  std::string_view t = s;
  if (t.front() == '+') t.remove_prefix(1);
  if (t.empty()) return nan;
  // from_chars rejects a leading '+', accepts what JavaScript accepts otherwise except a
  // bare "." and forms like "1." which JavaScript also accepts.
  double v = 0;
  auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (ec == std::errc::result_out_of_range) {
    return t.front() == '-' ? -std::numeric_limits<double>::infinity()
                            : std::numeric_limits<double>::infinity();
  }
  if (ec != std::errc() || p != t.data() + t.size()) return nan;
  return v;
}

core::result<json::object> validate_body(const schema& s, const json::value& body) {
  if (!body.is_object()) {
    return core::validation_error({"request body must be a JSON object"});
  }
  json::object obj = body.as_object();
  std::vector<std::string> msgs;
  for (const auto& kv : obj) {
    bool known = false;
    for (const auto& f : s.fields) {
      if (f.name == kv.key()) known = true;
    }
    if (!known) msgs.push_back("property " + std::string(kv.key()) + " should not exist");
  }
  for (const auto& f : s.fields) {
    auto* v = obj.if_contains(f.name);
    if (v == nullptr || v->is_null()) {
      check_missing(f, msgs);
      continue;
    }
    check_field(f, *v, msgs);
  }
  if (!msgs.empty()) return core::validation_error(std::move(msgs));
  return obj;
}

core::result<json::object> validate_query(
    const schema& s, const std::vector<std::pair<std::string, std::string>>& params) {
  json::object obj;
  std::vector<std::string> msgs;
  for (const auto& [k, v] : params) {
    bool known = false;
    for (const auto& f : s.fields) {
      if (f.name == k) known = true;
    }
    if (!known) {
      std::string m = "property " + k + " should not exist";
      bool dup = false;
      for (const auto& x : msgs)
        dup = dup || x == m;
      if (!dup) msgs.push_back(std::move(m));
      continue;
    }
    auto* existing = obj.if_contains(k);
    if (existing == nullptr) {
      obj[k] = v;
    } else if (existing->is_array()) {
      existing->as_array().emplace_back(v);
    } else {
      json::array list;
      list.emplace_back(*existing);
      list.emplace_back(v);
      obj[k] = std::move(list);
    }
  }
  for (const auto& f : s.fields) {
    auto* v = obj.if_contains(f.name);
    if (v == nullptr) {
      check_missing(f, msgs);
      continue;
    }
    if (v->is_array()) {
      msgs.push_back(type_message(f));
      continue;
    }
    if (f.kind == field_kind::number) {
      double n = js_number(v->as_string());
      if (!std::isfinite(n)) {
        msgs.push_back(type_message(f));
        continue;
      }
      if (f.integer && (std::floor(n) != n || std::abs(n) > max_safe_integer)) {
        msgs.push_back(std::string(f.name) + " must be an integer number");
        continue;
      }
      if (f.integer) {
        *v = static_cast<std::int64_t>(n);
      } else {
        *v = n;
      }
      check_range(f, n, msgs);
      continue;
    }
    if (f.kind == field_kind::boolean) {
      if (v->as_string() == "true") {
        *v = true;
      } else if (v->as_string() == "false") {
        *v = false;
      } else {
        msgs.push_back(type_message(f));
      }
      continue;
    }
    check_field(f, *v, msgs);
  }
  if (!msgs.empty()) return core::validation_error(std::move(msgs));
  return obj;
}

json::object to_json_schema(const schema& s) {
  json::object out;
  out["type"] = "object";
  out["additionalProperties"] = false;
  if (!s.description.empty()) out["description"] = s.description;
  json::object props;
  json::array required;
  for (const auto& f : s.fields) {
    json::object p;
    auto enum_list = [&] {
      json::array a;
      for (auto e : f.enum_values)
        a.emplace_back(e);
      return a;
    };
    switch (f.kind) {
      case field_kind::string:
        p["type"] = "string";
        break;
      case field_kind::iso_date:
        p["type"] = "string";
        p["format"] = "date-time";
        break;
      case field_kind::number:
        p["type"] = f.integer ? "integer" : "number";
        break;
      case field_kind::boolean:
        p["type"] = "boolean";
        break;
      case field_kind::object:
        p["type"] = "object";
        p["additionalProperties"] = true;
        break;
      case field_kind::enum_value:
        p["type"] = "string";
        p["enum"] = enum_list();
        break;
      case field_kind::number_array: {
        p["type"] = "array";
        json::object items{{"type", "number"}};
        if (f.min) items["minimum"] = *f.min;
        p["items"] = std::move(items);
        if (f.unique) p["uniqueItems"] = true;
        break;
      }
      case field_kind::enum_array:
        p["type"] = "array";
        p["items"] = json::object{{"type", "string"}, {"enum", enum_list()}};
        break;
      case field_kind::string_array:
        p["type"] = "array";
        p["items"] = json::object{{"type", "string"}, {"minLength", 1}};
        if (f.unique) p["uniqueItems"] = true;
        if (f.max) p["maxItems"] = *f.max;
        break;
    }
    if (f.kind != field_kind::number_array && f.kind != field_kind::string_array) {
      if (f.min) p["minimum"] = *f.min;
      if (f.max) p["maximum"] = *f.max;
    }
    if (f.not_empty) p["minLength"] = 1;
    if (!f.description.empty()) p["description"] = f.description;
    if (!f.required) p["nullable"] = true;
    props[f.name] = std::move(p);
    if (f.required) required.emplace_back(f.name);
  }
  out["properties"] = std::move(props);
  if (!required.empty()) out["required"] = std::move(required);
  return out;
}

std::optional<std::string> get_string(const json::object& o, std::string_view k) {
  auto* v = o.if_contains(k);
  if (v == nullptr || !v->is_string()) return std::nullopt;
  return std::string(v->as_string());
}

std::optional<double> get_number(const json::object& o, std::string_view k) {
  auto* v = o.if_contains(k);
  if (v == nullptr) return std::nullopt;
  return as_finite_number(*v);
}

std::optional<bool> get_bool(const json::object& o, std::string_view k) {
  auto* v = o.if_contains(k);
  if (v == nullptr || !v->is_bool()) return std::nullopt;
  return v->as_bool();
}

const json::object* get_object(const json::object& o, std::string_view k) {
  auto* v = o.if_contains(k);
  if (v == nullptr || !v->is_object()) return nullptr;
  return &v->as_object();
}

bool is_null(const json::object& o, std::string_view k) {
  auto* v = o.if_contains(k);
  return v != nullptr && v->is_null();
}

core::result<json::value> parse_body(std::string_view content_type, std::string_view body) {
  auto trimmed = body;
  while (!trimmed.empty() && (trimmed.front() == ' ' || trimmed.front() == '\n' ||
                              trimmed.front() == '\r' || trimmed.front() == '\t')) {
    trimmed.remove_prefix(1);
  }
  if (trimmed.empty()) return json::value(json::object{});
  std::string ct(content_type.substr(0, content_type.find(';')));
  for (char& c : ct)
    c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  while (!ct.empty() && ct.back() == ' ')
    ct.pop_back();
  if (ct == "application/x-www-form-urlencoded") {
    json::object o;
    for (auto& [k, v] : http::parse_query(body))
      o[k] = v;
    json::value form(std::move(o));
    if (has_invalid_utf8(form)) {
      return core::make_error(core::errc::bad_request, "Request body text must be valid UTF-8");
    }
    return form;
  }
  bool is_json =
      ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json"));
  if (!is_json) return json::value(json::object{});
  json::parse_options opts;
  opts.max_depth = 64;
  boost::system::error_code ec;
  json::value v = json::parse(body, ec, {}, opts);
  if (ec) {
    return core::make_error(core::errc::bad_request,
                            "Malformed JSON in request body: " + ec.message());
  }
  if (!v.is_object() && !v.is_array()) {
    return core::make_error(core::errc::bad_request,
                            "Malformed JSON in request body: expected an object");
  }
  if (has_nonfinite(v)) {
    return core::make_error(core::errc::bad_request,
                            "Malformed JSON in request body: numbers must be finite");
  }
  if (has_invalid_utf8(v)) {
    return core::make_error(core::errc::bad_request, "Request body text must be valid UTF-8");
  }
  return v;
}

}  // namespace statetrack::api
