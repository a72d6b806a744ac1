// The life of one request slot (private): what a slot is doing (its phase),
// which of its queue's singly-linked lists it is on, and the checked
// transitions between them. The slot itself (Slot, below) lives in its
// queue's pool (slot_pool.h) and is touched by the queue's thread only,
// apart from its published ordering entry (write_order.h).
//
//   kFree on [free] --allocate()--> kFree, in use ([-]: on no list)
//     | publish(): ordering entry (mutating user requests, internal ops)
//     v
//   ordering check (write_order.h)
//     | older overlapping entry: block() -> kOrderWait on [blocked];
//     |   recheck: unblock(), then block() again or on as below
//     v
//   user read/write: dispatch() -> kData
//     read error:    publish(), block() or repair_read() -> kRepairRead
//                    (retry: repair_read()) -> repair_write() -> kRepairWrite
//     write ack waiting for a generation bump: hold() on [held] -> unhold()
//   rebuild copy:    copy_read() -> kCopyRead (retry: copy_read())
//                    -> copy_write() -> kCopyWrite
//   verify:          verify_read() -> kVerifyRead
//   barrier:         grant() -> kGranted (held until released)
//
//   complete()  result delivered (any phase but kFree / kOrderWait, on no
//               list); still ordered = lingering
//   withdraw()  ordering entry released (any phase but kOrderWait)
//   release()   completed, not ordered, off every list -> kFree on [free]
//   bury()      completed but sub-requests still at a dropped replica's
//               store: [zombie]; unbury() when they are answered or the
//               store thread is gone, then release()
//   enter_fifo() / leave_fifo(): the deadline FIFO (fifo_prev/fifo_next,
//               independent of the lists above)
//
//   [free] [blocked] [held] [zombie] [-]: the queue list the slot is on
//   (SlotList, linked through Slot::next).
//
// Every transition checks where it starts from and refuses (returns false,
// state unchanged) otherwise, like src/ublk/tag_state.h. The data path calls
// them through apply(), which aborts on a refusal: a slot in an unexpected
// state is a bookkeeping bug that could complete a request twice or free a
// slot a store still writes to. After every transition apply() also checks
// the slot's invariants (slot_invariant_broken()) when UBLKVOL_SLOT_CHECKS
// is 1: by default whenever NDEBUG is not defined (debug, asan and tsan
// presets), not in release builds; -DUBLKVOL_SLOT_CHECKS=0/1 overrides.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <initializer_list>

#include "ublkvol/engine/replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/volume.h"

#ifndef UBLKVOL_SLOT_CHECKS
#ifdef NDEBUG
#define UBLKVOL_SLOT_CHECKS 0
#else
#define UBLKVOL_SLOT_CHECKS 1
#endif
#endif

namespace ublkvol::engine::detail {

enum class SlotKind : uint8_t { kUser, kCopy, kVerify, kBarrier };

enum class Phase : uint8_t {
  kFree,
  kOrderWait,    // published, waiting for overlapping older requests
  kData,         // user request at the replicas
  kRepairRead,   // read error: re-reading a good replica under the ordering
  kRepairWrite,  // rewriting the bad replica(s)
  kCopyRead,     // rebuild: reading the source
  kCopyWrite,    // rebuild: writing the target(s)
  kVerifyRead,   // verify: reading every in-sync replica
  kGranted,      // barrier: holds the whole range until released
};

// The singly-linked queue list a slot is on (through Slot::next).
enum class SlotList : uint8_t {
  kNone,
  kFree,     // QueueState::free_list
  kBlocked,  // QueueState::blocked: waiting for the ordering
  kHeld,     // QueueState::held: completed write waiting for a generation bump
  kZombie,   // QueueState::zombies: finished, sub-requests still at a dropped replica
};

const char* to_string(Phase phase);
const char* to_string(SlotList list);

// A slot's state: phase, list and flags, changed only by the transitions.
class SlotLife {
 public:
  [[nodiscard]] Phase phase() const { return phase_; }
  [[nodiscard]] SlotList list() const { return list_; }
  [[nodiscard]] bool ordered() const { return ordered_; }      // holds an ordering entry
  [[nodiscard]] bool completed() const { return completed_; }  // result delivered
  [[nodiscard]] bool lingering() const { return lingering_; }  // completed, still ordered
  [[nodiscard]] bool in_fifo() const { return in_fifo_; }      // on the deadline FIFO

  // Taken off the free list (or first use): the flags start afresh.
  bool allocate() {
    if (phase_ != Phase::kFree || (list_ != SlotList::kFree && list_ != SlotList::kNone) ||
        ordered_ || in_fifo_) {
      return false;
    }
    list_ = SlotList::kNone;
    completed_ = lingering_ = false;
    return true;
  }

  // The ordering entry is published (write_order.h): a new request, or a
  // user read turning into a repair.
  bool publish() {
    if (ordered_ || completed_ || list_ != SlotList::kNone ||
        (phase_ != Phase::kFree && phase_ != Phase::kData)) {
      return false;
    }
    ordered_ = true;
    return true;
  }
  // The ordering entry is released (not while waiting for the ordering).
  bool withdraw() {
    if (!ordered_ || phase_ == Phase::kOrderWait) {
      return false;
    }
    ordered_ = lingering_ = false;
    return true;
  }

  // Waits for older overlapping requests, on the blocked list.
  bool block() {
    if (!ordered_ || completed_ || list_ != SlotList::kNone ||
        (phase_ != Phase::kFree && phase_ != Phase::kData && phase_ != Phase::kOrderWait)) {
      return false;
    }
    phase_ = Phase::kOrderWait;
    list_ = SlotList::kBlocked;
    return true;
  }
  // Taken off the blocked list to be checked again.
  bool unblock() { return move_list(SlotList::kBlocked, SlotList::kNone); }

  // A user request goes to the replicas (reads at once; writes once ordered).
  bool dispatch() { return start({Phase::kFree, Phase::kOrderWait}, Phase::kData, false); }
  // Repair of a read error: (re-)read a good copy under the ordering entry.
  bool repair_read() {
    return start({Phase::kData, Phase::kOrderWait, Phase::kRepairRead}, Phase::kRepairRead, true);
  }
  bool repair_write() { return start({Phase::kRepairRead}, Phase::kRepairWrite, true); }
  // Rebuild copy: (re-)read the source, then write the targets.
  bool copy_read() {
    return start({Phase::kFree, Phase::kOrderWait, Phase::kCopyRead}, Phase::kCopyRead, true);
  }
  bool copy_write() { return start({Phase::kCopyRead}, Phase::kCopyWrite, true); }
  bool verify_read() { return start({Phase::kFree, Phase::kOrderWait}, Phase::kVerifyRead, true); }
  bool grant() { return start({Phase::kFree, Phase::kOrderWait}, Phase::kGranted, true); }

  // The result is delivered (user callback queued, or internal op done). A
  // request still ordered lingers until every live replica applied it.
  bool complete() {
    if (completed_ || list_ != SlotList::kNone || phase_ == Phase::kFree ||
        phase_ == Phase::kOrderWait) {
      return false;
    }
    completed_ = true;
    lingering_ = ordered_;
    return true;
  }

  // A write whose acknowledgement waits for a generation bump.
  bool hold() {
    if (completed_ || phase_ != Phase::kData || list_ != SlotList::kNone) {
      return false;
    }
    list_ = SlotList::kHeld;
    return true;
  }
  bool unhold() { return move_list(SlotList::kHeld, SlotList::kNone); }

  // Finished, but sub-requests are still at a dropped replica's store.
  bool bury() {
    if (!completed_ || ordered_ || in_fifo_ || list_ != SlotList::kNone) {
      return false;
    }
    list_ = SlotList::kZombie;
    return true;
  }
  bool unbury() { return move_list(SlotList::kZombie, SlotList::kNone); }

  // Back to the free list.
  bool release() {
    if (!completed_ || ordered_ || in_fifo_ || list_ != SlotList::kNone || phase_ == Phase::kFree) {
      return false;
    }
    phase_ = Phase::kFree;
    list_ = SlotList::kFree;
    return true;
  }

  // The deadline FIFO (sub-requests sent).
  bool enter_fifo() {
    if (in_fifo_ || phase_ == Phase::kFree || list_ == SlotList::kFree ||
        list_ == SlotList::kZombie) {
      return false;
    }
    in_fifo_ = true;
    return true;
  }
  bool leave_fifo() {
    if (!in_fifo_) {
      return false;
    }
    in_fifo_ = false;
    return true;
  }

 private:
  bool move_list(SlotList from, SlotList to) {
    if (list_ != from) {
      return false;
    }
    list_ = to;
    return true;
  }
  // An active phase entered from one of `from`, off every list, not yet
  // completed, holding an ordering entry if `needs_order`.
  bool start(std::initializer_list<Phase> from, Phase to, bool needs_order) {
    bool known = false;
    for (Phase p : from) {
      known = known || p == phase_;
    }
    if (!known || completed_ || list_ != SlotList::kNone || (needs_order && !ordered_)) {
      return false;
    }
    phase_ = to;
    return true;
  }

  Phase phase_ = Phase::kFree;
  SlotList list_ = SlotList::kNone;
  bool ordered_ = false;
  bool completed_ = false;
  bool lingering_ = false;
  bool in_fifo_ = false;
};

struct InternalOp;

// Per-request controller state. Lives in the queue's preallocated pool (not
// in VolumeIo::scratch) because replica sub-requests may outlive the user
// request (a replica dropped on a deadline still owns its sub-request until
// it answers or its store thread is gone).
struct Slot {
  // ---- published ordering entry (read by other queues) ----
  std::atomic<uint64_t> seq{0};  // 0: none; kSeqPending: being published
  std::atomic<uint64_t> begin{0};
  std::atomic<uint64_t> end{0};
  std::atomic<uint64_t> waiters{0};  // queues to wake when released

  // ---- owner-thread only ----
  // The user request; never touched once completed (its owner may reuse it).
  VolumeIo* io = nullptr;
  VolumeOp vop = VolumeOp::kRead;  // io->op, kept for after completion
  InternalOp* op = nullptr;
  SlotKind kind = SlotKind::kUser;
  SlotLife life;  // phase, list, flags: changed through apply() only
  uint64_t my_seq = 0;
  uint64_t b = 0;  // ordered range [b, e)
  uint64_t e = 0;
  uint32_t pending = 0;     // sub-requests at store threads
  uint32_t sent = 0;        // of those, the ones the current phase awaits
  uint32_t dispatched = 0;  // replicas the write went to
  uint32_t acked = 0;
  uint32_t errors = 0;
  uint32_t tried = 0;  // reads: replicas tried
  uint32_t bad = 0;    // reads: replicas that failed (repair targets)
  uint64_t issue_ns = 0;
  Slot* fifo_prev = nullptr;
  Slot* fifo_next = nullptr;
  Slot* next = nullptr;  // link of the list life.list() names
  std::array<ReplicaIo, kMaxReplicas> sub{};
};

// nullptr if `s` satisfies the slot invariants, else which one it breaks.
const char* slot_invariant_broken(const Slot& s);

// Logs the slot and aborts (slot.cpp).
[[noreturn]] void slot_check_failed(const Slot& s, const char* transition, const char* why);

// Runs after a transition of `s` (`ok`: it was accepted).
inline void apply(const Slot& s, bool ok, const char* transition) {
  if (!ok) [[unlikely]] {
    slot_check_failed(s, transition, "transition refused");
  }
#if UBLKVOL_SLOT_CHECKS
  if (const char* why = slot_invariant_broken(s)) {
    slot_check_failed(s, transition, why);
  }
#endif
}

}  // namespace ublkvol::engine::detail
