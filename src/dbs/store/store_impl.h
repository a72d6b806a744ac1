// Store::Impl: the store's state and machinery (data path, commit state
// machine, control operations, checker). One instance per open store, owned
// by one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/dbs/block_device.h"
#include "ublkvol/dbs/store.h"

#include "meta_io.h"
#include "metadata.h"

namespace ublkvol::dbs {

namespace detail {

// FIFO of StoreIos linked through StoreIo::store_next.
struct IoQueue {
  StoreIo* head = nullptr;
  StoreIo* tail = nullptr;
  [[nodiscard]] bool empty() const { return head == nullptr; }
  void push_back(StoreIo& io) {
    io.store_next = nullptr;
    if (tail == nullptr) {
      head = &io;
    } else {
      tail->store_next = &io;
    }
    tail = &io;
  }
  void push_front(StoreIo& io) {
    io.store_next = head;
    head = &io;
    if (tail == nullptr) {
      tail = &io;
    }
  }
  StoreIo* pop_front() {
    StoreIo* io = head;
    if (io != nullptr) {
      head = io->store_next;
      if (head == nullptr) {
        tail = nullptr;
      }
      io->store_next = nullptr;
    }
    return io;
  }
};

// One device request issued on behalf of a StoreIo (pre-allocated pool).
struct SubIo {
  IoRequest request;
  Store::Impl* impl = nullptr;
  StoreIo* parent = nullptr;
  // Head-layer extent the request touches (reads/writes of the volume head),
  // pinned against freeing via ExtentEntry::inflight; null otherwise.
  ExtentEntry* entry = nullptr;
  Layer* layer = nullptr;
  uint32_t logical = 0;
  // Writes: block bits to set in `entry` on success.
  uint16_t first_block = 0;
  uint16_t block_count = 0;
  bool sets_bits = false;
  // Discard of a freed extent: release it to the pending frees when done.
  uint32_t freed_phys = format::kNoExtent;
  SubIo* next_free = nullptr;
};

}  // namespace detail

class Store::Impl {
 public:
  Impl(BlockDevice& device, detail::LoadedStore loaded, const OpenOptions& options);

  // Data path
  void submit(StoreIo& io);
  unsigned poll(bool wait);
  [[nodiscard]] unsigned in_flight() const { return in_flight_; }
  BlockDevice& device() { return device_; }
  [[nodiscard]] const detail::Geometry& geometry() const { return g_; }
  [[nodiscard]] const std::vector<std::string>& open_notes() const { return open_notes_; }
  void add_open_note(std::string note) { open_notes_.push_back(std::move(note)); }
  Status run_sync(StoreIo& io);

  // Control
  Result<VolumeId> create_volume(std::string_view name, uint64_t size_bytes);
  Status delete_volume(VolumeId volume);
  Status rename_volume(VolumeId volume, std::string_view new_name);
  Status grow_volume(VolumeId volume, uint64_t new_size);
  Status set_generation(VolumeId volume, uint64_t generation);
  Status set_dirty(VolumeId volume, uint64_t offset, uint64_t length, bool value);
  Result<SnapshotId> create_snapshot(VolumeId volume, std::string_view name);
  Status delete_snapshot(SnapshotId snapshot);
  Status revert_volume(VolumeId volume, SnapshotId snapshot);
  Result<VolumeId> clone_snapshot(SnapshotId snapshot, std::string_view name);
  Status rename_snapshot(SnapshotId snapshot, std::string_view name);
  // store_adopt.cpp
  Result<SnapshotId> adopt_as_snapshot(VolumeId source, VolumeId volume, std::string_view name);
  Status commit_sync();
  // Waits (bounded by device_timeout) until nothing of the store is in the
  // device; the error names the device and what it still holds.
  Status quiesce();

  // Queries
  [[nodiscard]] const detail::Metadata& metadata() const { return *md_; }
  [[nodiscard]] VolumeInfo volume_info(const detail::Volume& volume) const;
  [[nodiscard]] SnapshotInfo snapshot_info(const detail::Layer& layer) const;
  [[nodiscard]] Result<detail::Volume*> find_volume(VolumeId id) const;
  [[nodiscard]] Result<detail::Layer*> find_snapshot(SnapshotId id) const;
  [[nodiscard]] StoreStats stats() const;
  [[nodiscard]] bool failed() const { return failed_; }
  // OK, or the error that made the store fail (names the device and step).
  [[nodiscard]] Status health() const;
  // Marks the store failed (first failure wins): logs and remembers
  // "<device>: <step> failed: <strerror>". `error` is a negative errno.
  void fail(const std::string& step, int error);
  std::vector<std::string> check();
  // In-memory invariants only (no device reads).
  std::vector<std::string> check_memory() const;

  // Device callbacks
  void sub_done(detail::SubIo& sub, int result);
  void commit_step(int result);
  void meta_write_done(int result);

 private:
  // Data path helpers
  void start_io(StoreIo& io);
  bool issue(StoreIo& io);
  bool issue_read(StoreIo& io, detail::Layer& top, bool top_is_head);
  bool issue_write(StoreIo& io, detail::Layer& head);
  bool issue_zero(StoreIo& io, detail::Layer& head);
  void maybe_finish(StoreIo& io);
  void complete(StoreIo& io, int result);
  detail::SubIo* take_sub();
  void release_sub(detail::SubIo& sub);
  void resume_parked();
  void note_data_error(const IoRequest& request, int result);
  void load_chain(detail::Layer& top, uint32_t logical);

  // Space
  uint32_t allocate_extent();
  void free_extent_later(uint32_t phys);
  void remove_entry(detail::Layer& layer, uint32_t logical, detail::ExtentEntry& entry);
  void drop_layer(detail::Layer& layer);

  // Commit machine
  void maybe_start_commit();
  void finish_commit(int result);
  // kEpochStart: the empty journal commit written (FUA) after a checkpoint is
  // durable, before the checkpoint's waiters complete; it proves the
  // checkpoint was complete if the checkpoint is later found damaged.
  enum class CommitPhase { kIdle, kDataFlush, kMetaWrite, kMetaFlush, kEpochStart };
  // Writes body_ as the next checkpoint or journal commit; `phase` is
  // kMetaWrite, or kEpochStart for the record start_epoch() writes.
  void write_metadata(CommitPhase phase = CommitPhase::kMetaWrite);
  void start_epoch();
  // Accounts a written commit (seq, journal position or new epoch).
  void advance_journal();

  // Control helpers
  Status prologue();
  // EEXIST if a volume other than `except` (0: none) is named `name`.
  Status check_volume_name_free(std::string_view name, VolumeId except = 0) const;
  // Adds a new volume `name` whose head layer is `head` (id and size set),
  // marks both for the journal and commits.
  Result<VolumeId> add_volume(std::string_view name, std::unique_ptr<detail::Layer> head);
  // Runs the data path and commits until nothing is in flight (bounded).
  Status drain();
  // Drives the device until done() or device_timeout passes without done();
  // the error says "<device> did not complete N requests within T s
  // (<waiting_for>)". Never blocks in the device for longer than a tick, so
  // a device that never completes cannot hang the caller.
  template <typename Done>
  Status wait_device(Done&& done, const char* waiting_for);
  // One bounded step of wait_device(): polls, and if nothing completed,
  // sleeps on the device's completion fd (or briefly) for at most `tick`.
  void poll_device_for(std::chrono::milliseconds tick);
  Status merge_into_child(detail::Layer& snapshot, detail::Layer& child);
  Status collect_garbage();
  std::vector<detail::Layer*> children_of(const detail::Layer& layer) const;
  Status copy_blocks(uint32_t from_phys, uint32_t to_phys, const uint64_t (&mask)[4]);
  // One device request of the control path (merge copies, discards of
  // freed extents), bounded by device_timeout. The request is a member so
  // that a timed-out one stays valid until the device completes it.
  Status control_io(IoOp op, uint64_t offset, uint64_t length, std::byte* buffer);
  // Commits, then passes a discard of every extent freed since
  // begin_collecting_frees() down to the device (after the commit: before
  // it, a crash would bring back mappings onto discarded data).
  void begin_collecting_frees();
  Status commit_and_discard_freed();

  BlockDevice& device_;
  const bool journal_mappings_;
  // journal_mappings_ with MappingDataOrder::kFuaData: allocating data
  // writes are FUA. Otherwise a mapping commit flushes before its record.
  const bool fua_new_data_;
  const std::chrono::milliseconds device_timeout_;
  // The first commit after open writes a checkpoint (new epoch): journal
  // commits written without a flush by an earlier process may sit beyond the
  // recovered end of the journal (one lost in a power cut, the next one
  // not); a new epoch makes sure they can never be mistaken for ours.
  bool force_checkpoint_ = true;
  detail::Geometry g_;
  std::unique_ptr<detail::Metadata> md_;
  uint64_t epoch_ = 0;
  uint64_t seq_ = 0;
  int active_checkpoint_ = 0;
  uint64_t journal_pos_ = 0;
  bool failed_ = false;
  std::string failure_;  // why failed_ is set (see fail())
  // What open found and repaired or worked around (Store::open_notes()).
  std::vector<std::string> open_notes_;
  int failure_errno_ = 0;  // positive errno of the step that failed
  // Data-path device errors (the StoreIo fails; the store stays usable).
  uint64_t read_errors_ = 0;
  uint64_t write_errors_ = 0;

  // Free extents: bit set = free and allocatable.
  std::vector<uint64_t> free_bits_;
  uint64_t free_count_ = 0;
  uint64_t alloc_cursor_ = 0;               // word index to start searching at
  std::vector<uint32_t> pending_frees_;     // freed since the last capture
  std::vector<uint32_t> committing_frees_;  // freed by the commit in progress
  uint64_t limbo_extents_ = 0;              // freed, device discard in flight
  std::vector<uint32_t> control_freed_;     // freed by the running control op
  bool collecting_frees_ = false;

  // Device request pool
  std::vector<detail::SubIo> subs_;
  detail::SubIo* free_subs_ = nullptr;
  uint32_t subs_in_use_ = 0;

  detail::IoQueue parked_;     // waiting for device requests
  detail::IoQueue completed_;  // callbacks to run at the next poll()
  detail::IoQueue flush_waiters_;
  // Completed requests that changed mappings, waiting for a journal commit.
  detail::IoQueue map_waiters_;
  detail::IoQueue commit_waiters_;
  unsigned in_flight_ = 0;

  // Commit state
  CommitPhase phase_ = CommitPhase::kIdle;
  bool commit_full_ = false;
  // Device-flushed commit (FLUSH, FUA, checkpoint, control op) or a
  // mapping-only journal write without flushes.
  bool commit_durable_ = false;
  // The metadata write goes out FUA: a mapping-only commit with kFuaData
  // (no flush follows it, and the next commit may not be written before it
  // is durable) and the epoch-start record.
  bool meta_fua_ = false;
  std::vector<std::byte> body_;
  detail::AlignedBuffer meta_buffer_;
  std::vector<IoRequest> meta_requests_;
  uint32_t meta_pending_ = 0;
  int meta_error_ = 0;
  uint64_t commit_blocks_ = 0;
  uint64_t commit_start_block_ = 0;  // first device block of the metadata run
  IoRequest flush_request_;
  uint64_t commits_ = 0;
  uint64_t checkpoints_ = 0;
  uint64_t mapping_commits_ = 0;
  // commit_sync()'s waiter and control_io()'s request: members, since after
  // a timeout they stay queued in the store or the device.
  StoreIo control_commit_;
  bool control_commit_busy_ = false;
  IoRequest control_request_;
  bool control_request_busy_ = false;
  int control_request_result_ = 0;

  detail::AlignedBuffer zeros_;  // one extent of zeros for zero-writes
  detail::AlignedBuffer copy_buffer_;
  std::vector<detail::ExtentEntry*> chain_;
  uint32_t chain_depth_ = 0;
};

}  // namespace ublkvol::dbs
