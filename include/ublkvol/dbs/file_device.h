// FileDevice: a BlockDevice on a regular file or a block device, opened
// O_DIRECT and driven by io_uring.
//
// This is the device every production store runs on, so its data path is
// kept as close to raw io_uring as possible:
//   - submit() validates and queues the request in an intrusive FIFO
//     (IoRequest::device_next): no allocation, no syscall. kick() and poll()
//     turn queued requests into SQEs - the SQE's user_data is the IoRequest
//     itself, so no in-flight table is needed - up to `queue_depth` in the
//     kernel at once; the rest stay queued until earlier ones complete.
//   - kick() sends everything prepared with ONE io_uring_submit. poll()
//     submits what is pending and collects completions in the same
//     io_uring_enter (submit-and-wait / submit-and-get-events), then runs the
//     callbacks. With `submit_batch` = N > 0 (default 4), submit() on the
//     owning thread also enters the kernel once N requests are prepared, so
//     requests that completion callbacks submit reach the device in small
//     groups while the rest of the callbacks run; with 0 they all go out
//     with the next kick() or poll() (one syscall per completion batch). An owner
//     that is about to sleep (e.g. on completion_fd()) must kick() first, as
//     block_device.h says.
//   - The ring is set up like fio's: COOP_TASKRUN (no IPIs to run
//     completions), SINGLE_ISSUER + DEFER_TASKRUN (completions are processed
//     in batches when the owner enters the kernel to collect them). The ring
//     is bound to the first thread that calls kick()/poll(); if the device
//     later moves to another thread (e.g. opened and checked on a control
//     thread, then handed to a store thread) while nothing is in the
//     kernel, the ring is transparently rebuilt for the new thread. Moving it
//     with I/O in the kernel is a bug and aborts with a message.
//   - A short read/write (possible on files, e.g. racing a truncate) is
//     resubmitted for the remainder; a transfer that makes no progress fails
//     with -EIO.
//
// How each operation reaches the kernel (all asynchronous via io_uring):
//   READ / WRITE    IORING_OP_READ / IORING_OP_WRITE (READ_FIXED/WRITE_FIXED
//                   for buffers inside a registered region, see
//                   register_buffers()). A buffer inside a zero-copy window
//                   of the calling thread (fixed_buffer.h) goes out as
//                   READ_FIXED/WRITE_FIXED on the window's ring (the ublk
//                   queue's), whose owner hands the CQE back (RingGuest).
//   READ zero_fill  memset of the buffer, or for a windowed buffer a
//                   READ_FIXED from /dev/zero on the window's ring.
//   WRITE + fua     IORING_OP_WRITE with RWF_DSYNC: on a block device this is
//                   a REQ_FUA write (the kernel emulates FUA with a post-flush
//                   if the disk lacks it); on a file the filesystem syncs just
//                   that range. Cheaper than write + fdatasync, which would
//                   flush the whole device cache for every FUA write.
//   FLUSH           IORING_OP_FSYNC with IORING_FSYNC_DATASYNC (fdatasync; on
//                   a block device, a cache flush). It covers every write
//                   that completed before it was submitted (block_device.h).
//   DISCARD         file: IORING_OP_FALLOCATE(PUNCH_HOLE|KEEP_SIZE) - the
//                   blocks are deallocated and read as zeros.
//                   block device: IORING_OP_URING_CMD BLOCK_URING_CMD_DISCARD
//                   (Linux >= 6.12; what BLKDISCARD does, asynchronously). On
//                   older kernels the device falls back, once and for good,
//                   to ioctl(BLKDISCARD) run synchronously inside poll() by
//                   the owning thread (the kernel had no async discard).
//                   A device or filesystem that cannot discard (-EOPNOTSUPP)
//                   completes discards successfully without effect: discard
//                   is a hint (block_device.h), and DBS must not fail for it.
//   WRITE_ZEROES    IORING_OP_FALLOCATE(ZERO_RANGE|KEEP_SIZE): on a file the
//                   range reads as zeros and stays allocated; on a block
//                   device the kernel turns it into the same zero-out that
//                   BLKZEROOUT does (REQ_OP_WRITE_ZEROES, or zero writes).
//                   Filesystems without ZERO_RANGE (tmpfs) get PUNCH_HOLE
//                   instead, which also reads back as zeros.
//   io_uring runs fallocate in its worker pool, so none of these blocks the
//   owning thread.
//
// Geometry: block size 4096. A regular file's size must be a positive
// multiple of 4096; a block device's size is BLKGETSIZE64 rounded down to
// 4096 and its logical block size (BLKSSZGET) must be <= 4096. Writable block
// devices are opened O_EXCL so nothing can mount them underneath us.
//
// One owner: opened for writing, the device holds flock(LOCK_EX) on the file
// (block devices: on the device node, besides O_EXCL) until it is destroyed;
// read-only opens take LOCK_SH. flock locks belong to the open file
// description, so a second open of the same inode conflicts through any
// path (symlink, hard link, d/../d/x) and also within one process. A refused
// open is EBUSY naming who uses the file (describe_device_users(),
// device_users.h). The destructor drops the lock explicitly (the io_uring
// holds its own file reference and lets go asynchronously); an open that
// finds only an exited owner's claim retries for up to 5 s. docs/dbs.md,
// "One owner per store".
//
// completion_fd(): an eventfd registered with the ring on first call (so
// busy-polling owners pay nothing for it). poll() leaves it readable only if
// completions are waiting to be collected (one extra read() per poll once
// the fd is in use).
//
// Destroying a FileDevice with requests in flight is a caller bug; the
// destructor still waits for the kernel to finish with their buffers (it
// does not run their callbacks) when it runs on the owning thread.
//
// Example:
//   FileDeviceOptions options;
//   options.queue_depth = 64;
//   auto device = FileDevice::open("/dev/nvme0n1", options);
//   if (!device.ok()) { log(device.error().to_string()); ... }
#pragma once

#include <liburing.h>
#include <pthread.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/dbs/block_device.h"
#include "ublkvol/dbs/device_users.h"

namespace ublkvol::dbs {

struct FileDeviceOptions {
  // Requests in the kernel at once (SQ size; the CQ is twice that). More
  // may be submitted; they wait in the device's queue.
  unsigned queue_depth = 128;
  // Open O_RDONLY: writes, discards and write-zeroes fail with -EBADF.
  bool read_only = false;
  // Tests and benchmarks: if non-zero and the path is a regular file (or
  // missing), create it and extend it to this many bytes if shorter.
  uint64_t create_size = 0;
  // Register the fd with the ring (IOSQE_FIXED_FILE) to skip the per-I/O
  // file reference counting.
  bool register_file = true;
  // SINGLE_ISSUER + DEFER_TASKRUN ring (see above). Off: a plain
  // COOP_TASKRUN ring usable from any (one-at-a-time) thread; for
  // measurements, and kernels older than 6.1 (also chosen automatically
  // there).
  bool single_issuer = true;
  // Batched waiting (Linux >= 6.12, IORING_FEAT_MIN_TIMEOUT; ignored before):
  // poll(wait=true) sleeps until min(wait_batch, requests in the kernel)
  // completions are ready, or - once `wait_batch_usec` have passed - until at
  // least one is. So a deep queue wakes its owner once per batch instead of
  // once per completion (each wake-up is a context switch), while a lone
  // request is still returned as soon as it completes and no completion
  // waits more than `wait_batch_usec` longer than it would otherwise.
  // 0 or 1 = wake for every completion.
  unsigned wait_batch = 0;
  unsigned wait_batch_usec = 50;
  // Hand prepared requests to the kernel from submit() as soon as this many
  // are waiting for an io_uring_enter, instead of only at the next kick() or
  // poll(); 0 = only there. Only the thread that owns the ring submits early
  // (any other caller's requests wait for its kick()/poll()).
  // Why: a disk that completes requests in bursts (a virtio disk completes
  // most of a QD32 window at once) sits idle while its owner runs the burst's
  // callbacks if their resubmissions are held back for one io_uring_enter;
  // sending them in small groups overlaps that CPU work with the device's.
  // fio does it per request (iodepth_batch_submit=1). On an ext4 file on
  // virtio (4 KiB QD32) 0 gave 0.65-0.84x of fio's IOPS, 4 gave 0.77-1.00x;
  // every enter costs CPU (+0.5 us per I/O at 4, +1.2-1.7 us at 1), which
  // is why it is not 1. docs/performance.md has the measurements.
  unsigned submit_batch = 4;
};

class FileDevice final : public BlockDevice {
 public:
  static constexpr uint32_t kBlockSize = 4096;
  // Largest single read/write: io_uring reports results as int32.
  static constexpr uint64_t kMaxTransferBytes = uint64_t{1} << 30;

  // Opens `path`. Errors name the path and the problem, e.g.
  // "/x/y: cannot open (No such file or directory)" or
  // "/dev/sdb: logical block size 8192 is larger than 4096".
  static Result<std::unique_ptr<FileDevice>> open(const std::string& path,
                                                  const FileDeviceOptions& options = {});

  ~FileDevice() override;
  FileDevice(const FileDevice&) = delete;
  FileDevice& operator=(const FileDevice&) = delete;

  // BlockDevice
  [[nodiscard]] std::string_view name() const override { return path_; }
  [[nodiscard]] uint64_t size_bytes() const override { return size_bytes_; }
  [[nodiscard]] uint32_t block_size() const override { return kBlockSize; }
  void submit(IoRequest& request) override;
  void kick() override;
  unsigned poll(bool wait) override;
  [[nodiscard]] unsigned in_flight() const override { return in_flight_; }
  [[nodiscard]] int completion_fd() const override;

  [[nodiscard]] bool is_block_device() const { return is_block_device_; }
  // The inode (regular file) or device number (block device) opened: equal
  // for every path that reaches the same store.
  [[nodiscard]] const DeviceIdentity& identity() const { return identity_; }
  [[nodiscard]] const FileDeviceOptions& options() const { return options_; }

  // Registers up to 16 long-lived buffer regions (e.g. a store's buffer pool
  // or ublk tag buffers) with the ring. Reads and writes whose buffer lies
  // entirely inside one of them then use READ_FIXED/WRITE_FIXED, which skips
  // pinning the pages on every I/O. Replaces any earlier registration; must
  // be called with nothing in flight. The regions must outlive the device or
  // the next register_buffers() call.
  Status register_buffers(std::span<const std::span<std::byte>> regions);

  // Ops issued to the kernel, for tests and benchmarks.
  struct Counters {
    uint64_t submit_calls = 0;      // io_uring_enter calls (submit and/or wait)
    uint64_t waits = 0;             // of which slept for completions
    uint64_t sqes_submitted = 0;    // SQEs handed over
    uint64_t short_transfers = 0;   // reads/writes resubmitted for a remainder
    uint64_t fixed_buffer_ios = 0;  // reads/writes that used a registered buffer
    uint64_t sync_discards = 0;     // BLKDISCARD fallbacks run inside poll()
    uint64_t discards_ignored = 0;  // discards the device does not support
    uint64_t ring_rebuilds = 0;     // ring moved to another owning thread
    uint64_t zero_copy_ios = 0;     // reads/writes issued on a zero-copy window's ring
    uint64_t zero_fills = 0;        // zero_fill reads (holes) answered without the file
  };
  [[nodiscard]] const Counters& counters() const { return counters_; }

 private:
  struct Region {
    std::byte* begin;
    std::byte* end;
  };

  FileDevice(std::string path, const FileDeviceOptions& options);
  Status init(const std::string& path);
  // flock(LOCK_EX) (LOCK_SH when read-only) on fd_, see the header comment.
  Status lock();
  void release_lock();
  // Runs `try_claim` (0 or an errno) until it succeeds. EBUSY/EWOULDBLOCK
  // while a live user blocks the claim fails at once with EBUSY naming the
  // users; while only an exited owner's claim is left (its io_uring drops
  // the file asynchronously), it is retried for up to 5 s. Who blocks: for
  // an O_EXCL open of a block device any live opener, mount or holder; for
  // the flock only a live lock holder (an fd merely open does not conflict).
  enum class Claim : uint8_t { kExclusiveOpen, kLock };
  Status wait_for_claim(const std::function<int()>& try_claim, Claim claim, const char* what);
  // Creates the ring and registers the file, buffers and eventfd with it.
  Status setup_ring();
  void teardown_ring();
  // Binds the ring to the calling thread (see header comment).
  void bind_to_current_thread();
  // The ring is usable and the calling thread may enter it (it is the
  // owner, or the ring is not single-issuer).
  [[nodiscard]] bool caller_may_enter() const;

  // Moves queued requests into free SQEs.
  void fill_ring();
  // Writes the SQE for `request` (or its remainder after a short transfer).
  void prepare(IoRequest& request);
  // Hands prepared SQEs to the kernel.
  void submit_prepared();
  // Runs callbacks for requests completed without the ring (invalid ones,
  // synchronous fallbacks). Returns how many.
  unsigned complete_local();
  // Reaps CQEs and runs their callbacks. Returns how many callbacks ran.
  unsigned reap();
  void finish(IoRequest& request, int result);
  [[nodiscard]] int ring_fd_for_sqe() const { return options_.register_file ? 0 : fd_.get(); }
  [[nodiscard]] bool kernel_has_completions_to_post() const;
  // poll(wait) with something in the ring and nothing ready: submits what
  // is prepared and sleeps (batched, see FileDeviceOptions::wait_batch).
  int submit_and_wait();
  void rearm_completion_fd();
  // Zero copy (fixed_buffer.h): the read/write of `request` (or its
  // remainder) on `window`'s ring; a zero_fill read into ordinary memory.
  void prepare_guest(IoRequest& request, const FixedBufferWindow& window);
  void fill_zeros_locally(IoRequest& request);
  void submit_guests();
  static void on_guest_cqe(RingGuest& guest, int32_t result);
  void complete_guest(IoRequest& request, int result);
  // /dev/zero, opened on first use (zero_fill reads into windows).
  int zero_fd();

  std::string path_;
  FileDeviceOptions options_;
  UniqueFd fd_;
  mutable UniqueFd event_fd_;  // created lazily by completion_fd()
  io_uring ring_{};
  bool ring_initialised_ = false;
  bool ring_enabled_ = false;        // R_DISABLED rings start disabled
  bool ring_single_issuer_ = false;  // what setup_ring() actually got
  bool ring_min_timeout_ = false;    // kernel supports batched waits
  pthread_t owner_{};                // thread the ring is bound to, once enabled
  bool is_block_device_ = false;
  bool locked_ = false;
  DeviceIdentity identity_;
  bool uring_discard_supported_ = true;
  bool zero_range_supported_ = true;
  uint64_t size_bytes_ = 0;

  unsigned in_flight_ = 0;    // submitted to us, callback not yet run
  unsigned in_ring_ = 0;      // SQEs prepared or owned by the kernel
  unsigned unsubmitted_ = 0;  // SQEs prepared, not yet handed over
  // Not yet in the ring: over queue depth, or waiting for a synchronous
  // fallback. Linked through IoRequest::device_next.
  IoRequest* waiting_head_ = nullptr;
  IoRequest* waiting_tail_ = nullptr;
  // Completed outside the ring, callbacks pending (result in device_result).
  IoRequest* local_head_ = nullptr;
  IoRequest* local_tail_ = nullptr;

  // Zero copy: requests on other rings, SQEs written there but not yet
  // submitted (to guest_ring_; one ring at a time, see prepare_guest()).
  unsigned in_guest_ = 0;
  unsigned guest_unsubmitted_ = 0;
  io_uring* guest_ring_ = nullptr;
  UniqueFd zero_fd_;

  std::vector<Region> regions_;
  std::vector<iovec> region_iovecs_;  // for re-registering after a rebuild
  Counters counters_;
};

}  // namespace ublkvol::dbs
