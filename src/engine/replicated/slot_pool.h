// A queue's preallocated request slots (private; see queue_path.h).
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <memory>
#include <new>
#include <string>

#include "ublkvol/common/result.h"

#include "controller.h"

namespace ublkvol::engine::detail {

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

}  // namespace ublkvol::engine::detail
