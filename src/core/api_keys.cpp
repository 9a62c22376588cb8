// Key hashing with OpenSSL, constant-time comparison, a short-lived cache of database keys
// (so a revocation is seen within a second without a database read per request).
#include "core/api_keys.hpp"

#include <stdexcept>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "storage/store.hpp"

namespace statetrack::core {

namespace {

constexpr std::int64_t cache_ttl_ms = 1000;
constexpr std::size_t cache_max = 10000;

std::string sha256_raw(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("SHA-256 failed");
  }
  return {reinterpret_cast<const char*>(md), len};
}

std::string to_hex(std::string_view raw) {
  static constexpr char hexd[] = "0123456789abcdef";
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) {
    out += hexd[c >> 4];
    out += hexd[c & 0xF];
  }
  return out;
}

bool equal_ct(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

std::string sha256_hex(std::string_view data) {
  return to_hex(sha256_raw(data));
}

std::string generate_api_key() {
  static constexpr char alphabet[] =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  std::string key = "st_";
  unsigned char buf[64];
  while (key.size() < 43) {
    if (RAND_bytes(buf, sizeof buf) != 1) throw std::runtime_error("no randomness available");
    for (unsigned char b : buf) {
      if (b >= 248) continue;  // 248 = 4 * 62: reject to keep the alphabet uniform
      key += alphabet[b % 62];
      if (key.size() == 43) break;
    }
  }
  return key;
}

std::string api_key_prefix(std::string_view key) {
  return std::string(key.substr(0, 11));
}

std::string_view role_name(key_role r) {
  switch (r) {
    case key_role::admin:
      return "admin";
    case key_role::write:
      return "write";
    case key_role::read:
      return "read";
  }
  return "read";
}

std::optional<key_role> parse_role(std::string_view s) {
  if (s == "admin") return key_role::admin;
  if (s == "write") return key_role::write;
  if (s == "read") return key_role::read;
  return std::nullopt;
}

key_verifier::key_verifier(storage::store& store, const std::vector<std::string>& env_keys,
                           const clock& clk)
    : store_(store), clock_(clk) {
  for (const auto& k : env_keys) {
    if (!k.empty()) env_hashes_.push_back(sha256_raw(k));
  }
}

void key_verifier::invalidate() {
  std::lock_guard lk(mu_);
  cache_.clear();
}

boost::asio::awaitable<std::optional<principal>> key_verifier::verify(std::string_view presented) {
  if (presented.empty()) co_return std::nullopt;
  const std::string digest = sha256_raw(presented);
  // Every environment key is compared, whatever matches first.
  bool env_match = false;
  for (const auto& h : env_hashes_)
    env_match = equal_ct(digest, h) || env_match;
  if (env_match) {
    co_return principal{"env:" + to_hex(digest).substr(0, 8), key_role::admin, 0};
  }
  if (!presented.starts_with("st_")) co_return std::nullopt;
  const std::string prefix = api_key_prefix(presented);
  const std::int64_t now = clock_.now().ms;
  std::optional<api_key> key;
  bool hit = false;
  {
    std::lock_guard lk(mu_);
    auto it = cache_.find(prefix);
    if (it != cache_.end() && now - it->second.fetched_ms < cache_ttl_ms) {
      key = it->second.key;
      hit = true;
    }
  }
  if (!hit) {
    auto lookup = [&prefix](storage::read_view& v) { return v.find_api_key(prefix); };
    key = co_await storage::read(store_, std::move(lookup));
    std::lock_guard lk(mu_);
    if (cache_.size() >= cache_max) cache_.clear();
    cache_[prefix] = cached{key, now};
  }
  if (!key || key->revoked_at) co_return std::nullopt;
  if (!equal_ct(to_hex(digest), key->hash)) co_return std::nullopt;
  co_return principal{key->prefix, key->role, key->id};
}

boost::asio::awaitable<bool> key_verifier::still_valid(const principal& who) {
  if (who.db_id == 0) co_return true;
  const std::int64_t now = clock_.now().ms;
  std::optional<api_key> key;
  bool hit = false;
  {
    std::lock_guard lk(mu_);
    auto it = cache_.find(who.key_id);
    if (it != cache_.end() && now - it->second.fetched_ms < cache_ttl_ms) {
      key = it->second.key;
      hit = true;
    }
  }
  if (!hit) {
    const std::string prefix = who.key_id;
    auto lookup = [&prefix](storage::read_view& v) { return v.find_api_key(prefix); };
    key = co_await storage::read(store_, std::move(lookup));
    std::lock_guard lk(mu_);
    if (cache_.size() >= cache_max) cache_.clear();
    cache_[prefix] = cached{key, now};
  }
  co_return key && key->id == who.db_id && !key->revoked_at;
}

std::pair<std::string, api_key> create_api_key(storage::store& store, std::string name,
                                               key_role role, timestamp now) {
  std::string plain = generate_api_key();
  api_key k;
  k.prefix = api_key_prefix(plain);
  k.hash = sha256_hex(plain);
  k.name = std::move(name);
  k.role = role;
  k.created_at = now;
  store.write_now([&](storage::write_txn& tx) {
    tx.insert_api_key(k);
    return true;
  });
  return {plain, k};
}

}  // namespace statetrack::core
