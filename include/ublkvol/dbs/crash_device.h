// CrashDevice: a BlockDevice wrapper that records every completed write,
// discard, write-zeroes and flush, so a crash harness can build every disk
// image a power cut could leave behind and reopen the store on each.
//
// The model (a Linux block device with a volatile write cache, see
// block_device.h), precisely:
//   - The LOG holds each successfully completed WRITE / DISCARD /
//     WRITE_ZEROES, in completion order (entry i = i-th completion), with a
//     copy of the written data. Reads and failed requests are not logged.
//   - A FLUSH, when SUBMITTED, covers the log entries that have completed by
//     then (a log prefix). When it COMPLETES, that prefix is durable. Writes
//     still in flight when the flush was submitted are not covered, even if
//     they complete before the flush does.
//   - A FUA write is durable from its own completion.
//   - EPOCH k (0 <= k < epochs()) is the interval between the k-th and the
//     (k+1)-th flush completion (epoch 0 starts at construction; the last
//     epoch runs to "now"). During epoch k, durable_prefix(k) entries are
//     durable (k = 0: none), and the entries in [durable_prefix(k),
//     window_end(k)) have completed but are not yet durable - except FUA
//     ones - so the medium may or may not hold each of them.
//   - A power cut during epoch k, at a point where the first `cut` log entries
//     had completed (durable_prefix(k) <= cut <= window_end(k)), leaves:
//       the initial image,
//       + entries [0, durable_prefix(k)) applied in log order,
//       + FUA entries in [durable_prefix(k), cut) applied in log order,
//       + any subset of the other entries in [durable_prefix(k), cut), in any
//         order, each possibly torn: only some of its 512-byte sectors
//         reached the medium (a 4 KiB block is not atomic on power loss).
//     A pending entry never overwrites a later durable (FUA) entry's sectors:
//     the later write superseded it in the cache. Discards are modelled as
//     zeroing when applied and as "old content stays" when not.
//
// Build an image with build_image(spec, out) (reusing `out`'s capacity) or
// build_device(spec) (a MemoryDevice to reopen the store on). Images are
// built from a cached copy of the durable image at the most recently used
// epoch plus the (short) pending list, so walking epochs in increasing order
// costs one image copy per image plus one log replay overall: thousands of
// 16-64 MiB images take seconds to a few minutes.
//
// The inner device (usually a MemoryDevice) sees every request and always
// holds the "no crash" content.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/block_device.h"
#include "ublkvol/dbs/memory_device.h"

namespace ublkvol::dbs {

class CrashDevice final : public BlockDevice {
 public:
  static constexpr uint32_t kSectorSize = 512;
  static constexpr uint32_t kSectorsPerBlock = 4096 / kSectorSize;

  // One logged mutation.
  struct Entry {
    IoOp op;  // kWrite, kDiscard or kWriteZeroes
    bool fua;
    uint64_t offset;
    uint64_t length;
    size_t data_offset;  // writes: position of the copied data in the log's arena
  };

  // Which non-durable entries reached the medium, and how.
  struct Applied {
    size_t entry = 0;  // log index
    // Empty: the whole entry was written. Otherwise one byte per 4 KiB block
    // of the entry; bit s set = 512-byte sector s of that block was written
    // (0xFF = whole block, 0 = block not written: a torn multi-block write).
    std::vector<uint8_t> block_sector_masks;
  };

  struct CrashSpec {
    size_t epoch = 0;
    // Log entries at or after this index had not completed at the cut;
    // clamped to [durable_prefix(epoch), window_end(epoch)].
    size_t cut = std::numeric_limits<size_t>::max();
    // Pending entries (in [durable_prefix(epoch), cut), not FUA) that reached
    // the medium, applied in this order after the durable ones.
    std::vector<Applied> applied;
  };

  // Records I/O to `inner`, whose current content is the initial image.
  explicit CrashDevice(MemoryDevice& inner);
  // Any inner device; `initial_image` must be its current content.
  CrashDevice(BlockDevice& inner, std::vector<std::byte> initial_image);
  ~CrashDevice() override;
  CrashDevice(const CrashDevice&) = delete;
  CrashDevice& operator=(const CrashDevice&) = delete;

  // BlockDevice: forwards to the inner device.
  [[nodiscard]] std::string_view name() const override { return name_; }
  [[nodiscard]] uint64_t size_bytes() const override { return inner_.size_bytes(); }
  [[nodiscard]] uint32_t block_size() const override { return inner_.block_size(); }
  void submit(IoRequest& request) override;
  void kick() override { inner_.kick(); }
  unsigned poll(bool wait) override;
  [[nodiscard]] unsigned in_flight() const override { return in_flight_; }
  [[nodiscard]] int completion_fd() const override { return inner_.completion_fd(); }

  // --- the log ---
  [[nodiscard]] const std::vector<Entry>& log() const { return log_; }
  // The data a logged write wrote (empty for discard / write-zeroes).
  [[nodiscard]] std::span<const std::byte> entry_data(size_t index) const;
  // Completed flushes + 1.
  [[nodiscard]] size_t epochs() const { return flushes_.size() + 1; }
  [[nodiscard]] size_t durable_prefix(size_t epoch) const;
  [[nodiscard]] size_t window_end(size_t epoch) const;
  // Indices of the non-FUA entries that may or may not be on the medium
  // after a power cut in `epoch` (i.e. [durable_prefix, window_end) minus FUA).
  [[nodiscard]] std::vector<size_t> pending_entries(size_t epoch) const;

  // --- images ---
  // Writes the image for `spec` into `out` (resized to the device size).
  // Errors name a bad spec (epoch out of range, entry not pending, mask of
  // the wrong size).
  Status build_image(const CrashSpec& spec, std::vector<std::byte>& out);
  Result<std::unique_ptr<MemoryDevice>> build_device(const CrashSpec& spec);

  // Forgets the log: the inner MemoryDevice's current content becomes the
  // initial image and epochs restart at 0. For harnesses that set a store up
  // before the part they want to crash-test. Needs nothing in flight and a
  // MemoryDevice inner.
  Status reset_history();

 private:
  struct Slot;
  static void on_inner_complete(IoRequest& inner, int result);
  void record(const IoRequest& request);
  // Applies log entry `index` (optionally torn by `masks`), skipping sectors
  // of FUA entries in (index, cut) that superseded it.
  void apply_entry(std::vector<std::byte>& image, const Entry& entry,
                   const std::vector<uint8_t>* masks, size_t index, size_t cut) const;
  Status ensure_base(size_t epoch);

  BlockDevice& inner_;
  MemoryDevice* inner_memory_;  // null if the inner device is not a MemoryDevice
  std::string name_;
  std::vector<std::byte> initial_;
  std::vector<Entry> log_;
  std::vector<std::byte> arena_;  // copies of written data
  struct Flush {
    size_t durable_prefix;  // monotone over completions
    size_t log_size_at_completion;
  };
  std::vector<Flush> flushes_;
  std::vector<size_t> fua_entries_;  // indices of FUA writes, ascending

  // Cached durable image: initial + log[0, base_prefix_).
  std::vector<std::byte> base_;
  size_t base_prefix_ = 0;
  bool base_valid_ = false;

  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<Slot*> free_slots_;
  unsigned in_flight_ = 0;
};

}  // namespace ublkvol::dbs
