// Internal pieces of the replicated volume's controller: table sizes and the
// internal (control-thread) operations; the per-I/O slot is in slot.h.
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

#include "slot.h"
#include "store_channel.h"

namespace ublkvol::engine::detail {

// Ordering-table buckets: 64 KiB granules hashed into 8192 counters per queue.
inline constexpr unsigned kBucketShift = 16;
inline constexpr size_t kBuckets = 8192;
// The rebuild and control queues: their depth and their (smaller) table.
inline constexpr unsigned kInternalQueueDepth = 8;
inline constexpr size_t kInternalBuckets = 256;
inline constexpr uint64_t kSeqPending = ~uint64_t{0};

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

}  // namespace ublkvol::engine::detail
