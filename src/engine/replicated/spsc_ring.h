// SpscRing: a bounded single-producer single-consumer ring of pointers, the
// channel between one queue thread and one store thread (one ring per
// direction). Lock-free, allocation-free after construction.
//
// Wake-ups are the caller's business; push() reports whether the ring was
// empty as seen by the producer after publishing, which is exactly when the
// consumer may have gone to sleep without seeing this entry (the consumer
// drains until empty before sleeping; with seq_cst on both sides either the
// consumer sees the new tail or the producer sees the ring empty - Dekker).
#pragma once

#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace ublkvol::engine::detail {

inline constexpr size_t kCacheLine = 64;

template <typename T>
class SpscRing {
 public:
  // `capacity` is rounded up to a power of two.
  explicit SpscRing(size_t capacity) {
    size_t c = 1;
    while (c < capacity) {
      c <<= 1U;
    }
    mask_ = c - 1;
    slots_ = std::make_unique<T*[]>(c);
  }

  // Producer. Returns false if full (callers size rings so that it never is).
  // `was_empty` is set when the consumer had consumed everything before
  // this entry, i.e. it may need a wake-up.
  bool push(T* item, bool& was_empty) {
    uint64_t tail = tail_.load(std::memory_order_relaxed);
    if (tail - head_cache_ > mask_) {
      head_cache_ = head_.load(std::memory_order_acquire);
      if (tail - head_cache_ > mask_) {
        return false;
      }
    }
    slots_[tail & mask_] = item;
    tail_.store(tail + 1, std::memory_order_seq_cst);
    head_cache_ = head_.load(std::memory_order_seq_cst);
    was_empty = head_cache_ == tail;
    return true;
  }

  // Consumer. nullptr if empty.
  T* pop() {
    uint64_t head = head_.load(std::memory_order_relaxed);
    if (head == tail_cache_) {
      tail_cache_ = tail_.load(std::memory_order_seq_cst);
      if (head == tail_cache_) {
        return nullptr;
      }
    }
    T* item = slots_[head & mask_];
    head_.store(head + 1, std::memory_order_seq_cst);
    return item;
  }

  [[nodiscard]] bool empty_for_consumer() const {
    return head_.load(std::memory_order_relaxed) == tail_.load(std::memory_order_seq_cst);
  }

 private:
  alignas(kCacheLine) std::atomic<uint64_t> head_{0};  // consumer position
  uint64_t tail_cache_ = 0;                            // consumer's view of tail
  alignas(kCacheLine) std::atomic<uint64_t> tail_{0};  // producer position
  uint64_t head_cache_ = 0;                            // producer's view of head
  alignas(kCacheLine) size_t mask_ = 0;
  std::unique_ptr<T*[]> slots_;
};

}  // namespace ublkvol::engine::detail
