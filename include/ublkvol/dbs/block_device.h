// BlockDevice: the asynchronous I/O interface everything in DBS sits on.
//
// Implementations:
//   - file / block device opened O_DIRECT, driven by io_uring  (file_device.h)
//   - in-memory device                                          (memory_device.h)
//   - fault-injecting wrapper: errors, delays, hangs            (fault_device.h)
//   - crash-recording wrapper: logs writes and flushes so tests
//     can build every image a power cut could leave behind      (crash_device.h)
//
// Threading: a BlockDevice is owned by exactly one thread (the DBS store
// thread); none of its methods are thread-safe. Submission never blocks and
// never allocates: the caller owns each IoRequest (usually embedded in its own
// per-I/O state) until its completion callback has run.
//
// Semantics follow a Linux block device with a volatile write cache:
//   - a completed write may still be lost by a power cut, unless it had FUA
//     or a FLUSH completed after it;
//   - FLUSH makes every write that completed before the FLUSH was submitted
//     durable;
//   - DISCARD tells the device the range's content no longer matters (reads
//     may return old data or zeros); WRITE_ZEROES makes it read as zeros.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/fixed_buffer.h"

namespace ublkvol::dbs {

enum class IoOp : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };

const char* to_string(IoOp op);

struct IoRequest;

// Completion callback: `result` is 0 on success or a negative errno.
using IoCallback = void (*)(IoRequest& request, int result);

// One I/O. Fill it, submit it, keep it alive until `on_complete` runs.
struct IoRequest {
  IoOp op = IoOp::kRead;
  // Writes only: durable when completed (forced unit access).
  bool fua = false;
  // Byte offset and length, both multiples of the device's block size.
  // Ignored for kFlush.
  uint64_t offset = 0;
  uint64_t length = 0;
  // kRead / kWrite: `length` bytes, aligned to kIoAlignment. May lie in a
  // zero-copy window (fixed_buffer.h): memory only the device's ring reaches.
  std::byte* buffer = nullptr;
  // kRead only: fill `buffer` with zeros instead of reading the device (a
  // hole DBS answers for a buffer it must not touch, fixed_buffer.h).
  bool zero_fill = false;
  // Runs exactly once, from BlockDevice::poll(), on the owning thread.
  IoCallback on_complete = nullptr;
  // Free for the submitter (e.g. a pointer back to its own state).
  void* user_data = nullptr;

  // Reserved for the BlockDevice that holds the request between submit() and
  // the callback: an intrusive queue link and a parked result, so devices can
  // queue any number of requests without allocating. Submitters never touch
  // them. A wrapper device (fault, crash) forwards its own inner requests, so
  // each request is only ever held by one device at a time.
  IoRequest* device_next = nullptr;
  int device_result = 0;
  // A device that issues the request on another owner's ring (zero copy) is
  // called back through this.
  RingGuest device_guest;
};

// Every data buffer handed to a BlockDevice must be aligned to this (O_DIRECT).
inline constexpr size_t kIoAlignment = 4096;

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // Name for messages: a path, or a description like "memory(64 MiB)".
  [[nodiscard]] virtual std::string_view name() const = 0;
  // Usable size in bytes (a multiple of block_size()).
  [[nodiscard]] virtual uint64_t size_bytes() const = 0;
  // Smallest I/O unit, in bytes. 4096 for every device DBS uses.
  [[nodiscard]] virtual uint32_t block_size() const = 0;

  // Queues `request`. It reaches the device at the latest at the next kick()
  // or poll() (a device may send it sooner, e.g. FileDevice's submit_batch).
  // Invalid requests (unaligned, out of range) complete with -EINVAL.
  virtual void submit(IoRequest& request) = 0;
  // Sends every queued request to the device in one batch.
  virtual void kick() = 0;
  // Sends queued requests, then runs the callbacks of completed ones. With
  // `wait` and at least one request in flight, blocks until one completes.
  // Returns the number of callbacks run.
  virtual unsigned poll(bool wait) = 0;
  // Requests submitted whose callbacks have not yet run.
  [[nodiscard]] virtual unsigned in_flight() const = 0;
  // An fd that becomes readable when poll() has completions to run, so an
  // owning thread can sleep on several devices at once; -1 if the device
  // only makes progress inside poll() (memory device).
  [[nodiscard]] virtual int completion_fd() const { return -1; }
};

// Synchronous helpers for control paths and tests: submit one request and
// poll until it completes (running any other completions that arrive).
Status read_sync(BlockDevice& device, uint64_t offset, std::span<std::byte> buffer);
Status write_sync(BlockDevice& device, uint64_t offset, std::span<const std::byte> buffer,
                  bool fua = false);
Status flush_sync(BlockDevice& device);
Status discard_sync(BlockDevice& device, uint64_t offset, uint64_t length);
Status write_zeroes_sync(BlockDevice& device, uint64_t offset, uint64_t length);

}  // namespace ublkvol::dbs
