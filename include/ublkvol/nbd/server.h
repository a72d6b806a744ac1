// NbdExport: one volume served over the standard NBD protocol (docs/nbd-export.md).
//
// The export listens on a TCP address or a unix socket and serves any number
// of clients (up to max_connections) from one event-loop thread (epoll) that
// owns one VolumeQueue of the volume: every client's I/O goes into the volume
// through that queue, asynchronously, straight from/to a fixed per-connection
// buffer pool (no allocation per request, no copy beyond the socket's).
//
// Protocol (doc/proto.md of NetworkBlockDevice/nbd): fixed newstyle handshake;
// options EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO, STRUCTURED_REPLY,
// LIST/SET_META_CONTEXT (base:allocation); commands READ, WRITE, FLUSH,
// TRIM, WRITE_ZEROES (FUA, NO_HOLE), BLOCK_STATUS, DISC. Every client field is
// checked: a bad request gets the spec's error (EINVAL, ENOSPC, EOVERFLOW,
// EPERM), a violation of the framing (bad magic, a huge option) closes that
// connection only.
//
// Multi-conn is advertised: a FLUSH of the volume makes every write completed
// before it durable whichever connection sent it, because all connections
// share the one queue and an engine FLUSH flushes every in-sync replica's
// whole store (DESIGN.md guarantee 1), not a per-connection cache.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/volume.h"

namespace ublkvol::nbd {

// Byte ranges (offset, length), sorted, that hold data within the asked range;
// everything else reads as zeros (reported as hole + zero by BLOCK_STATUS).
using MappedRanges = std::vector<std::pair<uint64_t, uint64_t>>;
// Asked on the export's thread for each BLOCK_STATUS (a control-path cost:
// it may allocate and block briefly). Null: the whole volume is data.
using AllocationQuery = std::function<Result<MappedRanges>(uint64_t offset, uint64_t length)>;

// TLS (GnuTLS). Either a PSK file - nbdkit's format, one "username:hexkey"
// per line, the key 32..256 hex digits - or X.509: the server's certificate
// and key (PEM) and the CA (PEM) every client certificate must chain to (a
// client without a valid certificate is refused).
struct TlsOptions {
  std::string psk_file;
  std::string cert_file;
  std::string key_file;
  std::string ca_file;
  [[nodiscard]] bool enabled() const {
    return !psk_file.empty() || !cert_file.empty() || !key_file.empty() || !ca_file.empty();
  }
};

struct ExportOptions {
  // The export name clients ask for; "" (the default export) is accepted too.
  std::string name;
  // "HOST:PORT" (IPv4 or name), "[IPV6]:PORT", or "unix:/path". Port 0 picks
  // a free port (address() tells which).
  std::string listen;
  // Clients served at once; more are accepted and closed at once (logged).
  unsigned max_connections = 16;
  // The VolumeQueue index the export opens (one no other user opens).
  unsigned queue_index = 0;
  // Requests each connection can have in flight; each holds a buffer of the
  // volume's max_io_bytes (mapped lazily: memory is used as requests need it).
  unsigned requests_per_connection = 32;
  bool read_only = false;
  // With TLS set, every client must negotiate NBD_OPT_STARTTLS before
  // anything else (NBD_REP_ERR_TLS_REQD otherwise), on TCP and unix sockets.
  TlsOptions tls;
  // Serve plain TCP. TCP without TLS is refused unless this is set (and it
  // cannot be combined with `tls`). Unix sockets may be plain.
  bool insecure_plain = false;
  AllocationQuery allocation;
};

struct ExportStats {
  unsigned connections = 0;      // clients connected now
  uint64_t accepted = 0;         // clients accepted since start
  uint64_t refused = 0;          // closed at once: connection limit
  uint64_t protocol_errors = 0;  // connections closed for a framing violation
  uint64_t requests = 0;         // transmission requests answered
  uint64_t tls_failures = 0;     // clients refused: TLS handshake or identity failed
};

class NbdExport {
 public:
  // Binds the listening socket (errors: EADDRINUSE, EINVAL for a bad address
  // naming it), starts the export's thread and opens the volume queue there.
  // `volume` must outlive the export.
  static Result<std::unique_ptr<NbdExport>> start(engine::Volume& volume, ExportOptions options);
  // stop().
  ~NbdExport();
  NbdExport(const NbdExport&) = delete;
  NbdExport& operator=(const NbdExport&) = delete;

  // Stops listening at once, finishes the I/O in flight, closes every
  // connection and the volume queue, joins the thread. Idempotent.
  void stop();
  // The bound address: "HOST:PORT" with the real port, or "unix:/path".
  [[nodiscard]] const std::string& address() const;
  [[nodiscard]] const ExportOptions& options() const;
  [[nodiscard]] ExportStats stats() const;

  class Loop;

 private:
  explicit NbdExport(std::unique_ptr<Loop> loop);
  std::unique_ptr<Loop> loop_;
};

}  // namespace ublkvol::nbd
