#include "ublkvol/ublk/device_options.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <string>

namespace ublkvol::ublk {
namespace {

bool is_power_of_two(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

uint8_t shift_of(uint32_t power_of_two) {
  return static_cast<uint8_t>(std::countr_zero(power_of_two));
}

Error invalid(const std::string& message) { return Error(EINVAL, message); }

}  // namespace

uint32_t effective_max_io_bytes(const DeviceOptions& options, const engine::VolumeInfo& volume) {
  if (options.max_io_bytes != 0) {
    return options.max_io_bytes;
  }
  return std::min(volume.max_io_bytes, uapi::kMaxIoBufBytes);
}

const char* to_string(QueueLoop loop) {
  return loop == QueueLoop::kExternal ? "external" : "thread";
}

Result<QueueLoop> parse_queue_loop(const std::string& text) {
  if (text == "thread") {
    return QueueLoop::kThread;
  }
  if (text == "external") {
    return QueueLoop::kExternal;
  }
  return Error(EINVAL, "unknown queue loop '" + text + "' (use thread or external)");
}

Status validate_device_options(const DeviceOptions& options, const engine::VolumeInfo& volume) {
  if (options.queue_loop == QueueLoop::kExternal && options.queue_host == nullptr) {
    return invalid("queue loop 'external' needs a queue host to run the queues (none was given)");
  }
  if (options.queue_depth < 1 || options.queue_depth > uapi::kMaxQueueDepth) {
    return invalid("queue depth " + std::to_string(options.queue_depth) + " is out of range 1.." +
                   std::to_string(uapi::kMaxQueueDepth));
  }
  if (options.queues < 1 || options.queues > uapi::kMaxNrQueues) {
    return invalid("queue count " + std::to_string(options.queues) + " is out of range 1.." +
                   std::to_string(uapi::kMaxNrQueues));
  }
  if (options.dev_id < -1 || options.dev_id > kMaxDevId) {
    return invalid("device id " + std::to_string(options.dev_id) + " is out of range 0.." +
                   std::to_string(kMaxDevId) + " (or -1 for any)");
  }
  if (!is_power_of_two(volume.block_size) || volume.block_size < kMinBlockSize ||
      volume.block_size > kMaxBlockSize) {
    return invalid("block size " + std::to_string(volume.block_size) +
                   " is not a power of two between " + std::to_string(kMinBlockSize) + " and " +
                   std::to_string(kMaxBlockSize));
  }
  if (volume.size_bytes == 0) {
    return invalid("volume size is 0; a device needs at least one block");
  }
  if (volume.size_bytes % volume.block_size != 0) {
    return invalid("volume size " + std::to_string(volume.size_bytes) +
                   " is not a multiple of the block size " + std::to_string(volume.block_size));
  }
  const uint32_t max_io = effective_max_io_bytes(options, volume);
  if (max_io < 4096 || max_io % 4096 != 0 || max_io > uapi::kMaxIoBufBytes) {
    return invalid("max I/O size " + std::to_string(max_io) +
                   " must be a multiple of 4096 between 4096 and " +
                   std::to_string(uapi::kMaxIoBufBytes));
  }
  if (max_io > volume.max_io_bytes) {
    return invalid("max I/O size " + std::to_string(max_io) + " exceeds what volume '" +
                   volume.name + "' accepts (" + std::to_string(volume.max_io_bytes) + ")");
  }
  return ok_status();
}

uapi::Params make_device_params(const engine::VolumeInfo& volume, uint32_t max_io_bytes) {
  uapi::Params p{};
  p.len = sizeof(p);
  p.types = uapi::kParamTypeBasic;
  const uint8_t logical = shift_of(volume.block_size);
  p.basic.logical_bs_shift = logical;
  p.basic.physical_bs_shift = std::max<uint8_t>(logical, 12);
  p.basic.io_min_shift = logical;
  p.basic.io_opt_shift = p.basic.physical_bs_shift;
  p.basic.max_sectors = max_io_bytes >> 9U;
  p.basic.dev_sectors = volume.size_bytes >> 9U;
  if (volume.volatile_cache) {
    // FLUSH and FUA reach the volume only when the device says it caches.
    p.basic.attrs |= uapi::kAttrVolatileCache | uapi::kAttrFua;
  }
  if (volume.supports_discard || volume.supports_write_zeroes) {
    // VolumeInfo::max_io_bytes bounds every request, not just reads and
    // writes: the replicated engine refuses larger discards with -EINVAL
    // (it orders them like writes, in the same per-request range entries).
    const uint32_t max_discard = std::min(kMaxDiscardBytes, volume.max_io_bytes);
    p.types |= uapi::kParamTypeDiscard;
    p.discard.discard_granularity = volume.block_size;
    p.discard.discard_alignment = 0;
    if (volume.supports_discard) {
      p.discard.max_discard_sectors = max_discard >> 9U;
      p.discard.max_discard_segments = 1;
    }
    if (volume.supports_write_zeroes) {
      p.discard.max_write_zeroes_sectors = max_discard >> 9U;
    }
  }
  return p;
}

}  // namespace ublkvol::ublk
