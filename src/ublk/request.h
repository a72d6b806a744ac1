// Translation between the driver's request descriptors and VolumeIo, and of
// volume results back into COMMIT_AND_FETCH_REQ results. Pure functions, so
// the host tests check them without a kernel.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>

#include "ublkvol/engine/volume.h"
#include "ublkvol/ublk/uapi.h"

namespace ublkvol::ublk {

// Fills `io` (op, fua, offset, length, buffer) from `desc`. Returns 0, or the
// negative errno to answer the request with at once: -EOPNOTSUPP for
// operations the frontend does not serve (WRITE_SAME, zoned ops), -EIO for a
// READ/WRITE larger than the tag buffer (the driver never sends one: its
// max_sectors is the buffer size).
inline int translate_request(const uapi::IoDesc& desc, std::byte* buffer, uint32_t buffer_bytes,
                             engine::VolumeIo& io) {
  const uint64_t length = uint64_t{desc.nr_sectors} << 9U;
  io.offset = desc.start_sector << 9U;
  io.fua = false;
  io.buffer = nullptr;
  if (length > UINT32_MAX) {
    return -EIO;
  }
  io.length = static_cast<uint32_t>(length);
  switch (uapi::io_desc_op(desc.op_flags)) {
    case uapi::kOpRead:
      io.op = engine::VolumeOp::kRead;
      break;
    case uapi::kOpWrite:
      io.op = engine::VolumeOp::kWrite;
      io.fua = (desc.op_flags & uapi::kIoFFua) != 0;
      break;
    case uapi::kOpFlush:
      io.op = engine::VolumeOp::kFlush;
      io.offset = 0;
      io.length = 0;
      return 0;
    case uapi::kOpDiscard:
      io.op = engine::VolumeOp::kDiscard;
      return 0;
    case uapi::kOpWriteZeroes:
      io.op = engine::VolumeOp::kWriteZeroes;
      return 0;
    default:
      return -EOPNOTSUPP;
  }
  if (io.length > buffer_bytes) {
    return -EIO;
  }
  io.buffer = buffer;
  return 0;
}

// What COMMIT_AND_FETCH_REQ reports for a request the volume completed with
// `volume_result`: the byte count for a successful READ/WRITE (the driver
// fails a READ that reports 0 bytes), 0 for other successful operations, the
// negative errno otherwise.
inline int commit_result(engine::VolumeOp op, uint32_t length, int volume_result) {
  if (volume_result < 0) {
    return volume_result;
  }
  if (op == engine::VolumeOp::kRead || op == engine::VolumeOp::kWrite) {
    return static_cast<int>(length);
  }
  return 0;
}

}  // namespace ublkvol::ublk
