// NbdDevice: a BlockDevice on a remote NBD export, through libnbd's
// asynchronous API (docs/nbd.md).
//
// URIs follow libnbd's URI rules (nbd_connect_uri(3)):
//   nbd://HOST[:PORT][/EXPORT]          plain TCP
//   nbds://HOST[:PORT][/EXPORT]?tls-psk-file=PATH   TLS required (PSK or X.509)
//   nbd+unix:///EXPORT?socket=PATH      Unix socket (nbds+unix: with TLS)
// Local-file query parameters (tls-psk-file) are allowed only for nbds
// URIs; vsock and ssh transports are refused.
//
// Poll model: the same as FileDevice. The device is owned by one thread.
// submit() queues the request in an intrusive FIFO (no allocation) and
// hands as much as fits to libnbd, which writes the command to the socket
// at once if it can (the data goes straight from the caller's buffer; reads
// land straight in it). poll() waits on the sockets (poll(2)), lets libnbd
// read replies (nbd_aio_notify_read/write), then runs the callbacks of
// finished requests. libnbd's own completion callbacks only park the result,
// so no user callback runs inside libnbd.
//
// Connections: `connections` sockets (round-robin per command) when the
// server advertises multi-conn (its flushes then cover writes sent on every
// connection), one otherwise. Each connection carries at most
// `queue_depth` commands; more requests wait in the device's FIFO.
//
// Mapping of operations (capabilities checked at open):
//   READ / WRITE   NBD_CMD_READ / NBD_CMD_WRITE, split into pieces of at
//                  most max_request_bytes (server maximum, capped at 32 MiB);
//   WRITE + fua    NBD_CMD_FLAG_FUA if the server offers it, else the write
//                  followed by NBD_CMD_FLUSH once every piece completed;
//   FLUSH          one NBD_CMD_FLUSH (multi-conn means a flush on one
//                  connection covers writes completed on all of them);
//                  completes successfully at once on a server without a
//                  write cache (no SEND_FLUSH flag);
//   DISCARD        as WRITE_ZEROES (discard_as_zero, the default: replicas
//                  must agree), or NBD_CMD_TRIM, a hint that succeeds
//                  without effect if the server cannot trim;
//   WRITE_ZEROES   NBD_CMD_WRITE_ZEROES, else writes of a zeroed buffer.
//
// Failures: a connection that dies (reset, EOF, protocol error) fails its
// in-flight commands with the libnbd error (ENOTCONN/ECONNRESET/EIO...) at
// the next poll(), and every request after that on the device fails at once
// with -ENOTCONN while no connection is left: the engine's deadline and
// error handling take it from there. Server errors map to their errno.
// last_error() names the URI and what libnbd said.
//
// Buffers of a replica the engine drops: the engine hands a request's
// buffer back to its caller when it gives up on this device (a missed
// deadline, or any failure that takes the replica out while other commands
// are still here). From then on no libnbd command may read from it (unsent
// bytes of a write) or write into it (a late read reply). So the device
// cuts itself first: on a command older than `command_timeout_ms` (set
// below the engine's deadline), on a failed non-read command, or on a
// connection that died, every connection is closed in libnbd (nbd_close:
// libnbd forgets its commands and their buffers) and their commands fail
// with -ETIMEDOUT / -EIO / -ENOTCONN before any of those failures is
// reported. The socket itself is kept (a dup) and half-closed: the server
// never sees the rest of a partly sent command, gets EOF after the
// complete ones, and its remaining replies are read into a scratch buffer
// and dropped until it closes the connection (draining()), so a keeper can
// wait until the server is done with the old connection before resyncing.
// The normal path stays copy-free: libnbd works on the callers' buffers.
//
// Allocation: the command slots are allocated at open. libnbd itself
// allocates a small command record per NBD command (its API has no way to
// avoid that): one allocation per I/O, measured, none of them ours
// (nbd_client_device_alloc_test; docs/nbd.md).
#pragma once

#include <poll.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/block_device.h"
#include "ublkvol/nbd/latency_histogram.h"

struct nbd_handle;

namespace ublkvol::nbd {

struct NbdDeviceOptions {
  // Most connections to open when the server offers multi-conn.
  unsigned connections = 4;
  // NBD commands in flight per connection.
  unsigned queue_depth = 64;
  // Largest piece of a read/write sent as one command (0: the server's
  // maximum block size, at most 32 MiB). Rounded down to 4 KiB.
  uint64_t max_request_bytes = 0;
  // Refuse (at open) an export the server offers read-only unless set.
  bool read_only = false;
  // DISCARD as NBD_CMD_WRITE_ZEROES (without NO_HOLE, so the server may
  // still deallocate): the range then reads as zeros on every server, and
  // replicas on different servers agree. NBD TRIM leaves the content
  // unspecified (qemu-nbd ignores it unless --discard=unmap), which would
  // let a remote replica differ from local ones after a discard. Off: TRIM,
  // a pure hint.
  bool discard_as_zero = true;
  // Bound on connecting and negotiating one connection.
  unsigned connect_timeout_ms = 10000;
  // A request not answered within this time cuts every connection (see
  // "Buffers of a replica the engine drops" above); 0: never. For a
  // replica, below the engine's deadline (RemoteReplica uses half of it).
  unsigned command_timeout_ms = 0;
};

// True if `text` looks like an NBD URI (nbd:, nbds:, nbd+unix:, nbds+unix:),
// so callers can tell a remote replica from a local path.
bool is_nbd_uri(std::string_view text);

class NbdDevice final : public dbs::BlockDevice {
 public:
  static constexpr uint32_t kBlockSize = 4096;

  // Connects (synchronously; a control-path call) and negotiates. Errors
  // name the URI and the problem, e.g. "nbd://h:10809/x: cannot connect:
  // Connection refused" or "...: export size 1000 is smaller than 4096".
  static Result<std::unique_ptr<NbdDevice>> open(const std::string& uri,
                                                 const NbdDeviceOptions& options = {});

  ~NbdDevice() override;
  NbdDevice(const NbdDevice&) = delete;
  NbdDevice& operator=(const NbdDevice&) = delete;

  // BlockDevice
  [[nodiscard]] std::string_view name() const override { return uri_; }
  [[nodiscard]] uint64_t size_bytes() const override { return size_bytes_; }
  [[nodiscard]] uint32_t block_size() const override { return kBlockSize; }
  void submit(dbs::IoRequest& request) override;
  void kick() override;
  unsigned poll(bool wait) override;
  [[nodiscard]] unsigned in_flight() const override { return in_flight_; }
  // An epoll fd over the sockets (readable when a reply or a local
  // completion is waiting); created on first call.
  [[nodiscard]] int completion_fd() const override;

  [[nodiscard]] const std::string& uri() const { return uri_; }
  // Cuts every connection (see "Buffers of a replica the engine drops"):
  // commands in flight fail with -ENOTCONN at the next poll(), later
  // requests at once; the cut sockets are drained until the server closes
  // them (draining()). For a replica the engine has dropped.
  void disconnect();
  // Connections opened / still alive.
  [[nodiscard]] unsigned connections() const { return static_cast<unsigned>(conns_.size()); }
  [[nodiscard]] unsigned live_connections() const;
  // Cut connections whose server has not closed them yet (its replies are
  // read and dropped until it does).
  [[nodiscard]] unsigned draining() const;
  // Reads (and drops) what the servers of cut connections sent, closing
  // those at EOF. poll() does it too, but the owner polls a device only
  // while requests are in flight: a keeper waiting for draining() == 0
  // calls this (on the owning thread).
  void poll_draining();
  // Stops reading the cut connections and closes them (draining() == 0).
  void abandon_draining();
  [[nodiscard]] bool multi_conn() const { return multi_conn_; }
  [[nodiscard]] uint64_t max_request_bytes() const { return max_request_bytes_; }
  // What the server offers.
  struct Capabilities {
    bool flush = false;
    bool fua = false;
    bool trim = false;
    bool zero = false;
  };
  [[nodiscard]] const Capabilities& capabilities() const { return caps_; }
  // The last connection or command failure ("" if none), naming the URI.
  [[nodiscard]] const std::string& last_error() const { return last_error_; }
  // Completed requests' latency (submit to callback).
  [[nodiscard]] const LatencyHistogram& latency() const { return latency_; }

  struct Counters {
    uint64_t commands = 0;        // NBD commands issued
    uint64_t split_requests = 0;  // requests sent as several commands
    uint64_t fua_emulated = 0;    // FUA writes completed by write + flush
    uint64_t failed = 0;          // requests completed with an error
    uint64_t cuts = 0;            // times every connection was cut (see above)
  };
  [[nodiscard]] const Counters& counters() const { return counters_; }

  struct Connection;
  struct Command;
  struct Tracker;

 private:
  NbdDevice(std::string uri, const NbdDeviceOptions& options);
  Status connect_all();

  // Hands waiting requests to libnbd while command slots are free.
  void issue();
  // Issues the next piece of the head request; false when it must wait
  // for a free command slot.
  bool issue_piece(dbs::IoRequest& request, Tracker& tracker);
  // Sends one NBD command for `tracker` on `conn`; false (and the tracker
  // records the error) if libnbd refused it.
  bool send(Connection& conn, Tracker& tracker, dbs::IoOp op, uint64_t offset, uint64_t length,
            std::byte* buffer, bool fua);
  Connection* next_connection();
  // Runs the socket side: poll(2) with `timeout_ms`, notify libnbd.
  void pump(int timeout_ms);
  void mark_dead(Connection& conn, const char* what);
  // Retires commands libnbd finished; returns callbacks run.
  unsigned complete_done();
  void finish_piece(Command& command);
  // Completes `tracker`'s request (or first sends the flush of an emulated
  // FUA write); true if the request's callback ran.
  bool finish_request(Tracker& tracker);
  void fail_locally(dbs::IoRequest& request, int result);
  // Closes every connection in libnbd (keeping a half-closed dup of each
  // live socket to drain) and fails the commands libnbd had not finished
  // with `-err`, before any of them is reported.
  void cut_all(int err, const std::string& why);
  // Cuts if a command is older than command_timeout_ms (checked at most
  // every quarter of it).
  void check_timeouts();
  void drain(Connection& conn);
  void arm_timer();
  void update_interest() const;
  void signal_local() const;

  std::string uri_;
  NbdDeviceOptions options_;
  uint64_t size_bytes_ = 0;
  uint64_t max_request_bytes_ = 0;
  bool multi_conn_ = false;
  Capabilities caps_;

  std::vector<std::unique_ptr<Connection>> conns_;
  unsigned next_conn_ = 0;
  std::vector<Command> commands_;
  std::vector<Tracker> trackers_;
  std::vector<Command*> free_commands_;
  std::vector<Tracker*> free_trackers_;
  // Buffer of zeros for WRITE_ZEROES on servers without it (allocated only
  // then, at open).
  std::byte* zero_buffer_ = nullptr;

  unsigned in_flight_ = 0;
  // Requests not yet (fully) handed to libnbd; the head may be partly sent.
  dbs::IoRequest* waiting_head_ = nullptr;
  dbs::IoRequest* waiting_tail_ = nullptr;
  Tracker* head_tracker_ = nullptr;  // tracker of the partly sent head
  // Finished requests whose callbacks are pending (device_result holds the
  // result): invalid ones and those failed without a connection.
  dbs::IoRequest* local_head_ = nullptr;
  dbs::IoRequest* local_tail_ = nullptr;
  // Commands libnbd reported finished, callbacks pending.
  Command* done_head_ = nullptr;
  Command* done_tail_ = nullptr;

  mutable int epoll_fd_ = -1;
  mutable int event_fd_ = -1;
  std::vector<pollfd> pollfds_;      // pump()'s poll set, sized at open
  std::vector<Connection*> polled_;  // connection of each pollfds_ entry
  uint64_t zero_buffer_bytes_ = 0;

  // Timeout checks: a one-shot timerfd in the epoll set (when
  // completion_fd() is used) wakes the owner for the next check.
  uint64_t check_period_ns_ = 0;
  uint64_t next_check_ns_ = 0;
  mutable int timer_fd_ = -1;
  mutable bool timer_armed_ = false;
  // A non-read command failed (set in libnbd's callback, where its handle
  // cannot be closed): cut before reporting it.
  bool cut_pending_ = false;
  std::string cut_cause_;
  // Replies read from cut connections land here and are dropped.
  std::vector<std::byte> drain_scratch_;

  std::string last_error_;
  LatencyHistogram latency_;
  Counters counters_;

  static int on_command_done(void* user_data, int* error);
};

}  // namespace ublkvol::nbd
