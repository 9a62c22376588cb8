// Test helper: a TCP proxy on 127.0.0.1 in front of the test database that can simulate an
// outage without touching the shared cluster: `down` drops every connection and closes new
// ones at once (a stopped server), `hang` stops forwarding while keeping connections open and
// accepting new ones (a frozen server or a black-holed network), `forward` is normal service.
// One thread polls every socket; owned by one test.
#pragma once

#include <arpa/inet.h>
#include <atomic>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <netinet/in.h>
#include <poll.h>
#include <stdexcept>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace statetrack::testing {

class tcp_proxy {
 public:
  enum class mode { forward, down, hang };

  tcp_proxy(const std::string& host, int port) : target_host_(host), target_port_(port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(listen_fd_, 128) != 0) {
      throw std::runtime_error("tcp_proxy: cannot listen");
    }
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("tcp_proxy: pipe");
    thread_ = std::thread([this] { run(); });
  }

  ~tcp_proxy() {
    stop_ = true;
    poke();
    thread_.join();
    for (auto& p : pairs_) {
      if (p.client >= 0) ::close(p.client);
      if (p.server >= 0) ::close(p.server);
    }
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  tcp_proxy(const tcp_proxy&) = delete;
  tcp_proxy& operator=(const tcp_proxy&) = delete;

  int port() const { return port_; }
  void set(mode m) {
    mode_ = m;
    poke();
  }

 private:
  struct pair {
    int client = -1;
    int server = -1;
  };

  void poke() {
    char c = 1;
    [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
  }

  int connect_target() const {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(target_port_));
    ::inet_pton(AF_INET, target_host_.c_str(), &a.sin_addr);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }

  static void close_pair(pair& p) {
    if (p.client >= 0) ::close(p.client);
    if (p.server >= 0) ::close(p.server);
    p.client = p.server = -1;
  }

  void run() {
    char buf[65536];
    while (!stop_) {
      const mode m = mode_.load();
      if (m == mode::down) {
        for (auto& p : pairs_)
          close_pair(p);
      }
      std::erase_if(pairs_, [](const pair& p) { return p.client < 0; });
      std::vector<pollfd> fds;
      fds.push_back({wake_[0], POLLIN, 0});
      fds.push_back({listen_fd_, POLLIN, 0});
      if (m == mode::forward) {
        for (auto& p : pairs_) {
          fds.push_back({p.client, POLLIN, 0});
          fds.push_back({p.server, POLLIN, 0});
        }
      }
      if (::poll(fds.data(), fds.size(), 200) <= 0) continue;
      if ((fds[0].revents & POLLIN) != 0) {
        while (::read(wake_[0], buf, sizeof buf) > 0) {
        }
      }
      if ((fds[1].revents & POLLIN) != 0) {
        int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0) {
          const mode now = mode_.load();
          if (now == mode::down) {
            ::close(c);
          } else if (now == mode::hang) {
            pairs_.push_back({c, -1});  // held open, never answered
          } else {
            int s = connect_target();
            if (s < 0) {
              ::close(c);
            } else {
              pairs_.push_back({c, s});
            }
          }
        }
      }
      if (m != mode::forward) continue;
      for (std::size_t i = 2; i < fds.size(); ++i) {
        if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        pair& p = pairs_[(i - 2) / 2];
        if (p.client < 0 || p.server < 0) {
          close_pair(p);
          continue;
        }
        const bool from_client = fds[i].fd == p.client;
        const int from = from_client ? p.client : p.server;
        const int to = from_client ? p.server : p.client;
        const ssize_t n = ::read(from, buf, sizeof buf);
        if (n <= 0 || !write_all(to, buf, static_cast<std::size_t>(n))) close_pair(p);
      }
    }
  }

  static bool write_all(int fd, const char* data, std::size_t n) {
    while (n > 0) {
      const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
      if (w <= 0) return false;
      data += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }

  std::string target_host_;
  int target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  int wake_[2] = {-1, -1};
  std::atomic<mode> mode_{mode::forward};
  std::atomic<bool> stop_{false};
  std::vector<pair> pairs_;
  std::thread thread_;
};

}  // namespace statetrack::testing
