// Internal helpers shared by the BlockDevice implementations: an intrusive
// FIFO of IoRequests (linked through IoRequest::device_next, so queueing never
// allocates) and the common request validation.
#pragma once

#include <cerrno>
#include <cstdint>

#include "ublkvol/dbs/block_device.h"

namespace ublkvol::dbs::detail {

// FIFO of requests linked through IoRequest::device_next. Does not own them.
class RequestQueue {
 public:
  [[nodiscard]] bool empty() const { return head_ == nullptr; }
  [[nodiscard]] IoRequest* front() const { return head_; }

  void push_back(IoRequest& request) {
    request.device_next = nullptr;
    if (tail_ == nullptr) {
      head_ = &request;
    } else {
      tail_->device_next = &request;
    }
    tail_ = &request;
  }

  IoRequest* pop_front() {
    IoRequest* request = head_;
    if (request != nullptr) {
      head_ = request->device_next;
      if (head_ == nullptr) {
        tail_ = nullptr;
      }
      request->device_next = nullptr;
    }
    return request;
  }

  // Moves every request out, leaving this queue empty: lets poll() run a
  // batch of callbacks while those callbacks queue new requests.
  RequestQueue take_all() {
    RequestQueue taken;
    taken.head_ = head_;
    taken.tail_ = tail_;
    head_ = nullptr;
    tail_ = nullptr;
    return taken;
  }

 private:
  IoRequest* head_ = nullptr;
  IoRequest* tail_ = nullptr;
};

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
