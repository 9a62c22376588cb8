// API keys: generation, hashing, and verification of a presented key against the keys from
// the environment and from the database (only SHA-256 hashes and lookup prefixes stored).
// Comparison is constant-time. One verifier per server, shared by all I/O threads. Also the
// key records themselves: creation (validated role, machine binding, project scope, expiry) and
// rotation, shared by the CLI and the /keys routes.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "core/access.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/model.hpp"

namespace statetrack::storage {
class store;
class write_txn;
}  // namespace statetrack::storage

namespace statetrack::core {

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

  // The principal for a presented key, or nullopt when it is unknown, revoked or expired
  // (`*expired` tells the last apart). Records when a database key was last used (at most
  // once a minute per key).
  boost::asio::awaitable<std::optional<principal>> verify(std::string_view presented,
                                                          bool* expired = nullptr);
  bool has_env_keys() const { return !env_hashes_.empty(); }
  // Whether the key behind a principal is still valid: not revoked, not expired (open streams
  // re-check it; environment keys are valid for the life of the process).
  boost::asio::awaitable<bool> still_valid(const principal& who);
  // The current principal of a still-valid key (a stream ticket redeemed: its key's role and
  // scope as they are now), or nullopt.
  boost::asio::awaitable<std::optional<principal>> reload(const principal& who);
  // Drops cached database keys after a change in this process (revoke, rotate) so the next
  // request sees it, bumps generation() and runs the change callback (which wakes open
  // streams so they re-check their key at once).
  void invalidate();
  std::uint64_t generation() const { return generation_.load(); }
  void on_change(std::function<void()> cb) { on_change_ = std::move(cb); }

 private:
  struct cached {
    std::optional<api_key> key;
    std::int64_t fetched_ms = 0;
  };
  boost::asio::awaitable<std::optional<api_key>> lookup(const std::string& prefix,
                                                        std::int64_t now);
  storage::store& store_;
  const clock& clock_;
  std::vector<std::string> env_hashes_;  // raw 32-byte digests
  std::mutex mu_;
  std::unordered_map<std::string, cached> cache_;
  std::unordered_map<std::int64_t, std::int64_t> touched_;  // key id -> last recorded use
  std::atomic<std::uint64_t> generation_{0};
  std::function<void()> on_change_;
};

// What a new key is: a name, a role, the machine of a machine key, an optional project scope
// and an optional expiry.
struct key_spec {
  std::string name = "key";
  key_role role = key_role::admin;
  std::string machine_id;
  std::vector<std::string> projects;
  std::optional<timestamp> expires_at;
};

// The problems of a spec (empty when valid): a name, a machine id exactly for machine keys,
// no scope on admin keys, non-empty distinct project ids, an expiry in the future.
std::vector<std::string> validate_key_spec(const key_spec& spec, timestamp now);
// A new record for `spec` and its plaintext key (shown once; only the hash is stored).
api_key new_key_record(const key_spec& spec, timestamp now, std::string& plain);
bool key_expired(const api_key& k, timestamp now);
// "active", "revoked" or "expired".
std::string_view key_state(const api_key& k, timestamp now);

// Creates and stores a key; returns the plaintext key (shown once) and the stored record.
std::pair<std::string, api_key> create_api_key(storage::store& store, const key_spec& spec,
                                               timestamp now);
std::pair<std::string, api_key> create_api_key(storage::store& store, std::string name,
                                               key_role role, timestamp now);

struct rotation {
  std::string plain;  // the new key, shown once
  api_key fresh;
  api_key old;
};
// Inside a write transaction: a new key with the old one's name, role, machine, scope and
// expiry; the old one is revoked now, or (grace_s > 0) expires grace_s seconds from now.
// 404 for an unknown id, 400 for a revoked or expired key.
result<rotation> rotate_api_key(storage::write_txn& tx, std::int64_t id, std::int64_t grace_s,
                                timestamp now);
// The keys matching an id or a prefix (the CLI's way to name a key).
std::vector<api_key> find_keys(const std::vector<api_key>& all, std::string_view id_or_prefix);

}  // namespace statetrack::core
