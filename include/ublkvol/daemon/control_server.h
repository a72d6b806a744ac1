// ControlServer: the daemon's control socket and event loop (epoll, one
// thread). docs/control-protocol.md "Transport" is what it implements:
//
//   - a Unix stream socket, mode 0660, group `socket_group` if it exists;
//     a stale socket file from a dead daemon is replaced, a live one refused;
//   - peers are checked with SO_PEERCRED (root, the daemon's own uid, or a
//     member of the group); others get one permission_denied and are closed;
//     the peer's uid/gid/pid go into every Request it sends (Request::peer);
//   - limits, so that no group member can lock anyone out: at most
//     `max_connections_per_uid` connections per non-root uid, and the last
//     `root_reserved_connections` of `max_connections` only for root (and
//     the daemon's own uid); a refused connection gets one `busy` line and
//     is closed;
//   - deadlines: a request line must be complete `request_timeout_ms` after
//     its first byte arrived (one deadline per line, so dribbling a byte a
//     second does not extend it), a connection with nothing in flight is
//     closed after `idle_timeout_ms`, and one whose client does not read its
//     answers after `idle_timeout_ms` without progress; each gets one error
//     line (id null) saying why before it is closed;
//   - newline-delimited requests, at most kMaxLineBytes each; a longer line
//     gets too_large and the connection is closed; responses go out in
//     order through a per-connection output buffer (non-blocking writes, so
//     a client that does not read never blocks the daemon; while its output
//     backlog is large, its further requests wait);
//   - nothing a client does (garbage, disconnects mid-line or mid-response,
//     thousands of connections) ends the loop: at most `max_connections`
//     are served, further ones are accepted, told `busy` and closed.
//
// Other event sources (signalfd, timers, device fds) join through watch().
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "ublkvol/common/result.h"
#include "ublkvol/daemon/protocol.h"

namespace ublkvol::daemon {

struct ControlServerOptions {
  std::string socket_path = kDefaultSocketPath;
  // Group allowed besides root (ignored, with a log line, if it does not exist).
  std::string socket_group = "ublk-volume";
  size_t max_line_bytes = kMaxLineBytes;
  size_t max_connections = 256;
  // Of max_connections, this many are kept for root (and the daemon's uid).
  size_t root_reserved_connections = 8;
  // Connections one non-root uid may hold at once.
  size_t max_connections_per_uid = 32;
  // A started request line must be complete within this time.
  uint64_t request_timeout_ms = 10'000;
  // A connection without a partial request or pending output is closed after
  // this long (also one whose output makes no progress this long).
  uint64_t idle_timeout_ms = 300'000;
};

class ControlServer {
 public:
  // Answers one parsed request with a full response object.
  using Handler = std::function<Json(const Request&)>;

  static Result<std::unique_ptr<ControlServer>> listen(const ControlServerOptions& options,
                                                       Handler handler);
  // Closes every connection and removes the socket file.
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Calls `on_readable` from the loop whenever `fd` is readable.
  Status watch(int fd, std::function<void()> on_readable);

  // Runs the loop until stop() is called (from a callback or handler).
  Status run();
  void stop();
  // Stops accepting connections and removes the socket file (shutdown).
  void close_listener();
  // After run() returned: answers every complete request already received
  // on an open connection with `why` (not running it), so a client whose
  // request met the shutdown learns that (`unavailable` for ESHUTDOWN)
  // instead of seeing its connection close.
  void refuse_pending(const Error& why);

  struct Impl;

 private:
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::daemon
