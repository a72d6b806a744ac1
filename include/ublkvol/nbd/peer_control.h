// The peer control channel of an NBD export (docs/nbd.md "Snapshots of a
// remote replica"): the daemon's own control protocol (newline-delimited
// JSON, docs/control-protocol.md) over TCP with TLS-PSK (GnuTLS), the same
// key file as the export. It exists so that a daemon whose volume has a
// replica on this export can take, delete and list snapshots of the
// exported volume at the moment its own volume snapshots - no new wire
// protocol, no second secret.
//
// Where: the export's host and its port + 1 (an export on HOST:10809 has
// its channel on HOST:10810). A client derives the address from the
// replica's NBD URI (peer_control_target), so nothing more is configured on
// either side.
//
// Transport rules (both sides):
//   - TLS 1.2/1.3 with a pre-shared key only (the PSK file: "user:hexkey"
//     lines, nbdkit's format); a client without the key, or one that speaks
//     plain text, fails the handshake and is closed: nothing is read;
//   - one request line and one response line per exchange, lines at most
//     1 MiB; every step (connect, handshake, send, receive) has a deadline;
//   - the listener serves up to `max_connections` connections at once, each
//     on its own thread (a slow or idle client never holds up another
//     peer's call); more are closed at once (counted as refused); a
//     connection is closed after `idle_timeout` without a request.
// What a request may do is the handler's decision (the daemon's: only
// snapshot.create / delete / list on the exported volume; exports.cpp).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "ublkvol/common/result.h"

namespace ublkvol::nbd {

// "HOST:PORT+1" for an export listening on "HOST:PORT" ("[V6]:PORT" too).
// EINVAL for a unix socket or an address without a port; port 65535 has no
// successor (EINVAL). Port 0 stays 0 (any free port).
Result<std::string> peer_control_listen_address(const std::string& export_listen);

// Where to reach the control channel of the export an NBD URI names.
struct PeerControlTarget {
  std::string host;
  uint16_t port = 0;                          // the export's port + 1
  std::string export_name;                    // the URI's path without '/' (the peer's volume)
  std::string username;                       // URI user, tls-username, else the login name
  std::string psk_file;                       // tls-psk-file of the URI
  [[nodiscard]] std::string address() const;  // "HOST:PORT"
};
// Only nbds://[USER@]HOST[:PORT]/EXPORT?tls-psk-file=PATH URIs have one
// (ENOTSUP for others, naming the URI and what is missing).
Result<PeerControlTarget> peer_control_target(const std::string& uri);

// Sends `line` (without '\n') to the target's channel and returns the
// response line. Everything within `timeout` from the start. Errors name the
// channel's address: refused connection, TLS failure (wrong key), timeout.
Result<std::string> peer_control_exchange(const PeerControlTarget& target, std::string_view line,
                                          std::chrono::milliseconds timeout);

struct PeerControlListenerOptions {
  // "HOST:PORT" (port 0: a free one; address() tells which).
  std::string listen;
  std::string psk_file;
  std::chrono::milliseconds handshake_timeout{5000};
  std::chrono::milliseconds idle_timeout{10000};
  // Connections served at once (the export's connection limit in the daemon).
  unsigned max_connections = 16;
};

struct PeerControlStats {
  uint64_t accepted = 0;
  uint64_t tls_failures = 0;  // handshakes that failed: wrong key, plain text
  uint64_t requests = 0;
  uint64_t refused = 0;  // over max_connections
};

class PeerControlListener {
 public:
  // Answers one request line (no '\n'); `user` is the PSK username the
  // client proved. Runs on the connection's thread: concurrently for
  // several clients.
  using Handler = std::function<std::string(std::string_view line, const std::string& user)>;

  // Checks the PSK file (readable, at least one valid line), binds, starts
  // the thread. Errors name the address or file.
  static Result<std::unique_ptr<PeerControlListener>> start(PeerControlListenerOptions options,
                                                            Handler handler);
  ~PeerControlListener();  // stop()
  PeerControlListener(const PeerControlListener&) = delete;
  PeerControlListener& operator=(const PeerControlListener&) = delete;

  // Closes the listening socket and the current connection, joins the thread.
  void stop();
  [[nodiscard]] const std::string& address() const { return address_; }
  [[nodiscard]] PeerControlStats stats() const;

  struct Impl;

 private:
  explicit PeerControlListener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::string address_;
};

}  // namespace ublkvol::nbd
