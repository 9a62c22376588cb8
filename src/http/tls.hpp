// The server's TLS context: certificate chain and key from PEM files, TLS 1.2 and newer only,
// AEAD cipher suites only, the server's cipher order, no compression, no renegotiation.
// Built once at start by the app and shared read-only by every TLS connection.
#pragma once

#include <memory>
#include <string>

namespace boost::asio::ssl {
class context;
}

namespace statetrack::http {

// Throws std::runtime_error with OpenSSL's reason when a file cannot be read or the key does
// not match the certificate. A shared_ptr, so that holders need not include the OpenSSL
// headers to destroy it.
std::shared_ptr<boost::asio::ssl::context> make_server_tls_context(const std::string& cert_file,
                                                                   const std::string& key_file);

// The header every HTTPS response carries.
inline constexpr const char* hsts_value = "max-age=31536000";

}  // namespace statetrack::http
