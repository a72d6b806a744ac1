// Volume: the asynchronous block interface a volume offers to its users
// (the ublk frontend's queue threads, tests, and benchmarks).
//
// Backends:
//   - null:       completes every I/O at once (frontend benchmarking)
//   - memory:     RAM-backed, for frontend tests
//   - replicated: N DBS replicas behind a controller (src/engine)
//
// Threading model (Seastar-like, shared-nothing):
//   A user opens one VolumeQueue per thread that submits I/O (one per ublk
//   hardware queue). A VolumeQueue is used only by the thread that opened it:
//   it submits there, and its completions run there, inside reap(). Work that
//   finishes on other threads (replica store threads) is handed back through
//   a lock-free channel and signalled on wake_fd(), which the queue thread
//   watches in its own event loop (e.g. an io_uring poll/read on the fd).
//   No lock is shared between queues; submitting allocates nothing.
//
// Semantics are a Linux block device with a volatile write cache + FUA:
//   - a completed write is durable after a completed kFlush, or at once if
//     it carried FUA;
//   - kDiscard: the range may read as zeros or old data afterwards, unless
//     VolumeInfo::discard_zeroes says it reads as zeros;
//   - kWriteZeroes: the range reads as zeros afterwards.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "ublkvol/common/result.h"

namespace ublkvol::engine {

enum class VolumeOp : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };

const char* to_string(VolumeOp op);

struct VolumeIo;

// Completion callback: `result` is 0 on success or a negative errno
// (-EIO, -ENOSPC, ...).
using VolumeCallback = void (*)(VolumeIo& io, int result);

// Size of the scratch area every VolumeIo carries for the backend's own
// per-I/O state, so that backends need no allocation per I/O.
inline constexpr size_t kVolumeIoScratchBytes = 256;

// One I/O on a volume. The submitter owns it until `on_complete` has run
// (the ublk frontend embeds one per tag).
struct VolumeIo {
  VolumeOp op = VolumeOp::kRead;
  // Writes only: durable when completed.
  bool fua = false;
  // Byte offset and length, multiples of VolumeInfo::block_size. Ignored
  // for kFlush.
  uint64_t offset = 0;
  uint32_t length = 0;
  // kRead / kWrite: `length` bytes, 4 KiB aligned. Backends read into and
  // write from it directly; it is never copied on the replicated path.
  std::byte* buffer = nullptr;
  // Runs exactly once, inside VolumeQueue::reap() on the submitting thread.
  VolumeCallback on_complete = nullptr;
  void* user_data = nullptr;
  // Backend-private; untouched by submitters.
  alignas(16) std::byte scratch[kVolumeIoScratchBytes]{};
};

// What a volume promises; the ublk frontend turns this into device params.
struct VolumeInfo {
  std::string name;
  uint64_t size_bytes = 0;
  uint32_t block_size = 4096;
  // Largest single I/O the backend accepts, in bytes.
  uint32_t max_io_bytes = 1U << 20U;
  bool supports_discard = true;
  bool supports_write_zeroes = true;
  // Discarded ranges read as zeros.
  bool discard_zeroes = true;
  // The backend has a volatile cache: FLUSH and FUA matter.
  bool volatile_cache = true;
};

// The per-thread submission and completion endpoint of a volume.
class VolumeQueue {
 public:
  virtual ~VolumeQueue() = default;

  // Queues `io`. Never blocks; errors arrive as completions (e.g. -EINVAL for
  // an out-of-range or unaligned request), never from submit itself.
  virtual void submit(VolumeIo& io) = 0;
  // Pushes queued work to backend threads in one batch (one wake-up).
  virtual void kick() = 0;
  // Runs the callbacks of every completed I/O. Returns how many ran.
  virtual unsigned reap() = 0;
  // Readable when reap() has work that arrived from another thread; -1 for
  // backends that complete on the queue's own thread. The fd is an eventfd:
  // the queue thread reads (drains) it before calling reap().
  [[nodiscard]] virtual int wake_fd() const = 0;
  // I/Os submitted whose callbacks have not yet run.
  [[nodiscard]] virtual unsigned in_flight() const = 0;
  // Asked right before submit() of a READ/WRITE (same thread, no lock, no
  // allocation): true if every replica the next request can reach - reads,
  // read retries and repairs, writes incl. a rebuilding target - does its
  // I/O on this queue's thread through a dbs::FileDevice, so its buffer may
  // be an address in this thread's zero-copy window (docs/zero-copy.md).
  // A queue that answered true keeps that request away from any replica
  // that joins later. Default: false (the buffer must be ordinary memory).
  [[nodiscard]] virtual bool all_targets_local() { return false; }
};

class Volume {
 public:
  virtual ~Volume() = default;

  [[nodiscard]] virtual const VolumeInfo& info() const = 0;
  // Opens queue `index` (0 <= index < the queue count the volume was created
  // for). Call from the thread that will use it.
  virtual Result<std::unique_ptr<VolumeQueue>> open_queue(unsigned index) = 0;
};

// Backends that need no engine: used by the frontend's tests and benchmarks.
struct SimpleVolumeOptions {
  std::string name = "null";
  uint64_t size_bytes = 0;
  uint32_t block_size = 4096;
  unsigned queues = 1;
  // Memory backend only: keep the data in this file, mapped shared (e.g. on
  // tmpfs), instead of anonymous memory, so that it outlives the process -
  // what the frontend's daemon-restart tests need. Created if missing; an
  // existing file must be empty or exactly size_bytes long.
  std::string backing_file;
};
// Every I/O succeeds at once; reads return whatever the buffer held.
Result<std::unique_ptr<Volume>> make_null_volume(const SimpleVolumeOptions& options);
// RAM-backed: reads return what was written (zeros if never written).
// Safe to use from several queues at once (per-block-range locking is the
// backend's business; it is a test backend, not a fast path).
Result<std::unique_ptr<Volume>> make_memory_volume(const SimpleVolumeOptions& options);

}  // namespace ublkvol::engine
