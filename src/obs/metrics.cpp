// Prometheus text exposition (version 0.0.4) of the registry.
#include "obs/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>

namespace statetrack::obs {

void gauge::add(double d) {
  double cur = value_.load(std::memory_order_relaxed);
  while (!value_.compare_exchange_weak(cur, cur + d, std::memory_order_relaxed)) {
  }
}

histogram::histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1)) {
  std::sort(bounds_.begin(), bounds_.end());
}

void histogram::observe(double v) {
  auto it = std::lower_bound(bounds_.begin(), bounds_.end(), v);
  buckets_[static_cast<std::size_t>(it - bounds_.begin())].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  if (v > 0 && std::isfinite(v)) {
    sum_micros_.fetch_add(static_cast<std::uint64_t>(std::llround(v * 1e6)),
                          std::memory_order_relaxed);
  }
}

double histogram::sum() const {
  return static_cast<double>(sum_micros_.load(std::memory_order_relaxed)) / 1e6;
}

double histogram::quantile(double q) const {
  std::uint64_t total = count();
  if (total == 0) return 0;
  double rank = q * static_cast<double>(total);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    std::uint64_t n = bucket(i);
    if (n > 0 && static_cast<double>(seen + n) >= rank) {
      if (i == bounds_.size()) return bounds_.empty() ? 0 : bounds_.back();
      double lo = i == 0 ? 0 : bounds_[i - 1];
      double hi = bounds_[i];
      double frac = (rank - static_cast<double>(seen)) / static_cast<double>(n);
      return lo + (hi - lo) * std::clamp(frac, 0.0, 1.0);
    }
    seen += n;
  }
  return bounds_.empty() ? 0 : bounds_.back();
}

std::vector<double> latency_bounds_seconds() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
}

counter& registry::add_counter(std::string name, std::string help, labels l) {
  std::lock_guard lk(mu_);
  auto& c = counters_.emplace_back();
  entries_.push_back({std::move(name), std::move(help), std::move(l), kind::counter, &c});
  return c;
}

gauge& registry::add_gauge(std::string name, std::string help, labels l) {
  std::lock_guard lk(mu_);
  auto& g = gauges_.emplace_back();
  entries_.push_back({std::move(name), std::move(help), std::move(l), kind::gauge, nullptr, &g});
  return g;
}

histogram& registry::add_histogram(std::string name, std::string help, std::vector<double> bounds,
                                   labels l) {
  std::lock_guard lk(mu_);
  auto& h = histograms_.emplace_back(std::move(bounds));
  entries_.push_back(
      {std::move(name), std::move(help), std::move(l), kind::histogram, nullptr, nullptr, &h});
  return h;
}

void registry::add_callback(std::string name, std::string help, std::string type,
                            std::function<std::vector<std::pair<labels, double>>()> fn) {
  std::lock_guard lk(mu_);
  callbacks_.push_back({std::move(name), std::move(help), std::move(type), std::move(fn)});
}

namespace {

void append_escaped_label(std::string& out, std::string_view v) {
  for (char ch : v) {
    if (ch == '\\') {
      out += "\\\\";
    } else if (ch == '"') {
      out += "\\\"";
    } else if (ch == '\n') {
      out += "\\n";
    } else {
      out += ch;
    }
  }
}

void append_labels(std::string& out, const labels& l, std::string_view extra_key = {},
                   std::string_view extra_value = {}) {
  if (l.empty() && extra_key.empty()) return;
  out += '{';
  bool first = true;
  for (const auto& [k, v] : l) {
    if (!first) out += ',';
    first = false;
    out += k;
    out += "=\"";
    append_escaped_label(out, v);
    out += '"';
  }
  if (!extra_key.empty()) {
    if (!first) out += ',';
    out += extra_key;
    out += "=\"";
    out += extra_value;
    out += '"';
  }
  out += '}';
}

void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
    return;
  }
  char buf[64];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, p);
}

void append_number(std::string& out, std::uint64_t v) {
  char buf[32];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, p);
}

}  // namespace

std::string registry::render_prometheus() const {
  std::lock_guard lk(mu_);
  std::string out;
  out.reserve(16384);
  // Group entries by name, keeping first-registration order of names.
  std::vector<std::string_view> order;
  std::map<std::string_view, std::vector<const entry*>> by_name;
  for (const auto& e : entries_) {
    auto [it, fresh] = by_name.try_emplace(e.name);
    if (fresh) order.push_back(e.name);
    it->second.push_back(&e);
  }
  for (auto name : order) {
    const auto& list = by_name[name];
    const entry& first = *list.front();
    out += "# HELP ";
    out += name;
    out += ' ';
    out += first.help;
    out += "\n# TYPE ";
    out += name;
    out += first.k == kind::counter ? " counter\n"
           : first.k == kind::gauge ? " gauge\n"
                                    : " histogram\n";
    for (const entry* e : list) {
      if (e->k == kind::counter) {
        out += name;
        append_labels(out, e->l);
        out += ' ';
        append_number(out, e->c->value());
        out += '\n';
      } else if (e->k == kind::gauge) {
        out += name;
        append_labels(out, e->l);
        out += ' ';
        append_number(out, e->g->value());
        out += '\n';
      } else {
        const histogram& h = *e->h;
        std::uint64_t cumulative = 0;
        char le[64];
        for (std::size_t i = 0; i <= h.bounds().size(); ++i) {
          cumulative += h.bucket(i);
          out += name;
          out += "_bucket";
          if (i == h.bounds().size()) {
            append_labels(out, e->l, "le", "+Inf");
          } else {
            auto [p, ec] = std::to_chars(le, le + sizeof le, h.bounds()[i]);
            append_labels(out, e->l, "le", std::string_view(le, static_cast<std::size_t>(p - le)));
          }
          out += ' ';
          append_number(out, cumulative);
          out += '\n';
        }
        out += name;
        out += "_sum";
        append_labels(out, e->l);
        out += ' ';
        append_number(out, h.sum());
        out += '\n';
        out += name;
        out += "_count";
        append_labels(out, e->l);
        out += ' ';
        append_number(out, h.count());
        out += '\n';
      }
    }
  }
  for (const auto& cb : callbacks_) {
    out += "# HELP ";
    out += cb.name;
    out += ' ';
    out += cb.help;
    out += "\n# TYPE ";
    out += cb.name;
    out += ' ';
    out += cb.type;
    out += '\n';
    for (const auto& [l, v] : cb.fn()) {
      out += cb.name;
      append_labels(out, l);
      out += ' ';
      append_number(out, v);
      out += '\n';
    }
  }
  return out;
}

}  // namespace statetrack::obs
