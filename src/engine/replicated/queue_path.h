// The per-queue data path (private): QueueState, one per user queue plus the
// rebuild and control queues. Code: queue_path.cpp (submit, fan-out to the
// store threads, completions, repair, deadlines) and queue_control.cpp
// (set-up, replica binding, internal operations run by control threads).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/engine/replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/volume.h"

#include "controller.h"
#include "slot_pool.h"
#include "store_channel.h"
#include "write_order.h"

namespace ublkvol::reactor {
class Reactor;
}

namespace ublkvol::engine::detail {

// ---------------------------------------------------------------------------
// Per-queue state. Every method runs on the queue's owning thread, except
// the published ordering entries and bucket counters, which other queues
// read (atomics).
// ---------------------------------------------------------------------------
struct QueueState {
  ReplicatedVolume::Impl* vol = nullptr;
  unsigned index = 0;
  UniqueFd wake;
  SlotPool slots;
  unsigned nslots = 0;  // capacity of `slots` (the queue depth)
  WriteOrder order;     // this queue's ordering table (write_order.h)
  // Channels to store threads, one per distinct thread. Membership changes
  // (control thread) publish and unpublish entries while the queue thread
  // iterates them, hence atomics; an unpublished channel object is kept in
  // `owned` until the volume is destroyed, so a queue thread still holding
  // its pointer never touches freed memory (its rings are empty by then).
  std::array<std::atomic<StoreChannel*>, kMaxReplicas> channels{};
  std::array<std::atomic<StoreChannel*>, kMaxReplicas> channel_of{};
  std::vector<std::unique_ptr<StoreChannel>> owned;  // control path only
  std::atomic<bool> opened{false};
  // The reactor the queue was opened on (null: a plain thread), and the
  // replicas whose stores it runs: sub-requests to them are submitted
  // directly (StoreChannel::local) and reads prefer them. local_mask is
  // written by bind/unbind_replica (control thread, replica fenced) before
  // channel_of publishes the channel.
  reactor::Reactor* home = nullptr;
  std::atomic<uint32_t> local_mask{0};
  // The last state epoch this queue's thread acted on (end of reap()): the
  // membership fence waits for it (docs/engine.md "Membership changes").
  std::atomic<uint64_t> acked_epoch{0};
  // Zero copy (direct_io.cpp, docs/zero-copy.md): the bound replicas whose
  // binding has fixed_buffer_io (written like local_mask); the answer of
  // all_targets_local() cached for one state epoch (0: recompute); requests
  // submitted after a yes whose callback has not run yet (written by the
  // queue thread only, read by install()'s drain).
  std::atomic<uint32_t> fixed_mask{0};
  std::atomic<uint32_t> direct_in_flight{0};
  // Set (seq_cst) by the first all_targets_local() call, before it reads the
  // epoch: install()'s drain waits only for queues that ever asked (a queue
  // that never did - copy mode, the NBD export, tests - takes no window
  // address). If the drain reads false, that first call comes after the
  // epoch bump in the single total order and so sees the new membership.
  std::atomic<bool> asks_direct{false};
  uint64_t direct_epoch = 0;
  bool direct_answer = false;
  bool answered_direct = false;

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
  // Requests submitted to this queue so far. Written by the queue thread only
  // (plain load + store, no RMW); the rebuild reads the user queues' counts to
  // see whether user I/O is running ("Rebuild pacing", docs/engine.md).
  std::atomic<uint64_t> submitted{0};
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
  // At open_queue on a reactor's thread: turns the channels to executors of
  // that reactor into local ones (queue_control.cpp).
  Status make_home(reactor::Reactor& reactor);
  // The reverse, for a queue re-opened elsewhere (closed queue: nothing in
  // flight through its channels).
  Status leave_home();
  void shutdown();

  // ---- VolumeQueue ----
  void submit(VolumeIo& io);
  void kick();
  unsigned reap();
  // VolumeQueue::all_targets_local() (direct_io.cpp).
  bool all_targets_local();

  // ---- internal operations (control threads own internal queues) ----
  int submit_op(InternalOp& op);
  void release_barrier(InternalOp& op);
  // Reaps until op.done, sleeping on the wake fd in between.
  void run_until_done(InternalOp& op);
  void run_until_idle();

  // ---- data path pieces ----
  Slot* alloc_slot();
  void block(Slot& s);  // onto the blocked list (waits for the ordering)
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

  // ---- ordering (the table: write_order.h) ----
  void publish(Slot& s, uint64_t b, uint64_t e);
  bool conflicts(Slot& s);
  void release_order(Slot& s);
  void recheck();

  void fifo_touch(Slot& s);
  void fifo_remove(Slot& s);

  // ---- membership (control thread, with replica r fenced) ----
  Status bind_replica(unsigned r);
  Status unbind_replica(unsigned r);
  // bind_replica: records r's fixed_buffer_io in fixed_mask (direct_io.cpp).
  void mark_fixed_buffer_io(unsigned r);
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

// FLUSH through a control queue, run to completion on the calling thread;
// the request's result (0 or -errno).
int flush_and_wait(QueueState& q);

// After replica r was installed and the epoch bumped (membership.cpp): waits
// until no user queue for which r is not a local fixed-buffer replica still
// has a request submitted as direct (a zero-copy window address), so none
// can reach r once it enters the write set (direct_io.cpp). ETIMEDOUT after
// the fence's bound, naming the queues.
Status drain_direct(ReplicatedVolume::Impl& v, unsigned r, const std::string& what);

}  // namespace ublkvol::engine::detail
