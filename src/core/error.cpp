// The one mapping from error codes to HTTP status, reason phrase and snake-case code.
#include "core/error.hpp"

#include <boost/throw_exception.hpp>

namespace statetrack::core {

unsigned status_of(errc code) {
  switch (code) {
    case errc::validation_failed:
    case errc::bad_request:
      return 400;
    case errc::unauthorized:
      return 401;
    case errc::forbidden:
      return 403;
    case errc::not_found:
      return 404;
    case errc::timeout:
      return 408;
    case errc::conflict:
    case errc::stale_epoch:
      return 409;
    case errc::payload_too_large:
      return 413;
    case errc::header_too_large:
      return 431;
    case errc::rate_limited:
      return 429;
    case errc::internal:
      return 500;
    case errc::unavailable:
      return 503;
  }
  return 500;
}

std::string_view reason_of(errc code) {
  switch (code) {
    case errc::validation_failed:
    case errc::bad_request:
      return "Bad Request";
    case errc::unauthorized:
      return "Unauthorized";
    case errc::forbidden:
      return "Forbidden";
    case errc::not_found:
      return "Not Found";
    case errc::timeout:
      return "Request Timeout";
    case errc::conflict:
    case errc::stale_epoch:
      return "Conflict";
    case errc::payload_too_large:
      return "Payload Too Large";
    case errc::header_too_large:
      return "Request Header Fields Too Large";
    case errc::rate_limited:
      return "rate_limit_exceeded";
    case errc::internal:
      return "Internal Server Error";
    case errc::unavailable:
      return "Service Unavailable";
  }
  return "Internal Server Error";
}

std::string_view code_name_of(errc code) {
  switch (code) {
    case errc::validation_failed:
    case errc::bad_request:
      return "validation_error";
    case errc::unauthorized:
      return "unauthorized";
    case errc::forbidden:
      return "forbidden";
    case errc::not_found:
      return "not_found";
    case errc::timeout:
      return "timeout";
    case errc::conflict:
      return "conflict";
    case errc::stale_epoch:
      return "stale_epoch";
    case errc::payload_too_large:
      return "payload_too_large";
    case errc::header_too_large:
      return "header_too_large";
    case errc::rate_limited:
      return "rate_limit_exceeded";
    case errc::internal:
      return "internal_error";
    case errc::unavailable:
      return "service_unavailable";
  }
  return "internal_error";
}

void throw_exception_from_error(const error& e, const boost::source_location& loc) {
  boost::throw_exception(error_exception(e), loc);
}

}  // namespace statetrack::core
