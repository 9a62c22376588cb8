// Ticket issue and single-use redemption.
#include "core/tickets.hpp"

#include "core/error.hpp"
#include "storage/store.hpp"

namespace statetrack::core {

boost::asio::awaitable<issued_ticket> issue_ticket(storage::store& store, const principal& who,
                                                   timestamp now) {
  std::string plain = generate_api_key();
  plain.replace(0, 3, "tk_");
  stream_ticket t;
  t.hash = sha256_hex(plain);
  t.key_id = who.key_id;
  t.key_db_id = who.db_id;
  t.role = who.role;
  t.expires_at = now + ticket_ttl_ms;
  auto fn = [&t](storage::write_txn& tx) -> result<bool> {
    tx.insert_ticket(t);
    return true;
  };
  auto r = co_await storage::write(store, std::move(fn));
  r.value();
  co_return issued_ticket{plain, t.expires_at};
}

boost::asio::awaitable<std::optional<principal>> redeem_ticket(storage::store& store,
                                                               std::string_view ticket,
                                                               timestamp now) {
  if (!ticket.starts_with("tk_")) co_return std::nullopt;
  const std::string hash = sha256_hex(ticket);
  std::optional<stream_ticket> found;
  auto fn = [&](storage::write_txn& tx) -> result<bool> {
    found = tx.consume_ticket(hash, now);
    return true;
  };
  auto r = co_await storage::write(store, std::move(fn));
  r.value();
  if (!found) co_return std::nullopt;
  // Only the key's identity: the caller reloads its current role and scope (key_verifier::reload).
  principal p;
  p.key_id = found->key_id;
  p.role = found->role;
  p.db_id = found->key_db_id;
  co_return p;
}

}  // namespace statetrack::core
