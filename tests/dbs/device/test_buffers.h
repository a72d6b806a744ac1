// Test helpers: 4 KiB-aligned buffers with recognisable content.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>

#include "ublkvol/dbs/block_device.h"

namespace ublkvol::dbs::testing {

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};

// An O_DIRECT-compatible buffer (aligned to kIoAlignment).
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size)
      : size_(size),
        data_(static_cast<std::byte*>(std::aligned_alloc(kIoAlignment, round_up(size)))) {}

  [[nodiscard]] std::byte* data() const { return data_.get(); }
  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] std::span<std::byte> span() const { return {data_.get(), size_}; }
  std::byte& operator[](size_t i) const { return data_.get()[i]; }

  // Fills with a pattern derived from `seed` and the byte index, so that
  // different seeds and different offsets give different bytes.
  void fill_pattern(uint64_t seed) const {
    for (size_t i = 0; i < size_; ++i) {
      data_.get()[i] = pattern_byte(seed, i);
    }
  }
  [[nodiscard]] bool has_pattern(uint64_t seed) const {
    for (size_t i = 0; i < size_; ++i) {
      if (data_.get()[i] != pattern_byte(seed, i)) {
        return false;
      }
    }
    return true;
  }
  void fill(std::byte value) const {
    for (size_t i = 0; i < size_; ++i) {
      data_.get()[i] = value;
    }
  }
  [[nodiscard]] bool all_equal(std::byte value) const {
    for (size_t i = 0; i < size_; ++i) {
      if (data_.get()[i] != value) {
        return false;
      }
    }
    return true;
  }

  static std::byte pattern_byte(uint64_t seed, size_t index) {
    uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ULL + index * 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 29;
    return static_cast<std::byte>(x & 0xFF);
  }

 private:
  static size_t round_up(size_t size) {
    size_t rounded = (size + kIoAlignment - 1) / kIoAlignment * kIoAlignment;
    return rounded == 0 ? kIoAlignment : rounded;
  }

  size_t size_;
  std::unique_ptr<std::byte, FreeDeleter> data_;
};

// Records one request's completion.
struct Completion {
  bool done = false;
  int result = 1;  // not a valid completion value: proves the callback ran
  int order = -1;  // position among completions seen by a shared counter
  int* counter = nullptr;
};

inline void record_completion(IoRequest& request, int result) {
  auto* completion = static_cast<Completion*>(request.user_data);
  completion->done = true;
  completion->result = result;
  if (completion->counter != nullptr) {
    completion->order = (*completion->counter)++;
  }
}

inline IoRequest make_request(IoOp op, uint64_t offset, uint64_t length, std::byte* buffer,
                              Completion* completion) {
  IoRequest request;
  request.op = op;
  request.offset = offset;
  request.length = length;
  request.buffer = buffer;
  request.on_complete = &record_completion;
  request.user_data = completion;
  return request;
}

}  // namespace ublkvol::dbs::testing
