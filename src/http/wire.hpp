// The wire side of a request and a response: a parsed Beast request turned into the plain
// request the pipeline sees, and a response turned back into bytes. Used by the server's
// connection loop and by the fuzz target that feeds raw HTTP through the pipeline.
#pragma once

#include <string>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "http/message.hpp"

namespace statetrack::http {

// Moves the method, target, body and the headers the service reads from `in` into `out`.
void fill_request(request& out, boost::beast::http::request<boost::beast::http::string_body>& in,
                  const std::string& ip);

// Status line, headers and (unless HEAD, 204 or 304) body, in one buffer.
std::string serialize(const response& res, bool head_only, bool keep_alive, unsigned version);

}  // namespace statetrack::http
