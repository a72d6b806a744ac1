// Internal helpers shared by the BlockDevice implementations: an intrusive
// FIFO of IoRequests (linked through IoRequest::device_next, so queueing never
// allocates) and the common request validation.
#pragma once

#include <cerrno>
#include <cstdint>

#include "ublkvol/dbs/block_device.h"

namespace ublkvol::dbs::detail {

// FIFO of requests linked through IoRequest::device_next, kept as a plain
// (head, tail) pointer pair so public headers can hold one without exposing
// this helper. Does not own the requests.
inline void queue_push(IoRequest*& head, IoRequest*& tail, IoRequest& request) {
  request.device_next = nullptr;
  if (tail == nullptr) {
    head = &request;
  } else {
    tail->device_next = &request;
  }
  tail = &request;
}

inline IoRequest* queue_pop(IoRequest*& head, IoRequest*& tail) {
  IoRequest* request = head;
  if (request != nullptr) {
    head = request->device_next;
    if (head == nullptr) {
      tail = nullptr;
    }
    request->device_next = nullptr;
  }
  return request;
}

// 0 if `request` is well formed for a device of `device_size` bytes with
// `block_size` blocks, else -EINVAL. Zero-length data requests are invalid:
// they are always a caller bug, and the kernel would reject several of them.
inline int validate_request(const IoRequest& request, uint64_t device_size, uint32_t block_size) {
  if (request.op == IoOp::kFlush) {
    return 0;
  }
  if (request.length == 0 || request.offset % block_size != 0 || request.length % block_size != 0 ||
      request.offset > device_size || request.length > device_size - request.offset) {
    return -EINVAL;
  }
  if (request.op == IoOp::kRead || request.op == IoOp::kWrite) {
    if (request.buffer == nullptr ||
        reinterpret_cast<uintptr_t>(request.buffer) % kIoAlignment != 0) {
      return -EINVAL;
    }
  } else if (request.op != IoOp::kDiscard && request.op != IoOp::kWriteZeroes) {
    return -EINVAL;
  }
  return 0;
}

}  // namespace ublkvol::dbs::detail
