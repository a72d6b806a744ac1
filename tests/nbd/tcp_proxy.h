// TcpProxy: a loopback TCP proxy between an NBD client and server, for
// network fault tests: pass bytes through, hold them back (a partition:
// nothing crosses, connections stay up; released in order on heal - a
// half-close (FIN) too, behind the bytes before it), delay
// every byte by a fixed time, or reset every connection (RST).
//
// One thread, poll(2) over the listening socket and both ends of every
// connection. Held / delayed bytes wait in per-direction queues stamped with
// the time they may go; the loop's poll timeout is the next such time, so
// nothing sleeps. New connections are accepted in every mode (a partition
// still lets the kernel complete TCP handshakes to the proxy; the NBD
// handshake then stalls, as across a real partition).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <netinet/in.h>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace ublkvol::nbd::testing {

class TcpProxy {
 public:
  enum class Mode { kPass, kPartition, kDelay };

  explicit TcpProxy(uint16_t target_port) : target_port_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 64) != 0) {
      throw std::runtime_error("proxy listen: " + std::generic_category().message(errno));
    }
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    thread_ = std::thread([this] { run(); });
  }

  ~TcpProxy() {
    stop_ = true;
    wake();
    thread_.join();
    for (auto& link : links_) {
      close_link(*link, /*reset=*/false);
    }
    ::close(listen_fd_);
    ::close(wake_fd_);
  }
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  [[nodiscard]] std::string uri() const { return "nbd://127.0.0.1:" + std::to_string(port_) + "/"; }

  // Pass: bytes flow (held ones first, in order). Partition: nothing
  // crosses until the mode changes. Delay: every byte waits `delay`.
  void set_mode(Mode mode, std::chrono::milliseconds delay = {}) {
    {
      const std::lock_guard lock(mutex_);
      mode_ = mode;
      delay_ = delay;
    }
    wake();
  }

  // Resets every open connection (SO_LINGER 0: the peers see RST).
  void reset_all() {
    reset_requested_ = true;
    wake();
  }

  // Connections reset so far.
  [[nodiscard]] unsigned resets() const { return resets_.load(); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Chunk {
    Clock::time_point due;
    std::vector<char> bytes;
    size_t sent = 0;
    bool fin = false;  // the sender's EOF: shut the other side's write half when due
  };
  struct Link {
    int fd[2] = {-1, -1};          // 0: client side, 1: server side
    std::deque<Chunk> queue[2];    // queue[i]: read from fd[i], to go to fd[1 - i]
    bool eof[2] = {false, false};  // fd[i] sent its FIN (queued as a `fin` chunk)
    bool open = true;
  };

  void wake() const {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof one);
  }

  void close_link(Link& link, bool reset) {
    for (int& fd : link.fd) {
      if (fd >= 0) {
        if (reset) {
          linger l{.l_onoff = 1, .l_linger = 0};
          ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        }
        ::close(fd);
        fd = -1;
      }
    }
    link.open = false;
  }

  void accept_one() {
    const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (client < 0) {
      return;
    }
    const int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(target_port_);
    // Blocking connect on loopback: the server's backlog answers at once.
    if (::connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(server);
      ::close(client);
      return;
    }
    ::fcntl(server, F_SETFL, ::fcntl(server, F_GETFL) | O_NONBLOCK);
    auto link = std::make_unique<Link>();
    link->fd[0] = client;
    link->fd[1] = server;
    links_.push_back(std::move(link));
  }

  void run() {
    std::vector<pollfd> fds;
    std::vector<std::pair<Link*, int>> owners;
    while (!stop_) {
      Mode mode;
      std::chrono::milliseconds delay;
      {
        const std::lock_guard lock(mutex_);
        mode = mode_;
        delay = delay_;
      }
      if (reset_requested_.exchange(false)) {
        for (auto& link : links_) {
          if (link->open) {
            close_link(*link, /*reset=*/true);
            ++resets_;
          }
        }
      }
      // Send what is due.
      const auto now = Clock::now();
      auto next_due = Clock::time_point::max();
      for (auto& link : links_) {
        for (int dir = 0; dir < 2 && link->open; ++dir) {
          auto& queue = link->queue[dir];
          while (mode != Mode::kPartition && !queue.empty() && queue.front().due <= now) {
            Chunk& chunk = queue.front();
            if (chunk.fin) {
              // A half-close crosses in order, behind the bytes before it
              // (held by a partition like them).
              ::shutdown(link->fd[1 - dir], SHUT_WR);
              queue.pop_front();
              continue;
            }
            const ssize_t n = ::send(link->fd[1 - dir], chunk.bytes.data() + chunk.sent,
                                     chunk.bytes.size() - chunk.sent, MSG_NOSIGNAL);
            if (n < 0) {
              if (errno != EAGAIN) {
                close_link(*link, false);
              }
              break;
            }
            chunk.sent += static_cast<size_t>(n);
            if (chunk.sent < chunk.bytes.size()) {
              break;
            }
            queue.pop_front();
          }
          if (link->open && mode != Mode::kPartition && !link->queue[dir].empty()) {
            next_due = std::min(next_due, link->queue[dir].front().due);
          }
        }
        if (link->open && link->eof[0] && link->eof[1] && link->queue[0].empty() &&
            link->queue[1].empty()) {
          close_link(*link, false);
        }
      }
      fds.clear();
      owners.clear();
      fds.push_back({.fd = wake_fd_, .events = POLLIN, .revents = 0});
      owners.emplace_back(nullptr, 0);
      fds.push_back({.fd = listen_fd_, .events = POLLIN, .revents = 0});
      owners.emplace_back(nullptr, 1);
      for (auto& link : links_) {
        for (int side = 0; side < 2 && link->open; ++side) {
          short events = link->eof[side] ? 0 : POLLIN;
          if (!link->queue[1 - side].empty() && mode != Mode::kPartition) {
            events |= POLLOUT;  // bytes waiting to go to this side
          }
          if (events == 0) {
            continue;
          }
          fds.push_back({.fd = link->fd[side], .events = events, .revents = 0});
          owners.emplace_back(link.get(), side);
        }
      }
      int timeout = -1;
      if (next_due != Clock::time_point::max()) {
        const auto wait =
            std::chrono::duration_cast<std::chrono::milliseconds>(next_due - Clock::now()).count();
        timeout = static_cast<int>(std::max<int64_t>(0, wait + 1));
      }
      if (::poll(fds.data(), fds.size(), timeout) < 0) {
        continue;
      }
      if ((fds[0].revents & POLLIN) != 0) {
        uint64_t value = 0;
        [[maybe_unused]] const ssize_t n = ::read(wake_fd_, &value, sizeof value);
      }
      if ((fds[1].revents & POLLIN) != 0) {
        accept_one();
      }
      for (size_t i = 2; i < fds.size(); ++i) {
        Link& link = *owners[i].first;
        const int side = owners[i].second;
        if (!link.open || link.eof[side] || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
          continue;
        }
        char buffer[65536];
        const ssize_t n = ::recv(link.fd[side], buffer, sizeof buffer, 0);
        if (n < 0 && errno != EAGAIN) {
          close_link(link, false);
          continue;
        }
        if (n == 0) {
          // EOF: passed on as a half-close once the bytes before it went.
          link.eof[side] = true;
          Chunk chunk;
          chunk.due = Clock::now() + (mode == Mode::kDelay ? delay : std::chrono::milliseconds{});
          chunk.fin = true;
          link.queue[side].push_back(std::move(chunk));
          continue;
        }
        if (n > 0) {
          Chunk chunk;
          chunk.due = Clock::now() + (mode == Mode::kDelay ? delay : std::chrono::milliseconds{});
          chunk.bytes.assign(buffer, buffer + n);
          link.queue[side].push_back(std::move(chunk));
        }
      }
    }
  }

  uint16_t target_port_;
  uint16_t port_ = 0;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  std::mutex mutex_;
  Mode mode_ = Mode::kPass;
  std::chrono::milliseconds delay_{};
  std::atomic<bool> stop_{false};
  std::atomic<bool> reset_requested_{false};
  std::atomic<unsigned> resets_{0};
  std::vector<std::unique_ptr<Link>> links_;  // proxy thread only (and the destructor)
  std::thread thread_;
};

}  // namespace ublkvol::nbd::testing
