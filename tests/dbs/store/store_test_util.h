// Helpers for DBS store tests: aligned buffers and self-describing block
// content (every 4 KiB block says which volume, block and write produced it,
// so foreign or stale data is recognisable).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>

#include "ublkvol/dbs/block_device.h"

namespace ublkvol::dbs::testing {

inline constexpr size_t kBlock = 4096;

class Buffer {
 public:
  explicit Buffer(size_t size)
      : size_(size),
        data_(static_cast<std::byte*>(
            std::aligned_alloc(kIoAlignment, (size + 4095) / 4096 * 4096))) {
    std::memset(data_.get(), 0, size_);
  }
  [[nodiscard]] std::byte* data() const { return data_.get(); }
  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] std::span<std::byte> span() const { return {data_.get(), size_}; }
  [[nodiscard]] std::span<std::byte> block(size_t i) const {
    return {data_.get() + i * kBlock, kBlock};
  }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  size_t size_;
  std::unique_ptr<std::byte, Free> data_;
};

// Block content: a 24-byte tag (magic, volume, block, seq) then bytes derived
// from the tag. seq 0 is reserved for "never written" (all zeros).
struct BlockTag {
  uint64_t volume = 0;
  uint64_t block = 0;
  uint64_t seq = 0;
  bool operator==(const BlockTag&) const = default;
};

inline constexpr uint64_t kTagMagic = 0x5441474B4C4255ULL;

inline void fill_block(std::span<std::byte> out, const BlockTag& tag) {
  uint64_t header[4] = {kTagMagic, tag.volume, tag.block, tag.seq};
  std::memcpy(out.data(), header, sizeof(header));
  uint64_t x = tag.volume * 0x9E3779B97F4A7C15ULL ^ tag.block * 0xC2B2AE3D27D4EB4FULL ^ tag.seq;
  for (size_t i = sizeof(header); i < kBlock; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, 8);
  }
}

// Decodes a block: returns true and sets `tag` if it is a well-formed tagged
// block (seq 0 = all zeros). False: garbage (torn, foreign, stale junk).
inline bool decode_block(std::span<const std::byte> in, BlockTag& tag) {
  bool zero = true;
  for (size_t i = 0; i < kBlock && zero; i += 8) {
    uint64_t w;
    std::memcpy(&w, in.data() + i, 8);
    zero = w == 0;
  }
  if (zero) {
    tag = BlockTag{};
    return true;
  }
  uint64_t header[4];
  std::memcpy(header, in.data(), sizeof(header));
  if (header[0] != kTagMagic) {
    return false;
  }
  tag = BlockTag{header[1], header[2], header[3]};
  alignas(8) std::byte expect[kBlock];
  fill_block({expect, kBlock}, tag);
  return std::memcmp(expect, in.data(), kBlock) == 0;
}

inline std::string describe(const BlockTag& tag) {
  return "{vol " + std::to_string(tag.volume) + " block " + std::to_string(tag.block) + " seq " +
         std::to_string(tag.seq) + "}";
}

}  // namespace ublkvol::dbs::testing
