// Store: a Direct Block Store (DBS) on one BlockDevice.
//
// A store holds thin-provisioned volumes and their snapshots and clones
// (docs/dbs.md explains the model, docs/on-disk-format.md the layout):
//   - space is handed out in extents (default 1 MiB) on a volume's first write
//     to a logical extent; every extent has a 256-bit map of the blocks it
//     holds, so a write after a snapshot redirects just that 4 KiB block into
//     the volume's own extent - nothing is ever copied on the write path;
//   - every volume head and every snapshot is a *layer*; reads fall through
//     the layer chain block by block; blocks no layer holds read as zeros;
//   - snapshot create/clone are O(1) metadata commits; snapshot delete merges
//     the snapshot into its only child; a snapshot that still has several
//     children (clones) is hidden and merged once a single child is left;
//   - freed space (discard, delete, revert) is reused - but only after the
//     free is committed, so no crash can expose one volume's data to another.
//
// Crash consistency (DESIGN.md guarantee 3): metadata changes of the data path
// (new extents, block bits, frees) are committed at FLUSH: device flush (data
// durable) -> checksummed journal commit -> device flush. A write to a block
// the volume already holds costs no metadata I/O at all.
// Process crashes (guarantee 5): a request that changes a block mapping (first
// write to a block, redirect-on-write after a snapshot, discard/write-zeroes)
// completes only after a journal commit holding the new mapping was written -
// with no device flush after it, so a killed process loses no completed write
// while a power cut still shows old-or-new (the data of such a write is made
// durable first - a device flush ahead of the record, or FUA - so its record
// can never be durable before it). Several such requests share one journal
// write and its flush (OpenOptions::journal_mappings, docs/dbs.md).
// Control operations (create/delete/rename/grow, snapshots, generation) commit
// before they return. open() rebuilds the last committed state from the
// newest valid checkpoint plus the valid journal commits after it.
//
// Threading: a Store is owned by one thread (the engine's store thread); no
// method is thread-safe. Data I/O is asynchronous (submit/poll, StoreIo);
// control operations are synchronous and first wait for the data I/O in
// flight (completions are still delivered only from poll()).
//
// Ordering: DBS does not order overlapping data requests that are in flight at
// the same time (the engine does). For non-overlapping requests and for
// overlapping ones submitted after the earlier one completed, reads return
// what the last completed write/discard left.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/block_device.h"
#include "ublkvol/dbs/store_io.h"

namespace ublkvol::dbs {

struct FormatOptions {
  // Extent size in 4 KiB blocks: a power of two in [8, 256]. 256 = 1 MiB.
  uint32_t extent_blocks = 256;
  // Limits the metadata regions are sized for (0: derived from the device
  // size: one volume per 256 MiB, between 16 and 4096; four layers per volume).
  uint32_t max_volumes = 0;
  uint32_t max_layers = 0;
  // Journal size in blocks (0: device size / 256, between 64 and 16384).
  uint64_t journal_blocks = 0;
};

struct OpenOptions {
  // Device requests the data path may have in flight (pre-allocated).
  uint32_t max_device_requests = 1024;
  // true (default): a write/discard/write-zeroes that changes a block mapping
  // completes after a journal commit with that mapping is written (batched
  // across requests; no flush after it), and its data is durable before
  // that record is written (mapping_data_order). A process
  // killed at any point then loses no completed request. false: mappings
  // reach the journal only at the next FLUSH (a killed process loses the
  // completed allocating writes since; power-cut guarantees are the same).
  bool journal_mappings = true;
  // journal_mappings only: how the data of a write that sets new block bits
  // is kept ahead, on the medium, of the journal record that maps it (a power
  // cut must never keep the record without the data: the blocks would show
  // whatever they held before, possibly another volume's old data).
  enum class MappingDataOrder {
    // A device flush before each mapping commit's journal write; the data
    // writes themselves go out plain. One flush per group commit (all the
    // allocating writes completed by then share it).
    kFlushBeforeRecord,
    // Each such data write is FUA; the journal write follows without a
    // flush. One FUA write per allocating write - on a filesystem, one
    // filesystem journal commit each when the write fills a hole.
    kFuaData,
  };
  MappingDataOrder mapping_data_order = MappingDataOrder::kFlushBeforeRecord;
  // How long control operations, check() and close()/~Store wait for device
  // requests in flight before giving up with ETIMEDOUT ("<device> did not
  // complete N requests within T s"), so a hung device cannot hang its owner.
  std::chrono::milliseconds device_timeout{30'000};
  // Operator escape hatch, off by default. A journal damaged in the middle
  // (a later commit exists after an invalid one) makes open refuse with
  // EUCLEAN; with this set, open instead recovers the state before the
  // damaged commit, drops it and every later commit, logs that at error
  // level and says so in open_notes() ("journal truncated at corruption:
  // ..."). The first commit after open starts a new epoch, which makes the
  // loss permanent: copy the device first if the dropped commits matter.
  bool truncate_journal_at_corruption = false;
};

struct VolumeInfo {
  VolumeId id = 0;
  std::string name;
  uint64_t size_bytes = 0;
  uint64_t generation = 0;
  // The snapshot the volume's head sits on (0: none). For a clone this is
  // the snapshot it was cloned from until the volume takes own snapshots.
  SnapshotId parent_snapshot = 0;
  // Space held by the volume's head layer (its own, unshared data).
  uint64_t allocated_bytes = 0;  // whole extents
  uint64_t mapped_bytes = 0;     // blocks written
  uint32_t snapshot_count = 0;
};

struct SnapshotInfo {
  SnapshotId id = 0;
  VolumeId volume = 0;  // 0 once the volume it was taken of is deleted
  std::string name;     // empty for hidden (deleted, kept for clones)
  SnapshotId parent = 0;
  uint64_t size_bytes = 0;
  uint64_t create_time = 0;  // seconds since the Unix epoch
  uint64_t allocated_bytes = 0;
  uint64_t mapped_bytes = 0;
  uint32_t children = 0;  // layers (snapshots, heads of volumes/clones) on top
  bool hidden = false;
};

struct StoreStats {
  uint64_t extent_bytes = 0;
  uint64_t total_extents = 0;
  uint64_t free_extents = 0;          // allocatable now
  uint64_t pending_free_extents = 0;  // freed, reusable after the next commit
  uint32_t volumes = 0;
  uint32_t layers = 0;
  uint64_t commits = 0;  // journal commits since open (both kinds)
  // Of those, written with no device flush after them to journal the
  // mappings of completed requests (OpenOptions::journal_mappings).
  uint64_t mapping_commits = 0;
  uint64_t checkpoints = 0;  // checkpoints since open
  uint64_t journal_blocks_used = 0;
  uint64_t journal_blocks = 0;
  // In-memory metadata: extent maps, free map, tables.
  uint64_t metadata_memory_bytes = 0;
  uint64_t mapped_extents = 0;  // map entries over all layers
  // Device errors since open. A failed data read, write, discard or
  // write-zeroes fails its StoreIo with the device's errno and the store
  // stays usable (logged at the 1st, 2nd, 4th, ... error of each kind).
  // write_errors also counts failed metadata writes and device flushes: each
  // of those fails the store (see health()), so a store failed by one never
  // reports 0 write errors. (A failed snapshot-merge copy also fails the
  // store; it is reported by that control operation, not counted here.)
  uint64_t read_errors = 0;
  uint64_t write_errors = 0;
};

class Store {
 public:
  // Writes an empty store over `device` (everything on it is lost).
  static Status format(BlockDevice& device, const FormatOptions& options = {});
  // Opens the store on `device`, recovering the last committed state. A
  // device that is not a valid store (foreign data, newer version, truncated,
  // corrupted metadata) is refused with an Error naming the problem, and
  // nothing is written to it. Corruption that recovery cannot tell from a
  // torn write is refused too (EUCLEAN/EIO): a damaged journal commit with a
  // later commit after it, a damaged newest checkpoint whose epoch has
  // journal commits (docs/dbs.md, "What recovery refuses"). The one write
  // open may do: a superblock copy that fails validation while the other
  // is good is rewritten from the good one (flushed; see open_notes()).
  // `device` must outlive the Store.
  static Result<std::unique_ptr<Store>> open(BlockDevice& device, const OpenOptions& options = {});

  // Waits (at most OpenOptions::device_timeout) for the device requests in
  // flight; callbacks of StoreIos that have not completed are not run. Nothing
  // is written: changes not yet journaled are dropped, as when the process
  // dies. Returns ETIMEDOUT naming the device and the requests it still holds
  // if it did not complete them in time; the store's request state is then
  // kept alive (leaked, logged) so late completions cannot touch freed
  // memory. Afterwards only the destructor may be called.
  Status close();
  // close() if it was not called (an error is logged).
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // ---- Volumes (each commits before returning) ----
  Result<VolumeId> create_volume(std::string_view name, uint64_t size_bytes);
  // Frees the volume's own data; its snapshots go too, except those that
  // clones still sit on (they stay, hidden, until no clone needs them).
  Status delete_volume(VolumeId volume);
  Status rename_volume(VolumeId volume, std::string_view new_name);
  // Grows (never shrinks) the volume; the new range reads as zeros.
  Status grow_volume(VolumeId volume, uint64_t new_size_bytes);
  [[nodiscard]] std::vector<VolumeInfo> list_volumes() const;
  [[nodiscard]] Result<VolumeInfo> volume_info(VolumeId volume) const;
  [[nodiscard]] Result<VolumeId> find_volume(std::string_view name) const;
  // Byte ranges of the volume that hold data in its head or any snapshot
  // under it (what a read does not answer with zeros), sorted and merged,
  // at 4 KiB granularity (src/dbs/store/store_query.cpp; the engine's thin
  // rebuild copies only these).
  [[nodiscard]] Result<std::vector<std::pair<uint64_t, uint64_t>>> mapped_ranges(
      VolumeId volume) const;

  // ---- Engine state per volume (persisted at the next commit; call
  // commit() to make it durable at once) ----
  Status set_generation(VolumeId volume, uint64_t generation);
  // Dirty-region bitmap: one bit per region of dirty_region_bytes().
  [[nodiscard]] Result<uint64_t> dirty_region_bytes(VolumeId volume) const;
  // Sets / clears the bits of every region the byte range touches.
  Status mark_dirty(VolumeId volume, uint64_t offset, uint64_t length);
  Status clear_dirty(VolumeId volume, uint64_t offset, uint64_t length);
  // The bitmap: bit i of word i/64 = region i.
  [[nodiscard]] Result<std::vector<uint64_t>> dirty_bitmap(VolumeId volume) const;

  // ---- Snapshots (each commits before returning) ----
  // Flushes the volume's data, then makes its current content a read-only
  // snapshot. O(1): no data or map is copied.
  Result<SnapshotId> create_snapshot(VolumeId volume, std::string_view name);
  // Deletes the snapshot: merged into its only child, or - while several
  // clones/snapshots sit on it - hidden until one is left.
  Status delete_snapshot(SnapshotId snapshot);
  // Drops everything the volume wrote since `snapshot` (which must be one
  // of the volume's snapshots - also one off the head's chain, such as one
  // left by an earlier revert or made by adopt_as_snapshot - or an ancestor
  // of its head).
  Status revert_volume(VolumeId volume, SnapshotId snapshot);
  // A new writable volume whose content starts as the snapshot's.
  Result<VolumeId> clone_snapshot(SnapshotId snapshot, std::string_view volume_name);
  Status rename_snapshot(SnapshotId snapshot, std::string_view new_name);
  // Makes the content of volume `source` a new snapshot `name` of `volume`
  // in one commit: source's head layer becomes the (parentless) snapshot, no
  // data is copied, and `source` is gone. A crash leaves either `source` or
  // the snapshot. For filling a snapshot through the data path (restore of a
  // backup as a snapshot of a live volume). EINVAL unless both have the same
  // size (both named) and `source` has no parent and no snapshots; EEXIST if
  // `volume` has a snapshot `name`.
  Result<SnapshotId> adopt_as_snapshot(VolumeId source, VolumeId volume, std::string_view name);
  // The volume's visible snapshots, oldest first.
  [[nodiscard]] std::vector<SnapshotInfo> list_snapshots(VolumeId volume) const;
  // Every snapshot in the store, hidden ones included.
  [[nodiscard]] std::vector<SnapshotInfo> list_all_snapshots() const;
  [[nodiscard]] Result<SnapshotInfo> snapshot_info(SnapshotId snapshot) const;
  [[nodiscard]] Result<SnapshotId> find_snapshot(VolumeId volume, std::string_view name) const;
  // Byte ranges that hold data in the snapshot (its layer or a layer under
  // it), sorted and merged, at 4 KiB granularity (what a full backup reads).
  [[nodiscard]] Result<std::vector<std::pair<uint64_t, uint64_t>>> snapshot_mapped_ranges(
      SnapshotId snapshot) const;
  // Byte ranges written after `base` up to `snapshot`: the blocks the layers
  // from `snapshot` down to (not including) `base` hold - from the layer
  // maps, no data is read. Every other block of `snapshot` reads as in
  // `base` (what an incremental backup reads). EINVAL unless `base` is
  // `snapshot` or a snapshot under it (the same chain).
  [[nodiscard]] Result<std::vector<std::pair<uint64_t, uint64_t>>> changed_ranges(
      SnapshotId base, SnapshotId snapshot) const;

  // ---- Asynchronous data path ----
  // Queues `io`; device requests go out in batches at kick()/poll().
  void submit(StoreIo& io);
  void kick();
  // Drives the device and runs completion callbacks (only here). With `wait`
  // and work in flight, blocks until something completes. Returns callbacks run.
  unsigned poll(bool wait);
  // Submitted requests whose callbacks have not yet run.
  [[nodiscard]] unsigned in_flight() const;
  // Readable when poll() has work; -1 if the device has no such fd.
  [[nodiscard]] int completion_fd() const;

  // ---- Synchronous wrappers (control paths, tests) ----
  Status read(VolumeId volume, uint64_t offset, std::span<std::byte> buffer);
  Status read_snapshot(SnapshotId snapshot, uint64_t offset, std::span<std::byte> buffer);
  Status write(VolumeId volume, uint64_t offset, std::span<const std::byte> buffer);
  Status discard(VolumeId volume, uint64_t offset, uint64_t length);
  Status write_zeroes(VolumeId volume, uint64_t offset, uint64_t length);
  // Same as a kFlush StoreIo: data flush + metadata commit + device flush.
  Status commit();

  // ---- Checking ----
  // Verifies every invariant: both superblocks, the checksums of the active
  // checkpoint and journal on the device, the extent maps (no extent mapped
  // twice, none mapped and free, none allocated and unmapped), the layer tree
  // (parents exist, no cycles, heads valid) and the space counters. Returns a
  // description of every problem found; empty means consistent.
  [[nodiscard]] std::vector<std::string> check();
  // Loads the metadata on `device` without opening a store and reports every
  // problem (an unreadable store gives a single problem naming why).
  static std::vector<std::string> check_device(BlockDevice& device);

  [[nodiscard]] StoreStats stats() const;

  // ---- Identity and open report ----
  // The store's uuid (random at format, in both superblock copies); the
  // same store reached through another path or device node has the same one.
  [[nodiscard]] std::array<uint8_t, 16> uuid() const;
  // The uuid as "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (lower-case hex).
  [[nodiscard]] std::string uuid_string() const;
  // What open found and repaired or worked around, one sentence each (also
  // logged as warnings at open), e.g. "superblock copy 0: checksum mismatch
  // (using copy 1)" followed by "superblock copy 0 rewritten from copy 1".
  [[nodiscard]] const std::vector<std::string>& open_notes() const;

  // ---- Health (docs/dbs.md, "Failure model") ----
  // Set once a step of a metadata commit failed on the device (data flush,
  // journal or checkpoint write, metadata flush) or a snapshot merge could
  // not copy its blocks. From then on the store refuses writes, discards,
  // write-zeroes and flushes (-EIO) and control operations (an Error with
  // the message below); reads still work. A FLUSH that failed was never
  // acknowledged. Reopen the store (on a healthy device) to recover the last
  // committed state: every FLUSH acknowledged before the failure is intact.
  [[nodiscard]] bool failed() const;
  // OK while healthy; once failed, an Error (errno of the failed step) whose
  // message names the device and the step, e.g. "/dev/sdb: write of journal
  // commit 42 (blocks 5000..5001) failed (Input/output error); the store
  // refuses writes and flushes until it is reopened". Also logged (spdlog).
  [[nodiscard]] Status health() const;

  class Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::dbs
