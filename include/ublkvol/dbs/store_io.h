// StoreIo: one asynchronous data request to a Store (store.h).
//
// The caller owns the StoreIo (usually embedded in its own per-I/O state),
// fills the public fields, calls Store::submit(), and keeps it alive until
// `on_complete` has run. The store never allocates per request and never
// copies data: reads land in, and writes go out of, `buffer` directly
// (it must be aligned to kIoAlignment, 4096).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ublkvol::dbs {

using VolumeId = uint32_t;
using SnapshotId = uint32_t;

enum class StoreOp : uint8_t {
  kRead,
  kWrite,
  // Both make the range read as zeros afterwards (deterministic, so replicas
  // agree). Blocks only the volume holds are unmapped and their space freed
  // and discarded on the device; blocks a snapshot still holds are
  // overwritten with zeros in the volume's own layer (the snapshot is never
  // touched).
  kDiscard,
  kWriteZeroes,
  // Makes every write completed before the flush was submitted durable
  // (data flush, then metadata commit, then device flush). Group-committed.
  kFlush,
};

const char* to_string(StoreOp op);

struct StoreIo;
// `result`: 0, or a negative errno (-EINVAL bad range/alignment, -ENOENT no
// such volume, -ENOSPC store full, -EROFS write to a snapshot, -EIO device
// error or the store failed a metadata commit).
using StoreIoCallback = void (*)(StoreIo& io, int result);

struct StoreIo {
  StoreOp op = StoreOp::kRead;
  // Writes: durable on completion (the store commits before completing).
  bool fua = false;
  // Target: a volume, or (reads only, when `snapshot` != 0) a snapshot.
  VolumeId volume = 0;
  SnapshotId snapshot = 0;
  // Byte range, multiples of 4096. Ignored for kFlush.
  uint64_t offset = 0;
  uint64_t length = 0;
  // kRead / kWrite: `length` bytes, 4096-aligned.
  std::byte* buffer = nullptr;
  // Runs exactly once, from Store::poll(), on the owning thread.
  StoreIoCallback on_complete = nullptr;
  void* user_data = nullptr;

  // Store-private state; submitters never touch it.
  StoreIo* store_next = nullptr;
  uint64_t store_cursor = 0;   // bytes already issued
  uint32_t store_pending = 0;  // device requests outstanding
  int store_result = 0;
  void* store_layer = nullptr;  // target layer, resolved at submit
  bool store_internal = false;  // the store's own commit waiter
  bool store_remapped = false;  // changed a block mapping (journaled before completion)
};

}  // namespace ublkvol::dbs
