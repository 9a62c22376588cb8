// Machine use cases (contract §4.8, §5): registration, updates with the slot-removal guard,
// deregistration, session assignment to docker slots and release, heartbeats, availability,
// and the offline sweep. Slot occupancy follows the contract's four definitions exactly; the
// pure slot rules are free functions so they can be tested without a store. Created once by
// the app; safe to call from any thread (every write is one store transaction).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/model.hpp"
#include "storage/store.hpp"

namespace statetrack::core {

struct register_machine_input {
  std::string machine_id;
  std::string hostname;
  std::vector<double> docker_slots;  // validated >= 1 and unique by the api layer
  std::string metadata = "{}";
};

struct update_machine_input {
  std::optional<std::vector<double>> docker_slots;
  std::optional<machine_status> status;
  std::optional<std::string> metadata;  // replaces the whole metadata object
};

struct machine_heartbeat_outcome {
  machine m;
  bool back_online = false;  // the machine was offline before this heartbeat
};

struct machine_availability {
  machine m;
  std::int64_t occupied_slots = 0;
  std::vector<std::int64_t> available_slot_numbers;
};

// A session that holds a docker slot, as seen by one of the occupancy definitions of §5.
struct slot_holder {
  std::string session_id;
  std::string machine_id;  // the session's own machine_id
  double docker_slot = 0;
};

// Request slot numbers -> stored slots: 400 `Docker slots must be unique`, then 400
// `Docker slots must be positive integers` (contract §4.8.4 order).
result<std::vector<std::int64_t>> to_docker_slots(const std::vector<double>& given);
bool has_slot(const std::vector<std::int64_t>& slots, double n);
// Auto pick: the first slot in stored order that no holder uses.
std::optional<std::int64_t> first_free_slot(const std::vector<std::int64_t>& slots,
                                            const std::vector<slot_holder>& holders);
// Explicit slot: the first holder on `machine_id` using slot `n`, if any.
const slot_holder* slot_occupant(const std::vector<slot_holder>& holders,
                                 std::string_view machine_id, double n);
// PUT guard: the first holder whose truthy slot is missing from the new list, if any.
const slot_holder* removed_slot_in_use(const std::vector<std::int64_t>& new_slots,
                                       const std::vector<slot_holder>& holders);
// /machines/available: slots (stored order) minus those the holders use.
std::vector<std::int64_t> free_slot_numbers(const std::vector<std::int64_t>& slots,
                                            const std::vector<slot_holder>& holders);
// Most free slots first, ties by machine_id ascending.
void sort_by_availability(std::vector<machine_availability>& list);
// A slot number as JavaScript prints it (2, 1.5) for the contract's messages.
std::string format_slot(double n);
// The heartbeat message, chosen from the status before the call (contract §4.8.9, §13 item 3).
std::string_view machine_heartbeat_message(bool back_online);

struct machine_offline {
  machine m;
  std::vector<std::string> affected_sessions;  // active sessions stalled with it
};

error machine_not_found(std::string_view id);

class machine_service {
 public:
  machine_service(storage::store& store, const clock& clk) : store_(store), clock_(clk) {}

  boost::asio::awaitable<std::vector<machine_availability>> available();
  boost::asio::awaitable<std::vector<machine>> list(std::optional<machine_status> status,
                                                    std::optional<std::string> hostname);
  boost::asio::awaitable<result<machine>> get(std::string id);
  boost::asio::awaitable<result<machine>> register_machine(register_machine_input in);
  boost::asio::awaitable<result<machine>> update(std::string id, update_machine_input in);
  boost::asio::awaitable<result<machine>> deregister(std::string id);
  boost::asio::awaitable<result<machine>> assign_session(std::string id, std::string session_id,
                                                         std::optional<double> docker_slot);
  // `epoch`, when given, must be the session's current one (fencing).
  boost::asio::awaitable<result<machine>> release_session(
      std::string id, std::string session_id, std::optional<std::int64_t> epoch = std::nullopt);
  boost::asio::awaitable<result<machine_heartbeat_outcome>> heartbeat(std::string id);

  // Online machines whose last heartbeat is older than `offline_after_ms` become offline, one
  // event each, in one transaction (maintenance machines are never touched); their active
  // sessions are stalled with the machine as the cause.
  boost::asio::awaitable<std::vector<machine_offline>> sweep_offline(timestamp now,
                                                                     std::int64_t offline_after_ms);

 private:
  storage::store& store_;
  const clock& clock_;
};

}  // namespace statetrack::core
