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

// Block content: every 512-byte sector starts with a tag (magic, volume,
// block, seq, sector index) followed by bytes derived from it, so a torn block
// (some sectors new, some old) can be checked sector by sector. seq 0 is
// reserved for "never written" (all zeros).
struct BlockTag {
  uint64_t volume = 0;
  uint64_t block = 0;
  uint64_t seq = 0;
  bool operator==(const BlockTag&) const = default;
  // clang-tidy 14 sees the literal 0 of the defaulted <=> comparison.
  auto operator<=>(const BlockTag&) const = default;  // NOLINT(modernize-use-nullptr)
};

inline constexpr uint64_t kTagMagic = 0x5441474B4C4255ULL;
inline constexpr size_t kSector = 512;

inline void fill_sector(std::byte* out, const BlockTag& tag, uint64_t sector) {
  uint64_t header[5] = {kTagMagic, tag.volume, tag.block, tag.seq, sector};
  std::memcpy(out, header, sizeof(header));
  uint64_t x = (tag.volume * 0x9E3779B97F4A7C15ULL) ^ (tag.block * 0xC2B2AE3D27D4EB4FULL) ^
               (tag.seq << 3) ^ sector ^ 1;
  for (size_t i = sizeof(header); i < kSector; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out + i, &x, 8);
  }
}

inline void fill_block(std::span<std::byte> out, const BlockTag& tag) {
  for (uint64_t s = 0; s < kBlock / kSector; ++s) {
    fill_sector(out.data() + s * kSector, tag, s);
  }
}

// Decodes sector `sector` of a block: true and `tag` set if it is a
// well-formed tagged sector or all zeros (tag = {}); false for garbage.
inline bool decode_sector(const std::byte* in, uint64_t sector, BlockTag& tag) {
  bool zero = true;
  for (size_t i = 0; i < kSector && zero; i += 8) {
    uint64_t w;
    std::memcpy(&w, in + i, 8);
    zero = w == 0;
  }
  if (zero) {
    tag = BlockTag{};
    return true;
  }
  uint64_t header[5];
  std::memcpy(header, in, sizeof(header));
  if (header[0] != kTagMagic || header[4] != sector) {
    return false;
  }
  tag = BlockTag{header[1], header[2], header[3]};
  alignas(8) std::byte expect[kSector];
  fill_sector(expect, tag, sector);
  return std::memcmp(expect, in, kSector) == 0;
}

// Decodes a whole block whose sectors must all carry the same tag.
inline bool decode_block(std::span<const std::byte> in, BlockTag& tag) {
  if (!decode_sector(in.data(), 0, tag)) {
    return false;
  }
  for (uint64_t s = 1; s < kBlock / kSector; ++s) {
    BlockTag other;
    if (!decode_sector(in.data() + s * kSector, s, other) || !(other == tag)) {
      return false;
    }
  }
  return true;
}

inline std::string describe(const BlockTag& tag) {
  return "{vol " + std::to_string(tag.volume) + " block " + std::to_string(tag.block) + " seq " +
         std::to_string(tag.seq) + "}";
}

}  // namespace ublkvol::dbs::testing
