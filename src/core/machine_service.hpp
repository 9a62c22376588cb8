// Machine use cases (contract §4.8, §5): registration, updates with the slot-removal guard,
// deregistration, session assignment to docker slots and release, heartbeats, availability,
// and the offline sweep. Slot occupancy follows the contract's four definitions exactly.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <optional>
#include <string>
#include <vector>

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
  boost::asio::awaitable<result<machine>> release_session(std::string id, std::string session_id);
  boost::asio::awaitable<result<machine_heartbeat_outcome>> heartbeat(std::string id);

  // Online machines whose last heartbeat is older than `offline_after_ms` become offline.
  boost::asio::awaitable<std::vector<machine>> sweep_offline(timestamp now,
                                                             std::int64_t offline_after_ms);

 private:
  storage::store& store_;
  const clock& clock_;
};

}  // namespace statetrack::core
