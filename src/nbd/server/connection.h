// One client connection of an NbdExport (private to src/nbd/server).
//
//   transport.cpp     the byte stream under a connection: a plain socket
//   listener.cpp      parsing ADDR:PORT / unix:PATH, binding, accepting
//   handshake.cpp     greeting and option negotiation (phase kOption*)
//   transmission.cpp  requests -> VolumeIo -> replies (phase kRequest*)
//   loop.cpp          the epoll loop that drives connections and the queue
//
// Everything here runs on the export's thread: no locks.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/engine/volume.h"
#include "ublkvol/nbd/server.h"
#include "ublkvol/nbd/server_protocol.h"

namespace ublkvol::nbd {

// The byte stream of a connection (plain socket; TLS session after STARTTLS).
// Non-blocking: recv/sendv return bytes moved, 0 for end of stream (recv),
// or a negative errno (-EAGAIN: try again when the socket is ready).
class Transport {
 public:
  virtual ~Transport() = default;
  virtual ssize_t recv(std::byte* buf, size_t len) = 0;
  virtual ssize_t sendv(const iovec* iov, int count) = 0;
  // Bytes already received and decrypted that epoll cannot see.
  [[nodiscard]] virtual bool has_buffered_input() const { return false; }
};

std::unique_ptr<Transport> make_socket_transport(int fd);

class Connection;
class TlsTransport;

// One request in flight: its VolumeIo, its buffer (max_io_bytes of the
// connection's pool) and, once done, its reply.
struct Slot {
  Connection* conn = nullptr;
  uint32_t index = 0;
  std::byte* buffer = nullptr;
  engine::VolumeIo io;
  // The request.
  uint64_t cookie = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint16_t type = 0;
  uint16_t flags = 0;
  // Commands split into volume I/Os of at most max_io_bytes (TRIM,
  // WRITE_ZEROES): the next byte to submit and the end.
  uint64_t chain_next = 0;
  uint64_t chain_end = 0;
  // The reply: header bytes, then `data_len` bytes at `data`.
  std::array<std::byte, 32> header{};
  uint32_t header_len = 0;
  const std::byte* data = nullptr;
  uint32_t data_len = 0;
  uint32_t sent = 0;
  // A refused WRITE: the error to answer once its payload is skipped.
  uint32_t error = 0;
  int32_t next_reply = -1;  // reply FIFO link
};

enum class Phase : uint8_t {
  kClientFlags,     // waiting for the client's 32-bit flags
  kOptionHeader,    // IHAVEOPT, option, length
  kOptionData,      // the option's data
  kTlsHandshake,    // after NBD_OPT_STARTTLS: the ACK goes out, then the TLS handshake
  kRequestHeader,   // 28-byte request
  kRequestPayload,  // a WRITE's data into its slot
  kSkipPayload,     // a refused WRITE's data, read and dropped
  kClosing,         // no more input: finish in-flight requests and replies, then close
};

class Connection {
 public:
  Connection(NbdExport::Loop& loop, UniqueFd fd, bool tcp);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  [[nodiscard]] int fd() const { return fd_.get(); }
  // Queues the greeting.
  void start();
  // Reads and handles what the socket has (bounded per call, for fairness).
  void on_readable();
  // Writes queued output; returns false once the connection is done (closed
  // by either side with nothing left in flight).
  bool flush();
  // Stop reading; close once in-flight requests and replies are done.
  void close_gracefully();
  // The framing is broken (or the peer went away): drop queued output, close
  // as soon as nothing of ours is in flight in the volume.
  void fail(const std::string& why, bool protocol_error = false);
  // The epoll interest the connection needs now.
  [[nodiscard]] uint32_t wanted_events() const;
  [[nodiscard]] bool finished() const;
  [[nodiscard]] bool has_buffered_input() const;
  uint32_t registered_events = 0;

  // transmission.cpp: a volume I/O of `slot` completed.
  static void on_volume_complete(engine::VolumeIo& io, int result);

 private:
  // handshake.cpp
  void handle_client_flags();
  void handle_option();
  void option_reply(uint32_t reply, const std::byte* data, size_t len);
  void option_error(uint32_t reply, const std::string& message);
  void handle_export_name();
  void handle_info_go(bool go);
  void handle_meta_context(bool set);
  void enter_transmission();
  void handle_starttls();
  void drive_tls();
  [[nodiscard]] uint16_t transmission_flags() const;
  [[nodiscard]] bool name_matches(const std::string& name) const;
  // transmission.cpp
  bool take_slot_for_header();
  void handle_request_header();
  void start_request(Slot& s);
  void submit_next_chunk(Slot& s);
  void reply_error(Slot& s, uint32_t error);
  void reply_done(Slot& s);
  void reply_read(Slot& s);
  void reply_block_status(Slot& s);
  void queue_reply(Slot& s);
  void release_slot(Slot& s);
  [[nodiscard]] uint32_t check_request(const Slot& s) const;

  void expect(Phase phase, std::byte* buf, size_t len);
  void ctl_append(const std::byte* data, size_t len);

  NbdExport::Loop& loop_;
  UniqueFd fd_;
  bool tcp_;
  std::unique_ptr<Transport> transport_;
  // The TLS session while its handshake runs (transport_ afterwards).
  std::unique_ptr<TlsTransport> tls_;
  bool tls_wants_write_ = false;
  Phase phase_ = Phase::kClientFlags;
  // Current read target.
  std::byte* rd_ptr_ = nullptr;
  size_t rd_want_ = 0;
  size_t rd_got_ = 0;
  uint64_t skip_left_ = 0;
  std::array<std::byte, proto::kRequestBytes> small_{};
  // Handshake.
  uint32_t option_ = 0;
  std::vector<std::byte> option_data_;
  std::vector<std::byte> ctl_out_;
  size_t ctl_sent_ = 0;
  bool no_zeroes_ = false;
  bool structured_ = false;
  bool base_allocation_ = false;
  bool close_after_output_ = false;
  bool failed_ = false;
  bool tls_active_ = false;
  // Transmission: the slot pool (one mapping), free list, reply FIFO.
  void* pool_ = nullptr;
  size_t pool_bytes_ = 0;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  Slot* reading_ = nullptr;
  int32_t reply_head_ = -1;
  int32_t reply_tail_ = -1;
  unsigned busy_ = 0;  // slots taken (in the volume or replying)
};

}  // namespace ublkvol::nbd
