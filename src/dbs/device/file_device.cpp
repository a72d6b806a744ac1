// FileDevice (include/ublkvol/dbs/file_device.h): the io_uring block device
// under DBS. One file of ~820 lines: submission, completion, the batching
// and the fixed-buffer (zero-copy) path all work on the same ring state.
// Splitting the fixed-buffer path into its own file is the next step if it
// grows.
#include "ublkvol/dbs/file_device.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>

#include "ublkvol/dbs/device_users.h"

#include "request_queue.h"

// io_uring block-device command (include/uapi/linux/blkdev.h, Linux 6.12);
// defined here because this machine's headers predate it.
#ifndef BLOCK_URING_CMD_DISCARD
#define BLOCK_URING_CMD_DISCARD _IO(0x12, 0)
#endif

// Batched-wait timeout (include/uapi/linux/io_uring.h, Linux 6.12): the
// `pad` member of io_uring_getevents_arg became `min_wait_usec`.
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif

namespace ublkvol::dbs {

namespace {

// CQEs handled per batch: copied out of the ring before any callback runs so
// callbacks may submit (and the CQ slots are released early).
constexpr unsigned kReapBatch = 64;

}  // namespace

FileDevice::FileDevice(std::string path, const FileDeviceOptions& options)
    : path_(std::move(path)), options_(options) {}

FileDevice::~FileDevice() {
  if (!ring_initialised_) {
    release_lock();
    return;
  }
  // The kernel may still be reading/writing the callers' buffers: wait for it
  // to let go before the ring disappears. Only the owning thread may enter a
  // single-issuer ring; from elsewhere, ring teardown cancels what is left.
  if (caller_may_enter()) {
    if (unsubmitted_ > 0) {
      io_uring_submit(&ring_);
    }
    while (in_ring_ > 0) {
      io_uring_cqe* cqe = nullptr;
      int rc = io_uring_wait_cqe(&ring_, &cqe);
      if (rc == -EINTR) {
        continue;
      }
      if (rc < 0) {
        break;
      }
      io_uring_cqe_seen(&ring_, cqe);
      --in_ring_;
    }
  }
  // Explicitly, before the ring goes: the ring holds its own reference to
  // the registered file and drops it asynchronously, so the lock would
  // outlive this object by a moment and a reopen right after could fail.
  release_lock();
  io_uring_queue_exit(&ring_);
}

void FileDevice::release_lock() {
  if (fd_ && locked_) {
    ::flock(fd_.get(), LOCK_UN);
    locked_ = false;
  }
}

namespace {

// How long an open waits for a claim left by an owner that no longer runs
// (its io_uring's file reference is dropped asynchronously after it died).
constexpr auto kDeadOwnerWait = std::chrono::seconds(5);
constexpr auto kRetryInterval = std::chrono::milliseconds(10);

// Is anything that still runs (or is mounted, or a kernel holder) using it?
// For a flock only lock holders count: a process that merely has the file
// open (the daemon's own identity fd, a backup tool) does not conflict.
bool any_live_user(const std::vector<DeviceUser>& users, bool only_lock_holders) {
  return std::any_of(users.begin(), users.end(), [&](const DeviceUser& user) {
    if (user.kind == DeviceUser::Kind::kLockHolder) {
      return user.alive;
    }
    return !only_lock_holders;
  });
}

std::string describe(const std::vector<DeviceUser>& users) {
  std::string out;
  for (const DeviceUser& user : users) {
    out += (out.empty() ? "" : "; ") + user.describe();
  }
  return out;
}

}  // namespace

Status FileDevice::wait_for_claim(const std::function<int()>& try_claim, Claim claim,
                                  const char* what) {
  const auto deadline = std::chrono::steady_clock::now() + kDeadOwnerWait;
  for (;;) {
    const int err = try_claim();
    if (err == 0) {
      return ok_status();
    }
    if (err != EBUSY && err != EWOULDBLOCK) {
      return Error(err, path_ + ": " + what + " failed");
    }
    // fd_ is our own (the file being locked); for a block device it is not
    // open while the exclusive open is retried.
    const std::vector<DeviceUser> users = find_device_users(path_, fd_ ? fd_.get() : -1);
    const bool live = any_live_user(users, claim == Claim::kLock);
    if (live || std::chrono::steady_clock::now() >= deadline) {
      std::string who = describe(users);
      if (who.empty()) {
        who = "an owner that could not be identified (its claim was not released within " +
              std::to_string(kDeadOwnerWait.count()) + " s)";
      }
      return Error(EBUSY,
                   path_ + ": " + what + ": in use by " + who +
                       (options_.read_only ? "; a read-only open waits until no process writes it"
                                           : "; a store has one owner at a time"));
    }
    std::this_thread::sleep_for(kRetryInterval);  // bounded by kDeadOwnerWait
  }
}

Result<std::unique_ptr<FileDevice>> FileDevice::open(const std::string& path,
                                                     const FileDeviceOptions& options) {
  if (options.queue_depth == 0 || options.queue_depth > 4096) {
    return Error(EINVAL, path + ": queue depth " + std::to_string(options.queue_depth) +
                             " is not in 1..4096");
  }
  std::unique_ptr<FileDevice> device(new FileDevice(path, options));
  UBLKVOL_TRY(device->init(path));
  return device;
}

Status FileDevice::init(const std::string& path) {
  int flags = O_DIRECT | O_CLOEXEC | (options_.read_only ? O_RDONLY : O_RDWR);
  if (options_.create_size != 0) {
    flags |= O_CREAT;
  }
  fd_.reset(::open(path.c_str(), flags, 0644));
  if (!fd_) {
    int open_errno = errno;
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      // open(O_DIRECT) of a directory fails with EINVAL or EISDIR depending
      // on the filesystem; say what is actually wrong.
      return Error(EISDIR, path + ": is a directory, not a file or block device");
    }
    return Error(open_errno, path + ": cannot open" + (options_.read_only ? "" : " for writing"));
  }
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) {
    return errno_error(path + ": fstat failed");
  }
  if (S_ISBLK(st.st_mode)) {
    is_block_device_ = true;
    if (!options_.read_only) {
      // Claim the device exclusively (fails if mounted or held by another
      // exclusive opener, this process included), so nothing writes
      // underneath the store.
      fd_.reset();
      UBLKVOL_TRY(wait_for_claim(
          [&] {
            fd_.reset(::open(path.c_str(), flags | O_EXCL, 0));
            return fd_ ? 0 : errno;
          },
          Claim::kExclusiveOpen, "cannot open exclusively"));
    }
    UBLKVOL_TRY(lock());
    int logical_block_size = 0;
    if (::ioctl(fd_.get(), BLKSSZGET, &logical_block_size) != 0) {
      return errno_error(path + ": BLKSSZGET failed");
    }
    if (logical_block_size <= 0 || static_cast<uint32_t>(logical_block_size) > kBlockSize) {
      return Error(EINVAL, path + ": logical block size " + std::to_string(logical_block_size) +
                               " is not supported (must be at most 4096)");
    }
    uint64_t bytes = 0;
    if (::ioctl(fd_.get(), BLKGETSIZE64, &bytes) != 0) {
      return errno_error(path + ": BLKGETSIZE64 failed");
    }
    size_bytes_ = bytes / kBlockSize * kBlockSize;
    if (size_bytes_ == 0) {
      return Error(EINVAL, path + ": block device of " + std::to_string(bytes) +
                               " bytes is smaller than one 4096-byte block");
    }
  } else if (S_ISREG(st.st_mode)) {
    // Before anything else touches the file (create_size may extend it).
    UBLKVOL_TRY(lock());
    uint64_t bytes = static_cast<uint64_t>(st.st_size);
    if (options_.create_size != 0 && bytes < options_.create_size) {
      if (::ftruncate(fd_.get(), static_cast<off_t>(options_.create_size)) != 0) {
        return errno_error(path + ": cannot extend to " + std::to_string(options_.create_size) +
                           " bytes");
      }
      bytes = options_.create_size;
    }
    if (bytes == 0 || bytes % kBlockSize != 0) {
      return Error(EINVAL, path + ": file size " + std::to_string(bytes) +
                               " is not a positive multiple of 4096");
    }
    size_bytes_ = bytes;
  } else if (S_ISDIR(st.st_mode)) {
    return Error(EISDIR, path + ": is a directory, not a file or block device");
  } else {
    return Error(EINVAL, path + ": not a regular file or block device");
  }

  identity_.block_device = is_block_device_;
  identity_.dev = is_block_device_ ? st.st_rdev : st.st_dev;
  identity_.ino = is_block_device_ ? 0 : st.st_ino;
  return setup_ring();
}

Status FileDevice::lock() {
  // flock locks belong to the open file description: a second open of the
  // same inode conflicts even within this process, through any path.
  const int op = (options_.read_only ? LOCK_SH : LOCK_EX) | LOCK_NB;
  UBLKVOL_TRY(wait_for_claim(
      [&] {
        int rc = 0;
        do {
          rc = ::flock(fd_.get(), op);
        } while (rc != 0 && errno == EINTR);
        return rc == 0 ? 0 : errno;
      },
      Claim::kLock,
      options_.read_only ? "cannot take a shared lock" : "cannot take the owner's lock"));
  locked_ = true;
  return ok_status();
}

Status FileDevice::setup_ring() {
  io_uring_params params{};
  // The CQ must hold a completion for every request the kernel owns, even
  // when the owner is slow to poll: twice the SQ is the kernel default.
  const unsigned base_flags =
      IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  const unsigned issuer_flags =
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED;
  params.flags = base_flags | (options_.single_issuer ? issuer_flags : 0);
  params.cq_entries = options_.queue_depth * 2;
  int rc = io_uring_queue_init_params(options_.queue_depth, &ring_, &params);
  if (rc == -EINVAL && options_.single_issuer) {
    // Kernel older than 6.1: no DEFER_TASKRUN. A plain ring works the same.
    params = io_uring_params{};
    params.flags = base_flags;
    params.cq_entries = options_.queue_depth * 2;
    rc = io_uring_queue_init_params(options_.queue_depth, &ring_, &params);
  }
  if (rc < 0) {
    return Error(-rc, path_ + ": io_uring setup with queue depth " +
                          std::to_string(options_.queue_depth) + " failed");
  }
  ring_initialised_ = true;
  ring_single_issuer_ = (params.flags & IORING_SETUP_SINGLE_ISSUER) != 0;
  ring_min_timeout_ = (params.features & IORING_FEAT_MIN_TIMEOUT) != 0;
  ring_enabled_ = !ring_single_issuer_;
  if (options_.register_file) {
    int fd = fd_.get();
    rc = io_uring_register_files(&ring_, &fd, 1);
    if (rc < 0) {
      return Error(-rc, path_ + ": io_uring file registration failed");
    }
  }
  if (!region_iovecs_.empty()) {
    rc = io_uring_register_buffers(&ring_, region_iovecs_.data(),
                                   static_cast<unsigned>(region_iovecs_.size()));
    if (rc < 0) {
      return Error(-rc, path_ + ": io_uring buffer registration failed");
    }
  }
  if (event_fd_) {
    rc = io_uring_register_eventfd(&ring_, event_fd_.get());
    if (rc < 0) {
      return Error(-rc, path_ + ": io_uring eventfd registration failed");
    }
  }
  return ok_status();
}

void FileDevice::teardown_ring() {
  if (ring_initialised_) {
    io_uring_queue_exit(&ring_);
    ring_ = io_uring{};
    ring_initialised_ = false;
    ring_enabled_ = false;
  }
}

void FileDevice::bind_to_current_thread() {
  if (!ring_single_issuer_) {
    return;
  }
  pthread_t self = pthread_self();
  if (ring_enabled_) {
    if (pthread_equal(owner_, self)) {
      return;
    }
    if (in_ring_ > 0) {
      (void)std::fprintf(stderr,
                         "FATAL: %s: FileDevice used from a second thread while it has %u requests "
                         "in the kernel (a BlockDevice has one owning thread)\n",
                         path_.c_str(), in_ring_);
      std::abort();
    }
    // Idle and moved to a new owner: a single-issuer ring stays bound to its
    // first submitter, so build a fresh one for this thread.
    teardown_ring();
    Status status = setup_ring();
    if (!status.ok()) {
      (void)std::fprintf(stderr, "FATAL: %s: rebuilding the io_uring for a new thread: %s\n",
                         path_.c_str(), status.error().to_string().c_str());
      std::abort();
    }
    counters_.ring_rebuilds++;
  }
  // liburing 2.3 declares io_uring_enable_rings() but does not export it.
  long rc =
      ::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0);
  if (rc < 0) {
    (void)std::fprintf(stderr, "FATAL: %s: IORING_REGISTER_ENABLE_RINGS: %s\n", path_.c_str(),
                       std::error_code(errno, std::generic_category()).message().c_str());
    std::abort();
  }
  ring_enabled_ = true;
  owner_ = self;
}

bool FileDevice::caller_may_enter() const {
  return ring_enabled_ && (!ring_single_issuer_ || pthread_equal(owner_, pthread_self()));
}

int FileDevice::completion_fd() const {
  if (!event_fd_) {
    UniqueFd fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!fd) {
      return -1;
    }
    // const_cast: registering is invisible to callers except through the fd.
    if (io_uring_register_eventfd(const_cast<io_uring*>(&ring_), fd.get()) < 0) {
      return -1;
    }
    event_fd_ = std::move(fd);
  }
  return event_fd_.get();
}

Status FileDevice::register_buffers(std::span<const std::span<std::byte>> regions) {
  if (in_flight_ != 0) {
    return Error(EBUSY, path_ + ": register_buffers with requests in flight");
  }
  if (regions.size() > 16) {
    return Error(EINVAL, path_ + ": at most 16 buffer regions can be registered");
  }
  if (!regions_.empty()) {
    io_uring_unregister_buffers(&ring_);
    regions_.clear();
    region_iovecs_.clear();
  }
  if (regions.empty()) {
    return ok_status();
  }
  std::array<iovec, 16> iovecs{};
  for (size_t i = 0; i < regions.size(); ++i) {
    iovecs[i].iov_base = regions[i].data();
    iovecs[i].iov_len = regions[i].size();
  }
  int rc = io_uring_register_buffers(&ring_, iovecs.data(), static_cast<unsigned>(regions.size()));
  if (rc < 0) {
    return Error(-rc, path_ + ": io_uring buffer registration failed");
  }
  for (size_t i = 0; i < regions.size(); ++i) {
    regions_.push_back({regions[i].data(), regions[i].data() + regions[i].size()});
    region_iovecs_.push_back(iovecs[i]);
  }
  return ok_status();
}

void FileDevice::submit(IoRequest& request) {
  ++in_flight_;
  int invalid = detail::validate_request(request, size_bytes_, kBlockSize);
  if (invalid == 0 && (request.op == IoOp::kRead || request.op == IoOp::kWrite) &&
      request.length > kMaxTransferBytes) {
    invalid = -EINVAL;
  }
  if (invalid != 0) {
    request.device_result = invalid;
    detail::queue_push(local_head_, local_tail_, request);
    return;
  }
  request.device_result = 0;  // bytes transferred so far
  // SQEs are written on the thread that owns the ring: here if that is the
  // caller and submit_batch asks for early submission, else in kick()/poll().
  detail::queue_push(waiting_head_, waiting_tail_, request);
  if (options_.submit_batch != 0 && caller_may_enter()) {
    fill_ring();
    if (unsubmitted_ + guest_unsubmitted_ >= options_.submit_batch) {
      submit_prepared();
    }
  }
}

void FileDevice::prepare(IoRequest& request) {
  if (request.op == IoOp::kDiscard && is_block_device_ && !uring_discard_supported_) {
    // Old kernel: no asynchronous block discard. Run it here, in the owning
    // thread, and complete it at the next poll.
    uint64_t range[2] = {request.offset, request.length};
    int result = ::ioctl(fd_.get(), BLKDISCARD, &range) == 0 ? 0 : -errno;
    counters_.sync_discards++;
    if (result == -EOPNOTSUPP) {
      counters_.discards_ignored++;  // a hint the device cannot take; see header
      result = 0;
    }
    request.device_result = result;
    detail::queue_push(local_head_, local_tail_, request);
    return;
  }
  if (request.op == IoOp::kRead || request.op == IoOp::kWrite) {
    const auto done = static_cast<uint64_t>(request.device_result);
    const FixedBufferWindow* window =
        FixedBufferWindows::current().find(request.buffer + done, request.length - done);
    if (window != nullptr) {
      prepare_guest(request, *window);
      return;
    }
    if (request.zero_fill && request.op == IoOp::kRead) {
      fill_zeros_locally(request);
      return;
    }
  }
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  // in_ring_ < queue_depth == SQ size guarantees a free SQE.
  const int fd = ring_fd_for_sqe();
  const auto done = static_cast<uint64_t>(request.device_result);
  switch (request.op) {
    case IoOp::kRead:
    case IoOp::kWrite: {
      std::byte* buffer = request.buffer + done;
      auto length = static_cast<unsigned>(request.length - done);
      auto offset = request.offset + done;
      const Region* region = nullptr;
      for (const Region& r : regions_) {
        if (buffer >= r.begin && buffer + length <= r.end) {
          region = &r;
          break;
        }
      }
      if (region != nullptr) {
        auto index = static_cast<int>(region - regions_.data());
        if (request.op == IoOp::kRead) {
          io_uring_prep_read_fixed(sqe, fd, buffer, length, offset, index);
        } else {
          io_uring_prep_write_fixed(sqe, fd, buffer, length, offset, index);
        }
        counters_.fixed_buffer_ios++;
      } else if (request.op == IoOp::kRead) {
        io_uring_prep_read(sqe, fd, buffer, length, offset);
      } else {
        io_uring_prep_write(sqe, fd, buffer, length, offset);
      }
      if (request.op == IoOp::kWrite && request.fua) {
        sqe->rw_flags = RWF_DSYNC;
      }
      break;
    }
    case IoOp::kFlush:
      io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
      break;
    case IoOp::kDiscard:
      if (is_block_device_) {
        io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd, nullptr, 0, 0);
        sqe->cmd_op = BLOCK_URING_CMD_DISCARD;
        sqe->addr = request.offset;
        sqe->addr3 = request.length;
      } else {
        io_uring_prep_fallocate(sqe, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                static_cast<off_t>(request.offset),
                                static_cast<off_t>(request.length));
      }
      break;
    case IoOp::kWriteZeroes:
      io_uring_prep_fallocate(
          sqe, fd,
          (zero_range_supported_ ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE) |
              FALLOC_FL_KEEP_SIZE,
          static_cast<off_t>(request.offset), static_cast<off_t>(request.length));
      break;
  }
  if (options_.register_file) {
    sqe->flags |= IOSQE_FIXED_FILE;
  }
  io_uring_sqe_set_data(sqe, &request);
  ++in_ring_;
  ++unsubmitted_;
}

void FileDevice::fill_zeros_locally(IoRequest& request) {
  const auto done = static_cast<uint64_t>(request.device_result);
  std::memset(request.buffer + done, 0, request.length - done);
  counters_.zero_fills++;
  request.device_result = 0;
  detail::queue_push(local_head_, local_tail_, request);
}

int FileDevice::zero_fd() {
  if (!zero_fd_) {
    zero_fd_.reset(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
  }
  return zero_fd_.get();
}

void FileDevice::prepare_guest(IoRequest& request, const FixedBufferWindow& window) {
  const auto done = static_cast<uint64_t>(request.device_result);
  const FixedBufferPiece piece = FixedBufferWindows::piece(window, request.buffer + done);
  const bool zeros = request.zero_fill && request.op == IoOp::kRead;
  const int fd = zeros ? zero_fd() : fd_.get();
  if (guest_ring_ != nullptr && guest_ring_ != piece.ring) {
    submit_guests();  // SQEs of one ring go out before another ring's
  }
  io_uring_sqe* sqe = fd < 0 ? nullptr : io_uring_get_sqe(piece.ring);
  if (sqe == nullptr && fd >= 0) {
    // The queue's SQ is full of this batch: hand it over and retry.
    io_uring_submit(piece.ring);
    guest_unsubmitted_ = 0;
    sqe = io_uring_get_sqe(piece.ring);
  }
  if (sqe == nullptr) {
    request.device_result = fd < 0 ? -EIO : -EBUSY;
    detail::queue_push(local_head_, local_tail_, request);
    return;
  }
  const auto length = static_cast<unsigned>(request.length - done);
  // The window's ring does not have our file registered: plain fd.
  // Not an address in this process: an offset into the fixed buffer (or,
  // for user-registered buffers, their address), as READ_FIXED takes it.
  // NOLINTNEXTLINE(performance-no-int-to-ptr)
  auto* addr = reinterpret_cast<void*>(static_cast<uintptr_t>(piece.addr));
  if (request.op == IoOp::kRead) {
    io_uring_prep_read_fixed(sqe, fd, addr, length, zeros ? 0 : request.offset + done, piece.index);
  } else {
    io_uring_prep_write_fixed(sqe, fd, addr, length, request.offset + done, piece.index);
    if (request.fua) {
      sqe->rw_flags = RWF_DSYNC;
    }
  }
  request.device_guest.on_cqe = &FileDevice::on_guest_cqe;
  request.device_guest.owner = this;
  io_uring_sqe_set_data64(sqe, ring_guest_user_data(request.device_guest));
  guest_ring_ = piece.ring;
  ++guest_unsubmitted_;
  ++in_guest_;
  if (zeros) {
    counters_.zero_fills++;
  } else {
    counters_.zero_copy_ios++;
  }
}

void FileDevice::submit_guests() {
  if (guest_unsubmitted_ > 0 && guest_ring_ != nullptr) {
    // The caller runs on the ring's owning thread (windows are per thread).
    io_uring_submit(guest_ring_);
    counters_.submit_calls++;
  }
  guest_unsubmitted_ = 0;
  guest_ring_ = nullptr;
}

void FileDevice::on_guest_cqe(RingGuest& guest, int32_t result) {
  auto* self = static_cast<FileDevice*>(guest.owner);
  auto* request = reinterpret_cast<IoRequest*>(reinterpret_cast<std::byte*>(&guest) -
                                               offsetof(IoRequest, device_guest));
  self->complete_guest(*request, result);
}

void FileDevice::complete_guest(IoRequest& request, int result) {
  --in_guest_;
  if (result < 0) {
    finish(request, result);
    return;
  }
  const uint64_t done =
      static_cast<uint64_t>(request.device_result) + static_cast<unsigned>(result);
  if (done >= request.length) {
    finish(request, 0);
  } else if (result == 0) {
    finish(request, -EIO);  // no progress: the file shrank under us
  } else {
    counters_.short_transfers++;
    request.device_result = static_cast<int>(done);
    detail::queue_push(waiting_head_, waiting_tail_, request);
  }
}

void FileDevice::fill_ring() {
  while (waiting_head_ != nullptr && in_ring_ < options_.queue_depth) {
    prepare(*detail::queue_pop(waiting_head_, waiting_tail_));
  }
}

void FileDevice::submit_prepared() {
  submit_guests();
  if (unsubmitted_ == 0) {
    return;
  }
  int rc = io_uring_submit(&ring_);
  counters_.submit_calls++;
  if (rc > 0) {
    counters_.sqes_submitted += static_cast<unsigned>(rc);
    unsubmitted_ -= std::min(unsubmitted_, static_cast<unsigned>(rc));
  }
  // rc < 0 (-EAGAIN, -EBUSY, -EINTR): the SQEs stay queued in the SQ and go
  // with the next submission; nothing is lost.
}

void FileDevice::kick() {
  bind_to_current_thread();
  fill_ring();
  submit_prepared();
}

bool FileDevice::kernel_has_completions_to_post() const {
  // Set by the kernel (TASKRUN_FLAG) when completions wait for us to enter.
  unsigned flags = __atomic_load_n(ring_.sq.kflags, __ATOMIC_ACQUIRE);
  return (flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0;
}

void FileDevice::finish(IoRequest& request, int result) {
  --in_flight_;
  request.on_complete(request, result);
}

unsigned FileDevice::complete_local() {
  // Detaches first: callbacks may submit invalid requests again.
  return detail::queue_drain(local_head_, local_tail_, [this](IoRequest& request) {
    finish(request, request.device_result);
  });
}

unsigned FileDevice::reap() {
  unsigned completed = 0;
  std::array<io_uring_cqe*, kReapBatch> cqes{};
  struct Done {
    IoRequest* request;
    int result;
  };
  std::array<Done, kReapBatch> batch{};
  for (;;) {
    unsigned count = io_uring_peek_batch_cqe(&ring_, cqes.data(), kReapBatch);
    if (count == 0) {
      break;
    }
    for (unsigned i = 0; i < count; ++i) {
      batch[i] = {static_cast<IoRequest*>(io_uring_cqe_get_data(cqes[i])), cqes[i]->res};
    }
    io_uring_cq_advance(&ring_, count);
    in_ring_ -= count;
    for (unsigned i = 0; i < count; ++i) {
      IoRequest& request = *batch[i].request;
      int res = batch[i].result;
      if (request.op == IoOp::kRead || request.op == IoOp::kWrite) {
        if (res >= 0) {
          uint64_t done = static_cast<uint64_t>(request.device_result) + static_cast<unsigned>(res);
          if (done < request.length) {
            if (res == 0) {
              finish(request, -EIO);  // no progress: the file shrank under us
              ++completed;
              continue;
            }
            // Short transfer: queue the rest again.
            counters_.short_transfers++;
            request.device_result = static_cast<int>(done);
            detail::queue_push(waiting_head_, waiting_tail_, request);
            continue;
          }
          res = 0;
        }
      } else if (request.op == IoOp::kDiscard && is_block_device_ && res == -EOPNOTSUPP &&
                 uring_discard_supported_) {
        // Kernel without BLOCK_URING_CMD_DISCARD (< 6.12): retry this one
        // and all later discards with the synchronous ioctl.
        uring_discard_supported_ = false;
        detail::queue_push(waiting_head_, waiting_tail_, request);
        continue;
      } else if (request.op == IoOp::kWriteZeroes && !is_block_device_ && res == -EOPNOTSUPP &&
                 zero_range_supported_) {
        // Filesystem without FALLOC_FL_ZERO_RANGE (tmpfs): punching a hole
        // also makes the range read as zeros.
        zero_range_supported_ = false;
        detail::queue_push(waiting_head_, waiting_tail_, request);
        continue;
      } else if (request.op == IoOp::kDiscard && res == -EOPNOTSUPP) {
        // Discard is a hint: a device that cannot discard has done nothing
        // wrong, and the content of the range is allowed to stay.
        counters_.discards_ignored++;
        res = 0;
      } else if (res > 0) {
        res = 0;
      }
      finish(request, res);
      ++completed;
    }
  }
  return completed;
}

unsigned FileDevice::poll(bool wait) {
  bind_to_current_thread();
  fill_ring();
  submit_guests();
  unsigned completed = complete_local();
  bool entered = false;
  if (in_ring_ > 0) {
    // One io_uring_enter both submits what is prepared and collects
    // completions (with DEFER_TASKRUN they are only posted when we ask).
    int rc = 0;
    if (wait && completed == 0 && io_uring_cq_ready(&ring_) == 0) {
      rc = submit_and_wait();
      entered = true;
      counters_.submit_calls++;
      counters_.waits++;
    } else if (unsubmitted_ > 0 || kernel_has_completions_to_post()) {
      rc = io_uring_submit_and_get_events(&ring_);
      entered = true;
      counters_.submit_calls++;
    }
    if (rc > 0) {
      counters_.sqes_submitted += static_cast<unsigned>(rc);
      unsubmitted_ -= std::min(unsubmitted_, static_cast<unsigned>(rc));
    }
  }
  completed += reap();
  // Invalid requests submitted by the callbacks complete right away; valid
  // ones wait for the next kick()/poll() so they go out in one batch.
  completed += complete_local();
  // A poll that saw no completion and did not enter the kernel found no
  // trace of activity since the last rearm (every completion shows up in
  // the CQ or as the TASKRUN flag, both checked above), so the eventfd is
  // still as that rearm left it: skip the read(2). An owner that polls in a
  // loop before sleeping (a store thread's spin) then makes no syscalls.
  if (event_fd_ && (completed > 0 || entered)) {
    rearm_completion_fd();
  }
  return completed;
}

int FileDevice::submit_and_wait() {
  const unsigned batch = std::min(in_ring_, options_.wait_batch);
  if (batch <= 1 || !ring_min_timeout_) {
    return io_uring_submit_and_wait(&ring_, 1);
  }
  // liburing 2.3 cannot pass min_wait_usec, so this is its submit-and-wait
  // done by hand: publish the prepared SQEs (the kernel reads the SQ tail),
  // then one io_uring_enter that submits them and waits for the batch.
  io_uring_sq& sq = ring_.sq;
  if (sq.sqe_head != sq.sqe_tail) {
    sq.sqe_head = sq.sqe_tail;
    __atomic_store_n(sq.ktail, sq.sqe_tail, __ATOMIC_RELEASE);
  }
  const unsigned to_submit = sq.sqe_tail - __atomic_load_n(sq.khead, __ATOMIC_ACQUIRE);
  // The min timeout ends the wait even with nothing ready unless a longer
  // overall timeout is set; an hour stands for "no limit" (-ETIME then just
  // returns to the caller's loop).
  __kernel_timespec forever{3600, 0};
  io_uring_getevents_arg arg{};
  arg.sigmask = 0;
  arg.sigmask_sz = _NSIG / 8;
  arg.pad = options_.wait_batch_usec;  // min_wait_usec
  arg.ts = reinterpret_cast<uint64_t>(&forever);
  int rc = io_uring_enter2(static_cast<unsigned>(ring_.ring_fd), to_submit, batch,
                           IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                           reinterpret_cast<sigset_t*>(&arg), sizeof(arg));
  return rc == -ETIME ? 0 : rc;
}

void FileDevice::rearm_completion_fd() {
  // The kernel signals the eventfd both when a completion arrives and when
  // our own io_uring_enter posts it, so it is usually readable now even
  // though we have seen everything. Reset it, then re-signal it ourselves if
  // completions did arrive before the reset: they are either in the CQ or
  // flagged as waiting to be posted. Anything arriving after the reset
  // signals on its own.
  uint64_t value = 0;
  [[maybe_unused]] ssize_t n = ::read(event_fd_.get(), &value, sizeof(value));
  if (io_uring_cq_ready(&ring_) > 0 || kernel_has_completions_to_post()) {
    value = 1;
    n = ::write(event_fd_.get(), &value, sizeof(value));
  }
}

}  // namespace ublkvol::dbs
