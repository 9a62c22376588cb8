// API keys: generation, hashing, and verification of a presented key against the keys from
// the environment and from the database (only SHA-256 hashes and lookup prefixes stored).
// Comparison is constant-time. One verifier per server, shared by all I/O threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "core/clock.hpp"
#include "core/model.hpp"

namespace statetrack::storage {
class store;
}

namespace statetrack::core {

struct principal {
  std::string key_id;  // lookup prefix (DB keys) or "env:<first 8 chars of the hash>"
  key_role role = key_role::admin;
  std::int64_t db_id = 0;  // 0 for keys from the environment
};

std::string sha256_hex(std::string_view data);
// A new random key: "st_" followed by 40 base62 characters (238 bits).
std::string generate_api_key();
// The non-secret lookup prefix stored beside the hash.
std::string api_key_prefix(std::string_view key);
std::string_view role_name(key_role r);
std::optional<key_role> parse_role(std::string_view s);

class key_verifier {
 public:
  key_verifier(storage::store& store, const std::vector<std::string>& env_keys, const clock& clk);

  // The principal for a presented key, or nullopt when it is unknown or revoked.
  boost::asio::awaitable<std::optional<principal>> verify(std::string_view presented);
  bool has_env_keys() const { return !env_hashes_.empty(); }
  // Whether the key behind a principal is still valid (open streams re-check it; environment
  // keys are valid for the life of the process).
  boost::asio::awaitable<bool> still_valid(const principal& who);
  // Drops cached database keys (after `keys revoke` in this process, for example).
  void invalidate();

 private:
  struct cached {
    std::optional<api_key> key;
    std::int64_t fetched_ms = 0;
  };
  storage::store& store_;
  const clock& clock_;
  std::vector<std::string> env_hashes_;  // raw 32-byte digests
  std::mutex mu_;
  std::unordered_map<std::string, cached> cache_;
};

// Creates and stores a key; returns the plaintext key (shown once) and the stored record.
std::pair<std::string, api_key> create_api_key(storage::store& store, std::string name,
                                               key_role role, timestamp now);

}  // namespace statetrack::core
