// ReplicaStore: what the replicated engine needs from the place one replica
// of a volume lives in. It decouples the engine from DBS:
//   - RawReplicaStore (raw_replica_store.h) keeps one replica directly on a
//     BlockDevice (a small metadata header + a dirty-region bitmap + data);
//     the engine is built and tested on it;
//   - a DBS adapter (a volume inside a Direct Block Store) implements the
//     same interface once DBS exists.
//
// Threading: a ReplicaStore is owned by exactly one thread (its StoreThread);
// nothing here is thread-safe. Data requests are asynchronous: submit(), then
// poll() runs callbacks. Metadata operations are synchronous control-path
// calls made on the owning thread (StoreThread::call); they may poll the
// underlying device, so data callbacks can run inside them.
//
// Persistent per-replica metadata (ReplicaMeta) carries what the engine needs
// to survive a whole-process crash (docs/engine.md, "Generations"):
//   - the generation id the replica is in sync with (0: not in sync with any:
//     fresh, or in the middle of a rebuild), plus the history of earlier ids;
//   - a dirty-region bitmap: the store marks the region(s) of every write,
//     discard and write-zeroes DURABLY BEFORE the data request is issued
//     (group-committed, an activity log in DRBD terms). Bits are cleared only
//     by clear_dirty(), which the engine calls when every replica is in sync
//     and flushed. So the bitmap always covers every region that could differ
//     between this replica and another one that was in sync at `bitmap_base`;
//   - rebuild state: the target generation and the copy watermark, so an
//     interrupted rebuild resumes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ublkvol/common/result.h"

namespace ublkvol::engine {

enum class ReplicaOp : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };

const char* to_string(ReplicaOp op);

struct ReplicaIo;
using ReplicaIoCallback = void (*)(ReplicaIo& io, int result);

// Bytes of per-request private state a store may keep inside a ReplicaIo
// (e.g. the BlockDevice IoRequest or the DBS StoreIo), so stores never
// allocate per request.
inline constexpr size_t kReplicaIoStoreScratchBytes = 128;

// One data request to one replica. The submitter owns it until on_complete
// has run. Data is never copied: reads land in, writes go out of, `buffer`.
struct ReplicaIo {
  ReplicaOp op = ReplicaOp::kRead;
  // Writes: durable when completed.
  bool fua = false;
  // Writes only: do not mark the dirty bitmap. Used by rebuild copies,
  // which are made durable (flush) before the rebuild watermark moves past
  // them, so they never need a resync of their own.
  bool untracked = false;
  // Engine routing (replica index within the volume, submitting queue).
  uint8_t replica = 0;
  uint8_t queue = 0;
  uint32_t length = 0;
  // Byte offset in the replica's address space (the volume's), multiples of
  // 4096. Ignored for kFlush.
  uint64_t offset = 0;
  // kRead / kWrite: `length` bytes, 4096-aligned.
  std::byte* buffer = nullptr;
  // Set by whoever submits to the ReplicaStore (the StoreThread).
  ReplicaIoCallback on_complete = nullptr;
  void* user_data = nullptr;
  // Filled before on_complete runs (0 or a negative errno); the engine
  // reads it after the completion crosses back to the queue thread.
  int result = 0;
  // The engine's back pointer to its per-I/O state (stores never touch it).
  void* engine_tag = nullptr;
  // Store-private.
  ReplicaIo* store_next = nullptr;
  alignas(16) std::byte store_scratch[kReplicaIoStoreScratchBytes]{};
};

// Generation ids are random non-zero 64-bit values (DRBD-style UUIDs): two
// replicas that each moved on independently can never end up with equal ids.
inline constexpr size_t kGenerationHistory = 8;
// Capacity of the in-sync set (ReplicaMeta::in_sync): the engine's
// kMaxReplicas (replicated_volume.h checks they agree).
inline constexpr size_t kInSyncSetSize = 4;

struct ReplicaMeta {
  // The volume this replica belongs to (0 until the engine first opens it).
  uint64_t volume_uuid = 0;
  // Formatted and never opened by the engine: content is all zeros.
  bool fresh = true;
  // The generation this replica's data is consistent with; 0 if none.
  uint64_t generation = 0;
  // Earlier generations this replica was in sync with, newest first, 0-padded.
  std::array<uint64_t, kGenerationHistory> history{};
  // The generation at which the dirty bitmap was last cleared (0: never).
  uint64_t bitmap_base = 0;
  // Rebuild target state: while `rebuilding`, the replica is being brought to
  // generation `rebuild_generation`; everything below `rebuild_watermark`
  // (bytes) has been copied and kept current by live writes.
  bool rebuilding = false;
  uint64_t rebuild_generation = 0;
  uint64_t rebuild_watermark = 0;
  // This replica's identity: a random non-zero id the engine assigns when it
  // first opens the replica (0: not yet assigned, e.g. written by an older
  // version).
  uint64_t replica_id = 0;
  // The ids of every replica in sync at `generation` (this one included),
  // 0-padded; written at every generation bump and before a rebuilt replica
  // joins the in-sync set. All zero: unknown (an older format). open()
  // refuses to start on replicas at the newest present generation when a
  // member of this set is missing: it may have moved on (docs/engine.md
  // "In-sync sets").
  std::array<uint64_t, kInSyncSetSize> in_sync{};
};

class ReplicaStore {
 public:
  virtual ~ReplicaStore() = default;

  // For messages: e.g. "raw(/dev/shm/r0)".
  [[nodiscard]] virtual std::string_view name() const = 0;
  // The replica's address space in bytes (multiple of 4096).
  [[nodiscard]] virtual uint64_t size_bytes() const = 0;

  // ---- data path (owning thread, never blocks, never allocates) ----
  // Invalid requests (range, alignment) complete with -EINVAL.
  virtual void submit(ReplicaIo& io) = 0;
  virtual void kick() = 0;
  // Runs completed callbacks; with `wait`, blocks until one completes if
  // anything is in flight. Returns the number of callbacks run.
  virtual unsigned poll(bool wait) = 0;
  [[nodiscard]] virtual unsigned in_flight() const = 0;
  // Readable when poll() has work; -1 if progress is made only inside poll().
  [[nodiscard]] virtual int completion_fd() const = 0;

  // ---- metadata (owning thread, synchronous, durable on return) ----
  [[nodiscard]] virtual const ReplicaMeta& meta() const = 0;
  virtual Status write_meta(const ReplicaMeta& meta) = 0;
  // Dirty-region bitmap granularity in bytes (a power of two >= 4096).
  [[nodiscard]] virtual uint64_t region_bytes() const = 0;
  // One byte per region, 1 = dirty (a copy, for the control path).
  [[nodiscard]] virtual std::vector<uint8_t> dirty_regions() const = 0;
  // Clears every bit and sets meta().bitmap_base to meta().generation. The
  // caller guarantees no mutating request is in flight and the data is
  // flushed on every replica.
  virtual Status clear_dirty() = 0;

  // ---- snapshots (stores without snapshots answer ENOTSUP) ----
  virtual Status create_snapshot(std::string_view name);
  virtual Status delete_snapshot(std::string_view name);
  virtual Status revert_snapshot(std::string_view name);
  // Makes `clone` a new replica (of another volume) holding the snapshot's
  // content, with `clone_meta` as its persisted ReplicaMeta. The clone is
  // opened separately (e.g. open_dbs_replica) and never shares later writes
  // with this replica.
  virtual Status clone_snapshot(std::string_view snapshot, std::string_view clone,
                                const ReplicaMeta& clone_meta);
  // Lists snapshot names (empty for stores without snapshots).
  [[nodiscard]] virtual std::vector<std::string> list_snapshots() const { return {}; }
  // Deletes a replica made by clone_snapshot() (undo of a clone that did not
  // reach every replica).
  virtual Status delete_clone(std::string_view clone);
  // Marks every region dirty, durably. Before a revert: a crash between the
  // replicas' reverts leaves replicas with equal generations but different
  // data, and open() then copies the union of their bitmaps - everything.
  virtual Status mark_all_dirty();

  // ---- space (thin provisioning; docs/engine.md "Thin rebuild") ----
  // Byte ranges [offset, offset + length) of the replica's address space
  // that hold data (any layer of a DBS volume's chain), sorted, merged.
  // Everything else reads as zeros. Stores that cannot tell answer the
  // whole range.
  [[nodiscard]] virtual Result<std::vector<std::pair<uint64_t, uint64_t>>> mapped_ranges() const {
    return std::vector<std::pair<uint64_t, uint64_t>>{{0, size_bytes()}};
  }
  struct Space {
    // Bytes the store can still allocate; UINT64_MAX: not thin (a raw
    // replica owns its whole range).
    uint64_t free_bytes = UINT64_MAX;
    // Allocation unit: writing one byte of a unit allocates all of it.
    uint64_t unit_bytes = 4096;
  };
  [[nodiscard]] virtual Result<Space> space() const { return Space{}; }
};

}  // namespace ublkvol::engine
