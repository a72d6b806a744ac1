// StoreChannel: the pair of rings between one queue thread of one volume and
// one store executor (store_executor.h; a StoreThread in production). Internal to the engine.
#pragma once

#include <array>

#include "ublkvol/engine/replica_store.h"
#include "ublkvol/engine/replicated_volume.h"

#include "spsc_ring.h"

namespace ublkvol::engine {
class StoreExecutor;
}

namespace ublkvol::engine::detail {

struct StoreChannel {
  explicit StoreChannel(size_t capacity) : requests(capacity), completions(capacity) {}

  SpscRing<ReplicaIo> requests;     // queue thread -> store thread
  SpscRing<ReplicaIo> completions;  // store thread -> queue thread
  int queue_wake_fd = -1;           // the queue's eventfd
  StoreExecutor* thread = nullptr;
  // Replica index (within the volume) -> its store, for replicas on this thread.
  std::array<ReplicaStore*, kMaxReplicas> stores{};
  // Store-thread private: a completion was pushed into an empty ring during
  // this loop iteration, so the queue must be woken.
  bool notify = false;
  // Queue-thread private: requests were pushed since the last kick().
  bool pushed = false;
  // Co-located: the queue lives on the reactor that runs `thread`'s stores
  // (StoreExecutor::home_reactor()). The queue then calls
  // ReplicaStore::submit itself (no request ring, no doorbell), and the
  // completion, run by the executor's poll on that same thread, is pushed
  // into `completions` with no eventfd write: the queue's owner reaps on
  // that thread's loop. Set before the queue's owner first uses the channel.
  bool local = false;
};

}  // namespace ublkvol::engine::detail
