// A 4 KiB-aligned byte buffer (O_DIRECT I/O through the store), and the
// throttle both jobs share.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <stop_token>

namespace ublkvol::backup::detail {

class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t bytes)
      : data_(static_cast<std::byte*>(std::aligned_alloc(4096, bytes))), size_(bytes) {
    if (data_ == nullptr) {
      throw std::bad_alloc();
    }
  }
  [[nodiscard]] std::span<std::byte> span() { return {data_.get(), size_}; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> data_;
  size_t size_;
};

// Holds a job to `rate` bytes per second on average since it started:
// after each piece of work, wait() sleeps until the bytes done so far are
// due, or until a stop is requested.
class Throttle {
 public:
  explicit Throttle(uint64_t rate_bytes_per_sec)
      : rate_(rate_bytes_per_sec), start_(std::chrono::steady_clock::now()) {}

  void wait(uint64_t bytes_so_far, const std::stop_token& stop) {
    if (rate_ == 0) {
      return;
    }
    const auto due = start_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                  std::chrono::duration<double>(static_cast<double>(bytes_so_far) /
                                                                static_cast<double>(rate_)));
    std::unique_lock lock(mutex_);
    // Nothing notifies cv_ but a stop request: this is a stoppable sleep.
    cv_.wait_until(lock, stop, due, [] { return false; });
  }

 private:
  uint64_t rate_;
  std::chrono::steady_clock::time_point start_;
  std::mutex mutex_;
  std::condition_variable_any cv_;
};

}  // namespace ublkvol::backup::detail
