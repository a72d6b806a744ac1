// LayerMap: one layer's map logical extent -> ExtentEntry, in memory.
//
// Sized for the memory budget (<= 48 MB per TB written at 1 MiB extents): an
// entry is 40 bytes (physical extent, 256-bit block bitmap, in-flight count,
// flags); entries live in chunks of 32 consecutive logical extents, chunks in
// groups of 1024, so a sparse 1 TB volume costs one 8 KiB group directory per
// 32 GiB touched and nothing for untouched ranges. Creating an empty map (a
// new snapshot head) allocates nothing. Entries never move while they exist,
// so the data path can hold ExtentEntry pointers across an I/O.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ublkvol/dbs/format.h"

namespace ublkvol::dbs::detail {

struct ExtentEntry {
  uint32_t phys = format::kNoExtent;
  // Device requests in flight against this extent; an extent is never freed
  // while one is (its space could otherwise be reused under the request).
  uint16_t inflight = 0;
  uint16_t flags = 0;
  uint64_t bits[4] = {0, 0, 0, 0};

  static constexpr uint16_t kDirty = 1;  // changed since the last commit capture

  [[nodiscard]] bool present() const { return phys != format::kNoExtent; }
  [[nodiscard]] bool test(uint32_t block) const { return (bits[block >> 6] >> (block & 63)) & 1; }
  void set(uint32_t block) { bits[block >> 6] |= uint64_t{1} << (block & 63); }
  void clear(uint32_t block) { bits[block >> 6] &= ~(uint64_t{1} << (block & 63)); }
  [[nodiscard]] bool empty() const { return (bits[0] | bits[1] | bits[2] | bits[3]) == 0; }
  [[nodiscard]] uint32_t count() const {
    return static_cast<uint32_t>(std::popcount(bits[0]) + std::popcount(bits[1]) +
                                 std::popcount(bits[2]) + std::popcount(bits[3]));
  }
};
static_assert(sizeof(ExtentEntry) == 40);

class LayerMap {
 public:
  static constexpr uint32_t kChunkShift = 5;
  static constexpr uint32_t kChunkEntries = 1u << kChunkShift;
  static constexpr uint32_t kGroupShift = 10;
  static constexpr uint32_t kGroupChunks = 1u << kGroupShift;

  LayerMap() = default;
  LayerMap(LayerMap&&) = default;
  LayerMap& operator=(LayerMap&&) = default;

  // The entry for `logical`, or nullptr if the layer has none.
  [[nodiscard]] ExtentEntry* find(uint32_t logical) const {
    const uint32_t chunk_index = logical >> kChunkShift;
    const uint32_t group_index = chunk_index >> kGroupShift;
    if (group_index >= groups_.size() || !groups_[group_index]) {
      return nullptr;
    }
    Chunk* chunk = (*groups_[group_index])[chunk_index & (kGroupChunks - 1)].get();
    if (chunk == nullptr) {
      return nullptr;
    }
    ExtentEntry* entry = &chunk->entries[logical & (kChunkEntries - 1)];
    return entry->present() ? entry : nullptr;
  }

  // Adds an entry (precondition: none exists) and returns it.
  ExtentEntry* insert(uint32_t logical, uint32_t phys) {
    const uint32_t chunk_index = logical >> kChunkShift;
    const uint32_t group_index = chunk_index >> kGroupShift;
    if (group_index >= groups_.size()) {
      groups_.resize(group_index + 1);
    }
    if (!groups_[group_index]) {
      groups_[group_index] = std::make_unique<Group>();
    }
    auto& chunk = (*groups_[group_index])[chunk_index & (kGroupChunks - 1)];
    if (!chunk) {
      chunk = std::make_unique<Chunk>();
      ++chunk_count_;
    }
    ExtentEntry* entry = &chunk->entries[logical & (kChunkEntries - 1)];
    *entry = ExtentEntry{};
    entry->phys = phys;
    ++chunk->used;
    ++size_;
    return entry;
  }

  // Removes the entry for `logical` (precondition: present, inflight == 0).
  void erase(uint32_t logical) {
    const uint32_t chunk_index = logical >> kChunkShift;
    auto& chunk = (*groups_[chunk_index >> kGroupShift])[chunk_index & (kGroupChunks - 1)];
    chunk->entries[logical & (kChunkEntries - 1)] = ExtentEntry{};
    --size_;
    if (--chunk->used == 0) {
      chunk.reset();
      --chunk_count_;
    }
  }

  // Calls f(logical, entry) for every entry in logical order.
  template <typename F>
  void for_each(F&& f) const {
    for (size_t g = 0; g < groups_.size(); ++g) {
      if (!groups_[g]) {
        continue;
      }
      for (uint32_t c = 0; c < kGroupChunks; ++c) {
        Chunk* chunk = (*groups_[g])[c].get();
        if (chunk == nullptr) {
          continue;
        }
        for (uint32_t e = 0; e < kChunkEntries; ++e) {
          ExtentEntry& entry = chunk->entries[e];
          if (entry.present()) {
            const uint32_t logical =
                static_cast<uint32_t>(((g << kGroupShift) + c) << kChunkShift) + e;
            f(logical, entry);
          }
        }
      }
    }
  }

  void clear() {
    groups_.clear();
    size_ = 0;
    chunk_count_ = 0;
  }

  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] size_t memory_bytes() const {
    size_t groups = 0;
    for (const auto& group : groups_) {
      groups += group ? 1 : 0;
    }
    return groups_.capacity() * sizeof(void*) + groups * sizeof(Group) +
           chunk_count_ * sizeof(Chunk);
  }

 private:
  struct Chunk {
    ExtentEntry entries[kChunkEntries];
    uint32_t used = 0;
  };
  using Group = std::array<std::unique_ptr<Chunk>, kGroupChunks>;

  std::vector<std::unique_ptr<Group>> groups_;
  size_t size_ = 0;
  size_t chunk_count_ = 0;
};

}  // namespace ublkvol::dbs::detail
