// ReplicatedVolume::Impl (private): the volume's shared state and the
// declarations of its control-plane functions. Where the code is:
//   replicated_volume.cpp  the public methods (thin), the VolumeQueue handle
//   open.cpp               ReplicatedVolume::open(): generations, resync plan
//   queue_path.{h,cpp}     per-queue data path (QueueState)
//   queue_control.cpp      queue set-up, replica binding, internal operations
//   slot.{h,cpp}           the request slot and its checked state machine
//   write_order.{h,cpp}    the cross-queue write-ordering table
//   monitor.cpp            failure monitoring, generation bump, fail_replica
//   checkpoint.cpp         checkpoints and periodic dirty-bitmap clearing
//   rebuild.cpp            rebuild worker (run_job's phases), thin rebuild
//   membership.cpp         add / remove / replace replica
//   snapshot.cpp           snapshot create / delete / revert / clone
//   verify.cpp             verify / repair / scrub
//
// Threads and what they own:
//   queue threads (one per user queue; internal queues are driven by the
//     control thread that uses them): their QueueState, exclusively. From
//     Impl they read only atomics (state, state_epoch, gen_hold, tick,
//     next_seq, nreplicas) and `replicas`/`queues`, which are stable while
//     they run (see below).
//   monitor thread: ticks, failure handling; takes meta_mutex.
//   rebuild thread: one job at a time on the rebuild queue.
//   dirty-clear thread, verify thread: checkpoints / background verifies,
//     each through the control queue under control_mutex.
//   control callers (daemon, tests): the public methods.
//   Immutable after open(): options, info, region_size, volume_uuid,
//   deadline_ns, queues (the vector), rebuild_queue, control_queue.
//   replicas[r] changes only while index r is fenced (no queue sends to it)
//   and under meta_mutex.
//
// Lock order (a mutex may be taken while holding only mutexes above it):
//   verify_run_mutex    one verify at a time (held for the whole run)
//   control_mutex       users of the control queue
//   membership_mutex    one membership change at a time
//   rebuild_mutex       jobs, rebuild_running/stop/result (rebuild_cv)
//   meta_mutex          replica metadata, binding_version, handled, rng
//   mutex               events, last_error, generation, progress, names,
//                       verify_status
//   checkpoint_mutex    checkpoints, dirty_clear_stop (checkpoint_cv)
// and, outside that chain:
//   verify_bg_mutex     background verify request (may then take `mutex`)
//   verify_sleep_mutex  the verify throttle's sleep (leaf)
// The order is declared with ACQUIRED_AFTER on the mutexes below and
// checked by the `thread-safety` preset (-Wthread-safety-beta); fields a
// mutex guards are GUARDED_BY it. The membership fence try-locks
// control_mutex out of order (membership.cpp, reap_if_free): a try_lock
// never waits, so it cannot deadlock.
#pragma once

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <spdlog/spdlog.h>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/common/thread_annotations.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/engine/generation.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_executor.h"
#include "ublkvol/engine/task_runner.h"

#include "controller.h"
#include "queue_path.h"
#include "thin_rebuild.h"
#include "volume_util.h"

namespace ublkvol::engine {

using detail::InternalOp;
using detail::QueueState;
using detail::SlotKind;
using detail::StoreChannel;

static_assert(kMaxReplicas <= kInSyncSetSize, "ReplicaMeta::in_sync must hold every replica");

struct ReplicatedVolume::Impl {
  ReplicatedVolumeOptions options;
  VolumeInfo info;
  // Replica indices in use are < nreplicas (grows with add_replica(); a
  // removed index is kRemoved). `replicas` always has kMaxReplicas entries;
  // an entry changes only while its index is fenced (membership changes,
  // under meta_mutex).
  std::atomic<unsigned> nreplicas{0};
  std::vector<ReplicaBinding> replicas;
  std::array<std::string, kMaxReplicas> names GUARDED_BY(mutex);
  uint64_t region_size = 0;  // dirty-region bytes
  uint64_t volume_uuid = 0;

  // Data-path shared state: atomics only.
  std::array<std::atomic<uint8_t>, kMaxReplicas> state{};
  std::array<std::atomic<uint8_t>, kMaxReplicas> fail_kind{};
  std::array<std::atomic<int>, kMaxReplicas> fail_errno{};
  std::atomic<uint64_t> state_epoch{1};
  std::atomic<uint32_t> gen_hold{0};
  std::atomic<uint64_t> next_seq{0};
  std::atomic<uint64_t> tick{0};
  uint64_t deadline_ns = 0;

  // Queues: user queues, then the rebuild queue, then the control queue.
  std::vector<std::unique_ptr<QueueState>> queues;
  unsigned rebuild_queue = 0;
  unsigned control_queue = 0;

  // Monitor.
  std::unique_ptr<BackgroundTask> monitor;
  UniqueFd monitor_fd;
  std::atomic<bool> stopping{false};

  // Control-plane state.
  // Lock order (top of this file): verify_run_mutex, control_mutex,
  // membership_mutex, rebuild_mutex, meta_mutex, mutex, checkpoint_mutex.
  mutable Mutex mutex ACQUIRED_AFTER(meta_mutex, verify_bg_mutex);
  uint64_t generation GUARDED_BY(mutex) = 0;
  std::vector<VolumeEvent> events GUARDED_BY(mutex);
  std::array<std::string, kMaxReplicas> last_error GUARDED_BY(mutex);
  // Serialises metadata updates across replicas.
  Mutex meta_mutex ACQUIRED_AFTER(rebuild_mutex);
  std::array<bool, kMaxReplicas> handled GUARDED_BY(meta_mutex){};
  // Serialises users of the control queue (queues[control_queue]).
  Mutex control_mutex ACQUIRED_AFTER(verify_run_mutex);
  std::mt19937_64 rng GUARDED_BY(meta_mutex){std::random_device{}()};

  // Rebuild worker.
  struct Job {
    uint32_t targets = 0;
    uint64_t full_from = 0;
    // binding_version of each target when the job was made: a job whose
    // target's binding changed since (replaced / removed) is dropped.
    std::array<uint64_t, kMaxReplicas> versions{};
  };
  std::array<uint64_t, kMaxReplicas> binding_version GUARDED_BY(meta_mutex){};
  Job make_job(uint32_t targets, uint64_t full_from) {
    Job job;
    job.targets = targets;
    job.full_from = full_from;
    MutexLock meta_lock(meta_mutex);
    job.versions = binding_version;
    return job;
  }
  std::unique_ptr<BackgroundTask> rebuild_thread;
  // A rebuild_loop() runs.
  bool rebuild_worker GUARDED_BY(rebuild_mutex) = false;
  Mutex rebuild_mutex ACQUIRED_AFTER(membership_mutex);
  std::condition_variable rebuild_cv;  // waits through UniqueLock::native()
  std::deque<Job> jobs GUARDED_BY(rebuild_mutex);
  bool rebuild_running GUARDED_BY(rebuild_mutex) = false;
  bool rebuild_stop GUARDED_BY(rebuild_mutex) = false;
  Status rebuild_result GUARDED_BY(rebuild_mutex);
  std::atomic<uint64_t> rebuild_rate{0};
  RebuildProgress progress GUARDED_BY(mutex);
  // Set by close(); read by control calls on any thread without a lock
  // (an atomic: it was a plain bool written and read concurrently).
  std::atomic<bool> closed{false};

  // Periodic dirty-bitmap clearing (options.dirty_clear_interval). Its own
  // thread, not the monitor: a checkpoint drains in-flight writes, and a
  // write stuck at a hung replica only completes once the monitor's
  // deadline tick fails that replica.
  std::unique_ptr<BackgroundTask> dirty_clear_thread;
  mutable Mutex checkpoint_mutex ACQUIRED_AFTER(mutex);
  std::condition_variable checkpoint_cv;
  bool dirty_clear_stop GUARDED_BY(checkpoint_mutex) = false;
  uint64_t checkpoints GUARDED_BY(checkpoint_mutex) = 0;
  uint64_t last_checkpoint_pause_us GUARDED_BY(checkpoint_mutex) = 0;

  // Verify runs (one at a time).
  Mutex verify_run_mutex;  // first in the lock order
  std::atomic<bool> verify_cancel{false};
  Mutex verify_sleep_mutex;  // throttle sleep, woken by cancel_verify() (leaf)
  std::condition_variable verify_cv;
  VerifyStatus verify_status GUARDED_BY(mutex);
  // Background verifies (start_verify(), scheduled scrub): one thread.
  std::unique_ptr<BackgroundTask> verify_thread;
  Mutex verify_bg_mutex;  // the three fields below; may then take `mutex`
  std::condition_variable verify_bg_cv;
  std::optional<VerifyOptions> verify_request GUARDED_BY(verify_bg_mutex);
  // Taken off verify_request, not finished.
  bool verify_bg_running GUARDED_BY(verify_bg_mutex) = false;
  bool verify_bg_stop GUARDED_BY(verify_bg_mutex) = false;
  void stop_verify_thread() {
    {
      MutexLock lock(verify_bg_mutex);
      verify_bg_stop = true;
    }
    verify_bg_cv.notify_all();
    if (verify_thread) {
      verify_thread->join();
      verify_thread.reset();
    }
  }

  [[nodiscard]] ReplicaState replica_state(unsigned r) const {
    return static_cast<ReplicaState>(state[r].load(std::memory_order_seq_cst));
  }
  [[nodiscard]] uint32_t mask_of(ReplicaState s) const {
    uint32_t m = 0;
    for (unsigned r = 0; r < nreplicas; ++r) {
      if (replica_state(r) == s) {
        m |= bit(r);
      }
    }
    return m;
  }
  [[nodiscard]] bool thread_exited(unsigned r) const { return replicas[r].thread->exited(); }

  uint64_t new_generation() REQUIRES(meta_mutex) {
    uint64_t g = 0;
    while (g == 0) {
      g = rng();
    }
    return g;
  }

  void event(int replica, std::string message) EXCLUDES(mutex) {
    MutexLock lock(mutex);
    if (replica >= 0) {
      spdlog::warn("volume {}: replica {} ({}): {}", options.name, replica,
                   names[static_cast<unsigned>(replica)], message);
    } else {
      spdlog::info("volume {}: {}", options.name, message);
    }
    events.push_back({std::chrono::system_clock::now(), replica, std::move(message)});
    if (events.size() > 256) {
      events.erase(events.begin());
    }
  }

  void poke_queues() {
    for (auto& q : queues) {
      signal_fd(q->wake.get());
    }
  }

  void bump_epoch() {
    state_epoch.fetch_add(1, std::memory_order_seq_cst);
    poke_queues();
  }

  // Data path (any queue thread) or control: takes `r` out of the write set.
  // Returns false if it refused (it is the last in-sync replica, which is
  // kept so the volume keeps its newest data; the I/O fails instead).
  bool report_failure(unsigned r, FailKind kind, int err) {
    uint8_t cur = state[r].load(std::memory_order_seq_cst);
    for (;;) {
      auto s = static_cast<ReplicaState>(cur);
      if (s == ReplicaState::kFailed || s == ReplicaState::kStale || s == ReplicaState::kRemoved) {
        return true;
      }
      if (s == ReplicaState::kInSync && std::popcount(mask_of(ReplicaState::kInSync)) <= 1) {
        return false;
      }
      // Hold acknowledgements of mutating requests until the survivors'
      // generation bump is durable (set BEFORE the state change).
      gen_hold.fetch_add(1, std::memory_order_seq_cst);
      fail_kind[r].store(static_cast<uint8_t>(kind), std::memory_order_relaxed);
      fail_errno[r].store(err, std::memory_order_relaxed);
      if (state[r].compare_exchange_weak(cur, static_cast<uint8_t>(ReplicaState::kFailed),
                                         std::memory_order_seq_cst)) {
        break;
      }
      gen_hold.fetch_sub(1, std::memory_order_seq_cst);
    }
    state_epoch.fetch_add(1, std::memory_order_seq_cst);
    signal_fd(monitor_fd.get());
    return true;
  }

  void set_state(unsigned r, ReplicaState s) {
    state[r].store(static_cast<uint8_t>(s), std::memory_order_seq_cst);
    bump_epoch();
  }

  Result<ReplicaMeta> read_meta(unsigned r) {
    ReplicaMeta m;
    ReplicaStore* store = replicas[r].store;
    Status st = replicas[r].thread->call([&]() -> Status {
      m = store->meta();
      return ok_status();
    });
    if (!st.ok()) {
      return st.error();
    }
    return m;
  }

  Status write_meta(unsigned r, const ReplicaMeta& m) {
    ReplicaStore* store = replicas[r].store;
    return replicas[r].thread->call([&]() -> Status { return store->write_meta(m); });
  }

  Result<std::vector<uint8_t>> read_dirty(unsigned r) {
    std::vector<uint8_t> bits;
    ReplicaStore* store = replicas[r].store;
    Status st = replicas[r].thread->call([&]() -> Status {
      bits = store->dirty_regions();
      return ok_status();
    });
    if (!st.ok()) {
      return st.error();
    }
    return bits;
  }

  // Background activities and control-path pauses (task_runner.h).
  [[nodiscard]] TaskRunner& runner() const {
    return options.task_runner != nullptr ? *options.task_runner : thread_task_runner();
  }
  void monitor_tick();
  void handle_failures();
  void rebuild_loop();
  void rebuild_abandon(const Job& job);
  // A rebuild job, phase by phase (rebuild.cpp); each phase's failure is
  // already reported through rebuild_failed() when it returns an error.
  Status run_job(const Job& job);
  struct RebuildPlan {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [offset, length)
    uint64_t total = 0;                                 // bytes in `ranges`
    uint64_t full_from = 0;                             // whole-range part starts here
  };
  Status rebuild_failed(const Job& job, const std::string& why);
  Status rebuild_join_targets(const Job& job);
  Status rebuild_collect(const Job& job, std::vector<uint8_t>& dirty, detail::Ranges& mapped);
  [[nodiscard]] RebuildPlan rebuild_plan(const Job& job, const std::vector<uint8_t>& dirty,
                                         const detail::Ranges& mapped) const;
  Status rebuild_copy(const Job& job, const RebuildPlan& plan, uint64_t start_ns, uint64_t& done);
  Status rebuild_copy_with(const Job& job, const RebuildPlan& plan, uint64_t start_ns,
                           uint64_t& done, std::byte* buffer);
  void rebuild_quiesce(QueueState& q);
  [[nodiscard]] uint64_t user_requests() const;
  void rebuild_yield(uint64_t wait_ns);
  Status rebuild_finish(const Job& job) EXCLUDES(meta_mutex);
  Result<InSyncSet> extended_in_sync_set(const Job& job, const ReplicaMeta& lineage)
      REQUIRES(meta_mutex);
  Status start_job(const Job& job);
  // `quiet_seq` (optional) gets the sequence number up to which every
  // mutating request is covered by this checkpoint if none was ordered
  // after its barrier, else UINT64_MAX.
  Status checkpoint_locked(uint64_t* quiet_seq = nullptr) REQUIRES(control_mutex);
  void dirty_clear_loop();
  void dirty_clear_round(uint64_t& clean_seq);
  void stop_dirty_clear();
  // Refuses new rebuild jobs and joins the worker (close and destruction).
  void stop_rebuild_worker();
  Status with_barrier(const std::function<Status()>& fn) REQUIRES(control_mutex);
  uint32_t region_bytes() const { return static_cast<uint32_t>(region_size); }
  // Indices holding a replica (any state but kRemoved).
  [[nodiscard]] uint32_t present_mask() const {
    uint32_t m = 0;
    for (unsigned r = 0; r < nreplicas; ++r) {
      if (replica_state(r) != ReplicaState::kRemoved) {
        m |= bit(r);
      }
    }
    return m;
  }

  // ---- snapshot helpers (under meta_mutex) ----
  [[nodiscard]] std::string replica_name(unsigned r) const EXCLUDES(mutex) {
    MutexLock lock(mutex);
    return "replica " + std::to_string(r) + " (" + names[r] + ")";
  }
  // Runs fn(store) on replica r's store thread.
  template <typename F>
  Status on_store(unsigned r, F&& fn) {
    ReplicaStore* store = replicas[r].store;
    return replicas[r].thread->call([&]() -> Status { return fn(*store); });
  }
  // Best-effort undo on the replicas in `mask` (logged when it fails).
  template <typename F>
  void undo_on(uint32_t mask, F&& fn) {
    for (unsigned r = 0; r < nreplicas; ++r) {
      if ((mask & bit(r)) == 0) {
        continue;
      }
      Status st = on_store(r, fn);
      if (!st.ok()) {
        spdlog::error("volume {}: undo on {} failed: {}", options.name, replica_name(r),
                      st.error().to_string());
      }
    }
  }
  // The replicas of `mask` whose store lists `snapshot`.
  uint32_t holders_of(const std::string& snapshot, uint32_t mask) {
    uint32_t holders = 0;
    for (unsigned r = 0; r < nreplicas; ++r) {
      if ((mask & bit(r)) == 0) {
        continue;
      }
      bool has = false;
      (void)on_store(r, [&](ReplicaStore& s) -> Status {
        auto listed = s.list_snapshots();
        has = std::find(listed.begin(), listed.end(), snapshot) != listed.end();
        return ok_status();
      });
      holders |= has ? bit(r) : 0U;
    }
    return holders;
  }
  Status refuse_if_lacking(const std::string& snapshot, uint32_t targets, const std::string& what);

  // ---- thin rebuild (docs/engine.md "Thin rebuild"; bindings stable) ----
  // Union of what one replica of `sources` and every replica of `targets`
  // hold; the whole volume if a store cannot tell.
  detail::Ranges mapped_ranges_of(uint32_t sources, uint32_t targets);
  // ENOSPC (naming both numbers) if `target`'s store cannot hold what a
  // full copy writes to it.
  Status check_space(const ReplicaBinding& target, const std::string& what);
  Status refuse_while_rebuilding(const std::string& what);

  // ---- membership (docs/engine.md "Membership changes") ----
  Status fence(unsigned r, const std::string& what) REQUIRES(membership_mutex);
  Status check_new_binding(const ReplicaBinding& b, int except, const std::string& what) const;
  Status install(unsigned r, const ReplicaBinding& b) REQUIRES(membership_mutex);
  Status uninstall(unsigned r) REQUIRES(membership_mutex);
  Status start_rebuild_locked(unsigned replica) REQUIRES(membership_mutex);
  Status take_out(unsigned r, const std::string& what) REQUIRES(membership_mutex);
  // One membership change at a time.
  Mutex membership_mutex ACQUIRED_AFTER(control_mutex);
};

}  // namespace ublkvol::engine
