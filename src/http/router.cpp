// A segment trie: each node has literal children (lower-cased) and at most one parameter
// child; lookup tries the literal first and backtracks to the parameter.
#include "http/router.hpp"

#include <algorithm>
#include <array>
#include <stdexcept>

namespace statetrack::http {

namespace {

constexpr std::size_t method_count = 8;

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> segs;
  std::size_t i = 0;
  if (!path.empty() && path[0] == '/') i = 1;
  // One trailing slash is tolerated: /sessions/ == /sessions.
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  while (i <= path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    segs.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  if (segs.size() == 1 && segs[0].empty()) segs.clear();  // "/"
  return segs;
}

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

struct router::node {
  std::unordered_map<std::string, std::unique_ptr<node>> literals;
  std::unique_ptr<node> param;
  std::array<const route*, method_count> handlers{};
};

router::router() : root_(std::make_unique<node>()) {}
router::~router() = default;

bool percent_decode(std::string_view in, std::string& out, bool plus_as_space) {
  out.clear();
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;
      int hi = hexval(in[i + 1]);
      int lo = hexval(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_as_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return true;
}

std::vector<std::pair<std::string, std::string>> parse_query(std::string_view q) {
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t i = 0;
  while (i <= q.size() && !q.empty()) {
    std::size_t amp = q.find('&', i);
    if (amp == std::string_view::npos) amp = q.size();
    std::string_view part = q.substr(i, amp - i);
    if (!part.empty()) {
      std::size_t eq = part.find('=');
      std::string_view k = part.substr(0, eq);
      std::string_view v = eq == std::string_view::npos ? std::string_view{} : part.substr(eq + 1);
      std::string dk, dv;
      if (!percent_decode(k, dk, true)) dk.assign(k);
      if (!percent_decode(v, dv, true)) dv.assign(v);
      if (!dk.empty()) out.emplace_back(std::move(dk), std::move(dv));
    }
    if (amp == q.size()) break;
    i = amp + 1;
  }
  return out;
}

void router::insert(std::string_view pattern, const route* r) {
  node* n = root_.get();
  for (auto seg : split_path(pattern)) {
    if (!seg.empty() && seg[0] == ':') {
      if (!n->param) n->param = std::make_unique<node>();
      n = n->param.get();
    } else {
      auto& child = n->literals[lower(seg)];
      if (!child) child = std::make_unique<node>();
      n = child.get();
    }
  }
  auto slot = static_cast<std::size_t>(r->verb);
  if (n->handlers[slot] != nullptr) {
    throw std::logic_error("duplicate route " + std::string(method_name(r->verb)) + " " +
                           std::string(pattern));
  }
  n->handlers[slot] = r;
}

const route& router::add(route r) {
  r.index = routes_.size();
  routes_.push_back(std::make_unique<route>(std::move(r)));
  const route* p = routes_.back().get();
  insert(p->pattern, p);
  if (!p->pattern.starts_with("/api/") && p->pattern != "/api") insert("/api" + p->pattern, p);
  return *p;
}

match router::find(method m, std::string_view path) const {
  auto segs = split_path(path);
  // Depth-first with literal preference; records parameter segments on the way.
  std::vector<std::string_view> captured;
  const route* found = nullptr;
  auto slot = static_cast<std::size_t>(m);
  auto get_slot = static_cast<std::size_t>(method::get);

  auto walk = [&](auto&& self, const node* n, std::size_t depth) -> bool {
    if (depth == segs.size()) {
      const route* r = n->handlers[slot];
      if (r == nullptr && m == method::head) r = n->handlers[get_slot];
      if (r == nullptr) return false;
      found = r;
      return true;
    }
    std::string key = lower(segs[depth]);
    auto it = n->literals.find(key);
    if (it != n->literals.end() && self(self, it->second.get(), depth + 1)) return true;
    if (n->param && !segs[depth].empty()) {
      captured.push_back(segs[depth]);
      if (self(self, n->param.get(), depth + 1)) return true;
      captured.pop_back();
    }
    return false;
  };
  match out;
  if (!walk(walk, root_.get(), 0)) return out;
  out.r = found;
  out.params.reserve(captured.size());
  for (auto raw : captured) {
    std::string decoded;
    if (!percent_decode(raw, decoded, false)) {
      out.bad_escape = true;
      out.bad_param.assign(raw);
      decoded.assign(raw);
    }
    out.params.push_back(std::move(decoded));
  }
  return out;
}

}  // namespace statetrack::http
