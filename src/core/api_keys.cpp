// Key hashing with OpenSSL, constant-time comparison, a short-lived cache of database keys
// (so a revocation by another process is seen within a second without a database read per
// request; one in this process invalidates the cache at once).
#include "core/api_keys.hpp"

#include <algorithm>
#include <stdexcept>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "storage/store.hpp"

namespace statetrack::core {

namespace {

constexpr std::int64_t cache_ttl_ms = 1000;
constexpr std::size_t cache_max = 10000;
constexpr std::int64_t touch_interval_ms = 60000;  // last_used_at is recorded at most this often
constexpr std::size_t max_projects = 100;
constexpr std::size_t max_id_length = 200;

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
    case key_role::machine:
      return "machine";
  }
  return "read";
}

std::optional<key_role> parse_role(std::string_view s) {
  if (s == "admin") return key_role::admin;
  if (s == "write") return key_role::write;
  if (s == "read") return key_role::read;
  if (s == "machine") return key_role::machine;
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
  {
    std::lock_guard lk(mu_);
    cache_.clear();
    ++generation_;  // under the lock: a lookup in flight now will not cache what it read
  }
  if (on_change_) on_change_();
}

boost::asio::awaitable<std::optional<api_key>> key_verifier::lookup(const std::string& prefix,
                                                                    std::int64_t now) {
  std::uint64_t seen = 0;
  {
    std::lock_guard lk(mu_);
    auto it = cache_.find(prefix);
    if (it != cache_.end() && now - it->second.fetched_ms < cache_ttl_ms) co_return it->second.key;
    seen = generation_;
  }
  auto fn = [&prefix](storage::read_view& v) { return v.find_api_key(prefix); };
  std::optional<api_key> key = co_await storage::read(store_, std::move(fn));
  std::lock_guard lk(mu_);
  // A revocation or rotation committed while this read ran may not be in what it read: such a
  // record answers this one request (it started before the change) but is not cached.
  if (generation_ == seen) {
    if (cache_.size() >= cache_max) cache_.clear();
    cache_[prefix] = cached{key, now};
  }
  co_return key;
}

boost::asio::awaitable<std::optional<principal>> key_verifier::verify(std::string_view presented,
                                                                      bool* expired) {
  if (expired != nullptr) *expired = false;
  if (presented.empty()) co_return std::nullopt;
  const std::string digest = sha256_raw(presented);
  // Every environment key is compared, whatever matches first.
  bool env_match = false;
  for (const auto& h : env_hashes_)
    env_match = equal_ct(digest, h) || env_match;
  if (env_match) {
    principal p;
    p.key_id = "env:" + to_hex(digest).substr(0, 8);
    p.role = key_role::admin;
    co_return p;
  }
  if (!presented.starts_with("st_")) co_return std::nullopt;
  const std::string prefix = api_key_prefix(presented);
  const timestamp now = clock_.now();
  std::optional<api_key> key = co_await lookup(prefix, now.ms);
  if (!key || key->revoked_at) co_return std::nullopt;
  if (!equal_ct(to_hex(digest), key->hash)) co_return std::nullopt;
  if (key_expired(*key, now)) {
    if (expired != nullptr) *expired = true;
    co_return std::nullopt;
  }
  bool touch = false;
  {
    std::lock_guard lk(mu_);
    auto& last = touched_[key->id];
    if (now.ms - last >= touch_interval_ms) {
      last = now.ms;
      touch = true;
    }
  }
  if (touch) {
    // Best effort: a failure to record the use never fails the request.
    const std::int64_t id = key->id;
    try {
      co_await store_.run_write([id, now](storage::write_txn& tx) {
        tx.touch_api_key(id, now);
        return true;
      });
    } catch (const std::exception&) {
    }
  }
  co_return principal_of(*key);
}

boost::asio::awaitable<bool> key_verifier::still_valid(const principal& who) {
  if (who.db_id == 0) co_return true;
  const timestamp now = clock_.now();
  std::optional<api_key> key = co_await lookup(who.key_id, now.ms);
  co_return key && key->id == who.db_id && !key->revoked_at && !key_expired(*key, now);
}

boost::asio::awaitable<std::optional<principal>> key_verifier::reload(const principal& who) {
  if (who.db_id == 0) co_return who;
  const timestamp now = clock_.now();
  std::optional<api_key> key = co_await lookup(who.key_id, now.ms);
  if (!key || key->id != who.db_id || key->revoked_at || key_expired(*key, now)) {
    co_return std::nullopt;
  }
  co_return principal_of(*key);
}

bool key_expired(const api_key& k, timestamp now) {
  return k.expires_at && k.expires_at->ms <= now.ms;
}

std::string_view key_state(const api_key& k, timestamp now) {
  if (k.revoked_at) return "revoked";
  if (key_expired(k, now)) return "expired";
  return "active";
}

std::vector<std::string> validate_key_spec(const key_spec& spec, timestamp now) {
  std::vector<std::string> problems;
  if (spec.name.empty()) problems.emplace_back("name should not be empty");
  if (spec.name.size() > max_id_length) problems.emplace_back("name is too long (200 at most)");
  if (spec.role == key_role::machine) {
    if (spec.machine_id.empty()) problems.emplace_back("a machine key needs a machine_id");
    if (spec.machine_id.size() > max_id_length) {
      problems.emplace_back("machine_id is too long (200 at most)");
    }
  } else if (!spec.machine_id.empty()) {
    problems.emplace_back("machine_id is only allowed for keys with the machine role");
  }
  if (spec.role == key_role::admin && !spec.projects.empty()) {
    problems.emplace_back(
        "admin keys cannot have a project scope (an admin manages keys and every project)");
  }
  if (spec.projects.size() > max_projects) {
    problems.emplace_back("projects may list 100 project ids at most");
  }
  for (std::size_t i = 0; i < spec.projects.size(); ++i) {
    const auto& p = spec.projects[i];
    if (p.empty() || p.size() > max_id_length) {
      problems.emplace_back("each project id must have 1 to 200 characters");
      break;
    }
    if (std::find(spec.projects.begin(), spec.projects.begin() + static_cast<std::ptrdiff_t>(i),
                  p) != spec.projects.begin() + static_cast<std::ptrdiff_t>(i)) {
      problems.emplace_back("projects must not repeat a project id");
      break;
    }
  }
  if (spec.expires_at && spec.expires_at->ms <= now.ms) {
    problems.emplace_back("expires_at must be in the future");
  }
  return problems;
}

api_key new_key_record(const key_spec& spec, timestamp now, std::string& plain) {
  plain = generate_api_key();
  api_key k;
  k.prefix = api_key_prefix(plain);
  k.hash = sha256_hex(plain);
  k.name = spec.name;
  k.role = spec.role;
  k.machine_id = spec.machine_id;
  k.projects = spec.projects;
  k.expires_at = spec.expires_at;
  k.created_at = now;
  return k;
}

std::pair<std::string, api_key> create_api_key(storage::store& store, const key_spec& spec,
                                               timestamp now) {
  std::string plain;
  api_key k = new_key_record(spec, now, plain);
  store.write_now([&](storage::write_txn& tx) {
    tx.insert_api_key(k);
    return true;
  });
  return {plain, k};
}

std::pair<std::string, api_key> create_api_key(storage::store& store, std::string name,
                                               key_role role, timestamp now) {
  key_spec spec;
  spec.name = std::move(name);
  spec.role = role;
  return create_api_key(store, spec, now);
}

result<rotation> rotate_api_key(storage::write_txn& tx, std::int64_t id, std::int64_t grace_s,
                                timestamp now) {
  std::optional<api_key> old;
  for (auto& k : tx.list_api_keys()) {
    if (k.id == id) old = std::move(k);
  }
  if (!old) return make_error(errc::not_found, "API key " + std::to_string(id) + " not found");
  if (old->revoked_at) {
    return make_error(errc::bad_request, "API key " + std::to_string(id) + " is revoked");
  }
  if (key_expired(*old, now)) {
    return make_error(errc::bad_request, "API key " + std::to_string(id) + " has expired");
  }
  key_spec spec;
  spec.name = old->name;
  spec.role = old->role;
  spec.machine_id = old->machine_id;
  spec.projects = old->projects;
  spec.expires_at = old->expires_at;
  rotation out;
  out.fresh = new_key_record(spec, now, out.plain);
  tx.insert_api_key(out.fresh);
  if (grace_s > 0) {
    const timestamp until{now.ms + grace_s * 1000};
    tx.expire_api_key(id, until);
    if (!old->expires_at || old->expires_at->ms > until.ms) old->expires_at = until;
  } else {
    tx.revoke_api_key(id, now);
    old->revoked_at = now;
  }
  out.old = std::move(*old);
  return out;
}

std::vector<api_key> find_keys(const std::vector<api_key>& all, std::string_view id_or_prefix) {
  std::vector<api_key> out;
  for (const auto& k : all) {
    if (std::to_string(k.id) == id_or_prefix || k.prefix == id_or_prefix) out.push_back(k);
  }
  return out;
}

}  // namespace statetrack::core
