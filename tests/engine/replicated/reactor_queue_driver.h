// Test helpers for a volume queue owned by a reactor: the poller that reaps
// it, and a request whose completion another thread waits for.
#pragma once

#include <atomic>
#include <memory>

#include "ublkvol/engine/volume.h"
#include "ublkvol/reactor/poller.h"

namespace ublkvol::engine::testing {

// The volume queue's owner on the reactor: reaps on every pass (co-located
// completions arrive with no eventfd write) and on its wake fd.
class QueueDriver final : public reactor::Poller {
 public:
  unsigned poll() override { return queue ? queue->reap() : 0; }
  [[nodiscard]] int wait_fd() const override { return queue ? queue->wake_fd() : -1; }
  std::unique_ptr<VolumeQueue> queue;
};

// A request submitted on the reactor; `result` stays 1 until on_done ran.
struct Request {
  VolumeIo io;
  std::atomic<int> result{1};
};

inline void on_done(VolumeIo& io, int result) {
  static_cast<Request*>(io.user_data)->result.store(result, std::memory_order_release);
}

}  // namespace ublkvol::engine::testing
