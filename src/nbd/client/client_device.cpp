// NbdDevice: BlockDevice over libnbd's asynchronous API (client_device.h).
// One file of ~920 lines: connect, submit, poll, the command timeout and the
// cut-and-drain of dead connections all act on the same connection and
// command records; the cut logic is the candidate to move out next.
#include "ublkvol/nbd/client_device.h"

#include <fcntl.h>
#include <libnbd.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <system_error>

#include "../../dbs/device/request_queue.h"

namespace ublkvol::nbd {

namespace {

// libnbd refuses larger payloads; 32 MiB keeps one command's socket time short.
constexpr uint64_t kDefaultMaxRequest = uint64_t{32} << 20;
// TRIM / WRITE_ZEROES carry a 32-bit length on the wire.
constexpr uint64_t kMaxNoPayloadRequest = uint64_t{1} << 30;
// Zeroed buffer used when the server has no WRITE_ZEROES.
constexpr uint64_t kZeroBufferBytes = uint64_t{1} << 20;
// Replies of cut connections are read in pieces of this size and dropped.
constexpr size_t kDrainScratchBytes = size_t{64} << 10;

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000U + static_cast<uint64_t>(ts.tv_nsec);
}

std::string libnbd_message() {
  const char* message = nbd_get_error();
  return message != nullptr ? message : "unknown libnbd error";
}

int libnbd_errno(int fallback) {
  const int err = nbd_get_errno();
  return err != 0 ? err : fallback;
}

bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

}  // namespace

bool is_nbd_uri(std::string_view text) {
  return starts_with(text, "nbd://") || starts_with(text, "nbds://") ||
         starts_with(text, "nbd+unix://") || starts_with(text, "nbds+unix://");
}

struct NbdDevice::Connection {
  nbd_handle* handle = nullptr;
  unsigned index = 0;
  unsigned in_flight = 0;
  bool dead = false;
  uint32_t registered_events = 0;  // what epoll_fd_ watches (0: not added)
  // After a cut (handle closed): our half-closed dup of the socket, read
  // until the server closes it; -1 when none.
  int drain_fd = -1;

  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() {
    // A polite NBD_CMD_DISC when nothing is in flight (never blocks: the
    // asynchronous call only queues and tries to send it), so the server
    // ends the session (and TLS) cleanly instead of seeing a torn socket.
    if (handle != nullptr && !dead && nbd_aio_is_ready(handle) == 1 &&
        nbd_aio_in_flight(handle) == 0) {
      (void)nbd_aio_disconnect(handle, 0);
    }
    nbd_close(handle);  // no-op on nullptr (a cut connection)
    if (drain_fd >= 0) {
      ::close(drain_fd);
    }
  }
};

// Per request in flight: progress of its pieces and its first error.
struct NbdDevice::Tracker {
  dbs::IoRequest* request = nullptr;
  uint64_t cursor = 0;  // bytes (flush: pieces) handed to libnbd
  unsigned parts = 0;   // commands outstanding, +1 while still issuing
  int error = 0;
  bool flush_after = false;  // FUA emulation: flush once the write is done
  uint64_t start_ns = 0;
};

// One NBD command handed to libnbd (the completion callback's user_data).
struct NbdDevice::Command {
  NbdDevice* device = nullptr;
  Tracker* tracker = nullptr;
  Connection* conn = nullptr;
  int result = 0;
  dbs::IoOp op = dbs::IoOp::kRead;
  bool busy = false;  // handed to libnbd, not yet retired by complete_done()
  bool done = false;  // finished (by libnbd or by a cut), on the done list
  Command* next_done = nullptr;
};

NbdDevice::NbdDevice(std::string uri, const NbdDeviceOptions& options)
    : uri_(std::move(uri)), options_(options) {}

NbdDevice::~NbdDevice() {
  // Close the handles first: libnbd drops (without calling) the completion
  // callbacks of anything still in flight, which only a caller bug leaves.
  conns_.clear();
  if (epoll_fd_ >= 0) {
    ::close(epoll_fd_);
  }
  if (event_fd_ >= 0) {
    ::close(event_fd_);
  }
  if (timer_fd_ >= 0) {
    ::close(timer_fd_);
  }
  std::free(zero_buffer_);  // NOLINT(cppcoreguidelines-no-malloc): aligned_alloc'd
}

namespace {

// Connects `handle` to `uri` with the asynchronous API so a server that
// accepts but never answers (stopped, partitioned) cannot hang the caller.
Status connect_bounded(nbd_handle* handle, const std::string& uri, unsigned timeout_ms) {
  if (nbd_aio_connect_uri(handle, uri.c_str()) == -1) {
    return Error(libnbd_errno(EINVAL), uri + ": cannot connect: " + libnbd_message());
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (nbd_aio_is_ready(handle) != 1) {
    if (nbd_aio_is_dead(handle) == 1 || nbd_aio_is_closed(handle) == 1) {
      return Error(libnbd_errno(ECONNREFUSED), uri + ": cannot connect: " + libnbd_message());
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Error(ETIMEDOUT, uri + ": no answer from the server within " +
                                  std::to_string(timeout_ms) + " ms while connecting");
    }
    const unsigned direction = nbd_aio_get_direction(handle);
    pollfd pfd{};
    pfd.fd = nbd_aio_get_fd(handle);
    if (pfd.fd < 0) {
      return Error(libnbd_errno(EIO), uri + ": cannot connect: " + libnbd_message());
    }
    if ((direction & LIBNBD_AIO_DIRECTION_READ) != 0) {
      pfd.events |= POLLIN;
    }
    if ((direction & LIBNBD_AIO_DIRECTION_WRITE) != 0) {
      pfd.events |= POLLOUT;
    }
    const int ready = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno != EINTR) {
      return errno_error(uri + ": poll while connecting");
    }
    if (ready <= 0) {
      continue;
    }
    int rc = 0;
    if ((pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0 &&
        (direction & LIBNBD_AIO_DIRECTION_READ) != 0) {
      rc = nbd_aio_notify_read(handle);
    } else if ((pfd.revents & (POLLOUT | POLLHUP | POLLERR)) != 0) {
      rc = nbd_aio_notify_write(handle);
    }
    if (rc == -1) {
      return Error(libnbd_errno(ECONNREFUSED), uri + ": cannot connect: " + libnbd_message());
    }
  }
  return ok_status();
}

}  // namespace

Result<std::unique_ptr<NbdDevice>> NbdDevice::open(const std::string& uri,
                                                   const NbdDeviceOptions& options) {
  if (!is_nbd_uri(uri)) {
    return Error(EINVAL, "'" + uri +
                             "' is not an NBD URI (nbd://HOST[:PORT]/EXPORT, nbds://..., "
                             "nbd+unix:///EXPORT?socket=PATH)");
  }
  if (options.queue_depth == 0) {
    return Error(EINVAL, uri + ": queue depth must be at least 1");
  }
  std::unique_ptr<NbdDevice> device(new NbdDevice(uri, options));
  UBLKVOL_TRY(device->connect_all());
  return device;
}

Status NbdDevice::connect_all() {
  auto open_one = [this](unsigned index) -> Result<std::unique_ptr<Connection>> {
    auto conn = std::make_unique<Connection>();
    conn->index = index;
    conn->handle = nbd_create();
    if (conn->handle == nullptr) {
      return Error(libnbd_errno(ENOMEM),
                   uri_ + ": cannot create a libnbd handle: " + libnbd_message());
    }
    // Only real network transports; tls-psk-file / tls-certificates are
    // local paths libnbd reads for nbds:// URIs.
    nbd_set_uri_allow_transports(conn->handle,
                                 LIBNBD_ALLOW_TRANSPORT_TCP | LIBNBD_ALLOW_TRANSPORT_UNIX);
    nbd_set_uri_allow_local_file(conn->handle, starts_with(uri_, "nbds"));
    // Reads land in the caller's buffer; libnbd need not zero it first.
    nbd_set_pread_initialize(conn->handle, false);
    UBLKVOL_TRY(connect_bounded(conn->handle, uri_, options_.connect_timeout_ms));
    return conn;
  };

  auto first = open_one(0);
  if (!first.ok()) {
    return first.error();
  }
  nbd_handle* handle = (*first)->handle;
  const int64_t size = nbd_get_size(handle);
  if (size < 0) {
    return Error(libnbd_errno(EIO), uri_ + ": cannot get the export size: " + libnbd_message());
  }
  if (static_cast<uint64_t>(size) < kBlockSize) {
    return Error(EINVAL, uri_ + ": export size " + std::to_string(size) +
                             " is smaller than one 4096-byte block");
  }
  size_bytes_ = static_cast<uint64_t>(size) / kBlockSize * kBlockSize;
  if (nbd_is_read_only(handle) == 1 && !options_.read_only) {
    return Error(EROFS, uri_ + ": the server offers the export read-only");
  }
  const int64_t min_block = nbd_get_block_size(handle, LIBNBD_SIZE_MINIMUM);
  if (min_block > static_cast<int64_t>(kBlockSize)) {
    return Error(EINVAL, uri_ + ": the server's minimum block size " + std::to_string(min_block) +
                             " is larger than 4096");
  }
  uint64_t max_request = kDefaultMaxRequest;
  const int64_t server_max = nbd_get_block_size(handle, LIBNBD_SIZE_MAXIMUM);
  if (server_max > 0) {
    max_request = std::min(max_request, static_cast<uint64_t>(server_max));
  }
  if (options_.max_request_bytes != 0) {
    max_request = std::min(max_request, options_.max_request_bytes);
  }
  max_request_bytes_ = max_request / kBlockSize * kBlockSize;
  if (max_request_bytes_ == 0) {
    return Error(EINVAL, uri_ + ": the largest request allowed (" + std::to_string(max_request) +
                             " bytes) is smaller than 4096");
  }
  caps_.flush = nbd_can_flush(handle) == 1;
  caps_.fua = nbd_can_fua(handle) == 1;
  caps_.trim = nbd_can_trim(handle) == 1;
  caps_.zero = nbd_can_zero(handle) == 1;
  multi_conn_ = nbd_can_multi_conn(handle) == 1;
  conns_.push_back(std::move(*first));

  const unsigned wanted = multi_conn_ ? std::max(1U, options_.connections) : 1U;
  for (unsigned i = 1; i < wanted; ++i) {
    auto conn = open_one(i);
    if (!conn.ok()) {
      return conn.error().with_context("connection " + std::to_string(i + 1) + " of " +
                                       std::to_string(wanted));
    }
    const int64_t other_size = nbd_get_size((*conn)->handle);
    if (other_size != size) {
      return Error(EIO, uri_ + ": connection " + std::to_string(i + 1) + " sees size " +
                            std::to_string(other_size) + ", the first saw " + std::to_string(size));
    }
    conns_.push_back(std::move(*conn));
  }

  if (!caps_.zero) {
    zero_buffer_bytes_ = std::min(kZeroBufferBytes, max_request_bytes_);
    // NOLINTNEXTLINE(cppcoreguidelines-no-malloc): 4 KiB aligned, freed in the destructor.
    zero_buffer_ =
        static_cast<std::byte*>(std::aligned_alloc(dbs::kIoAlignment, zero_buffer_bytes_));
    if (zero_buffer_ == nullptr) {
      return Error(ENOMEM, uri_ + ": cannot allocate the write-zeroes buffer");
    }
    std::memset(zero_buffer_, 0, zero_buffer_bytes_);
  }

  const size_t slots = size_t{options_.queue_depth} * conns_.size();
  commands_.resize(slots);
  trackers_.resize(slots + 1);
  free_commands_.reserve(slots);
  for (auto& command : commands_) {
    command.device = this;
    free_commands_.push_back(&command);
  }
  free_trackers_.reserve(trackers_.size());
  for (auto& tracker : trackers_) {
    free_trackers_.push_back(&tracker);
  }
  pollfds_.resize(conns_.size());
  polled_.resize(conns_.size());
  if (options_.command_timeout_ms != 0) {
    check_period_ns_ =
        std::max<uint64_t>(uint64_t{options_.command_timeout_ms} * 1'000'000 / 4, 1'000'000);
    next_check_ns_ = now_ns() + check_period_ns_;
  }
  drain_scratch_.resize(kDrainScratchBytes);
  return ok_status();
}

unsigned NbdDevice::live_connections() const {
  return static_cast<unsigned>(
      std::count_if(conns_.begin(), conns_.end(), [](const auto& c) { return !c->dead; }));
}

unsigned NbdDevice::draining() const {
  return static_cast<unsigned>(
      std::count_if(conns_.begin(), conns_.end(), [](const auto& c) { return c->drain_fd >= 0; }));
}

void NbdDevice::disconnect() { cut_all(ENOTCONN, "disconnected"); }

void NbdDevice::poll_draining() {
  for (auto& conn : conns_) {
    if (conn->drain_fd >= 0) {
      drain(*conn);
    }
  }
}

void NbdDevice::abandon_draining() {
  for (auto& conn : conns_) {
    if (conn->drain_fd >= 0) {
      if (epoll_fd_ >= 0) {
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, conn->drain_fd, nullptr);
      }
      ::close(conn->drain_fd);
      conn->drain_fd = -1;
    }
  }
}

void NbdDevice::cut_all(int err, const std::string& why) {
  cut_pending_ = false;
  bool cut = false;
  for (auto& conn : conns_) {
    if (conn->handle == nullptr) {
      continue;
    }
    cut = true;
    // The fd is asked for each time: libnbd closes the socket of a handle
    // that died, and the number may since belong to another connection.
    const bool alive =
        !conn->dead && nbd_aio_is_dead(conn->handle) != 1 && nbd_aio_is_closed(conn->handle) != 1;
    const int fd = alive ? nbd_aio_get_fd(conn->handle) : -1;
    if (fd >= 0) {
      if (epoll_fd_ >= 0 && conn->registered_events != 0) {
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
      }
      // Keep the socket open past nbd_close, write side shut: the server
      // gets EOF after the complete commands and never the rest of a partly
      // sent one.
      conn->drain_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (conn->drain_fd >= 0) {
        ::shutdown(conn->drain_fd, SHUT_WR);
        if (epoll_fd_ >= 0) {
          epoll_event event{};
          event.events = EPOLLIN;
          event.data.u64 = conn->index;
          epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, conn->drain_fd, &event);
        }
      }
    }
    conn->registered_events = 0;
    conn->dead = true;
    // libnbd forgets every command of the handle, and with them the
    // callers' buffers; their completion callbacks are not called.
    nbd_close(conn->handle);
    conn->handle = nullptr;
  }
  for (auto& command : commands_) {
    if (command.busy && !command.done) {
      command.done = true;
      command.result = -err;
      command.next_done = nullptr;
      if (done_tail_ == nullptr) {
        done_head_ = &command;
      } else {
        done_tail_->next_done = &command;
      }
      done_tail_ = &command;
    }
  }
  if (cut) {
    ++counters_.cuts;
    last_error_ = uri_ + ": " + why + "; every connection cut";
    signal_local();
  }
}

void NbdDevice::check_timeouts() {
  if (check_period_ns_ == 0) {
    return;
  }
  const uint64_t now = now_ns();
  if (now < next_check_ns_) {
    return;
  }
  next_check_ns_ = now + check_period_ns_;
  if (timer_fd_ >= 0 && timer_armed_) {
    uint64_t expirations = 0;
    [[maybe_unused]] const ssize_t n = ::read(timer_fd_, &expirations, sizeof expirations);
    timer_armed_ = false;
  }
  const uint64_t limit_ns = uint64_t{options_.command_timeout_ms} * 1'000'000;
  for (const auto& command : commands_) {
    if (command.busy && !command.done && now - command.tracker->start_ns >= limit_ns) {
      cut_all(ETIMEDOUT, "no answer within " + std::to_string(options_.command_timeout_ms) +
                             " ms (" + dbs::to_string(command.op) + ")");
      break;
    }
  }
  if (in_flight_ > 0) {
    arm_timer();
  }
}

void NbdDevice::arm_timer() {
  if (timer_fd_ < 0 || timer_armed_) {
    return;
  }
  // One-shot at the next check: it fires at or after next_check_ns_ (the
  // same clock), so the woken poll() always runs the check and reads it.
  itimerspec spec{};
  const uint64_t now = now_ns();
  const uint64_t delay = next_check_ns_ > now ? next_check_ns_ - now : 1;
  spec.it_value.tv_sec = static_cast<time_t>(delay / 1'000'000'000);
  spec.it_value.tv_nsec = static_cast<long>(delay % 1'000'000'000);
  if (timerfd_settime(timer_fd_, 0, &spec, nullptr) == 0) {
    timer_armed_ = true;
  }
}

void NbdDevice::drain(Connection& conn) {
  for (;;) {
    const ssize_t n = ::read(conn.drain_fd, drain_scratch_.data(), drain_scratch_.size());
    if (n > 0) {
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      return;
    }
    // EOF or an error: the server is done with this connection.
    if (epoll_fd_ >= 0) {
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, conn.drain_fd, nullptr);
    }
    ::close(conn.drain_fd);
    conn.drain_fd = -1;
    return;
  }
}

void NbdDevice::submit(dbs::IoRequest& request) {
  ++in_flight_;
  const int invalid = dbs::detail::validate_request(request, size_bytes_, kBlockSize);
  if (invalid != 0) {
    fail_locally(request, invalid);
    return;
  }
  dbs::detail::queue_push(waiting_head_, waiting_tail_, request);
  issue();
}

void NbdDevice::kick() {
  // libnbd writes each command as it is issued; only requests waiting for a
  // free slot remain, and those go out as replies free slots.
  issue();
}

void NbdDevice::fail_locally(dbs::IoRequest& request, int result) {
  request.device_result = result;
  dbs::detail::queue_push(local_head_, local_tail_, request);
  signal_local();
}

NbdDevice::Connection* NbdDevice::next_connection() {
  const auto count = static_cast<unsigned>(conns_.size());
  for (unsigned i = 0; i < count; ++i) {
    Connection& conn = *conns_[(next_conn_ + i) % count];
    if (!conn.dead && conn.in_flight < options_.queue_depth) {
      next_conn_ = (next_conn_ + i + 1) % count;
      return &conn;
    }
  }
  return nullptr;
}

void NbdDevice::issue() {
  while (waiting_head_ != nullptr) {
    dbs::IoRequest& request = *waiting_head_;
    if (head_tracker_ == nullptr) {
      // Hints and flushes the server has no use for complete at once.
      const bool no_op =
          (request.op == dbs::IoOp::kDiscard && !options_.discard_as_zero && !caps_.trim) ||
          (request.op == dbs::IoOp::kFlush && !caps_.flush);
      if (no_op || live_connections() == 0) {
        dbs::detail::queue_pop(waiting_head_, waiting_tail_);
        fail_locally(request, no_op ? 0 : -ENOTCONN);
        continue;
      }
      if (free_trackers_.empty() || free_commands_.empty()) {
        return;
      }
      head_tracker_ = free_trackers_.back();
      free_trackers_.pop_back();
      *head_tracker_ = Tracker{};
      head_tracker_->request = &request;
      head_tracker_->parts = 1;  // held until every piece is issued
      head_tracker_->start_ns = now_ns();
      head_tracker_->flush_after =
          request.op == dbs::IoOp::kWrite && request.fua && !caps_.fua && caps_.flush;
    }
    Tracker& tracker = *head_tracker_;
    if (!issue_piece(request, tracker)) {
      return;
    }
    const uint64_t total = request.op == dbs::IoOp::kFlush ? 1 : request.length;
    if (tracker.cursor >= total || tracker.error != 0) {
      dbs::detail::queue_pop(waiting_head_, waiting_tail_);
      head_tracker_ = nullptr;
      if (--tracker.parts == 0) {
        finish_request(tracker);
      }
    }
  }
}

bool NbdDevice::issue_piece(dbs::IoRequest& request, Tracker& tracker) {
  if (free_commands_.empty()) {
    return false;
  }
  Connection* conn = next_connection();
  if (conn == nullptr) {
    if (live_connections() == 0) {
      tracker.error = -ENOTCONN;
      return true;
    }
    return false;  // every live connection is full
  }
  if (request.op == dbs::IoOp::kFlush) {
    send(*conn, tracker, dbs::IoOp::kFlush, 0, 0, nullptr, false);
    tracker.cursor = 1;
    return true;
  }
  dbs::IoOp op = request.op;
  if (op == dbs::IoOp::kDiscard && options_.discard_as_zero) {
    op = dbs::IoOp::kWriteZeroes;
  }
  std::byte* buffer = request.buffer == nullptr ? nullptr : request.buffer + tracker.cursor;
  uint64_t limit = max_request_bytes_;
  if (op == dbs::IoOp::kWriteZeroes && !caps_.zero) {
    op = dbs::IoOp::kWrite;
    buffer = zero_buffer_;
    limit = zero_buffer_bytes_;
  } else if (op == dbs::IoOp::kDiscard || op == dbs::IoOp::kWriteZeroes) {
    limit = kMaxNoPayloadRequest;
  }
  const uint64_t piece = std::min(request.length - tracker.cursor, limit);
  if (piece < request.length) {
    if (tracker.cursor == 0) {
      ++counters_.split_requests;
    }
  }
  const bool fua = request.fua && caps_.fua && request.op == dbs::IoOp::kWrite;
  send(*conn, tracker, op, request.offset + tracker.cursor, piece, buffer, fua);
  tracker.cursor += piece;
  return true;
}

bool NbdDevice::send(Connection& conn, Tracker& tracker, dbs::IoOp op, uint64_t offset,
                     uint64_t length, std::byte* buffer, bool fua) {
  Command* command = free_commands_.back();
  free_commands_.pop_back();
  command->tracker = &tracker;
  command->conn = &conn;
  command->result = 0;
  command->op = op;
  command->busy = true;
  command->done = false;
  command->next_done = nullptr;
  // Counted before the call: libnbd may complete the command (e.g. the
  // connection dies while sending) before nbd_aio_* returns.
  ++conn.in_flight;
  ++tracker.parts;
  const nbd_completion_callback done{
      .callback = &NbdDevice::on_command_done, .user_data = command, .free = nullptr};
  const uint32_t flags = fua ? LIBNBD_CMD_FLAG_FUA : 0;
  int64_t cookie = -1;
  switch (op) {
    case dbs::IoOp::kRead:
      cookie = nbd_aio_pread(conn.handle, buffer, length, offset, done, 0);
      break;
    case dbs::IoOp::kWrite:
      cookie = nbd_aio_pwrite(conn.handle, buffer, length, offset, done, flags);
      break;
    case dbs::IoOp::kFlush:
      cookie = nbd_aio_flush(conn.handle, done, 0);
      break;
    case dbs::IoOp::kDiscard:
      cookie = nbd_aio_trim(conn.handle, length, offset, done, 0);
      break;
    case dbs::IoOp::kWriteZeroes:
      cookie = nbd_aio_zero(conn.handle, length, offset, done, 0);
      break;
  }
  if (cookie != -1) {
    ++counters_.commands;
    return true;
  }
  // Not issued: libnbd does not call the callback, so undo here.
  const bool dead = nbd_aio_is_dead(conn.handle) == 1 || nbd_aio_is_closed(conn.handle) == 1;
  const int err = dead ? ENOTCONN : libnbd_errno(EIO);
  last_error_ = uri_ + ": " + dbs::to_string(op) + " not sent: " + libnbd_message();
  --conn.in_flight;
  --tracker.parts;
  if (tracker.error == 0) {
    tracker.error = -err;
  }
  command->busy = false;
  free_commands_.push_back(command);
  if (dead) {
    mark_dead(conn, "connection lost");
  }
  return false;
}

int NbdDevice::on_command_done(void* user_data, int* error) {
  auto* command = static_cast<Command*>(user_data);
  command->result = (error != nullptr && *error != 0) ? -*error : 0;
  NbdDevice& device = *command->device;
  command->done = true;
  command->next_done = nullptr;
  if (command->result != 0 && command->op != dbs::IoOp::kRead) {
    // The engine takes the replica out on this failure and stops waiting
    // for its other commands: cut before it is reported (poll()). Not
    // here: a handle cannot be closed inside its own callback.
    if (!device.cut_pending_) {
      device.cut_pending_ = true;
      device.cut_cause_ = std::string(dbs::to_string(command->op)) +
                          " failed: " + std::generic_category().message(-command->result);
    }
  }
  if (device.done_tail_ == nullptr) {
    device.done_head_ = command;
  } else {
    device.done_tail_->next_done = command;
  }
  device.done_tail_ = command;
  return 1;  // retire the command in libnbd
}

void NbdDevice::mark_dead(Connection& conn, const char* what) {
  if (conn.dead) {
    return;
  }
  conn.dead = true;
  const std::string why =
      "connection " + std::to_string(conn.index + 1) + ": " + what + ": " + libnbd_message();
  if (epoll_fd_ >= 0 && conn.registered_events != 0) {
    // A socket libnbd already closed left the epoll set by itself.
    const int fd = nbd_aio_get_fd(conn.handle);
    if (fd >= 0) {
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
    }
    conn.registered_events = 0;
  }
  // Its commands failed; the engine drops the replica on that and hands
  // back the buffers of the commands still on the other connections.
  cut_all(ENOTCONN, why);
}

void NbdDevice::pump(int timeout_ms) {
  nfds_t count = 0;
  for (auto& conn : conns_) {
    if (conn->drain_fd >= 0) {
      pollfds_[count] = pollfd{.fd = conn->drain_fd, .events = POLLIN, .revents = 0};
      polled_[count] = conn.get();
      ++count;
      continue;
    }
    if (conn->dead) {
      continue;
    }
    const int fd = nbd_aio_get_fd(conn->handle);
    if (fd < 0) {
      mark_dead(*conn, "connection lost");
      continue;
    }
    const unsigned direction = nbd_aio_get_direction(conn->handle);
    short events = 0;
    if ((direction & LIBNBD_AIO_DIRECTION_READ) != 0) {
      events |= POLLIN;
    }
    if ((direction & LIBNBD_AIO_DIRECTION_WRITE) != 0) {
      events |= POLLOUT;
    }
    pollfds_[count] = pollfd{.fd = fd, .events = events, .revents = 0};
    polled_[count] = conn.get();
    ++count;
  }
  if (count == 0) {
    return;
  }
  const int ready = ::poll(pollfds_.data(), count, timeout_ms);
  if (ready <= 0) {
    return;
  }
  for (nfds_t i = 0; i < count; ++i) {
    const short revents = pollfds_[i].revents;
    Connection& conn = *polled_[i];
    if (revents != 0 && conn.drain_fd >= 0 && pollfds_[i].fd == conn.drain_fd) {
      drain(conn);
      continue;
    }
    if (revents == 0 || conn.dead) {
      continue;
    }
    int rc = 0;
    if ((revents & (POLLIN | POLLHUP | POLLERR)) != 0 && (pollfds_[i].events & POLLIN) != 0) {
      rc = nbd_aio_notify_read(conn.handle);
    }
    if (rc != -1 && (revents & (POLLOUT | POLLHUP | POLLERR)) != 0 &&
        (nbd_aio_get_direction(conn.handle) & LIBNBD_AIO_DIRECTION_WRITE) != 0) {
      rc = nbd_aio_notify_write(conn.handle);
    }
    if (rc == -1 || nbd_aio_is_dead(conn.handle) == 1 || nbd_aio_is_closed(conn.handle) == 1) {
      mark_dead(conn, "connection lost");
    }
  }
}

unsigned NbdDevice::complete_done() {
  unsigned ran = 0;
  while (done_head_ != nullptr) {
    Command* command = done_head_;
    done_head_ = command->next_done;
    if (done_head_ == nullptr) {
      done_tail_ = nullptr;
    }
    Tracker& tracker = *command->tracker;
    Connection& conn = *command->conn;
    --conn.in_flight;
    command->busy = false;
    if (command->result != 0) {
      if (tracker.error == 0) {
        tracker.error = command->result;
      }
      if (conn.handle == nullptr) {
        // Cut (last_error_ says why).
      } else if (nbd_aio_is_dead(conn.handle) == 1 || nbd_aio_is_closed(conn.handle) == 1) {
        mark_dead(conn, "connection lost");
      } else {
        last_error_ = uri_ + ": " + dbs::to_string(tracker.request->op) +
                      " failed: " + std::generic_category().message(-command->result);
      }
    }
    free_commands_.push_back(command);
    if (--tracker.parts == 0 && finish_request(tracker)) {
      ++ran;
    }
  }
  return ran;
}

bool NbdDevice::finish_request(Tracker& tracker) {
  if (tracker.flush_after && tracker.error == 0) {
    // FUA emulation: the write is done; make it durable before completing.
    tracker.flush_after = false;
    ++counters_.fua_emulated;
    Connection* conn = next_connection();
    if (conn != nullptr) {
      tracker.parts = 1;
      if (send(*conn, tracker, dbs::IoOp::kFlush, 0, 0, nullptr, false)) {
        if (--tracker.parts != 0) {
          return false;  // the flush's completion finishes the request
        }
      } else {
        tracker.parts = 0;
      }
    } else if (tracker.error == 0) {
      tracker.error = -ENOTCONN;
    }
  }
  dbs::IoRequest& request = *tracker.request;
  const int result = tracker.error;
  latency_.record_ns(now_ns() - tracker.start_ns);
  if (result != 0) {
    ++counters_.failed;
  }
  free_trackers_.push_back(&tracker);
  --in_flight_;
  request.on_complete(request, result);
  return true;
}

unsigned NbdDevice::poll(bool wait) {
  issue();
  unsigned ran = 0;
  bool first = true;
  for (;;) {
    int timeout_ms = first || !wait ? 0 : -1;
    if (timeout_ms < 0 && check_period_ns_ != 0) {
      const uint64_t now = now_ns();
      timeout_ms =
          next_check_ns_ > now ? static_cast<int>((next_check_ns_ - now + 999'999) / 1'000'000) : 0;
    }
    pump(timeout_ms);
    first = false;
    // Before any failure is reported: the engine hands buffers back on it.
    if (cut_pending_) {
      cut_all(EIO, cut_cause_);
    }
    check_timeouts();
    ran += complete_done();
    if (local_head_ != nullptr) {
      if (event_fd_ >= 0) {
        uint64_t value = 0;
        [[maybe_unused]] const ssize_t n = ::read(event_fd_, &value, sizeof value);
      }
      ran += dbs::detail::queue_drain(local_head_, local_tail_, [this](dbs::IoRequest& request) {
        --in_flight_;
        if (request.device_result != 0) {
          ++counters_.failed;
        }
        request.on_complete(request, request.device_result);
      });
    }
    issue();
    if (ran > 0 || !wait || in_flight_ == 0 || local_head_ != nullptr) {
      break;
    }
  }
  if (in_flight_ > 0) {
    arm_timer();  // a syscall at most once per check period
  }
  update_interest();
  return ran;
}

int NbdDevice::completion_fd() const {
  if (epoll_fd_ < 0) {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epoll_fd_ < 0 || event_fd_ < 0) {
      return -1;
    }
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.u64 = ~uint64_t{0};
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &event);
    if (check_period_ns_ != 0) {
      // Wakes a sleeping owner for the next timeout check.
      timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
      if (timer_fd_ >= 0) {
        epoll_event timer{};
        timer.events = EPOLLIN;
        timer.data.u64 = ~uint64_t{0} - 1;
        epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, timer_fd_, &timer);
      }
    }
    for (const auto& conn : conns_) {
      if (conn->drain_fd >= 0) {
        epoll_event drain{};
        drain.events = EPOLLIN;
        drain.data.u64 = conn->index;
        epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, conn->drain_fd, &drain);
      }
    }
    update_interest();
    if (local_head_ != nullptr) {
      signal_local();
    }
  }
  return epoll_fd_;
}

void NbdDevice::update_interest() const {
  if (epoll_fd_ < 0) {
    return;
  }
  for (const auto& conn : conns_) {
    if (conn->dead) {
      continue;
    }
    const int fd = nbd_aio_get_fd(conn->handle);
    if (fd < 0) {
      continue;  // dead; the next poll() marks it
    }
    const unsigned direction = nbd_aio_get_direction(conn->handle);
    uint32_t want = EPOLLIN;
    if ((direction & LIBNBD_AIO_DIRECTION_WRITE) != 0) {
      want |= EPOLLOUT;
    }
    if (want == conn->registered_events) {
      continue;
    }
    epoll_event event{};
    event.events = want;
    event.data.u64 = conn->index;
    epoll_ctl(epoll_fd_, conn->registered_events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &event);
    conn->registered_events = want;
  }
}

void NbdDevice::signal_local() const {
  if (event_fd_ >= 0) {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(event_fd_, &one, sizeof one);
  }
}

}  // namespace ublkvol::nbd
