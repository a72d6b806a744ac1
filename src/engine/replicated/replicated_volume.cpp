// ReplicatedVolume: the controller (replicated_volume.h, docs/engine.md).
//
// Code map:
//   QueueState      per-queue data path: submit, dispatch, completions,
//                   ordering, deadlines (runs on the queue's thread only)
//   Impl            shared volume state (atomics only on the data path), the
//                   monitor thread (failures, generation bumps, deadline
//                   ticks), rebuild worker, control operations.
#include "ublkvol/engine/replicated_volume.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <spdlog/spdlog.h>
#include <system_error>
#include <thread>

#include "ublkvol/common/crc32c.h"
#include "ublkvol/engine/generation.h"
#include "ublkvol/engine/store_executor.h"

#include "controller.h"
#include "thin_rebuild.h"
#include "verify_compare.h"

namespace ublkvol::engine {

using detail::InternalOp;
using detail::SlotKind;
using detail::StoreChannel;

const char* to_string(ReplicaState state) {
  switch (state) {
    case ReplicaState::kInSync:
      return "in-sync";
    case ReplicaState::kRebuilding:
      return "rebuilding";
    case ReplicaState::kFailed:
      return "failed";
    case ReplicaState::kStale:
      return "stale";
    case ReplicaState::kRemoved:
      return "removed";
  }
  return "unknown";
}

namespace {

constexpr uint32_t bit(unsigned r) { return 1U << r; }

void signal_fd(int fd) {
  uint64_t one = 1;
  ssize_t n = ::write(fd, &one, sizeof(one));
  (void)n;
}

void drain_fd(int fd) {
  uint64_t v = 0;
  ssize_t n = ::read(fd, &v, sizeof(v));
  (void)n;
}

bool is_mutating(VolumeOp op) {
  return op == VolumeOp::kWrite || op == VolumeOp::kDiscard || op == VolumeOp::kWriteZeroes;
}

ReplicaOp replica_op(VolumeOp op) {
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
};
static_assert(sizeof(IoScratch) <= kVolumeIoScratchBytes);

IoScratch& scratch(VolumeIo& io) { return *std::launder(reinterpret_cast<IoScratch*>(io.scratch)); }

enum class FailKind : uint8_t { kNone, kIoError, kDeadline, kThreadDied, kOperator, kMetadata };

const char* to_string(FailKind kind) {
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
  }
  return "unknown";
}

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<std::byte, FreeDeleter>;
AlignedBytes aligned_bytes(size_t size) {
  auto* p = static_cast<std::byte*>(std::aligned_alloc(4096, (size + 4095) / 4096 * 4096));
  if (p == nullptr) {
    throw std::bad_alloc();
  }
  return AlignedBytes(p);
}

std::string hex(uint64_t v) {
  char buf[20];
  (void)std::snprintf(buf, sizeof(buf), "%016" PRIx64, v);
  return buf;
}

}  // namespace

namespace detail {

// ---------------------------------------------------------------------------
// Per-queue state. Every method runs on the queue's owning thread, except
// the published ordering entries and bucket counters, which other queues
// read (atomics).
// ---------------------------------------------------------------------------
// A queue's request slots, in an anonymous mapping that is not touched up
// front: a slot is constructed (and its pages become resident) only when it is
// first handed out, so a queue that never sees a request - every user queue of
// a volume that is not exposed - costs address space, not memory (a slot is
// ~1 KiB; queue_depth of them per user queue used to be ~250 KiB per volume).
// Other queues scan only the slots constructed so far (live(), acquire).
class SlotPool {
 public:
  SlotPool() = default;
  SlotPool(const SlotPool&) = delete;
  SlotPool& operator=(const SlotPool&) = delete;
  ~SlotPool() {
    if (base_ != nullptr) {
      std::destroy_n(static_cast<Slot*>(base_), live_.load(std::memory_order_relaxed));
      ::munmap(base_, bytes_);
    }
  }

  Status init(unsigned capacity) {
    bytes_ = (size_t{capacity} * sizeof(Slot) + 4095) / 4096 * 4096;
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return errno_error("cannot map " + std::to_string(capacity) + " request slots");
    }
    base_ = p;
    capacity_ = capacity;
    return ok_status();
  }

  [[nodiscard]] unsigned live() const { return live_.load(std::memory_order_acquire); }
  Slot& operator[](unsigned i) const { return static_cast<Slot*>(base_)[i]; }

  // Owner thread: a newly constructed slot, or nullptr when all are in use.
  Slot* fresh() {
    const unsigned n = live_.load(std::memory_order_relaxed);
    if (n == capacity_) {
      return nullptr;
    }
    Slot* s = ::new (static_cast<Slot*>(base_) + n) Slot{};
    live_.store(n + 1, std::memory_order_release);
    return s;
  }

 private:
  void* base_ = nullptr;
  size_t bytes_ = 0;
  unsigned capacity_ = 0;
  std::atomic<unsigned> live_{0};
};

// A queue's ordering-table counters, in an anonymous mapping that is never
// written up front: its pages read as zero (the shared zero page) until a
// request of this queue first counts in them, so the table of a queue that
// sees no requests costs no memory (32 KiB per user queue and volume used to
// be touched at open). Accessed through std::atomic_ref.
class BucketTable {
 public:
  BucketTable() = default;
  BucketTable(const BucketTable&) = delete;
  BucketTable& operator=(const BucketTable&) = delete;
  ~BucketTable() {
    if (counters_ != nullptr) {
      ::munmap(counters_, bytes_);
    }
  }

  Status init(size_t count) {
    bytes_ = (count * sizeof(uint32_t) + 4095) / 4096 * 4096;
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return errno_error("cannot map an ordering table of " + std::to_string(count) + " counters");
    }
    counters_ = static_cast<uint32_t*>(p);
    return ok_status();
  }

  std::atomic_ref<uint32_t> operator[](size_t i) const {
    return std::atomic_ref<uint32_t>(counters_[i]);
  }

 private:
  uint32_t* counters_ = nullptr;
  size_t bytes_ = 0;
};

struct QueueState {
  ReplicatedVolume::Impl* vol = nullptr;
  unsigned index = 0;
  UniqueFd wake;
  SlotPool slots;
  unsigned nslots = 0;  // capacity of `slots` (the queue depth)
  BucketTable buckets;
  size_t nbuckets = kBuckets;
  // Channels to store threads, one per distinct thread. Membership changes
  // (control thread) publish and unpublish entries while the queue thread
  // iterates them, hence atomics; an unpublished channel object is kept in
  // `owned` until the volume is destroyed, so a queue thread still holding
  // its pointer never touches freed memory (its rings are empty by then).
  std::array<std::atomic<StoreChannel*>, kMaxReplicas> channels{};
  std::array<std::atomic<StoreChannel*>, kMaxReplicas> channel_of{};
  std::vector<std::unique_ptr<StoreChannel>> owned;  // control path only
  std::atomic<bool> opened{false};
  // The last state epoch this queue's thread acted on (end of reap()): the
  // membership fence waits for it (docs/engine.md "Membership changes").
  std::atomic<uint64_t> acked_epoch{0};

  Slot* free_list = nullptr;
  VolumeIo* wait_head = nullptr;  // waiting for a free slot
  VolumeIo* wait_tail = nullptr;
  Slot* blocked = nullptr;  // waiting for the ordering
  Slot* held = nullptr;     // completed, waiting for a generation bump
  Slot* zombies = nullptr;  // finished, sub-requests still at a dropped replica
  VolumeIo* done_head = nullptr;
  VolumeIo* done_tail = nullptr;
  Slot* fifo_head = nullptr;
  Slot* fifo_tail = nullptr;
  // Sub-requests at each replica's store. Written by the queue thread only
  // (plain load + store, no RMW); read by the membership fence.
  std::array<std::atomic<uint32_t>, kMaxReplicas> outstanding{};
  unsigned in_flight = 0;
  unsigned lingering = 0;  // completed requests still holding an ordering entry
  uint64_t seen_tick = 0;
  uint64_t seen_epoch = 0;               // masks computed for this epoch
  uint64_t seen_state_change_epoch = 0;  // in-flight requests re-checked
  uint32_t in_sync_mask = 0;
  uint32_t write_mask = 0;
  bool recheck_blocked = false;
  bool in_reap = false;
  bool self_signalled = false;

  // ---- lifecycle ----
  Status init(ReplicatedVolume::Impl& volume, unsigned queue_index, unsigned depth);
  void shutdown();

  // ---- VolumeQueue ----
  void submit(VolumeIo& io);
  void kick();
  unsigned reap();

  // ---- internal operations (control threads own internal queues) ----
  int submit_op(InternalOp& op);
  void release_barrier(InternalOp& op);
  // Reaps until op.done, sleeping on the wake fd in between.
  void run_until_done(InternalOp& op);
  void run_until_idle();

  // ---- data path pieces ----
  Slot* alloc_slot();
  void start_user(Slot& s, VolumeIo& io);
  void refresh_masks();
  void send(Slot& s, unsigned r, ReplicaOp op, uint64_t offset, uint64_t length, std::byte* buffer,
            bool fua);
  // send() of the same request to every replica in `targets`.
  void send_all(Slot& s, uint32_t targets, ReplicaOp op, uint64_t offset, uint64_t length,
                std::byte* buffer, bool fua);
  void handle(ReplicaIo& sub);
  void advance(Slot& s);
  void resume(Slot& s);
  void dispatch_user(Slot& s);
  void check_done_write(Slot& s);
  void retry_read(Slot& s);
  void start_repair(Slot& s);
  void repair_read(Slot& s);
  void copy_read(Slot& s);
  void finish_io(Slot& s, int result);
  void finish_op(Slot& s, int result);
  void maybe_free(Slot& s);
  void complete_io(VolumeIo& io, int result);
  int pick_read(uint32_t candidates) const;
  void lose(Slot& s, uint32_t lost);
  void on_state_change();
  void on_tick();
  void reclaim_zombies();

  // ---- ordering ----
  void publish(Slot& s, uint64_t b, uint64_t e);
  bool conflicts(Slot& s);
  bool may_overlap(uint64_t b, uint64_t e, bool own) const;
  void release_order(Slot& s);
  void recheck();

  void fifo_touch(Slot& s);
  void fifo_remove(Slot& s);

  // ---- membership (control thread, with replica r fenced) ----
  Status bind_replica(unsigned r);
  Status unbind_replica(unsigned r);
  void inc_outstanding(unsigned r) {
    outstanding[r].store(outstanding[r].load(std::memory_order_relaxed) + 1,
                         std::memory_order_release);
  }
  void dec_outstanding(unsigned r) {
    outstanding[r].store(outstanding[r].load(std::memory_order_relaxed) - 1,
                         std::memory_order_release);
  }
  StoreChannel* channel(unsigned i) const { return channels[i].load(std::memory_order_acquire); }
};

}  // namespace detail

using detail::QueueState;

// ---------------------------------------------------------------------------
// Shared volume state.
// ---------------------------------------------------------------------------
struct ReplicatedVolume::Impl {
  ReplicatedVolumeOptions options;
  VolumeInfo info;
  // Replica indices in use are < nreplicas (grows with add_replica(); a
  // removed index is kRemoved). `replicas` always has kMaxReplicas entries;
  // an entry changes only while its index is fenced (membership changes,
  // under meta_mutex).
  std::atomic<unsigned> nreplicas{0};
  std::vector<ReplicaBinding> replicas;
  std::array<std::string, kMaxReplicas> names;  // under `mutex`
  uint64_t region_size = 0;                     // dirty-region bytes
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
  std::thread monitor;
  UniqueFd monitor_fd;
  std::atomic<bool> stopping{false};

  // Control-plane state.
  mutable std::mutex mutex;  // events, errors, generation, progress
  uint64_t generation = 0;
  std::vector<VolumeEvent> events;
  std::array<std::string, kMaxReplicas> last_error;
  std::array<bool, kMaxReplicas> handled{};
  std::mutex meta_mutex;     // serialises metadata updates across replicas
  std::mutex control_mutex;  // serialises users of the control queue
  std::mt19937_64 rng{std::random_device{}()};

  // Rebuild worker.
  struct Job {
    uint32_t targets = 0;
    uint64_t full_from = 0;
    // binding_version of each target when the job was made: a job whose
    // target's binding changed since (replaced / removed) is dropped.
    std::array<uint64_t, kMaxReplicas> versions{};
  };
  std::array<uint64_t, kMaxReplicas> binding_version{};  // under meta_mutex
  Job make_job(uint32_t targets, uint64_t full_from) {
    Job job;
    job.targets = targets;
    job.full_from = full_from;
    std::lock_guard meta_lock(meta_mutex);
    job.versions = binding_version;
    return job;
  }
  std::thread rebuild_thread;
  std::mutex rebuild_mutex;
  std::condition_variable rebuild_cv;
  std::deque<Job> jobs;
  bool rebuild_running = false;
  bool rebuild_stop = false;
  Status rebuild_result;
  std::atomic<uint64_t> rebuild_rate{0};
  RebuildProgress progress;  // under `mutex`
  bool closed = false;

  // Periodic dirty-bitmap clearing (options.dirty_clear_interval). Its own
  // thread, not the monitor: a checkpoint drains in-flight writes, and a
  // write stuck at a hung replica only completes once the monitor's
  // deadline tick fails that replica.
  std::thread dirty_clear_thread;
  mutable std::mutex checkpoint_mutex;  // the fields below
  std::condition_variable checkpoint_cv;
  bool dirty_clear_stop = false;
  uint64_t checkpoints = 0;
  uint64_t last_checkpoint_pause_us = 0;

  // Verify runs (one at a time); verify_status under `mutex`.
  std::mutex verify_run_mutex;
  std::atomic<bool> verify_cancel{false};
  std::mutex verify_sleep_mutex;  // throttle sleep, woken by cancel_verify()
  std::condition_variable verify_cv;
  VerifyStatus verify_status;
  // Background verifies (start_verify(), scheduled scrub): one thread.
  std::thread verify_thread;
  std::mutex verify_bg_mutex;  // the three fields below
  std::condition_variable verify_bg_cv;
  std::optional<VerifyOptions> verify_request;
  bool verify_bg_running = false;  // taken off verify_request, not finished
  bool verify_bg_stop = false;
  void stop_verify_thread() {
    {
      std::lock_guard lock(verify_bg_mutex);
      verify_bg_stop = true;
    }
    verify_bg_cv.notify_all();
    if (verify_thread.joinable()) {
      verify_thread.join();
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

  uint64_t new_generation() {
    uint64_t g = 0;
    while (g == 0) {
      g = rng();
    }
    return g;
  }

  void event(int replica, std::string message) {
    std::lock_guard lock(mutex);
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

  void monitor_loop();
  void handle_failures();
  void rebuild_loop();
  Status run_job(const Job& job);
  Status start_job(const Job& job);
  // `quiet_seq` (optional) gets the sequence number up to which every
  // mutating request is covered by this checkpoint if none was ordered
  // after its barrier, else UINT64_MAX.
  Status checkpoint_locked(uint64_t* quiet_seq = nullptr);
  void dirty_clear_loop();
  void dirty_clear_round(uint64_t& clean_seq);
  void stop_dirty_clear();
  Status with_barrier(const std::function<Status()>& fn);
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
  [[nodiscard]] std::string replica_name(unsigned r) const {
    std::lock_guard lock(mutex);
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
  Status fence(unsigned r, const std::string& what);
  Status check_new_binding(const ReplicaBinding& b, int except, const std::string& what) const;
  Status install(unsigned r, const ReplicaBinding& b);
  Status uninstall(unsigned r);
  Status start_rebuild_locked(unsigned replica);
  Status take_out(unsigned r, const std::string& what);
  std::mutex membership_mutex;  // one membership change at a time
};

namespace detail {

// ---------------------------------------------------------------------------
// QueueState implementation
// ---------------------------------------------------------------------------

Status QueueState::init(ReplicatedVolume::Impl& volume, unsigned queue_index, unsigned depth) {
  vol = &volume;
  index = queue_index;
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    return errno_error("volume " + volume.options.name + ": eventfd");
  }
  wake.reset(fd);
  nslots = depth;
  UBLKVOL_TRY(slots.init(depth));
  // The rebuild and control queues (a few slots) need far fewer buckets than
  // a user queue: 8192 counters each cost 32 KiB per volume and queue.
  nbuckets = depth <= kInternalQueueDepth ? kInternalBuckets : kBuckets;
  UBLKVOL_TRY(buckets.init(nbuckets));
  // One channel per distinct store thread.
  for (unsigned r = 0; r < volume.nreplicas; ++r) {
    UBLKVOL_TRY(bind_replica(r));
  }
  return ok_status();
}

// Publishes replica r's binding to this queue: reuses the channel to its
// store thread if there is one, else adds one. Before r's state puts it in
// any mask (so the queue thread only sends to r after this).
Status QueueState::bind_replica(unsigned r) {
  StoreExecutor* t = vol->replicas[r].thread;
  StoreChannel* ch = nullptr;
  int free_entry = -1;
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    StoreChannel* c = channel(i);
    if (c != nullptr && c->thread == t) {
      ch = c;
    } else if (c == nullptr && free_entry < 0) {
      free_entry = static_cast<int>(i);
    }
  }
  if (ch != nullptr) {
    // The store thread reads stores[r] only for requests of replica r, which
    // are pushed after this (ring release/acquire orders it).
    ch->stores[r] = vol->replicas[r].store;
    channel_of[r].store(ch, std::memory_order_release);
    return ok_status();
  }
  if (free_entry < 0) {
    return Error(ENOSPC, "volume " + vol->options.name + ": no free channel on queue " +
                             std::to_string(index));
  }
  // Each replica has at most one sub-request per slot in flight.
  owned.push_back(std::make_unique<StoreChannel>(size_t{nslots} * kMaxReplicas));
  ch = owned.back().get();
  ch->thread = t;
  ch->queue_wake_fd = wake.get();
  ch->stores[r] = vol->replicas[r].store;
  UBLKVOL_TRY(t->add_channel(*ch));
  channel_of[r].store(ch, std::memory_order_release);
  channels[static_cast<unsigned>(free_entry)].store(ch, std::memory_order_release);
  return ok_status();
}

// Forgets replica r's binding (fenced: no sub-request of r is at its store
// and the queue thread will not send to r). A channel no other replica of
// the volume uses is unpublished and taken off its thread (if that thread
// still runs); the object stays in `owned`.
Status QueueState::unbind_replica(unsigned r) {
  StoreChannel* ch = channel_of[r].load(std::memory_order_acquire);
  channel_of[r].store(nullptr, std::memory_order_release);
  if (ch == nullptr) {
    return ok_status();
  }
  ch->stores[r] = nullptr;
  for (unsigned o = 0; o < kMaxReplicas; ++o) {
    if (channel_of[o].load(std::memory_order_acquire) == ch) {
      return ok_status();  // still used by another replica on that thread
    }
  }
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    if (channel(i) == ch) {
      channels[i].store(nullptr, std::memory_order_release);
    }
  }
  if (!ch->thread->exited()) {
    return ch->thread->remove_channel(*ch);
  }
  return ok_status();
}

void QueueState::shutdown() {
  // Wait for sub-requests still at live store threads (their completions
  // would land in memory we are about to free).
  for (;;) {
    bool waiting = false;
    for (unsigned i = 0; i < slots.live(); ++i) {
      for (unsigned r = 0; r < vol->nreplicas; ++r) {
        if ((slots[i].pending & bit(r)) != 0 && !vol->thread_exited(r)) {
          waiting = true;
        }
      }
    }
    if (!waiting) {
      break;
    }
    for (unsigned i = 0; i < kMaxReplicas; ++i) {
      if (StoreChannel* c = channel(i)) {
        while (ReplicaIo* sub = c->completions.pop()) {
          handle(*sub);
        }
      }
    }
    pollfd p{wake.get(), POLLIN, 0};
    ::poll(&p, 1, 100);
    drain_fd(wake.get());
  }
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    StoreChannel* c = channel(i);
    if (c != nullptr && !c->thread->exited()) {
      (void)c->thread->remove_channel(*c);
    }
  }
}

Slot* QueueState::alloc_slot() {
  Slot* s = free_list;
  if (s == nullptr) {
    return slots.fresh();  // never used before: default-constructed
  }
  free_list = s->next;
  s->next = nullptr;
  s->io = nullptr;
  s->op = nullptr;
  s->completed = false;
  s->held = false;
  s->zombie = false;
  s->ordered = false;
  s->sent = s->dispatched = s->acked = s->errors = s->tried = s->bad = 0;
  return s;
}

void QueueState::complete_io(VolumeIo& io, int result) {
  IoScratch& sc = scratch(io);
  sc.next = nullptr;
  sc.result = result;
  if (done_tail == nullptr) {
    done_head = &io;
  } else {
    scratch(*done_tail).next = &io;
  }
  done_tail = &io;
  if (!in_reap && !self_signalled) {
    // Completed outside reap() (e.g. a request rejected in submit): make the
    // queue thread call reap().
    self_signalled = true;
    signal_fd(wake.get());
  }
}

void QueueState::refresh_masks() {
  uint64_t epoch = vol->state_epoch.load(std::memory_order_seq_cst);
  if (epoch == seen_epoch) {
    return;
  }
  seen_epoch = epoch;
  in_sync_mask = vol->mask_of(ReplicaState::kInSync);
  write_mask = in_sync_mask | vol->mask_of(ReplicaState::kRebuilding);
}

void QueueState::submit(VolumeIo& io) {
  ++in_flight;
  const VolumeInfo& info = vol->info;
  int err = 0;
  if (io.op != VolumeOp::kFlush) {
    if (io.length == 0 || io.offset % info.block_size != 0 || io.length % info.block_size != 0 ||
        io.offset > info.size_bytes || io.length > info.size_bytes - io.offset ||
        io.length > info.max_io_bytes ||
        ((io.op == VolumeOp::kRead || io.op == VolumeOp::kWrite) &&
         (io.buffer == nullptr || reinterpret_cast<uintptr_t>(io.buffer) % 4096 != 0))) {
      err = -EINVAL;
    }
  }
  if (err != 0) {
    complete_io(io, err);
    return;
  }
  Slot* s = alloc_slot();
  if (s == nullptr) {
    scratch(io).next = nullptr;
    if (wait_tail == nullptr) {
      wait_head = &io;
    } else {
      scratch(*wait_tail).next = &io;
    }
    wait_tail = &io;
    return;
  }
  start_user(*s, io);
}

void QueueState::start_user(Slot& s, VolumeIo& io) {
  s.kind = SlotKind::kUser;
  s.io = &io;
  s.vop = io.op;
  if (is_mutating(io.op)) {
    publish(s, io.offset, io.offset + io.length);
    if (conflicts(s)) {
      s.phase = Phase::kOrderWait;
      s.next = blocked;
      blocked = &s;
      return;
    }
  }
  dispatch_user(s);
}

void QueueState::dispatch_user(Slot& s) {
  refresh_masks();
  VolumeIo& io = *s.io;
  s.phase = Phase::kData;
  if (static_cast<unsigned>(std::popcount(in_sync_mask)) < vol->options.min_replicas) {
    release_order(s);
    finish_io(s, -EIO);
    return;
  }
  if (io.op == VolumeOp::kRead) {
    s.tried = 0;
    retry_read(s);
    return;
  }
  s.dispatched = write_mask;
  send_all(s, write_mask, replica_op(io.op), io.offset, io.length, io.buffer, io.fua);
}

int QueueState::pick_read(uint32_t candidates) const {
  int best = -1;
  for (unsigned r = 0; r < vol->nreplicas; ++r) {
    if ((candidates & bit(r)) != 0 &&
        (best < 0 ||
         outstanding[r].load(std::memory_order_relaxed) <
             outstanding[static_cast<unsigned>(best)].load(std::memory_order_relaxed))) {
      best = static_cast<int>(r);
    }
  }
  return best;
}

void QueueState::retry_read(Slot& s) {
  refresh_masks();
  int r = pick_read(in_sync_mask & ~s.tried & ~s.pending);
  if (r < 0) {
    finish_io(s, -EIO);
    return;
  }
  s.tried |= bit(static_cast<unsigned>(r));
  s.acked = 0;
  send(s, static_cast<unsigned>(r), ReplicaOp::kRead, s.io->offset, s.io->length, s.io->buffer,
       false);
}

void QueueState::send(Slot& s, unsigned r, ReplicaOp op, uint64_t offset, uint64_t length,
                      std::byte* buffer, bool fua) {
  ReplicaIo& sub = s.sub[r];
  sub.op = op;
  sub.fua = fua;
  sub.replica = static_cast<uint8_t>(r);
  sub.queue = static_cast<uint8_t>(index);
  sub.offset = offset;
  sub.length = static_cast<uint32_t>(length);
  sub.buffer = buffer;
  sub.untracked =
      s.kind == SlotKind::kCopy && (op == ReplicaOp::kWrite || op == ReplicaOp::kWriteZeroes);
  sub.result = 0;
  sub.engine_tag = &s;
  s.pending |= bit(r);
  s.sent |= bit(r);
  inc_outstanding(r);
  StoreChannel* ch = channel_of[r].load(std::memory_order_relaxed);
  bool was_empty = false;
  bool ok = ch->requests.push(&sub, was_empty);
  // Rings hold nslots * kMaxReplicas entries: never full.
  (void)ok;
  ch->pushed = true;
  fifo_touch(s);
}

void QueueState::send_all(Slot& s, uint32_t targets, ReplicaOp op, uint64_t offset, uint64_t length,
                          std::byte* buffer, bool fua) {
  for (unsigned r = 0; r < vol->nreplicas; ++r) {
    if ((targets & bit(r)) != 0) {
      send(s, r, op, offset, length, buffer, fua);
    }
  }
}

// NOLINTNEXTLINE(readability-make-member-function-const): clears the flags of channels it owns
void QueueState::kick() {
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    StoreChannel* c = channel(i);
    if (c != nullptr && c->pushed) {
      c->pushed = false;
      c->thread->ring_doorbell();
    }
  }
}

void QueueState::fifo_touch(Slot& s) {
  if (s.in_fifo) {
    if (fifo_tail == &s) {
      s.issue_ns = vol->options.clock.now_ns();
      return;
    }
    fifo_remove(s);
  }
  s.issue_ns = vol->options.clock.now_ns();
  s.in_fifo = true;
  s.fifo_next = nullptr;
  s.fifo_prev = fifo_tail;
  if (fifo_tail == nullptr) {
    fifo_head = &s;
  } else {
    fifo_tail->fifo_next = &s;
  }
  fifo_tail = &s;
}

void QueueState::fifo_remove(Slot& s) {
  if (!s.in_fifo) {
    return;
  }
  if (s.fifo_prev != nullptr) {
    s.fifo_prev->fifo_next = s.fifo_next;
  } else {
    fifo_head = s.fifo_next;
  }
  if (s.fifo_next != nullptr) {
    s.fifo_next->fifo_prev = s.fifo_prev;
  } else {
    fifo_tail = s.fifo_prev;
  }
  s.fifo_prev = s.fifo_next = nullptr;
  s.in_fifo = false;
}

void QueueState::handle(ReplicaIo& sub) {
  auto& s = *static_cast<Slot*>(sub.engine_tag);
  unsigned r = sub.replica;
  s.pending &= ~bit(r);
  dec_outstanding(r);
  if ((s.sent & bit(r)) == 0) {
    // A sub-request the slot stopped waiting for (its replica was dropped).
    maybe_free(s);
    return;
  }
  s.sent &= ~bit(r);
  int result = sub.result;
  if (result < 0) {
    s.errors |= bit(r);
    if (s.phase == Phase::kData && s.vop == VolumeOp::kRead) {
      // Read errors are repaired, not a reason to drop the replica.
      s.bad |= bit(r);
    } else if (s.phase == Phase::kRepairRead || s.phase == Phase::kCopyRead ||
               s.phase == Phase::kVerifyRead) {
      // Same for the other reads: retried elsewhere / reported.
    } else if (!vol->report_failure(r, FailKind::kIoError, result)) {
      spdlog::error("volume {}: {} on the last in-sync replica {} failed: {} (kept in service)",
                    vol->options.name, to_string(sub.op), r,
                    std::error_code(-result, std::generic_category()).message());
    }
  } else {
    s.acked |= bit(r);
  }
  advance(s);
}

// Phases in which the slot's sub-requests read into a buffer.
static bool reads_into_buffer(const Slot& s) {
  return (s.phase == Phase::kData && s.vop == VolumeOp::kRead) || s.phase == Phase::kRepairRead ||
         s.phase == Phase::kCopyRead || s.phase == Phase::kVerifyRead;
}

// Drops the expectation of answers from `lost` replicas (dropped, dead or
// overdue) and moves the request on.
void QueueState::lose(Slot& s, uint32_t lost) {
  lost &= s.sent;
  if (lost == 0) {
    return;
  }
  s.sent &= ~lost;
  s.errors |= lost;
  advance(s);
}

void QueueState::advance(Slot& s) {
  if (s.sent != 0 && s.phase != Phase::kData) {
    return;
  }
  switch (s.phase) {
    case Phase::kData:
      if (s.vop == VolumeOp::kRead) {
        if (s.sent != 0) {
          return;
        }
        if (s.acked != 0) {
          if (s.bad != 0) {
            start_repair(s);
          } else {
            finish_io(s, 0);
          }
        } else {
          retry_read(s);
        }
      } else {
        check_done_write(s);
      }
      return;
    case Phase::kRepairRead: {
      if (s.acked == 0) {
        repair_read(s);
        return;
      }
      refresh_masks();
      uint32_t targets = s.bad & write_mask & ~s.pending;
      if (targets == 0) {
        release_order(s);
        finish_io(s, 0);
        return;
      }
      s.phase = Phase::kRepairWrite;
      s.acked = s.errors = 0;
      send_all(s, targets, ReplicaOp::kWrite, s.io->offset, s.io->length, s.io->buffer, false);
      return;
    }
    case Phase::kRepairWrite:
      if (s.acked != 0) {
        spdlog::info("volume {}: repaired read error at offset {} length {}", vol->options.name,
                     s.io->offset, s.io->length);
      }
      release_order(s);
      finish_io(s, 0);
      return;
    case Phase::kCopyRead: {
      if (s.acked == 0) {
        copy_read(s);
        return;
      }
      refresh_masks();
      uint32_t targets = s.op->dst_mask & write_mask & ~s.pending;
      if (targets != s.op->dst_mask) {
        release_order(s);
        finish_op(s, -EIO);
        return;
      }
      s.phase = Phase::kCopyWrite;
      s.acked = s.errors = 0;
      // Thin: zeros (unmapped on the source) go out as write-zeroes, which
      // allocate nothing on a thin target. (Internal queue: not the data path.)
      ReplicaOp wop = detail::all_zero(s.op->buffer, s.op->length) ? ReplicaOp::kWriteZeroes
                                                                   : ReplicaOp::kWrite;
      send_all(s, targets, wop, s.op->offset, s.op->length, s.op->buffer, false);
      return;
    }
    case Phase::kCopyWrite:
      release_order(s);
      finish_op(s, s.errors != 0 ? -EIO : 0);
      return;
    case Phase::kVerifyRead:
      release_order(s);
      s.op->read_mask = s.acked;
      finish_op(s, 0);
      return;
    case Phase::kFree:
    case Phase::kOrderWait:
    case Phase::kGranted:
      return;
  }
}

void QueueState::check_done_write(Slot& s) {
  refresh_masks();
  // Every live replica the write went to - rebuilding ones included - must
  // answer before the caller gets its buffer back: replicas write straight
  // from it (zero copy), so completing earlier would let the caller reuse
  // the buffer under a rebuilding replica's write.
  uint32_t need = s.dispatched & write_mask;
  if ((need & s.sent) != 0) {
    return;
  }
  if ((s.sent & write_mask) == 0) {
    // Every live replica has applied it: later overlapping writes may go.
    release_order(s);
  }
  if (!s.completed && !s.held) {
    bool ok = (s.acked & in_sync_mask) != 0 &&
              static_cast<unsigned>(std::popcount(in_sync_mask)) >= vol->options.min_replicas;
    if (ok && vol->gen_hold.load(std::memory_order_seq_cst) != 0) {
      s.held = true;
      s.next = held;
      held = &s;
      return;
    }
    finish_io(s, ok ? 0 : -EIO);
    return;
  }
  maybe_free(s);
}

void QueueState::start_repair(Slot& s) {
  // Re-read a good copy and rewrite the bad replica(s) while holding the
  // range like a write, so no concurrent write can slip in between.
  spdlog::warn("volume {}: read error at offset {} length {} on replica mask {:#x}; repairing",
               vol->options.name, s.io->offset, s.io->length, s.bad);
  s.tried = s.bad;
  publish(s, s.io->offset, s.io->offset + s.io->length);
  if (conflicts(s)) {
    s.phase = Phase::kOrderWait;
    s.next = blocked;
    blocked = &s;
    return;
  }
  s.phase = Phase::kRepairRead;
  repair_read(s);
}

void QueueState::repair_read(Slot& s) {
  refresh_masks();
  s.phase = Phase::kRepairRead;
  int r = pick_read(in_sync_mask & ~s.tried & ~s.pending);
  if (r < 0) {
    // No other good copy now: the data read earlier stands.
    release_order(s);
    finish_io(s, 0);
    return;
  }
  s.tried |= bit(static_cast<unsigned>(r));
  s.acked = 0;
  send(s, static_cast<unsigned>(r), ReplicaOp::kRead, s.io->offset, s.io->length, s.io->buffer,
       false);
}

void QueueState::copy_read(Slot& s) {
  refresh_masks();
  s.phase = Phase::kCopyRead;
  int r = pick_read(in_sync_mask & ~s.tried & ~s.pending & ~s.op->dst_mask);
  if (r < 0) {
    release_order(s);
    finish_op(s, -EIO);
    return;
  }
  s.tried |= bit(static_cast<unsigned>(r));
  s.acked = 0;
  send(s, static_cast<unsigned>(r), ReplicaOp::kRead, s.op->offset, s.op->length, s.op->buffer,
       false);
}

void QueueState::resume(Slot& s) {
  switch (s.kind) {
    case SlotKind::kUser:
      if (s.vop == VolumeOp::kRead) {
        s.phase = Phase::kRepairRead;
        repair_read(s);
      } else {
        dispatch_user(s);
      }
      return;
    case SlotKind::kCopy:
      s.tried = 0;
      copy_read(s);
      return;
    case SlotKind::kVerify: {
      refresh_masks();
      s.phase = Phase::kVerifyRead;
      s.acked = 0;
      for (unsigned r = 0; r < vol->nreplicas; ++r) {
        if ((in_sync_mask & bit(r)) != 0 && (s.pending & bit(r)) == 0) {
          send(s, r, ReplicaOp::kRead, s.op->offset, s.op->length, s.op->buffers[r], false);
        }
      }
      if (s.sent == 0) {
        advance(s);
      }
      return;
    }
    case SlotKind::kBarrier:
      s.phase = Phase::kGranted;
      s.op->slot = &s;
      s.op->done = true;
      return;
  }
}

void QueueState::finish_io(Slot& s, int result) {
  s.completed = true;
  if (s.ordered) {
    // Still ordering later writes until a rebuilding replica applied it.
    s.lingering = true;
    ++lingering;
  }
  complete_io(*s.io, result);
  maybe_free(s);
}

void QueueState::finish_op(Slot& s, int result) {
  s.completed = true;
  s.op->result = result;
  s.op->done = true;
  maybe_free(s);
}

void QueueState::maybe_free(Slot& s) {
  if (!s.completed || s.held) {
    return;
  }
  if (s.sent == 0) {
    fifo_remove(s);
  }
  if (s.ordered) {
    return;
  }
  if (s.pending != 0) {
    if (!s.zombie && s.sent == 0) {
      s.zombie = true;
      s.next = zombies;
      zombies = &s;
    }
    return;
  }
  if (s.zombie) {
    // Unlink from the zombie list.
    Slot** p = &zombies;
    while (*p != nullptr && *p != &s) {
      p = &(*p)->next;
    }
    if (*p != nullptr) {
      *p = s.next;
    }
    s.zombie = false;
  }
  fifo_remove(s);
  s.phase = Phase::kFree;
  s.next = free_list;
  free_list = &s;
  if (wait_head != nullptr) {
    VolumeIo* io = wait_head;
    wait_head = scratch(*io).next;
    if (wait_head == nullptr) {
      wait_tail = nullptr;
    }
    start_user(*alloc_slot(), *io);
  }
}

// ---- ordering (docs/engine.md, "Ordering overlapping writes") ----

// NOLINTNEXTLINE(readability-make-member-function-const): writes the ordering table it owns
void QueueState::publish(Slot& s, uint64_t b, uint64_t e) {
  s.b = b;
  s.e = e;
  s.begin.store(b, std::memory_order_seq_cst);
  s.end.store(e, std::memory_order_seq_cst);
  s.seq.store(kSeqPending, std::memory_order_seq_cst);
  uint64_t first = b >> kBucketShift;
  uint64_t n = std::min<uint64_t>(((e - 1) >> kBucketShift) - first + 1, nbuckets);
  for (uint64_t i = 0; i < n; ++i) {
    buckets[(first + i) % nbuckets].fetch_add(1, std::memory_order_seq_cst);
  }
  s.my_seq = vol->next_seq.fetch_add(1, std::memory_order_seq_cst) + 1;
  s.seq.store(s.my_seq, std::memory_order_seq_cst);
  s.ordered = true;
}

bool QueueState::may_overlap(uint64_t b, uint64_t e, bool own) const {
  uint64_t first = b >> kBucketShift;
  uint64_t n = ((e - 1) >> kBucketShift) - first + 1;
  if (n >= nbuckets) {
    return true;
  }
  // The own queue's counters include the request being checked.
  uint32_t threshold = own ? 1 : 0;
  for (uint64_t i = 0; i < n; ++i) {
    if (buckets[(first + i) % nbuckets].load(std::memory_order_seq_cst) > threshold) {
      return true;
    }
  }
  return false;
}

bool QueueState::conflicts(Slot& s) {
  for (auto& q : vol->queues) {
    bool own = q.get() == this;
    if (!q->may_overlap(s.b, s.e, own)) {
      continue;
    }
    const unsigned live = q->slots.live();
    for (unsigned i = 0; i < live; ++i) {
      Slot& o = q->slots[i];
      if (&o == &s) {
        continue;
      }
      for (;;) {
        uint64_t s1 = o.seq.load(std::memory_order_seq_cst);
        if (s1 == 0) {
          break;
        }
        uint64_t ob = o.begin.load(std::memory_order_seq_cst);
        uint64_t oe = o.end.load(std::memory_order_seq_cst);
        uint64_t s2 = o.seq.load(std::memory_order_seq_cst);
        if (s1 != s2) {
          continue;
        }
        if (ob >= s.e || oe <= s.b || (s1 != kSeqPending && s1 >= s.my_seq)) {
          break;
        }
        if (s1 == kSeqPending) {
          // Another queue is between publishing its range and taking its
          // sequence number (a few instructions): wait for the number.
          std::this_thread::yield();
          continue;
        }
        if (!own) {
          o.waiters.fetch_or(uint64_t{1} << index, std::memory_order_seq_cst);
          if (o.seq.load(std::memory_order_seq_cst) != s1) {
            continue;  // released meanwhile: look again
          }
        }
        return true;
      }
    }
  }
  return false;
}

void QueueState::release_order(Slot& s) {
  if (!s.ordered) {
    return;
  }
  s.ordered = false;
  if (s.lingering) {
    s.lingering = false;
    --lingering;
  }
  s.seq.store(0, std::memory_order_seq_cst);
  uint64_t first = s.b >> kBucketShift;
  uint64_t n = std::min<uint64_t>(((s.e - 1) >> kBucketShift) - first + 1, nbuckets);
  for (uint64_t i = 0; i < n; ++i) {
    buckets[(first + i) % nbuckets].fetch_sub(1, std::memory_order_seq_cst);
  }
  uint64_t waiters = s.waiters.exchange(0, std::memory_order_seq_cst);
  recheck_blocked = true;
  while (waiters != 0) {
    unsigned q = static_cast<unsigned>(std::countr_zero(waiters));
    waiters &= waiters - 1;
    if (q != index && q < vol->queues.size()) {
      signal_fd(vol->queues[q]->wake.get());
    }
  }
}

void QueueState::recheck() {
  recheck_blocked = false;
  // Oldest first (the list is LIFO): collect, then retry in sequence order.
  Slot* list = blocked;
  blocked = nullptr;
  std::array<Slot*, 64> batch{};
  while (list != nullptr) {
    unsigned n = 0;
    while (list != nullptr && n < batch.size()) {
      batch[n++] = list;
      list = list->next;
    }
    std::sort(batch.begin(), batch.begin() + n,
              [](const Slot* a, const Slot* b) { return a->my_seq < b->my_seq; });
    for (unsigned i = 0; i < n; ++i) {
      Slot& s = *batch[i];
      if (conflicts(s)) {
        s.next = blocked;
        blocked = &s;
      } else {
        resume(s);
      }
    }
  }
}

void QueueState::on_state_change() {
  refresh_masks();
  // Stop waiting for replicas that left the write set.
  for (Slot* s = fifo_head; s != nullptr;) {
    Slot* next = s->fifo_next;
    uint32_t lost = s->sent & ~write_mask;
    if (lost != 0 && reads_into_buffer(*s)) {
      // A read's sub-request at a dropped replica whose store thread still
      // runs will still be issued and land in the buffer: retrying the read
      // elsewhere now would have two replicas write it, the late one
      // possibly after the request completed. Wait for its answer (handled
      // as usual); a hung replica is still cut off by the deadline tick,
      // and one whose thread died never answers, so it is let go now.
      uint32_t dead = 0;
      for (unsigned r = 0; r < vol->nreplicas; ++r) {
        if ((lost & bit(r)) != 0 && vol->thread_exited(r)) {
          dead |= bit(r);
        }
      }
      lost = dead;
    }
    if (lost != 0) {
      lose(*s, lost);
    } else if (s->phase == Phase::kData && s->kind == SlotKind::kUser &&
               s->vop != VolumeOp::kRead) {
      // A replica may have joined the in-sync set or left it.
      check_done_write(*s);
    }
    s = next;
  }
}

void QueueState::on_tick() {
  uint64_t now = vol->options.clock.now_ns();
  for (Slot* s = fifo_head; s != nullptr;) {
    Slot* next = s->fifo_next;
    // (Requests re-sent during this loop carry a later stamp than `now`.)
    if (s->issue_ns + vol->deadline_ns > now) {
      break;
    }
    uint32_t overdue = s->sent;
    for (unsigned r = 0; r < vol->nreplicas; ++r) {
      if ((overdue & bit(r)) != 0) {
        vol->report_failure(r, FailKind::kDeadline, -ETIMEDOUT);
      }
    }
    refresh_masks();
    lose(*s, overdue);
    s = next;
  }
  reclaim_zombies();
}

// Sub-requests at store threads that died will never come back: release the
// slots waiting only for them (and the per-replica outstanding counts that a
// membership fence waits on).
void QueueState::reclaim_zombies() {
  for (Slot* s = zombies; s != nullptr;) {
    Slot* next = s->next;
    for (unsigned r = 0; r < vol->nreplicas; ++r) {
      if ((s->pending & bit(r)) != 0 && vol->thread_exited(r)) {
        s->pending &= ~bit(r);
        dec_outstanding(r);
      }
    }
    maybe_free(*s);
    s = next;
  }
}

unsigned QueueState::reap() {
  in_reap = true;
  self_signalled = false;
  // Completions first: a deadline check must not blame a replica whose
  // answer is already waiting in the ring.
  for (unsigned i = 0; i < kMaxReplicas; ++i) {
    if (StoreChannel* c = channel(i)) {
      while (ReplicaIo* sub = c->completions.pop()) {
        handle(*sub);
      }
    }
  }
  uint64_t epoch = vol->state_epoch.load(std::memory_order_seq_cst);
  if (epoch != seen_state_change_epoch) {
    seen_state_change_epoch = epoch;
    on_state_change();
  }
  uint64_t t = vol->tick.load(std::memory_order_relaxed);
  if (t != seen_tick) {
    seen_tick = t;
    on_tick();
  }
  if (held != nullptr && vol->gen_hold.load(std::memory_order_seq_cst) == 0) {
    Slot* list = held;
    held = nullptr;
    refresh_masks();
    while (list != nullptr) {
      Slot* s = list;
      list = list->next;
      s->held = false;
      check_done_write(*s);
    }
  }
  if (recheck_blocked) {
    recheck();
  }
  // Pokes from other queues' releases arrive without a flag: look anyway if
  // something is blocked on another queue (cheap: usually empty).
  if (blocked != nullptr) {
    recheck();
  }
  kick();
  unsigned ran = 0;
  while (done_head != nullptr) {
    VolumeIo* io = done_head;
    done_head = scratch(*io).next;
    if (done_head == nullptr) {
      done_tail = nullptr;
    }
    int result = scratch(*io).result;
    --in_flight;
    ++ran;
    io->on_complete(*io, result);
  }
  kick();
  in_reap = false;
  // Last: everything this thread sent before now was sent under masks of
  // an epoch <= the one acknowledged (membership fence).
  acked_epoch.store(epoch, std::memory_order_release);
  return ran;
}

int QueueState::submit_op(InternalOp& op) {
  Slot* s = alloc_slot();
  if (s == nullptr) {
    return -EBUSY;
  }
  op.done = false;
  op.result = 0;
  op.read_mask = 0;
  s->kind = op.kind;
  s->op = &op;
  uint64_t b = op.offset;
  uint64_t e = op.offset + op.length;
  if (op.kind == SlotKind::kBarrier) {
    b = 0;
    e = vol->info.size_bytes;
  }
  publish(*s, b, e);
  if (conflicts(*s)) {
    s->phase = Phase::kOrderWait;
    s->next = blocked;
    blocked = s;
  } else {
    resume(*s);
  }
  kick();
  return 0;
}

void QueueState::release_barrier(InternalOp& op) {
  Slot& s = *op.slot;
  release_order(s);
  s.completed = true;
  maybe_free(s);
  op.slot = nullptr;
}

void QueueState::run_until_done(InternalOp& op) {
  while (!op.done) {
    reap();
    if (op.done) {
      break;
    }
    pollfd p{wake.get(), POLLIN, 0};
    ::poll(&p, 1, 50);
    drain_fd(wake.get());
  }
}

void QueueState::run_until_idle() {
  while (in_flight > 0) {
    reap();
    if (in_flight == 0) {
      break;
    }
    pollfd p{wake.get(), POLLIN, 0};
    ::poll(&p, 1, 50);
    drain_fd(wake.get());
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------
// The VolumeQueue handle.
// ---------------------------------------------------------------------------
namespace {
// FLUSH through a control queue, run to completion on the calling thread;
// the request's result (0 or -errno).
int flush_and_wait(QueueState& q) {
  VolumeIo flush;
  flush.op = VolumeOp::kFlush;
  int flush_result = 1;
  flush.user_data = &flush_result;
  flush.on_complete = [](VolumeIo& io, int result) { *static_cast<int*>(io.user_data) = result; };
  q.submit(flush);
  q.kick();
  q.run_until_idle();
  return flush_result;
}
class ReplicatedQueue final : public VolumeQueue {
 public:
  explicit ReplicatedQueue(QueueState& q) : q_(q) {}
  ~ReplicatedQueue() override {
    if (q_.in_flight + q_.lingering != 0) {
      spdlog::error("volume {}: queue {} closed with {} I/Os in flight", q_.vol->options.name,
                    q_.index, q_.in_flight);
    }
    // Nobody reaps a closed queue: give back what a dead store thread holds
    // now, or a later membership fence would wait on it forever.
    q_.reclaim_zombies();
    q_.opened.store(false, std::memory_order_release);
  }
  void submit(VolumeIo& io) override { q_.submit(io); }
  void kick() override { q_.kick(); }
  unsigned reap() override { return q_.reap(); }
  [[nodiscard]] int wake_fd() const override { return q_.wake.get(); }
  // Includes completed writes that still hold their ordering entry until a
  // rebuilding replica answers: the queue must keep reaping until 0.
  [[nodiscard]] unsigned in_flight() const override { return q_.in_flight + q_.lingering; }

 private:
  QueueState& q_;
};
}  // namespace

// ---------------------------------------------------------------------------
// Monitor: deadline ticks, failure handling, generation bumps.
// ---------------------------------------------------------------------------
void ReplicatedVolume::Impl::monitor_loop() {
  pthread_setname_np(pthread_self(), "vol-monitor");
  uint64_t tick_ms = std::clamp<uint64_t>(deadline_ns / 4 / 1000000, 1, 1000);
  while (!stopping.load(std::memory_order_acquire)) {
    pollfd p{monitor_fd.get(), POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(tick_ms));
    drain_fd(monitor_fd.get());
    if (stopping.load(std::memory_order_acquire)) {
      break;
    }
    tick.fetch_add(1, std::memory_order_relaxed);
    {
      // Bindings change under meta_mutex (membership changes).
      std::lock_guard meta_lock(meta_mutex);
      for (unsigned r = 0; r < nreplicas; ++r) {
        ReplicaState s = replica_state(r);
        if ((s == ReplicaState::kInSync || s == ReplicaState::kRebuilding) && thread_exited(r)) {
          report_failure(r, FailKind::kThreadDied, -ESHUTDOWN);
        }
      }
    }
    handle_failures();
    poke_queues();
  }
}

void ReplicatedVolume::Impl::handle_failures() {
  std::lock_guard meta_lock(meta_mutex);
  uint32_t newly = 0;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if (replica_state(r) == ReplicaState::kFailed && !handled[r]) {
      handled[r] = true;
      newly |= bit(r);
      auto kind = static_cast<FailKind>(fail_kind[r].load(std::memory_order_relaxed));
      int err = fail_errno[r].load(std::memory_order_relaxed);
      std::string why = std::string(to_string(kind)) + " (" +
                        std::error_code(-err, std::generic_category()).message() + ")";
      {
        std::lock_guard lock(mutex);
        last_error[r] = why;
      }
      event(static_cast<int>(r), "dropped from the write set: " + why);
    }
  }
  if (newly == 0) {
    return;
  }
  // The survivors move to a new generation before anything the lost
  // replica(s) missed is acknowledged (gen_hold keeps those acks back).
  uint64_t g = new_generation();
  for (unsigned r = 0; r < nreplicas; ++r) {
    ReplicaState s = replica_state(r);
    if ((s != ReplicaState::kInSync && s != ReplicaState::kRebuilding) || thread_exited(r)) {
      continue;
    }
    Result<ReplicaMeta> m = read_meta(r);
    Status st = m.ok() ? ok_status() : Status(m.error());
    if (m.ok()) {
      ReplicaMeta meta = *m;
      if (s == ReplicaState::kInSync) {
        std::copy_backward(meta.history.begin(), meta.history.end() - 1, meta.history.end());
        meta.history[0] = meta.generation;
        meta.generation = g;
      } else {
        meta.rebuild_generation = g;
      }
      st = write_meta(r, meta);
    }
    if (!st.ok()) {
      spdlog::error("volume {}: replica {}: generation bump failed: {}", options.name, r,
                    st.error().to_string());
      if (report_failure(r, FailKind::kMetadata, -st.error().errno_value())) {
        // Counted (and bumped past) in the next round.
      }
    }
  }
  unsigned in_sync = static_cast<unsigned>(std::popcount(mask_of(ReplicaState::kInSync)));
  {
    std::lock_guard lock(mutex);
    generation = g;
  }
  event(-1, "generation " + hex(g) + " after losing replica mask " + std::to_string(newly) + "; " +
                std::to_string(in_sync) + " of " + std::to_string(nreplicas) + " replicas in sync");
  if (in_sync < options.min_replicas) {
    spdlog::error(
        "volume {}: only {} replica(s) in sync, below min-replicas {}: I/O fails with "
        "EIO until a replica is rebuilt",
        options.name, in_sync, options.min_replicas);
  }
  gen_hold.fetch_sub(static_cast<uint32_t>(std::popcount(newly)), std::memory_order_seq_cst);
  bump_epoch();
}

// ---------------------------------------------------------------------------
// Control operations
// ---------------------------------------------------------------------------
Status ReplicatedVolume::Impl::with_barrier(const std::function<Status()>& fn) {
  QueueState& q = *queues[control_queue];
  InternalOp op;
  op.kind = SlotKind::kBarrier;
  if (q.submit_op(op) != 0) {
    return Error(EBUSY, "volume " + options.name + ": control queue busy");
  }
  q.run_until_done(op);
  Status st = fn();
  q.release_barrier(op);
  q.reap();
  return st;
}

Status ReplicatedVolume::Impl::checkpoint_locked(uint64_t* quiet_seq) {
  if (mask_of(ReplicaState::kInSync) != present_mask()) {
    return Error(EAGAIN, "volume " + options.name + ": checkpoint needs every replica in sync");
  }
  // Why clearing is safe: the barrier waits for every earlier mutating
  // request (all queues) to complete on every replica, the flush makes them
  // durable everywhere, and no replica may have left meanwhile (checked
  // under meta_mutex, which failure handling takes too). Requests ordered
  // after the barrier wait for its release, i.e. until every bitmap is
  // cleared; the stores then mark (and commit) their regions again before
  // issuing them. So a cleared bit never covers a write some replica lacks.
  auto started = options.clock.now();
  if (quiet_seq != nullptr) {
    *quiet_seq = UINT64_MAX;
  }
  // The barrier takes the next sequence number; if next_seq is still one
  // past this once the bitmaps are cleared, no request was ordered between
  // (they completed before the barrier) or after it (none waits to mark).
  const uint64_t seq_before = next_seq.load(std::memory_order_seq_cst);
  Status outcome = with_barrier([&]() -> Status {
    // Flush every replica (data durable) before the bitmaps forget.
    const int flush_result = flush_and_wait(*queues[control_queue]);
    if (flush_result != 0) {
      return Error(-flush_result, "volume " + options.name + ": checkpoint flush failed");
    }
    std::lock_guard meta_lock(meta_mutex);
    if (mask_of(ReplicaState::kInSync) != present_mask()) {
      return Error(EAGAIN, "volume " + options.name + ": a replica left during the checkpoint");
    }
    for (unsigned r = 0; r < nreplicas; ++r) {
      if ((present_mask() & bit(r)) == 0) {
        continue;
      }
      ReplicaStore* store = replicas[r].store;
      Status st = replicas[r].thread->call([&]() -> Status { return store->clear_dirty(); });
      if (!st.ok()) {
        return st.error().with_context("volume " + options.name + ": checkpoint");
      }
    }
    if (quiet_seq != nullptr && next_seq.load(std::memory_order_seq_cst) == seq_before + 1) {
      *quiet_seq = seq_before + 1;
    }
    return ok_status();
  });
  if (outcome.ok()) {
    auto pause =
        std::chrono::duration_cast<std::chrono::microseconds>(options.clock.now() - started);
    std::lock_guard lock(checkpoint_mutex);
    ++checkpoints;
    last_checkpoint_pause_us = static_cast<uint64_t>(pause.count());
    checkpoint_cv.notify_all();
  }
  return outcome;
}

void ReplicatedVolume::Impl::dirty_clear_loop() {
  pthread_setname_np(pthread_self(), "vol-dirtyclear");
  // next_seq right after a checkpoint that covered every mutating request
  // ordered so far: while next_seq stays there, nothing is dirty
  // (UINT64_MAX: unknown). Not "the bitmaps read empty": a request that has
  // its sequence number may not have marked its region yet.
  uint64_t clean_seq = UINT64_MAX;
  std::unique_lock lock(checkpoint_mutex);
  for (;;) {
    checkpoint_cv.wait_for(lock, options.dirty_clear_interval, [&] { return dirty_clear_stop; });
    if (dirty_clear_stop) {
      return;
    }
    lock.unlock();
    dirty_clear_round(clean_seq);
    lock.lock();
  }
}

void ReplicatedVolume::Impl::dirty_clear_round(uint64_t& clean_seq) {
  // A replica out of the write set resyncs from these bits; a rebuild
  // checkpoints itself when it is done.
  if (mask_of(ReplicaState::kInSync) != present_mask()) {
    return;
  }
  {
    std::lock_guard lock(rebuild_mutex);
    if (rebuild_running) {
      return;
    }
  }
  // Nothing was written since the last clear that covered every request
  // (reads take no sequence number): nothing is dirty.
  if (next_seq.load(std::memory_order_seq_cst) == clean_seq) {
    return;
  }
  // An operator's control call (snapshot, verify, membership change) holds
  // the control queue: skip this round rather than queue behind it.
  std::unique_lock control_lock(control_mutex, std::try_to_lock);
  if (!control_lock.owns_lock()) {
    return;
  }
  uint64_t quiet = UINT64_MAX;
  Status st = checkpoint_locked(&quiet);
  if (st.ok()) {
    // Under a steady write load `quiet` stays unknown and the next round
    // clears again; once the volume goes idle one more clear records it.
    clean_seq = quiet;
    spdlog::debug("volume {}: dirty bitmaps cleared", options.name);
  } else if (st.error().errno_value() != EAGAIN) {
    spdlog::warn("volume {}: periodic dirty-bitmap clear: {}", options.name,
                 st.error().to_string());
  }
}

void ReplicatedVolume::Impl::stop_dirty_clear() {
  {
    std::lock_guard lock(checkpoint_mutex);
    dirty_clear_stop = true;
  }
  checkpoint_cv.notify_all();
  if (dirty_clear_thread.joinable()) {
    dirty_clear_thread.join();
  }
}

Status ReplicatedVolume::Impl::start_job(const Job& job) {
  std::lock_guard lock(rebuild_mutex);
  if (rebuild_stop) {
    return Error(ESHUTDOWN, "volume " + options.name + " is closing");
  }
  jobs.push_back(job);
  rebuild_running = true;
  if (!rebuild_thread.joinable()) {
    rebuild_thread = std::thread([this] { rebuild_loop(); });
  }
  rebuild_cv.notify_all();
  return ok_status();
}

void ReplicatedVolume::Impl::rebuild_loop() {
  pthread_setname_np(pthread_self(), "vol-rebuild");
  std::unique_lock lock(rebuild_mutex);
  for (;;) {
    rebuild_cv.wait(lock, [&] { return rebuild_stop || !jobs.empty(); });
    if (rebuild_stop) {
      rebuild_running = false;
      rebuild_cv.notify_all();
      return;
    }
    Job job = jobs.front();
    jobs.pop_front();
    lock.unlock();
    Status st = run_job(job);
    lock.lock();
    rebuild_result = st;
    if (jobs.empty()) {
      rebuild_running = false;
    }
    rebuild_cv.notify_all();
  }
}

Status ReplicatedVolume::Impl::run_job(const Job& job) {
  const uint64_t size = info.size_bytes;
  const uint64_t region = region_bytes();
  auto fail = [&](const std::string& why) -> Status {
    std::string msg = "rebuild of replica mask " + std::to_string(job.targets) + " stopped: " + why;
    event(-1, msg);
    std::lock_guard lock(mutex);
    progress.active = false;
    progress.last_error = msg;
    return Error(EIO, "volume " + options.name + ": " + msg);
  };
  // 1. Targets become rebuild targets (persisted) and join the write set.
  {
    std::lock_guard meta_lock(meta_mutex);
    uint64_t g = 0;
    {
      std::lock_guard lock(mutex);
      g = generation;
    }
    for (unsigned t = 0; t < nreplicas; ++t) {
      if ((job.targets & bit(t)) == 0) {
        continue;
      }
      ReplicaState ts = replica_state(t);
      if (job.versions[t] != binding_version[t] ||
          (ts != ReplicaState::kStale && ts != ReplicaState::kFailed)) {
        return fail("replica " + std::to_string(t) + " was replaced or removed");
      }
      Result<ReplicaMeta> m = read_meta(t);
      if (!m.ok()) {
        return fail(m.error().to_string());
      }
      ReplicaMeta meta = *m;
      meta.fresh = false;
      meta.volume_uuid = volume_uuid;
      meta.generation = 0;
      meta.history = {};
      meta.rebuilding = true;
      meta.rebuild_generation = g;
      meta.rebuild_watermark = job.full_from;
      Status st = write_meta(t, meta);
      if (!st.ok()) {
        return fail(st.error().to_string());
      }
      handled[t] = false;
      fail_kind[t].store(0);
      set_state(t, ReplicaState::kRebuilding);
    }
  }
  event(-1, "rebuild of replica mask " + std::to_string(job.targets) + " started (" +
                (job.full_from == 0      ? std::string("full copy")
                 : job.full_from >= size ? std::string("dirty regions only")
                                         : "resuming at byte " + std::to_string(job.full_from)) +
                ")");
  // 2. Drain writes dispatched before the targets joined, then take the
  //    union of every replica's dirty bitmap (regions that may differ) and,
  //    for the whole-range part, what is mapped on the source or a target
  //    (thin rebuild: a range mapped on neither reads as zeros on both, and
  //    every later write reaches the targets too).
  std::vector<uint8_t> dirty;
  detail::Ranges mapped{{0, size}};
  {
    QueueState& q = *queues[rebuild_queue];
    InternalOp barrier;
    barrier.kind = SlotKind::kBarrier;
    if (q.submit_op(barrier) != 0) {
      return fail("rebuild queue busy");
    }
    q.run_until_done(barrier);
    std::lock_guard meta_lock(meta_mutex);  // bindings stay put
    if (job.full_from < size) {
      mapped = mapped_ranges_of(mask_of(ReplicaState::kInSync), job.targets);
    }
    for (unsigned r = 0; r < nreplicas && job.full_from > 0; ++r) {
      if (replica_state(r) == ReplicaState::kRemoved || thread_exited(r)) {
        continue;
      }
      Result<std::vector<uint8_t>> bits = read_dirty(r);
      if (!bits.ok()) {
        continue;
      }
      dirty.resize(std::max(dirty.size(), bits->size()));
      for (size_t i = 0; i < bits->size(); ++i) {
        dirty[i] = static_cast<uint8_t>(dirty[i] | (*bits)[i]);
      }
    }
    q.release_barrier(barrier);
    q.reap();
  }
  // 3. The work list.
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  uint64_t total = 0;
  uint64_t full_from = std::min(job.full_from, size);
  for (uint64_t i = 0; i < dirty.size() && i * region < full_from; ++i) {
    if (dirty[i] != 0) {
      uint64_t b = i * region;
      uint64_t e = std::min({b + region, full_from, size});
      if (!ranges.empty() && ranges.back().first + ranges.back().second == b) {
        ranges.back().second += e - b;
      } else {
        ranges.emplace_back(b, e - b);
      }
      total += e - b;
    }
  }
  if (full_from < size) {
    for (auto [b, len] :
         detail::align_and_clip(mapped, options.rebuild_chunk_bytes, full_from, size)) {
      ranges.emplace_back(b, len);
      total += len;
    }
  }
  uint64_t start_ns = options.clock.now_ns();
  {
    std::lock_guard lock(mutex);
    progress = RebuildProgress{};
    progress.active = true;
    progress.targets = job.targets;
    progress.full_from = full_from;
    progress.total_bytes = total;
  }
  // 4. Copy, chunk by chunk, each chunk ordered against user writes.
  QueueState& q = *queues[rebuild_queue];
  const uint64_t chunk = options.rebuild_chunk_bytes;
  AlignedBytes buffer = aligned_bytes(chunk);
  uint64_t done = 0;
  uint64_t since_persist = 0;
  for (auto [rb, rlen] : ranges) {
    for (uint64_t off = rb; off < rb + rlen; off += chunk) {
      {
        std::lock_guard lock(rebuild_mutex);
        if (rebuild_stop) {
          return fail("volume closing (resumable)");
        }
      }
      InternalOp op;
      op.kind = SlotKind::kCopy;
      op.offset = off;
      op.length = std::min(chunk, rb + rlen - off);
      op.dst_mask = job.targets;
      op.buffer = buffer.get();
      if (q.submit_op(op) != 0) {
        return fail("rebuild queue busy");
      }
      q.run_until_done(op);
      if (op.result != 0) {
        return fail(std::string("copy at byte ") + std::to_string(off) + " failed (" +
                    std::error_code(-op.result, std::generic_category()).message() + ")");
      }
      done += op.length;
      since_persist += op.length;
      uint64_t elapsed = options.clock.now_ns() - start_ns;
      double rate =
          elapsed > 0 ? static_cast<double>(done) * 1e9 / static_cast<double>(elapsed) : 0;
      {
        std::lock_guard lock(mutex);
        progress.done_bytes = done;
        progress.percent =
            total > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0;
        progress.bytes_per_second = rate;
        progress.eta_seconds = rate > 0 ? static_cast<double>(total - done) / rate : 0;
      }
      {
        // Under the lock, so wait_rebuild_progress() cannot miss it.
        std::lock_guard rlock(rebuild_mutex);
        rebuild_cv.notify_all();
      }
      // Persist the watermark now and then (whole-range part only).
      if (off >= full_from && since_persist >= options.rebuild_persist_bytes) {
        since_persist = 0;
        // Copies are not marked dirty: make them durable before the
        // watermark claims them.
        const int flush_result = flush_and_wait(q);
        if (flush_result != 0) {
          return fail("flush before persisting the watermark failed");
        }
        std::lock_guard meta_lock(meta_mutex);
        for (unsigned t = 0; t < nreplicas; ++t) {
          if ((job.targets & bit(t)) == 0) {
            continue;
          }
          Result<ReplicaMeta> m = read_meta(t);
          if (m.ok()) {
            ReplicaMeta meta = *m;
            meta.rebuild_watermark = off + op.length;
            (void)write_meta(t, meta);
          }
        }
      }
      // Throttle: sleep until the copy is back under the configured rate.
      uint64_t limit = rebuild_rate.load(std::memory_order_relaxed);
      if (limit > 0) {
        uint64_t due_ns = done * 1000000000ULL / limit;
        uint64_t el = options.clock.now_ns() - start_ns;
        if (due_ns > el) {
          std::unique_lock lock(rebuild_mutex);
          rebuild_cv.wait_for(lock, std::chrono::nanoseconds(due_ns - el),
                              [&] { return rebuild_stop; });
        }
      }
    }
  }
  // 5. Targets are in sync with the current generation.
  {
    std::lock_guard meta_lock(meta_mutex);
    uint64_t g = 0;
    {
      std::lock_guard lock(mutex);
      g = generation;
    }
    // Any in-sync replica's lineage is the volume's.
    ReplicaMeta lineage;
    for (unsigned r = 0; r < nreplicas; ++r) {
      if (replica_state(r) == ReplicaState::kInSync) {
        Result<ReplicaMeta> m = read_meta(r);
        if (m.ok()) {
          lineage = *m;
          break;
        }
      }
    }
    for (unsigned t = 0; t < nreplicas; ++t) {
      if ((job.targets & bit(t)) == 0) {
        continue;
      }
      if (replica_state(t) != ReplicaState::kRebuilding) {
        return fail("target left the write set");
      }
      Result<ReplicaMeta> m = read_meta(t);
      if (!m.ok()) {
        return fail(m.error().to_string());
      }
      ReplicaMeta meta = *m;
      meta.generation = g;
      meta.history = lineage.history;
      meta.rebuilding = false;
      meta.rebuild_generation = 0;
      meta.rebuild_watermark = 0;
      meta.bitmap_base = g;
      Status st = write_meta(t, meta);
      if (!st.ok()) {
        return fail(st.error().to_string());
      }
      set_state(t, ReplicaState::kInSync);
    }
  }
  double secs = static_cast<double>(options.clock.now_ns() - start_ns) / 1e9;
  {
    std::lock_guard lock(mutex);
    progress.active = false;
    progress.percent = 100.0;
    progress.eta_seconds = 0;
    progress.last_error.clear();
    ++progress.completed;
  }
  event(-1, "rebuild of replica mask " + std::to_string(job.targets) +
                " done: " + std::to_string(done) + " bytes in " + std::to_string(secs) + " s");
  if (mask_of(ReplicaState::kInSync) == present_mask()) {
    std::lock_guard control_lock(control_mutex);
    Status st = checkpoint_locked();
    if (!st.ok()) {
      spdlog::warn("volume {}: checkpoint after rebuild: {}", options.name, st.error().to_string());
    }
  }
  return ok_status();
}

// ---------------------------------------------------------------------------
// ReplicatedVolume
// ---------------------------------------------------------------------------
ReplicatedVolume::ReplicatedVolume(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ReplicatedVolume::~ReplicatedVolume() {
  Impl& v = *impl_;
  cancel_verify();
  v.stop_verify_thread();
  v.stop_dirty_clear();
  {
    std::lock_guard lock(v.rebuild_mutex);
    v.rebuild_stop = true;
  }
  v.rebuild_cv.notify_all();
  if (v.rebuild_thread.joinable()) {
    v.rebuild_thread.join();
  }
  v.stopping.store(true);
  signal_fd(v.monitor_fd.get());
  if (v.monitor.joinable()) {
    v.monitor.join();
  }
  for (auto& q : v.queues) {
    q->shutdown();
  }
}

const VolumeInfo& ReplicatedVolume::info() const { return impl_->info; }

Result<std::unique_ptr<VolumeQueue>> ReplicatedVolume::open_queue(unsigned index) {
  Impl& v = *impl_;
  if (index >= v.options.queues) {
    return Error(EINVAL, "volume " + v.options.name + ": no queue " + std::to_string(index) +
                             " (the volume has " + std::to_string(v.options.queues) + ")");
  }
  QueueState& q = *v.queues[index];
  if (q.opened.exchange(true)) {
    return Error(EBUSY, "volume " + v.options.name + ": queue " + std::to_string(index) +
                            " is already open");
  }
  return std::unique_ptr<VolumeQueue>(new ReplicatedQueue(q));
}

Result<std::unique_ptr<ReplicatedVolume>> ReplicatedVolume::open(
    const ReplicatedVolumeOptions& options, std::vector<ReplicaBinding> replicas) {
  std::string what = "volume " + options.name;
  if (replicas.empty() || replicas.size() > kMaxReplicas) {
    return Error(EINVAL, what + ": needs 1 to " + std::to_string(kMaxReplicas) + " replicas, got " +
                             std::to_string(replicas.size()));
  }
  if (options.min_replicas < 1 || options.min_replicas > replicas.size()) {
    return Error(EINVAL, what + ": min-replicas " + std::to_string(options.min_replicas) +
                             " must be between 1 and the replica count " +
                             std::to_string(replicas.size()));
  }
  if (options.queues < 1 || options.queues > 60) {
    return Error(EINVAL, what + ": queue count must be between 1 and 60");
  }
  if (options.queue_depth < 4 || options.queue_depth > 65536) {
    return Error(EINVAL, what + ": queue depth must be between 4 and 65536");
  }
  if (options.rebuild_chunk_bytes < 4096 || options.rebuild_chunk_bytes % 4096 != 0 ||
      options.rebuild_chunk_bytes > (64U << 20U)) {
    return Error(EINVAL, what + ": rebuild chunk must be a multiple of 4096 up to 64 MiB");
  }
  if (options.io_deadline.count() <= 0) {
    return Error(EINVAL, what + ": the I/O deadline must be positive");
  }
  for (size_t i = 0; i < replicas.size(); ++i) {
    if (replicas[i].store == nullptr || replicas[i].thread == nullptr) {
      return Error(EINVAL, what + ": replica " + std::to_string(i) + " has no store or thread");
    }
    for (size_t j = 0; j < i; ++j) {
      if (replicas[j].store == replicas[i].store) {
        return Error(EINVAL, what + ": replicas " + std::to_string(j) + " and " +
                                 std::to_string(i) + " are the same store");
      }
    }
  }
  auto impl = std::make_unique<Impl>();
  Impl& v = *impl;
  v.options = options;
  v.nreplicas = static_cast<unsigned>(replicas.size());
  v.replicas = std::move(replicas);
  v.replicas.resize(kMaxReplicas);
  for (unsigned r = v.nreplicas; r < kMaxReplicas; ++r) {
    v.state[r].store(static_cast<uint8_t>(ReplicaState::kRemoved));
  }
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    v.names[r] = std::string(v.replicas[r].store->name());
  }
  v.deadline_ns = static_cast<uint64_t>(options.io_deadline.count()) * 1000000ULL;
  v.rebuild_rate.store(options.rebuild_bytes_per_second);
  int mfd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (mfd < 0) {
    return errno_error(what + ": eventfd");
  }
  v.monitor_fd.reset(mfd);

  // Metadata and geometry.
  std::vector<ReplicaMeta> metas;
  std::vector<std::string> names;
  uint64_t size = UINT64_MAX;
  uint64_t region = 0;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    Result<ReplicaMeta> m = v.read_meta(r);
    if (!m.ok()) {
      return m.error().with_context(what);
    }
    metas.push_back(*m);
    names.emplace_back(v.replicas[r].store->name());
    size = std::min(size, v.replicas[r].store->size_bytes());
    if (region == 0) {
      region = v.replicas[r].store->region_bytes();
    } else if (region != v.replicas[r].store->region_bytes()) {
      return Error(EINVAL, what + ": replicas have different dirty-region sizes");
    }
  }
  v.region_size = region;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    if (v.replicas[r].store->size_bytes() != size) {
      spdlog::warn("{}: replica {} is larger than the smallest one; using {} bytes", what, names[r],
                   size);
    }
  }
  v.info.name = options.name;
  v.info.size_bytes = size;
  v.info.block_size = 4096;
  v.info.max_io_bytes = options.max_io_bytes;
  v.info.supports_discard = true;
  v.info.supports_write_zeroes = true;
  v.info.discard_zeroes = false;
  v.info.volatile_cache = true;

  Result<GenerationChoice> choice = choose_generation(metas, names);
  if (!choice.ok()) {
    return choice.error().with_context(what);
  }
  std::vector<Impl::Job> jobs;
  if (choice->all_fresh) {
    v.volume_uuid = v.new_generation();
    v.generation = v.new_generation();
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      ReplicaMeta m = metas[r];
      m.fresh = false;
      m.volume_uuid = v.volume_uuid;
      m.generation = v.generation;
      m.bitmap_base = v.generation;
      UBLKVOL_TRY(v.write_meta(r, m));
      v.state[r].store(static_cast<uint8_t>(ReplicaState::kInSync));
    }
  } else {
    v.volume_uuid = metas[choice->source].volume_uuid;
    v.generation = choice->generation;
    uint32_t newest = 0;
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      ReplicaPlan plan = choice->plans[r];
      spdlog::info("{}: replica {} ({}): generation {}: {}", what, r, names[r],
                   hex(metas[r].generation), to_string(plan));
      if (plan == ReplicaPlan::kUpToDate) {
        newest |= bit(r);
        v.state[r].store(static_cast<uint8_t>(ReplicaState::kInSync));
      } else {
        v.state[r].store(static_cast<uint8_t>(ReplicaState::kStale));
        Impl::Job job;
        job.targets = bit(r);
        job.full_from = plan == ReplicaPlan::kFullRebuild     ? 0
                        : plan == ReplicaPlan::kResumeRebuild ? metas[r].rebuild_watermark
                                                              : UINT64_MAX;
        jobs.push_back(job);
      }
    }
    // Replicas at the newest generation may still differ where writes were
    // in flight at a crash: the union of their dirty bitmaps, copied from
    // the source to the others.
    if (std::popcount(newest) > 1) {
      bool any_dirty = false;
      for (unsigned r = 0; r < v.nreplicas && !any_dirty; ++r) {
        if ((newest & bit(r)) != 0) {
          Result<std::vector<uint8_t>> bits = v.read_dirty(r);
          if (!bits.ok()) {
            return bits.error().with_context(what);
          }
          any_dirty = std::any_of(bits->begin(), bits->end(), [](uint8_t b) { return b != 0; });
        }
      }
      if (any_dirty) {
        Impl::Job job;
        job.targets = newest & ~bit(choice->source);
        job.full_from = UINT64_MAX;
        for (unsigned r = 0; r < v.nreplicas; ++r) {
          if ((job.targets & bit(r)) != 0) {
            v.state[r].store(static_cast<uint8_t>(ReplicaState::kStale));
          }
        }
        jobs.insert(jobs.begin(), job);
      }
    }
  }
  v.event(-1, "opened: generation " + hex(v.generation) + ", " +
                  std::to_string(std::popcount(v.mask_of(ReplicaState::kInSync))) + " of " +
                  std::to_string(v.nreplicas) + " replicas in sync");

  // Queues: user queues + rebuild + control.
  unsigned total = options.queues + 2;
  v.rebuild_queue = options.queues;
  v.control_queue = options.queues + 1;
  for (unsigned i = 0; i < total; ++i) {
    v.queues.push_back(std::make_unique<QueueState>());
  }
  for (unsigned i = 0; i < total; ++i) {
    UBLKVOL_TRY(v.queues[i]->init(
        v, i, i < options.queues ? options.queue_depth : detail::kInternalQueueDepth));
  }
  Impl* raw = impl.get();
  v.monitor = std::thread([raw] { raw->monitor_loop(); });
  if (options.dirty_clear_interval.count() > 0) {
    v.dirty_clear_thread = std::thread([raw] { raw->dirty_clear_loop(); });
  }
  auto volume = std::unique_ptr<ReplicatedVolume>(new ReplicatedVolume(std::move(impl)));
  if (options.scrub_interval.count() > 0) {
    volume->start_verify_thread();
  }
  if (options.auto_rebuild) {
    for (const Impl::Job& job : jobs) {
      UBLKVOL_TRY(raw->start_job(job));
    }
  }
  return volume;
}

VolumeStatus ReplicatedVolume::status() const {
  const Impl& v = *impl_;
  VolumeStatus st;
  st.name = v.options.name;
  st.size_bytes = v.info.size_bytes;
  st.min_replicas = v.options.min_replicas;
  std::lock_guard lock(v.mutex);
  st.generation = v.generation;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    ReplicaStatus rs;
    rs.name = v.names[r];
    rs.state = v.replica_state(r);
    rs.generation = rs.state == ReplicaState::kInSync ? v.generation : 0;
    rs.last_error = v.last_error[r];
    if (rs.state == ReplicaState::kInSync) {
      ++st.in_sync;
    }
    st.replicas.push_back(std::move(rs));
  }
  st.online = st.in_sync >= st.min_replicas;
  st.events = v.events;
  st.rebuild = v.progress;
  st.verify = v.verify_status;
  std::lock_guard checkpoint_lock(v.checkpoint_mutex);
  st.checkpoints = v.checkpoints;
  st.last_checkpoint_pause_us = v.last_checkpoint_pause_us;
  return st;
}

Status ReplicatedVolume::fail_replica(unsigned replica, const std::string& reason, bool force) {
  Impl& v = *impl_;
  if (replica >= v.nreplicas || v.replica_state(replica) == ReplicaState::kRemoved) {
    return Error(EINVAL, "volume " + v.options.name + ": no replica " + std::to_string(replica));
  }
  if (!force && v.replica_state(replica) == ReplicaState::kInSync) {
    auto in_sync = static_cast<unsigned>(std::popcount(v.mask_of(ReplicaState::kInSync)));
    if (in_sync - 1 < v.options.min_replicas) {
      return Error(EBUSY, "volume " + v.options.name + ": failing replica " +
                              std::to_string(replica) + " would leave " +
                              std::to_string(in_sync - 1) + " of " + std::to_string(in_sync) +
                              " in-sync replica(s), below min_replicas " +
                              std::to_string(v.options.min_replicas) +
                              " (the volume would go offline; force to do it anyway)");
    }
  }
  if (!v.report_failure(replica, FailKind::kOperator, -ECANCELED)) {
    return Error(EBUSY, "volume " + v.options.name + ": replica " + std::to_string(replica) +
                            " is the last one in sync");
  }
  v.event(static_cast<int>(replica), "failed by request: " + reason);
  signal_fd(v.monitor_fd.get());
  // Wait for the generation bump so that status() reflects it.
  while (v.gen_hold.load() != 0) {
    std::this_thread::yield();
  }
  return ok_status();
}

Status ReplicatedVolume::start_rebuild(unsigned replica) {
  std::lock_guard membership_lock(impl_->membership_mutex);
  return impl_->start_rebuild_locked(replica);
}

Status ReplicatedVolume::Impl::start_rebuild_locked(unsigned replica) {
  Impl& v = *this;
  std::string what = "volume " + v.options.name + ": replica " + std::to_string(replica);
  if (replica >= v.nreplicas || v.replica_state(replica) == ReplicaState::kRemoved) {
    return Error(EINVAL, "volume " + v.options.name + ": no replica " + std::to_string(replica));
  }
  ReplicaState s = v.replica_state(replica);
  if (s != ReplicaState::kFailed && s != ReplicaState::kStale) {
    return Error(EBUSY, what + " is " + to_string(s) + ", not failed or stale");
  }
  if (v.thread_exited(replica)) {
    return Error(ESHUTDOWN, what + ": its store thread is not running");
  }
  // Requests the store still holds from before it failed must finish first,
  // or they could land after the rebuild copied over them.
  ReplicaStore* store = v.replicas[replica].store;
  unsigned busy = 0;
  UBLKVOL_TRY(v.replicas[replica].thread->call([&]() -> Status {
    busy = store->in_flight();
    return ok_status();
  }));
  if (busy != 0) {
    return Error(EBUSY, what + " still has " + std::to_string(busy) +
                            " requests in flight from before it failed");
  }
  // Resync or full rebuild: decided from the persisted generations.
  int src = -1;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    if (v.replica_state(r) == ReplicaState::kInSync) {
      src = static_cast<int>(r);
      break;
    }
  }
  if (src < 0) {
    return Error(EIO, what + ": no in-sync replica to copy from");
  }
  Result<ReplicaMeta> src_meta = v.read_meta(static_cast<unsigned>(src));
  Result<ReplicaMeta> dst_meta = v.read_meta(replica);
  if (!src_meta.ok()) {
    return src_meta.error().with_context(what);
  }
  if (!dst_meta.ok()) {
    return dst_meta.error().with_context(what);
  }
  Impl::Job job = v.make_job(bit(replica), 0);
  if (dst_meta->generation != 0 && bitmap_covers(*src_meta, dst_meta->generation)) {
    job.full_from = UINT64_MAX;
  } else if (dst_meta->rebuilding && bitmap_covers(*src_meta, dst_meta->rebuild_generation)) {
    job.full_from = dst_meta->rebuild_watermark;
  } else {
    job.full_from = 0;
    UBLKVOL_TRY(v.check_space(v.replicas[replica], what));
  }
  v.set_state(replica, ReplicaState::kStale);
  return v.start_job(job);
}

// ---------------------------------------------------------------------------
// Membership changes (docs/engine.md "Membership changes")
// ---------------------------------------------------------------------------

// Waits until replica r is fenced: every queue has acted on the current
// state epoch (so none sends to r under an older mask) and no queue has a
// sub-request at r's store (answered, or reclaimed because its thread
// exited). Internal queues nobody is driving are reaped here.
Status ReplicatedVolume::Impl::fence(unsigned r, const std::string& what) {
  const uint64_t target = state_epoch.load(std::memory_order_seq_cst);
  poke_queues();
  const auto limit = options.clock.now() + 2 * options.io_deadline + std::chrono::seconds(1);
  std::string waiting;
  for (;;) {
    waiting.clear();
    for (unsigned i = 0; i < queues.size(); ++i) {
      QueueState& q = *queues[i];
      bool idle = false;
      if (i == control_queue) {
        std::unique_lock lock(control_mutex, std::try_to_lock);
        if (lock.owns_lock()) {
          q.reap();
        }
      } else if (i == rebuild_queue) {
        std::lock_guard lock(rebuild_mutex);
        if (!rebuild_running) {
          q.reap();
        }
      } else {
        // A closed queue runs nothing; its next use refreshes its masks.
        idle = !q.opened.load(std::memory_order_acquire);
      }
      bool acked = idle || q.acked_epoch.load(std::memory_order_acquire) >= target;
      if (!acked || q.outstanding[r].load(std::memory_order_acquire) != 0) {
        waiting += " " + std::to_string(i);
      }
    }
    if (waiting.empty()) {
      return ok_status();
    }
    if (options.clock.now() > limit) {
      return Error(ETIMEDOUT,
                   std::string(what)
                       .append(": queue(s)")
                       .append(waiting)
                       .append(" still hold requests for it or did not reap (keep reaping "
                               "on wake_fd; a hung store keeps its requests)"));
    }
    // Control path: queues answer within a reap or a monitor tick.
    pollfd p{monitor_fd.get(), 0, 0};
    ::poll(&p, 1, 2);
  }
}

Status ReplicatedVolume::Impl::check_new_binding(const ReplicaBinding& b, int except,
                                                 const std::string& what) const {
  if (b.store == nullptr || b.thread == nullptr) {
    return Error(EINVAL, what + ": the new replica has no store or thread");
  }
  if (b.thread->exited()) {
    return Error(ESHUTDOWN, what + ": the new replica's store thread is not running");
  }
  for (unsigned r = 0; r < nreplicas; ++r) {
    if (static_cast<int>(r) != except && replica_state(r) != ReplicaState::kRemoved &&
        replicas[r].store == b.store) {
      return Error(EINVAL, what + ": that store is already replica " + std::to_string(r));
    }
  }
  if (b.store->size_bytes() < info.size_bytes) {
    return Error(EINVAL, what + ": the new store holds " + std::to_string(b.store->size_bytes()) +
                             " bytes, the volume needs " + std::to_string(info.size_bytes));
  }
  if (b.store->region_bytes() != region_size) {
    return Error(EINVAL, what + ": the new store's dirty-region size " +
                             std::to_string(b.store->region_bytes()) +
                             " differs from the volume's " + std::to_string(region_size));
  }
  return ok_status();
}

// r is kRemoved (or r == nreplicas) and fenced. The new replica joins as
// stale: not read, not written until its rebuild makes it a target.
Status ReplicatedVolume::Impl::install(unsigned r, const ReplicaBinding& b) {
  {
    std::lock_guard meta_lock(meta_mutex);
    replicas[r] = b;
    ++binding_version[r];
    handled[r] = false;
    std::lock_guard lock(mutex);
    names[r] = std::string(b.store->name());
    last_error[r].clear();
  }
  fail_kind[r].store(0);
  state[r].store(static_cast<uint8_t>(ReplicaState::kStale), std::memory_order_seq_cst);
  for (auto& q : queues) {
    Status st = q->bind_replica(r);
    if (!st.ok()) {
      for (auto& u : queues) {
        (void)u->unbind_replica(r);
      }
      state[r].store(static_cast<uint8_t>(ReplicaState::kRemoved), std::memory_order_seq_cst);
      return st;
    }
  }
  if (r >= nreplicas) {
    nreplicas.store(r + 1, std::memory_order_seq_cst);
  }
  bump_epoch();
  return ok_status();
}

// r is failed or stale and fenced: forget its binding.
Status ReplicatedVolume::Impl::uninstall(unsigned r) {
  Status result = ok_status();
  for (auto& q : queues) {
    Status st = q->unbind_replica(r);
    if (!st.ok() && result.ok()) {
      result = st;  // the old thread stopped meanwhile: nothing left to detach
    }
  }
  {
    std::lock_guard lock(rebuild_mutex);
    // Queued jobs for the old binding must not run on a new one.
    jobs.erase(std::remove_if(jobs.begin(), jobs.end(),
                              [&](const Job& j) { return (j.targets & bit(r)) != 0; }),
               jobs.end());
  }
  {
    std::lock_guard meta_lock(meta_mutex);
    state[r].store(static_cast<uint8_t>(ReplicaState::kRemoved), std::memory_order_seq_cst);
    replicas[r] = {};
    ++binding_version[r];
  }
  bump_epoch();
  (void)result;
  return ok_status();
}

// Takes r out of the write set (as a failure would) and waits for the
// survivors' generation bump.
Status ReplicatedVolume::Impl::take_out(unsigned r, const std::string& what) {
  ReplicaState s = replica_state(r);
  if (s == ReplicaState::kInSync) {
    unsigned in_sync = static_cast<unsigned>(std::popcount(mask_of(ReplicaState::kInSync)));
    if (in_sync - 1 < options.min_replicas) {
      return Error(EBUSY, what + ": removing it would leave " + std::to_string(in_sync - 1) +
                              " in-sync replica(s), below min-replicas " +
                              std::to_string(options.min_replicas));
    }
  }
  if (s == ReplicaState::kInSync || s == ReplicaState::kRebuilding) {
    if (!report_failure(r, FailKind::kOperator, -ECANCELED)) {
      return Error(EBUSY, what + " is the last replica in sync");
    }
    signal_fd(monitor_fd.get());
  }
  while (gen_hold.load(std::memory_order_seq_cst) != 0) {
    pollfd p{monitor_fd.get(), 0, 0};
    ::poll(&p, 1, 1);
  }
  return ok_status();
}

Result<unsigned> ReplicatedVolume::add_replica(ReplicaBinding replica) {
  Impl& v = *impl_;
  std::lock_guard membership_lock(v.membership_mutex);
  std::string what = "volume " + v.options.name + ": add replica";
  if (v.closed) {
    return Error(ESHUTDOWN, what + ": the volume is closed");
  }
  UBLKVOL_TRY(v.check_new_binding(replica, -1, what));
  UBLKVOL_TRY(v.check_space(replica, what));
  unsigned r = 0;
  while (r < v.nreplicas && v.replica_state(r) != ReplicaState::kRemoved) {
    ++r;
  }
  if (r >= kMaxReplicas) {
    return Error(ENOSPC,
                 what + ": the volume already has " + std::to_string(kMaxReplicas) + " replicas");
  }
  // A removed index was fenced when it was removed.
  UBLKVOL_TRY(v.install(r, replica));
  v.event(static_cast<int>(r), "added; full rebuild follows");
  Impl::Job job = v.make_job(bit(r), 0);
  UBLKVOL_TRY(v.start_job(job));
  return r;
}

Status ReplicatedVolume::remove_replica(unsigned replica) {
  Impl& v = *impl_;
  std::lock_guard membership_lock(v.membership_mutex);
  std::string what = "volume " + v.options.name + ": replica " + std::to_string(replica);
  if (replica >= v.nreplicas || v.replica_state(replica) == ReplicaState::kRemoved) {
    return Error(EINVAL, "volume " + v.options.name + ": no replica " + std::to_string(replica));
  }
  UBLKVOL_TRY(v.take_out(replica, what));
  UBLKVOL_TRY(v.fence(replica, what));
  std::string name;
  {
    std::lock_guard lock(v.mutex);
    name = v.names[replica];
  }
  UBLKVOL_TRY(v.uninstall(replica));
  v.event(static_cast<int>(replica), "removed (" + name + ")");
  return ok_status();
}

Status ReplicatedVolume::replace_replica(unsigned replica, ReplicaBinding binding) {
  Impl& v = *impl_;
  std::lock_guard membership_lock(v.membership_mutex);
  std::string what = "volume " + v.options.name + ": replica " + std::to_string(replica);
  if (replica >= v.nreplicas || v.replica_state(replica) == ReplicaState::kRemoved) {
    return Error(EINVAL, "volume " + v.options.name + ": no replica " + std::to_string(replica));
  }
  ReplicaState s = v.replica_state(replica);
  if (s != ReplicaState::kFailed && s != ReplicaState::kStale) {
    return Error(EBUSY, what + " is " + to_string(s) +
                            "; only a failed or stale replica is replaced (fail it first)");
  }
  UBLKVOL_TRY(v.check_new_binding(binding, static_cast<int>(replica), what));
  UBLKVOL_TRY(v.check_space(binding, what));
  UBLKVOL_TRY(v.take_out(replica, what));
  UBLKVOL_TRY(v.fence(replica, what));
  std::string old_name;
  {
    std::lock_guard lock(v.mutex);
    old_name = v.names[replica];
  }
  UBLKVOL_TRY(v.uninstall(replica));
  UBLKVOL_TRY(v.install(replica, binding));
  v.event(static_cast<int>(replica), "replaced " + old_name + "; rebuilding");
  return v.start_rebuild_locked(replica);
}

Status ReplicatedVolume::wait_rebuild() {
  Impl& v = *impl_;
  std::unique_lock lock(v.rebuild_mutex);
  v.rebuild_cv.wait(lock, [&] { return !v.rebuild_running; });
  return v.rebuild_result;
}

bool ReplicatedVolume::wait_rebuild_progress(uint64_t done_bytes) {
  Impl& v = *impl_;
  std::unique_lock lock(v.rebuild_mutex);
  for (;;) {
    {
      std::lock_guard plock(v.mutex);
      if (v.progress.active && v.progress.done_bytes >= done_bytes) {
        return true;
      }
    }
    if (!v.rebuild_running) {
      return false;
    }
    v.rebuild_cv.wait(lock);
  }
}

void ReplicatedVolume::set_rebuild_rate(uint64_t bytes_per_second) {
  impl_->rebuild_rate.store(bytes_per_second);
}

namespace {
Result<detail::Ranges> mapped_of(const ReplicaBinding& b) {
  detail::Ranges out;
  Status st = b.thread->call([&]() -> Status {
    auto r = b.store->mapped_ranges();
    if (!r.ok()) {
      return r.error();
    }
    out = std::move(*r);
    return ok_status();
  });
  if (!st.ok()) {
    return st.error();
  }
  return out;
}
}  // namespace

detail::Ranges ReplicatedVolume::Impl::mapped_ranges_of(uint32_t sources, uint32_t targets) {
  detail::Ranges whole{{0, info.size_bytes}};
  detail::Ranges out;
  bool have_source = false;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if ((sources & bit(r)) == 0 || thread_exited(r)) {
      continue;
    }
    auto m = mapped_of(replicas[r]);
    if (!m.ok()) {
      return whole;
    }
    out = std::move(*m);
    have_source = true;
    break;
  }
  if (!have_source) {
    return whole;
  }
  for (unsigned t = 0; t < nreplicas; ++t) {
    if ((targets & bit(t)) == 0) {
      continue;
    }
    auto m = mapped_of(replicas[t]);
    if (!m.ok()) {
      return whole;
    }
    out = detail::range_union(out, *m);
  }
  return out;
}

Status ReplicatedVolume::Impl::check_space(const ReplicaBinding& target, const std::string& what) {
  ReplicaStore::Space space;
  detail::Ranges held;
  Status st = target.thread->call([&]() -> Status {
    auto sp = target.store->space();
    if (!sp.ok()) {
      return sp.error();
    }
    space = *sp;
    auto m = target.store->mapped_ranges();
    if (m.ok()) {
      held = std::move(*m);
    }
    return ok_status();
  });
  if (!st.ok() || space.free_bytes == UINT64_MAX) {
    return ok_status();  // not thin, or unknown: the copy finds out
  }
  int src = -1;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if (replica_state(r) == ReplicaState::kInSync && !thread_exited(r)) {
      src = static_cast<int>(r);
      break;
    }
  }
  if (src < 0) {
    return ok_status();  // start_rebuild refuses it
  }
  auto mapped = mapped_of(replicas[static_cast<unsigned>(src)]);
  if (!mapped.ok()) {
    return ok_status();
  }
  // What the copy writes: whole chunks around the mapped blocks.
  detail::Ranges copied =
      detail::align_and_clip(*mapped, options.rebuild_chunk_bytes, 0, info.size_bytes);
  const uint64_t unit = std::max<uint64_t>(space.unit_bytes, 1);
  const uint64_t needed = detail::units_to_allocate(copied, held, unit) * unit;
  if (needed <= space.free_bytes) {
    return ok_status();
  }
  return Error(ENOSPC, what + ": the target store (" + std::string(target.store->name()) +
                           ") has " + std::to_string(space.free_bytes) +
                           " bytes free, the copy needs " + std::to_string(needed) + " bytes (" +
                           std::to_string(detail::range_bytes(*mapped)) +
                           " bytes of data mapped on replica " + std::to_string(src) +
                           "); nothing was written");
}

// EBUSY naming the replica(s) being rebuilt and the progress while a
// rebuild runs or is queued.
Status ReplicatedVolume::Impl::refuse_while_rebuilding(const std::string& what) {
  uint32_t who = mask_of(ReplicaState::kRebuilding);
  bool running = false;
  {
    std::lock_guard lock(rebuild_mutex);
    running = rebuild_running;
    for (const Job& j : jobs) {
      who |= j.targets;
    }
  }
  if (who == 0 && !running) {
    return ok_status();
  }
  RebuildProgress p;
  {
    std::lock_guard lock(mutex);
    p = progress;
  }
  who |= p.active ? p.targets : 0U;
  std::string list;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if ((who & bit(r)) != 0) {
      list += (list.empty() ? "" : ", ") + replica_name(r);
    }
  }
  if (list.empty()) {
    list = "a replica";
  }
  char pct[32];
  (void)std::snprintf(pct, sizeof(pct), "%.1f", p.percent);
  return Error(EBUSY, what + " refused: " + list + " is rebuilding (" +
                          std::to_string(p.done_bytes) + " of " + std::to_string(p.total_bytes) +
                          " bytes copied, " + pct +
                          "%); retry once every replica is in sync (or fail that replica first)");
}

// Revert and clone need the snapshot on every target: a replica added or
// rebuilt after the snapshot was taken lacks it (rebuilds copy the head
// only), and a half-applied revert would leave replicas that differ.
Status ReplicatedVolume::Impl::refuse_if_lacking(const std::string& snapshot, uint32_t targets,
                                                 const std::string& what) {
  const uint32_t lacking = targets & ~holders_of(snapshot, targets);
  if (lacking == 0) {
    return ok_status();
  }
  std::string list;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if ((lacking & bit(r)) != 0) {
      list += (list.empty() ? "" : ", ") + replica_name(r);
    }
  }
  return Error(ENOENT, what + " refused, nothing changed: " + list + " has no snapshot " +
                           snapshot +
                           " (added or rebuilt after it was taken); remove or replace that "
                           "replica first, or use a snapshot taken since");
}

// Snapshot operations (docs/engine.md "Snapshots"): all-or-nothing across
// every replica the volume writes to; refused while a rebuild runs or is
// queued (a rebuilding replica's data is not consistent, and a replica that
// finishes rebuilding after a snapshot would lack it); revert and clone
// refused up front when an in-sync replica lacks the snapshot.
Status ReplicatedVolume::create_snapshot(const std::string& snapshot) {
  Impl& v = *impl_;
  std::lock_guard control_lock(v.control_mutex);
  const std::string what = "volume " + v.options.name + ": snapshot create " + snapshot;
  return v.with_barrier([&]() -> Status {
    // Nothing is in flight; meta_mutex keeps rebuilds from starting.
    std::lock_guard meta_lock(v.meta_mutex);
    UBLKVOL_TRY(v.refuse_while_rebuilding(what));
    uint32_t done = 0;
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if (v.replica_state(r) != ReplicaState::kInSync) {
        continue;
      }
      Status st = v.on_store(r, [&](ReplicaStore& s) { return s.create_snapshot(snapshot); });
      if (!st.ok()) {
        v.undo_on(done, [&](ReplicaStore& s) { return s.delete_snapshot(snapshot); });
        return st.error().with_context(what + ": on " + v.replica_name(r) +
                                       " (undone on the others)");
      }
      done |= bit(r);
    }
    v.event(-1, "snapshot " + snapshot + " created on replica mask " + std::to_string(done));
    return ok_status();
  });
}

Status ReplicatedVolume::delete_snapshot(const std::string& snapshot) {
  Impl& v = *impl_;
  std::lock_guard control_lock(v.control_mutex);
  std::lock_guard meta_lock(v.meta_mutex);
  const std::string what = "volume " + v.options.name + ": snapshot delete " + snapshot;
  UBLKVOL_TRY(v.refuse_while_rebuilding(what));
  const uint32_t holders = v.holders_of(snapshot, v.mask_of(ReplicaState::kInSync));
  if (holders == 0) {
    return Error(ENOENT, what + ": no in-sync replica has it");
  }
  // A delete cannot be undone (the snapshot merges into its child); one
  // that fails part-way leaves the snapshot on some replicas, and repeating
  // the delete finishes it (replicas without it are skipped).
  uint32_t done = 0;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    if ((holders & bit(r)) == 0) {
      continue;
    }
    Status st = v.on_store(r, [&](ReplicaStore& s) { return s.delete_snapshot(snapshot); });
    if (!st.ok()) {
      return st.error().with_context(what + ": on " + v.replica_name(r) + " (deleted on mask " +
                                     std::to_string(done) + "; repeat the delete to finish)");
    }
    done |= bit(r);
  }
  v.event(-1, "snapshot " + snapshot + " deleted on replica mask " + std::to_string(done));
  return ok_status();
}

Status ReplicatedVolume::revert_snapshot(const std::string& snapshot) {
  Impl& v = *impl_;
  std::lock_guard control_lock(v.control_mutex);
  const std::string what = "volume " + v.options.name + ": revert to snapshot " + snapshot;
  return v.with_barrier([&]() -> Status {
    std::lock_guard meta_lock(v.meta_mutex);
    UBLKVOL_TRY(v.refuse_while_rebuilding(what));
    const uint32_t targets = v.mask_of(ReplicaState::kInSync);
    UBLKVOL_TRY(v.refuse_if_lacking(snapshot, targets, what));
    // A crash between two replicas' reverts must not leave equal
    // generations over different data: every region is marked dirty
    // first, so open() copies the whole volume from one of them.
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if ((targets & bit(r)) == 0) {
        continue;
      }
      Status st = v.on_store(r, [](ReplicaStore& s) { return s.mark_all_dirty(); });
      if (!st.ok()) {
        return st.error().with_context(what + ": on " + v.replica_name(r) + ", nothing reverted");
      }
    }
    uint32_t done = 0;
    Status failed = ok_status();
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if ((targets & bit(r)) == 0) {
        continue;
      }
      Status st = v.on_store(r, [&](ReplicaStore& s) { return s.revert_snapshot(snapshot); });
      if (!st.ok()) {
        if (done == 0) {
          return st.error().with_context(what + ": on " + v.replica_name(r) + ", nothing reverted");
        }
        failed = st.error().with_context(what + ": on " + v.replica_name(r));
        break;
      }
      done |= bit(r);
    }
    // The reverted replicas start a new generation whose bitmap base is
    // the revert: a replica that was out (or failed to revert) holds data
    // the bitmaps do not describe and rebuilds fully when it returns.
    const uint64_t g = v.new_generation();
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if ((done & bit(r)) == 0) {
        continue;
      }
      Status st = v.on_store(r, [&](ReplicaStore& s) -> Status {
        ReplicaMeta m = s.meta();
        std::copy_backward(m.history.begin(), m.history.end() - 1, m.history.end());
        m.history[0] = m.generation;
        m.generation = g;
        UBLKVOL_TRY(s.write_meta(m));
        return s.clear_dirty();  // bitmap_base = g; nothing in flight, all durable
      });
      if (!st.ok() && failed.ok()) {
        failed = st.error().with_context(what + ": new generation on " + v.replica_name(r));
      }
    }
    {
      std::lock_guard lock(v.mutex);
      v.generation = g;
    }
    if (!failed.ok()) {
      // Replicas that did not revert leave the write set (they rebuild from
      // the reverted ones); the volume never serves two versions.
      for (unsigned r = 0; r < v.nreplicas; ++r) {
        if ((targets & bit(r)) != 0 && (done & bit(r)) == 0) {
          (void)v.report_failure(r, FailKind::kOperator, -EIO);
        }
      }
      v.event(-1, "reverted to snapshot " + snapshot + " on replica mask " + std::to_string(done) +
                      " only; the others were taken out: " + failed.error().message());
      return Error(failed.error().errno_value(),
                   failed.error().message() + " (reverted on replica mask " + std::to_string(done) +
                       "; the others were taken out of sync)");
    }
    v.event(-1, "reverted to snapshot " + snapshot + " on replica mask " + std::to_string(done));
    return ok_status();
  });
}

Result<uint32_t> ReplicatedVolume::clone_snapshot(const std::string& snapshot,
                                                  const std::string& clone) {
  Impl& v = *impl_;
  std::lock_guard control_lock(v.control_mutex);
  std::lock_guard membership_lock(v.membership_mutex);  // bindings stay put
  std::lock_guard meta_lock(v.meta_mutex);
  const std::string what =
      "volume " + v.options.name + ": clone " + clone + " of snapshot " + snapshot;
  UBLKVOL_TRY(v.refuse_while_rebuilding(what));
  const uint32_t targets = v.mask_of(ReplicaState::kInSync);
  if (targets == 0) {
    return Error(EIO, what + ": no in-sync replica to clone from");
  }
  UBLKVOL_TRY(v.refuse_if_lacking(snapshot, targets, what));
  // One new volume: its own id, one generation shared by every replica of
  // the clone, empty bitmaps relative to it (snapshots are immutable, so
  // every replica's snapshot holds the same bytes - create_snapshot took
  // them at one point).
  ReplicaMeta meta;
  meta.fresh = false;
  meta.volume_uuid = v.new_generation();
  meta.generation = v.new_generation();
  meta.bitmap_base = meta.generation;
  uint32_t done = 0;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    if ((targets & bit(r)) == 0) {
      continue;
    }
    Status st = v.on_store(r, [&](ReplicaStore& s) {
      Status made = s.clone_snapshot(snapshot, clone, meta);
      if (!made.ok()) {
        (void)s.delete_clone(clone);  // whatever part of it was made
      }
      return made;
    });
    if (!st.ok()) {
      v.undo_on(done, [&](ReplicaStore& s) { return s.delete_clone(clone); });
      return st.error().with_context(what + ": on " + v.replica_name(r) +
                                     " (the clones made on the others were deleted)");
    }
    done |= bit(r);
  }
  v.event(-1, "snapshot " + snapshot + " cloned to " + clone + " on replica mask " +
                  std::to_string(done));
  return done;
}

namespace {
void add_range(std::vector<std::pair<uint64_t, uint64_t>>& list, uint64_t offset, uint64_t length) {
  if (!list.empty() && list.back().first + list.back().second == offset) {
    list.back().second += length;
  } else {
    list.emplace_back(offset, length);
  }
}
}  // namespace

// Verify / repair / scrub (docs/engine.md "Verify, repair and scrub"). The
// control queue is taken per chunk, so snapshots and membership changes
// interleave with a long (throttled) scrub instead of waiting for it.
Result<VerifyReport> ReplicatedVolume::verify(const VerifyOptions& options) {
  Impl& v = *impl_;
  std::unique_lock run_lock(v.verify_run_mutex, std::try_to_lock);
  if (!run_lock.owns_lock()) {
    VerifyStatus now;
    {
      std::lock_guard lock(v.mutex);
      now = v.verify_status;
    }
    return Error(EBUSY, "volume " + v.options.name + ": a verify is already running (" +
                            std::to_string(now.done_bytes) + " of " +
                            std::to_string(now.total_bytes) + " bytes)");
  }
  if (v.closed) {
    return Error(ESHUTDOWN, "volume " + v.options.name + " is closed");
  }
  v.verify_cancel.store(false);
  const uint64_t size = v.info.size_bytes;
  const uint64_t chunk = 1U << 20U;
  std::array<AlignedBytes, kMaxReplicas> buffers;
  std::array<std::byte*, kMaxReplicas> views{};
  for (unsigned r = 0; r < kMaxReplicas; ++r) {
    buffers[r] = aligned_bytes(chunk);
    views[r] = buffers[r].get();
  }
  AlignedBytes copy_buffer = aligned_bytes(chunk);
  {
    std::lock_guard lock(v.mutex);
    VerifyStatus& st = v.verify_status;
    st.active = true;
    st.repair = options.repair;
    st.done_bytes = st.mismatched_bytes = st.repaired_bytes = 0;
    st.total_bytes = size;
    st.percent = st.bytes_per_second = 0;
  }
  VerifyReport report;
  std::string error;
  const uint64_t start_ns = v.options.clock.now_ns();
  std::vector<detail::BlockVerdict> verdicts;
  // One ordered op on the control queue (caller holds control_mutex).
  auto run_op = [&](InternalOp& op) -> Status {
    QueueState& q = *v.queues[v.control_queue];
    if (q.submit_op(op) != 0) {
      return Error(EBUSY, "volume " + v.options.name + ": control queue busy");
    }
    q.run_until_done(op);
    return ok_status();
  };
  auto verify_op = [&](uint64_t offset, uint64_t length) -> Result<uint32_t> {
    InternalOp op;
    op.kind = SlotKind::kVerify;
    op.offset = offset;
    op.length = length;
    op.buffers = views;
    UBLKVOL_TRY(run_op(op));
    return op.read_mask;
  };
  for (uint64_t off = 0; off < size && error.empty(); off += chunk) {
    if (v.verify_cancel.load()) {
      report.cancelled = true;
      break;
    }
    const uint64_t len = std::min(chunk, size - off);
    uint64_t mismatched = 0;
    uint64_t repaired = 0;
    {
      std::lock_guard control_lock(v.control_mutex);
      auto mask = verify_op(off, len);
      if (!mask.ok()) {
        error = mask.error().to_string();
        break;
      }
      report.replicas_compared |= *mask;
      verdicts.clear();
      detail::compare_chunk(views, *mask, off, len, verdicts);
      bool wrote = false;
      for (const detail::BlockVerdict& d : verdicts) {
        add_range(report.mismatches, d.offset, d.length);
        mismatched += d.length;
        if (!options.repair) {
          continue;
        }
        if (!d.decided) {
          add_range(report.unrepaired, d.offset, d.length);
          v.event(-1, "verify: replicas mask " + std::to_string(d.bad_mask) + " differ at byte " +
                          std::to_string(d.offset) + " (+" + std::to_string(d.length) +
                          ") with no majority; not repaired");
          continue;
        }
        // Rewrite the minority from a majority replica: an ordered copy, so
        // a write in between is applied before it reads or after it wrote.
        InternalOp copy;
        copy.kind = SlotKind::kCopy;
        copy.offset = d.offset;
        copy.length = d.length;
        copy.dst_mask = d.bad_mask;
        copy.buffer = copy_buffer.get();
        Status st = run_op(copy);
        wrote = true;
        std::vector<detail::BlockVerdict> again;
        if (st.ok() && copy.result == 0) {
          auto recheck = verify_op(d.offset, d.length);
          if (recheck.ok()) {
            // The re-read landed at the start of the buffers.
            detail::compare_chunk(views, *recheck, d.offset, d.length, again);
          }
        }
        if (st.ok() && copy.result == 0 && again.empty()) {
          add_range(report.repaired, d.offset, d.length);
          repaired += d.length;
          v.event(-1, "verify: repaired byte " + std::to_string(d.offset) + " (+" +
                          std::to_string(d.length) + ") on replica mask " +
                          std::to_string(d.bad_mask) + " from the majority");
        } else {
          add_range(report.unrepaired, d.offset, d.length);
        }
      }
      if (wrote) {
        // Repair copies are not dirty-marked: make them durable now.
        if (const int flushed = flush_and_wait(*v.queues[v.control_queue]); flushed != 0) {
          // The replica that failed the flush leaves the write set (as for
          // any I/O error); say why the repairs may not have stuck there.
          v.event(-1, "verify: flush after repairs failed (" + std::to_string(flushed) + ")");
        }
      }
    }
    report.bytes_compared += len;
    const uint64_t elapsed = v.options.clock.now_ns() - start_ns;
    {
      std::lock_guard lock(v.mutex);
      VerifyStatus& st = v.verify_status;
      st.done_bytes = report.bytes_compared;
      st.percent = 100.0 * static_cast<double>(st.done_bytes) / static_cast<double>(size);
      st.bytes_per_second =
          elapsed > 0 ? static_cast<double>(st.done_bytes) * 1e9 / static_cast<double>(elapsed) : 0;
      st.mismatched_bytes += mismatched;
      st.repaired_bytes += repaired;
    }
    if (options.bytes_per_second > 0) {
      const uint64_t due_ns = report.bytes_compared * 1000000000ULL / options.bytes_per_second;
      if (due_ns > elapsed) {
        std::unique_lock lock(v.verify_sleep_mutex);
        v.verify_cv.wait_for(lock, std::chrono::nanoseconds(due_ns - elapsed),
                             [&] { return v.verify_cancel.load(); });
      }
    }
  }
  auto total = [](const std::vector<std::pair<uint64_t, uint64_t>>& list) {
    uint64_t n = 0;
    for (const auto& [o, l] : list) {
      n += l;
    }
    return n;
  };
  {
    std::lock_guard lock(v.mutex);
    VerifyStatus& st = v.verify_status;
    st.active = false;
    ++st.runs;
    st.last_finished = std::chrono::system_clock::now();
    st.last_repair = options.repair;
    st.last_bytes = report.bytes_compared;
    st.last_mismatched_bytes = total(report.mismatches);
    st.last_repaired_bytes = total(report.repaired);
    st.last_unrepaired_bytes = total(report.unrepaired);
    st.last_seconds = static_cast<double>(v.options.clock.now_ns() - start_ns) / 1e9;
    st.last_error = !error.empty() ? error : report.cancelled ? "cancelled" : "";
    st.last_mismatches.assign(
        report.mismatches.begin(),
        report.mismatches.begin() +
            static_cast<std::ptrdiff_t>(std::min<size_t>(report.mismatches.size(), 64)));
  }
  {
    // Under the lock, so wait_verify() cannot miss it.
    std::lock_guard lock(v.verify_bg_mutex);
    v.verify_bg_cv.notify_all();
  }
  v.event(-1, std::string(options.repair ? "verify+repair: " : "verify: ") +
                  std::to_string(report.bytes_compared) + " bytes compared, " +
                  std::to_string(report.mismatches.size()) + " mismatching range(s), " +
                  std::to_string(report.repaired.size()) + " repaired, " +
                  std::to_string(report.unrepaired.size()) + " unrepaired" +
                  (report.cancelled ? " (cancelled)" : "") +
                  (error.empty() ? "" : " (stopped: " + error + ")"));
  if (!error.empty()) {
    return Error(EIO, "volume " + v.options.name + ": verify stopped at byte " +
                          std::to_string(report.bytes_compared) + ": " + error);
  }
  return report;
}

void ReplicatedVolume::start_verify_thread() {
  Impl& v = *impl_;
  if (v.verify_thread.joinable()) {
    return;
  }
  v.verify_thread = std::thread([this] {
    pthread_setname_np(pthread_self(), "vol-verify");
    Impl& w = *impl_;
    const auto interval = w.options.scrub_interval;
    auto next = std::chrono::steady_clock::now() + interval;
    std::unique_lock lock(w.verify_bg_mutex);
    for (;;) {
      auto wake = [&] { return w.verify_bg_stop || w.verify_request.has_value(); };
      if (interval.count() > 0) {
        w.verify_bg_cv.wait_until(lock, next, wake);
      } else {
        w.verify_bg_cv.wait(lock, wake);
      }
      if (w.verify_bg_stop) {
        return;
      }
      VerifyOptions run;
      if (w.verify_request) {
        run = *w.verify_request;
        w.verify_request.reset();
      } else if (interval.count() > 0 && std::chrono::steady_clock::now() >= next) {
        run.repair = w.options.scrub_repair;
        run.bytes_per_second = w.options.scrub_bytes_per_second;
      } else {
        continue;
      }
      w.verify_bg_running = true;
      lock.unlock();
      Result<VerifyReport> report = verify(run);
      if (!report.ok()) {
        spdlog::warn("volume {}: background verify: {}", w.options.name,
                     report.error().to_string());
      }
      lock.lock();
      w.verify_bg_running = false;
      next = std::chrono::steady_clock::now() + interval;
    }
  });
}

Status ReplicatedVolume::start_verify(const VerifyOptions& options) {
  Impl& v = *impl_;
  if (v.closed) {
    return Error(ESHUTDOWN, "volume " + v.options.name + " is closed");
  }
  VerifyStatus now;
  {
    std::lock_guard lock(v.mutex);
    now = v.verify_status;
  }
  {
    std::lock_guard lock(v.verify_bg_mutex);
    if (now.active || v.verify_request || v.verify_bg_running) {
      return Error(EBUSY, "volume " + v.options.name + ": a verify is already " +
                              (now.active || v.verify_bg_running
                                   ? "running (" + std::to_string(now.done_bytes) + " of " +
                                         std::to_string(now.total_bytes) + " bytes)"
                                   : std::string("queued")));
    }
    v.verify_request = options;
  }
  start_verify_thread();
  v.verify_bg_cv.notify_all();
  return ok_status();
}

bool ReplicatedVolume::wait_verify(uint64_t runs, std::chrono::milliseconds timeout) {
  Impl& v = *impl_;
  std::unique_lock lock(v.verify_bg_mutex);
  return v.verify_bg_cv.wait_for(lock, timeout, [&] {
    std::lock_guard status_lock(v.mutex);
    return v.verify_status.runs >= runs;
  });
}

void ReplicatedVolume::cancel_verify() {
  Impl& v = *impl_;
  v.verify_cancel.store(true);
  std::lock_guard lock(v.verify_sleep_mutex);
  v.verify_cv.notify_all();
}

Status ReplicatedVolume::checkpoint() {
  Impl& v = *impl_;
  std::lock_guard control_lock(v.control_mutex);
  return v.checkpoint_locked();
}

bool ReplicatedVolume::wait_checkpoints(uint64_t count, std::chrono::milliseconds timeout) {
  Impl& v = *impl_;
  std::unique_lock lock(v.checkpoint_mutex);
  return v.checkpoint_cv.wait_for(lock, timeout, [&] { return v.checkpoints >= count; });
}

Status ReplicatedVolume::close() {
  Impl& v = *impl_;
  cancel_verify();
  v.stop_verify_thread();
  {
    // A verify running on another thread stops at its next chunk.
    std::lock_guard run_lock(v.verify_run_mutex);
    v.closed = true;
  }
  v.stop_dirty_clear();
  {
    std::lock_guard lock(v.rebuild_mutex);
    v.rebuild_stop = true;
  }
  v.rebuild_cv.notify_all();
  if (v.rebuild_thread.joinable()) {
    v.rebuild_thread.join();
  }
  Status st = ok_status();
  if (v.mask_of(ReplicaState::kInSync) == v.present_mask()) {
    st = checkpoint();
  }
  v.closed = true;
  v.event(-1, "closed");
  return st;
}

}  // namespace ublkvol::engine
