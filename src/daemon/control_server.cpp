#include "ublkvol/daemon/control_server.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <spdlog/spdlog.h>
#include <system_error>
#include <vector>

#include "ublkvol/common/unique_fd.h"

namespace ublkvol::daemon {
namespace {

// Past this much unsent output, a connection's further requests wait.
constexpr size_t kOutputBacklogBytes = 4U << 20U;

Status make_parent_dir(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) {
    return ok_status();
  }
  const std::string dir = path.substr(0, slash);
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos == dir.size() || dir[pos] == '/') {
      const std::string part = dir.substr(0, pos);
      if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) {
        return errno_error("cannot create directory " + part);
      }
    }
  }
  return ok_status();
}

// Whether `uid` (with primary group `gid`) is a member of group `group`.
bool in_group(uid_t uid, gid_t gid, gid_t group) {
  if (gid == group) {
    return true;
  }
  passwd pw{};
  passwd* found = nullptr;
  std::vector<char> buffer(16384);
  if (::getpwuid_r(uid, &pw, buffer.data(), buffer.size(), &found) != 0 || found == nullptr) {
    return false;
  }
  int count = 64;
  std::vector<gid_t> groups(static_cast<size_t>(count));
  if (::getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &count) < 0) {
    groups.resize(static_cast<size_t>(count));
    if (::getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &count) < 0) {
      return false;
    }
  }
  groups.resize(static_cast<size_t>(count));
  return std::find(groups.begin(), groups.end(), group) != groups.end();
}

}  // namespace

struct ControlServer::Impl {
  using Clock = std::chrono::steady_clock;

  struct Connection {
    UniqueFd fd;
    Peer peer;
    // When the current partial request line began (in non-empty), when the
    // connection last had nothing to do, when output last made progress.
    Clock::time_point line_started;
    Clock::time_point last_activity;
    std::string in;
    std::string out;
    size_t scanned = 0;  // bytes of `in` known to hold no newline
    bool close_after_flush = false;
    uint32_t events = EPOLLIN | EPOLLRDHUP;  // registered epoll interest
  };

  ControlServerOptions options;
  Handler handler;
  UniqueFd epoll;
  UniqueFd listener;
  bool socket_file_ours = false;
  std::optional<gid_t> group;
  std::map<int, std::unique_ptr<Connection>> connections;
  std::map<uint32_t, size_t> connections_per_uid;
  std::map<int, std::function<void()>> watched;
  bool stopping = false;
  // Set by refuse_pending(): requests are answered with it, not run.
  std::optional<Error> refusal;

  // NOLINTNEXTLINE(readability-make-member-function-const): changes the epoll set it owns
  Status add(int fd, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return errno_error("epoll_ctl ADD");
    }
    return ok_status();
  }

  // Level-triggered interest: read while the output backlog is small (a
  // client that sends but never reads is not read from - no busy loop, no
  // unbounded buffer), write while output is pending.
  // NOLINTNEXTLINE(readability-make-member-function-const): changes the epoll set it owns
  void update_events(Connection& c) {
    uint32_t mask = EPOLLRDHUP;
    if (c.out.size() < kOutputBacklogBytes && !c.close_after_flush) {
      mask |= EPOLLIN;
    }
    if (!c.out.empty()) {
      mask |= EPOLLOUT;
    }
    if (mask == c.events) {
      return;
    }
    epoll_event ev{};
    ev.events = mask;
    ev.data.fd = c.fd.get();
    (void)::epoll_ctl(epoll.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
    c.events = mask;
  }

  void drop(int fd) {
    (void)::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, fd, nullptr);
    auto it = connections.find(fd);
    if (it == connections.end()) {
      return;
    }
    auto count = connections_per_uid.find(it->second->peer.uid);
    if (count != connections_per_uid.end() && --count->second == 0) {
      connections_per_uid.erase(count);
    }
    connections.erase(it);  // closes it
  }

  static bool privileged(uint32_t uid) { return uid == 0 || uid == ::geteuid(); }

  bool peer_allowed(int fd, ucred& cred) const {
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      return false;
    }
    if (privileged(cred.uid)) {
      return true;
    }
    return group.has_value() && in_group(cred.uid, cred.gid, *group);
  }

  // Why a new connection of `uid` cannot be served now ("" = it can).
  std::string over_limit(uint32_t uid) const {
    if (connections.size() >= options.max_connections) {
      return std::to_string(connections.size()) + " connections are open (max_connections " +
             std::to_string(options.max_connections) + ")";
    }
    if (privileged(uid)) {
      return "";
    }
    const size_t reserved = std::min(options.root_reserved_connections, options.max_connections);
    if (connections.size() >= options.max_connections - reserved) {
      return "the last " + std::to_string(reserved) +
             " connection slots are kept for root (root_reserved_connections)";
    }
    const auto count = connections_per_uid.find(uid);
    if (count != connections_per_uid.end() && count->second >= options.max_connections_per_uid) {
      return "uid " + std::to_string(uid) + " already has " + std::to_string(count->second) +
             " connections (max_connections_per_uid " +
             std::to_string(options.max_connections_per_uid) + ")";
    }
    return "";
  }

  // The moment `c` is closed unless something happens first.
  Clock::time_point deadline(const Connection& c) const {
    if (c.out.empty() && !c.in.empty() && !c.close_after_flush) {
      return c.line_started + std::chrono::milliseconds(options.request_timeout_ms);
    }
    return c.last_activity + std::chrono::milliseconds(options.idle_timeout_ms);
  }

  // Closes every connection whose deadline passed, telling it why first
  // (best effort: a client that does not read misses it). Returns the
  // milliseconds until the next deadline (-1: none), for epoll_wait.
  int expire_connections() {
    const Clock::time_point now = Clock::now();
    std::optional<Clock::time_point> next;
    std::vector<int> expired;
    for (const auto& [fd, c] : connections) {
      const Clock::time_point due = deadline(*c);
      if (due <= now) {
        expired.push_back(fd);
      } else if (!next || due < *next) {
        next = due;
      }
    }
    for (const int fd : expired) {
      Connection& c = *connections.at(fd);
      std::string why;
      if (!c.out.empty()) {
        why = "answers not read within idle_timeout_ms " + std::to_string(options.idle_timeout_ms) +
              "; closing the connection";
      } else if (!c.in.empty() && !c.close_after_flush) {
        why = "request line not complete within request_timeout_ms " +
              std::to_string(options.request_timeout_ms) + "; closing the connection";
      } else {
        why = "connection idle for idle_timeout_ms " + std::to_string(options.idle_timeout_ms) +
              "; closing it";
      }
      spdlog::info("control socket: pid {} uid {}: {}", c.peer.pid, c.peer.uid, why);
      const std::string line = to_line(make_error_response(nullptr, ErrorCode::kBadRequest, why));
      (void)::send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      drop(fd);
    }
    if (!next) {
      return -1;
    }
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(*next - now).count();
    return static_cast<int>(std::clamp<int64_t>(left, 1, 60'000));
  }

  void accept_all() {
    for (;;) {
      UniqueFd fd(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!fd) {
        if (errno == EINTR) {
          continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          spdlog::warn("control socket: accept failed: {}",
                       std::error_code(errno, std::generic_category()).message());
        }
        return;
      }
      ucred cred{};
      if (!peer_allowed(fd.get(), cred)) {
        spdlog::warn("control socket: refused pid {} uid {} (not root, not in group '{}')",
                     cred.pid, cred.uid, options.socket_group);
        const std::string line = to_line(make_error_response(
            nullptr, ErrorCode::kPermissionDenied,
            "permission denied: uid " + std::to_string(cred.uid) +
                " is neither root nor a member of group '" + options.socket_group + "'"));
        (void)::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        continue;  // closed
      }
      if (const std::string why = over_limit(cred.uid); !why.empty()) {
        spdlog::warn("control socket: refused pid {} uid {}: {}", cred.pid, cred.uid, why);
        const std::string line = to_line(make_error_response(
            nullptr, ErrorCode::kBusy, "too many connections: " + why + "; try again later"));
        (void)::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        continue;  // closed
      }
      const int raw = fd.get();
      if (!add(raw, EPOLLIN | EPOLLRDHUP).ok()) {
        continue;
      }
      auto c = std::make_unique<Connection>();
      c->fd = std::move(fd);
      c->peer = Peer{cred.uid, cred.gid, cred.pid};
      c->last_activity = Clock::now();
      ++connections_per_uid[cred.uid];
      connections.emplace(raw, std::move(c));
    }
  }

  // Sends what is buffered; false if the connection is gone.
  bool flush(Connection& c) {
    while (!c.out.empty()) {
      const ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          update_events(c);
          return true;
        }
        return false;  // EPIPE, ECONNRESET: the client left
      }
      c.out.erase(0, static_cast<size_t>(n));
      c.last_activity = Clock::now();
    }
    update_events(c);
    return !c.close_after_flush;
  }

  // Answers complete lines while the output backlog allows.
  // NOLINTNEXTLINE(readability-make-member-function-const): the requests it runs change the service
  void process_lines(Connection& c) {
    while (!c.close_after_flush && c.out.size() < kOutputBacklogBytes) {
      const size_t newline = c.in.find('\n', c.scanned);
      if (newline == std::string::npos) {
        c.scanned = c.in.size();
        if (c.in.size() > options.max_line_bytes) {
          c.out += to_line(make_error_response(nullptr, ErrorCode::kTooLarge,
                                               "request line exceeds " +
                                                   std::to_string(options.max_line_bytes) +
                                                   " bytes; closing the connection"));
          c.close_after_flush = true;
          c.in.clear();
          c.scanned = 0;
        }
        return;
      }
      std::string_view line(c.in.data(), newline);
      if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
      }
      if (line.size() > options.max_line_bytes) {
        c.out += to_line(make_error_response(nullptr, ErrorCode::kTooLarge,
                                             "request line exceeds " +
                                                 std::to_string(options.max_line_bytes) +
                                                 " bytes; closing the connection"));
        c.close_after_flush = true;
        return;
      }
      if (line.find_first_not_of(" \t") != std::string_view::npos) {
        ParsedRequest parsed = parse_request(line);
        Json response;
        if (parsed.request && refusal) {
          response = make_error_response(parsed.request->id, *refusal);
        } else if (parsed.request) {
          parsed.request->peer = c.peer;
          response = handler(*parsed.request);
        } else {
          response = make_error_response(parsed.id, parsed.code, parsed.error->message());
        }
        c.out += to_line(response);
      }
      c.in.erase(0, newline + 1);
      c.scanned = 0;
      // The next line's deadline starts with its first byte (already here
      // if the client pipelined), the idle time with the answer.
      c.line_started = c.last_activity = Clock::now();
    }
  }

  void on_connection(int fd, uint32_t events) {
    auto it = connections.find(fd);
    if (it == connections.end()) {
      return;
    }
    Connection& c = *it->second;
    if ((events & EPOLLOUT) != 0U) {
      if (!flush(c)) {
        drop(fd);
        return;
      }
      process_lines(c);  // requests held back by the backlog
      if (!flush(c)) {
        drop(fd);
        return;
      }
    }
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0U) {
      bool eof = false;
      char buffer[65536];
      // Read only while the line can still be served; a too-long line is
      // cut off by process_lines.
      for (int rounds = 0; rounds < 64 && !c.close_after_flush; ++rounds) {
        const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
        if (n < 0) {
          if (errno == EINTR) {
            continue;
          }
          eof = errno != EAGAIN && errno != EWOULDBLOCK;
          break;
        }
        if (n == 0) {
          eof = true;
          break;
        }
        if (c.in.empty()) {
          c.line_started = Clock::now();
        }
        c.in.append(buffer, static_cast<size_t>(n));
        process_lines(c);
        if (c.out.size() >= kOutputBacklogBytes) {
          break;
        }
      }
      process_lines(c);
      if (!flush(c) || eof) {
        // On EOF, answers already produced were attempted; a half-closed
        // client that still reads got them.
        drop(fd);
        return;
      }
    }
  }

  Status setup_socket() {
    UBLKVOL_TRY(make_parent_dir(options.socket_path));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (options.socket_path.size() >= sizeof(address.sun_path)) {
      return Error(EINVAL, "socket path " + options.socket_path + " is too long");
    }
    std::memcpy(address.sun_path, options.socket_path.data(), options.socket_path.size());
    // A live daemon answers a connect; a stale file from a dead one does not.
    {
      UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (probe && ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address),
                             sizeof(address)) == 0) {
        return Error(EADDRINUSE, "another ublk-volumed is listening on " + options.socket_path);
      }
    }
    struct stat st {};
    if (::lstat(options.socket_path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return Error(EEXIST, options.socket_path + " exists and is not a socket");
      }
      ::unlink(options.socket_path.c_str());
    }
    listener.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listener) {
      return errno_error("cannot create the control socket");
    }
    // Bind with a restrictive umask so the socket is never briefly open to all.
    const mode_t old_mask = ::umask(0177);
    const int bound =
        ::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address));
    const int bind_errno = errno;
    ::umask(old_mask);
    if (bound != 0) {
      return Error(bind_errno, "cannot bind the control socket " + options.socket_path + ": " +
                                   std::error_code(bind_errno, std::generic_category()).message());
    }
    socket_file_ours = true;
    gid_t socket_gid = ::getegid();
    group_lookup();
    if (group) {
      socket_gid = *group;
    }
    if (::chown(options.socket_path.c_str(), ::geteuid(), socket_gid) != 0) {
      spdlog::warn("cannot give {} to group {}: {}", options.socket_path, socket_gid,
                   std::error_code(errno, std::generic_category()).message());
    }
    if (::chmod(options.socket_path.c_str(), 0660) != 0) {
      return errno_error("cannot chmod 0660 " + options.socket_path);
    }
    if (::listen(listener.get(), 64) != 0) {
      return errno_error("cannot listen on " + options.socket_path);
    }
    return add(listener.get(), EPOLLIN);
  }

  void group_lookup() {
    group.reset();
    if (options.socket_group.empty()) {
      return;
    }
    ::group gr{};
    ::group* found = nullptr;
    std::vector<char> buffer(16384);
    if (::getgrnam_r(options.socket_group.c_str(), &gr, buffer.data(), buffer.size(), &found) ==
            0 &&
        found != nullptr) {
      group = gr.gr_gid;
    } else {
      spdlog::info("group '{}' does not exist: only root (and uid {}) may use {}",
                   options.socket_group, ::geteuid(), options.socket_path);
    }
  }

  void close_listener() {
    if (listener) {
      (void)::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, listener.get(), nullptr);
      listener.reset();
    }
    if (socket_file_ours) {
      ::unlink(options.socket_path.c_str());
      socket_file_ours = false;
    }
  }
};

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ControlServer::~ControlServer() {
  impl_->close_listener();
  impl_->connections.clear();
}

Result<std::unique_ptr<ControlServer>> ControlServer::listen(const ControlServerOptions& options,
                                                             Handler handler) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->handler = std::move(handler);
  impl->epoll.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!impl->epoll) {
    return errno_error("epoll_create1");
  }
  Status ready = impl->setup_socket();
  if (!ready.ok()) {
    impl->close_listener();
    return ready.error();
  }
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(impl)));
}

Status ControlServer::watch(int fd, std::function<void()> on_readable) {
  UBLKVOL_TRY(impl_->add(fd, EPOLLIN));
  impl_->watched[fd] = std::move(on_readable);
  return ok_status();
}

Status ControlServer::run() {
  Impl& s = *impl_;
  std::array<epoll_event, 64> events{};
  while (!s.stopping) {
    const int timeout_ms = s.expire_connections();
    const int n =
        ::epoll_wait(s.epoll.get(), events.data(), static_cast<int>(events.size()), timeout_ms);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno_error("epoll_wait");
    }
    // Watched fds (the signalfd, timers) before connections: a stop signal
    // that arrived together with a request is seen first, and the request
    // is refused by refuse_pending() instead of being run as the daemon
    // shuts down.
    for (int i = 0; i < n && !s.stopping; ++i) {
      const int fd = events[static_cast<size_t>(i)].data.fd;
      if (auto w = s.watched.find(fd); w != s.watched.end()) {
        w->second();
      }
    }
    for (int i = 0; i < n && !s.stopping; ++i) {
      const int fd = events[static_cast<size_t>(i)].data.fd;
      if (s.listener && fd == s.listener.get()) {
        s.accept_all();
      } else if (!s.watched.contains(fd)) {
        s.on_connection(fd, events[static_cast<size_t>(i)].events);
      }
    }
  }
  return ok_status();
}

void ControlServer::stop() { impl_->stopping = true; }

void ControlServer::refuse_pending(const Error& why) {
  Impl& s = *impl_;
  s.refusal = why;
  std::vector<int> fds;
  fds.reserve(s.connections.size());
  for (const auto& [fd, connection] : s.connections) {
    fds.push_back(fd);
  }
  // Reads what each client already sent (the sockets are non-blocking) and
  // answers its complete lines; on_connection may drop a connection.
  for (const int fd : fds) {
    s.on_connection(fd, EPOLLIN);
  }
}

void ControlServer::close_listener() { impl_->close_listener(); }

}  // namespace ublkvol::daemon
