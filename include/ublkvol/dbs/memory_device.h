// MemoryDevice: a BlockDevice backed by a byte vector in RAM.
//
// For tests and the crash harness: stores are formatted and opened on it like
// on a real disk, its raw bytes can be inspected, snapshotted and restored,
// and crash images (crash_device.h) materialise as MemoryDevices.
//
// Behaviour:
//   - block size 4096; size is a positive multiple of 4096;
//   - submit() only queues; every queued request executes and completes, in
//     submission order, in the next poll() (also when called with wait=false;
//     there is never anything to wait for). Requests that callbacks submit
//     during poll() run in the following poll();
//   - invalid requests (unaligned offset/length/buffer, out of range, zero
//     length) complete with -EINVAL and touch nothing;
//   - DISCARD and WRITE_ZEROES both zero the range (discarded blocks reading
//     as zeros is one of the behaviours block_device.h allows);
//   - FLUSH and FUA are no-ops: there is no volatile cache to lose. Use
//     CrashDevice on top to model one.
//   - no completion fd (completion_fd() == -1).
//
// Example:
//   MemoryDevice disk(64 << 20);
//   UBLKVOL_TRY(write_sync(disk, 0, block));
//   std::vector<std::byte> image = disk.snapshot();
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/block_device.h"

namespace ublkvol::dbs {

class MemoryDevice final : public BlockDevice {
 public:
  static constexpr uint32_t kBlockSize = 4096;

  // Completed operations, per kind (invalid requests are not counted).
  struct Counters {
    uint64_t reads = 0;
    uint64_t writes = 0;
    uint64_t fua_writes = 0;
    uint64_t flushes = 0;
    uint64_t discards = 0;
    uint64_t write_zeroes = 0;
    uint64_t bytes_read = 0;
    uint64_t bytes_written = 0;
  };

  // A zero-filled device. Precondition: `size_bytes` is a positive multiple
  // of 4096 (asserted); use create() for sizes that come from input.
  explicit MemoryDevice(uint64_t size_bytes);
  // A device whose content is `image` (moved in, not copied). Precondition
  // as above on image.size(); use from_image() for untrusted images.
  explicit MemoryDevice(std::vector<std::byte> image);

  // Validating factories: an error names the bad size.
  static Result<std::unique_ptr<MemoryDevice>> create(uint64_t size_bytes);
  static Result<std::unique_ptr<MemoryDevice>> from_image(std::vector<std::byte> image);

  MemoryDevice(const MemoryDevice&) = delete;
  MemoryDevice& operator=(const MemoryDevice&) = delete;

  // BlockDevice
  [[nodiscard]] std::string_view name() const override { return name_; }
  [[nodiscard]] uint64_t size_bytes() const override { return data_.size(); }
  [[nodiscard]] uint32_t block_size() const override { return kBlockSize; }
  void submit(IoRequest& request) override;
  void kick() override {}
  unsigned poll(bool wait) override;
  [[nodiscard]] unsigned in_flight() const override { return in_flight_; }

  // Raw content, for tests and image building. Writing through bytes() while
  // requests are queued affects what they read/overwrite when poll() runs.
  [[nodiscard]] std::span<std::byte> bytes() { return data_; }
  [[nodiscard]] std::span<const std::byte> bytes() const { return data_; }
  // A copy of the whole content.
  [[nodiscard]] std::vector<std::byte> snapshot() const { return data_; }
  // Replaces the content; `image` must be exactly size_bytes() long.
  Status restore(std::span<const std::byte> image);
  // Gives the content away (the device is left empty, size 0); lets a
  // harness recycle image buffers without copying.
  [[nodiscard]] std::vector<std::byte> release_image();

  [[nodiscard]] const Counters& counters() const { return counters_; }

 private:
  void execute(IoRequest& request);

  std::vector<std::byte> data_;
  std::string name_;
  // Requests submitted and not yet executed, linked through device_next.
  IoRequest* queue_head_ = nullptr;
  IoRequest* queue_tail_ = nullptr;
  unsigned in_flight_ = 0;
  Counters counters_;
};

}  // namespace ublkvol::dbs
