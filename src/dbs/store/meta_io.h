// Metadata I/O: framing record bodies into checksummed metadata blocks,
// reading and validating checkpoints and journal commits back, and loading
// the last committed state of a store (used by open and by check_device).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/block_device.h"
#include "ublkvol/dbs/format.h"

#include "metadata.h"

namespace ublkvol::dbs::detail {

// A 4096-aligned, growable byte buffer for device I/O.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size) { resize(size); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& other) noexcept
      : data_(std::move(other.data_)), size_(other.size_), capacity_(other.capacity_) {
    other.size_ = other.capacity_ = 0;
  }

  // Grows capacity as needed; contents are not preserved on growth.
  void resize(size_t size);
  // Frees the memory (e.g. after a one-off large checkpoint).
  void release() {
    data_.reset();
    size_ = capacity_ = 0;
  }
  [[nodiscard]] size_t capacity() const { return capacity_; }
  [[nodiscard]] std::byte* data() const { return data_.get(); }
  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] std::span<std::byte> span() const { return {data_.get(), size_}; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

// Number of blocks a body of `body_bytes` takes (at least 1).
uint64_t blocks_for_body(size_t body_bytes);

// Writes `body` as a run of metadata blocks into `out` (resized).
void frame_body(const Geometry& geometry, format::MetaType type, uint64_t epoch, uint64_t seq,
                std::span<const std::byte> body, AlignedBuffer& out);

// A validated checkpoint or journal commit.
struct MetaRun {
  format::MetaHeader header{};
  std::vector<std::byte> body;
};

// Validates the header of one metadata block (magic, checksum, store id,
// type, field ranges). Error message names the problem.
Result<format::MetaHeader> check_meta_block(const Geometry& geometry,
                                            std::span<const std::byte> block,
                                            format::MetaType type);

// Reads the run starting at `start`, which must end before `region_end`.
// A run that is not valid (torn, stale, foreign, corrupted) gives an EINVAL
// Error; a device read that failed gives the device's Error and sets
// `*io_failed` (if given) - recovery must tell "the journal ends here" from
// "the disk could not say", or a read error would silently roll back
// acknowledged commits.
Result<MetaRun> read_run(BlockDevice& device, const Geometry& geometry, uint64_t start,
                         uint64_t region_end, format::MetaType type, bool* io_failed = nullptr);

// Reads blocks [first, first + count) into `out`.
Status read_blocks(BlockDevice& device, uint64_t first, uint64_t count, AlignedBuffer& out);

// The last committed state of a store.
struct LoadedStore {
  Geometry geometry;
  std::unique_ptr<Metadata> metadata;
  uint64_t epoch = 0;         // of the active checkpoint
  uint64_t seq = 0;           // last commit applied
  int active_checkpoint = 0;  // 0 = A, 1 = B
  uint64_t journal_pos = 0;   // first journal block after the last valid commit
  uint64_t journal_commits = 0;
  std::vector<std::string> notes;  // recoverable oddities (one bad superblock copy, ...)
  // The superblock copy (0 or 1) that failed validation while the other one
  // was good, or -1. Store::open rewrites it from the good one.
  int bad_superblock_copy = -1;
};

// Reads the superblocks, the newest valid checkpoint and the valid journal
// commits after it. Never writes. `validate` also runs link_and_validate()
// and fails on any problem.
Result<LoadedStore> load_store(BlockDevice& device, bool validate,
                               std::vector<std::string>* problems);

}  // namespace ublkvol::dbs::detail
