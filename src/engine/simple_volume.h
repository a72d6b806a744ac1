// Shared pieces of the backends that complete on the submitting thread
// (null, memory): option checks, request checks and the per-queue list of
// finished I/Os that reap() runs.
#pragma once

#include <cstdint>
#include <new>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/volume.h"

namespace ublkvol::engine::detail {

// Checks what every simple backend needs: a positive size that is a multiple
// of a power-of-two block size in [512, 65536], and at least one queue.
Status check_simple_options(const SimpleVolumeOptions& options, const char* backend);

// VolumeInfo of a simple backend (1 MiB max I/O, discard + write-zeroes,
// volatile cache so that FLUSH and FUA reach the backend).
VolumeInfo simple_volume_info(const SimpleVolumeOptions& options);

// 0 if `io` is well-formed for `info`, else the negative errno to complete it
// with: -EINVAL for out-of-range, unaligned, oversized or buffer-less
// requests, -EOPNOTSUPP for an operation the volume does not offer.
int check_io(const VolumeInfo& info, const VolumeIo& io);

// Intrusive FIFO of finished I/Os, linked through VolumeIo::scratch so that
// queuing a completion allocates nothing.
class CompletionList {
 public:
  void push(VolumeIo& io, int result) {
    auto* state = ::new (static_cast<void*>(io.scratch)) LinkState{nullptr, result};
    (void)state;
    if (tail_ == nullptr) {
      head_ = &io;
    } else {
      link(*tail_).next = &io;
    }
    tail_ = &io;
    ++in_flight_;
  }

  // Runs the callbacks of everything queued so far. Completions queued by
  // those callbacks (a callback may submit again) wait for the next call.
  unsigned run() {
    VolumeIo* io = head_;
    head_ = nullptr;
    tail_ = nullptr;
    unsigned ran = 0;
    while (io != nullptr) {
      LinkState& state = link(*io);
      VolumeIo* next = state.next;
      const int result = state.result;
      --in_flight_;
      ++ran;
      io->on_complete(*io, result);
      io = next;
    }
    return ran;
  }

  [[nodiscard]] unsigned in_flight() const { return in_flight_; }

 private:
  struct LinkState {
    VolumeIo* next;
    int result;
  };
  static_assert(sizeof(LinkState) <= kVolumeIoScratchBytes);

  static LinkState& link(VolumeIo& io) {
    return *std::launder(reinterpret_cast<LinkState*>(io.scratch));
  }

  VolumeIo* head_ = nullptr;
  VolumeIo* tail_ = nullptr;
  unsigned in_flight_ = 0;
};

}  // namespace ublkvol::engine::detail
