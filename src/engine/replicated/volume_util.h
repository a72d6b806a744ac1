// Small helpers shared by the replicated volume's files (private): replica
// masks, the monotonic clock, op mapping, the VolumeIo scratch layout, failure
// kinds. Nothing here allocates or locks.
#pragma once

#include <time.h>

#include <cinttypes>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <new>
#include <string>

#include "ublkvol/engine/replica_store.h"
#include "ublkvol/engine/volume.h"

#include "replica_store_util.h"
#include "wake_fd.h"

namespace ublkvol::engine::detail {

inline constexpr uint32_t bit(unsigned r) { return 1U << r; }

inline bool is_mutating(VolumeOp op) {
  return op == VolumeOp::kWrite || op == VolumeOp::kDiscard || op == VolumeOp::kWriteZeroes;
}

inline ReplicaOp replica_op(VolumeOp op) {
  switch (op) {
    case VolumeOp::kRead:
      return ReplicaOp::kRead;
    case VolumeOp::kWrite:
      return ReplicaOp::kWrite;
    case VolumeOp::kFlush:
      return ReplicaOp::kFlush;
    case VolumeOp::kDiscard:
      return ReplicaOp::kDiscard;
    case VolumeOp::kWriteZeroes:
      return ReplicaOp::kWriteZeroes;
  }
  return ReplicaOp::kRead;
}

// What a VolumeIo carries in its scratch while it sits in one of our lists.
struct IoScratch {
  VolumeIo* next;
  int result;
  // Submitted right after all_targets_local() said yes: counted in
  // QueueState::direct_in_flight until its callback ran.
  bool direct;
};
static_assert(sizeof(IoScratch) <= kVolumeIoScratchBytes);

inline IoScratch& scratch(VolumeIo& io) {
  return *std::launder(reinterpret_cast<IoScratch*>(io.scratch));
}

enum class FailKind : uint8_t {
  kNone,
  kIoError,
  kDeadline,
  kThreadDied,
  kOperator,
  kMetadata,
  kRebuildStopped
};

inline const char* to_string(FailKind kind) {
  switch (kind) {
    case FailKind::kNone:
      return "none";
    case FailKind::kIoError:
      return "I/O error";
    case FailKind::kDeadline:
      return "missed the I/O deadline";
    case FailKind::kThreadDied:
      return "store thread died";
    case FailKind::kOperator:
      return "taken out by operator";
    case FailKind::kMetadata:
      return "metadata update failed";
    case FailKind::kRebuildStopped:
      return "its rebuild stopped";
  }
  return "unknown";
}
inline std::string hex(uint64_t v) {
  char buf[20];
  (void)std::snprintf(buf, sizeof(buf), "%016" PRIx64, v);
  return buf;
}

// A 4 KiB-aligned buffer of `size` bytes rounded up to 4 KiB (rebuild and
// verify chunks; never per I/O).
inline AlignedBytes io_buffer(size_t size) {
  return aligned_bytes(4096, (size + 4095) / 4096 * 4096);
}

}  // namespace ublkvol::engine::detail

namespace ublkvol::engine {
// The control-plane files (namespace ublkvol::engine) use these unqualified.
using detail::AlignedBytes;
using detail::bit;
using detail::drain_fd;
using detail::FailKind;
using detail::hex;
using detail::io_buffer;
using detail::signal_fd;
using detail::to_string;
}  // namespace ublkvol::engine
