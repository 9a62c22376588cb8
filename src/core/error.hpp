// Expected failures of a request (validation, not found, conflicts...) as values, and the
// one exception type for infrastructure failures. The api layer maps both to the envelope.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <boost/assert/source_location.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <boost/system/result.hpp>

namespace statetrack::core {

enum class errc {
  validation_failed,  // schema validation: 400, message is the array of field messages
  bad_request,        // business rule or malformed input: 400 with a specific message
  unauthorized,       // 401
  forbidden,          // 403
  not_found,          // 404
  timeout,            // 408: the request exceeded its deadline
  conflict,           // 409
  stale_epoch,        // 409: the request carries an old ownership epoch (fencing)
  payload_too_large,  // 413
  header_too_large,   // 431
  rate_limited,       // 429
  internal,           // 500
  unavailable,        // 503: storage unavailable or overloaded; the client should retry
};

// HTTP status for an error code; the single mapping used by every layer.
unsigned status_of(errc code);
// Reason phrase used in the envelope's `error` field (429 is `rate_limit_exceeded`).
std::string_view reason_of(errc code);
// Snake-case code of the reference's exception filter (`error_code`).
std::string_view code_name_of(errc code);

struct error {
  errc code = errc::internal;
  std::string message;
  // Validation: the list of field messages (rendered as both `message` and `details`).
  std::vector<std::string> field_messages;
  // Optional structured details (storage-level validation object, duplicate key, ...).
  boost::json::value details;
  // Extra top-level envelope fields (e.g. `directive` and `current_epoch` for stale_epoch).
  boost::json::object extra;
};

inline error make_error(errc code, std::string message) {
  return error{code, std::move(message), {}, {}, {}};
}
inline error validation_error(std::vector<std::string> messages) {
  return error{errc::validation_failed, "Validation failed", std::move(messages), {}, {}};
}

template <class T>
using result = boost::system::result<T, error>;

// Required by boost::system::result for a custom error type: value() on an error throws.
class error_exception : public std::runtime_error {
 public:
  explicit error_exception(error e) : std::runtime_error(e.message), error_(std::move(e)) {}
  const core::error& get() const noexcept { return error_; }

 private:
  core::error error_;
};
[[noreturn]] void throw_exception_from_error(const error& e, const boost::source_location& loc);

// Infrastructure failure (database down, disk full, I/O error). Thrown, never returned; the
// pipeline answers 503 with Retry-After and logs the detail, never sending it to the client.
class storage_error : public std::runtime_error {
 public:
  enum class kind { unavailable, busy, full, corrupt, other };
  storage_error(kind k, const std::string& what) : std::runtime_error(what), kind_(k) {}
  kind which() const noexcept { return kind_; }

 private:
  kind kind_;
};

}  // namespace statetrack::core
