// The cross-queue write-ordering table (guarantee 2): one WriteOrder per
// queue. Moved here from docs/engine.md ("Ordering overlapping writes"),
// which points to this header.
//
// Replicas diverge if two overlapping writes in flight at the same time are
// applied in different orders on different replicas (different store threads
// see them in different orders; one device may reorder them). The controller
// therefore never has two overlapping mutating requests in flight: a request
// waits until every overlapping request that is *older* has been applied by
// every live replica. "Older" is a total order from one per-volume atomic
// counter (Impl::next_seq); the check is lock-free.
//
// Each queue owns a table (its slot array) of published entries
// {seq, begin, end, waiters} (atomics in Slot) and 8192 bucket counters
// (64 KiB granules, hashed; 256 for the rebuild and control queues). To
// order request W, its queue thread:
//
//   1. stores begin, end, seq = PENDING, increments W's buckets;
//   2. takes s = next_seq.fetch_add(1), stores seq = s;     (publish())
//   3. scans every queue (its own included) whose buckets for W's range are
//      non-zero (own queue: > 1, W counts itself), reading each entry with a
//      seqlock-style double read of seq. An overlapping entry with seq < s
//      makes W wait; PENDING means "another queue is between steps 1 and 2"
//      (a few instructions) and is re-read.                (blocks())
//
// Why it is correct (all operations seq_cst): take overlapping W and X with
// X.seq < W.seq. X's step 1 precedes X's fetch_add, which precedes W's
// fetch_add in the counter's modification order, which precedes W's scan.
// So W's scan sees X's entry (either PENDING, then its number, or the
// number) and W waits for X. X may or may not see W; if it does,
// W.seq > X.seq and X does not wait. Waits only go from younger to older, so
// there is no cycle, and of any two overlapping requests exactly the younger
// waits: all replicas apply them in seq order.
//
// Wake-ups: a waiter sets its queue's bit in the blocking entry's `waiters`
// (fetch_or) and re-checks that the entry is unchanged; the owner, on
// release, clears seq and then exchange(0)s `waiters` and writes those
// queues' eventfds (Dekker again: either the waiter sees the release or the
// releaser sees the bit). Own-queue waits are re-checked after any own
// release (QueueState::recheck()).
//
// Cost on the fast path (no overlap): one fetch_add on the shared counter, a
// handful of stores to own cache lines, and 1-2 bucket loads per queue per
// write; reads are not ordered at all. The entry is released when all live
// replicas applied the write. The same mechanism orders internal operations:
// rebuild copies, repairs, verify reads, and barriers (a whole-volume entry
// used to drain writes for snapshots, checkpoints and rebuild start).
//
// Threads: publish() and withdraw() run on the owning queue's thread only;
// blocks() runs on any queue's thread and reads this table through atomics.
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>

#include "ublkvol/common/result.h"

#include "controller.h"
#include "slot_pool.h"

namespace ublkvol::engine::detail {

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

class WriteOrder {
 public:
  // `slots`: the owning queue's slot pool (its published entries).
  Status init(size_t nbuckets, const SlotPool& slots);

  // Owner thread: steps 1 and 2 for slot `s` over [b, e) (sets s.b, s.e,
  // s.my_seq and the published entry).
  void publish(Slot& s, uint64_t b, uint64_t e, std::atomic<uint64_t>& next_seq);
  // Owner thread: clears s's entry and its buckets; returns the queues
  // (bit per queue index) that asked to be woken.
  uint64_t withdraw(Slot& s);

  // Any queue thread: step 3 against this table. True if an older entry
  // overlaps `s` (which belongs to queue `waiter`; `own`: this table is
  // that queue's). When !own, the waiter's bit is left in the blocking
  // entry so its release wakes that queue.
  bool blocks(const Slot& s, bool own, unsigned waiter) const;

 private:
  [[nodiscard]] bool may_overlap(uint64_t b, uint64_t e, bool own) const;

  BucketTable buckets_;
  size_t nbuckets_ = kBuckets;
  const SlotPool* slots_ = nullptr;
};

}  // namespace ublkvol::engine::detail
