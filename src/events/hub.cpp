// Ring maintenance and wake-ups.
#include "events/hub.hpp"

#include <algorithm>

#include <boost/asio/post.hpp>

#include "obs/metrics.hpp"
#include "storage/store.hpp"
#include "util/json_writer.hpp"

namespace statetrack::events {

namespace asio = boost::asio;

message_ptr render(core::event e) {
  auto m = std::make_shared<message>();
  m->json.reserve(e.data.size() + 256);
  util::json_writer w(m->json);
  w.begin_object();
  w.field("type", "event");
  w.field("seq", e.seq);
  w.field("event_type", e.type);
  w.field_iso("occurred_at", e.occurred_at.ms);
  if (!e.project_id.empty()) w.field("project_id", e.project_id);
  if (!e.session_id.empty()) w.field("session_id", e.session_id);
  if (!e.task_id.empty()) w.field("task_id", e.task_id);
  if (!e.machine_id.empty()) w.field("machine_id", e.machine_id);
  w.field_raw("data", e.data.empty() ? std::string_view("{}") : std::string_view(e.data));
  w.end_object();
  m->e = std::move(e);
  return m;
}

bool filter::matches(const core::event& e) const {
  if (!scope_projects.empty() && std::find(scope_projects.begin(), scope_projects.end(),
                                           e.project_id) == scope_projects.end()) {
    return false;
  }
  if (scope_machine && e.machine_id != *scope_machine) return false;
  if (project_id && e.project_id != *project_id) return false;
  if (session_id && e.session_id != *session_id) return false;
  if (machine_id && e.machine_id != *machine_id) return false;
  if (types.empty()) return true;
  for (const auto& t : types) {
    if (t.size() >= 2 && t.ends_with(".*")) {
      if (e.type.size() >= t.size() - 1 &&
          e.type.compare(0, t.size() - 1, t, 0, t.size() - 1) == 0) {
        return true;
      }
    } else if (t == e.type) {
      return true;
    }
  }
  return false;
}

hub::hub(storage::store& store, asio::any_io_executor executor, hub_options opts,
         obs::registry* metrics)
    : store_(store), executor_(std::move(executor)), opts_(opts), metrics_(metrics) {
  store_.read_now([&](storage::read_view& v) { head_ = v.last_event_seq(); });
  if (metrics != nullptr) {
    subscribers_ =
        &metrics->add_gauge("statetrack_event_subscribers", "Open WebSocket and SSE event streams");
    delivered_ =
        &metrics->add_counter("statetrack_events_delivered_total", "Events written to subscribers");
    cut_ = &metrics->add_counter("statetrack_event_subscribers_cut_total",
                                 "Subscribers disconnected for falling behind");
  }
}

void hub::on_committed(std::int64_t last_seq) {
  {
    std::lock_guard lk(mu_);
    if (last_seq <= head_ || last_seq <= wanted_) return;
    wanted_ = last_seq;
    if (pulling_) return;
    pulling_ = true;
  }
  asio::post(executor_, [this] { pull(); });
}

// Runs on the hub's executor: reads every committed event past the head, once.
void hub::pull() {
  for (;;) {
    std::int64_t from = 0;
    {
      std::lock_guard lk(mu_);
      if (head_ >= wanted_) {
        pulling_ = false;
        break;
      }
      from = head_;
    }
    std::vector<core::event> fresh;
    try {
      store_.read_now([&](storage::read_view& v) { fresh = v.events_after(from, 4096); });
    } catch (const std::exception&) {
      std::lock_guard lk(mu_);
      pulling_ = false;  // retried at the next commit
      return;
    }
    std::vector<waiter> to_wake;
    {
      std::lock_guard lk(mu_);
      for (auto& e : fresh) {
        head_ = std::max(head_, e.seq);
        count_type(e.type);
        ring_.push_back(render(std::move(e)));
        if (ring_.size() > opts_.ring_capacity) ring_.pop_front();
      }
      if (fresh.empty()) head_ = std::max(head_, wanted_);
      to_wake = waiters_;
    }
    for (auto& w : to_wake)
      asio::post(w.ex, w.wake);
  }
}

void hub::count_type(const std::string& type) {
  if (metrics_ == nullptr) return;
  auto it = by_type_.find(type);
  if (it == by_type_.end()) {
    it = by_type_
             .emplace(type, &metrics_->add_counter(
                                "statetrack_events_total",
                                "State changes by event type (sessions created, stalled, "
                                "recovered, ...), as read from the event log by this instance",
                                {{"type", type}}))
             .first;
  }
  it->second->inc();
}

void hub::shutdown() {
  closing_ = true;
  wake_all();
}

void hub::wake_all() {
  std::vector<waiter> to_wake;
  {
    std::lock_guard lk(mu_);
    to_wake = waiters_;
  }
  for (auto& w : to_wake)
    asio::post(w.ex, w.wake);
}

std::uint64_t hub::add_waiter(asio::any_io_executor ex, std::function<void()> wake) {
  std::lock_guard lk(mu_);
  const std::uint64_t token = next_token_++;
  waiters_.push_back({token, std::move(ex), std::move(wake)});
  return token;
}

void hub::remove_waiter(std::uint64_t token) {
  std::lock_guard lk(mu_);
  std::erase_if(waiters_, [&](const waiter& w) { return w.token == token; });
}

std::optional<std::vector<message_ptr>> hub::from_ring(std::int64_t from, std::size_t max) const {
  std::lock_guard lk(mu_);
  std::vector<message_ptr> out;
  if (from > head_) return out;
  if (ring_.empty() || from < ring_.front()->e.seq) {
    // Older than the ring: unless nothing was ever evicted and the ring starts at the log's
    // beginning, the caller reads the store.
    return std::nullopt;
  }
  // Seqs in the ring are increasing; find the first >= from.
  auto it = std::lower_bound(ring_.begin(), ring_.end(), from,
                             [](const message_ptr& m, std::int64_t s) { return m->e.seq < s; });
  for (; it != ring_.end() && out.size() < max; ++it)
    out.push_back(*it);
  return out;
}

std::int64_t hub::head() const {
  std::lock_guard lk(mu_);
  return head_;
}

void hub::count_connected(int delta) {
  if (subscribers_ != nullptr) subscribers_->add(delta);
}
void hub::count_delivered(std::uint64_t n) {
  if (delivered_ != nullptr) delivered_->inc(n);
}
void hub::count_cut() {
  if (cut_ != nullptr) cut_->inc();
}

}  // namespace statetrack::events
