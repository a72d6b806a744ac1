// The life of one ublk tag (request slot) in a queue thread.
//
//            submit_fetch                 kernel CQE: OK
//   kIdle ---------------> kWithKernel ------------------> kInBackend
//                           ^   |   |                          |
//            submit_commit  |   |   | CQE: ABORT (-ENODEV)     | volume callback
//                           |   |   +--------> kAborted        v
//                           |   +-- CQE: other error --> kFailed
//                           +------------------------------ kCommitReady
//
// kWithKernel: a FETCH_REQ or COMMIT_AND_FETCH_REQ is with the driver,
// waiting for the next request. kInBackend: the request is with the volume.
// kCommitReady: the volume finished; its result goes back with the next
// COMMIT_AND_FETCH_REQ. kAborted / kFailed are final: the driver is stopping
// the device (or tearing the server down), or refused the command.
//
// Every transition checks where it starts from, so a bookkeeping bug shows up
// as a refused transition (the queue thread logs it and fails the queue)
// rather than as a request committed twice.
#pragma once

#include <cstdint>

#include "ublkvol/ublk/uapi.h"

namespace ublkvol::ublk {

enum class TagState : uint8_t { kIdle, kWithKernel, kInBackend, kCommitReady, kAborted, kFailed };

const char* to_string(TagState state);

// What a kernel CQE for a tag means.
enum class KernelEvent : uint8_t {
  kRequest,  // a request arrived: hand it to the volume
  kAbort,    // no request will come: the tag is done
  kError,    // the driver refused the command: the tag is done
  kInvalid,  // a CQE for a tag that had no command with the kernel (bug)
};

class TagStateMachine {
 public:
  [[nodiscard]] TagState state() const { return state_; }
  [[nodiscard]] bool finished() const {
    return state_ == TagState::kAborted || state_ == TagState::kFailed;
  }

  // FETCH_REQ queued (queue start).
  bool submit_fetch() { return move(TagState::kIdle, TagState::kWithKernel); }

  // The driver completed this tag's command with `result`.
  KernelEvent on_kernel_completion(int result) {
    if (state_ != TagState::kWithKernel) {
      return KernelEvent::kInvalid;
    }
    if (result == uapi::kIoResOk) {
      state_ = TagState::kInBackend;
      return KernelEvent::kRequest;
    }
    if (result == uapi::kIoResAbort) {
      state_ = TagState::kAborted;
      return KernelEvent::kAbort;
    }
    state_ = TagState::kFailed;
    return KernelEvent::kError;
  }

  // The volume completed the request (or it was answered without one).
  bool on_backend_done() { return move(TagState::kInBackend, TagState::kCommitReady); }

  // COMMIT_AND_FETCH_REQ queued.
  bool submit_commit() { return move(TagState::kCommitReady, TagState::kWithKernel); }

 private:
  bool move(TagState from, TagState to) {
    if (state_ != from) {
      return false;
    }
    state_ = to;
    return true;
  }

  TagState state_ = TagState::kIdle;
};

inline const char* to_string(TagState state) {
  switch (state) {
    case TagState::kIdle:
      return "idle";
    case TagState::kWithKernel:
      return "with-kernel";
    case TagState::kInBackend:
      return "in-backend";
    case TagState::kCommitReady:
      return "commit-ready";
    case TagState::kAborted:
      return "aborted";
    case TagState::kFailed:
      return "failed";
  }
  return "unknown";
}

}  // namespace ublkvol::ublk
