#include "ublkvol/engine/volume.h"

#include <cerrno>
#include <string>

#include "simple_volume.h"

namespace ublkvol::engine {

const char* to_string(VolumeOp op) {
  switch (op) {
    case VolumeOp::kRead:
      return "read";
    case VolumeOp::kWrite:
      return "write";
    case VolumeOp::kFlush:
      return "flush";
    case VolumeOp::kDiscard:
      return "discard";
    case VolumeOp::kWriteZeroes:
      return "write-zeroes";
  }
  return "unknown";
}

namespace detail {

namespace {
constexpr uint32_t kMinBlockSize = 512;
constexpr uint32_t kMaxBlockSize = 64 * 1024;
constexpr uint32_t kSimpleMaxIoBytes = 1U << 20U;

bool is_power_of_two(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }
}  // namespace

Status check_simple_options(const SimpleVolumeOptions& options, const char* backend) {
  const std::string what = std::string(backend) + " volume '" + options.name + "'";
  if (!is_power_of_two(options.block_size) || options.block_size < kMinBlockSize ||
      options.block_size > kMaxBlockSize) {
    return Error(EINVAL, what + ": block size " + std::to_string(options.block_size) +
                             " is not a power of two between " + std::to_string(kMinBlockSize) +
                             " and " + std::to_string(kMaxBlockSize));
  }
  if (options.size_bytes == 0) {
    return Error(EINVAL, what + ": size is 0; a volume needs at least one block");
  }
  if (options.size_bytes % options.block_size != 0) {
    return Error(EINVAL, what + ": size " + std::to_string(options.size_bytes) +
                             " is not a multiple of the block size " +
                             std::to_string(options.block_size));
  }
  if (options.queues == 0) {
    return Error(EINVAL, what + ": queue count is 0; at least one queue is needed");
  }
  return ok_status();
}

VolumeInfo simple_volume_info(const SimpleVolumeOptions& options) {
  VolumeInfo info;
  info.name = options.name;
  info.size_bytes = options.size_bytes;
  info.block_size = options.block_size;
  info.max_io_bytes = kSimpleMaxIoBytes;
  info.supports_discard = true;
  info.supports_write_zeroes = true;
  info.discard_zeroes = true;
  info.volatile_cache = true;
  return info;
}

int check_io(const VolumeInfo& info, const VolumeIo& io) {
  switch (io.op) {
    case VolumeOp::kFlush:
      return 0;
    case VolumeOp::kRead:
    case VolumeOp::kWrite:
      if (io.buffer == nullptr || io.length > info.max_io_bytes) {
        return -EINVAL;
      }
      break;
    case VolumeOp::kDiscard:
      if (!info.supports_discard) {
        return -EOPNOTSUPP;
      }
      break;
    case VolumeOp::kWriteZeroes:
      if (!info.supports_write_zeroes) {
        return -EOPNOTSUPP;
      }
      break;
    default:
      return -EOPNOTSUPP;
  }
  if (io.length == 0 || io.offset % info.block_size != 0 || io.length % info.block_size != 0) {
    return -EINVAL;
  }
  if (io.offset > info.size_bytes || io.length > info.size_bytes - io.offset) {
    return -EINVAL;
  }
  return 0;
}

}  // namespace detail
}  // namespace ublkvol::engine
