// Internal pieces of the replicated volume's controller: the per-I/O slot,
// the per-queue state and the internal (control-thread) operations.
// docs/engine.md describes the protocol; impl.h lists the files implementing it.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/engine/replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/volume.h"

#include "store_channel.h"

namespace ublkvol::engine::detail {

// Ordering-table buckets: 64 KiB granules hashed into 8192 counters per queue.
inline constexpr unsigned kBucketShift = 16;
inline constexpr size_t kBuckets = 8192;
// The rebuild and control queues: their depth and their (smaller) table.
inline constexpr unsigned kInternalQueueDepth = 8;
inline constexpr size_t kInternalBuckets = 256;
inline constexpr uint64_t kSeqPending = ~uint64_t{0};

enum class SlotKind : uint8_t { kUser, kCopy, kVerify, kBarrier };

enum class Phase : uint8_t {
  kFree,
  kOrderWait,    // published, waiting for overlapping older requests
  kData,         // user request at the replicas
  kRepairRead,   // read error: re-reading a good replica under the ordering
  kRepairWrite,  // rewriting the bad replica(s)
  kCopyRead,     // rebuild: reading the source
  kCopyWrite,    // rebuild: writing the target(s)
  kVerifyRead,   // verify: reading every in-sync replica
  kGranted,      // barrier: holds the whole range until released
};

struct QueueState;

// A control-thread operation submitted to an internal queue.
struct InternalOp {
  SlotKind kind = SlotKind::kCopy;
  uint64_t offset = 0;
  uint64_t length = 0;
  // kCopy: the replicas written; buffer: `length` bytes, 4 KiB aligned.
  uint32_t dst_mask = 0;
  std::byte* buffer = nullptr;
  // kVerify: one buffer per replica; read_mask: replicas read successfully.
  std::array<std::byte*, kMaxReplicas> buffers{};
  uint32_t read_mask = 0;
  int result = 0;
  bool done = false;
  struct Slot* slot = nullptr;  // kBarrier: to release it
};

// Per-request controller state. Lives in the queue's preallocated pool (not
// in VolumeIo::scratch) because replica sub-requests may outlive the user
// request (a replica dropped on a deadline still owns its sub-request until
// it answers or its store thread is gone).
struct Slot {
  // ---- published ordering entry (read by other queues) ----
  std::atomic<uint64_t> seq{0};  // 0: none; kSeqPending: being published
  std::atomic<uint64_t> begin{0};
  std::atomic<uint64_t> end{0};
  std::atomic<uint64_t> waiters{0};  // queues to wake when released

  // ---- owner-thread only ----
  // The user request; never touched once completed (its owner may reuse it).
  VolumeIo* io = nullptr;
  VolumeOp vop = VolumeOp::kRead;  // io->op, kept for after completion
  InternalOp* op = nullptr;
  SlotKind kind = SlotKind::kUser;
  Phase phase = Phase::kFree;
  bool ordered = false;    // holds an ordering entry
  bool completed = false;  // result delivered
  bool held = false;       // on the held list (generation barrier)
  bool in_fifo = false;
  bool zombie = false;
  bool lingering = false;  // completed, still ordered
  uint64_t my_seq = 0;
  uint64_t b = 0;  // ordered range [b, e)
  uint64_t e = 0;
  uint32_t pending = 0;     // sub-requests at store threads
  uint32_t sent = 0;        // of those, the ones the current phase awaits
  uint32_t dispatched = 0;  // replicas the write went to
  uint32_t acked = 0;
  uint32_t errors = 0;
  uint32_t tried = 0;  // reads: replicas tried
  uint32_t bad = 0;    // reads: replicas that failed (repair targets)
  uint64_t issue_ns = 0;
  Slot* fifo_prev = nullptr;
  Slot* fifo_next = nullptr;
  Slot* next = nullptr;  // free / blocked / held / zombie list link
  std::array<ReplicaIo, kMaxReplicas> sub{};
};

}  // namespace ublkvol::engine::detail
