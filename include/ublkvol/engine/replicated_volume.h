// ReplicatedVolume: one volume kept on N replicas (N <= kMaxReplicas), each a
// ReplicaStore owned by a StoreThread. The controller runs inline in the
// queue threads that submit I/O (volume.h); there is no controller thread on
// the data path. docs/engine.md explains the design; in short:
//
//   - Writes, discards and write-zeroes fan out to every in-sync and
//     rebuilding replica and complete when every in-sync replica acked.
//     FLUSH goes to the same set; FUA travels with each replica write.
//   - Reads go to one in-sync replica (least outstanding from this queue); a
//     read error is retried on another replica and the bad one is repaired
//     (rewritten from a good copy, ordered like a write).
//   - Overlapping mutating requests in flight at the same time - from the
//     same queue or from different queues - are ordered by a per-volume
//     sequence number and a lock-free, per-queue published table of
//     in-flight ranges: a request waits for every overlapping one with a
//     smaller sequence number. So every replica applies overlapping writes in
//     the same order and replicas never diverge (DESIGN.md guarantee 2).
//   - A replica that fails an I/O or misses the deadline leaves the write
//     set. The survivors' generation is bumped and persisted before any
//     write that the lost replica missed is acknowledged. The volume serves
//     while >= min_replicas are in sync and fails I/O with -EIO below that.
//   - A returning replica resyncs the dirty regions if its generation is in
//     the survivors' history after their bitmap base, else rebuilds fully.
//     Rebuilds run online (the target receives live writes at once),
//     throttled, resumable after a restart (persisted watermark).
//   - open() picks the newest replicas by generation history only; two
//     replicas that each moved on without the other (a split) are refused.
//
// Queues: VolumeQueue::in_flight() also counts completed writes that still
// order later overlapping writes because a rebuilding replica has not
// applied them yet; keep reaping on wake_fd() until it is 0 before closing.
//
// Threading: status(), rebuild, snapshot, verify and checkpoint calls are
// control-path calls that may block; call them from any thread except a
// queue thread of this volume.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/engine_clock.h"
#include "ublkvol/engine/volume.h"

namespace ublkvol::engine {

class ReplicaStore;
class StoreExecutor;
class TaskRunner;

inline constexpr unsigned kMaxReplicas = 4;

enum class ReplicaState : uint8_t {
  kInSync,      // in the read and write sets
  kRebuilding,  // receives writes, not read; a background copy is running
  kFailed,      // dropped after an error or deadline miss
  kStale,       // opened with old/missing data, waiting for a rebuild
  kRemoved,     // no replica at this index (remove_replica(); add_replica() reuses it)
};

const char* to_string(ReplicaState state);

// Where one replica lives. The store and thread must outlive the volume; the
// store must be attached to the thread.
struct ReplicaBinding {
  ReplicaStore* store = nullptr;
  // The store's owner: a StoreThread in production (store_executor.h).
  StoreExecutor* thread = nullptr;
  // The store does every data read and write through a dbs::FileDevice on
  // its executor's thread (a DBS store on a plain file or block device), so
  // an address inside a zero-copy window of that thread (dbs/fixed_buffer.h)
  // reaches it as READ_FIXED / WRITE_FIXED. False for anything else (raw
  // stores, NBD replicas, memory devices): such a store would take the
  // window for ordinary memory (VolumeQueue::all_targets_local()).
  bool fixed_buffer_io = false;
};

struct ReplicatedVolumeOptions {
  std::string name = "volume";
  // Queues the user opens (one per submitting thread).
  unsigned queues = 1;
  // Requests each queue can have at the stores at once; more are accepted
  // and wait (allocation-free) for a free slot.
  unsigned queue_depth = 256;
  unsigned min_replicas = 1;
  // A replica request older than this fails the replica.
  std::chrono::milliseconds io_deadline{8000};
  uint32_t max_io_bytes = 1U << 20U;
  // Rebuild: copy unit and throttle (0 = unthrottled).
  uint32_t rebuild_chunk_bytes = 1U << 20U;
  uint64_t rebuild_bytes_per_second = 0;
  // Yielding to user I/O (docs/engine.md "Rebuild pacing"): while user
  // requests arrive, the copy goes in pieces of at most rebuild_busy_io_bytes
  // (one store step stays short) and waits after each piece so that it takes
  // at most rebuild_busy_percent of the time. 100 = never wait. With no user
  // I/O it copies whole chunks back to back.
  uint32_t rebuild_busy_io_bytes = 128U << 10U;
  unsigned rebuild_busy_percent = 20;
  // Persist the rebuild watermark after this many bytes copied.
  uint64_t rebuild_persist_bytes = 64ULL << 20U;
  // Start rebuilds of stale replicas found at open().
  bool auto_rebuild = true;
  // Activity-log style clearing of the dirty-region bitmaps: while every
  // replica is in sync and no rebuild runs, a background thread runs
  // checkpoint() this often if anything was written since the bitmaps were
  // last empty. Without it the bitmaps only shrink at close() and after a
  // rebuild, so a replica returning after a short outage of a long-running
  // volume resyncs everything written since open(). Each clear pauses
  // mutating I/O for one drain + flush + bitmap commit on every replica
  // (docs/engine.md "Dirty-bitmap clearing" has the figures). 0 = off.
  std::chrono::milliseconds dirty_clear_interval{10000};
  // Scheduled scrub: a background verify every `scrub_interval` (0 = off;
  // the first one an interval after open()), throttled, repairing from
  // the majority if `scrub_repair`. Results in status().verify.
  std::chrono::milliseconds scrub_interval{0};
  uint64_t scrub_bytes_per_second = 0;
  bool scrub_repair = false;
  // Time source for deadlines, monitor ticks, throttles and control-path
  // timeouts: CLOCK_MONOTONIC unless given a ManualClock (the simulator).
  EngineClock clock;
  // Runs the monitor, rebuild, dirty-clear and verify activities and the
  // control path's pauses (task_runner.h); nullptr: thread_task_runner().
  // Must outlive the volume.
  TaskRunner* task_runner = nullptr;
  // open() refuses (ENOLINK) when a replica recorded in sync at the newest
  // present generation is not among the given replicas: it may have moved
  // on and hold acknowledged writes the others lack (docs/engine.md
  // "In-sync sets"). With this set the volume opens anyway on what is
  // present and moves it to a new generation, so the missing replica, if
  // it returns newer, is a split rather than silently overwritten. The
  // operator's explicit choice to lose the writes only the missing replica
  // holds.
  bool accept_missing_in_sync = false;
};

struct RebuildProgress {
  bool active = false;
  // Replicas being rebuilt (bitmask of indices).
  uint32_t targets = 0;
  // Whole-range copy from `full_from` on, dirty regions only below it.
  uint64_t full_from = 0;
  uint64_t done_bytes = 0;
  uint64_t total_bytes = 0;
  double percent = 0;
  double bytes_per_second = 0;
  double eta_seconds = 0;
  // Copy steps so far, and how many of them were followed by a wait for user
  // I/O (and the time waited): "Rebuild pacing" in docs/engine.md.
  uint64_t pieces = 0;
  uint64_t yields = 0;
  double yielded_seconds = 0;
  // Result of the last finished rebuild (empty while none finished / ok).
  std::string last_error;
  uint64_t completed = 0;  // rebuilds finished successfully
};

struct ReplicaStatus {
  std::string name;
  ReplicaState state = ReplicaState::kStale;
  uint64_t generation = 0;
  std::string last_error;
};

struct VolumeEvent {
  std::chrono::system_clock::time_point when;
  int replica = -1;  // -1: the volume itself
  std::string message;
};

// A verify run in progress and the last finished one (verify(); docs/engine.md
// "Verify, repair and scrub").
struct VerifyStatus {
  bool active = false;
  bool repair = false;  // of the running one
  uint64_t done_bytes = 0;
  uint64_t total_bytes = 0;
  double percent = 0;
  double bytes_per_second = 0;
  uint64_t mismatched_bytes = 0;  // found so far
  uint64_t repaired_bytes = 0;
  // Last finished run (runs == 0: none yet).
  uint64_t runs = 0;
  std::chrono::system_clock::time_point last_finished{};
  bool last_repair = false;
  uint64_t last_bytes = 0;  // compared
  uint64_t last_mismatched_bytes = 0;
  uint64_t last_repaired_bytes = 0;
  uint64_t last_unrepaired_bytes = 0;  // differing, no majority (or repair failed)
  double last_seconds = 0;
  std::string last_error;  // empty: completed
  // The first (up to 64) mismatching ranges of the last run, by offset.
  std::vector<std::pair<uint64_t, uint64_t>> last_mismatches;
};

struct VolumeStatus {
  std::string name;
  uint64_t size_bytes = 0;
  uint64_t generation = 0;
  unsigned in_sync = 0;
  unsigned min_replicas = 0;
  // in_sync >= min_replicas.
  bool online = false;
  std::vector<ReplicaStatus> replicas;
  std::vector<VolumeEvent> events;
  RebuildProgress rebuild;
  // Checkpoints (dirty bitmaps cleared) since open(): explicit, after a
  // rebuild and periodic (dirty_clear_interval) ones alike.
  uint64_t checkpoints = 0;
  // How long the last checkpoint held mutating I/O back (drain, flush all,
  // clear every bitmap), microseconds.
  uint64_t last_checkpoint_pause_us = 0;
  VerifyStatus verify;
};

struct VerifyOptions {
  // Rewrite differing blocks on the replicas that disagree with a strict
  // majority of the in-sync replicas (never guesses: with two replicas, or
  // a 2:2 split, the range is reported as unrepaired).
  bool repair = false;
  // Throttle (0 = unthrottled).
  uint64_t bytes_per_second = 0;
};

struct VerifyReport {
  uint64_t bytes_compared = 0;
  uint32_t replicas_compared = 0;  // bitmask
  // Ranges (offset, length) where in-sync replicas differ, by offset.
  std::vector<std::pair<uint64_t, uint64_t>> mismatches;
  // With repair: ranges rewritten from the majority (and compared equal
  // afterwards), and ranges left differing (no majority, or still
  // differing after the rewrite).
  std::vector<std::pair<uint64_t, uint64_t>> repaired;
  std::vector<std::pair<uint64_t, uint64_t>> unrepaired;
  // Stopped early by cancel_verify() or close().
  bool cancelled = false;
};

class ReplicatedVolume : public Volume {
 public:
  // Opens the volume: reads every replica's metadata, chooses the newest
  // replicas by generation (refusing splits), initialises fresh replicas and
  // (with auto_rebuild) starts rebuilding stale ones.
  static Result<std::unique_ptr<ReplicatedVolume>> open(const ReplicatedVolumeOptions& options,
                                                        std::vector<ReplicaBinding> replicas);

  // Destroying without close() is a crash as far as the replicas can tell
  // (no checkpoint); queues must be closed with nothing in flight.
  ~ReplicatedVolume() override;

  [[nodiscard]] const VolumeInfo& info() const override;
  Result<std::unique_ptr<VolumeQueue>> open_queue(unsigned index) override;

  [[nodiscard]] VolumeStatus status() const;

  // Takes a replica out of service (operator action, also used by tests).
  // Like remove_replica(), refused (EBUSY, naming in-sync and min_replicas)
  // when an in-sync replica's loss would leave fewer than min_replicas in
  // sync - the volume would go offline - unless `force`. The last in-sync
  // replica is never failed, forced or not.
  Status fail_replica(unsigned replica, const std::string& reason, bool force = false);
  // Brings a failed or stale replica back: dirty-region resync if its
  // generation allows, else a full rebuild. Returns once it started.
  Status start_rebuild(unsigned replica);
  // ---- membership changes on a running volume (I/O continues) ----
  // docs/engine.md "Membership changes". Each call fences the replica index
  // it changes: every queue has seen the new replica state and no queue has
  // a request at the old binding's store any more (or its store thread
  // exited). That needs the user queues to keep reaping on wake_fd() (the
  // ublk frontend does); a queue that does not within twice the I/O
  // deadline makes the call fail with ETIMEDOUT and change nothing further.
  //
  // Adds a replica on a fresh (or any) store at the lowest free index and
  // starts a full online rebuild into it; returns the index. The store must
  // hold at least the volume's size and use the volume's dirty-region size,
  // and must not already be a replica of this volume.
  Result<unsigned> add_replica(ReplicaBinding replica);
  // Takes a replica out of the volume for good: it leaves the write set
  // (the survivors' generation is bumped, as for a failure), then its index
  // becomes kRemoved. Refused (EBUSY) if fewer than min_replicas in-sync
  // replicas would remain. On success the volume no longer touches the
  // store or its thread: the caller may detach and destroy them.
  Status remove_replica(unsigned replica);
  // Replaces a failed or stale replica's binding (e.g. its store thread
  // died, or its DBS store went read-only after a failed metadata commit
  // and was reopened) and starts rebuilding it: a dirty-region resync if
  // the new store's persisted generation allows, else a full rebuild. The
  // old store and thread are no longer touched once this returns.
  Status replace_replica(unsigned replica, ReplicaBinding binding);

  // Blocks until no rebuild is running; the status of the last one.
  Status wait_rebuild();
  // Blocks until the running rebuild copied at least `done_bytes` or no
  // rebuild is running; true in the first case.
  bool wait_rebuild_progress(uint64_t done_bytes);
  void set_rebuild_rate(uint64_t bytes_per_second);

  // Crash-consistent snapshot on every in-sync replica: in-flight writes
  // drain, all replicas snapshot at the same point, I/O resumes.
  Status create_snapshot(const std::string& snapshot);
  Status delete_snapshot(const std::string& snapshot);
  Status revert_snapshot(const std::string& snapshot);
  // Clones the snapshot into a new volume `clone` on every in-sync replica
  // (each replica's store gets a replica named `clone` holding the
  // snapshot's content, all with one fresh volume id and generation, so
  // opening them as a ReplicatedVolume finds them in sync). Returns the
  // replica indices cloned (bitmask). A failure part-way leaves the clones
  // made so far (named in the error) for the operator to delete.
  Result<uint32_t> clone_snapshot(const std::string& snapshot, const std::string& clone);

  // Compares in-sync replicas chunk by chunk, each chunk ordered against
  // concurrent writes, and reports ranges that differ; with
  // options.repair rewrites them from the majority (ordered too). Progress
  // and the last result are in status().verify. One run at a time (EBUSY);
  // other control calls interleave between chunks.
  Result<VerifyReport> verify(const VerifyOptions& options = {});
  // Makes a running verify stop at its next chunk (its report says
  // cancelled). No-op if none runs.
  void cancel_verify();
  // verify() on the volume's background thread (the one the scheduled
  // scrub uses); returns once queued. EBUSY (with the progress) while a
  // verify runs or is queued. Follow it in status().verify.
  Status start_verify(const VerifyOptions& options);
  // Blocks until status().verify.runs >= `runs` or `timeout` passed; true in
  // the first case.
  bool wait_verify(uint64_t runs, std::chrono::milliseconds timeout);

  // With every replica in sync: drain, flush all, clear the dirty bitmaps.
  Status checkpoint();
  // Blocks until status().checkpoints >= `count` or `timeout` passed; true
  // in the first case (lets a caller wait for a periodic clear).
  bool wait_checkpoints(uint64_t count, std::chrono::milliseconds timeout);

  // Clean shutdown: stops rebuilds, checkpoints if all replicas are in sync,
  // stops the monitor. Queues must be closed first.
  Status close();

  struct Impl;

 private:
  explicit ReplicatedVolume(std::unique_ptr<Impl> impl);
  void start_verify_thread();
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::engine
