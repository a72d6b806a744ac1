// Internal helpers shared by the BlockDevice implementations: an intrusive
// FIFO of IoRequests (linked through IoRequest::device_next, so queueing never
// allocates) and the common request validation.
#pragma once

#include <cerrno>
#include <cstdint>
#include <memory>
#include <vector>

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

// Detaches the whole queue first (callbacks may queue requests again, which
// then wait for the next drain), then calls `complete(request)` on each in
// FIFO order with device_next cleared. `complete` may reuse or free the
// request (the next one is read before the call). Returns how many it completed.
template <typename Complete>
unsigned queue_drain(IoRequest*& head, IoRequest*& tail, Complete&& complete) {
  unsigned completed = 0;
  IoRequest* request = head;
  head = nullptr;
  tail = nullptr;
  while (request != nullptr) {
    IoRequest* next = request->device_next;
    request->device_next = nullptr;
    complete(*request);
    ++completed;
    request = next;
  }
  return completed;
}

// For the wrapper devices (fault, crash): a free per-request slot if there
// is one, else a new one; the pool grows to the most requests ever in
// flight at once and is then reused without allocating.
template <typename Slot>
Slot* take_slot(std::vector<std::unique_ptr<Slot>>& slots, std::vector<Slot*>& free_slots) {
  if (free_slots.empty()) {
    slots.push_back(std::make_unique<Slot>());
    return slots.back().get();
  }
  Slot* slot = free_slots.back();
  free_slots.pop_back();
  return slot;
}

// The request a wrapper device passes to its inner device for `outer`: the
// same I/O, completing into `on_complete` with `user_data`.
inline IoRequest forwarded_request(const IoRequest& outer, IoCallback on_complete,
                                   void* user_data) {
  IoRequest inner{};
  inner.op = outer.op;
  inner.fua = outer.fua;
  inner.offset = outer.offset;
  inner.length = outer.length;
  inner.buffer = outer.buffer;
  inner.zero_fill = outer.zero_fill;
  inner.on_complete = on_complete;
  inner.user_data = user_data;
  return inner;
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
