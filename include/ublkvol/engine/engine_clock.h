// EngineClock: the replicated engine's time source (I/O deadlines, the
// monitor's ticks, throttles, progress rates, control-path timeouts).
//
// By default it reads CLOCK_MONOTONIC (std::chrono::steady_clock on Linux).
// Given a ManualClock it reads that instead: time moves only when the owner
// advances it, like Seastar's manual_clock. The engine's simulator
// (tests/engine/sim) uses one to expire deadlines and jump time at chosen
// points. Not virtual: the data path reads the clock once per sub-request,
// and a predictable branch costs less than an indirect call.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>

namespace ublkvol::engine {

class ManualClock {
 public:
  [[nodiscard]] uint64_t now_ns() const { return ns_.load(std::memory_order_acquire); }
  void advance(std::chrono::nanoseconds by) {
    ns_.fetch_add(static_cast<uint64_t>(by.count()), std::memory_order_acq_rel);
  }

 private:
  // Starts well away from 0 so that "now - deadline" never underflows.
  std::atomic<uint64_t> ns_{uint64_t{1000} * 1000000000ULL};
};

class EngineClock {
 public:
  EngineClock() = default;
  // `manual` must outlive every user of this clock.
  explicit EngineClock(const ManualClock* manual) : manual_(manual) {}

  [[nodiscard]] uint64_t now_ns() const {
    if (manual_ != nullptr) [[unlikely]] {
      return manual_->now_ns();
    }
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
  }
  // The same instant as a steady_clock time point (CLOCK_MONOTONIC is
  // steady_clock's source on Linux).
  [[nodiscard]] std::chrono::steady_clock::time_point now() const {
    return std::chrono::steady_clock::time_point(
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::nanoseconds(now_ns())));
  }
  [[nodiscard]] bool manual() const { return manual_ != nullptr; }

 private:
  const ManualClock* manual_ = nullptr;
};

}  // namespace ublkvol::engine
