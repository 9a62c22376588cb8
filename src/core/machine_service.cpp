// Machine rules from the contract (reference-api.md §4.8, §5, §6.3, §11). The four slot
// occupancy definitions of §5 are kept apart on purpose (§13 item 18: replicate, document):
//   auto pick        — slots of sessions listed in active_sessions, whatever their machine;
//   explicit slot    — a session listed in active_sessions that names this machine;
//   PUT slot guard   — sessions listed in active_sessions with a truthy slot;
//   /available       — active sessions naming this machine, regardless of active_sessions.
#include "core/machine_service.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include "core/documents.hpp"
#include "core/events.hpp"
#include "core/metadata.hpp"
#include "core/session_service.hpp"
#include "util/json_writer.hpp"

namespace statetrack::core {

namespace json = boost::json;
using storage::read_view;
using storage::write_txn;

namespace {

// Largest integer a double (and a JavaScript number) holds exactly.
constexpr double max_exact_integer = 9007199254740991.0;

error duplicate_entry(std::string_view field, std::string_view value) {
  error e = make_error(errc::conflict, "Duplicate entry");
  json::object key;
  key[field] = value;
  e.details = json::object{{"duplicateKey", std::move(key)}};
  return e;
}

bool listed(const machine& m, std::string_view session_id) {
  return std::find(m.active_sessions.begin(), m.active_sessions.end(), session_id) !=
         m.active_sessions.end();
}

// Sessions listed in the machine's active_sessions that still exist and carry a docker_slot,
// in list order (ids of purged sessions are simply skipped).
std::vector<slot_holder> listed_holders(read_view& v, const machine& m) {
  std::vector<slot_holder> out;
  for (const auto& id : m.active_sessions) {
    auto s = v.get_session(id);
    if (s && s->docker_slot) out.push_back({s->session_id, s->machine_id, *s->docker_slot});
  }
  return out;
}

event machine_session_event(std::string_view type, const machine& m, std::string_view session_id,
                            std::string_view project_id, timestamp now) {
  event e = machine_event(type, m, now);
  e.session_id = session_id;
  e.project_id = project_id;
  return e;
}

}  // namespace

error machine_not_found(std::string_view id) {
  return make_error(errc::not_found, "Machine with ID " + std::string(id) + " not found");
}

result<std::vector<std::int64_t>> to_docker_slots(const std::vector<double>& given) {
  std::set<double> seen;
  for (double n : given) {
    if (!seen.insert(n).second) return make_error(errc::bad_request, "Docker slots must be unique");
  }
  std::vector<std::int64_t> out;
  out.reserve(given.size());
  for (double n : given) {
    if (!std::isfinite(n) || n < 1 || n > max_exact_integer || std::floor(n) != n) {
      return make_error(errc::bad_request, "Docker slots must be positive integers");
    }
    out.push_back(static_cast<std::int64_t>(n));
  }
  return out;
}

bool has_slot(const std::vector<std::int64_t>& slots, double n) {
  return std::any_of(slots.begin(), slots.end(),
                     [n](std::int64_t s) { return static_cast<double>(s) == n; });
}

std::optional<std::int64_t> first_free_slot(const std::vector<std::int64_t>& slots,
                                            const std::vector<slot_holder>& holders) {
  for (auto s : slots) {
    const bool used = std::any_of(holders.begin(), holders.end(), [s](const slot_holder& h) {
      return h.docker_slot == static_cast<double>(s);
    });
    if (!used) return s;
  }
  return std::nullopt;
}

const slot_holder* slot_occupant(const std::vector<slot_holder>& holders,
                                 std::string_view machine_id, double n) {
  for (const auto& h : holders) {
    if (h.machine_id == machine_id && h.docker_slot == n) return &h;
  }
  return nullptr;
}

const slot_holder* removed_slot_in_use(const std::vector<std::int64_t>& new_slots,
                                       const std::vector<slot_holder>& holders) {
  for (const auto& h : holders) {
    if (h.docker_slot != 0 && !has_slot(new_slots, h.docker_slot)) return &h;
  }
  return nullptr;
}

std::vector<std::int64_t> free_slot_numbers(const std::vector<std::int64_t>& slots,
                                            const std::vector<slot_holder>& holders) {
  std::vector<std::int64_t> out;
  for (auto s : slots) {
    const bool used = std::any_of(holders.begin(), holders.end(), [s](const slot_holder& h) {
      return h.docker_slot == static_cast<double>(s);
    });
    if (!used) out.push_back(s);
  }
  return out;
}

void sort_by_availability(std::vector<machine_availability>& list) {
  std::stable_sort(list.begin(), list.end(),
                   [](const machine_availability& a, const machine_availability& b) {
                     if (a.available_slot_numbers.size() != b.available_slot_numbers.size()) {
                       return a.available_slot_numbers.size() > b.available_slot_numbers.size();
                     }
                     return a.m.machine_id < b.m.machine_id;
                   });
}

std::string format_slot(double n) {
  std::string out;
  util::json_writer w(out);
  w.value(n);
  return out;
}

std::string_view machine_heartbeat_message(bool back_online) {
  return back_online ? "Heartbeat updated and machine brought back online"
                     : "Heartbeat updated successfully";
}

// GET /machines/available — occupancy from active sessions naming the machine (§4.8.1).
boost::asio::awaitable<std::vector<machine_availability>> machine_service::available() {
  auto fn = [](read_view& v) {
    storage::machine_filter mf;
    mf.status = machine_status::online;
    std::vector<machine_availability> out;
    for (auto& m : v.list_machines(mf)) {
      storage::session_filter sf;
      sf.statuses = storage::status_set::of({session_status::active});
      sf.machine_id = m.machine_id;
      std::vector<slot_holder> holders;
      for (const auto& s : v.list_sessions(sf)) {
        if (s.docker_slot) holders.push_back({s.session_id, s.machine_id, *s.docker_slot});
      }
      machine_availability a;
      a.occupied_slots = static_cast<std::int64_t>(holders.size());
      a.available_slot_numbers = free_slot_numbers(m.docker_slots, holders);
      a.m = std::move(m);
      out.push_back(std::move(a));
    }
    sort_by_availability(out);
    return out;
  };
  co_return co_await storage::read(store_, std::move(fn));
}

boost::asio::awaitable<std::vector<machine>> machine_service::list(
    std::optional<machine_status> status, std::optional<std::string> hostname) {
  storage::machine_filter f;
  f.status = status;
  f.hostname = std::move(hostname);
  auto fn = [&f](read_view& v) { return v.list_machines(f); };
  co_return co_await storage::read(store_, std::move(fn));
}

boost::asio::awaitable<result<machine>> machine_service::get(std::string id) {
  auto fn = [&](read_view& v) -> result<machine> {
    auto m = v.get_machine(id);
    if (!m) return machine_not_found(id);
    return std::move(*m);
  };
  co_return co_await storage::read(store_, std::move(fn));
}

// POST /machines — order: 409 existing, 400 duplicate slots, 400 non-integer slots, then the
// storage-level empty-string checks.
boost::asio::awaitable<result<machine>> machine_service::register_machine(
    register_machine_input in) {
  auto fn = [&](write_txn& tx) -> result<machine> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    if (tx.get_machine(in.machine_id)) {
      return make_error(errc::conflict, "Machine with ID " + in.machine_id + " already exists");
    }
    auto slots = to_docker_slots(in.docker_slots);
    if (!slots) return slots.error();
    std::vector<std::string> problems;
    if (in.machine_id.empty()) problems.emplace_back("machine_id should not be empty");
    if (in.hostname.empty()) problems.emplace_back("hostname should not be empty");
    if (!problems.empty()) return validation_error(std::move(problems));
    machine m;
    m.oid = new_object_id(now);
    m.machine_id = in.machine_id;
    m.hostname = in.hostname;
    m.docker_slots = std::move(*slots);
    m.status = machine_status::online;
    m.last_heartbeat = m.created_at = m.updated_at = now;
    m.metadata = in.metadata;
    if (!tx.insert_machine(m)) return duplicate_entry("machine_id", m.machine_id);
    tx.append_event(machine_event("machine.registered", m, now));
    return m;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// PUT /machines/:id — any status, metadata replaced, last_heartbeat := now on every call.
boost::asio::awaitable<result<machine>> machine_service::update(std::string id,
                                                                update_machine_input in) {
  auto fn = [&](write_txn& tx) -> result<machine> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_machine(id);
    if (!found) return machine_not_found(id);
    machine m = std::move(*found);
    if (in.docker_slots) {
      auto slots = to_docker_slots(*in.docker_slots);
      if (!slots) return slots.error();
      const auto holders = listed_holders(tx, m);
      if (const auto* h = removed_slot_in_use(*slots, holders)) {
        return make_error(errc::bad_request, "Cannot remove docker slot " +
                                                 format_slot(h->docker_slot) +
                                                 " - currently in use by session " + h->session_id);
      }
      m.docker_slots = std::move(*slots);
    }
    if (in.status) m.status = *in.status;
    if (in.metadata) m.metadata = *in.metadata;
    m.last_heartbeat = now;
    m.updated_at = now;
    if (!tx.update_machine(m)) return machine_not_found(id);
    tx.append_event(machine_event("machine.updated", m, now));
    return m;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// DELETE /machines/:id — offline, nothing else; repeatable.
boost::asio::awaitable<result<machine>> machine_service::deregister(std::string id) {
  auto fn = [&](write_txn& tx) -> result<machine> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_machine(id);
    if (!found) return machine_not_found(id);
    machine m = std::move(*found);
    m.status = machine_status::offline;
    m.updated_at = now;
    if (!tx.update_machine(m)) return machine_not_found(id);
    tx.append_event(machine_event("machine.offline", m, now));
    return m;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// POST /machines/:id/assign-session — rules 1–6 of §4.8.7 in order; rule 7 (the lost race)
// cannot happen because the whole check-and-append is one serialised transaction.
boost::asio::awaitable<result<machine>> machine_service::assign_session(
    std::string id, std::string session_id, std::optional<double> docker_slot) {
  auto fn = [&](write_txn& tx) -> result<machine> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_machine(id);
    if (!found) return machine_not_found(id);
    machine m = std::move(*found);
    if (m.status != machine_status::online) {
      return make_error(errc::bad_request, "Cannot assign session to machine " + id +
                                               " - machine status is " +
                                               std::string(to_string(m.status)));
    }
    auto s = tx.get_session(session_id);
    if (!s) return session_not_found(session_id);
    if (listed(m, session_id)) {
      return make_error(errc::conflict,
                        "Session " + session_id + " is already assigned to machine " + id);
    }
    const auto holders = listed_holders(tx, m);
    std::optional<double> slot;
    if (docker_slot) {
      const double n = *docker_slot;
      if (!has_slot(m.docker_slots, n)) {
        return make_error(errc::bad_request,
                          "Docker slot " + format_slot(n) + " is not available on machine " + id);
      }
      if (const auto* h = slot_occupant(holders, id, n)) {
        return make_error(errc::conflict, "Docker slot " + format_slot(n) +
                                              " is already occupied by session " + h->session_id);
      }
      slot = n;
    } else if (!m.docker_slots.empty()) {
      auto free = first_free_slot(m.docker_slots, holders);
      if (!free) {
        return make_error(errc::conflict, "No available docker slots on machine " + id + " - all " +
                                              std::to_string(m.docker_slots.size()) +
                                              " slots are occupied");
      }
      slot = static_cast<double>(*free);
    }
    m.active_sessions.push_back(session_id);
    m.last_heartbeat = now;
    m.updated_at = now;
    if (!tx.update_machine(m)) return machine_not_found(id);
    s->machine_id = id;
    if (slot) s->docker_slot = slot;
    s->updated_at = now;
    tx.update_session(*s);
    tx.append_event(
        machine_session_event("machine.session_assigned", m, session_id, s->project_id, now));
    tx.append_event(session_event("session.updated", *s, now));
    return m;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// POST /machines/:id/release-session — the session itself is neither looked up nor changed.
boost::asio::awaitable<result<machine>> machine_service::release_session(
    std::string id, std::string session_id, std::optional<std::int64_t> epoch) {
  auto fn = [&](write_txn& tx) -> result<machine> {
    // Time is read inside the transaction, so timestamps follow the commit order.
    const timestamp now = clock_.now();
    auto found = tx.get_machine(id);
    if (!found) return machine_not_found(id);
    machine m = std::move(*found);
    // Fencing: a stale owner may not release the slot its successor now holds.
    if (epoch) {
      if (auto s = tx.get_session(session_id); s && s->epoch != *epoch) {
        return stale_epoch(*s, *epoch);
      }
    }
    if (!listed(m, session_id)) {
      return make_error(errc::bad_request,
                        "Session " + session_id + " is not assigned to machine " + id);
    }
    std::erase(m.active_sessions, session_id);
    m.last_heartbeat = now;
    m.updated_at = now;
    if (!tx.update_machine(m)) return machine_not_found(id);
    tx.append_event(machine_session_event("machine.session_released", m, session_id, "", now));
    return m;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// POST /machines/:id/heartbeat — offline -> online (event); online/maintenance unchanged (none).
boost::asio::awaitable<result<machine_heartbeat_outcome>> machine_service::heartbeat(
    std::string id) {
  auto fn = [&](write_txn& tx) -> result<machine_heartbeat_outcome> {
    auto found = tx.get_machine(id);
    if (!found) return machine_not_found(id);
    // Time is read inside the transaction so that heartbeats are ordered like their commits.
    const timestamp now = clock_.now();
    machine_heartbeat_outcome out;
    out.m = std::move(*found);
    out.back_online = out.m.status == machine_status::offline;
    if (out.back_online) out.m.status = machine_status::online;
    out.m.last_heartbeat = now;
    out.m.updated_at = now;
    if (!tx.update_machine(out.m)) return machine_not_found(id);
    if (out.back_online) tx.append_event(machine_event("machine.online", out.m, now));
    return out;
  };
  co_return co_await storage::write(store_, std::move(fn));
}

// Offline detection (§11): a compare-and-set over the partial index of online machines.
// A machine that went silent takes its active sessions with it: they are stalled in the same
// transaction with the machine as the one stated cause, and the single machine.offline event
// lists them (no per-session stall events to explain one by one).
boost::asio::awaitable<std::vector<machine_offline>> machine_service::sweep_offline(
    timestamp now, std::int64_t offline_after_ms) {
  auto fn = [&](write_txn& tx) -> result<std::vector<machine_offline>> {
    storage::machine_filter f;
    f.status = machine_status::online;
    f.last_heartbeat_before = now - offline_after_ms;
    std::vector<machine_offline> out;
    for (auto& m : tx.list_machines(f)) {
      m.status = machine_status::offline;
      m.updated_at = now;
      tx.update_machine(m);
      machine_offline gone{m, {}};
      storage::session_filter sf;
      sf.statuses = storage::status_set::of({session_status::active});
      sf.machine_id = m.machine_id;
      boost::json::object patch;
      patch["stalled_reason"] = "machine " + m.machine_id + " went offline";
      patch["stalled_timestamp"] = format_iso(now);
      for (auto& s : tx.list_sessions(sf)) {
        s.status = session_status::stalled;
        s.metadata = merge_metadata(s.metadata, patch);
        s.updated_at = now;
        tx.update_session(s);
        gone.affected_sessions.push_back(s.session_id);
      }
      auto doc = boost::json::parse(machine_json(m)).as_object();
      boost::json::array ids;
      for (const auto& id : gone.affected_sessions)
        ids.emplace_back(id);
      doc["affected_sessions"] = std::move(ids);
      event e = machine_event("machine.offline", m, now);
      e.data = boost::json::serialize(doc);
      tx.append_event(e);
      out.push_back(std::move(gone));
    }
    return out;
  };
  auto r = co_await storage::write(store_, std::move(fn));
  co_return std::move(r.value());
}

}  // namespace statetrack::core
