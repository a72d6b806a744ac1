#include "ublkvol/dbs/memory_device.h"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <string>

#include "request_queue.h"

namespace ublkvol::dbs {

namespace {

std::string describe_size(uint64_t size_bytes) {
  if (size_bytes % (uint64_t{1} << 30) == 0 && size_bytes != 0) {
    return std::to_string(size_bytes >> 30) + " GiB";
  }
  if (size_bytes % (uint64_t{1} << 20) == 0 && size_bytes != 0) {
    return std::to_string(size_bytes >> 20) + " MiB";
  }
  if (size_bytes % (uint64_t{1} << 10) == 0 && size_bytes != 0) {
    return std::to_string(size_bytes >> 10) + " KiB";
  }
  return std::to_string(size_bytes) + " bytes";
}

Status check_size(uint64_t size_bytes) {
  if (size_bytes == 0 || size_bytes % MemoryDevice::kBlockSize != 0) {
    return Error(EINVAL, "memory device size " + std::to_string(size_bytes) +
                             " is not a positive multiple of 4096");
  }
  return ok_status();
}

}  // namespace

MemoryDevice::MemoryDevice(uint64_t size_bytes)
    : data_(size_bytes), name_("memory(" + describe_size(size_bytes) + ")") {
  assert(check_size(size_bytes).ok());
}

MemoryDevice::MemoryDevice(std::vector<std::byte> image)
    : data_(std::move(image)), name_("memory(" + describe_size(data_.size()) + ")") {
  assert(check_size(data_.size()).ok());
}

Result<std::unique_ptr<MemoryDevice>> MemoryDevice::create(uint64_t size_bytes) {
  UBLKVOL_TRY(check_size(size_bytes));
  return std::make_unique<MemoryDevice>(size_bytes);
}

Result<std::unique_ptr<MemoryDevice>> MemoryDevice::from_image(std::vector<std::byte> image) {
  UBLKVOL_TRY(check_size(image.size()));
  return std::make_unique<MemoryDevice>(std::move(image));
}

Status MemoryDevice::restore(std::span<const std::byte> image) {
  if (image.size() != data_.size()) {
    return Error(EINVAL, name_ + ": restore image of " + std::to_string(image.size()) +
                             " bytes does not match the device size " +
                             std::to_string(data_.size()));
  }
  std::copy(image.begin(), image.end(), data_.begin());
  return ok_status();
}

std::vector<std::byte> MemoryDevice::release_image() {
  std::vector<std::byte> image = std::move(data_);
  data_.clear();
  return image;
}

void MemoryDevice::submit(IoRequest& request) {
  detail::queue_push(queue_head_, queue_tail_, request);
  ++in_flight_;
}

void MemoryDevice::execute(IoRequest& request) {
  int result = detail::validate_request(request, data_.size(), kBlockSize);
  if (result == 0) {
    std::byte* range = data_.data() + request.offset;
    switch (request.op) {
      case IoOp::kRead:
        if (request.zero_fill) {
          std::memset(request.buffer, 0, request.length);
        } else {
          std::memcpy(request.buffer, range, request.length);
        }
        counters_.reads++;
        counters_.bytes_read += request.length;
        break;
      case IoOp::kWrite:
        std::memcpy(range, request.buffer, request.length);
        counters_.writes++;
        counters_.fua_writes += request.fua ? 1 : 0;
        counters_.bytes_written += request.length;
        break;
      case IoOp::kFlush:
        counters_.flushes++;
        break;
      case IoOp::kDiscard:
        std::memset(range, 0, request.length);
        counters_.discards++;
        break;
      case IoOp::kWriteZeroes:
        std::memset(range, 0, request.length);
        counters_.write_zeroes++;
        break;
    }
  }
  --in_flight_;
  request.on_complete(request, result);
}

unsigned MemoryDevice::poll(bool /*wait*/) {
  // Detach the current batch first: callbacks may submit new requests, which
  // then wait for the next poll() instead of extending this one forever.
  return detail::queue_drain(queue_head_, queue_tail_,
                             [this](IoRequest& request) { execute(request); });
}

}  // namespace ublkvol::dbs
