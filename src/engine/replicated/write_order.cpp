// The cross-queue write-ordering table; the protocol and why it is correct
// are in write_order.h.
#include "write_order.h"

#include <algorithm>
#include <thread>

namespace ublkvol::engine::detail {

Status WriteOrder::init(size_t nbuckets, const SlotPool& slots) {
  nbuckets_ = nbuckets;
  slots_ = &slots;
  return buckets_.init(nbuckets);
}

// NOLINTNEXTLINE(readability-make-member-function-const): writes the ordering table it owns
void WriteOrder::publish(Slot& s, uint64_t b, uint64_t e, std::atomic<uint64_t>& next_seq) {
  s.b = b;
  s.e = e;
  s.begin.store(b, std::memory_order_seq_cst);
  s.end.store(e, std::memory_order_seq_cst);
  s.seq.store(kSeqPending, std::memory_order_seq_cst);
  uint64_t first = b >> kBucketShift;
  uint64_t n = std::min<uint64_t>(((e - 1) >> kBucketShift) - first + 1, nbuckets_);
  for (uint64_t i = 0; i < n; ++i) {
    buckets_[(first + i) % nbuckets_].fetch_add(1, std::memory_order_seq_cst);
  }
  s.my_seq = next_seq.fetch_add(1, std::memory_order_seq_cst) + 1;
  s.seq.store(s.my_seq, std::memory_order_seq_cst);
}

bool WriteOrder::may_overlap(uint64_t b, uint64_t e, bool own) const {
  uint64_t first = b >> kBucketShift;
  uint64_t n = ((e - 1) >> kBucketShift) - first + 1;
  if (n >= nbuckets_) {
    return true;
  }
  // The own queue's counters include the request being checked.
  uint32_t threshold = own ? 1 : 0;
  for (uint64_t i = 0; i < n; ++i) {
    if (buckets_[(first + i) % nbuckets_].load(std::memory_order_seq_cst) > threshold) {
      return true;
    }
  }
  return false;
}

bool WriteOrder::blocks(const Slot& s, bool own, unsigned waiter) const {
  if (!may_overlap(s.b, s.e, own)) {
    return false;
  }
  const unsigned live = slots_->live();
  for (unsigned i = 0; i < live; ++i) {
    Slot& o = (*slots_)[i];
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
        o.waiters.fetch_or(uint64_t{1} << waiter, std::memory_order_seq_cst);
        if (o.seq.load(std::memory_order_seq_cst) != s1) {
          continue;  // released meanwhile: look again
        }
      }
      return true;
    }
  }
  return false;
}

// NOLINTNEXTLINE(readability-make-member-function-const): writes the ordering table it owns
uint64_t WriteOrder::withdraw(Slot& s) {
  s.seq.store(0, std::memory_order_seq_cst);
  uint64_t first = s.b >> kBucketShift;
  uint64_t n = std::min<uint64_t>(((s.e - 1) >> kBucketShift) - first + 1, nbuckets_);
  for (uint64_t i = 0; i < n; ++i) {
    buckets_[(first + i) % nbuckets_].fetch_sub(1, std::memory_order_seq_cst);
  }
  return s.waiters.exchange(0, std::memory_order_seq_cst);
}

}  // namespace ublkvol::engine::detail
