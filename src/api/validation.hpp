// Declarative request schemas: one declaration per body or query drives validation (with the
// contract's class-validator wording) and the OpenAPI document. Unknown properties are
// rejected, optional fields accept null, numbers must be finite.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include "core/error.hpp"

namespace statetrack::api {

enum class field_kind {
  string,
  number,
  boolean,
  object,
  number_array,  // array of numbers
  enum_array,    // array of enum members
  enum_value,
  iso_date,      // ISO-8601 date string
  string_array,  // array of non-empty strings
};

struct field_spec {
  std::string_view name;
  field_kind kind = field_kind::string;
  bool required = false;
  bool not_empty = false;  // also refuses "" (class-validator IsNotEmpty)
  std::optional<double> min;
  std::optional<double> max;
  std::span<const std::string_view> enum_values{};
  bool integer = false;            // refuse fractions
  bool unique = false;             // arrays: elements must be unique
  bool coerce_number = false;      // apply JavaScript Number() to strings first
  std::string_view min_message{};  // replaces the default "must not be less than" text
  std::string_view description{};
};

struct schema {
  std::string_view name;  // OpenAPI component name
  std::vector<field_spec> fields;
  std::string_view description{};
};

// A JSON body: must be an object; returns it with coercions applied.
core::result<boost::json::object> validate_body(const schema& s, const boost::json::value& body);

// Query parameters: values are strings; number fields are converted with Number();
// a repeated parameter is a list and fails scalar checks.
core::result<boost::json::object> validate_query(
    const schema& s, const std::vector<std::pair<std::string, std::string>>& params);

// JavaScript Number() on a string: trims, "" -> 0, hex/octal/binary prefixes, Infinity; NaN
// when it is not a number.
double js_number(std::string_view s);

// JSON Schema for OpenAPI.
boost::json::object to_json_schema(const schema& s);

// Typed reads of a validated object (absent or null -> nullopt).
std::optional<std::string> get_string(const boost::json::object& o, std::string_view k);
std::optional<double> get_number(const boost::json::object& o, std::string_view k);
std::optional<bool> get_bool(const boost::json::object& o, std::string_view k);
const boost::json::object* get_object(const boost::json::object& o, std::string_view k);
// True when the key is present with an explicit null.
bool is_null(const boost::json::object& o, std::string_view k);

// Parses a request body per the contract: empty -> {}; JSON when the content type is
// application/json (or +json); urlencoded forms as strings; other types -> {}.
// Malformed JSON -> 400. Non-finite numbers are rejected.
core::result<boost::json::value> parse_body(std::string_view content_type, std::string_view body);

}  // namespace statetrack::api
